// SPDX-License-Identifier: Apache-2.0
//! The C ABI for futexes, mutexes, condvars, barriers and teams.

use super::{guard, handle, put, region_offset, sync_code, timeout, ShoalHandle, TeamHandle};
use super::{ShoalBarrier, ShoalCond, ShoalMutex};
use super::{SHOAL_BARRIER_SERIAL, SHOAL_EBUSY, SHOAL_EFOREIGN, SHOAL_EINVAL, SHOAL_ETIMEDOUT};
use super::{SHOAL_OK, SHOAL_OWNER_DIED};
use crate::handle::Shoal;
use crate::ptr::ShmPtr;
use crate::sync::condvar;
use crate::sync::mutex::{self, Locked};
use crate::sync::{Barrier, SyncError, Team, WaitOutcome};
use std::ffi::{c_char, c_int, c_void};

/// Runs `f` with the handle and the region offset of `obj`.
///
/// # Safety
/// `s` is null or a live handle.
unsafe fn with_obj<T>(
    s: *const ShoalHandle,
    obj: *const T,
    align: u64,
    f: impl FnOnce(&Shoal, u64) -> c_int,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(shoal) = (unsafe { handle(s) }) else {
            return SHOAL_EINVAL;
        };
        match region_offset(shoal, obj as *const c_void, align) {
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

/// Futex-like wait on a 32-bit word in the region: sleeps while
/// `*addr == expected`, at most `timeout_ns` nanoseconds (negative:
/// forever). `SHOAL_OK` (woken, or the word differs; spurious wake-ups are
/// possible) or `SHOAL_ETIMEDOUT`.
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
        with_obj(s, addr, 4, |shoal, off| {
            match shoal.futex_wait_at(off, expected, timeout(timeout_ns)) {
                Ok(WaitOutcome::Woken) => SHOAL_OK,
                Ok(WaitOutcome::TimedOut) => SHOAL_ETIMEDOUT,
                Err(e) => sync_code(&e),
            }
        })
    }
}

/// Wakes up to `n` waiters on the word `addr` (call after changing it);
/// returns how many were woken or rung (≥ 0), or an error.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_futex_wake(s: *mut ShoalHandle, addr: *const u32, n: u32) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, addr, 4, |shoal, off| match shoal.futex_wake_at(off, n) {
            Ok(count) => count.min(c_int::MAX as usize) as c_int,
            Err(e) => sync_code(&e),
        })
    }
}

/// Locks a robust mutex in the region: `SHOAL_OK`, or `SHOAL_OWNER_DIED`
/// when the lock was taken over from a dead peer (the data it protects may
/// be half-updated). Ownership is per process: any thread of the holding
/// process may unlock.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_mutex_lock(s: *mut ShoalHandle, m: *mut ShoalMutex) -> c_int {
    // SAFETY: caller contract.
    unsafe { shoal_mutex_timedlock(s, m, -1) }
}

/// As `shoal_mutex_lock`, waiting at most `timeout_ns` nanoseconds
/// (negative: forever; `SHOAL_ETIMEDOUT`).
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_mutex_timedlock(
    s: *mut ShoalHandle,
    m: *mut ShoalMutex,
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
pub unsafe extern "C" fn shoal_mutex_trylock(s: *mut ShoalHandle, m: *mut ShoalMutex) -> c_int {
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
pub unsafe extern "C" fn shoal_mutex_unlock(s: *mut ShoalHandle, m: *mut ShoalMutex) -> c_int {
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

/// Waits on a condition variable with the mutex `m` held: unlocks, sleeps
/// until signalled (or spuriously woken: wait in a loop), re-locks.
/// `SHOAL_OWNER_DIED` if the re-lock took over from a dead peer.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_cond_wait(
    s: *mut ShoalHandle,
    c: *mut ShoalCond,
    m: *mut ShoalMutex,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { shoal_cond_timedwait(s, c, m, -1) }
}

/// As `shoal_cond_wait`, for at most `timeout_ns` nanoseconds (negative:
/// forever); the mutex is re-locked also on `SHOAL_ETIMEDOUT`.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_cond_timedwait(
    s: *mut ShoalHandle,
    c: *mut ShoalCond,
    m: *mut ShoalMutex,
    timeout_ns: i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        with_obj(s, c, 4, |shoal, cond| {
            let Some(moff) = region_offset(shoal, m as *const c_void, 4) else {
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
pub unsafe extern "C" fn shoal_cond_signal(s: *mut ShoalHandle, c: *mut ShoalCond) -> c_int {
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
pub unsafe extern "C" fn shoal_cond_broadcast(s: *mut ShoalHandle, c: *mut ShoalCond) -> c_int {
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

/// Sets a barrier's party count once (or checks that it matches:
/// `SHOAL_EPARTIES`); any peer may call it.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_barrier_init(
    s: *mut ShoalHandle,
    b: *mut ShoalBarrier,
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

/// Waits until all parties reached the barrier: `SHOAL_OK`, or
/// `SHOAL_BARRIER_SERIAL` in the last arrival of each phase. A wait that
/// fails leaves the barrier broken.
///
/// # Safety
/// `s` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shoal_barrier_wait(s: *mut ShoalHandle, b: *mut ShoalBarrier) -> c_int {
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

/// Joins team `name` (one member per process or VM) of `size` members and
/// waits until all have joined; `*out` gets a team handle to free with
/// `shoal_team_leave`. `SHOAL_EPARTIES` if the team exists with another size.
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
        let (Some(shoal), Some(n)) = (unsafe { handle(s) }, unsafe { super::str_arg(name) }) else {
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

/// Leaves the team and frees the handle (NULL is accepted). When all
/// members of a round have left, the next joiners start a new round.
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

/// Waits for all members: `SHOAL_OK`, or `SHOAL_BARRIER_SERIAL` in one of them.
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

/// This member's static share `[*begin, *end)` of the index range `0..n`
/// (contiguous; sizes differ by at most one).
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

/// Runs a reduction for the C ABI.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
unsafe fn reduce<T>(
    t: *mut TeamHandle,
    value: T,
    out: *mut T,
    op: impl FnOnce(&Team, T) -> Result<T, SyncError>,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(t) = (unsafe { team(t) }) else {
            return SHOAL_EINVAL;
        };
        match op(t, value) {
            Ok(v) => {
                // SAFETY: caller contract.
                unsafe { put(out, v) };
                SHOAL_OK
            }
            Err(e) => sync_code(&e),
        }
    })
}

/// Sum over all members, written to `*out` in every member (added in rank
/// order, so identical everywhere).
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_sum_f64(
    t: *mut TeamHandle,
    value: f64,
    out: *mut f64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { reduce(t, value, out, Team::sum_f64) }
}

/// Minimum over all members, written to `*out` in every member.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_min_f64(
    t: *mut TeamHandle,
    value: f64,
    out: *mut f64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { reduce(t, value, out, Team::min_f64) }
}

/// Maximum over all members, written to `*out` in every member.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_max_f64(
    t: *mut TeamHandle,
    value: f64,
    out: *mut f64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { reduce(t, value, out, Team::max_f64) }
}

/// Wrapping sum over all members, written to `*out` in every member.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_sum_i64(
    t: *mut TeamHandle,
    value: i64,
    out: *mut i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { reduce(t, value, out, Team::sum_i64) }
}

/// Minimum over all members, written to `*out` in every member.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_min_i64(
    t: *mut TeamHandle,
    value: i64,
    out: *mut i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { reduce(t, value, out, Team::min_i64) }
}

/// Maximum over all members, written to `*out` in every member.
///
/// # Safety
/// `t` is null or a live team handle; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn shoal_team_max_i64(
    t: *mut TeamHandle,
    value: i64,
    out: *mut i64,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { reduce(t, value, out, Team::max_i64) }
}

/// Delivers member `root`'s `value` to `*out` in every member
/// (`SHOAL_EINVAL` for a root that is not a rank).
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
