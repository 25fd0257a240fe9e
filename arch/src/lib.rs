// SPDX-License-Identifier: Apache-2.0
//! The x86_64 guest platform of Shoal.
//!
//! This crate owns everything a guest sees before its first instruction, as
//! specified by `docs/platform.md`: the memory map ([`layout`]), the e820
//! map ([`e820`]), kernel and initramfs loading ([`loader`]), the boot
//! information (Linux zero page in [`boot_params`], PVH start info in
//! [`pvh`], both written by [`configure_boot`]), the boot vCPU state
//! ([`regs`], [`msr`]), CPUID ([`cpuid`]) and the ACPI tables ([`acpi`]).
//!
//! It writes guest memory through `vm-memory` and builds register values
//! with the plain structs re-exported by `hypervisor::x86_64`. It must not
//! talk to KVM, open devices, or depend on `devices`, `shmem-group` or
//! `vmm`: the VMM calls it and applies the results.

pub mod acpi;
pub mod boot;
pub mod boot_params;
pub mod cpuid;
pub mod e820;
pub mod layout;
pub mod loader;
pub mod msr;
pub mod pvh;
pub mod regs;

pub use acpi::{create_acpi_tables, AcpiConfig, AcpiError};
pub use boot::{configure_boot, BootConfig, BootError};
pub use cpuid::{build_cpuid, CpuidOptions};
pub use e820::{e820_entries, E820Entry};
pub use layout::{check_ram_bytes, check_vcpu_count, mmio64_window, ram_regions, LayoutError};
pub use loader::{
    load_initramfs, load_kernel, open_image, BootProtocol, InitramfsRegion, KernelEntry,
    LoaderError,
};
pub use msr::boot_msrs;
pub use regs::{boot_fpu, boot_regs, boot_sregs, RegsError};
