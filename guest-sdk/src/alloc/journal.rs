// SPDX-License-Identifier: Apache-2.0
//! The allocator's undo journal.
//!
//! Every metadata store made under the heap lock goes through a [`Tx`],
//! which first appends `(offset, old value)` to the journal in the SDK
//! header, then bumps the journal length (release), then stores. Commit
//! resets the length to zero before the lock is released. A long operation
//! may [`Tx::checkpoint`]: everything so far becomes permanent (it must
//! leave the heap consistent) and the journal restarts. A peer that takes
//! the heap lock over from a dead holder replays the journal backwards
//! ([`rollback`]): the dead peer's half-done operation disappears, so no
//! block is lost or handed out twice.

use super::heap::is_cache_page;
use super::AllocError;
use crate::layout::{Geometry, H_JOURNAL, H_JOURNAL_LEN, JOURNAL_CAP};
use crate::mem::Mem;
use std::sync::atomic::Ordering;

/// Marks a 32-bit record.
const WIDTH32: u64 = 1 << 63;
/// Marks an 8-bit record (neither flag: 64-bit).
const WIDTH8: u64 = 1 << 62;
const OFFSET_MASK: u64 = !(WIDTH32 | WIDTH8);

/// A metadata transaction (the caller holds the heap lock).
#[derive(Debug)]
pub(crate) struct Tx<'a> {
    pub(crate) mem: &'a Mem,
    pub(crate) geo: &'a Geometry,
    len: u64,
    /// Records still allowed in all (None: no limit) — fewer to simulate a
    /// holder dying part-way, see `alloc::fuzz`.
    budget: Option<u64>,
}

impl<'a> Tx<'a> {
    pub(crate) fn begin(mem: &'a Mem, geo: &'a Geometry) -> Self {
        Self {
            mem,
            geo,
            len: 0,
            budget: None,
        }
    }

    /// A transaction whose journal refuses every store after `records`
    /// (it then fails with [`AllocError::JournalFull`]).
    pub(crate) fn with_limit(mem: &'a Mem, geo: &'a Geometry, records: u64) -> Self {
        Self {
            budget: Some(records),
            ..Self::begin(mem, geo)
        }
    }

    /// Journal records still free before the next checkpoint.
    pub(crate) fn room(&self) -> u64 {
        JOURNAL_CAP - self.len
    }

    /// Makes everything so far permanent and restarts the journal; the
    /// heap must be consistent at this point.
    pub(crate) fn checkpoint(&mut self) -> Result<(), AllocError> {
        self.mem
            .u32(self.geo.field(H_JOURNAL_LEN))?
            .store(0, Ordering::Release);
        self.len = 0;
        Ok(())
    }

    fn log(&mut self, tagged_off: u64, old: u64) -> Result<(), AllocError> {
        if self.len >= JOURNAL_CAP || self.budget == Some(0) {
            return Err(AllocError::JournalFull);
        }
        if let Some(b) = self.budget.as_mut() {
            *b -= 1;
        }
        let rec = self.geo.field(H_JOURNAL) + 16 * self.len;
        self.mem.u64(rec)?.store(tagged_off, Ordering::Relaxed);
        self.mem.u64(rec + 8)?.store(old, Ordering::Relaxed);
        self.len += 1;
        self.mem
            .u32(self.geo.field(H_JOURNAL_LEN))?
            .store(self.len as u32, Ordering::Release);
        Ok(())
    }

    /// Reads a 32-bit metadata word.
    pub(crate) fn get32(&self, off: u64) -> Result<u32, AllocError> {
        Ok(self.mem.u32(off)?.load(Ordering::Relaxed))
    }

    /// Reads an 8-bit metadata word.
    pub(crate) fn get8(&self, off: u64) -> Result<u8, AllocError> {
        Ok(self.mem.u8(off)?.load(Ordering::Relaxed))
    }

    /// Journals and stores an 8-bit metadata word.
    pub(crate) fn set8(&mut self, off: u64, value: u8) -> Result<(), AllocError> {
        let word = self.mem.u8(off)?;
        let old = word.load(Ordering::Relaxed);
        if old != value {
            self.log(off | WIDTH8, u64::from(old))?;
            word.store(value, Ordering::Release);
        }
        Ok(())
    }

    /// Reads a 64-bit metadata word.
    pub(crate) fn get64(&self, off: u64) -> Result<u64, AllocError> {
        Ok(self.mem.u64(off)?.load(Ordering::Relaxed))
    }

    /// Journals and stores a 32-bit metadata word.
    pub(crate) fn set32(&mut self, off: u64, value: u32) -> Result<(), AllocError> {
        let word = self.mem.u32(off)?;
        let old = word.load(Ordering::Relaxed);
        if old != value {
            self.log(off | WIDTH32, u64::from(old))?;
            word.store(value, Ordering::Release);
        }
        Ok(())
    }

    /// Journals and stores a 64-bit metadata word.
    pub(crate) fn set64(&mut self, off: u64, value: u64) -> Result<(), AllocError> {
        let word = self.mem.u64(off)?;
        let old = word.load(Ordering::Relaxed);
        if old != value {
            self.log(off, old)?;
            word.store(value, Ordering::Release);
        }
        Ok(())
    }

    /// Makes the transaction permanent.
    pub(crate) fn commit(self) -> Result<(), AllocError> {
        self.mem
            .u32(self.geo.field(H_JOURNAL_LEN))?
            .store(0, Ordering::Release);
        Ok(())
    }

    /// Undoes this transaction (after an error part-way through).
    pub(crate) fn abort(self) -> Result<usize, AllocError> {
        rollback(self.mem, self.geo)
    }
}

/// Undoes whatever the journal holds (the caller holds the heap lock).
/// Returns the number of records replayed. Records pointing outside the
/// SDK metadata and the thread-cache pages are skipped: the journal lives
/// in shared memory too. Records are undone last to first, so a record
/// into a cache page is checked against the descriptors as they were when
/// it was written.
pub(crate) fn rollback(mem: &Mem, geo: &Geometry) -> Result<usize, AllocError> {
    let len_word = mem.u32(geo.field(H_JOURNAL_LEN))?;
    let len = u64::from(len_word.load(Ordering::Acquire)).min(JOURNAL_CAP);
    let meta = geo.header..geo.heap;
    let journal = geo.field(H_JOURNAL)..geo.field(H_JOURNAL) + 16 * JOURNAL_CAP;
    for i in (0..len).rev() {
        let rec = geo.field(H_JOURNAL) + 16 * i;
        let tagged = mem.u64(rec)?.load(Ordering::Relaxed);
        let old = mem.u64(rec + 8)?.load(Ordering::Relaxed);
        let off = tagged & OFFSET_MASK;
        let allowed = (meta.contains(&off) || is_cache_page(mem, geo, off))
            && !journal.contains(&off)
            && off != geo.field(H_JOURNAL_LEN);
        if !allowed {
            continue;
        }
        if tagged & WIDTH32 != 0 {
            if let Ok(w) = mem.u32(off) {
                w.store(old as u32, Ordering::Relaxed);
            }
        } else if tagged & WIDTH8 != 0 {
            if let Ok(w) = mem.u8(off) {
                w.store(old as u8, Ordering::Relaxed);
            }
        } else if let Ok(w) = mem.u64(off) {
            w.store(old, Ordering::Relaxed);
        }
    }
    len_word.store(0, Ordering::Release);
    Ok(len as usize)
}
