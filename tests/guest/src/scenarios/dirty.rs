// SPDX-License-Identifier: Apache-2.0
//! `scenario=dirty [pages=<n>] [stride=<bytes>] [base=<addr>] [every=<passes>]
//! [limit=<passes>]`: rewrites `pages` pages (default 64, from `base`,
//! default 16 MiB) over and over, for migration tests that need a guest
//! dirtying memory. A pass writes `pass << 32 | page` to every `stride`
//! bytes (default 4096: one word per page) of each page; before writing
//! the first word of a page it checks that the page still holds the
//! previous pass (`SHOAL-TG error dirty page <i> pass <p> holds 0x...`
//! otherwise: memory lost in a move). Prints `SHOAL-TG dirty start pages
//! <n> stride <s> base 0x<b>`, then `SHOAL-TG dirty pass <p>` every `every`
//! passes (default 64), until `limit` passes (then `done`) or forever.

use super::ram::Buffer;
use super::Context;
use crate::serial;

const PAGE: u64 = 4096;
const DEFAULT_PAGES: u64 = 64;
const DEFAULT_EVERY: u64 = 64;

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let args = &ctx.args;
    let pages = args.get_u64("pages").unwrap_or(DEFAULT_PAGES).max(1);
    let stride = args.get_u64("stride").unwrap_or(PAGE);
    if stride == 0 || !stride.is_multiple_of(8) || stride > PAGE {
        serial::error().str("dirty stride must be 8 to 4096, a multiple of 8");
        return;
    }
    let every = args.get_u64("every").unwrap_or(DEFAULT_EVERY).max(1);
    let limit = args.get_u64("limit").unwrap_or(u64::MAX);
    let Some(buffer) = Buffer::from_args(ctx, "dirty", pages.saturating_mul(PAGE)) else {
        return;
    };
    serial::line()
        .str("dirty start pages ")
        .dec(pages)
        .str(" stride ")
        .dec(stride)
        .str(" base ")
        .hex0x(buffer.base());
    let mut pass: u64 = 0;
    while pass < limit {
        pass += 1;
        for page in 0..pages {
            let at = page * PAGE;
            let previous = ((pass - 1) << 32) | page;
            let held = buffer.read64(at);
            // The first pass finds whatever was there.
            if pass > 1 && held != previous {
                serial::error()
                    .str("dirty page ")
                    .dec(page)
                    .str(" pass ")
                    .dec(pass)
                    .str(" holds ")
                    .hex0x(held);
                return;
            }
            let value = (pass << 32) | page;
            let mut off = 0;
            while off < PAGE {
                buffer.write64(at + off, value);
                off += stride;
            }
        }
        if pass.is_multiple_of(every) {
            serial::line().str("dirty pass ").dec(pass);
        }
    }
}
