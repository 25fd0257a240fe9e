// SPDX-License-Identifier: Apache-2.0
//! The fixed-format ACPI tables: FADT, MADT, MCFG, XSDT, RSDP and the DSDT
//! wrapper. Each builder returns the table's bytes with a valid checksum.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::layout::{APIC_START, IOAPIC_START, PCI_ECAM_START};

/// OEM ID of every table.
pub const OEM_ID: [u8; 6] = *b"SHOAL ";
/// OEM table ID of every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"SHOALVM ";
/// OEM revision of every table.
pub const OEM_REVISION: u32 = 1;

/// Sleep control register (hardware-reduced ACPI).
pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// Sleep status register.
pub const SLEEP_STATUS_PORT: u16 = 0x3c1;
/// Reset register.
pub const RESET_PORT: u16 = 0x3c4;
/// Value that resets the machine when written to [`RESET_PORT`].
pub const RESET_VALUE: u8 = 1;

/// IA-PC boot architecture flags: no VGA (bit 2), no CMOS RTC (bit 5).
/// The 8042 bit stays clear: the i8042 is there only for the reset command.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// MADT revision of ACPI 6.x.
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT (ACPI 6.5 layout, 276 bytes): hardware-reduced, with the sleep
/// control/status and reset registers of docs/platform.md and `X_DSDT`.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_register(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    bytes_of(&fadt.finalize())
}

/// The MADT: one enabled local APIC per vCPU (APIC ID = UID = index), the
/// IOAPIC (id 0, GSI base 0), ISA IRQ 0 → GSI 2, and LINT1 as NMI on all CPUs.
/// `num_cpus` must be at most 255.
pub fn madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, APIC_START.0 as u32);
    madt.write_u32(40, 0); // flags: no 8259 PCAT_COMPAT
    for cpu in 0..num_cpus {
        let mut lapic = vec![MADT_LOCAL_APIC, 8, cpu, cpu];
        lapic.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
        madt.append_slice(&lapic);
    }
    let mut ioapic = vec![MADT_IO_APIC, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC_START.0 as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);
    let mut iso = vec![MADT_INTERRUPT_OVERRIDE, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&0u16.to_le_bytes());
    madt.append_slice(&iso);
    madt.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    madt.as_slice().to_vec()
}

/// The MCFG: ECAM of segment 0, buses 0-255.
pub fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START.0, 0, 0, 255);
    bytes_of(&mcfg)
}

/// The DSDT wrapping `aml`.
pub fn dsdt(aml: &[u8]) -> Vec<u8> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(aml);
    dsdt.as_slice().to_vec()
}

/// The XSDT pointing at `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &t in tables {
        xsdt.add_entry(t);
    }
    bytes_of(&xsdt)
}

/// The RSDP (revision 2, 36 bytes) pointing at the XSDT.
pub fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    bytes_of(&Rsdp::new(OEM_ID, xsdt_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn fadt_is_acpi_6_5_hardware_reduced() {
        let f = fadt(0xe1000);
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(u32_at(&f, 4), 276);
        assert_eq!(f[8], 6, "major version");
        assert_eq!(f[131], 5, "minor version");
        assert_eq!(sum(&f), 0);
        let flags = u32_at(&f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG at 116: I/O space, 8 bits, byte access, port 0x3c4; value at 128.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0x3c4);
        assert_eq!(f[128], 1);
        assert_eq!(
            u64::from_le_bytes(f[140..148].try_into().unwrap()),
            0xe1000,
            "X_DSDT"
        );
        assert_eq!(u32_at(&f, 40), 0, "32-bit DSDT unused");
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64::from_le_bytes(f[248..256].try_into().unwrap()), 0x3c0);
        assert_eq!(u64::from_le_bytes(f[260..268].try_into().unwrap()), 0x3c1);
    }

    #[test]
    fn madt_has_one_lapic_per_cpu() {
        for n in [1u8, 2, 8, 255] {
            let m = madt(n);
            assert_eq!(&m[0..4], b"APIC");
            assert_eq!(u32_at(&m, 4) as usize, m.len());
            assert_eq!(sum(&m), 0);
            assert_eq!(u32_at(&m, 36), 0xfee0_0000);
            let mut off = 44;
            let mut lapics = Vec::new();
            let mut kinds = Vec::new();
            while off < m.len() {
                kinds.push(m[off]);
                if m[off] == 0 {
                    lapics.push((m[off + 2], m[off + 3], u32_at(&m, off + 4)));
                }
                off += m[off + 1] as usize;
            }
            assert_eq!(off, m.len());
            assert_eq!(lapics.len(), n as usize);
            assert!(lapics
                .iter()
                .enumerate()
                .all(|(i, l)| *l == (i as u8, i as u8, 1)));
            assert_eq!(kinds.iter().filter(|k| **k == 1).count(), 1, "one IOAPIC");
            assert_eq!(kinds.iter().filter(|k| **k == 2).count(), 1, "one override");
        }
    }

    #[test]
    fn madt_ioapic_and_override() {
        let m = madt(1);
        let io = 44 + 8;
        assert_eq!(&m[io..io + 4], &[1, 12, 0, 0]);
        assert_eq!(u32_at(&m, io + 4), 0xfec0_0000);
        assert_eq!(u32_at(&m, io + 8), 0);
        let iso = io + 12;
        assert_eq!(&m[iso..iso + 4], &[2, 10, 0, 0]);
        assert_eq!(u32_at(&m, iso + 4), 2);
    }

    #[test]
    fn mcfg_describes_ecam() {
        let m = mcfg();
        assert_eq!(&m[0..4], b"MCFG");
        assert_eq!(m.len(), 60);
        assert_eq!(sum(&m), 0);
        assert_eq!(
            u64::from_le_bytes(m[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!(&m[52..56], &[0, 0, 0, 255]);
    }

    #[test]
    fn rsdp_checksums() {
        let r = rsdp(0xe0040);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(r.len(), 36);
        assert_eq!(sum(&r[0..20]), 0);
        assert_eq!(sum(&r), 0);
        assert_eq!(r[15], 2, "revision");
        assert_eq!(u64::from_le_bytes(r[24..32].try_into().unwrap()), 0xe0040);
    }

    #[test]
    fn xsdt_and_dsdt_checksums() {
        let x = xsdt(&[1, 2, 3]);
        assert_eq!(&x[0..4], b"XSDT");
        assert_eq!(x.len(), 36 + 24);
        assert_eq!(sum(&x), 0);
        let d = dsdt(&[0x10, 0x20, 0x30]);
        assert_eq!(&d[0..4], b"DSDT");
        assert_eq!(u32_at(&d, 4), 39);
        assert_eq!(sum(&d), 0);
    }
}
