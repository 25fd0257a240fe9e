// SPDX-License-Identifier: Apache-2.0
//! `scenario=counter [shift=<k>] [limit=<n>]`: increments a 64-bit counter
//! in RAM (a static of the image) and prints `SHOAL-TG counter <n>` every
//! `2^k` increments (default `k` = 16: a line every 0.5-2 s under KVM's
//! instruction emulator; raise it on hardware-virtualized hosts). Runs
//! until the VM is stopped, or until the counter reaches `limit` (then
//! `done`). For snapshot/migration tests: the values keep increasing
//! across a restore.

use core::sync::atomic::{AtomicU64, Ordering};

use super::Context;
use crate::serial;

const DEFAULT_SHIFT: u64 = 16;

/// The counter, in the image's `.bss` (guest RAM).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let shift = ctx.args.get_u64("shift").unwrap_or(DEFAULT_SHIFT).min(63);
    let mask = (1u64 << shift) - 1;
    let limit = ctx.args.get_u64("limit").unwrap_or(u64::MAX);
    serial::line().str("counter start every ").dec(mask + 1);
    loop {
        // A plain load and store, not a locked add: only this CPU counts.
        let value = COUNTER.load(Ordering::Relaxed).wrapping_add(1);
        COUNTER.store(value, Ordering::Relaxed);
        if value & mask == 0 {
            serial::line().str("counter ").dec(value);
        }
        if value >= limit {
            serial::line().str("counter ").dec(value);
            return;
        }
    }
}
