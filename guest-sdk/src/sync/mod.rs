// SPDX-License-Identifier: Apache-2.0
//! Synchronisation across peers and threads: futex-like wait/wake, a robust
//! mutex, condition variable, barrier and team. Every object lives in the
//! region, is zero-initialised (all-zero bytes are a valid, unlocked/empty
//! object, except a barrier which needs its party count), and is used through
//! a [`crate::Shoal`] handle.

pub mod barrier;
pub mod condvar;
pub(crate) mod futex;
pub mod mutex;
pub mod team;
pub(crate) mod wait;

pub use barrier::Barrier;
pub use condvar::Condvar;
pub use mutex::{Locked, Mutex, MutexGuard};
pub use team::Team;
pub use wait::WaitOutcome;

use crate::mem::MemError;
use crate::ptr::AccessError;
use thiserror::Error;

/// Synchronisation errors.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The object is not inside the region, or misaligned.
    #[error("Object is not in the region")]
    Access(#[source] MemError),
    /// The wait timed out.
    #[error("Timed out")]
    TimedOut,
    /// Unlocking a mutex this peer does not hold.
    #[error("Mutex is not held by this peer")]
    NotOwner,
    /// A barrier or team was used before it was given a party count, or with
    /// a different count than it was created with.
    #[error("Party count {got} does not match {have}")]
    Parties {
        /// Count asked for.
        got: u32,
        /// Count stored.
        have: u32,
    },
    /// More members tried to join a team than its size.
    #[error("Team is full")]
    TeamFull,
    /// A rank, root or argument out of range.
    #[error("Invalid argument: {0}")]
    Invalid(&'static str),
    /// Sleeping in the kernel failed.
    #[error("Futex failure")]
    Futex(#[source] std::io::Error),
    /// The named object for a team could not be created.
    #[error("Cannot create the shared object")]
    Alloc(#[source] crate::alloc::AllocError),
}

impl From<MemError> for SyncError {
    fn from(e: MemError) -> Self {
        Self::Access(e)
    }
}

impl From<AccessError> for SyncError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Mem(m) => Self::Access(m),
            AccessError::Overflow => Self::Invalid("size overflow"),
        }
    }
}

use crate::handle::Shoal;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

impl Shoal {
    /// The region offset of a word, checked to be inside the region.
    pub(crate) fn word_offset(&self, word: &AtomicU32) -> Result<u64, SyncError> {
        let mem = &self.inner.mem;
        let off = mem
            .offset_of(word.as_ptr() as *const u8)
            .ok_or(SyncError::Access(MemError::Bounds {
                offset: word.as_ptr() as u64,
                len: 4,
            }))?;
        mem.u32(off)?;
        Ok(off)
    }

    /// Sleeps while `*word == expected`, for at most `timeout` (None:
    /// forever). `word` must be inside the region. Spurious wake-ups are
    /// possible: re-check your condition.
    pub fn futex_wait(
        &self,
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, SyncError> {
        let off = self.word_offset(word)?;
        wait::wait(&self.inner, off, expected, timeout)
    }

    /// Wakes up to `n` waiters on `word` (call after changing it). Returns
    /// the number of host sleepers woken plus guests rung.
    pub fn futex_wake(&self, word: &AtomicU32, n: u32) -> Result<usize, SyncError> {
        let off = self.word_offset(word)?;
        wait::wake(&self.inner, off, n)
    }

    /// Offset-based forms for the C ABI.
    pub(crate) fn futex_wait_at(
        &self,
        off: u64,
        expected: u32,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, SyncError> {
        wait::wait(&self.inner, off, expected, timeout)
    }

    pub(crate) fn futex_wake_at(&self, off: u64, n: u32) -> Result<usize, SyncError> {
        wait::wake(&self.inner, off, n)
    }
}

#[cfg(test)]
mod tests;
