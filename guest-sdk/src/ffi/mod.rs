// SPDX-License-Identifier: Apache-2.0
//! The C ABI. `include/shoal.h` is generated from this module by cbindgen
//! (`cbindgen.toml`; `tests/header.rs` fails when the committed header is
//! stale, and `SHOAL_BLESS=1` rewrites it), so the `///` docs here are the
//! header's documentation.
//!
//! Every function returns a status code (0 or a positive note on success, a
//! negative `SHOAL_E*` on failure) and never unwinds into C: bodies run under
//! `catch_unwind`, and a panic becomes `SHOAL_EPANIC`. Pointers into the
//! region (mutexes, condvars, barriers, futex words) are converted to
//! offsets and bounds-checked before use; the SDK never dereferences a
//! caller pointer that is not inside the region.

use crate::alloc::AllocError;
use crate::handle::{OpenError, Shoal};
use crate::ptr::ShmPtr;
use crate::sync::{SyncError, Team};
use crate::transport::TransportError;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

/// Success.
pub const SHOAL_OK: c_int = 0;
/// Success: the lock was taken over from a dead peer; repair the data it
/// protects.
pub const SHOAL_OWNER_DIED: c_int = 1;
/// Success: this caller was the last to reach the barrier.
pub const SHOAL_BARRIER_SERIAL: c_int = 2;
/// Invalid argument (null, out of range, bad name).
pub const SHOAL_EINVAL: c_int = -1;
/// Out of shared memory.
pub const SHOAL_ENOMEM: c_int = -2;
/// Timed out.
pub const SHOAL_ETIMEDOUT: c_int = -3;
/// Unlock of a mutex this peer does not hold.
pub const SHOAL_ENOTOWNER: c_int = -4;
/// Offset or pointer is not in the heap/region.
pub const SHOAL_EFOREIGN: c_int = -5;
/// Block is not allocated (double free).
pub const SHOAL_ENOTALLOC: c_int = -6;
/// Block is a named object (remove it by name).
pub const SHOAL_ENAMED: c_int = -7;
/// No such named object.
pub const SHOAL_ENOENT: c_int = -8;
/// Named object exists with a smaller size.
pub const SHOAL_ESIZE: c_int = -9;
/// Region layout unusable (magic, version, too small).
pub const SHOAL_ELAYOUT: c_int = -10;
/// Cannot reach the group (socket, device).
pub const SHOAL_ETRANSPORT: c_int = -11;
/// Team already has all its members.
pub const SHOAL_ETEAMFULL: c_int = -12;
/// Party count mismatch (barrier/team).
pub const SHOAL_EPARTIES: c_int = -13;
/// Heap metadata inconsistent.
pub const SHOAL_ECORRUPT: c_int = -14;
/// Internal panic caught at the boundary.
pub const SHOAL_EPANIC: c_int = -15;
/// System call failure.
pub const SHOAL_EIO: c_int = -16;
/// Lock is held (trylock).
pub const SHOAL_EBUSY: c_int = -17;
/// Named-object table full.
pub const SHOAL_ENAMES: c_int = -18;

/// A region offset (`shoal_off_t`); 0 is the null offset.
pub type ShoalOff = u64;

/// A robust mutex in the region (`shoal_mutex_t`); zero bytes are unlocked.
#[repr(C)]
#[derive(Debug)]
pub struct ShoalMutex {
    /// Owner tag and waiters bit; 0 when unlocked.
    pub word: u32,
}

/// A condition variable in the region (`shoal_cond_t`); zero bytes are idle.
#[repr(C)]
#[derive(Debug)]
pub struct ShoalCond {
    /// Bumped by every signal.
    pub seq: u32,
}

/// A barrier in the region (`shoal_barrier_t`); zero bytes are an
/// uninitialised barrier: call `shoal_barrier_init` once.
#[repr(C)]
#[derive(Debug)]
pub struct ShoalBarrier {
    /// Arrivals in the current phase.
    pub arrived: u32,
    /// Phase counter.
    pub phase: u32,
    /// Party count (0: not initialised).
    pub parties: u32,
    /// Unused.
    pub reserved: u32,
}

/// A peer's handle (`shoal_t`, opaque). Any number of threads may use it
/// at once; `shoal_close` must be the last call on it.
#[derive(Debug)]
pub struct ShoalHandle(Shoal);

/// A team membership (`shoal_team_t`, opaque).
#[derive(Debug)]
pub struct TeamHandle(Team);

pub(crate) fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(SHOAL_EPANIC)
}

pub(crate) fn alloc_code(e: &AllocError) -> c_int {
    match e {
        AllocError::OutOfMemory(_) => SHOAL_ENOMEM,
        AllocError::BadSize(_) | AllocError::BadName | AllocError::Align(_) => SHOAL_EINVAL,
        AllocError::Foreign(_) | AllocError::Mem(_) => SHOAL_EFOREIGN,
        AllocError::NotAllocated(_) => SHOAL_ENOTALLOC,
        AllocError::Named(_) => SHOAL_ENAMED,
        AllocError::NamesFull => SHOAL_ENAMES,
        AllocError::SizeMismatch { .. } => SHOAL_ESIZE,
        AllocError::Corrupt(_) | AllocError::JournalFull => SHOAL_ECORRUPT,
        AllocError::Lock(e) => sync_code(e),
    }
}

pub(crate) fn sync_code(e: &SyncError) -> c_int {
    match e {
        SyncError::Access(_) => SHOAL_EFOREIGN,
        SyncError::TimedOut => SHOAL_ETIMEDOUT,
        SyncError::NotOwner => SHOAL_ENOTOWNER,
        SyncError::Parties { .. } => SHOAL_EPARTIES,
        SyncError::TeamFull => SHOAL_ETEAMFULL,
        SyncError::Invalid(_) => SHOAL_EINVAL,
        SyncError::Futex(_) => SHOAL_EIO,
        SyncError::Alloc(e) => alloc_code(e),
    }
}

fn open_code(e: &OpenError) -> c_int {
    match e {
        OpenError::Transport(TransportError::Size(_)) | OpenError::Layout(_) => SHOAL_ELAYOUT,
        OpenError::Transport(_) | OpenError::NotMember(_) => SHOAL_ETRANSPORT,
    }
}

pub(crate) fn timeout(ns: i64) -> Option<Duration> {
    u64::try_from(ns).ok().map(Duration::from_nanos)
}

/// # Safety
/// `s` is null or a handle from `shoal_open` not yet closed.
pub(crate) unsafe fn handle<'a>(s: *const ShoalHandle) -> Option<&'a Shoal> {
    // SAFETY: caller contract.
    unsafe { s.as_ref() }.map(|h| &h.0)
}

/// # Safety
/// `name` is null or a NUL-terminated string.
pub(crate) unsafe fn str_arg<'a>(name: *const c_char) -> Option<&'a str> {
    if name.is_null() {
        return None;
    }
    // SAFETY: caller contract.
    unsafe { CStr::from_ptr(name) }.to_str().ok()
}

pub(crate) fn region_offset(s: &Shoal, p: *const c_void, align: u64) -> Option<u64> {
    let off = s.offset_of(p as *const u8)?.offset();
    (off % align == 0 && off + 4 <= s.region_size()).then_some(off)
}

/// Writes `v` through `out` if it is not null.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: caller contract.
        unsafe { out.write(v) };
    }
}

/// Opens the group and writes a new handle to `*out`. `socket` names a
/// group server socket (host peer); NULL means `$SHOAL_SOCKET` if set, else
/// the ivshmem PCI device (`$SHOAL_PCI`, or the first 1af4:1110 in sysfs).
/// `SHOAL_ETRANSPORT` when the group cannot be reached, `SHOAL_ELAYOUT`
/// when its region is unusable (foreign magic, other version, too small).
///
/// # Safety
/// `socket` is null or NUL-terminated; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shoal_open(socket: *const c_char, out: *mut *mut ShoalHandle) -> c_int {
    guard(|| {
        if out.is_null() {
            return SHOAL_EINVAL;
        }
        let opened = if socket.is_null() {
            Shoal::open_default()
        } else {
            // SAFETY: caller contract.
            let Some(path) = (unsafe { str_arg(socket) }) else {
                return SHOAL_EINVAL;
            };
            Shoal::open_host(Path::new(path))
        };
        match opened {
            Ok(shoal) => {
                // SAFETY: out checked non-null; caller contract.
                unsafe { out.write(Box::into_raw(Box::new(ShoalHandle(shoal)))) };
                SHOAL_OK
            }
            Err(e) => {
                log::error!("shoal_open: {e}");
                open_code(&e)
            }
        }
    })
}

/// Closes a handle (NULL is accepted); it must be the last call on it.
///
/// # Safety
/// `s` is null or a handle from `shoal_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shoal_close(s: *mut ShoalHandle) -> c_int {
    guard(|| {
        if !s.is_null() {
            // SAFETY: caller contract: s came from Box::into_raw in shoal_open.
            drop(unsafe { Box::from_raw(s) });
        }
        SHOAL_OK
    })
}

/// Our peer id, or a negative error.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_id(s: *const ShoalHandle) -> c_int {
    // SAFETY: caller contract.
    guard(|| unsafe { handle(s) }.map_or(SHOAL_EINVAL, |s| c_int::from(s.id())))
}

/// A static description of a status code.
#[no_mangle]
pub extern "C" fn shoal_strerror(code: c_int) -> *const c_char {
    let text: &'static CStr = match code {
        SHOAL_OK => c"success",
        SHOAL_OWNER_DIED => c"lock taken over from a dead peer",
        SHOAL_BARRIER_SERIAL => c"last to reach the barrier",
        SHOAL_EINVAL => c"invalid argument",
        SHOAL_ENOMEM => c"out of shared memory",
        SHOAL_ETIMEDOUT => c"timed out",
        SHOAL_ENOTOWNER => c"mutex not held by this peer",
        SHOAL_EFOREIGN => c"not in the shared region or heap",
        SHOAL_ENOTALLOC => c"block not allocated",
        SHOAL_ENAMED => c"block is a named object",
        SHOAL_ENOENT => c"no such named object",
        SHOAL_ESIZE => c"named object is smaller than requested",
        SHOAL_ELAYOUT => c"unusable region layout",
        SHOAL_ETRANSPORT => c"cannot reach the group",
        SHOAL_ETEAMFULL => c"team is full",
        SHOAL_EPARTIES => c"party count mismatch",
        SHOAL_ECORRUPT => c"heap metadata corrupt",
        SHOAL_EPANIC => c"internal error",
        SHOAL_EIO => c"system call failed",
        SHOAL_EBUSY => c"lock is held",
        SHOAL_ENAMES => c"named-object table full",
        _ => c"unknown status",
    };
    text.as_ptr()
}

/// Allocates `size` bytes in the region and writes the block's offset to
/// `*out`. Blocks are 16-byte aligned (page aligned above 2048 bytes); the
/// contents are unspecified.
///
/// # Safety
/// `s` is null or a live handle; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_alloc(
    s: *mut ShoalHandle,
    size: usize,
    out: *mut ShoalOff,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { handle(s) }) else {
            return SHOAL_EINVAL;
        };
        if out.is_null() {
            return SHOAL_EINVAL;
        }
        match s.alloc(size as u64) {
            Ok(p) => {
                // SAFETY: caller contract.
                unsafe { put(out, p.offset()) };
                SHOAL_OK
            }
            Err(e) => alloc_code(&e),
        }
    })
}

/// Frees a block from `shoal_alloc`: `SHOAL_ENOTALLOC` for a double free,
/// `SHOAL_EFOREIGN` for an offset that is not a block, `SHOAL_ENAMED` for a
/// named object (use `shoal_remove`).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_free(s: *mut ShoalHandle, off: ShoalOff) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { handle(s) }) else {
            return SHOAL_EINVAL;
        };
        match s.free(ShmPtr::<u8>::from_offset(off)) {
            Ok(()) => SHOAL_OK,
            Err(e) => alloc_code(&e),
        }
    })
}

/// Finds the named object `name`, or creates it with `size` zeroed bytes,
/// and writes its offset to `*out`; `*created` (may be NULL) is set to 1 if
/// this call created it. Names are 1 to 40 bytes. `SHOAL_ESIZE` if the
/// object exists with fewer than `size` bytes.
///
/// # Safety
/// `s` live handle or null; `name` NUL-terminated or null; `out`, `created`
/// null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_named(
    s: *mut ShoalHandle,
    name: *const c_char,
    size: usize,
    out: *mut ShoalOff,
    created: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let (Some(s), Some(n)) = (unsafe { handle(s) }, unsafe { str_arg(name) }) else {
            return SHOAL_EINVAL;
        };
        if out.is_null() {
            return SHOAL_EINVAL;
        }
        match s.find_or_create(n, size as u64) {
            Ok((p, new)) => {
                // SAFETY: caller contract.
                unsafe {
                    put(out, p.offset());
                    put(created, c_int::from(new));
                }
                SHOAL_OK
            }
            Err(e) => alloc_code(&e),
        }
    })
}

/// Looks up a named object: its offset and size (`SHOAL_ENOENT` if absent).
///
/// # Safety
/// As `shoal_named`.
#[no_mangle]
pub unsafe extern "C" fn shoal_find(
    s: *mut ShoalHandle,
    name: *const c_char,
    out: *mut ShoalOff,
    size: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let (Some(s), Some(n)) = (unsafe { handle(s) }, unsafe { str_arg(name) }) else {
            return SHOAL_EINVAL;
        };
        match s.find(n) {
            Ok(Some((p, len))) => {
                // SAFETY: caller contract.
                unsafe {
                    put(out, p.offset());
                    put(size, len as usize);
                }
                SHOAL_OK
            }
            Ok(None) => SHOAL_ENOENT,
            Err(e) => alloc_code(&e),
        }
    })
}

/// Removes and frees a named object (`SHOAL_ENOENT` if absent).
///
/// # Safety
/// As `shoal_named`.
#[no_mangle]
pub unsafe extern "C" fn shoal_remove(s: *mut ShoalHandle, name: *const c_char) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let (Some(s), Some(n)) = (unsafe { handle(s) }, unsafe { str_arg(name) }) else {
            return SHOAL_EINVAL;
        };
        match s.remove(n) {
            Ok(true) => SHOAL_OK,
            Ok(false) => SHOAL_ENOENT,
            Err(e) => alloc_code(&e),
        }
    })
}

/// The address of region offset `off` in this process (NULL for 0 or an
/// offset outside the region).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_ptr(s: *const ShoalHandle, off: ShoalOff) -> *mut c_void {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: caller contract.
        let s = unsafe { handle(s) }?;
        if off == 0 {
            return None;
        }
        s.raw(ShmPtr::<u8>::from_offset(off), 1).ok()
    }));
    r.ok()
        .flatten()
        .map_or(std::ptr::null_mut(), |p| p as *mut c_void)
}

/// The region offset of `p` (0 if it is not inside the region).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_off(s: *const ShoalHandle, p: *const c_void) -> ShoalOff {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: caller contract.
        let s = unsafe { handle(s) }?;
        s.offset_of(p as *const u8).map(|o| o.offset())
    }));
    r.ok().flatten().unwrap_or(0)
}

/// Walks the heap: `SHOAL_OK` if consistent, `SHOAL_ECORRUPT` otherwise.
/// `*errors` and `*blocks` (either may be NULL) get the number of problems
/// and of allocated blocks that are not named.
///
/// # Safety
/// `s` live handle or null; outputs null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_check_heap(
    s: *mut ShoalHandle,
    errors: *mut usize,
    blocks: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { handle(s) }) else {
            return SHOAL_EINVAL;
        };
        match s.check_heap(&[]) {
            Ok(report) => {
                for e in &report.errors {
                    log::error!("shoal heap check: {e}");
                }
                // SAFETY: caller contract.
                unsafe {
                    put(errors, report.errors.len());
                    put(blocks, report.leaks.len());
                }
                if report.is_consistent() {
                    SHOAL_OK
                } else {
                    SHOAL_ECORRUPT
                }
            }
            Err(e) => alloc_code(&e),
        }
    })
}

mod sync;

// The C header's object types must match the Rust ones byte for byte.
const _: () = assert!(std::mem::size_of::<ShoalMutex>() == std::mem::size_of::<crate::Mutex>());
const _: () = assert!(std::mem::size_of::<ShoalCond>() == std::mem::size_of::<crate::Condvar>());
const _: () = assert!(std::mem::size_of::<ShoalBarrier>() == std::mem::size_of::<crate::Barrier>());
