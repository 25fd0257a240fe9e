// SPDX-License-Identifier: Apache-2.0
//! Power-off and reset: the FADT sleep control register (S5), then the FADT
//! reset register, then the i8042, then `cli; hlt` forever.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::acpi::{Fadt, Gas, FADT_RESET_REG_SUP, GAS_IO, GAS_MEMORY};
use crate::io::{
    halt_forever, mmio_write16, mmio_write32, mmio_write64, outb, outl, outw, pause, phys_write8,
};
use crate::serial;

/// `SLP_TYP` = 5 (S5) in bits 2-4 with `SLP_EN` (bit 5).
const SLEEP_S5: u64 = (5 << 2) | 0x20;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// Spins after a power-off or reset write before trying the next way.
const SETTLE_SPINS: u32 = 100_000;

/// Registers saved for [`off`]: address and packed (space, width, offset,
/// access size) of the sleep control and reset registers, plus the reset
/// value. Atomics because the panic path may run on any CPU.
static SLEEP_ADDR: AtomicU64 = AtomicU64::new(0);
static SLEEP_META: AtomicU64 = AtomicU64::new(0);
static RESET_ADDR: AtomicU64 = AtomicU64::new(0);
static RESET_META: AtomicU64 = AtomicU64::new(0);

fn pack(gas: &Gas, extra: u8) -> u64 {
    u64::from_le_bytes([
        gas.space,
        gas.bit_width,
        gas.bit_offset,
        gas.access_size,
        extra,
        0,
        0,
        0,
    ])
}

fn unpack(address: u64, meta: u64) -> (Gas, u8) {
    let b = meta.to_le_bytes();
    (
        Gas {
            space: b[0],
            bit_width: b[1],
            bit_offset: b[2],
            access_size: b[3],
            address,
        },
        b[4],
    )
}

/// Remembers the FADT registers [`off`] uses.
pub fn set_fadt(fadt: &Fadt) {
    SLEEP_META.store(pack(&fadt.sleep_control, 0), Ordering::Relaxed);
    SLEEP_ADDR.store(fadt.sleep_control.address, Ordering::Relaxed);
    if fadt.flags & FADT_RESET_REG_SUP != 0 || fadt.reset_reg.is_present() {
        RESET_META.store(pack(&fadt.reset_reg, fadt.reset_value), Ordering::Relaxed);
        RESET_ADDR.store(fadt.reset_reg.address, Ordering::Relaxed);
    }
}

/// Writes `value` to the register `gas` describes; false when the address
/// space or the address is not one the guest can write.
pub fn write_gas(gas: &Gas, value: u64) -> bool {
    if !gas.is_present() || gas.bit_offset >= 64 {
        return false;
    }
    let value = value << gas.bit_offset;
    match gas.space {
        GAS_IO => {
            let Ok(port) = u16::try_from(gas.address) else {
                return false;
            };
            match gas.access_bytes() {
                1 => outb(port, value as u8),
                2 => outw(port, value as u16),
                _ => outl(port, value as u32),
            }
            true
        }
        GAS_MEMORY => {
            match gas.access_bytes() {
                1 => phys_write8(gas.address, value as u8),
                2 => mmio_write16(gas.address, value as u16),
                4 => mmio_write32(gas.address, value as u32),
                _ => mmio_write64(gas.address, value),
            }
            true
        }
        _ => false,
    }
}

fn settle() {
    for _ in 0..SETTLE_SPINS {
        pause();
    }
}

/// Powers the machine off; falls back to reset, then halts.
pub fn off() -> ! {
    let (sleep, _) = unpack(
        SLEEP_ADDR.load(Ordering::Relaxed),
        SLEEP_META.load(Ordering::Relaxed),
    );
    if write_gas(&sleep, SLEEP_S5) {
        settle();
        serial::error().str("poweroff through the sleep control register failed");
    } else {
        serial::error().str("no usable sleep control register");
    }
    let (reset, value) = unpack(
        RESET_ADDR.load(Ordering::Relaxed),
        RESET_META.load(Ordering::Relaxed),
    );
    if write_gas(&reset, u64::from(value)) {
        settle();
        serial::error().str("reset through the fadt reset register failed");
    }
    outb(I8042_COMMAND, I8042_RESET);
    settle();
    serial::error().str("reset through the i8042 failed, halting");
    halt_forever()
}
