// SPDX-License-Identifier: Apache-2.0
//! The DSDT's AML: the PCI host bridge, the ECAM motherboard resource, COM1
//! and the `_S5_` sleep state.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name, Package,
    PackageBuilder, Path, ResourceTemplate, Scope, IO, ZERO,
};
use acpi_tables::Aml;

use crate::layout::{MMIO32_SIZE, MMIO32_START, PCI_ECAM_SIZE, PCI_ECAM_START};

/// PCI configuration mechanism #1 ports.
const PCI_CONFIG_IO_START: u16 = 0xcf8;
const PCI_CONFIG_IO_LEN: u8 = 8;
/// I/O port window routed to PCI.
const PCI_IO_WINDOW: (u16, u16) = (0x0d00, 0xffff);
/// COM1.
const COM1_PORT: u16 = 0x3f8;
const COM1_LEN: u8 = 8;
const COM1_IRQ: u32 = 4;
/// IOAPIC pin of INTx of slot 0; slot N uses `PCI_INTX_GSI_BASE + N % 8`.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of IOAPIC pins the PCI slots share.
pub const PCI_INTX_GSI_COUNT: u32 = 8;
/// `SLP_TYP` of the S5 (soft off) state.
pub const S5_SLP_TYP: u8 = 5;

/// The IOAPIC pin of PCI `slot`'s INTx (all four pins of a slot share it).
pub fn pci_slot_gsi(slot: u32) -> u32 {
    PCI_INTX_GSI_BASE + slot % PCI_INTX_GSI_COUNT
}

/// Serializes `Device(name) { children }`.
fn device_aml(name: &str, children: &[&dyn Aml]) -> Vec<u8> {
    let mut aml = Vec::new();
    Device::new(Path::new(name), children.to_vec()).to_aml_bytes(&mut aml);
    aml
}

fn prt() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for slot in 0..32u32 {
        let address: u32 = (slot << 16) | 0xffff;
        let gsi = pci_slot_gsi(slot);
        for pin in 0..4u8 {
            prt.add_element(&Package::new(vec![&address, &pin, &ZERO, &gsi]));
        }
    }
    prt
}

fn pci_host_bridge(mmio64: (u64, u64)) -> Vec<u8> {
    let bus = AddressSpace::<u16>::new_bus_number(0, 255);
    let config = IO::new(
        PCI_CONFIG_IO_START,
        PCI_CONFIG_IO_START,
        1,
        PCI_CONFIG_IO_LEN,
    );
    let io = AddressSpace::<u16>::new_io(PCI_IO_WINDOW.0, PCI_IO_WINDOW.1, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        MMIO32_START.0 as u32,
        (MMIO32_START.0 + MMIO32_SIZE - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::PreFetchable,
        true,
        mmio64.0,
        mmio64.0 + mmio64.1 - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &config, &io, &mmio32, &mmio64]);
    let prt = prt();
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    device_aml(
        "PCI0",
        &[
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_CID"), &cid),
            &Name::new(Path::new("_SEG"), &ZERO),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_BBN"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
            &Name::new(Path::new("_PRT"), &prt),
        ],
    )
}

/// Motherboard resources: reserves the ECAM area so Linux trusts the MCFG.
fn motherboard() -> Vec<u8> {
    let ecam = Memory32Fixed::new(true, PCI_ECAM_START.0 as u32, PCI_ECAM_SIZE as u32);
    let crs = ResourceTemplate::new(vec![&ecam]);
    let hid = EISAName::new("PNP0C02");
    device_aml(
        "MBRD",
        &[
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
}

fn com1() -> Vec<u8> {
    let ports = IO::new(COM1_PORT, COM1_PORT, 1, COM1_LEN);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&ports, &irq]);
    let hid = EISAName::new("PNP0501");
    device_aml(
        "COM1",
        &[
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
}

/// The AML body of the DSDT for a 64-bit MMIO window `(start, size)`.
pub fn dsdt_aml(mmio64: (u64, u64)) -> Vec<u8> {
    let mut devices = pci_host_bridge(mmio64);
    devices.extend(motherboard());
    devices.extend(com1());
    let mut aml = Scope::raw(Path::new("\\_SB_"), devices);
    let s5 = Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &ZERO, &ZERO]);
    Name::new(Path::new("_S5_"), &s5).to_aml_bytes(&mut aml);
    aml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_has_the_expected_names() {
        let aml = dsdt_aml((4 << 30, 64 << 30));
        for name in [
            &b"_SB_"[..],
            b"PCI0",
            b"_HID",
            b"_CID",
            b"_SEG",
            b"_BBN",
            b"_CRS",
            b"_PRT",
            b"MBRD",
            b"COM1",
            b"_S5_",
        ] {
            assert!(
                contains(&aml, name),
                "missing {}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn s5_package_is_5_5_0_0() {
        let aml = dsdt_aml((4 << 30, 64 << 30));
        // NameOp "_S5_" PackageOp len=6 count=4 BytePrefix 5 BytePrefix 5 Zero Zero
        let expected = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
        ];
        assert!(contains(&aml, &expected));
    }

    #[test]
    fn host_bridge_ids_are_pnp0a08_and_pnp0a03() {
        let aml = dsdt_aml((4 << 30, 64 << 30));
        // EISAID("PNP0A08") = 0x080ad041, EISAID("PNP0A03") = 0x030ad041.
        assert!(contains(&aml, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        assert!(contains(&aml, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]));
    }

    #[test]
    fn crs_holds_both_mmio_windows() {
        let aml = dsdt_aml((5 << 30, 64 << 30));
        // DWord memory descriptor min/max.
        let mut dword = 0xc000_0000u32.to_le_bytes().to_vec();
        dword.extend_from_slice(&0xdfff_ffffu32.to_le_bytes());
        assert!(contains(&aml, &dword));
        let mut qword = (5u64 << 30).to_le_bytes().to_vec();
        qword.extend_from_slice(&((69u64 << 30) - 1).to_le_bytes());
        assert!(contains(&aml, &qword));
    }

    #[test]
    fn prt_routes_slots_round_robin_over_eight_pins() {
        assert_eq!(pci_slot_gsi(0), 16);
        assert_eq!(pci_slot_gsi(7), 23);
        assert_eq!(pci_slot_gsi(8), 16);
        let aml = dsdt_aml((4 << 30, 64 << 30));
        // Package(4) { 0x0003FFFF, 0 (INTA), Zero, 19 }
        let slot3_inta = [
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x0a, 19,
        ];
        assert!(contains(&aml, &slot3_inta));
    }
}
