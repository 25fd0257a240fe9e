// SPDX-License-Identifier: Apache-2.0
//! A condition variable across peers: a sequence word bumped by every
//! signal; waiters sleep while it is unchanged. All-zero bytes are a valid
//! condvar. Spurious wake-ups are possible, as with pthreads: wait in a loop.

use super::mutex::{self, Locked, MutexGuard};
use super::wait::{self, WaitOutcome};
use super::SyncError;
use crate::handle::Shoal;
use crate::ptr::Shared;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A condition variable in the region.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Condvar {
    seq: AtomicU32,
}

// SAFETY: one atomic word; every bit pattern is valid.
unsafe impl Shared for Condvar {}

/// Waits on the condvar word `cond` with the mutex word `mutex` held.
/// Returns how the mutex was re-acquired and whether the wait timed out.
pub(crate) fn wait_at(
    shoal: &Shoal,
    cond: u64,
    mutex_off: u64,
    timeout: Option<Duration>,
) -> Result<(Locked, WaitOutcome), SyncError> {
    let cx = &shoal.inner;
    let seq = cx.mem.u32(cond)?.load(Ordering::Acquire);
    mutex::unlock(cx, mutex_off)?;
    let outcome = wait::wait(cx, cond, seq, timeout);
    let how = mutex::lock(cx, mutex_off, None)?;
    Ok((how, outcome?))
}

/// Wakes `n` waiters of the condvar word `cond`.
pub(crate) fn notify_at(shoal: &Shoal, cond: u64, n: u32) -> Result<(), SyncError> {
    let cx = &shoal.inner;
    cx.mem.u32(cond)?.fetch_add(1, Ordering::AcqRel);
    wait::wake(cx, cond, n)?;
    Ok(())
}

impl Condvar {
    /// A fresh condvar.
    pub const fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
        }
    }

    /// Atomically unlocks `guard`'s mutex and sleeps until notified (or
    /// spuriously woken), then re-locks. The guard reports
    /// [`MutexGuard::owner_died`] if the re-lock took over from a dead peer.
    pub fn wait(&self, shoal: &Shoal, guard: &mut MutexGuard<'_>) -> Result<(), SyncError> {
        self.wait_timeout(shoal, guard, None).map(|_| ())
    }

    /// As [`Condvar::wait`], for at most `timeout`.
    pub fn wait_timeout(
        &self,
        shoal: &Shoal,
        guard: &mut MutexGuard<'_>,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, SyncError> {
        let cond = shoal.word_offset(&self.seq)?;
        let (how, outcome) = wait_at(shoal, cond, guard.offset(), timeout)?;
        guard.relocked(how);
        Ok(outcome)
    }

    /// Wakes one waiter.
    pub fn notify_one(&self, shoal: &Shoal) -> Result<(), SyncError> {
        notify_at(shoal, shoal.word_offset(&self.seq)?, 1)
    }

    /// Wakes all waiters.
    pub fn notify_all(&self, shoal: &Shoal) -> Result<(), SyncError> {
        notify_at(shoal, shoal.word_offset(&self.seq)?, u32::MAX)
    }
}
