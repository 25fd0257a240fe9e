// SPDX-License-Identifier: Apache-2.0
//! Host unit tests of the test guest's pure modules (their `#[cfg(test)]`
//! modules): the guest itself is `no_std`/`no_main` and cannot run them.
//! The module tree mirrors the guest's so `crate::mem` resolves the same.

// Guest code the tests do not call would warn here; in the guest it is used.
#![allow(dead_code)]

#[path = "guest/src/acpi.rs"]
mod acpi;
#[path = "guest/src/cmdline.rs"]
mod cmdline;
#[path = "guest/src/mem.rs"]
mod mem;
#[path = "guest/src/ramsum.rs"]
mod ramsum;
#[path = "guest/src/window.rs"]
mod window;

/// The `checksum` scenario's documented value for its defaults (seed 1,
/// 64 KiB): what a host-side test can expect in `SHOAL-TG ramsum` lines.
#[cfg(test)]
mod ramsum_contract {
    use crate::ramsum::{checksum, Pattern};

    #[test]
    fn default_checksum_scenario_sum() {
        let mut pattern = Pattern::new(1);
        let sum = checksum((0..8192).map(|_| pattern.next_word()));
        assert_eq!(sum, 0xb7e1_287c_2ec6_ad7a);
    }
}

/// The guest's ACPI parser over the tables Shoal's `arch` crate writes:
/// the contract of docs/platform.md, checked from both sides.
#[cfg(test)]
mod platform_contract {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use crate::acpi::{self, GAS_IO};
    use crate::mem::Memory;

    struct Ram(GuestMemoryMmap);

    impl Memory for Ram {
        fn read8(&self, addr: u64) -> u8 {
            self.0.read_obj::<u8>(GuestAddress(addr)).unwrap_or(0xff)
        }

        fn contains(&self, addr: u64, len: u64) -> bool {
            addr.checked_add(len).is_some_and(|end| end <= 2 << 20)
        }
    }

    fn tables(num_cpus: u32) -> (Ram, u64) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let config = arch::acpi::AcpiConfig {
            num_cpus,
            ram_bytes: 128 << 20,
        };
        let rsdp = arch::acpi::create_acpi_tables(&mem, &config).unwrap();
        (Ram(mem), rsdp.0)
    }

    #[test]
    fn guest_finds_every_cpu_in_shoal_madt() {
        let (ram, rsdp) = tables(3);
        let info = acpi::discover(&ram, rsdp).unwrap();
        let madt = info.madt.unwrap();
        assert_eq!(madt.apic_ids(), &[0, 1, 2]);
        assert_eq!(madt.lapic_address, 0xfee0_0000);
        assert_eq!(madt.ioapic, Some((0, 0xfec0_0000, 0)));
    }

    #[test]
    fn guest_finds_shoal_sleep_and_reset_registers() {
        let (ram, rsdp) = tables(1);
        let fadt = acpi::discover(&ram, rsdp).unwrap().fadt.unwrap();
        assert_ne!(fadt.flags & acpi::FADT_HW_REDUCED, 0);
        assert_eq!(
            (fadt.sleep_control.space, fadt.sleep_control.address),
            (GAS_IO, 0x3c0)
        );
        assert_eq!(
            (fadt.sleep_status.space, fadt.sleep_status.address),
            (GAS_IO, 0x3c1)
        );
        assert_eq!(
            (fadt.reset_reg.space, fadt.reset_reg.address),
            (GAS_IO, 0x3c4)
        );
        assert_eq!(fadt.reset_value, 1);
    }

    #[test]
    fn guest_finds_shoal_ecam_window() {
        let (ram, rsdp) = tables(1);
        let mcfg = acpi::discover(&ram, rsdp).unwrap().mcfg.unwrap();
        assert_eq!(
            (mcfg.base, mcfg.start_bus, mcfg.end_bus),
            (0xe000_0000, 0, 255)
        );
    }

    #[test]
    fn guest_finds_shoal_rsdp_by_scanning() {
        let (ram, rsdp) = tables(1);
        assert_eq!(acpi::find_rsdp(&ram, 0), Ok(rsdp));
    }
}
