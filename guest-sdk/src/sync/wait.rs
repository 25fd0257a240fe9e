// SPDX-License-Identifier: Apache-2.0
//! Futex-like `wait(word, expected, timeout)` / `wake(word, n)` across peers.
//!
//! A waiter spins briefly (0-8 µs, adapted per thread, see `spin`), then
//! records itself in the shared wait table
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
use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a waiter spins before it registers and sleeps adapts per
/// thread (nanoseconds): a spin that saw the word change grows the budget
/// by a quarter (to at most `SPIN_MAX_NS`), one that ended in sleep halves
/// it (to none below `SPIN_FLOOR_NS`), and with no budget every
/// `PROBE_EVERY`-th wait still spins `PROBE_NS` to find out whether
/// spinning pays again. Threads with cores of their own that hand work back
/// and forth are meant to catch each other awake so (a kernel sleep/wake
/// cycle takes 1-2 µs on our machines); threads that share their core with
/// other work, for
/// which spinning only makes the scheduler wake them later (measured: a
/// two-thread futex round trip took 3.1 µs with a 0.5 µs spin and 1.7 µs
/// without), sleep at once.
const SPIN_MAX_NS: u32 = 8_000;
const SPIN_FLOOR_NS: u32 = 250;
const PROBE_NS: u32 = 2_000;
const PROBE_EVERY: u32 = 64;
/// Spin iterations between two looks at the clock.
const SPIN_CHUNK: u32 = 16;
/// Longest nap of a driverless (polling) waiter.
const MAX_NAP: Duration = Duration::from_millis(1);

thread_local! {
    /// This thread's spin budget and waits since the last probe.
    static SPIN: Cell<(u32, u32)> = const { Cell::new((PROBE_NS, 0)) };
}

/// Spins while the word holds `expected`, for this thread's spin budget
/// (at most `limit`); true if it changed.
fn spin(word: &AtomicU32, expected: u32, limit: Option<Duration>) -> bool {
    let (budget, waits) = SPIN.try_with(Cell::get).unwrap_or((0, 0));
    let probe = budget == 0 && waits >= PROBE_EVERY;
    let span_ns = if probe { PROBE_NS } else { budget };
    if span_ns == 0 {
        let _ = SPIN.try_with(|s| s.set((0, waits + 1)));
        return false;
    }
    let mut span = Duration::from_nanos(u64::from(span_ns));
    if let Some(limit) = limit {
        span = span.min(limit);
    }
    let start = Instant::now();
    let changed = 'spin: loop {
        for _ in 0..SPIN_CHUNK {
            if word.load(Ordering::Acquire) != expected {
                break 'spin true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= span {
            break false;
        }
    };
    let next = if changed {
        span_ns.saturating_add(span_ns / 4).min(SPIN_MAX_NS)
    } else if span_ns / 2 < SPIN_FLOOR_NS {
        0
    } else {
        span_ns / 2
    };
    let _ = SPIN.try_with(|s| s.set((next, 0)));
    changed
}

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
    if word.load(Ordering::Acquire) != expected {
        return Ok(WaitOutcome::Woken);
    }
    let start = Instant::now();
    if spin(word, expected, timeout) {
        return Ok(WaitOutcome::Woken);
    }
    let deadline = timeout.map(|t| start + t);
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
