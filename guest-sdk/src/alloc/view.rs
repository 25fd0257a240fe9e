// SPDX-License-Identifier: Apache-2.0
//! Views of heap metadata for the lock-free cache paths: each is checked
//! once against the mapping when made, then reached with index clamping
//! instead of a bounds check per access. The unsafe code of those paths is
//! here and nowhere else.

use crate::layout::{Geometry, DESC_SIZE, PAGE, STATE_BYTES};
use crate::mem::{Mem, MemError};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// The page descriptors and object states.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tables<'m> {
    desc: *mut u8,
    states: *mut u8,
    heap: u64,
    pages: u32,
    _mem: PhantomData<&'m Mem>,
}

impl<'m> Tables<'m> {
    #[inline(always)]
    pub(crate) fn new(mem: &'m Mem, geo: &Geometry) -> Result<Self, MemError> {
        let pages = u64::from(geo.pages);
        if pages == 0 {
            return Err(MemError::Bounds {
                offset: geo.desc,
                len: 0,
            });
        }
        Ok(Self {
            desc: mem.ptr(geo.desc, pages * DESC_SIZE, 8)?,
            states: mem.ptr(geo.states, pages * STATE_BYTES, 8)?,
            heap: geo.heap,
            pages: geo.pages,
            _mem: PhantomData,
        })
    }

    /// Heap page and byte within it of region offset `off`, if in the heap.
    #[inline(always)]
    pub(crate) fn locate(&self, off: u64) -> Option<(u32, u32)> {
        let rel = off.checked_sub(self.heap)?;
        let page = rel / PAGE;
        (page < u64::from(self.pages)).then_some((page as u32, (rel % PAGE) as u32))
    }

    /// Descriptor word `field` (a `D_*` offset) of heap page `page`.
    #[inline(always)]
    pub(crate) fn desc(&self, page: u32, field: u64) -> &'m AtomicU32 {
        let page = u64::from(page.min(self.pages - 1));
        let field = field.min(DESC_SIZE - 4) & !3;
        // SAFETY: `new` checked that pages × DESC_SIZE bytes at `desc` are
        // mapped and 8-aligned for 'm; page < pages and field + 4 <=
        // DESC_SIZE, 4-aligned; atomics accept any bit pattern.
        unsafe { &*(self.desc.add((page * DESC_SIZE + field) as usize) as *const AtomicU32) }
    }

    /// State byte of object `index` of heap page `page`.
    #[inline(always)]
    pub(crate) fn state(&self, page: u32, index: u32) -> &'m AtomicU8 {
        let page = u64::from(page.min(self.pages - 1));
        let index = u64::from(index) % STATE_BYTES;
        // SAFETY: `new` checked that pages × STATE_BYTES bytes at `states`
        // are mapped for 'm; page < pages and index < STATE_BYTES.
        unsafe { &*(self.states.add((page * STATE_BYTES + index) as usize) as *const AtomicU8) }
    }
}

/// One page of the region (a thread cache).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageView<'m> {
    base: *mut u8,
    _mem: PhantomData<&'m Mem>,
}

impl<'m> PageView<'m> {
    #[inline(always)]
    pub(crate) fn new(mem: &'m Mem, off: u64) -> Result<Self, MemError> {
        Ok(Self {
            base: mem.ptr(off, PAGE, 8)?,
            _mem: PhantomData,
        })
    }

    /// The 32-bit word at byte `rel` (rounded down to a word of the page).
    #[inline(always)]
    pub(crate) fn u32(&self, rel: u64) -> &'m AtomicU32 {
        let rel = (rel % PAGE) & !3;
        // SAFETY: `base` points at PAGE mapped, 8-aligned bytes that
        // outlive 'm (checked in `new`); rel + 4 <= PAGE, 4-aligned.
        unsafe { &*(self.base.add(rel as usize) as *const AtomicU32) }
    }

    /// The 64-bit word at byte `rel` (rounded down to a word of the page).
    #[inline(always)]
    pub(crate) fn u64(&self, rel: u64) -> &'m AtomicU64 {
        let rel = (rel % PAGE) & !7;
        // SAFETY: as in `u32`, for an 8-aligned word.
        unsafe { &*(self.base.add(rel as usize) as *const AtomicU64) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn out_of_range_indices_stay_inside_the_tables() {
        let mut buf = vec![0u64; 4 * 4096];
        // SAFETY: the buffer is 8-aligned, 128 KiB, and outlives `mem`.
        let mem = unsafe { Mem::new(buf.as_mut_ptr() as *mut u8, buf.len() * 8) };
        let geo = Geometry::compute(buf.len() as u64 * 8, 4096, 4).unwrap();
        let t = Tables::new(&mem, &geo).unwrap();
        t.desc(u32::MAX, u64::MAX).store(7, Ordering::Relaxed);
        t.state(u32::MAX, u32::MAX).store(9, Ordering::Relaxed);
        let last = geo.pages - 1;
        assert_eq!(t.desc(last, DESC_SIZE - 4).load(Ordering::Relaxed), 7);
        assert_eq!(t.state(last, 255).load(Ordering::Relaxed), 9);
        assert_eq!(t.locate(geo.heap + u64::from(geo.pages) * PAGE), None);
        assert_eq!(t.locate(geo.heap + PAGE + 16), Some((1, 16)));
        let p = PageView::new(&mem, geo.heap).unwrap();
        p.u64(PAGE + 3).store(5, Ordering::Relaxed);
        assert_eq!(p.u64(0).load(Ordering::Relaxed), 5);
    }
}
