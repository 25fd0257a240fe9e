// SPDX-License-Identifier: Apache-2.0
//! COM1 output: polled 16550 writes, a spinlock shared by all CPUs and a
//! line builder that prefixes every line with [`PREFIX`].
//!
//! No `core::fmt` here (the precompiled `core` uses SSE for it): numbers are
//! printed with the small decimal and hex writers below.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::io::{inb, outb, pause};

/// Prefix of every line the guest prints; the host matches on it.
pub const PREFIX: &str = "SHOAL-TG ";

const COM1: u16 = 0x3f8;
const REG_DATA: u16 = 0;
const REG_IER: u16 = 1;
const REG_FCR: u16 = 2;
const REG_LCR: u16 = 3;
const REG_MCR: u16 = 4;
const REG_LSR: u16 = 5;
const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const LSR_THR_EMPTY: u8 = 0x20;
/// Polls of LSR before a byte is written anyway (no UART, or a stuck one).
const THR_WAIT_LIMIT: u32 = 100_000;
/// Spins before the panic path takes the lock by force.
const FORCE_LOCK_SPINS: u32 = 1_000_000;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Programs COM1 for 115200 8N1 with interrupts off and FIFOs on.
pub fn init() {
    outb(COM1 + REG_IER, 0);
    outb(COM1 + REG_LCR, LCR_DLAB);
    outb(COM1 + REG_DATA, 1);
    outb(COM1 + REG_IER, 0);
    outb(COM1 + REG_LCR, LCR_8N1);
    outb(COM1 + REG_FCR, 0xc7);
    outb(COM1 + REG_MCR, 0x03);
}

fn write_byte(byte: u8) {
    let mut polls = 0;
    while inb(COM1 + REG_LSR) & LSR_THR_EMPTY == 0 && polls < THR_WAIT_LIMIT {
        pause();
        polls += 1;
    }
    outb(COM1 + REG_DATA, byte);
}

fn lock() {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        pause();
    }
}

/// Takes the lock, or takes it over after a bounded wait (for the panic
/// path, which may run while this CPU already holds it).
fn lock_or_force() {
    let mut spins = 0;
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if spins >= FORCE_LOCK_SPINS {
            LOCK.store(true, Ordering::SeqCst);
            return;
        }
        pause();
    }
}

/// One output line under the serial lock; the newline is written and the
/// lock released when it is dropped.
#[derive(Debug)]
pub struct Line {
    _private: (),
}

/// Starts a line: takes the serial lock and writes [`PREFIX`].
pub fn line() -> Line {
    lock();
    write_str_raw(PREFIX);
    Line { _private: () }
}

/// Starts a line from the panic path (see [`lock_or_force`]).
pub fn line_forced() -> Line {
    lock_or_force();
    write_str_raw(PREFIX);
    Line { _private: () }
}

/// Starts an error line: `SHOAL-TG error `.
pub fn error() -> Line {
    let mut started = line();
    started.str("error ");
    started
}

fn write_str_raw(s: &str) {
    for &b in s.as_bytes() {
        write_byte(b);
    }
}

impl Line {
    /// Writes a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        write_str_raw(s);
        self
    }

    /// Writes bytes, replacing control and non-ASCII bytes with `?` so a
    /// line never breaks early.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            write_byte(if (0x20..0x7f).contains(&b) { b } else { b'?' });
        }
        self
    }

    /// Writes an unsigned decimal number.
    pub fn dec(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut v = value;
        loop {
            if let Some(slot) = digits.get_mut(n) {
                *slot = b'0' + (v % 10) as u8;
            }
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            write_byte(digits.get(n).copied().unwrap_or(b'?'));
        }
        self
    }

    /// Writes `value` as exactly `width` lowercase hex digits (1 to 16),
    /// without a prefix: the low `width` nibbles.
    pub fn hex(&mut self, value: u64, width: u32) -> &mut Self {
        let width = width.clamp(1, 16);
        let mut shift = width * 4;
        while shift > 0 {
            shift -= 4;
            let nibble = ((value >> shift) & 0xf) as u8;
            write_byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
        self
    }

    /// Writes `0x` and the shortest lowercase hex form of `value`.
    pub fn hex0x(&mut self, value: u64) -> &mut Self {
        let mut width = 1;
        while width < 16 && value >> (width * 4) != 0 {
            width += 1;
        }
        self.str("0x").hex(value, width)
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        write_byte(b'\n');
        LOCK.store(false, Ordering::Release);
    }
}
