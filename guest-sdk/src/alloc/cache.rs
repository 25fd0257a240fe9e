// SPDX-License-Identifier: Apache-2.0
//! Thread caches: small objects that a thread freed, kept for its next
//! allocations of the same class, so the common alloc/free takes no lock.
//!
//! A cache is one heap page in the region (a one-page large block flagged
//! [`F_CACHE`], owned by the peer's tag, on the list at `H_CACHE_HEAD`), used
//! by exactly one thread of that peer:
//!
//! ```text
//!   0 seq      u32  odd while the thread is in a cache operation
//!  16 counts   24 × u32, objects cached per class
//! 128 entries  per class `CAP[c]` × u64 object offsets; unused slots are 0
//! ```
//!
//! Cached objects are allocated in their slabs (bitmap bit set) and in
//! state [`S_CACHED`]; handing one out sets it to [`S_HELD`] and a free
//! sets it back, so a double free is refused (the state is not held).
//! The owning thread changes its cache with plain stores in this order:
//!
//! - take: `state(x) = held`, `entry = 0`, `count - 1`;
//! - give: `entry = x`, `state(x) = cached`, `count + 1`.
//!
//! So whenever the thread stops, an object named by an entry is either
//! cached (it is the cache's, wherever its entry is) or held (the program
//! got it, or never gave it up); a cached object is always named by an
//! entry. Reclaiming a dead peer's cache ([`reclaim_dead`], under the heap
//! lock) returns every cached object its entries name to the slabs, so
//! nothing is lost and nothing is handed out twice. Refills and flushes
//! move objects between the slabs and the cache under the heap lock,
//! journaled like every heap change.

use super::heap::{
    self, Heap, Use, CLASSES, D_FLAGS, D_KIND, D_LEN, D_NEXT, D_OWNER, D_STAMP, F_CACHE, K_LARGE,
    K_SLAB, S_CACHED, S_HELD,
};
use super::journal::Tx;
use super::view::{PageView, Tables};
use super::AllocError;
use crate::layout::{Geometry, H_CACHE_HEAD, PAGE};
use crate::mem::Mem;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

pub(crate) const C_SEQ: u64 = 0;
pub(crate) const C_COUNTS: u64 = 16;
const C_ENTRIES: u64 = 128;

/// Objects a cache holds per class: more of the small ones.
pub(crate) const CAP: [u32; CLASSES.len()] = {
    let mut cap = [0u32; CLASSES.len()];
    let mut c = 0;
    while c < cap.len() {
        cap[c] = if CLASSES[c] <= 128 {
            32
        } else if CLASSES[c] <= 512 {
            16
        } else {
            8
        };
        c += 1;
    }
    cap
};

/// Where each class's entries start in a cache page.
const ENTRY_AT: [u64; CLASSES.len()] = {
    let mut at = [0u64; CLASSES.len()];
    let mut next = C_ENTRIES;
    let mut c = 0;
    while c < at.len() {
        at[c] = next;
        next += 8 * CAP[c] as u64;
        c += 1;
    }
    at
};
const _: () = assert!(C_COUNTS + 4 * CLASSES.len() as u64 <= C_ENTRIES);
const _: () = assert!(ENTRY_AT[CLASSES.len() - 1] + 8 * CAP[CLASSES.len() - 1] as u64 <= PAGE);

/// Journal records one object move may need (a slab page taken or given
/// back included); a long operation checkpoints when fewer are left.
const MOVE_RECORDS: u64 = 48;

pub(crate) fn count_at(cache: u64, c: usize) -> u64 {
    cache + C_COUNTS + 4 * c as u64
}

pub(crate) fn entry_at(cache: u64, c: usize, i: u32) -> u64 {
    cache + ENTRY_AT[c] + 8 * u64::from(i)
}

/// Where a crash-injection test lets an operation stop (a peer dying
/// between two stores). [`Run`] never stops and costs nothing.
pub(crate) trait Steps {
    /// Whether to do the next store.
    fn go(&mut self) -> bool;
}

/// Runs operations to the end.
#[derive(Debug)]
pub(crate) struct Run;

impl Steps for Run {
    #[inline(always)]
    fn go(&mut self) -> bool {
        true
    }
}

/// Stops an operation after this many stores.
#[derive(Debug)]
pub(crate) struct StopAfter(pub(crate) u32);

impl Steps for StopAfter {
    fn go(&mut self) -> bool {
        match self.0.checked_sub(1) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

/// A thread's cache page.
#[derive(Debug, Clone, Copy)]
struct Page<'m>(PageView<'m>);

impl<'m> Page<'m> {
    #[inline(always)]
    fn new(mem: &'m Mem, off: u64) -> Result<Self, AllocError> {
        Ok(Self(PageView::new(mem, off)?))
    }

    #[inline(always)]
    fn count(&self, c: usize) -> &'m AtomicU32 {
        self.0.u32(C_COUNTS + 4 * c as u64)
    }

    #[inline(always)]
    fn entry(&self, c: usize, i: u32) -> &'m AtomicU64 {
        self.0.u64(ENTRY_AT[c] + 8 * u64::from(i))
    }

    /// Marks the cache busy (odd sequence) for an operation; returns the
    /// value for [`Page::leave`].
    #[inline(always)]
    fn enter(&self) -> u32 {
        let seq = self.0.u32(C_SEQ);
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Release);
        fence(Ordering::Release);
        odd
    }

    /// Marks the cache idle again (even, and changed).
    #[inline(always)]
    fn leave(&self, odd: u32) {
        self.0
            .u32(C_SEQ)
            .store(odd.wrapping_add(1), Ordering::Release);
    }
}

/// A small object found by its offset, without the heap lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) class: usize,
    page: u32,
    index: u32,
    stamp: u32,
}

impl Slot {
    /// Whether its slab page is still the same slab (no page reuse raced
    /// with the lookup).
    #[inline(always)]
    fn stable(&self, t: &Tables<'_>) -> bool {
        fence(Ordering::Acquire);
        t.desc(self.page, D_STAMP).load(Ordering::Acquire) == self.stamp
            && t.desc(self.page, D_KIND).load(Ordering::Acquire) == K_SLAB
    }
}

/// Looks `off` up as a slab object. `Ok(None)`: not in a slab page (a
/// large block, or garbage: the locked path decides). Offsets outside the
/// heap or between objects are [`AllocError::Foreign`].
#[inline(always)]
pub(crate) fn classify(mem: &Mem, geo: &Geometry, off: u64) -> Result<Option<Slot>, AllocError> {
    let t = Tables::new(mem, geo)?;
    let (page, within) = t.locate(off).ok_or(AllocError::Foreign(off))?;
    let stamp = t.desc(page, D_STAMP).load(Ordering::Acquire);
    if t.desc(page, D_KIND).load(Ordering::Acquire) != K_SLAB {
        return Ok(None);
    }
    let class = t.desc(page, D_LEN).load(Ordering::Acquire) as usize;
    if class >= CLASSES.len() {
        return Ok(None);
    }
    let index = heap::object_at(class, within).ok_or(AllocError::Foreign(off))?;
    Ok(Some(Slot {
        class,
        page,
        index,
        stamp,
    }))
}

/// Result of taking an object from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// This object, now held by the program.
    Got(u64),
    /// The class is empty: refill under the heap lock.
    Empty,
    /// A crash-injection test stopped it part-way.
    Stopped,
}

/// Result of giving an object to a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Give {
    /// Cached.
    Done,
    /// The class is full: flush under the heap lock, then retry.
    Full,
    /// The slab page changed under us: use the locked path.
    Raced,
    /// A crash-injection test stopped it part-way.
    Stopped,
}

/// Takes an object of class `c` from the cache at `cache` (called by its
/// thread only).
#[inline(always)]
pub(crate) fn take<S: Steps>(
    mem: &Mem,
    geo: &Geometry,
    cache: u64,
    c: usize,
    steps: &mut S,
) -> Result<Take, AllocError> {
    let cap = *CAP.get(c).ok_or(AllocError::BadSize(0))?;
    let page = Page::new(mem, cache)?;
    let count = page.count(c);
    let n = count.load(Ordering::Relaxed);
    if n == 0 {
        return Ok(Take::Empty);
    }
    if n > cap {
        return Err(AllocError::Corrupt("cache count"));
    }
    let entry = page.entry(c, n - 1);
    let x = entry.load(Ordering::Relaxed);
    // The page is in shared memory: only hand out what really is a cached
    // object of this class (the state address comes from the class we
    // expect, so the descriptor check is off the critical path).
    let t = Tables::new(mem, geo)?;
    let (pg, index) = match t.locate(x) {
        Some((pg, within)) => match heap::object_at(c, within) {
            Some(index) => (pg, index),
            None => return Err(AllocError::Corrupt("cache entry")),
        },
        None => return Err(AllocError::Corrupt("cache entry")),
    };
    let state = t.state(pg, index);
    let is_slab = t.desc(pg, D_KIND).load(Ordering::Acquire) == K_SLAB
        && t.desc(pg, D_LEN).load(Ordering::Acquire) as usize == c;
    if !is_slab || state.load(Ordering::Acquire) != S_CACHED {
        return Err(AllocError::Corrupt("cache entry is not a cached object"));
    }
    let seq = page.enter();
    for step in 0..3 {
        if !steps.go() {
            return Ok(Take::Stopped);
        }
        match step {
            0 => state.store(S_HELD, Ordering::Release),
            1 => entry.store(0, Ordering::Release),
            _ => count.store(n - 1, Ordering::Release),
        }
    }
    page.leave(seq);
    Ok(Take::Got(x))
}

/// Gives the held object `x` (looked up as `slot`) to the cache at
/// `cache` (called by its thread only). A double free is
/// [`AllocError::NotAllocated`].
#[inline(always)]
pub(crate) fn give<S: Steps>(
    mem: &Mem,
    geo: &Geometry,
    cache: u64,
    x: u64,
    slot: &Slot,
    steps: &mut S,
) -> Result<Give, AllocError> {
    let c = slot.class;
    let cap = *CAP.get(c).ok_or(AllocError::Foreign(x))?;
    let t = Tables::new(mem, geo)?;
    let state = t.state(slot.page, slot.index);
    if state.load(Ordering::Acquire) != S_HELD {
        // Re-check under the lock when the page changed meanwhile.
        return if slot.stable(&t) {
            Err(AllocError::NotAllocated(x))
        } else {
            Ok(Give::Raced)
        };
    }
    if !slot.stable(&t) {
        return Ok(Give::Raced);
    }
    let page = Page::new(mem, cache)?;
    let count = page.count(c);
    let n = count.load(Ordering::Relaxed);
    if n >= cap {
        return Ok(Give::Full);
    }
    let entry = page.entry(c, n);
    let seq = page.enter();
    for step in 0..3 {
        if !steps.go() {
            return Ok(Give::Stopped);
        }
        match step {
            0 => entry.store(x, Ordering::Release),
            1 => state.store(S_CACHED, Ordering::Release),
            _ => count.store(n + 1, Ordering::Release),
        }
    }
    page.leave(seq);
    Ok(Give::Done)
}

// ---- under the heap lock ----

/// Makes a new, empty cache page owned by `owner`; returns its offset.
pub(crate) fn create(tx: &mut Tx<'_>, owner: u32) -> Result<u64, AllocError> {
    let mut heap = Heap { tx };
    let off = heap.alloc_large(1, owner)?;
    heap.set_use(off, Use::Cache)?;
    // A fresh block nobody else knows: if we die before the commit, the
    // rollback frees it again, so its bytes need no journal.
    heap.tx.mem.zero(off, PAGE)?;
    let (page, _) = heap.locate(off)?;
    let head = heap.tx.geo.field(H_CACHE_HEAD);
    heap.push(head, page)?;
    Ok(off)
}

/// Moves objects of class `c` from the slabs into the cache until it is
/// half full; returns how many it holds then. Out of memory is an error
/// only when not one object could be moved.
pub(crate) fn refill(tx: &mut Tx<'_>, cache: u64, c: usize) -> Result<u32, AllocError> {
    let cap = *CAP.get(c).ok_or(AllocError::BadSize(0))?;
    let mut n = tx.get32(count_at(cache, c))?;
    if n > cap {
        return Err(AllocError::Corrupt("cache count"));
    }
    let start = n;
    while n < cap.div_ceil(2).max(1) {
        if tx.room() < MOVE_RECORDS {
            tx.checkpoint()?;
        }
        let taken = Heap { tx: &mut *tx }.take_object(c, S_CACHED);
        let x = match taken {
            Ok(x) => x,
            Err(AllocError::OutOfMemory(_)) if n > start => break,
            Err(e) => return Err(e),
        };
        tx.set64(entry_at(cache, c, n), x)?;
        n += 1;
        tx.set32(count_at(cache, c), n)?;
    }
    Ok(n)
}

/// Returns the cached object `x` to its slab if it really is a cached
/// object of class `c`; false if it was not.
fn uncache(tx: &mut Tx<'_>, x: u64, c: usize) -> Result<bool, AllocError> {
    let mut heap = Heap { tx };
    let Ok((page, within)) = heap.locate(x) else {
        return Ok(false);
    };
    if heap.get(page, D_KIND)? != K_SLAB {
        return Ok(false);
    }
    let Ok((class, index)) = heap.slab_index(page, within, x) else {
        return Ok(false);
    };
    if class != c || heap.state(page, index)? != S_CACHED {
        return Ok(false);
    }
    heap.put_object(page, within, x, S_CACHED)?;
    Ok(true)
}

/// Moves objects of class `c` from the cache back to their slabs until
/// `keep` are left (the last ones first).
pub(crate) fn flush(tx: &mut Tx<'_>, cache: u64, c: usize, keep: u32) -> Result<(), AllocError> {
    let cap = *CAP.get(c).ok_or(AllocError::BadSize(0))?;
    let mut n = tx.get32(count_at(cache, c))?;
    if n > cap {
        return Err(AllocError::Corrupt("cache count"));
    }
    while n > keep {
        if tx.room() < MOVE_RECORDS {
            tx.checkpoint()?;
        }
        let at = entry_at(cache, c, n - 1);
        let x = tx.get64(at)?;
        tx.set64(at, 0)?;
        n -= 1;
        tx.set32(count_at(cache, c), n)?;
        if !uncache(tx, x, c)? {
            return Err(AllocError::Corrupt("cache entry"));
        }
    }
    Ok(())
}

/// Empties the cache at `cache` (its thread is done, or its peer is dead:
/// then an entry past the count may name a cached object too) and frees
/// its page. Entries that name no cached object (a dead thread's object it
/// had already taken, or not yet given) are dropped.
pub(crate) fn release(tx: &mut Tx<'_>, cache: u64) -> Result<(), AllocError> {
    for (c, &cap) in CAP.iter().enumerate() {
        for i in (0..cap).rev() {
            let at = entry_at(cache, c, i);
            let x = tx.get64(at)?;
            if x == 0 {
                continue;
            }
            if tx.room() < MOVE_RECORDS {
                tx.checkpoint()?;
            }
            tx.set64(at, 0)?;
            if tx.get32(count_at(cache, c))? > i {
                tx.set32(count_at(cache, c), i)?;
            }
            uncache(tx, x, c)?;
        }
        tx.set32(count_at(cache, c), 0)?;
    }
    if tx.room() < MOVE_RECORDS {
        tx.checkpoint()?;
    }
    let mut heap = Heap { tx };
    let (page, _) = heap.locate(cache)?;
    let head = heap.tx.geo.field(H_CACHE_HEAD);
    heap.unlink(head, page)?;
    heap.free(cache, Use::Cache)?;
    Ok(())
}

/// The cache pages on the list, with their owners (stops at a broken link).
pub(crate) fn list(tx: &mut Tx<'_>) -> Result<Vec<(u64, u32)>, AllocError> {
    let geo = *tx.geo;
    let heap = Heap { tx };
    let mut out = Vec::new();
    let mut link = heap.tx.get32(geo.field(H_CACHE_HEAD))?;
    while link != 0 && out.len() <= geo.pages as usize {
        let page = link - 1;
        if page >= geo.pages
            || heap.get(page, D_KIND)? != K_LARGE
            || heap.get(page, D_LEN)? != 1
            || heap.get(page, D_FLAGS)? & F_CACHE == 0
        {
            break;
        }
        out.push((heap.page_offset(page), heap.get(page, D_OWNER)?));
        link = heap.get(page, D_NEXT)?;
    }
    Ok(out)
}

/// Empties and frees every cache whose owner is dead; returns how many.
pub(crate) fn reclaim_dead(
    tx: &mut Tx<'_>,
    alive: &dyn Fn(u32) -> bool,
) -> Result<usize, AllocError> {
    let dead: Vec<u64> = list(tx)?
        .into_iter()
        .filter(|&(_, owner)| !alive(owner))
        .map(|(off, _)| off)
        .collect();
    for &cache in &dead {
        release(tx, cache)?;
    }
    Ok(dead.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_room_in_one_page() {
        for (c, &cap) in CAP.iter().enumerate() {
            assert!(cap >= 2);
            assert!(entry_at(0, c, cap - 1) + 8 <= PAGE);
        }
    }

    #[test]
    fn object_index_without_division_is_exact() {
        for (c, &size) in CLASSES.iter().enumerate() {
            for within in 0..PAGE as u32 {
                let want = (within % size == 0 && within / size < heap::per_page(c))
                    .then_some(within / size);
                assert_eq!(heap::object_at(c, within), want, "class {c} byte {within}");
            }
        }
    }

    #[test]
    fn stop_after_counts_stores() {
        let mut s = StopAfter(2);
        assert!(s.go() && s.go());
        assert!(!s.go());
    }
}
