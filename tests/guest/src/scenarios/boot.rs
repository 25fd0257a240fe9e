// SPDX-License-Identifier: Apache-2.0
//! `scenario=boot`: bring up every CPU of the MADT, then list bus 0.
//!
//! Lines: `SHOAL-TG mem <start> <size> <e820 type>` per memory map entry
//! and `SHOAL-TG mem ram-bytes <n>` (the RAM total), then
//! `SHOAL-TG cpu <apic id> up` per CPU (the BSP first), then
//! `SHOAL-TG pci 00:<dev>.<fn> <vendor>:<device>` per function found
//! through ports 0xcf8/0xcfc. With an MCFG, bus 0 is scanned again through
//! ECAM and must give the same list: `SHOAL-TG pci ecam agrees <n>`, or an
//! error line per difference.

use super::Context;
use crate::pci::{self, Access, Function};
use crate::start_info::{MemRegion, E820_RAM};
use crate::{serial, smp};

extern "C" {
    /// First and last byte + 1 of the loaded image (`linker.ld`).
    static __image_start: u8;
    static __image_end: u8;
}

/// Functions remembered for the ECAM comparison (bus 0 has at most 256).
const MAX_FUNCTIONS: usize = 256;

/// Runs the scenario.
pub fn run(ctx: &Context) {
    report_memory(ctx.memmap);
    let bsp_only = [crate::apic::id()];
    let apic_ids = match ctx.madt {
        Some(madt) => madt.apic_ids(),
        None => &bsp_only[..],
    };
    smp::start_all(apic_ids);

    let mut found = [None; MAX_FUNCTIONS];
    let mut count = 0;
    pci::scan_bus0(|f| {
        print_function("pci ", f);
        if let Some(slot) = found.get_mut(count) {
            *slot = Some(*f);
        }
        count += 1;
    });
    if let Some(mcfg) = ctx.mcfg {
        compare_ecam(Access::Ecam(*mcfg), found.get(..count).unwrap_or(&[]));
    }
}

fn print_function(prefix: &str, f: &Function) {
    serial::line()
        .str(prefix)
        .hex(u64::from(f.bdf.bus), 2)
        .str(":")
        .hex(u64::from(f.bdf.device), 2)
        .str(".")
        .hex(u64::from(f.bdf.function), 1)
        .str(" ")
        .hex(u64::from(f.vendor), 4)
        .str(":")
        .hex(u64::from(f.device), 4);
}

/// Scans bus 0 through `ecam` and reports every function that differs
/// from `port` (the port scan, in the same order).
fn compare_ecam(ecam: Access, port: &[Option<Function>]) {
    let mut index = 0;
    let mut agree = true;
    pci::scan_bus0_via(ecam, |f| {
        if port.get(index).copied().flatten() != Some(*f) {
            print_function("error pci ecam differs at ", f);
            agree = false;
        }
        index += 1;
    });
    if index < port.len() {
        serial::error()
            .str("pci ecam finds ")
            .dec(index as u64)
            .str(" functions, ports ")
            .dec(port.len() as u64);
        agree = false;
    }
    if agree {
        serial::line().str("pci ecam agrees ").dec(index as u64);
    }
}

/// Prints the memory map and checks that the image lies in RAM.
fn report_memory(memmap: &[MemRegion]) {
    if memmap.is_empty() {
        serial::error().str("mem no memory map");
        return;
    }
    let mut ram: u64 = 0;
    for region in memmap {
        serial::line()
            .str("mem ")
            .hex0x(region.addr)
            .str(" ")
            .hex0x(region.size)
            .str(" ")
            .dec(u64::from(region.kind));
        if region.kind == E820_RAM {
            ram = ram.saturating_add(region.size);
        }
    }
    serial::line().str("mem ram-bytes ").dec(ram);
    let start = core::ptr::addr_of!(__image_start) as u64;
    let end = core::ptr::addr_of!(__image_end) as u64;
    let in_ram = memmap
        .iter()
        .any(|r| r.kind == E820_RAM && r.addr <= start && end <= r.addr.saturating_add(r.size));
    if !in_ram {
        serial::error()
            .str("mem image ")
            .hex0x(start)
            .str("-")
            .hex0x(end)
            .str(" not in one ram region");
    }
}
