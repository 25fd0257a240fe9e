// SPDX-License-Identifier: Apache-2.0
//! Tests of the whole ACPI table set as a guest finds it in memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

fn read(m: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

/// Reads the table at `at`, checks its checksum, returns its bytes.
fn table(m: &GuestMemoryMmap, at: u64) -> Vec<u8> {
    let len: u32 = m.read_obj(GuestAddress(at + 4)).unwrap();
    let t = read(m, at, len as usize);
    let sum = t.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    assert_eq!(sum, 0, "checksum of {}", String::from_utf8_lossy(&t[0..4]));
    assert!(at + len as u64 <= ACPI_END.0);
    t
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn guest_can_walk_rsdp_to_every_table() {
    let m = mem();
    let rsdp_at = create_acpi_tables(
        &m,
        &AcpiConfig {
            num_cpus: 4,
            ram_bytes: 16 << 20,
        },
    )
    .unwrap();
    assert_eq!(rsdp_at, GuestAddress(0xe0000));
    let rsdp = read(&m, rsdp_at.0, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(rsdp.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);

    let xsdt = table(&m, u64_at(&rsdp, 24));
    assert_eq!(&xsdt[0..4], b"XSDT");
    let mut signatures = Vec::new();
    for i in 0..(xsdt.len() - 36) / 8 {
        let t = table(&m, u64_at(&xsdt, 36 + 8 * i));
        signatures.push(String::from_utf8_lossy(&t[0..4]).into_owned());
        if &t[0..4] == b"FACP" {
            let dsdt = table(&m, u64_at(&t, 140));
            assert_eq!(&dsdt[0..4], b"DSDT");
            assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        }
        if &t[0..4] == b"APIC" {
            let lapics = t[44..].chunks(1).count(); // length sanity below
            assert!(lapics > 0);
            assert_eq!(t[44], 0);
            assert_eq!(t[44 + 3 * 8 + 3], 3, "fourth LAPIC has APIC ID 3");
        }
    }
    assert_eq!(signatures, ["FACP", "APIC", "MCFG"]);
}

#[test]
fn max_vcpus_fit_in_the_reserved_area() {
    let m = mem();
    assert!(create_acpi_tables(
        &m,
        &AcpiConfig {
            num_cpus: 255,
            ram_bytes: 16 << 20
        }
    )
    .is_ok());
}

#[test]
fn bad_vcpu_counts_are_rejected() {
    let m = mem();
    for n in [0, 256] {
        assert!(matches!(
            create_acpi_tables(
                &m,
                &AcpiConfig {
                    num_cpus: n,
                    ram_bytes: 16 << 20
                }
            ),
            Err(AcpiError::VcpuCount(_))
        ));
    }
}

#[test]
fn memory_without_the_acpi_area_is_an_error() {
    let m: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    assert!(matches!(
        create_acpi_tables(
            &m,
            &AcpiConfig {
                num_cpus: 1,
                ram_bytes: 0x8_0000
            }
        ),
        Err(AcpiError::GuestMemory(_))
    ));
}
