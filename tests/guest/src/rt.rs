// SPDX-License-Identifier: Apache-2.0
//! Runtime support a freestanding binary must bring itself: the panic
//! handler and the C memory functions the compiler calls (there is no libc).

use crate::{power, serial};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    {
        let mut line = serial::line_forced();
        line.str("error panic");
        if let Some(location) = info.location() {
            line.str(" at ")
                .str(location.file())
                .str(":")
                .dec(u64::from(location.line()));
        }
    }
    power::off()
}

/// `memcpy` for the compiler (there is no libc): `rep movsb`, which the
/// emulator implements and LLVM cannot turn back into a `memcpy` call.
///
/// # Safety
/// Same contract as C `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _,
            inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dest
}

/// `memmove` for the compiler: forwards with `rep movsb`, or backwards
/// with `std; rep movsb; cld` when the ranges overlap that way.
///
/// # Safety
/// Same contract as C `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct for these ranges; see `memcpy`.
        return unsafe { memcpy(dest, src, n) };
    }
    if n > 0 {
        // SAFETY: the caller guarantees both ranges are valid; copying from
        // the last byte down is correct when `dest` overlaps `src` from above.
        unsafe {
            core::arch::asm!("std", "rep movsb", "cld",
                inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dest
}

/// `memset` for the compiler: `rep stosb`.
///
/// # Safety
/// Same contract as C `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid for writes.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _,
            in("al") value as u8, options(nostack, preserves_flags));
    }
    dest
}

/// `memcmp`/`bcmp` for the compiler: a byte loop over volatile reads, so
/// LLVM does not turn it into a call to itself.
///
/// # Safety
/// Same contract as C `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for reads.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp` for the compiler (same as [`memcmp`]).
///
/// # Safety
/// Same contract as C `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
