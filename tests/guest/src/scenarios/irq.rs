// SPDX-License-Identifier: Apache-2.0
//! `scenario=irq [count=<n>] [vector=<v>]`: interrupt delivery and return.
//!
//! Sends `count` (default 3) self-IPIs with `vector` (default 0x40) through
//! the local APIC, one at a time with interrupts on, and waits for each to
//! reach its handler and return (`iretq`). Prints
//! `SHOAL-TG irq <vector> delivered <count>` on success, or
//! `SHOAL-TG error irq <i> not delivered` for the first one that is missing.

use core::sync::atomic::{AtomicU64, Ordering};

use super::Context;
use crate::interrupts::{self, FIRST_EXTERNAL};
use crate::io::pause;
use crate::{apic, serial};

const DEFAULT_COUNT: u64 = 3;
const DEFAULT_VECTOR: u64 = 0x40;
/// Polls of the counter per interrupt before giving up.
const WAIT_LIMIT: u32 = 1_000_000;

static RECEIVED: AtomicU64 = AtomicU64::new(0);

fn on_interrupt(_vector: u8) {
    RECEIVED.fetch_add(1, Ordering::AcqRel);
}

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let count = ctx.args.get_u64("count").unwrap_or(DEFAULT_COUNT);
    let vector = match u8::try_from(ctx.args.get_u64("vector").unwrap_or(DEFAULT_VECTOR)) {
        Ok(v) if v >= FIRST_EXTERNAL && v != 0xff => v,
        _ => {
            serial::error().str("irq vector must be 32-254");
            return;
        }
    };
    interrupts::set_handler(vector, on_interrupt);
    apic::enable();
    interrupts::enable();
    for i in 0..count {
        if !apic::send_self(vector) {
            serial::error().str("irq ").dec(i).str(" ipi not accepted");
            break;
        }
        let mut polls = 0;
        while RECEIVED.load(Ordering::Acquire) <= i && polls < WAIT_LIMIT {
            pause();
            polls += 1;
        }
        if RECEIVED.load(Ordering::Acquire) <= i {
            serial::error().str("irq ").dec(i).str(" not delivered");
            break;
        }
    }
    interrupts::disable();
    let received = RECEIVED.load(Ordering::Acquire);
    if received == count {
        serial::line()
            .str("irq ")
            .hex0x(u64::from(vector))
            .str(" delivered ")
            .dec(received);
    }
}
