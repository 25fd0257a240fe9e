// SPDX-License-Identifier: Apache-2.0
//! `scenario=fault [kind=ud|pf|de]`: raises an exception on purpose, to
//! check that exceptions are reported (`SHOAL-TG error exception <n> ...`)
//! and the machine powers off instead of triple-faulting. Never reaches
//! `SHOAL-TG done`.

use core::arch::asm;

use super::Context;
use crate::serial;

/// An address above the 4 GiB identity map: not mapped.
const UNMAPPED: u64 = 0x10_0000_0000;

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let kind = ctx.args.get("kind").unwrap_or(b"ud");
    serial::line().str("fault ").bytes(kind);
    match kind {
        // SAFETY: raises #UD on purpose; the handler powers off.
        b"ud" => unsafe { asm!("ud2", options(nomem, nostack)) },
        b"pf" => {
            // SAFETY: reads an unmapped address on purpose to raise #PF;
            // the handler powers off.
            let _ = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
        }
        // SAFETY: divides by zero on purpose to raise #DE; the handler
        // powers off.
        b"de" => unsafe {
            asm!("xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _,
                options(nomem, nostack))
        },
        _ => {
            serial::error().str("fault kind must be ud, pf or de");
        }
    }
    serial::error().str("fault did not trap");
}
