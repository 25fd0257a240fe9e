// SPDX-License-Identifier: Apache-2.0
//! The IOAPIC (MMIO, address from the MADT): routing one pin to a vector.

use crate::io::mmio_write32;

/// Default IOAPIC address (docs/platform.md).
pub const DEFAULT_BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REDIRECTION_BASE: u32 = 0x10;
const LEVEL_TRIGGERED: u32 = 1 << 15;
const MASKED: u32 = 1 << 16;

fn write(base: u64, register: u32, value: u32) {
    mmio_write32(base + IOREGSEL, register);
    mmio_write32(base + IOWIN, value);
}

/// Routes `pin` to `vector` on the CPU with `apic_id`: fixed delivery,
/// physical destination, active high, level- or edge-triggered.
pub fn route(base: u64, pin: u8, vector: u8, apic_id: u8, level: bool) {
    let register = REDIRECTION_BASE + 2 * u32::from(pin);
    write(base, register, MASKED);
    write(base, register + 1, u32::from(apic_id) << 24);
    let trigger = if level { LEVEL_TRIGGERED } else { 0 };
    write(base, register, u32::from(vector) | trigger);
}
