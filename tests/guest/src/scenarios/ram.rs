// SPDX-License-Identifier: Apache-2.0
//! A buffer of guest RAM for the memory scenarios (`counter`, `dirty`,
//! `checksum`): `base=<addr>` (default [`DEFAULT_BASE`]) and a length,
//! checked to lie in one RAM region of the memory map, past the image.

use super::Context;
use crate::serial;
use crate::start_info::E820_RAM;

/// Default start of the buffer: 16 MiB, well past the image at 1 MiB.
pub const DEFAULT_BASE: u64 = 16 << 20;

extern "C" {
    /// End of the loaded image, stacks included (`linker.ld`).
    static __image_end: u8;
}

/// A checked RAM range, accessed by aligned 64-bit words.
#[derive(Debug, Clone, Copy)]
pub struct Buffer {
    base: u64,
    len: u64,
}

impl Buffer {
    /// The buffer `base=`/`len` from the command line, or an error line
    /// and `None` when it is not 8-aligned RAM past the image.
    pub fn from_args(ctx: &Context, name: &str, len: u64) -> Option<Buffer> {
        let base = ctx.args.get_u64("base").unwrap_or(DEFAULT_BASE);
        let image_end = core::ptr::addr_of!(__image_end) as u64;
        let end = base.checked_add(len);
        let in_ram = end.is_some_and(|end| {
            ctx.memmap.iter().any(|r| {
                r.kind == E820_RAM && r.addr <= base && end <= r.addr.saturating_add(r.size)
            })
        });
        if !base.is_multiple_of(8) || !len.is_multiple_of(8) || base < image_end || !in_ram {
            serial::error()
                .str(name)
                .str(" buffer ")
                .hex0x(base)
                .str(" len ")
                .hex0x(len)
                .str(" is not aligned ram past the image");
            return None;
        }
        Some(Buffer { base, len })
    }

    /// First byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn word(&self, offset: u64) -> Option<*mut u64> {
        let end = offset.checked_add(8)?;
        (offset.is_multiple_of(8) && end <= self.len).then_some((self.base + offset) as *mut u64)
    }

    /// The word at `offset` (0 outside the buffer).
    pub fn read64(&self, offset: u64) -> u64 {
        match self.word(offset) {
            // SAFETY: `from_args` checked the buffer is RAM of the memory
            // map, identity-mapped, past the image (no Rust object lives
            // there); `word` checked the bounds and alignment.
            Some(ptr) => unsafe { core::ptr::read_volatile(ptr) },
            None => 0,
        }
    }

    /// Writes the word at `offset` (dropped outside the buffer).
    pub fn write64(&self, offset: u64, value: u64) {
        if let Some(ptr) = self.word(offset) {
            // SAFETY: as for `read64`.
            unsafe { core::ptr::write_volatile(ptr, value) }
        }
    }
}
