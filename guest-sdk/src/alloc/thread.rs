// SPDX-License-Identifier: Apache-2.0
//! Which cache page belongs to the calling thread, per handle.
//!
//! A thread gets a cache (see [`super::cache`]) the first time it allocates
//! or frees a small object through a handle. The page offset is kept in a
//! thread-local, keyed by the handle's unique id; the handle also lists the
//! pages its threads made. When a thread ends, its caches are emptied back
//! into the heap; when a handle is dropped, so are the caches of its
//! threads that are still running (no thread can use them any more). A
//! process that dies without either leaves its caches to [`reclaim_dead`]
//! (see [`super::cache::reclaim_dead`]) once the state table says so.
//!
//! [`reclaim_dead`]: crate::Shoal::reclaim_dead

use super::cache::{self, Give, Run, Take, CAP};
use super::AllocError;
use crate::handle::Inner;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Source of handle ids (never reused, unlike addresses).
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// How long dropping a handle or ending a thread waits for the heap lock
/// to give its caches back (after that they wait for reclaiming).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// A fresh handle id.
pub(crate) fn new_uid() -> u64 {
    NEXT_UID.fetch_add(1, Ordering::Relaxed)
}

struct Mine {
    uid: u64,
    page: u64,
    inner: Weak<Inner>,
}

/// This thread's caches; emptied when the thread ends.
struct ThreadCaches(Vec<Mine>);

impl Drop for ThreadCaches {
    fn drop(&mut self) {
        // Later destructors of this thread must not find a page given back.
        let _ = LAST.try_with(|last| last.set((0, 0)));
        for mine in self.0.drain(..) {
            if let Some(inner) = mine.inner.upgrade() {
                inner.release_cache(mine.page);
            }
        }
    }
}

thread_local! {
    /// The last (handle id, cache page) used on this thread.
    static LAST: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    static MINE: RefCell<ThreadCaches> = const { RefCell::new(ThreadCaches(Vec::new())) };
}

/// This thread's cache page for `inner`, made on first use. None when the
/// thread cannot have one (it is ending, or the heap is full).
#[inline(always)]
pub(crate) fn page_for(inner: &Arc<Inner>) -> Option<u64> {
    match LAST.try_with(Cell::get) {
        Ok((uid, page)) if uid == inner.uid => Some(page),
        _ => page_slow(inner),
    }
}

#[cold]
fn page_slow(inner: &Arc<Inner>) -> Option<u64> {
    MINE.try_with(|mine| {
        let mut mine = mine.try_borrow_mut().ok()?;
        mine.0.retain(|m| m.inner.strong_count() > 0);
        let page = match mine.0.iter().find(|m| m.uid == inner.uid) {
            Some(m) => m.page,
            None => {
                let page = inner.new_cache().ok()?;
                mine.0.push(Mine {
                    uid: inner.uid,
                    page,
                    inner: Arc::downgrade(inner),
                });
                page
            }
        };
        let _ = LAST.try_with(|last| last.set((inner.uid, page)));
        Some(page)
    })
    .ok()
    .flatten()
}

/// The common case of [`alloc_small`]: an object from a non-empty cache.
/// None for everything else (the slow path sorts it out, errors included).
#[inline(always)]
pub(crate) fn alloc_fast(inner: &Arc<Inner>, c: usize) -> Option<u64> {
    let page = page_for(inner)?;
    match cache::take(&inner.mem, &inner.geo, page, c, &mut Run) {
        Ok(Take::Got(x)) => Some(x),
        _ => None,
    }
}

/// The common case of [`free_small`]: a held small object into a cache
/// with room. False for everything else.
#[inline(always)]
pub(crate) fn free_fast(inner: &Arc<Inner>, off: u64) -> bool {
    let Ok(Some(slot)) = cache::classify(&inner.mem, &inner.geo, off) else {
        return false;
    };
    let Some(page) = page_for(inner) else {
        return false;
    };
    matches!(
        cache::give(&inner.mem, &inner.geo, page, off, &slot, &mut Run),
        Ok(Give::Done)
    )
}

/// Allocates an object of class `c` through this thread's cache; None if
/// the thread has no cache (use the locked path).
pub(crate) fn alloc_small(inner: &Arc<Inner>, c: usize) -> Result<Option<u64>, AllocError> {
    let Some(page) = page_for(inner) else {
        return Ok(None);
    };
    if let Take::Got(x) = cache::take(&inner.mem, &inner.geo, page, c, &mut Run)? {
        return Ok(Some(x));
    }
    inner.transact_reclaiming(|tx| cache::refill(tx, page, c))?;
    match cache::take(&inner.mem, &inner.geo, page, c, &mut Run)? {
        Take::Got(x) => Ok(Some(x)),
        Take::Empty | Take::Stopped => Err(AllocError::Corrupt("refilled cache is empty")),
    }
}

/// Frees `off` into this thread's cache if it is a small object; false if
/// the locked path has to do it (a large block, no cache, a racing page).
pub(crate) fn free_small(inner: &Arc<Inner>, off: u64) -> Result<bool, AllocError> {
    let Some(slot) = cache::classify(&inner.mem, &inner.geo, off)? else {
        return Ok(false);
    };
    let Some(page) = page_for(inner) else {
        return Ok(false);
    };
    for _ in 0..2 {
        match cache::give(&inner.mem, &inner.geo, page, off, &slot, &mut Run)? {
            Give::Done => return Ok(true),
            Give::Raced | Give::Stopped => return Ok(false),
            Give::Full => {
                let keep = CAP[slot.class] / 2;
                inner.transact(None, |tx| cache::flush(tx, page, slot.class, keep))?;
            }
        }
    }
    Err(AllocError::Corrupt("flushed cache is full"))
}

impl Inner {
    /// Makes a cache page for a thread of this handle.
    fn new_cache(&self) -> Result<u64, AllocError> {
        let owner = self.tag;
        let page = self.transact_reclaiming(|tx| cache::create(tx, owner))?;
        self.caches_made(|pages| pages.push(page));
        Ok(page)
    }

    /// Empties and frees the cache page of a thread of this handle.
    fn release_cache(&self, page: u64) {
        let mut known = false;
        self.caches_made(|pages| {
            known = pages.contains(&page);
            pages.retain(|&p| p != page);
        });
        if known && self.peers.alive(self.tag) {
            if let Err(e) = self.transact(Some(RELEASE_TIMEOUT), |tx| cache::release(tx, page)) {
                log::warn!("shoal: thread cache {page:#x} not given back: {e}");
            }
        }
    }

    fn caches_made<T>(&self, f: impl FnOnce(&mut Vec<u64>) -> T) -> T {
        let mut guard = match self.caches.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No thread can use these caches any more. If our peer was declared
        // dead meanwhile, they are someone else's to reclaim.
        let pages = self.caches_made(std::mem::take);
        if pages.is_empty() || !self.peers.alive(self.tag) {
            return;
        }
        for page in pages {
            if let Err(e) = self.transact(Some(RELEASE_TIMEOUT), |tx| cache::release(tx, page)) {
                log::warn!("shoal: thread cache {page:#x} not given back: {e}");
            }
        }
    }
}
