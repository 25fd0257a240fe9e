// SPDX-License-Identifier: Apache-2.0
//! A robust mutex across peers: one 32-bit word.
//!
//! The word is 0 when unlocked, else the holder's owner tag (peer id and
//! generation, see [`crate::peer`]) with bit 31 set when someone may be
//! sleeping. A locker that finds the word held by a peer the state table
//! calls dead takes it over and is told [`Locked::OwnerDied`]: the data the
//! mutex protects may be half-updated and should be made consistent.
//!
//! Ownership is per peer, not per thread: any thread of the holding peer may
//! unlock (the Rust guard makes that a non-issue; C callers must pair
//! lock/unlock themselves).

use super::wait::{self, WaitOutcome};
use super::SyncError;
use crate::handle::{Inner, Shoal};
use crate::peer::TAG_MASK;
use crate::ptr::Shared;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bit 31 of a lock word: there may be sleepers.
pub(crate) const WAITERS: u32 = 1 << 31;
/// Spins on a held lock before sleeping.
const SPINS: u32 = 100;
/// Longest sleep between checks of the holder's liveness.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Normally.
    Acquired,
    /// From a holder whose peer died: the protected data may be inconsistent.
    OwnerDied,
}

/// Locks the word at `offset` (None: no timeout).
pub(crate) fn lock(
    cx: &Inner,
    offset: u64,
    timeout: Option<Duration>,
) -> Result<Locked, SyncError> {
    let word = cx.mem.u32(offset)?;
    if word
        .compare_exchange(0, cx.tag, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return Ok(Locked::Acquired);
    }
    lock_slow(cx, offset, word, timeout)
}

fn lock_slow(
    cx: &Inner,
    offset: u64,
    word: &AtomicU32,
    timeout: Option<Duration>,
) -> Result<Locked, SyncError> {
    for _ in 0..SPINS {
        if word.load(Ordering::Relaxed) == 0
            && word
                .compare_exchange(0, cx.tag, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(Locked::Acquired);
        }
        std::hint::spin_loop();
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let v = word.load(Ordering::Relaxed);
        let owner = v & TAG_MASK;
        if owner == 0 {
            // Contended path: keep the waiters bit, others may sleep.
            if word
                .compare_exchange(v, cx.tag | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(Locked::Acquired);
            }
            continue;
        }
        if !cx.peers.alive(owner) {
            if word
                .compare_exchange(v, cx.tag | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                log::warn!("shoal: lock at {offset:#x} taken over from dead owner {owner:#x}");
                return Ok(Locked::OwnerDied);
            }
            continue;
        }
        if v & WAITERS == 0
            && word
                .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        let mut chunk = LIVENESS_PERIOD;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SyncError::TimedOut);
            }
            chunk = chunk.min(left);
        }
        match wait::wait(cx, offset, v | WAITERS, Some(chunk))? {
            WaitOutcome::Woken | WaitOutcome::TimedOut => {}
        }
    }
}

/// Tries once to lock the word at `offset`; `None` if it is held by a live peer.
pub(crate) fn try_lock(cx: &Inner, offset: u64) -> Result<Option<Locked>, SyncError> {
    let word = cx.mem.u32(offset)?;
    let v = word.load(Ordering::Relaxed);
    let owner = v & TAG_MASK;
    let (result, new) = if owner == 0 {
        (Locked::Acquired, cx.tag | (v & WAITERS))
    } else if !cx.peers.alive(owner) {
        (Locked::OwnerDied, cx.tag | WAITERS)
    } else {
        return Ok(None);
    };
    match word.compare_exchange(v, new, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => Ok(Some(result)),
        Err(_) => Ok(None),
    }
}

/// Unlocks the word at `offset`; fails if this peer does not hold it.
pub(crate) fn unlock(cx: &Inner, offset: u64) -> Result<(), SyncError> {
    let word = cx.mem.u32(offset)?;
    let mut v = word.load(Ordering::Relaxed);
    loop {
        if v & TAG_MASK != cx.tag {
            return Err(SyncError::NotOwner);
        }
        match word.compare_exchange_weak(v, 0, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => v = now,
        }
    }
    if v & WAITERS != 0 {
        wait::wake(cx, offset, 1)?;
    }
    Ok(())
}

/// A robust mutex in the region. All-zero bytes are an unlocked mutex.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Mutex {
    word: AtomicU32,
}

// SAFETY: one atomic word; every bit pattern is a valid state.
unsafe impl Shared for Mutex {}

impl Mutex {
    /// An unlocked mutex (for building objects before copying them in).
    pub const fn new() -> Self {
        Self {
            word: AtomicU32::new(0),
        }
    }

    fn offset(&self, shoal: &Shoal) -> Result<u64, SyncError> {
        shoal.word_offset(&self.word)
    }

    /// Locks, waiting as long as it takes.
    pub fn lock<'a>(&'a self, shoal: &'a Shoal) -> Result<MutexGuard<'a>, SyncError> {
        self.lock_timeout(shoal, None)
    }

    /// Locks, waiting at most `timeout` (None: forever).
    pub fn lock_timeout<'a>(
        &'a self,
        shoal: &'a Shoal,
        timeout: Option<Duration>,
    ) -> Result<MutexGuard<'a>, SyncError> {
        let offset = self.offset(shoal)?;
        let how = lock(&shoal.inner, offset, timeout)?;
        Ok(MutexGuard {
            shoal,
            offset,
            how,
            armed: true,
        })
    }

    /// Locks if free (or held by a dead peer); `None` if held.
    pub fn try_lock<'a>(&'a self, shoal: &'a Shoal) -> Result<Option<MutexGuard<'a>>, SyncError> {
        let offset = self.offset(shoal)?;
        Ok(try_lock(&shoal.inner, offset)?.map(|how| MutexGuard {
            shoal,
            offset,
            how,
            armed: true,
        }))
    }

    /// The raw lock word (0: unlocked).
    pub fn raw(&self) -> u32 {
        self.word.load(Ordering::Relaxed)
    }
}

/// A held [`Mutex`]; unlocks on drop.
#[derive(Debug)]
pub struct MutexGuard<'a> {
    shoal: &'a Shoal,
    offset: u64,
    how: Locked,
    armed: bool,
}

impl MutexGuard<'_> {
    /// Whether the previous holder died while holding the lock.
    pub fn owner_died(&self) -> bool {
        self.how == Locked::OwnerDied
    }

    /// How the lock was acquired.
    pub fn locked(&self) -> Locked {
        self.how
    }

    /// Unlocks, reporting errors (drop ignores them).
    pub fn unlock(mut self) -> Result<(), SyncError> {
        self.armed = false;
        unlock(&self.shoal.inner, self.offset)
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn relocked(&mut self, how: Locked) {
        self.how = how;
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = unlock(&self.shoal.inner, self.offset);
        }
    }
}
