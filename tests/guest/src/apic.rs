// SPDX-License-Identifier: Apache-2.0
//! The local APIC in xAPIC (MMIO) mode: ID, enable, and INIT/SIPI IPIs.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::io::{mmio_read32, mmio_write32, pause};

/// Default local APIC base (docs/platform.md).
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const SVR_ENABLE: u32 = 1 << 8;
const SPURIOUS_VECTOR: u32 = 0xff;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0x500;
const ICR_STARTUP: u32 = 0x600;
const ICR_DEST_SELF: u32 = 1 << 18;
/// Polls of the ICR delivery-status bit before giving up on an IPI.
const ICR_WAIT_LIMIT: u32 = 100_000;

/// The local APIC base every CPU uses; set by the BSP from the MADT.
static BASE: AtomicU64 = AtomicU64::new(DEFAULT_BASE);

/// Sets the local APIC base (from the MADT) for all CPUs.
pub fn set_base(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

fn reg(offset: u64) -> u64 {
    BASE.load(Ordering::Relaxed) + offset
}

/// The APIC ID of the calling CPU.
pub fn id() -> u32 {
    mmio_read32(reg(REG_ID)) >> 24
}

/// Software-enables the calling CPU's local APIC.
pub fn enable() {
    mmio_write32(reg(REG_SVR), SVR_ENABLE | SPURIOUS_VECTOR);
}

/// Waits for the previous IPI to be accepted; false on timeout.
fn wait_idle() -> bool {
    for _ in 0..ICR_WAIT_LIMIT {
        if mmio_read32(reg(REG_ICR_LOW)) & ICR_DELIVERY_PENDING == 0 {
            return true;
        }
        pause();
    }
    false
}

fn send_ipi(apic_id: u8, low: u32) -> bool {
    mmio_write32(reg(REG_ICR_HIGH), u32::from(apic_id) << 24);
    mmio_write32(reg(REG_ICR_LOW), low);
    wait_idle()
}

/// Sends INIT, then two STARTUP IPIs with `vector` to `apic_id`; false if
/// the local APIC never accepted one of them.
pub fn start_cpu(apic_id: u8, vector: u8) -> bool {
    let startup = ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(vector);
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT)
        && send_ipi(apic_id, startup)
        && send_ipi(apic_id, startup)
}

/// Signals end of interrupt to the calling CPU's local APIC.
pub fn eoi() {
    mmio_write32(reg(REG_EOI), 0);
}

/// Sends a fixed interrupt with `vector` to the calling CPU; false if the
/// local APIC never accepted it.
pub fn send_self(vector: u8) -> bool {
    mmio_write32(reg(REG_ICR_LOW), ICR_DEST_SELF | u32::from(vector));
    wait_idle()
}

/// Writes a local APIC register of the calling CPU (offset from the base).
pub fn write_reg(offset: u64, value: u32) {
    mmio_write32(reg(offset), value);
}

const REG_PPR: u64 = 0xa0;
const REG_ISR: u64 = 0x100;
const REG_IRR: u64 = 0x200;

/// Prints the calling CPU's interrupt state, for timeouts:
/// `SHOAL-TG apic ppr 0x.. isr <v>... irr <v>...` (the set vectors).
pub fn report() {
    let mut line = crate::serial::line();
    line.str("apic ppr ")
        .hex0x(u64::from(mmio_read32(reg(REG_PPR))));
    for (name, base) in [(" isr", REG_ISR), (" irr", REG_IRR)] {
        line.str(name);
        for word in 0..8u64 {
            let bits = mmio_read32(reg(base + word * 0x10));
            for bit in 0..32u64 {
                if bits & (1 << bit) != 0 {
                    line.str(" ").hex0x(word * 32 + bit);
                }
            }
        }
    }
}
