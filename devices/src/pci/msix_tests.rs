// SPDX-License-Identifier: Apache-2.0
//! Tests of the MSI-X model.

use std::sync::Mutex;

use super::*;
use crate::pci::config::PciHeader;

#[derive(Default)]
struct Notes {
    changed: Mutex<Vec<(u16, MsiMessage, bool)>>,
    sent: Mutex<Vec<MsiMessage>>,
}

impl Notes {
    fn changed(&self) -> Vec<(u16, MsiMessage, bool)> {
        std::mem::take(&mut *self.changed.lock().unwrap())
    }
    fn sent(&self) -> Vec<MsiMessage> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl MsixNotifier for Notes {
    fn vector_changed(&self, vector: u16, msg: MsiMessage, masked: bool) {
        self.changed.lock().unwrap().push((vector, msg, masked));
    }
    fn send(&self, msg: MsiMessage) -> io::Result<()> {
        self.sent.lock().unwrap().push(msg);
        Ok(())
    }
}

const TABLE: MsixLocation = MsixLocation { bar: 1, offset: 0 };
const PBA: MsixLocation = MsixLocation {
    bar: 1,
    offset: 0x800,
};

fn msix(vectors: u16) -> (MsixConfig, Arc<Notes>) {
    let n = Arc::new(Notes::default());
    (MsixConfig::new(vectors, TABLE, PBA, n.clone()).unwrap(), n)
}

fn w32(m: &mut MsixConfig, off: u64, v: u32) {
    assert!(m.bar_write(1, off, &v.to_le_bytes()));
}

fn r32(m: &MsixConfig, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(m.bar_read(1, off, &mut b));
    u32::from_le_bytes(b)
}

/// Programs vector `v` with a message and unmasks it.
fn program(m: &mut MsixConfig, v: u64, data: u32) {
    w32(m, v * 16, 0xfee0_0000);
    w32(m, v * 16 + 4, 0);
    w32(m, v * 16 + 8, data);
    w32(m, v * 16 + 12, 0);
}

const MSG: fn(u32) -> MsiMessage = |data| MsiMessage {
    addr: 0xfee0_0000,
    data,
};

#[test]
fn bad_construction_is_rejected() {
    let n: Arc<dyn MsixNotifier> = Arc::new(Notes::default());
    assert!(MsixConfig::new(0, TABLE, PBA, n.clone()).is_err());
    assert!(MsixConfig::new(2049, TABLE, PBA, n.clone()).is_err());
    let bad_bar = MsixLocation { bar: 6, offset: 0 };
    assert!(MsixConfig::new(1, bad_bar, PBA, n.clone()).is_err());
    let odd = MsixLocation { bar: 1, offset: 4 };
    assert!(MsixConfig::new(1, odd, PBA, n.clone()).is_err());
    let clash = MsixLocation {
        bar: 1,
        offset: 0x10,
    };
    assert!(matches!(
        MsixConfig::new(4, TABLE, clash, n),
        Err(MsixError::Overlap)
    ));
}

#[test]
fn capability_layout_and_writable_bits() {
    let (mut m, _) = msix(4);
    let mut c = PciConfiguration::new(&PciHeader::default(), false);
    let off = m.add_capability(&mut c).unwrap();
    assert_eq!(c.read_reg(off / 4), 0x0003_0011);
    assert_eq!(c.read_reg(off / 4 + 1), 0x0000_0001);
    assert_eq!(c.read_reg(off / 4 + 2), 0x0000_0801);
    // Guest writes all-ones to message control: only enable+mask stick.
    c.write_reg(off / 4, 2, &[0xff, 0xff]);
    assert_eq!(c.read_reg(off / 4) >> 16, 0xc003);
    m.config_written(&c);
    assert!(m.enabled() && m.function_masked());
}

#[test]
fn entries_reset_masked_and_read_back() {
    let (mut m, _) = msix(2);
    assert_eq!(r32(&m, 12), 1);
    w32(&mut m, 16, 0xfee0_1003);
    assert_eq!(r32(&m, 16), 0xfee0_1000, "low address bits read 0");
    w32(&mut m, 28, 0xffff_ffff);
    assert_eq!(r32(&m, 28), 1, "reserved vector control bits read 0");
}

#[test]
fn qword_access_covers_two_dwords() {
    let (mut m, _) = msix(1);
    let v: u64 = 0x0000_0001_fee0_0000;
    assert!(m.bar_write(1, 0, &v.to_le_bytes()));
    let mut b = [0u8; 8];
    m.bar_read(1, 0, &mut b);
    assert_eq!(u64::from_le_bytes(b), v);
    assert_eq!(m.entry(0).unwrap().msg().addr, 0x1_fee0_0000);
}

#[test]
fn bad_table_accesses_read_all_ones_and_are_ignored() {
    let (mut m, n) = msix(2);
    let before = m.state();
    for (off, len) in [
        (0u64, 1usize),
        (0, 2),
        (0, 3),
        (2, 4),
        (4, 8),
        (0, 9),
        (0, 0),
        (0, 16),
    ] {
        let mut b = vec![0u8; len];
        assert!(m.bar_read(1, off, &mut b));
        assert!(b.iter().all(|x| *x == 0xff), "{off}+{len}");
        m.bar_write(1, off, &vec![0u8; len]);
    }
    assert_eq!(m.state(), before);
    assert!(n.changed().is_empty());
    // Past the table (but before the PBA): not MSI-X's.
    let mut b = [0u8; 4];
    assert!(!m.bar_read(1, 0x20, &mut b));
    assert!(!m.bar_write(1, 0x20, &b));
    assert!(!m.bar_read(0, 0, &mut b));
    assert!(!m.bar_read(1, u64::MAX, &mut b));
}

#[test]
fn routes_follow_table_writes() {
    let (mut m, n) = msix(2);
    m.set_message_control(CTL_ENABLE);
    n.changed();
    program(&mut m, 1, 0x41);
    let changes = n.changed();
    assert_eq!(changes.last(), Some(&(1, MSG(0x41), false)));
    // Rewriting the same value is not a change.
    w32(&mut m, 24, 0x41);
    assert!(n.changed().is_empty());
}

#[test]
fn trigger_sends_when_unmasked() {
    let (mut m, n) = msix(2);
    m.set_message_control(CTL_ENABLE);
    program(&mut m, 0, 0x30);
    m.trigger(0).unwrap();
    assert_eq!(n.sent(), vec![MSG(0x30)]);
}

#[test]
fn trigger_while_disabled_does_nothing() {
    let (mut m, n) = msix(1);
    program(&mut m, 0, 0x30);
    m.trigger(0).unwrap();
    assert!(n.sent().is_empty());
    assert!(!m.pending(0));
}

#[test]
fn trigger_of_missing_vector_is_an_error() {
    let (mut m, _) = msix(1);
    assert!(m.trigger(1).is_err());
}

#[test]
fn masked_vector_sets_pba_and_delivers_on_unmask() {
    let (mut m, n) = msix(70);
    m.set_message_control(CTL_ENABLE);
    program(&mut m, 65, 0x50);
    w32(&mut m, 65 * 16 + 12, 1);
    m.trigger(65).unwrap();
    assert!(n.sent().is_empty());
    assert!(m.pending(65));
    assert_eq!(r32(&m, 0x808), 0b10, "PBA qword 1, bit 1");
    let mut q = [0u8; 8];
    m.bar_read(1, 0x808, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0b10);
    w32(&mut m, 65 * 16 + 12, 0);
    assert_eq!(n.sent(), vec![MSG(0x50)]);
    assert!(!m.pending(65));
}

#[test]
fn function_mask_holds_all_vectors_then_releases_them() {
    let (mut m, n) = msix(2);
    m.set_message_control(CTL_ENABLE);
    program(&mut m, 0, 0x30);
    program(&mut m, 1, 0x31);
    n.changed();
    m.set_message_control(CTL_ENABLE | CTL_FUNCTION_MASK);
    assert_eq!(
        n.changed(),
        vec![(0, MSG(0x30), true), (1, MSG(0x31), true)]
    );
    m.trigger(1).unwrap();
    assert!(n.sent().is_empty());
    m.set_message_control(CTL_ENABLE);
    assert_eq!(n.sent(), vec![MSG(0x31)]);
    assert_eq!(
        n.changed(),
        vec![(0, MSG(0x30), false), (1, MSG(0x31), false)]
    );
}

#[test]
fn enable_toggle_reports_routes_and_is_idempotent() {
    let (mut m, n) = msix(1);
    program(&mut m, 0, 0x30);
    n.changed();
    m.set_message_control(CTL_ENABLE);
    assert_eq!(n.changed(), vec![(0, MSG(0x30), false)]);
    m.set_message_control(CTL_ENABLE);
    assert!(n.changed().is_empty());
    m.set_message_control(0);
    assert_eq!(n.changed(), vec![(0, MSG(0x30), true)]);
}

#[test]
fn pba_is_read_only() {
    let (mut m, _) = msix(1);
    m.set_message_control(CTL_ENABLE);
    m.trigger(0).unwrap();
    assert!(m.bar_write(1, 0x800, &0u32.to_le_bytes()));
    assert!(m.pending(0));
    let mut b = [0u8; 4];
    m.bar_read(1, 0x804, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn restore_checks_size_and_renotifies() {
    let (mut m, n) = msix(3);
    m.set_message_control(CTL_ENABLE);
    program(&mut m, 2, 0x60);
    let s = m.state();
    let (mut r, rn) = msix(3);
    r.restore(s.clone()).unwrap();
    assert_eq!(r.state(), s);
    assert_eq!(rn.changed().len(), 3);
    let (mut small, _) = msix(2);
    assert!(matches!(small.restore(s), Err(MsixError::BadSnapshot)));
    let _ = n;
}

#[test]
fn restore_cleans_reserved_bits() {
    let (mut m, _) = msix(1);
    let mut s = m.state();
    s.entries[0].vector_ctrl = u32::MAX;
    s.pba[0] = u64::MAX;
    m.restore(s).unwrap();
    assert_eq!(m.entry(0).unwrap().vector_ctrl, 1);
    assert_eq!(m.state().pba[0], 1);
}
