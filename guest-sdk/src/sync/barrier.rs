// SPDX-License-Identifier: Apache-2.0
//! A barrier across peers: an arrival counter and a phase word.
//!
//! The last of `parties` arrivals resets the counter and bumps the phase;
//! the others sleep until the phase changes, so one phase never overlaps the
//! next. A barrier must be given its party count once
//! ([`Barrier::init`]); all-zero bytes are an uninitialised barrier. A wait
//! that times out leaves the barrier broken (its arrival is still counted):
//! re-create it.

use super::wait::{self, WaitOutcome};
use super::SyncError;
use crate::handle::Shoal;
use crate::ptr::Shared;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A barrier in the region (16 bytes).
#[repr(C)]
#[derive(Debug, Default)]
pub struct Barrier {
    arrived: AtomicU32,
    phase: AtomicU32,
    parties: AtomicU32,
    _reserved: AtomicU32,
}

// SAFETY: atomics only; every bit pattern is a valid (maybe broken) state.
unsafe impl Shared for Barrier {}

impl Barrier {
    /// Sets the party count, or checks it if already set (by another peer).
    pub fn init(&self, parties: u32) -> Result<(), SyncError> {
        if parties == 0 {
            return Err(SyncError::Invalid("zero parties"));
        }
        match self
            .parties
            .compare_exchange(0, parties, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(have) if have == parties => Ok(()),
            Err(have) => Err(SyncError::Parties { got: parties, have }),
        }
    }

    /// The party count (0: not initialised).
    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Acquire)
    }

    /// Waits for all parties. Returns true in exactly one of them per phase
    /// (the last to arrive).
    pub fn wait(&self, shoal: &Shoal) -> Result<bool, SyncError> {
        self.wait_timeout(shoal, None)
    }

    /// As [`Barrier::wait`], for at most `timeout`.
    pub fn wait_timeout(
        &self,
        shoal: &Shoal,
        timeout: Option<Duration>,
    ) -> Result<bool, SyncError> {
        let parties = self.parties();
        if parties == 0 {
            return Err(SyncError::Parties { got: 0, have: 0 });
        }
        let phase_off = shoal.word_offset(&self.phase)?;
        let phase = self.phase.load(Ordering::Acquire);
        let arrived = self.arrived.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        if arrived >= parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.phase.fetch_add(1, Ordering::AcqRel);
            wait::wake(&shoal.inner, phase_off, u32::MAX)?;
            return Ok(true);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.phase.load(Ordering::Acquire) == phase {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(SyncError::TimedOut);
            }
            if wait::wait(&shoal.inner, phase_off, phase, left)? == WaitOutcome::TimedOut
                && self.phase.load(Ordering::Acquire) == phase
            {
                return Err(SyncError::TimedOut);
            }
        }
        Ok(false)
    }
}
