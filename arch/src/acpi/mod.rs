// SPDX-License-Identifier: Apache-2.0
//! ACPI tables (hardware-reduced ACPI 6.x), written at
//! [`crate::layout::ACPI_START`]: the RSDP first, then DSDT, FADT, MADT,
//! MCFG and XSDT.

pub mod dsdt;
pub mod tables;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{check_vcpu_count, mmio64_window, LayoutError, ACPI_END, ACPI_START};

/// Errors of [`create_acpi_tables`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count cannot be described.
    #[error("Cannot describe the vCPUs")]
    VcpuCount(#[source] LayoutError),
    /// The tables overflow the reserved area.
    #[error("ACPI tables need {needed} bytes; the reserved area holds {available}")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Writing guest memory failed.
    #[error("Writing ACPI tables to guest memory failed")]
    GuestMemory(#[source] GuestMemoryError),
}

/// What the ACPI tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig {
    /// Number of vCPUs (1..=255); vCPU *i* has APIC ID *i*.
    pub num_cpus: u32,
    /// Guest RAM size; places the 64-bit PCI MMIO window.
    pub ram_bytes: u64,
}

/// Tables are placed on this alignment.
const TABLE_ALIGN: u64 = 16;

/// Places tables one after the other in the ACPI area.
struct Placer {
    next: u64,
    tables: Vec<(u64, Vec<u8>)>,
}

impl Placer {
    fn place(&mut self, bytes: Vec<u8>) -> u64 {
        let at = self.next.div_ceil(TABLE_ALIGN) * TABLE_ALIGN;
        self.next = at + bytes.len() as u64;
        self.tables.push((at, bytes));
        at
    }
}

/// Builds all ACPI tables for `cfg` and writes them into `mem`; returns the
/// RSDP address (for the zero page's `acpi_rsdp_addr` and PVH `rsdp_paddr`).
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    check_vcpu_count(cfg.num_cpus).map_err(AcpiError::VcpuCount)?;
    let num_cpus = u8::try_from(cfg.num_cpus)
        .map_err(|_| AcpiError::VcpuCount(LayoutError::BadVcpuCount(cfg.num_cpus)))?;
    let (mmio64_start, mmio64_size) = mmio64_window(cfg.ram_bytes);

    let rsdp_len = tables::rsdp(0).len() as u64;
    let mut placer = Placer {
        next: ACPI_START.0 + rsdp_len,
        tables: Vec::new(),
    };
    let dsdt = placer.place(tables::dsdt(&dsdt::dsdt_aml((mmio64_start.0, mmio64_size))));
    let fadt = placer.place(tables::fadt(dsdt));
    let madt = placer.place(tables::madt(num_cpus));
    let mcfg = placer.place(tables::mcfg());
    let xsdt = placer.place(tables::xsdt(&[fadt, madt, mcfg]));
    placer.tables.push((ACPI_START.0, tables::rsdp(xsdt)));

    if placer.next > ACPI_END.0 {
        return Err(AcpiError::TooLarge {
            needed: placer.next - ACPI_START.0,
            available: ACPI_END.0 - ACPI_START.0,
        });
    }
    for (at, bytes) in &placer.tables {
        mem.write_slice(bytes, GuestAddress(*at))
            .map_err(AcpiError::GuestMemory)?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests;
