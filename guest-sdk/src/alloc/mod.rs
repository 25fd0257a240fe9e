// SPDX-License-Identifier: Apache-2.0
//! The shared allocator: offsets not pointers, size classes plus large
//! blocks, named objects, per-thread caches of small objects, one robust
//! heap lock with an undo journal, and a heap checker.
//!
//! Small allocations and frees go through the calling thread's cache, a
//! page in the region (see `cache.rs`): no lock, a few plain stores in an
//! order that a dead peer's cache can be reclaimed from. Everything else —
//! refilling and flushing caches, large blocks, named objects — takes the
//! heap lock (a robust [`crate::sync::Mutex`] word in the SDK header), runs
//! as one journaled transaction, commits and unlocks. A peer that finds the
//! lock held by a dead peer takes it with owner-died and rolls the dead
//! peer's transaction back first, so an allocation interrupted by `kill -9`
//! is simply undone; the caches of dead peers are emptied back into the
//! heap then, when a peer opens the region, when memory runs out, and by
//! [`Shoal::reclaim_dead`]. Every offset handed in is validated against the
//! page descriptors and object states: double frees and foreign offsets are
//! errors.

pub(crate) mod cache;
mod cache_check;
pub mod check;
pub mod fuzz;
pub(crate) mod heap;
pub(crate) mod journal;
pub(crate) mod names;
pub(crate) mod thread;
mod view;

pub use check::HeapReport;
pub use heap::{CLASSES, MAX_SMALL};

use crate::handle::{Inner, Shoal};
use crate::layout::{H_JOURNAL_LEN, H_LOCK, H_RECOVERIES, PAGE};
use crate::mem::MemError;
use crate::ptr::{Shared, ShmPtr};
use crate::sync::mutex::{self, Locked};
use crate::sync::SyncError;
use heap::{Heap, Use};
use journal::Tx;
use names::Name;
use std::sync::atomic::Ordering;
use std::time::Duration;
use thiserror::Error;

/// Allocator errors.
#[derive(Debug, Error)]
pub enum AllocError {
    /// Not enough free space for the request.
    #[error("Out of shared memory for {0} bytes")]
    OutOfMemory(u64),
    /// Zero or absurd size.
    #[error("Invalid size {0}")]
    BadSize(u64),
    /// The offset is not inside the heap, or not at a block start.
    #[error("Offset {0:#x} is not a heap block")]
    Foreign(u64),
    /// The block is not allocated (double free, or never allocated).
    #[error("Offset {0:#x} is not allocated")]
    NotAllocated(u64),
    /// A named object must be removed by name.
    #[error("Offset {0:#x} is a named object")]
    Named(u64),
    /// Names are 1 to 40 bytes without NUL.
    #[error("Invalid object name")]
    BadName,
    /// The named-object table is full.
    #[error("Named-object table is full")]
    NamesFull,
    /// An existing named object is smaller than requested.
    #[error("Named object has {have} bytes, {want} requested")]
    SizeMismatch {
        /// Existing size.
        have: u64,
        /// Requested size.
        want: u64,
    },
    /// The alignment is not supported.
    #[error("Alignment {0} is not supported")]
    Align(usize),
    /// Heap metadata is inconsistent (the operation was undone).
    #[error("Heap metadata is corrupt: {0}")]
    Corrupt(&'static str),
    /// An operation needed more journal records than exist (a bug).
    #[error("Allocator journal overflow")]
    JournalFull,
    /// Metadata access outside the region.
    #[error("Bad heap metadata access")]
    Mem(#[source] MemError),
    /// The heap lock failed.
    #[error("Cannot take the heap lock")]
    Lock(#[source] Box<SyncError>),
}

impl From<MemError> for AllocError {
    fn from(e: MemError) -> Self {
        Self::Mem(e)
    }
}

/// The heap lock, held; undone-and-released on drop.
struct HeapLock<'a> {
    cx: &'a Inner,
}

impl<'a> HeapLock<'a> {
    fn take(cx: &'a Inner, timeout: Option<Duration>) -> Result<Self, AllocError> {
        let how = mutex::lock(cx, cx.geo.field(H_LOCK), timeout)
            .map_err(|e| AllocError::Lock(Box::new(e)))?;
        let lock = Self { cx };
        let pending = cx
            .mem
            .u32(cx.geo.field(H_JOURNAL_LEN))?
            .load(Ordering::Acquire);
        if how == Locked::OwnerDied || pending != 0 {
            let undone = journal::rollback(&cx.mem, &cx.geo)?;
            cx.mem
                .u32(cx.geo.field(H_RECOVERIES))?
                .fetch_add(1, Ordering::Relaxed);
            log::warn!("shoal: recovered the heap from a dead holder ({undone} records undone)");
        }
        if how == Locked::OwnerDied {
            // The dead holder's thread caches go back to the heap too.
            let mut tx = Tx::begin(&cx.mem, &cx.geo);
            match cache::reclaim_dead(&mut tx, &|t| cx.peers.alive(t)) {
                Ok(_) => tx.commit()?,
                Err(_) => {
                    tx.abort()?;
                }
            }
        }
        Ok(lock)
    }
}

impl Inner {
    /// Runs `f` as one heap transaction under the heap lock, waiting at
    /// most `timeout` for the lock (None: as long as it takes).
    pub(crate) fn transact<T>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        let _lock = HeapLock::take(self, timeout)?;
        let mut tx = Tx::begin(&self.mem, &self.geo);
        match f(&mut tx) {
            Ok(v) => {
                tx.commit()?;
                Ok(v)
            }
            Err(e) => {
                tx.abort()?;
                Err(e)
            }
        }
    }

    /// As [`Inner::transact`]; when `f` runs out of memory, empties the
    /// caches of dead peers and, if there were any, runs `f` once more.
    pub(crate) fn transact_reclaiming<T>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        match self.transact(None, &mut f) {
            Err(AllocError::OutOfMemory(n)) => {
                if self.reclaim_dead_caches(None)? == 0 {
                    return Err(AllocError::OutOfMemory(n));
                }
                self.transact(None, f)
            }
            other => other,
        }
    }

    /// Empties and frees the thread caches of dead peers; returns how many.
    pub(crate) fn reclaim_dead_caches(
        &self,
        timeout: Option<Duration>,
    ) -> Result<usize, AllocError> {
        let peers = self.peers;
        self.transact(timeout, |tx| cache::reclaim_dead(tx, &|t| peers.alive(t)))
    }
}

impl Drop for HeapLock<'_> {
    fn drop(&mut self) {
        let _ = mutex::unlock(self.cx, self.cx.geo.field(H_LOCK));
    }
}

impl Shoal {
    /// Runs `f` as one heap transaction under the heap lock.
    fn transact<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        self.inner.transact(None, f)
    }

    fn alloc_in(tx: &mut Tx<'_>, size: u64, owner: u32, large: bool) -> Result<u64, AllocError> {
        let pages = size.div_ceil(PAGE);
        if size == 0 || pages > u64::from(tx.geo.pages) {
            return Err(AllocError::BadSize(size));
        }
        let mut heap = Heap { tx };
        if size <= MAX_SMALL && !large {
            heap.alloc_small(heap::class_of(size))
        } else {
            heap.alloc_large(pages as u32, owner)
        }
    }

    /// Allocates `size` bytes (16-byte aligned; page aligned above
    /// [`MAX_SMALL`]). The contents are unspecified.
    #[inline]
    pub fn alloc(&self, size: u64) -> Result<ShmPtr<u8>, AllocError> {
        if size > 0 && size <= MAX_SMALL {
            if let Some(off) = thread::alloc_fast(&self.inner, heap::class_of(size)) {
                return Ok(ShmPtr::from_offset(off));
            }
        }
        self.alloc_slow(size)
    }

    /// Everything but a small allocation from a non-empty cache.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, size: u64) -> Result<ShmPtr<u8>, AllocError> {
        if size > 0 && size <= MAX_SMALL {
            if let Some(off) = thread::alloc_small(&self.inner, heap::class_of(size))? {
                return Ok(ShmPtr::from_offset(off));
            }
        }
        let owner = self.inner.tag;
        let off = self
            .inner
            .transact_reclaiming(|tx| Self::alloc_in(tx, size, owner, false))?;
        Ok(ShmPtr::from_offset(off))
    }

    /// Allocates `size` zeroed bytes.
    pub fn alloc_zeroed(&self, size: u64) -> Result<ShmPtr<u8>, AllocError> {
        let ptr = self.alloc(size)?;
        self.inner.mem.zero(ptr.offset(), size)?;
        Ok(ptr)
    }

    /// Allocates a zeroed array of `n` `T`s.
    pub fn alloc_array<T: Shared>(&self, n: u64) -> Result<ShmPtr<T>, AllocError> {
        if std::mem::align_of::<T>() > 16 {
            return Err(AllocError::Align(std::mem::align_of::<T>()));
        }
        let bytes = n
            .checked_mul(std::mem::size_of::<T>() as u64)
            .ok_or(AllocError::BadSize(u64::MAX))?;
        Ok(self.alloc_zeroed(bytes.max(1))?.cast())
    }

    /// Frees a block from [`Shoal::alloc`]. Double frees, interior or foreign
    /// offsets and named objects are refused with an error.
    #[inline]
    pub fn free<T>(&self, ptr: ShmPtr<T>) -> Result<(), AllocError> {
        if thread::free_fast(&self.inner, ptr.offset()) {
            return Ok(());
        }
        self.free_slow(ptr.offset())
    }

    /// Everything but a small free into a cache with room.
    #[cold]
    #[inline(never)]
    fn free_slow(&self, off: u64) -> Result<(), AllocError> {
        if thread::free_small(&self.inner, off)? {
            return Ok(());
        }
        self.transact(|tx| Heap { tx }.free(off, Use::Plain).map(|_| ()))
    }

    /// Usable size of an allocated block.
    pub fn usable_size<T>(&self, ptr: ShmPtr<T>) -> Result<u64, AllocError> {
        self.transact(|tx| Heap { tx }.size_of(ptr.offset()))
    }

    /// Finds the named object `name`, or allocates `size` zeroed bytes under
    /// that name. Returns the object and whether this call created it. An
    /// existing object smaller than `size` is an error.
    pub fn find_or_create(&self, name: &str, size: u64) -> Result<(ShmPtr<u8>, bool), AllocError> {
        let key = Name::new(name)?;
        let owner = self.inner.tag;
        let mem = self.inner.mem;
        let (off, created) = self.inner.transact_reclaiming(|tx| {
            if let Some(entry) = names::find(tx, &key)? {
                if entry.size < size {
                    return Err(AllocError::SizeMismatch {
                        have: entry.size,
                        want: size,
                    });
                }
                return Ok((entry.offset, false));
            }
            // Named objects are whole pages, flagged, so a plain free of one
            // is refused without searching the name table.
            let off = Self::alloc_in(tx, size, owner, true)?;
            Heap { tx }.set_use(off, Use::Named)?;
            // Zero before publishing the name: nobody sees stale bytes.
            mem.zero(off, size)?;
            names::insert(tx, &key, off, size)?;
            Ok((off, true))
        })?;
        Ok((ShmPtr::from_offset(off), created))
    }

    /// Looks up a named object: its offset and size.
    pub fn find(&self, name: &str) -> Result<Option<(ShmPtr<u8>, u64)>, AllocError> {
        let key = Name::new(name)?;
        self.transact(|tx| {
            Ok(names::find(tx, &key)?.map(|e| (ShmPtr::from_offset(e.offset), e.size)))
        })
    }

    /// Removes and frees a named object. False if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, AllocError> {
        let key = Name::new(name)?;
        self.transact(|tx| {
            let Some(entry) = names::find(tx, &key)? else {
                return Ok(false);
            };
            names::remove(tx, &entry)?;
            Heap { tx }.free(entry.offset, Use::Named)?;
            Ok(true)
        })
    }

    /// Frees the unnamed large blocks (over [`MAX_SMALL`] bytes) whose
    /// allocating peer is dead, e.g. after `kill -9`; returns how many.
    /// Only call this when no live peer keeps using such blocks (a dead
    /// peer may have handed its offsets to others). Small blocks carry no
    /// owner and are not reclaimed, but the thread caches of dead peers
    /// (objects they freed and nobody holds) are emptied first.
    pub fn reclaim_dead(&self) -> Result<usize, AllocError> {
        self.inner.reclaim_dead_caches(None)?;
        let peers = self.inner.peers;
        let candidates = self.transact(|tx| check::walk(tx, &[], &|t| peers.alive(t)))?;
        let mut freed = 0;
        // One transaction per block (the journal is bounded), re-checking
        // that the block is still a dead peer's.
        for off in candidates.dead_owned {
            let done = self.transact(|tx| {
                let mut heap = Heap { tx };
                let (page, _) = heap.locate(off)?;
                let owner = heap.get(page, heap::D_OWNER)?;
                if heap.get(page, heap::D_KIND)? != heap::K_LARGE || peers.alive(owner) {
                    return Ok(false);
                }
                heap.free(off, Use::Plain).map(|_| true)
            })?;
            freed += usize::from(done);
        }
        Ok(freed)
    }

    /// Walks the whole heap under the lock and reports inconsistencies, and
    /// as leaks every allocated block that is neither named nor in `live`.
    pub fn check_heap(&self, live: &[u64]) -> Result<HeapReport, AllocError> {
        let peers = self.inner.peers;
        let mut report = self.transact(|tx| check::walk(tx, live, &|t| peers.alive(t)))?;
        report.recoveries = self.recoveries();
        Ok(report)
    }
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;
