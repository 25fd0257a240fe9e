// SPDX-License-Identifier: Apache-2.0
//! Tests of the configuration space model.

use super::*;

fn header() -> PciHeader {
    PciHeader {
        vendor_id: 0x1af4,
        device_id: 0x1110,
        class: 0x05,
        subclass: 0x00,
        prog_if: 0,
        revision: 1,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
    }
}

fn cfg() -> PciConfiguration {
    PciConfiguration::new(&header(), false)
}

fn wr32(c: &mut PciConfiguration, reg: usize, v: u32) -> Option<BarMove> {
    c.write_reg(reg, 0, &v.to_le_bytes())
}

#[test]
fn identity_registers_are_laid_out() {
    let c = cfg();
    assert_eq!(c.read_reg(0), 0x1110_1af4);
    assert_eq!(c.read_reg(2), 0x0500_0001);
    assert_eq!(c.read_reg(11), 0x1100_1af4);
    assert_eq!(c.vendor_device(), (0x1af4, 0x1110));
}

#[test]
fn identity_registers_are_read_only() {
    let mut c = cfg();
    wr32(&mut c, 0, 0);
    wr32(&mut c, 2, 0);
    assert_eq!(c.read_reg(0), 0x1110_1af4);
    assert_eq!(c.read_reg(2), 0x0500_0001);
}

#[test]
fn command_register_keeps_only_writable_bits() {
    let mut c = cfg();
    c.write_reg(1, 0, &[0xff, 0xff]);
    assert_eq!(c.command(), 0x0547);
    assert!(c.memory_enabled() && c.io_enabled() && c.bus_master() && c.intx_disabled());
}

#[test]
fn status_error_bits_are_write_one_to_clear_and_intx_bit_read_only() {
    let mut c = cfg();
    c.set_reg(1, 0xf908_0000);
    c.set_intx_status(true);
    // Write ones to every status bit through a word access at offset 2.
    c.write_reg(1, 2, &[0xff, 0xff]);
    assert_eq!(c.status(), STATUS_INTX);
    assert!(c.intx_status());
    c.set_intx_status(false);
    assert!(!c.intx_status());
}

#[test]
fn byte_write_to_command_leaves_status_alone() {
    let mut c = cfg();
    c.set_reg(1, 0x8000_0000);
    c.write_reg(1, 0, &[0x02]);
    assert_eq!(c.status(), 0x8000);
    assert!(c.memory_enabled());
}

#[test]
fn interrupt_line_writable_pin_read_only() {
    let mut c = cfg();
    c.set_interrupt(17, 1);
    c.write_reg(15, 0, &[0x0b, 0x04]);
    assert_eq!(c.interrupt_line(), 0x0b);
    assert_eq!(c.interrupt_pin(), 1);
}

#[test]
fn bad_accesses_are_ignored() {
    let mut c = cfg();
    let before = c.clone();
    assert!(c.write_reg(1, 3, &[1, 2]).is_none());
    c.write_reg(1, 0, &[]);
    c.write_reg(1, 0, &[0xff; 9]);
    c.write_reg(1, 4, &[0xff]);
    c.write_reg(1, u64::MAX, &[0xff]);
    c.write_reg(64, 0, &[0xff; 4]);
    c.write_reg(usize::MAX, 0, &[0xff; 4]);
    assert_eq!(c, before);
    assert_eq!(c.read_reg(64), u32::MAX);
    assert_eq!(c.read_reg(usize::MAX), u32::MAX);
}

#[test]
fn extended_space_reads_zero_and_is_read_only() {
    let mut c = PciConfiguration::new(&header(), true);
    assert!(c.is_extended());
    assert_eq!(c.read_reg(64), 0);
    wr32(&mut c, 1000, 0xffff_ffff);
    assert_eq!(c.read_reg(1000), 0);
    assert_eq!(c.read_reg(1024), u32::MAX);
}

#[test]
fn mmio32_bar_sizing_reads_back_size_mask() {
    let mut c = cfg();
    c.add_bar(0, 0x1000, BarKind::Mmio32, true).unwrap();
    c.set_bar_addr(0, 0xc000_0000).unwrap();
    assert_eq!(wr32(&mut c, 4, u32::MAX), None);
    assert_eq!(c.read_reg(4), 0xffff_f000);
    assert_eq!(wr32(&mut c, 4, 0xc000_0000), None, "restoring is no move");
    assert_eq!(c.read_reg(4), 0xc000_0000);
}

#[test]
fn io_bar_sizing_keeps_io_flag() {
    let mut c = cfg();
    c.add_bar(1, 0x20, BarKind::Io, true).unwrap();
    wr32(&mut c, 5, u32::MAX);
    assert_eq!(c.read_reg(5), 0xffff_ffe1);
}

#[test]
fn mmio64_bar_sizing_spans_two_registers() {
    let mut c = cfg();
    c.add_bar(2, 1 << 30, BarKind::Mmio64 { prefetch: true }, false)
        .unwrap();
    c.set_bar_addr(2, 0x1_c000_0000).unwrap();
    assert_eq!(c.read_reg(6), 0xc000_000c);
    assert_eq!(c.read_reg(7), 1);
    // Linux: size low, restore low, size high, restore high. No move.
    assert_eq!(wr32(&mut c, 6, u32::MAX), None);
    assert_eq!(c.read_reg(6), 0xc000_000c);
    assert_eq!(wr32(&mut c, 6, 0xc000_000c), None);
    assert_eq!(wr32(&mut c, 7, u32::MAX), None);
    assert_eq!(c.read_reg(7), u32::MAX);
    assert_eq!(wr32(&mut c, 7, 1), None);
    // Both halves all-ones first, then both restored: also no move.
    wr32(&mut c, 6, u32::MAX);
    wr32(&mut c, 7, u32::MAX);
    assert_eq!(wr32(&mut c, 6, 0xc000_0000), None);
    assert_eq!(wr32(&mut c, 7, 1), None);
    assert_eq!(c.bar(2).unwrap().addr, 0x1_c000_0000);
}

#[test]
fn huge_mmio64_bar_has_read_only_low_address_bits() {
    let mut c = cfg();
    c.add_bar(0, 1 << 34, BarKind::Mmio64 { prefetch: true }, false)
        .unwrap();
    wr32(&mut c, 4, u32::MAX);
    wr32(&mut c, 5, u32::MAX);
    assert_eq!(c.read_reg(4), 0xc);
    assert_eq!(c.read_reg(5), 0xffff_fffc);
    assert_eq!(wr32(&mut c, 4, 0), None);
    let m = wr32(&mut c, 5, 0x10).unwrap();
    assert_eq!((m.old, m.new), (0, 0x10_0000_0000));
}

#[test]
fn moving_a_bar_is_reported_once() {
    let mut c = cfg();
    c.add_bar(0, 0x100, BarKind::Mmio32, true).unwrap();
    c.set_bar_addr(0, 0xc000_0000).unwrap();
    wr32(&mut c, 4, u32::MAX);
    let m = wr32(&mut c, 4, 0xd000_0000).unwrap();
    assert_eq!(
        m,
        BarMove {
            bar: 0,
            old: 0xc000_0000,
            new: 0xd000_0000,
            size: 0x100,
            kind: BarKind::Mmio32,
            trapped: true
        }
    );
    assert_eq!(wr32(&mut c, 4, 0xd000_0000), None);
    assert_eq!(c.bar(0).unwrap().addr, 0xd000_0000);
}

#[test]
fn moving_a_64bit_bar_high_half_is_reported() {
    let mut c = cfg();
    c.add_bar(2, 0x4000_0000, BarKind::Mmio64 { prefetch: true }, false)
        .unwrap();
    c.set_bar_addr(2, 0x1_c000_0000).unwrap();
    let m = wr32(&mut c, 7, 2).unwrap();
    assert_eq!(
        (m.bar, m.old, m.new, m.trapped),
        (2, 0x1_c000_0000, 0x2_c000_0000, false)
    );
}

#[test]
fn byte_wise_bar_writes_work() {
    let mut c = cfg();
    c.add_bar(0, 0x1000, BarKind::Mmio32, true).unwrap();
    for i in 0..4u64 {
        c.write_reg(4, i, &[0xff]);
    }
    assert_eq!(c.read_reg(4), 0xffff_f000);
    let mut last = None;
    for (i, b) in 0xc000_1000u32.to_le_bytes().iter().enumerate() {
        last = c.write_reg(4, i as u64, &[*b]).or(last);
    }
    assert_eq!(last.unwrap().new, 0xc000_1000);
}

#[test]
fn unused_bar_is_read_only_zero() {
    let mut c = cfg();
    assert_eq!(wr32(&mut c, 9, u32::MAX), None);
    assert_eq!(c.read_reg(9), 0);
}

#[test]
fn add_bar_rejects_bad_layouts() {
    let mut c = cfg();
    assert_eq!(
        c.add_bar(6, 16, BarKind::Mmio32, true),
        Err(PciConfigError::BadBarIndex(6))
    );
    assert_eq!(
        c.add_bar(5, 16, BarKind::Mmio64 { prefetch: false }, true),
        Err(PciConfigError::BadBarIndex(5))
    );
    assert_eq!(
        c.add_bar(0, 24, BarKind::Mmio32, true),
        Err(PciConfigError::BadBarSize(24))
    );
    assert_eq!(
        c.add_bar(0, 8, BarKind::Mmio32, true),
        Err(PciConfigError::BadBarSize(8))
    );
    assert_eq!(
        c.add_bar(0, 512, BarKind::Io, true),
        Err(PciConfigError::BadBarSize(512))
    );
    c.add_bar(0, 16, BarKind::Mmio64 { prefetch: false }, true)
        .unwrap();
    assert_eq!(
        c.add_bar(1, 16, BarKind::Mmio32, true),
        Err(PciConfigError::BarInUse(1))
    );
    assert_eq!(
        c.add_bar(0, 16, BarKind::Mmio32, true),
        Err(PciConfigError::BarInUse(0))
    );
}

#[test]
fn set_bar_addr_checks_alignment_and_width() {
    let mut c = cfg();
    c.add_bar(0, 0x1000, BarKind::Mmio32, true).unwrap();
    assert!(c.set_bar_addr(0, 0xc000_0800).is_err());
    assert!(c.set_bar_addr(0, 0x1_0000_0000).is_err());
    assert!(c.set_bar_addr(1, 0).is_err());
    c.set_bar_addr(0, 0xffff_f000).unwrap();
}

#[test]
fn capabilities_are_linked_in_order() {
    let mut c = cfg();
    assert_eq!(c.status() & STATUS_CAP_LIST, 0);
    let a = c
        .add_capability(0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .unwrap();
    let b = c.add_capability(0x09, &[0xaa]).unwrap();
    assert_eq!(a, 0x40);
    assert_eq!(b, 0x4c);
    assert_ne!(c.status() & STATUS_CAP_LIST, 0);
    assert_eq!(c.read_reg(13) & 0xff, 0x40);
    assert_eq!(c.read_reg(0x40 / 4), 0x0201_4c11);
    assert_eq!(c.read_reg(0x4c / 4), 0x00aa_0009);
}

#[test]
fn capability_registers_are_read_only_unless_marked() {
    let mut c = cfg();
    let off = c.add_capability(0x11, &[0, 0]).unwrap();
    wr32(&mut c, off / 4, u32::MAX);
    assert_eq!(c.read_reg(off / 4), 0x11);
    c.set_writable(off / 4, 0xc000_0000);
    wr32(&mut c, off / 4, u32::MAX);
    assert_eq!(c.read_reg(off / 4), 0xc000_0011);
}

#[test]
fn capability_overflow_is_an_error() {
    let mut c = cfg();
    assert!(c.add_capability(1, &[0; 180]).is_ok());
    assert_eq!(
        c.add_capability(1, &[0; 20]),
        Err(PciConfigError::CapabilityFull(22))
    );
}

#[test]
fn snapshot_round_trips_and_bad_snapshot_is_rejected() {
    let mut c = cfg();
    c.add_bar(0, 0x1000, BarKind::Mmio32, true).unwrap();
    c.set_bar_addr(0, 0xc000_0000).unwrap();
    let restored = PciConfiguration::restore(c.clone()).unwrap();
    assert_eq!(restored, c);
    let mut bad = c.clone();
    bad.regs.truncate(10);
    assert_eq!(
        PciConfiguration::restore(bad),
        Err(PciConfigError::BadSnapshot)
    );
    let mut bad = c;
    bad.bars[5] = Some(BarSlot {
        size: 16,
        kind: BarKind::Mmio64 { prefetch: false },
        trapped: true,
        addr: 0,
    });
    assert_eq!(
        PciConfiguration::restore(bad),
        Err(PciConfigError::BadSnapshot)
    );
}
