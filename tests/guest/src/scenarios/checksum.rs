// SPDX-License-Identifier: Apache-2.0
//! `scenario=checksum [base=<addr>] [len=<bytes>] [seed=<n>] [fill=0|1]
//! [interval=<ms>] [count=<n>]`: fills `len` bytes (default 64 KiB) at
//! `base` (default 16 MiB) with the xorshift pattern of `seed` (default 1;
//! `fill=0` keeps what is there), then prints
//! `SHOAL-TG ramsum 0x<base> 0x<len> <16 hex digits>` every `interval` ms
//! (default 500, sleeping in between) `count` times (default 0: forever,
//! else `done` after the last). The buffer is never written again, so every
//! line must show the same sum; a change prints `SHOAL-TG error ramsum
//! changed <old> <new>` (memory corrupted, e.g. by a migration). The sum
//! and pattern are in `ramsum.rs` (FNV-1a over little-endian u64 words).

use super::ram::Buffer;
use super::Context;
use crate::ramsum::{self, Pattern};
use crate::{serial, timer};

const DEFAULT_LEN: u64 = 64 << 10;
const DEFAULT_INTERVAL_MS: u64 = 500;

fn sum(buffer: &Buffer) -> u64 {
    ramsum::checksum((0..buffer.len() / 8).map(|i| buffer.read64(i * 8)))
}

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let args = &ctx.args;
    let len = args.get_u64("len").unwrap_or(DEFAULT_LEN);
    let Some(buffer) = Buffer::from_args(ctx, "checksum", len) else {
        return;
    };
    if args.get_u64("fill") != Some(0) {
        let mut pattern = Pattern::new(args.get_u64("seed").unwrap_or(1));
        for i in 0..len / 8 {
            buffer.write64(i * 8, pattern.next_word());
        }
    }
    let interval =
        (args.get_u64("interval").unwrap_or(DEFAULT_INTERVAL_MS) * timer::TICK_HZ / 1000).max(1);
    let count = args.get_u64("count").unwrap_or(0);
    timer::start();
    let first = sum(&buffer);
    let mut printed = 0u64;
    loop {
        let now = if printed == 0 { first } else { sum(&buffer) };
        serial::line()
            .str("ramsum ")
            .hex0x(buffer.base())
            .str(" ")
            .hex0x(buffer.len())
            .str(" ")
            .hex(now, 16);
        if now != first {
            serial::error()
                .str("ramsum changed ")
                .hex(first, 16)
                .str(" ")
                .hex(now, 16);
            return;
        }
        printed += 1;
        if count != 0 && printed >= count {
            return;
        }
        let start = timer::ticks();
        timer::wait_until(|| timer::ticks().wrapping_sub(start) >= interval, u64::MAX);
    }
}
