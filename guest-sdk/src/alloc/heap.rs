// SPDX-License-Identifier: Apache-2.0
//! Heap pages, large blocks and size-class slabs.
//!
//! The heap is `pages` pages of 4 KiB. Page `p` has a 64-byte descriptor:
//!
//! ```text
//!  0 kind   u32  FREE (first or last page of a free run), LARGE (first page
//!                of a large block), LARGE_TAIL (its last page), SLAB
//!  4 len    u32  pages in the run/block, or the size class of a slab
//!  8 next   u32  list link (page + 1, 0 = end): free list or class list
//! 12 prev   u32  list link
//! 16 used   u32  objects in use (slab)
//! 20 stamp  u32  unique per run/block: first and last page carry the same
//! 24 owner  u32  owner tag of the allocating peer (large blocks)
//! 28 flags  u32  large blocks: bit 0 = named object (only freed by name),
//!                bit 1 = a thread-cache page (see `cache`)
//! 32 bitmap 4 × u64, one bit per slab object
//! ```
//!
//! Each page also has 256 state bytes in the object-state table, one per
//! slab object: free (bit clear), held by the program, or cached (in a
//! thread cache, see `cache`). A bitmap bit is set exactly when the
//! object's state is not free; the states are what tells a program's block
//! from a cached one, so a double free is refused even when the first free
//! only put the block in a cache.
//!
//! Free runs are kept coalesced in one doubly linked list; allocation is
//! first fit, carved from the end of a run. A run or block is recognised
//! only if its first and last page agree on kind, length and stamp, and
//! every free rewrites the freed block's first page, so stale descriptors
//! inside other blocks never pass for live ones. Slabs hold objects of one
//! size class; a slab with free objects is on its class's list.

use super::journal::Tx;
use super::AllocError;
use crate::layout::{
    Geometry, CLASS_SLOTS, DESC_SIZE, H_CLASSES, H_FREE_HEAD, H_FREE_PAGES, H_STAMP, PAGE,
    STATE_BYTES,
};
use crate::mem::{Mem, MemError};
use std::sync::atomic::Ordering;

pub(crate) const K_FREE: u32 = 1;
pub(crate) const K_LARGE: u32 = 2;
pub(crate) const K_LARGE_TAIL: u32 = 3;
pub(crate) const K_SLAB: u32 = 4;

pub(crate) const D_KIND: u64 = 0;
pub(crate) const D_LEN: u64 = 4;
pub(crate) const D_NEXT: u64 = 8;
pub(crate) const D_PREV: u64 = 12;
pub(crate) const D_USED: u64 = 16;
pub(crate) const D_STAMP: u64 = 20;
pub(crate) const D_OWNER: u64 = 24;
pub(crate) const D_FLAGS: u64 = 28;
/// Flag: the large block is a named object.
pub(crate) const F_NAMED: u32 = 1;
/// Flag: the one-page large block is a thread cache.
pub(crate) const F_CACHE: u32 = 2;

/// Object state: free in its slab.
pub(crate) const S_FREE: u8 = 0;
/// Object state: handed to the program.
pub(crate) const S_HELD: u8 = 1;
/// Object state: in a thread cache.
pub(crate) const S_CACHED: u8 = 2;

/// What a large block is used for (a free must match it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// An ordinary block (or a small object).
    Plain,
    /// A named object.
    Named,
    /// A thread-cache page.
    Cache,
}

impl Use {
    fn flags(self) -> u32 {
        match self {
            Self::Plain => 0,
            Self::Named => F_NAMED,
            Self::Cache => F_CACHE,
        }
    }
}
pub(crate) const D_BITMAP: u64 = 32;

/// Object sizes of the slab classes.
pub const CLASSES: [u32; 24] = [
    16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
    1280, 1536, 1792, 2048,
];
const _: () = assert!(CLASSES.len() as u64 <= CLASS_SLOTS);
/// Largest request served from a slab.
pub const MAX_SMALL: u64 = 2048;

/// Class of each request size in 16-byte steps (index `(size + 15) / 16`).
const CLASS_BY_STEP: [u8; (MAX_SMALL / 16 + 1) as usize] = {
    let mut table = [0u8; (MAX_SMALL / 16 + 1) as usize];
    let mut step = 0;
    let mut c = 0;
    while step < table.len() {
        while (CLASSES[c] as usize) < step * 16 {
            c += 1;
        }
        table[step] = c as u8;
        step += 1;
    }
    table
};

/// The class for a request of `size` bytes (`size <= MAX_SMALL`).
pub(crate) fn class_of(size: u64) -> usize {
    let step = (size.min(MAX_SMALL) as usize).div_ceil(16);
    CLASS_BY_STEP
        .get(step)
        .map_or(CLASSES.len() - 1, |&c| usize::from(c))
}

/// Region offset of the state byte of object `index` of heap page `page`.
#[inline]
pub(crate) fn state_offset(geo: &Geometry, page: u32, index: u32) -> u64 {
    geo.states + u64::from(page) * STATE_BYTES + u64::from(index)
}

/// Whether `off` lies in a thread-cache page (a one-page large block
/// flagged as a cache), read without the heap lock.
pub(crate) fn is_cache_page(mem: &Mem, geo: &Geometry, off: u64) -> bool {
    let end = geo.heap + u64::from(geo.pages) * PAGE;
    if off < geo.heap || off >= end {
        return false;
    }
    let page = (off - geo.heap) / PAGE;
    let d = |f: u64| {
        mem.u32(geo.desc + page * DESC_SIZE + f)
            .map_or(0, |w| w.load(Ordering::Acquire))
    };
    d(D_KIND) == K_LARGE && d(D_LEN) == 1 && d(D_FLAGS) & F_CACHE != 0
}

/// Objects per slab page of class `c`.
pub(crate) fn per_page(c: usize) -> u32 {
    PER_PAGE.get(c).copied().unwrap_or(0)
}

const PER_PAGE: [u32; CLASSES.len()] = {
    let mut n = [0u32; CLASSES.len()];
    let mut c = 0;
    while c < n.len() {
        n[c] = PAGE as u32 / CLASSES[c];
        c += 1;
    }
    n
};

/// `ceil(2^32 / size)` per class: `(x * RECIP[c]) >> 32 == x / size` for
/// every `x` below a page (the fast paths divide without `div`).
const RECIP: [u64; CLASSES.len()] = {
    let mut r = [0u64; CLASSES.len()];
    let mut c = 0;
    while c < r.len() {
        r[c] = (1u64 << 32).div_ceil(CLASSES[c] as u64);
        c += 1;
    }
    r
};

/// The object index of byte `within` (below a page) of a class-`c` slab,
/// if an object starts there.
#[inline]
pub(crate) fn object_at(c: usize, within: u32) -> Option<u32> {
    let (&size, &recip) = (CLASSES.get(c)?, RECIP.get(c)?);
    let index = ((u64::from(within) * recip) >> 32) as u32;
    (index * size == within && index < per_page(c)).then_some(index)
}

/// Writes the initial heap metadata: one free run over all pages.
pub(crate) fn format(mem: &Mem, geo: &Geometry) -> Result<(), MemError> {
    let last = geo.pages - 1;
    let d = |p: u32, f: u64| geo.desc + u64::from(p) * DESC_SIZE + f;
    for p in [0, last] {
        mem.u32(d(p, D_KIND))?.store(K_FREE, Ordering::Relaxed);
        mem.u32(d(p, D_LEN))?.store(geo.pages, Ordering::Relaxed);
        mem.u32(d(p, D_STAMP))?.store(1, Ordering::Relaxed);
    }
    mem.u32(geo.field(H_STAMP))?.store(1, Ordering::Relaxed);
    mem.u32(geo.field(H_FREE_HEAD))?.store(1, Ordering::Relaxed);
    mem.u32(geo.field(H_FREE_PAGES))?
        .store(geo.pages, Ordering::Relaxed);
    Ok(())
}

/// Heap operations inside one transaction.
pub(crate) struct Heap<'t, 'a> {
    pub(crate) tx: &'t mut Tx<'a>,
}

impl Heap<'_, '_> {
    fn geo(&self) -> &Geometry {
        self.tx.geo
    }

    pub(crate) fn d(&self, page: u32, field: u64) -> u64 {
        self.geo().desc + u64::from(page) * DESC_SIZE + field
    }

    pub(crate) fn get(&self, page: u32, field: u64) -> Result<u32, AllocError> {
        self.tx.get32(self.d(page, field))
    }

    fn set(&mut self, page: u32, field: u64, v: u32) -> Result<(), AllocError> {
        let off = self.d(page, field);
        self.tx.set32(off, v)
    }

    pub(crate) fn page_offset(&self, page: u32) -> u64 {
        self.geo().heap + u64::from(page) * PAGE
    }

    /// State of object `index` of slab page `page`.
    pub(crate) fn state(&self, page: u32, index: u32) -> Result<u8, AllocError> {
        self.tx.get8(state_offset(self.geo(), page, index))
    }

    fn set_state(&mut self, page: u32, index: u32, v: u8) -> Result<(), AllocError> {
        let off = state_offset(self.geo(), page, index);
        self.tx.set8(off, v)
    }

    fn new_stamp(&mut self) -> Result<u32, AllocError> {
        let at = self.geo().field(H_STAMP);
        let s = self.tx.get32(at)?.wrapping_add(1).max(1);
        self.tx.set32(at, s)?;
        Ok(s)
    }

    fn header(&self, rel: u64) -> u64 {
        self.geo().field(rel)
    }

    // ---- lists (free list and class lists share the link fields) ----

    pub(crate) fn push(&mut self, head_at: u64, page: u32) -> Result<(), AllocError> {
        let old = self.tx.get32(head_at)?;
        self.set(page, D_NEXT, old)?;
        self.set(page, D_PREV, 0)?;
        if old != 0 {
            self.set(old - 1, D_PREV, page + 1)?;
        }
        self.tx.set32(head_at, page + 1)
    }

    pub(crate) fn unlink(&mut self, head_at: u64, page: u32) -> Result<(), AllocError> {
        let next = self.get(page, D_NEXT)?;
        let prev = self.get(page, D_PREV)?;
        if prev == 0 {
            if self.tx.get32(head_at)? != page + 1 {
                return Err(AllocError::Corrupt("list head"));
            }
            self.tx.set32(head_at, next)?;
        } else {
            self.check_page(prev - 1)?;
            self.set(prev - 1, D_NEXT, next)?;
        }
        if next != 0 {
            self.check_page(next - 1)?;
            self.set(next - 1, D_PREV, prev)?;
        }
        self.set(page, D_NEXT, 0)?;
        self.set(page, D_PREV, 0)
    }

    fn check_page(&self, page: u32) -> Result<(), AllocError> {
        if page >= self.geo().pages {
            return Err(AllocError::Corrupt("page link"));
        }
        Ok(())
    }

    // ---- runs and blocks ----

    /// Whether a run/block of `kind` starts at `page` (first and last page
    /// agree). Returns its length.
    pub(crate) fn span_at(&self, page: u32, head_kind: u32) -> Result<Option<u32>, AllocError> {
        if page >= self.geo().pages || self.get(page, D_KIND)? != head_kind {
            return Ok(None);
        }
        let len = self.get(page, D_LEN)?;
        if len == 0 || u64::from(page) + u64::from(len) > u64::from(self.geo().pages) {
            return Ok(None);
        }
        if len == 1 {
            return Ok(Some(1));
        }
        let tail = page + len - 1;
        let tail_kind = if head_kind == K_LARGE {
            K_LARGE_TAIL
        } else {
            head_kind
        };
        let ok = self.get(tail, D_KIND)? == tail_kind
            && self.get(tail, D_LEN)? == len
            && self.get(tail, D_STAMP)? == self.get(page, D_STAMP)?;
        Ok(ok.then_some(len))
    }

    /// The free run ending at `page`, as (first page, length).
    fn free_run_ending_at(&self, page: u32) -> Result<Option<(u32, u32)>, AllocError> {
        if self.get(page, D_KIND)? != K_FREE {
            return Ok(None);
        }
        let len = self.get(page, D_LEN)?;
        if len == 0 || len > page + 1 {
            return Ok(None);
        }
        let head = page + 1 - len;
        Ok(self
            .span_at(head, K_FREE)?
            .filter(|&l| l == len)
            .map(|l| (head, l)))
    }

    fn write_span(&mut self, page: u32, len: u32, kind: u32, stamp: u32) -> Result<(), AllocError> {
        self.set(page, D_KIND, kind)?;
        self.set(page, D_LEN, len)?;
        self.set(page, D_STAMP, stamp)?;
        if len > 1 {
            let tail = page + len - 1;
            let tail_kind = if kind == K_LARGE { K_LARGE_TAIL } else { kind };
            self.set(tail, D_KIND, tail_kind)?;
            self.set(tail, D_LEN, len)?;
            self.set(tail, D_STAMP, stamp)?;
        }
        Ok(())
    }

    /// Takes `n` pages (first fit, from the end of a run). Returns the first.
    fn take_pages(&mut self, n: u32) -> Result<u32, AllocError> {
        let head_at = self.header(H_FREE_HEAD);
        let mut link = self.tx.get32(head_at)?;
        let mut steps = 0u32;
        while link != 0 {
            let run = link - 1;
            let len = self
                .span_at(run, K_FREE)?
                .ok_or(AllocError::Corrupt("free list entry"))?;
            if len >= n {
                let start = run + len - n;
                if len == n {
                    self.unlink(head_at, run)?;
                } else {
                    let stamp = self.new_stamp()?;
                    self.write_span(run, len - n, K_FREE, stamp)?;
                }
                let free_at = self.header(H_FREE_PAGES);
                let free = self.tx.get32(free_at)?;
                self.tx.set32(free_at, free.saturating_sub(n))?;
                return Ok(start);
            }
            link = self.get(run, D_NEXT)?;
            steps += 1;
            if steps > self.geo().pages {
                return Err(AllocError::Corrupt("free list cycle"));
            }
        }
        Err(AllocError::OutOfMemory(u64::from(n) * PAGE))
    }

    /// Returns pages `[start, start + n)` to the free list, coalescing.
    fn give_pages(&mut self, start: u32, n: u32) -> Result<(), AllocError> {
        let head_at = self.header(H_FREE_HEAD);
        let stamp = self.new_stamp()?;
        // Always rewrite the freed first page: a stale LARGE/SLAB kind must
        // never survive inside a free run.
        self.set(start, D_KIND, K_FREE)?;
        self.set(start, D_STAMP, stamp)?;
        let (mut first, mut end) = (start, start + n);
        if let Some(len) = self.span_at(end, K_FREE)? {
            self.unlink(head_at, end)?;
            end += len;
        }
        if start > 0 {
            if let Some((head, _)) = self.free_run_ending_at(start - 1)? {
                self.unlink(head_at, head)?;
                first = head;
            }
        }
        self.write_span(first, end - first, K_FREE, stamp)?;
        self.push(head_at, first)?;
        let free_at = self.header(H_FREE_PAGES);
        let free = self.tx.get32(free_at)?;
        self.tx.set32(free_at, free + n)
    }

    /// Allocates a large block of `n` pages for `owner`; returns its offset.
    pub(crate) fn alloc_large(&mut self, n: u32, owner: u32) -> Result<u64, AllocError> {
        let start = self.take_pages(n)?;
        let stamp = self.new_stamp()?;
        self.write_span(start, n, K_LARGE, stamp)?;
        self.set(start, D_OWNER, owner)?;
        self.set(start, D_FLAGS, 0)?;
        self.set(start, D_NEXT, 0)?;
        self.set(start, D_PREV, 0)?;
        Ok(self.page_offset(start))
    }

    /// Allocates one object of class `c` for the program; returns its offset.
    pub(crate) fn alloc_small(&mut self, c: usize) -> Result<u64, AllocError> {
        self.take_object(c, S_HELD)
    }

    /// Takes one free object of class `c` out of its slabs, leaving it in
    /// `state` (held or cached); returns its offset.
    pub(crate) fn take_object(&mut self, c: usize, state: u8) -> Result<u64, AllocError> {
        let head_at = self.header(H_CLASSES) + 4 * c as u64;
        let cap = per_page(c);
        let link = self.tx.get32(head_at)?;
        let page = if link == 0 {
            let page = self.take_pages(1)?;
            let stamp = self.new_stamp()?;
            self.set(page, D_KIND, K_SLAB)?;
            self.set(page, D_LEN, c as u32)?;
            self.set(page, D_STAMP, stamp)?;
            self.set(page, D_USED, 0)?;
            for w in 0..4 {
                let off = self.d(page, D_BITMAP + 8 * w);
                self.tx.set64(off, 0)?;
            }
            self.push(head_at, page)?;
            page
        } else {
            let page = link - 1;
            self.check_page(page)?;
            if self.get(page, D_KIND)? != K_SLAB || self.get(page, D_LEN)? != c as u32 {
                return Err(AllocError::Corrupt("class list entry"));
            }
            page
        };
        let mut index = None;
        for w in 0..4u32 {
            let off = self.d(page, D_BITMAP + 8 * u64::from(w));
            let bits = self.tx.get64(off)?;
            if bits != u64::MAX {
                let bit = (!bits).trailing_zeros();
                let i = w * 64 + bit;
                if i < cap {
                    self.tx.set64(off, bits | (1 << bit))?;
                    index = Some(i);
                }
                break;
            }
        }
        let index = index.ok_or(AllocError::Corrupt("full slab on class list"))?;
        if self.state(page, index)? != S_FREE {
            return Err(AllocError::Corrupt("free object not in free state"));
        }
        self.set_state(page, index, state)?;
        let used = self.get(page, D_USED)? + 1;
        self.set(page, D_USED, used)?;
        if used >= cap {
            self.unlink(head_at, page)?;
        }
        Ok(self.page_offset(page) + u64::from(index) * u64::from(CLASSES[c]))
    }

    /// Marks the large block at `off` as used for `what`.
    pub(crate) fn set_use(&mut self, off: u64, what: Use) -> Result<(), AllocError> {
        let (page, _) = self.locate(off)?;
        self.set(page, D_FLAGS, what.flags())
    }

    /// Frees the block at `off`, which must be used for `what`; returns its
    /// usable size. A program's free of a named object or a cache page is
    /// refused.
    pub(crate) fn free(&mut self, off: u64, what: Use) -> Result<u64, AllocError> {
        let (page, within) = self.locate(off)?;
        match self.get(page, D_KIND)? {
            K_SLAB if what == Use::Plain => self.put_object(page, within, off, S_HELD),
            K_LARGE if within == 0 => {
                let n = self
                    .span_at(page, K_LARGE)?
                    .ok_or(AllocError::NotAllocated(off))?;
                let flags = self.get(page, D_FLAGS)?;
                if flags & F_CACHE != 0 && what != Use::Cache {
                    return Err(AllocError::Foreign(off));
                }
                if flags & (F_NAMED | F_CACHE) != what.flags() {
                    return Err(match what {
                        Use::Named => AllocError::Corrupt("name points at an unnamed block"),
                        Use::Cache => AllocError::Corrupt("cache list entry is not a cache"),
                        Use::Plain => AllocError::Named(off),
                    });
                }
                self.set(page, D_OWNER, 0)?;
                self.set(page, D_FLAGS, 0)?;
                self.give_pages(page, n)?;
                Ok(u64::from(n) * PAGE)
            }
            _ => Err(AllocError::NotAllocated(off)),
        }
    }

    /// Page index and offset within the page for a heap offset.
    pub(crate) fn locate(&self, off: u64) -> Result<(u32, u64), AllocError> {
        let geo = self.geo();
        let end = geo.heap + u64::from(geo.pages) * PAGE;
        if off < geo.heap || off >= end {
            return Err(AllocError::Foreign(off));
        }
        let rel = off - geo.heap;
        Ok(((rel / PAGE) as u32, rel % PAGE))
    }

    /// Usable size of the allocated block at `off`.
    pub(crate) fn size_of(&self, off: u64) -> Result<u64, AllocError> {
        let (page, within) = self.locate(off)?;
        match self.get(page, D_KIND)? {
            K_SLAB => {
                let (c, index) = self.slab_index(page, within, off)?;
                if self.state(page, index)? != S_HELD {
                    return Err(AllocError::NotAllocated(off));
                }
                Ok(u64::from(CLASSES[c]))
            }
            K_LARGE if within == 0 => {
                if self.get(page, D_FLAGS)? & F_CACHE != 0 {
                    return Err(AllocError::Foreign(off));
                }
                self.span_at(page, K_LARGE)?
                    .map(|n| u64::from(n) * PAGE)
                    .ok_or(AllocError::NotAllocated(off))
            }
            _ => Err(AllocError::NotAllocated(off)),
        }
    }

    pub(crate) fn slab_index(
        &self,
        page: u32,
        within: u64,
        off: u64,
    ) -> Result<(usize, u32), AllocError> {
        let c = self.get(page, D_LEN)? as usize;
        let size = u64::from(*CLASSES.get(c).ok_or(AllocError::Corrupt("slab class"))?);
        if within % size != 0 || within / size >= u64::from(per_page(c)) {
            return Err(AllocError::Foreign(off));
        }
        Ok((c, (within / size) as u32))
    }

    /// Returns the slab object at `off` (page `page`, `within` bytes in),
    /// which must be in `state` (held by the program, or cached), to its
    /// slab; returns its size.
    pub(crate) fn put_object(
        &mut self,
        page: u32,
        within: u64,
        off: u64,
        state: u8,
    ) -> Result<u64, AllocError> {
        let (c, index) = self.slab_index(page, within, off)?;
        let word = self.d(page, D_BITMAP + 8 * u64::from(index / 64));
        let bits = self.tx.get64(word)?;
        let bit = 1u64 << (index % 64);
        if self.state(page, index)? != state {
            return Err(AllocError::NotAllocated(off));
        }
        if bits & bit == 0 {
            return Err(AllocError::Corrupt("allocated object not in the bitmap"));
        }
        self.set_state(page, index, S_FREE)?;
        self.tx.set64(word, bits & !bit)?;
        let cap = per_page(c);
        let used = self.get(page, D_USED)?;
        if used == 0 || used > cap {
            return Err(AllocError::Corrupt("slab count"));
        }
        let head_at = self.header(H_CLASSES) + 4 * c as u64;
        if used == cap {
            self.push(head_at, page)?;
        }
        self.set(page, D_USED, used - 1)?;
        // Give an empty slab back unless it is the class's only partial one
        // (keeps alloc/free pairs from formatting a page each time).
        let only = self.tx.get32(head_at)? == page + 1 && self.get(page, D_NEXT)? == 0;
        if used == 1 && !only {
            self.unlink(head_at, page)?;
            self.give_pages(page, 1)?;
        }
        Ok(u64::from(CLASSES[c]))
    }
}
