// SPDX-License-Identifier: Apache-2.0
//! Port I/O, physical memory and MMIO access.
//!
//! The whole guest runs on an identity map of the first 4 GiB, so a
//! guest-physical address below [`PHYS_LIMIT`] is also a valid pointer;
//! ranges above it are valid once `paging::map` has mapped them.
//! Every access is a single volatile integer load or store, which KVM's
//! instruction emulator handles.

use core::arch::asm;

use crate::paging;

/// End of the identity-mapped physical range.
pub const PHYS_LIMIT: u64 = 1 << 32;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the guest owns
    // the whole machine and every port it writes is part of the platform.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Whether `len` bytes at physical address `addr` lie in the identity map.
pub fn phys_range_ok(addr: u64, len: u64) -> bool {
    paging::is_mapped(addr, len)
}

/// Whether `len` bytes at `addr` are mapped (the fast path first).
fn mapped(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= PHYS_LIMIT) || paging::is_mapped(addr, len)
}

/// Reads a byte of physical memory; addresses outside the identity map read
/// as all-ones, like a bus with nothing behind it.
pub fn phys_read8(addr: u64) -> u8 {
    if !mapped(addr, 1) {
        return 0xff;
    }
    // SAFETY: `addr` is identity-mapped (checked above); a byte read of
    // RAM or MMIO cannot violate Rust's aliasing rules for data we own.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Reads a little-endian value of `N` bytes (at most 8) byte by byte, so
/// the address needs no alignment.
fn phys_read_le<const N: usize>(addr: u64) -> u64 {
    let mut value = 0u64;
    let mut i = 0;
    while i < N {
        value |= u64::from(phys_read8(addr.wrapping_add(i as u64))) << (8 * i);
        i += 1;
    }
    value
}

/// Reads an unaligned little-endian `u32` from physical memory.
pub fn phys_read32(addr: u64) -> u32 {
    phys_read_le::<4>(addr) as u32
}

/// Reads an unaligned little-endian `u64` from physical memory.
pub fn phys_read64(addr: u64) -> u64 {
    phys_read_le::<8>(addr)
}

/// Writes a byte of physical memory; writes outside the identity map are dropped.
pub fn phys_write8(addr: u64, value: u8) {
    if !mapped(addr, 1) {
        return;
    }
    // SAFETY: `addr` is identity-mapped; callers pass addresses of free
    // memory or device registers that the platform documents.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

/// Reads an aligned 32-bit MMIO register (all-ones outside the identity map
/// or when misaligned).
pub fn mmio_read32(addr: u64) -> u32 {
    if !mapped(addr, 4) || !addr.is_multiple_of(4) {
        return u32::MAX;
    }
    // SAFETY: aligned and identity-mapped (uncached for the MMIO range).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes an aligned 32-bit MMIO register (dropped outside the identity map
/// or when misaligned).
pub fn mmio_write32(addr: u64, value: u32) {
    if !mapped(addr, 4) || !addr.is_multiple_of(4) {
        return;
    }
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Writes an aligned 16-bit MMIO register (dropped when out of range or misaligned).
pub fn mmio_write16(addr: u64, value: u16) {
    if !mapped(addr, 2) || !addr.is_multiple_of(2) {
        return;
    }
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
}

/// Writes an aligned 64-bit MMIO register (dropped when out of range or misaligned).
pub fn mmio_write64(addr: u64, value: u64) {
    if !mapped(addr, 8) || !addr.is_multiple_of(8) {
        return;
    }
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// Stops this CPU for good: interrupts off, `hlt` forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// A spin-wait hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Guest-physical memory through the identity map, for the table parsers.
#[derive(Debug, Clone, Copy)]
pub struct Phys;

impl crate::mem::Memory for Phys {
    fn read8(&self, addr: u64) -> u8 {
        phys_read8(addr)
    }

    fn contains(&self, addr: u64, len: u64) -> bool {
        phys_range_ok(addr, len)
    }
}
