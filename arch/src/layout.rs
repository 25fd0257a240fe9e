// SPDX-License-Identifier: Apache-2.0
//! The guest physical memory map (docs/platform.md, "Memory map").
//!
//! Every fixed address the platform uses lives here, so that the boot code,
//! the ACPI tables and the VMM agree on one map.

use vm_memory::GuestAddress;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Guest page size used for alignment of RAM sizes and the initramfs.
pub const PAGE_SIZE: u64 = 4 * KIB;

/// GDT used for the boot entry (4 entries, 32 bytes).
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Empty IDT used for the boot entry.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// PVH `hvm_start_info`, followed by the module list and the memory map.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// End (exclusive) of the area reserved for the PVH start info and its tables.
pub const PVH_INFO_END: GuestAddress = GuestAddress(0x7000);
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Boot page tables: PML4 at this address, then the PDPT and one PD.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page-directory-pointer table of the boot page tables.
pub const PDPT_START: GuestAddress = GuestAddress(0xa000);
/// Page directory of the boot page tables (512 x 2 MiB = the first 1 GiB).
pub const PD_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Largest command line the area at [`CMDLINE_START`] holds, NUL excluded.
pub const CMDLINE_MAX_LEN: usize = 64 * 1024 - 1;
/// Start of the reserved EBDA/ROM area; RAM below it is usable.
pub const EBDA_START: GuestAddress = GuestAddress(0x9_fc00);
/// ACPI tables: the RSDP first, then the other tables.
pub const ACPI_START: GuestAddress = GuestAddress(0xe_0000);
/// End (exclusive) of the reserved area below 1 MiB, and of the ACPI area.
pub const ACPI_END: GuestAddress = GuestAddress(0x10_0000);
/// Where the kernel is loaded (1 MiB); also the start of RAM above the ROM area.
pub const HIGH_RAM_START: GuestAddress = GuestAddress(0x10_0000);

/// End (exclusive) of RAM below 4 GiB: RAM stops at 3 GiB.
pub const LOW_RAM_END: GuestAddress = GuestAddress(3 * GIB);
/// 32-bit PCI MMIO window.
pub const MMIO32_START: GuestAddress = GuestAddress(3 * GIB);
/// Size of the 32-bit PCI MMIO window (512 MiB).
pub const MMIO32_SIZE: u64 = 512 * MIB;
/// PCI ECAM (MCFG), segment 0, buses 0-255.
pub const PCI_ECAM_START: GuestAddress = GuestAddress(0xe000_0000);
/// Size of the ECAM area: 256 buses x 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// In-kernel IOAPIC.
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// Local APICs.
pub const APIC_START: GuestAddress = GuestAddress(0xfee0_0000);
/// RAM above 3 GiB continues here.
pub const RAM_64BIT_START: GuestAddress = GuestAddress(4 * GIB);
/// Alignment of the 64-bit PCI MMIO window.
pub const MMIO64_ALIGN: u64 = GIB;
/// Size of the 64-bit PCI MMIO window.
pub const MMIO64_SIZE: u64 = 64 * GIB;

/// Smallest guest RAM the platform accepts: the area below 1 MiB plus 1 MiB.
pub const MIN_RAM_BYTES: u64 = 2 * MIB;
/// Largest guest RAM the platform accepts (1 TiB).
pub const MAX_RAM_BYTES: u64 = 1024 * GIB;
/// Most vCPUs the platform describes (xAPIC IDs 0..=254 in the MADT and CPUID).
pub const MAX_VCPUS: u32 = 255;

// The fixed areas must not overlap; checked at compile time.
const _: () = {
    assert!(BOOT_GDT_START.0 + 32 <= BOOT_IDT_START.0);
    assert!(PVH_INFO_END.0 <= ZERO_PAGE_START.0);
    assert!(ZERO_PAGE_START.0 + PAGE_SIZE <= PML4_START.0);
    assert!(PD_START.0 + PAGE_SIZE <= CMDLINE_START.0);
    assert!(CMDLINE_START.0 + (CMDLINE_MAX_LEN as u64) < EBDA_START.0);
    assert!(EBDA_START.0 <= ACPI_START.0 && ACPI_END.0 <= HIGH_RAM_START.0);
    assert!(MMIO32_START.0 + MMIO32_SIZE <= PCI_ECAM_START.0);
    assert!(PCI_ECAM_START.0 + PCI_ECAM_SIZE <= IOAPIC_START.0);
};

/// Errors of the memory-map checks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM size below [`MIN_RAM_BYTES`].
    #[error("Guest RAM of {0} bytes is below the minimum of {MIN_RAM_BYTES} bytes")]
    RamTooSmall(u64),
    /// RAM size above [`MAX_RAM_BYTES`].
    #[error("Guest RAM of {0} bytes is above the maximum of {MAX_RAM_BYTES} bytes")]
    RamTooLarge(u64),
    /// RAM size not a multiple of [`PAGE_SIZE`].
    #[error("Guest RAM of {0} bytes is not a multiple of 4 KiB")]
    RamNotPageAligned(u64),
    /// vCPU count outside 1..=[`MAX_VCPUS`].
    #[error("{0} vCPUs requested; the platform supports 1 to {MAX_VCPUS}")]
    BadVcpuCount(u32),
}

/// Checks that `ram_bytes` is a RAM size the platform can lay out.
pub fn check_ram_bytes(ram_bytes: u64) -> Result<(), LayoutError> {
    if ram_bytes < MIN_RAM_BYTES {
        return Err(LayoutError::RamTooSmall(ram_bytes));
    }
    if ram_bytes > MAX_RAM_BYTES {
        return Err(LayoutError::RamTooLarge(ram_bytes));
    }
    if ram_bytes % PAGE_SIZE != 0 {
        return Err(LayoutError::RamNotPageAligned(ram_bytes));
    }
    Ok(())
}

/// Checks that `num_cpus` is a vCPU count the platform can describe.
pub fn check_vcpu_count(num_cpus: u32) -> Result<(), LayoutError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(LayoutError::BadVcpuCount(num_cpus));
    }
    Ok(())
}

/// Guest RAM regions `(start, size)` for `ram_bytes` of RAM, split around the
/// 3 GiB..4 GiB hole: up to 3 GiB at 0, the rest at 4 GiB.
pub fn ram_regions(ram_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = ram_bytes.min(LOW_RAM_END.0);
    let mut regions = vec![(GuestAddress(0), low)];
    let high = ram_bytes - low;
    if high > 0 {
        regions.push((RAM_64BIT_START, high));
    }
    regions
}

/// End (exclusive) of the RAM below 4 GiB for `ram_bytes` of RAM.
pub fn low_ram_end(ram_bytes: u64) -> GuestAddress {
    GuestAddress(ram_bytes.min(LOW_RAM_END.0))
}

/// End (exclusive) of all guest RAM: the top of low RAM, or of the RAM above 4 GiB.
pub fn ram_end(ram_bytes: u64) -> GuestAddress {
    match ram_bytes.checked_sub(LOW_RAM_END.0) {
        Some(high) if high > 0 => GuestAddress(RAM_64BIT_START.0.saturating_add(high)),
        _ => low_ram_end(ram_bytes),
    }
}

/// The 64-bit PCI MMIO window `(start, size)`: 1 GiB aligned after the end of
/// RAM (never below 4 GiB), 64 GiB long.
pub fn mmio64_window(ram_bytes: u64) -> (GuestAddress, u64) {
    let end = ram_end(ram_bytes).0.max(RAM_64BIT_START.0);
    let start = end.div_ceil(MMIO64_ALIGN).saturating_mul(MMIO64_ALIGN);
    (GuestAddress(start), MMIO64_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_ram_region() {
        assert_eq!(ram_regions(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
    }

    #[test]
    fn exactly_three_gib_has_one_ram_region() {
        assert_eq!(ram_regions(3 * GIB), vec![(GuestAddress(0), 3 * GIB)]);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        assert_eq!(
            ram_regions(4 * GIB),
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), GIB)]
        );
        assert_eq!(ram_end(4 * GIB), GuestAddress(5 * GIB));
    }

    #[test]
    fn mmio64_window_follows_ram_aligned() {
        assert_eq!(mmio64_window(128 * MIB), (GuestAddress(4 * GIB), 64 * GIB));
        assert_eq!(mmio64_window(4 * GIB), (GuestAddress(5 * GIB), 64 * GIB));
        assert_eq!(
            mmio64_window(4 * GIB + 4 * KIB),
            (GuestAddress(6 * GIB), 64 * GIB)
        );
    }

    #[test]
    fn ram_size_checks() {
        assert_eq!(check_ram_bytes(MIB), Err(LayoutError::RamTooSmall(MIB)));
        assert_eq!(
            check_ram_bytes(2 * MAX_RAM_BYTES),
            Err(LayoutError::RamTooLarge(2 * MAX_RAM_BYTES))
        );
        assert_eq!(
            check_ram_bytes(128 * MIB + 1),
            Err(LayoutError::RamNotPageAligned(128 * MIB + 1))
        );
        assert_eq!(check_ram_bytes(128 * MIB), Ok(()));
    }

    #[test]
    fn vcpu_count_checks() {
        assert!(check_vcpu_count(0).is_err());
        assert!(check_vcpu_count(256).is_err());
        assert!(check_vcpu_count(1).is_ok());
        assert!(check_vcpu_count(255).is_ok());
    }
}
