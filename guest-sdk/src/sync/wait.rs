// SPDX-License-Identifier: Apache-2.0
//! Futex-like `wait(word, expected, timeout)` / `wake(word, n)` across peers.
//!
//! A waiter spins briefly, then records itself in the shared wait table
//! (a per-peer counter for the word's hash bucket, plus a per-bucket total
//! for its sleep kind), re-checks the word and sleeps:
//! - host peers in a shared `FUTEX_WAIT` on the word itself;
//! - guests with interrupts on their doorbell;
//! - guests without a driver in growing naps (spinning with backoff).
//!
//! A waker (after changing the word) issues `FUTEX_WAKE` when any futex
//! sleeper is recorded for the bucket, and rings the doorbell of each peer
//! that has doorbell sleepers in the bucket — nobody else.
//!
//! The waiter increments its counters (a full barrier) before re-checking
//! the word; the waker changes the word and then, after a SeqCst fence,
//! reads the counters: one of the two always sees the other, so a wake is
//! never lost.

use super::futex::{self, KernelWait};
use super::SyncError;
use crate::handle::Inner;
use crate::layout::{Geometry, H_BELL_SLEEPERS, H_FUTEX_SLEEPERS, WAIT_ENTRY};
use crate::mem::Mem;
use crate::transport::SleepKind;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Spins before sleeping.
const SPINS: u32 = 40;
/// Longest nap of a driverless (polling) waiter.
const MAX_NAP: Duration = Duration::from_millis(1);

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The word no longer held the expected value, or a wake arrived.
    Woken,
    /// The timeout passed with the word unchanged.
    TimedOut,
}

fn bucket(offset: u64) -> u64 {
    (offset >> 2).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58
}

fn peer_entry(geo: &Geometry, id: u16) -> u64 {
    geo.wait + u64::from(id) * WAIT_ENTRY
}

/// Records how peer `id` sleeps (at open).
pub(crate) fn register_kind(mem: &Mem, geo: &Geometry, id: u16, kind: SleepKind) {
    if u32::from(id) < geo.max_peers {
        if let Ok(word) = mem.u32(peer_entry(geo, id)) {
            word.store(kind as u32, Ordering::Release);
        }
    }
}

struct Registration<'a> {
    mine: Option<&'a AtomicU32>,
    total: &'a AtomicU32,
}

impl<'a> Registration<'a> {
    fn new(cx: &'a Inner, offset: u64) -> Result<Self, SyncError> {
        let b = bucket(offset);
        let total_at = match cx.kind {
            SleepKind::Futex => H_FUTEX_SLEEPERS,
            SleepKind::Doorbell | SleepKind::Poll => H_BELL_SLEEPERS,
        };
        let total = cx.mem.u32(cx.geo.field(total_at) + 4 * b)?;
        let mine = if u32::from(cx.id) < cx.geo.max_peers {
            Some(cx.mem.u32(peer_entry(&cx.geo, cx.id) + 64 + 4 * b)?)
        } else {
            None
        };
        if let Some(m) = mine {
            m.fetch_add(1, Ordering::SeqCst);
        }
        total.fetch_add(1, Ordering::SeqCst);
        Ok(Self { mine, total })
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        if let Some(m) = self.mine {
            m.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Waits while the word at `offset` equals `expected`.
pub(crate) fn wait(
    cx: &Inner,
    offset: u64,
    expected: u32,
    timeout: Option<Duration>,
) -> Result<WaitOutcome, SyncError> {
    let word = cx.mem.u32(offset)?;
    for _ in 0..SPINS {
        if word.load(Ordering::Acquire) != expected {
            return Ok(WaitOutcome::Woken);
        }
        std::hint::spin_loop();
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let _registration = Registration::new(cx, offset)?;
    let mut nap = Duration::from_micros(20);
    loop {
        let token = cx.transport.sleep_token();
        if word.load(Ordering::SeqCst) != expected {
            return Ok(WaitOutcome::Woken);
        }
        let left = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(WaitOutcome::TimedOut);
                }
                Some(left)
            }
            None => None,
        };
        match cx.kind {
            SleepKind::Futex => {
                cx.transport.note_sleep(word, true);
                let slept = futex::wait(word, expected, left);
                cx.transport.note_sleep(word, false);
                return match slept {
                    Ok(KernelWait::Woken | KernelWait::Changed) => Ok(WaitOutcome::Woken),
                    Ok(KernelWait::TimedOut) => Ok(WaitOutcome::TimedOut),
                    Err(e) => Err(SyncError::Futex(e)),
                };
            }
            SleepKind::Doorbell => {
                // Any ring wakes every local sleeper; loop to re-check the
                // word and the deadline. A failing interrupt source degrades
                // to polling rather than an error.
                if cx.transport.sleep(token, left).is_err() {
                    std::thread::sleep(nap);
                }
            }
            SleepKind::Poll => {
                let step = left.map_or(nap, |l| l.min(nap));
                std::thread::sleep(step);
                nap = (nap * 2).min(MAX_NAP);
            }
        }
    }
}

/// Wakes up to `n` waiters on the word at `offset`; returns how many futex
/// sleepers were woken plus how many peers were rung.
pub(crate) fn wake(cx: &Inner, offset: u64, n: u32) -> Result<usize, SyncError> {
    let word = cx.mem.u32(offset)?;
    fence(Ordering::SeqCst);
    let b = bucket(offset);
    let futex_sleepers = cx.mem.u32(cx.geo.field(H_FUTEX_SLEEPERS) + 4 * b)?;
    let bell_sleepers = cx.mem.u32(cx.geo.field(H_BELL_SLEEPERS) + 4 * b)?;
    let mut woken = 0;
    if futex_sleepers.load(Ordering::SeqCst) > 0 && cx.kind == SleepKind::Futex {
        woken += futex::wake(word, n);
    }
    // Guests cannot reach host futexes: they ring every peer with sleepers
    // in the bucket; host peers only ring doorbell sleepers.
    let ring_futex_peers = cx.kind != SleepKind::Futex;
    let must_scan = bell_sleepers.load(Ordering::SeqCst) > 0
        || (ring_futex_peers && futex_sleepers.load(Ordering::SeqCst) > 0);
    if must_scan {
        for id in 0..cx.geo.max_peers.min(u32::from(u16::MAX)) as u16 {
            let entry = peer_entry(&cx.geo, id);
            if cx.mem.u32(entry + 64 + 4 * b)?.load(Ordering::SeqCst) == 0 {
                continue;
            }
            let kind = cx.mem.u32(entry)?.load(Ordering::Relaxed);
            let is_futex = kind == SleepKind::Futex as u32;
            if is_futex && !ring_futex_peers {
                continue;
            }
            if kind == SleepKind::Poll as u32 {
                continue; // it will notice by itself
            }
            if cx.transport.ring(id).is_ok() {
                woken += 1;
            }
        }
    }
    Ok(woken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::WAIT_BUCKETS;

    #[test]
    fn buckets_stay_in_range() {
        for off in (0..1 << 20).step_by(4) {
            assert!(bucket(off) < WAIT_BUCKETS);
        }
    }

    #[test]
    fn neighbouring_words_spread_over_buckets() {
        let used: std::collections::BTreeSet<u64> =
            (0..64).map(|i| bucket(0x10000 + 4 * i)).collect();
        assert!(used.len() > 32, "only {} buckets used", used.len());
    }
}
