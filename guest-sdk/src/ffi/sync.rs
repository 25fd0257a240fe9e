// SPDX-License-Identifier: Apache-2.0
//! The C ABI for futexes, mutexes, condvars, barriers and teams.

use super::{guard, handle, put, region_offset, sync_code, timeout, ShoalHandle, TeamHandle};
use super::{SHOAL_BARRIER_SERIAL, SHOAL_EBUSY, SHOAL_EFOREIGN, SHOAL_EINVAL, SHOAL_ETIMEDOUT};
use super::{SHOAL_OK, SHOAL_OWNER_DIED};
use crate::handle::Shoal;
use crate::ptr::ShmPtr;
use crate::sync::condvar;
use crate::sync::mutex::{self, Locked};
use crate::sync::{Barrier, Team, WaitOutcome};
use std::ffi::{c_char, c_int, c_void};

/// Runs `f` with the handle and the region offset of `obj`.
///
/// # Safety
/// `s` is null or a live handle.
unsafe fn with_obj(
    s: *const ShoalHandle,
    obj: *const c_void,
    align: u64,
    f: impl FnOnce(&Shoal, u64) -> c_int,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(shoal) = (unsafe { handle(s) }) else {
            return SHOAL_EINVAL;
        };
        match region_offset(shoal, obj, align) {
            Some(off) => f(shoal, off),
            None => SHOAL_EFOREIGN,
        }
    })
}

fn locked_code(how: Locked) -> c_int {
    match how {
        Locked::Acquired => SHOAL_OK,
        Locked::OwnerDied => SHOAL_OWNER_DIED,
    }
}

/// Sleeps while `*addr == expected` (addr in the region), at most
/// `timeout_ns` (negative: forever). `SHOAL_OK` or `SHOAL_ETIMEDOUT`.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_futex_wait(
    s: *mut ShoalHandle,
    addr: *const u32,
    expected: u32,
    timeout_ns: i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, addr as *const c_void, 4, |shoal, off| {
            match shoal.futex_wait_at(off, expected, timeout(timeout_ns)) {
                Ok(WaitOutcome::Woken) => SHOAL_OK,
                Ok(WaitOutcome::TimedOut) => SHOAL_ETIMEDOUT,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Wakes up to `n` waiters on `addr`; returns how many (≥ 0) or an error.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_futex_wake(s: *mut ShoalHandle, addr: *const u32, n: u32) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, addr as *const c_void, 4, |shoal, off| {
            match shoal.futex_wake_at(off, n) {
                Ok(count) => count.min(c_int::MAX as usize) as c_int,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Locks a mutex in the region: `SHOAL_OK` or `SHOAL_OWNER_DIED`.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_mutex_lock(s: *mut ShoalHandle, m: *mut c_void) -> c_int {
    // SAFETY: caller contract.
    unsafe { shoal_mutex_timedlock(s, m, -1) }
}

/// Locks with a timeout (negative: forever).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_mutex_timedlock(
    s: *mut ShoalHandle,
    m: *mut c_void,
    timeout_ns: i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, m, 4, |shoal, off| {
            match mutex::lock(&shoal.inner, off, timeout(timeout_ns)) {
                Ok(how) => locked_code(how),
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Locks if free: `SHOAL_OK`, `SHOAL_OWNER_DIED` or `SHOAL_EBUSY`.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_mutex_trylock(s: *mut ShoalHandle, m: *mut c_void) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, m, 4, |shoal, off| {
            match mutex::try_lock(&shoal.inner, off) {
                Ok(Some(how)) => locked_code(how),
                Ok(None) => SHOAL_EBUSY,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Unlocks (`SHOAL_ENOTOWNER` if this peer does not hold it).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_mutex_unlock(s: *mut ShoalHandle, m: *mut c_void) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, m, 4, |shoal, off| {
            match mutex::unlock(&shoal.inner, off) {
                Ok(()) => SHOAL_OK,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Waits on a condvar with the mutex held; re-locks before returning
/// (`SHOAL_OWNER_DIED` if the re-lock took over from a dead peer).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_cond_wait(
    s: *mut ShoalHandle,
    c: *mut c_void,
    m: *mut c_void,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { shoal_cond_timedwait(s, c, m, -1) }
}

/// As `shoal_cond_wait`, for at most `timeout_ns` (`SHOAL_ETIMEDOUT`).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_cond_timedwait(
    s: *mut ShoalHandle,
    c: *mut c_void,
    m: *mut c_void,
    timeout_ns: i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, c, 4, |shoal, cond| {
            let Some(moff) = region_offset(shoal, m, 4) else {
                return SHOAL_EFOREIGN;
            };
            match condvar::wait_at(shoal, cond, moff, timeout(timeout_ns)) {
                Ok((Locked::OwnerDied, _)) => SHOAL_OWNER_DIED,
                Ok((_, WaitOutcome::TimedOut)) => SHOAL_ETIMEDOUT,
                Ok(_) => SHOAL_OK,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Wakes one condvar waiter.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_cond_signal(s: *mut ShoalHandle, c: *mut c_void) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, c, 4, |shoal, off| {
            match condvar::notify_at(shoal, off, 1) {
                Ok(()) => SHOAL_OK,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Wakes all condvar waiters.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_cond_broadcast(s: *mut ShoalHandle, c: *mut c_void) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, c, 4, |shoal, off| {
            match condvar::notify_at(shoal, off, u32::MAX) {
                Ok(()) => SHOAL_OK,
                Err(e) => sync_code(&e),
            }
        })
    }
}

fn barrier_at(shoal: &Shoal, off: u64) -> Option<&Barrier> {
    shoal.get(ShmPtr::<Barrier>::from_offset(off)).ok()
}

/// Sets a barrier's party count (or checks it matches).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_barrier_init(
    s: *mut ShoalHandle,
    b: *mut c_void,
    parties: u32,
) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, b, 4, |shoal, off| {
            let Some(barrier) = barrier_at(shoal, off) else {
                return SHOAL_EFOREIGN;
            };
            match barrier.init(parties) {
                Ok(()) => SHOAL_OK,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Waits at a barrier: `SHOAL_OK`, or `SHOAL_BARRIER_SERIAL` in the last
/// arrival of each phase.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_barrier_wait(s: *mut ShoalHandle, b: *mut c_void) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, b, 4, |shoal, off| {
            let Some(barrier) = barrier_at(shoal, off) else {
                return SHOAL_EFOREIGN;
            };
            match barrier.wait(shoal) {
                Ok(true) => SHOAL_BARRIER_SERIAL,
                Ok(false) => SHOAL_OK,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Joins team `name` of `size` members (waits for all); `*out` gets a team
/// handle to free with `shoal_team_leave`.
///
/// # Safety
/// `s` live handle or null; `name` NUL-terminated or null; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_join(
    s: *mut ShoalHandle,
    name: *const c_char,
    size: u32,
    out: *mut *mut TeamHandle,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let (Some(shoal), Some(n)) = (unsafe { handle(s) }, unsafe { super::name(name) }) else {
            return SHOAL_EINVAL;
        };
        if out.is_null() {
            return SHOAL_EINVAL;
        }
        match Team::join(shoal, n, size) {
            Ok(team) => {
                // SAFETY: out checked non-null; caller contract.
                unsafe { out.write(Box::into_raw(Box::new(TeamHandle(team)))) };
                SHOAL_OK
            }
            Err(e) => sync_code(&e),
        }
    })
}

/// Frees a team handle (the team object stays in the region).
///
/// # Safety
/// `t` is null or from `shoal_team_join`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_leave(t: *mut TeamHandle) -> c_int {
    guard(|| {
        if !t.is_null() {
            // SAFETY: caller contract: t came from Box::into_raw.
            drop(unsafe { Box::from_raw(t) });
        }
        SHOAL_OK
    })
}

/// # Safety
/// `t` is null or a live team handle.
unsafe fn team<'a>(t: *const TeamHandle) -> Option<&'a Team> {
    // SAFETY: caller contract.
    unsafe { t.as_ref() }.map(|h| &h.0)
}

/// This member's rank, or a negative error.
///
/// # Safety
/// `t` is null or a live team handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_rank(t: *const TeamHandle) -> c_int {
    // SAFETY: caller contract.
    guard(|| unsafe { team(t) }.map_or(SHOAL_EINVAL, |t| t.rank() as c_int))
}

/// Number of members, or a negative error.
///
/// # Safety
/// `t` is null or a live team handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_size(t: *const TeamHandle) -> c_int {
    // SAFETY: caller contract.
    guard(|| unsafe { team(t) }.map_or(SHOAL_EINVAL, |t| t.size() as c_int))
}

/// Team barrier: `SHOAL_OK` or `SHOAL_BARRIER_SERIAL`.
///
/// # Safety
/// `t` is null or a live team handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_barrier(t: *mut TeamHandle) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(t) = (unsafe { team(t) }) else {
            return SHOAL_EINVAL;
        };
        match t.barrier() {
            Ok(true) => SHOAL_BARRIER_SERIAL,
            Ok(false) => SHOAL_OK,
            Err(e) => sync_code(&e),
        }
    })
}

/// This member's static share `[*begin, *end)` of `0..n`.
///
/// # Safety
/// `t` is null or a live team handle; outputs null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_range(
    t: *const TeamHandle,
    n: u64,
    begin: *mut u64,
    end: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(t) = (unsafe { team(t) }) else {
            return SHOAL_EINVAL;
        };
        let r = t.range(n);
        // SAFETY: caller contract.
        unsafe {
            put(begin, r.start);
            put(end, r.end);
        }
        SHOAL_OK
    })
}

macro_rules! reduction {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $method:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// `t` is null or a live team handle; `out` null or writable.
        #[no_mangle]
        pub unsafe extern "C" fn $name(t: *mut TeamHandle, value: $ty, out: *mut $ty) -> c_int {
            guard(|| {
                // SAFETY: caller contract.
                let Some(t) = (unsafe { team(t) }) else {
                    return SHOAL_EINVAL;
                };
                match t.$method(value) {
                    Ok(v) => {
                        // SAFETY: caller contract.
                        unsafe { put(out, v) };
                        SHOAL_OK
                    }
                    Err(e) => sync_code(&e),
                }
            })
        }
    };
}

reduction!(
    /// Sum over all members (rank order: identical everywhere).
    shoal_team_sum_f64, f64, sum_f64
);
reduction!(
    /// Minimum over all members.
    shoal_team_min_f64, f64, min_f64
);
reduction!(
    /// Maximum over all members.
    shoal_team_max_f64, f64, max_f64
);
reduction!(
    /// Wrapping sum over all members.
    shoal_team_sum_i64, i64, sum_i64
);
reduction!(
    /// Minimum over all members.
    shoal_team_min_i64, i64, min_i64
);
reduction!(
    /// Maximum over all members.
    shoal_team_max_i64, i64, max_i64
);

/// Delivers member `root`'s `value` to every member.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_broadcast_u64(
    t: *mut TeamHandle,
    root: u32,
    value: u64,
    out: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(t) = (unsafe { team(t) }) else {
            return SHOAL_EINVAL;
        };
        match t.broadcast(root, value) {
            Ok(v) => {
                // SAFETY: caller contract.
                unsafe { put(out, v) };
                SHOAL_OK
            }
            Err(e) => sync_code(&e),
        }
    })
}

// The C header's object types must match the Rust ones byte for byte.
const _: () = assert!(std::mem::size_of::<crate::sync::Mutex>() == 4);
const _: () = assert!(std::mem::size_of::<crate::sync::Condvar>() == 4);
const _: () = assert!(std::mem::size_of::<Barrier>() == 16);
