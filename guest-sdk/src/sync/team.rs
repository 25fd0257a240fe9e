// SPDX-License-Identifier: Apache-2.0
//! A team: the peers (one member per process or VM) that cooperate on one
//! computation. Members join by name and get a rank; the team gives them a
//! barrier, a static partition of index ranges, reductions and a broadcast.
//!
//! The team lives in a named object `team:<name>`:
//!
//! ```text
//!  0  size     u32   members expected (set by the first joiner)
//!  4  joined   u32   next rank to hand out
//!  8  departed u32   members of this round that left
//! 12  round    u32   bumped when the last member leaves (the team resets)
//! 16  barrier  16 B  over `size` parties
//! 32  bcast    u64   broadcast slot
//! 64  slots    size × u64, one per rank (reductions)
//! ```
//!
//! A team runs in rounds: once all `size` members of a round have left
//! (dropped their [`Team`], or `shoal_team_leave`), the team resets and the
//! next `size` joiners form a new round. A joiner that finds the current
//! round full waits for it to end.

use super::barrier::Barrier;
use super::wait;
use super::SyncError;
use crate::handle::Shoal;
use crate::ptr::ShmPtr;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a joiner waiting for a full round re-checks.
const ROUND_POLL: Duration = Duration::from_millis(50);

const OFF_SIZE: u64 = 0;
const OFF_JOINED: u64 = 4;
const OFF_DEPARTED: u64 = 8;
const OFF_ROUND: u64 = 12;
const OFF_BARRIER: u64 = 16;
const OFF_BCAST: u64 = 32;
const OFF_SLOTS: u64 = 64;
/// Largest team.
pub const MAX_TEAM: u32 = 4096;

/// One member's view of a team; leaves the team on drop.
#[derive(Debug)]
pub struct Team {
    shoal: Shoal,
    base: u64,
    rank: u32,
    size: u32,
}

/// The static share of `n` items for `rank` of `size`: contiguous, sizes
/// differing by at most one, earlier ranks taking the remainder.
pub fn partition(n: u64, rank: u32, size: u32) -> Range<u64> {
    if size == 0 || rank >= size {
        return 0..0;
    }
    let (size, rank) = (u64::from(size), u64::from(rank));
    let chunk = n / size;
    let rem = n % size;
    let start = rank * chunk + rank.min(rem);
    let len = chunk + u64::from(rank < rem);
    start..start + len
}

impl Team {
    /// Joins team `name` of `size` members and waits until all have joined
    /// (first for the current round to end, if it is full).
    pub fn join(shoal: &Shoal, name: &str, size: u32) -> Result<Self, SyncError> {
        Self::join_timeout(shoal, name, size, None)
    }

    /// As [`Team::join`], waiting at most `timeout` for a place
    /// ([`SyncError::TeamFull`]) and then for the others.
    pub fn join_timeout(
        shoal: &Shoal,
        name: &str,
        size: u32,
        timeout: Option<Duration>,
    ) -> Result<Self, SyncError> {
        if size == 0 || size > MAX_TEAM {
            return Err(SyncError::Invalid("team size"));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let object = format!("team:{name}");
        let bytes = OFF_SLOTS + 8 * u64::from(size);
        let (ptr, _) = shoal
            .find_or_create(&object, bytes)
            .map_err(SyncError::Alloc)?;
        let base = ptr.offset();
        let word = |rel: u64| shoal.get(ShmPtr::<AtomicU32>::from_offset(base + rel));
        match word(OFF_SIZE)?.compare_exchange(0, size, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(have) if have == size => {}
            Err(have) => return Err(SyncError::Parties { got: size, have }),
        }
        let barrier = shoal.get(ShmPtr::<Barrier>::from_offset(base + OFF_BARRIER))?;
        barrier.init(size)?;
        let rank = loop {
            let round = word(OFF_ROUND)?.load(Ordering::Acquire);
            let joined = word(OFF_JOINED)?.load(Ordering::Acquire);
            if joined < size {
                if word(OFF_JOINED)?
                    .compare_exchange(joined, joined + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break joined;
                }
                continue;
            }
            let mut chunk = ROUND_POLL;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(SyncError::TeamFull);
                }
                chunk = chunk.min(left);
            }
            wait::wait(&shoal.inner, base + OFF_ROUND, round, Some(chunk))?;
        };
        // From here on, dropping the team leaves it.
        let team = Self {
            shoal: shoal.clone(),
            base,
            rank,
            size,
        };
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        barrier.wait_timeout(shoal, left)?;
        Ok(team)
    }

    /// Leaves the team (also done on drop); the last member to leave resets
    /// it for the next round.
    fn leave(&self) -> Result<(), SyncError> {
        let departed = self.word(OFF_DEPARTED)?.fetch_add(1, Ordering::AcqRel) + 1;
        if departed >= self.size {
            self.word(OFF_DEPARTED)?.store(0, Ordering::Relaxed);
            self.word(OFF_JOINED)?.store(0, Ordering::Release);
            let round = self.word(OFF_ROUND)?;
            round.fetch_add(1, Ordering::AcqRel);
            wait::wake(&self.shoal.inner, self.base + OFF_ROUND, u32::MAX)?;
        }
        Ok(())
    }

    fn word(&self, rel: u64) -> Result<&AtomicU32, SyncError> {
        Ok(self
            .shoal
            .get(ShmPtr::<AtomicU32>::from_offset(self.base + rel))?)
    }

    fn slot(&self, rank: u32) -> Result<&AtomicU64, SyncError> {
        let off = self.base + OFF_SLOTS + 8 * u64::from(rank);
        Ok(self.shoal.get(ShmPtr::<AtomicU64>::from_offset(off))?)
    }

    fn barrier_obj(&self) -> Result<&Barrier, SyncError> {
        Ok(self
            .shoal
            .get(ShmPtr::<Barrier>::from_offset(self.base + OFF_BARRIER))?)
    }

    /// This member's rank, 0-based.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Number of members.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Waits for all members. True in exactly one member per phase.
    pub fn barrier(&self) -> Result<bool, SyncError> {
        self.barrier_obj()?.wait(&self.shoal)
    }

    /// As [`Team::barrier`], for at most `timeout`.
    pub fn barrier_timeout(&self, timeout: Duration) -> Result<bool, SyncError> {
        self.barrier_obj()?.wait_timeout(&self.shoal, Some(timeout))
    }

    /// This member's static share of the index range `0..n`.
    pub fn range(&self, n: u64) -> Range<u64> {
        partition(n, self.rank, self.size)
    }

    /// Every member contributes `value`; all get back the slot values in
    /// rank order.
    fn gather(&self, value: u64) -> Result<Vec<u64>, SyncError> {
        self.slot(self.rank)?.store(value, Ordering::Release);
        self.barrier()?;
        let values = (0..self.size)
            .map(|r| self.slot(r).map(|s| s.load(Ordering::Acquire)))
            .collect::<Result<Vec<_>, _>>()?;
        // Nobody may overwrite a slot before everyone has read it.
        self.barrier()?;
        Ok(values)
    }

    /// Sum of every member's value (computed in rank order, so all members
    /// get bit-identical results).
    pub fn sum_f64(&self, value: f64) -> Result<f64, SyncError> {
        let all = self.gather(value.to_bits())?;
        Ok(all.into_iter().map(f64::from_bits).sum())
    }

    /// Minimum of every member's value.
    pub fn min_f64(&self, value: f64) -> Result<f64, SyncError> {
        let all = self.gather(value.to_bits())?;
        Ok(all
            .into_iter()
            .map(f64::from_bits)
            .fold(f64::INFINITY, f64::min))
    }

    /// Maximum of every member's value.
    pub fn max_f64(&self, value: f64) -> Result<f64, SyncError> {
        let all = self.gather(value.to_bits())?;
        Ok(all
            .into_iter()
            .map(f64::from_bits)
            .fold(f64::NEG_INFINITY, f64::max))
    }

    /// Wrapping sum of every member's value.
    pub fn sum_i64(&self, value: i64) -> Result<i64, SyncError> {
        let all = self.gather(value as u64)?;
        Ok(all.into_iter().fold(0i64, |a, v| a.wrapping_add(v as i64)))
    }

    /// Minimum of every member's value.
    pub fn min_i64(&self, value: i64) -> Result<i64, SyncError> {
        let all = self.gather(value as u64)?;
        Ok(all.into_iter().map(|v| v as i64).min().unwrap_or(value))
    }

    /// Maximum of every member's value.
    pub fn max_i64(&self, value: i64) -> Result<i64, SyncError> {
        let all = self.gather(value as u64)?;
        Ok(all.into_iter().map(|v| v as i64).max().unwrap_or(value))
    }

    /// Member `root`'s `value`, delivered to every member.
    pub fn broadcast(&self, root: u32, value: u64) -> Result<u64, SyncError> {
        if root >= self.size {
            return Err(SyncError::Invalid("root rank"));
        }
        let bcast = self
            .shoal
            .get(ShmPtr::<AtomicU64>::from_offset(self.base + OFF_BCAST))?;
        if self.rank == root {
            bcast.store(value, Ordering::Release);
        }
        self.barrier()?;
        let got = bcast.load(Ordering::Acquire);
        self.barrier()?;
        Ok(got)
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_covers_range_without_overlap() {
        for n in [0u64, 1, 7, 100, 101] {
            for size in 1..6u32 {
                let mut next = 0;
                for rank in 0..size {
                    let r = partition(n, rank, size);
                    assert_eq!(r.start, next, "n {n} size {size} rank {rank}");
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn partition_shares_differ_by_at_most_one() {
        let lens: Vec<u64> = (0..4)
            .map(|r| partition(10, r, 4))
            .map(|r| r.end - r.start)
            .collect();
        assert_eq!(lens, vec![3, 3, 2, 2]);
    }

    #[test]
    fn partition_rejects_bad_rank() {
        assert_eq!(partition(10, 4, 4), 0..0);
        assert_eq!(partition(10, 0, 0), 0..0);
    }
}
