// SPDX-License-Identifier: Apache-2.0
//! The Shoal test guest: a freestanding PVH ELF that reports over COM1.
//!
//! It owns its boot path (PVH entry, page tables, long mode, AP
//! trampoline), ACPI/PCI/SMP discovery and the scenarios that end-to-end
//! tests select with `scenario=<name>` on the command line. It depends on
//! nothing but `core`, and it must only use instructions KVM's instruction
//! emulator implements: plain integer code, no SSE/AVX/x87 (built with
//! those target features off; a test checks the disassembly), and no
//! `core::fmt`.
//!
//! Every line it prints starts with `SHOAL-TG `; see README.md.

#![no_std]
#![no_main]

mod acpi;
mod apic;
mod boot;
mod cmdline;
mod interrupts;
mod io;
mod ioapic;
mod ivshmem;
mod mem;
mod paging;
mod pci;
mod pci_bars;
mod power;
mod ramsum;
mod rt;
mod scenarios;
mod serial;
mod smp;
mod start_info;
mod timer;
mod window;

use acpi::AcpiError;
use boot::BootProtocol;
use cmdline::Args;
use start_info::StartInfo;

/// The linker script, included so that cargo relinks when it changes.
const _LINKER_SCRIPT: &str = include_str!("../linker.ld");

/// 8259 PIC data ports: writing 0xff masks every line.
const PIC1_DATA: u16 = 0x21;
const PIC2_DATA: u16 = 0xa1;

fn report_acpi_error(error: &AcpiError) {
    let mut line = serial::error();
    line.str("acpi ").str(error.message());
    if let Some(signature) = error.signature() {
        line.str(" ").bytes(&signature);
    }
}

/// Rust entry of the bootstrap processor (called from `boot`):
/// `boot_info_addr` is the PVH start info or the Linux zero page, per
/// `protocol` ([`BootProtocol`]).
#[no_mangle]
pub extern "C" fn shoal_bsp_main(boot_info_addr: u32, protocol: u32) -> ! {
    // An uninitialised PIC would deliver IRQ n as vector n through LINT0.
    io::outb(PIC1_DATA, 0xff);
    io::outb(PIC2_DATA, 0xff);
    serial::init();
    interrupts::init();

    let protocol = BootProtocol::from_u32(protocol);
    serial::line().str("entry ").str(protocol.name());
    let addr = u64::from(boot_info_addr);
    let info = match protocol {
        BootProtocol::Pvh => StartInfo::read(addr),
        BootProtocol::Linux64 => StartInfo::read_zero_page(addr),
    };
    let info = match info {
        Ok(info) => Some(info),
        Err(e) => {
            serial::error().str(e.message()).str(" ").hex0x(e.value());
            None
        }
    };
    if let Some(dropped) = info.as_ref().map(|i| i.memmap_dropped).filter(|&d| d > 0) {
        serial::error()
            .str("memory map: ")
            .dec(dropped as u64)
            .str(" entries beyond the guest's limit");
    }
    let args = Args::new(info.as_ref().map_or(&[][..], |i| i.cmdline()));
    let name = args.scenario();
    serial::line().str("start ").bytes(name);

    let rsdp_hint = info.as_ref().map_or(0, |i| i.rsdp_paddr);
    let acpi = match acpi::discover(&io::Phys, rsdp_hint) {
        Ok(acpi) => Some(acpi),
        Err(error) => {
            report_acpi_error(&error);
            None
        }
    };
    let madt = acpi
        .as_ref()
        .and_then(|a| a.madt.as_ref().map_err(report_acpi_error).ok());
    let fadt = acpi
        .as_ref()
        .and_then(|a| a.fadt.as_ref().map_err(report_acpi_error).ok());
    // The MCFG is optional (no ECAM check without it); a bad one is an error.
    let mcfg = acpi.as_ref().and_then(|a| match &a.mcfg {
        Ok(mcfg) => Some(mcfg),
        Err(AcpiError::Missing(_)) => None,
        Err(e) => {
            report_acpi_error(e);
            None
        }
    });
    if let Some(madt) = madt {
        apic::set_base(u64::from(madt.lapic_address));
        serial::line().str("acpi cpus ").dec(madt.cpu_count as u64);
        if madt.cpus_dropped > 0 {
            serial::error()
                .str("acpi ")
                .dec(madt.cpus_dropped as u64)
                .str(" cpus beyond the guest's limit of ")
                .dec(acpi::MAX_CPUS as u64);
        }
    }
    if let Some(fadt) = fadt {
        power::set_fadt(fadt);
    }

    match scenarios::find(name) {
        Some(scenario) => {
            (scenario.run)(&scenarios::Context {
                args,
                madt,
                fadt,
                mcfg,
                memmap: info.as_ref().map_or(&[][..], |i| i.memmap()),
            });
            serial::line().str("done");
        }
        None => {
            serial::error().str("unknown scenario ").bytes(name);
        }
    }
    power::off()
}
