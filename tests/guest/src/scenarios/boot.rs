// SPDX-License-Identifier: Apache-2.0
//! `scenario=boot`: bring up every CPU of the MADT, then list bus 0.
//!
//! Lines: `SHOAL-TG cpu <apic id> up` per CPU (the BSP first), then
//! `SHOAL-TG pci 00:<dev>.<fn> <vendor>:<device>` per function.

use super::Context;
use crate::{pci, serial, smp};

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let bsp_only = [crate::apic::id()];
    let apic_ids = match ctx.madt {
        Some(madt) => madt.apic_ids(),
        None => &bsp_only[..],
    };
    smp::start_all(apic_ids);
    pci::scan_bus0(|f| {
        serial::line()
            .str("pci ")
            .hex(u64::from(f.bdf.bus), 2)
            .str(":")
            .hex(u64::from(f.bdf.device), 2)
            .str(".")
            .hex(u64::from(f.bdf.function), 1)
            .str(" ")
            .hex(u64::from(f.vendor), 4)
            .str(":")
            .hex(u64::from(f.device), 4);
    });
}
