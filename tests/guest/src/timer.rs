// SPDX-License-Identifier: Apache-2.0
//! A periodic tick from the local APIC timer, for timeouts and waits that
//! sleep (`hlt`) instead of spinning: the host has two cores for everybody.
//!
//! The tick assumes the 1 GHz APIC bus clock that KVM's in-kernel APIC and
//! QEMU's APIC both model, divided by 16: [`TICK_HZ`] ticks per second
//! (approximately; only for timeouts, never for measurements).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{apic, interrupts};

/// Vector of the timer interrupt.
pub const VECTOR: u8 = 0x30;
/// Ticks per second.
pub const TICK_HZ: u64 = 100;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL_COUNT: u64 = 0x380;
const REG_DIVIDE: u64 = 0x3e0;
const LVT_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0x3;
/// APIC bus clock in Hz (KVM and QEMU: one cycle per nanosecond).
const BUS_HZ: u64 = 1_000_000_000;

static TICKS: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

fn on_tick(_vector: u8) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Starts the periodic tick on the calling CPU (once) and enables
/// interrupts there.
pub fn start() {
    if !STARTED.swap(true, Ordering::AcqRel) {
        interrupts::set_handler(VECTOR, on_tick);
        apic::enable();
        apic::write_reg(REG_DIVIDE, DIVIDE_BY_16);
        apic::write_reg(REG_LVT_TIMER, LVT_PERIODIC | u32::from(VECTOR));
        apic::write_reg(REG_INITIAL_COUNT, (BUS_HZ / 16 / TICK_HZ) as u32);
    }
    interrupts::enable();
}

/// Ticks since [`start`].
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Ticks in `seconds`.
pub fn seconds(seconds: u64) -> u64 {
    seconds.saturating_mul(TICK_HZ)
}

/// Sleeps (`hlt`) until `done()` holds or `timeout` ticks pass; true when
/// `done()` held. `done` runs with interrupts off, so a wake-up between its
/// check and the `hlt` is not lost (`sti; hlt` is one step: the interrupt
/// shadow). Needs [`start`].
pub fn wait_until(mut done: impl FnMut() -> bool, timeout: u64) -> bool {
    let start = ticks();
    loop {
        interrupts::disable();
        if done() {
            interrupts::enable();
            return true;
        }
        if ticks().wrapping_sub(start) >= timeout {
            interrupts::enable();
            return false;
        }
        // SAFETY: enables interrupts and halts until the next one (the
        // timer guarantees there is one); the IDT is loaded.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
    }
}
