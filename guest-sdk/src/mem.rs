// SPDX-License-Identifier: Apache-2.0
//! Bounds-checked atomic access to the shared region by offset.
//!
//! Everything in the region may be written by other peers (or a misbehaving
//! guest) at any time, so the SDK never forms a plain Rust reference to region
//! bytes: metadata is read and written through atomics obtained here, and
//! every offset is checked against the mapping first.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};
use thiserror::Error;

/// Access errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MemError {
    /// The offset range is outside the region.
    #[error("Offset {offset:#x}+{len} is outside the region")]
    Bounds {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// The offset is not aligned for the access.
    #[error("Offset {0:#x} is misaligned")]
    Misaligned(u64),
}

/// A raw view of the whole mapped region. Copying it does not extend the
/// mapping's lifetime: the owner ([`crate::Shoal`]) keeps the mapping alive
/// for as long as any `Mem` derived from it is used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mem {
    base: *mut u8,
    len: u64,
}

// SAFETY: Mem is a pointer/length pair into shared memory that is only ever
// accessed through atomics or explicit raw copies; that is thread-safe.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    /// # Safety
    /// `base` must point to `len` bytes mapped read-write, 8-byte aligned,
    /// that stay mapped while this `Mem` (or any copy) is used.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Self {
        Self {
            base,
            len: len as u64,
        }
    }

    #[cfg(test)]
    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Checks that `[offset, offset + len)` lies inside the region.
    pub(crate) fn check(&self, offset: u64, len: u64) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::Bounds { offset, len }),
        }
    }

    /// Pointer to `offset` after checking `len` bytes and `align`.
    pub(crate) fn ptr(&self, offset: u64, len: u64, align: u64) -> Result<*mut u8, MemError> {
        self.check(offset, len)?;
        if align > 1 && offset % align != 0 {
            return Err(MemError::Misaligned(offset));
        }
        // SAFETY: offset + len <= self.len (checked), so the result stays
        // inside the mapping.
        Ok(unsafe { self.base.add(offset as usize) })
    }

    /// The byte at `offset`, as an atomic.
    pub(crate) fn u8(&self, offset: u64) -> Result<&AtomicU8, MemError> {
        let ptr = self.ptr(offset, 1, 1)?;
        // SAFETY: in bounds (checked); atomics accept any bit pattern and
        // concurrent modification; the mapping outlives self.
        Ok(unsafe { &*(ptr as *const AtomicU8) })
    }

    /// The 32-bit atomic at `offset`.
    pub(crate) fn u32(&self, offset: u64) -> Result<&AtomicU32, MemError> {
        let ptr = self.ptr(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked); atomics accept any bit
        // pattern and concurrent modification; the mapping outlives self.
        Ok(unsafe { &*(ptr as *const AtomicU32) })
    }

    /// The 64-bit atomic at `offset`.
    pub(crate) fn u64(&self, offset: u64) -> Result<&AtomicU64, MemError> {
        let ptr = self.ptr(offset, 8, 8)?;
        // SAFETY: in bounds and aligned (checked); atomics accept any bit
        // pattern and concurrent modification; the mapping outlives self.
        Ok(unsafe { &*(ptr as *const AtomicU64) })
    }

    /// Zeroes `len` bytes at `offset`.
    pub(crate) fn zero(&self, offset: u64, len: u64) -> Result<(), MemError> {
        let ptr = self.ptr(offset, len, 1)?;
        // SAFETY: the range is inside the mapping (checked); no Rust
        // reference to these bytes exists inside the SDK.
        unsafe { std::ptr::write_bytes(ptr, 0, len as usize) };
        Ok(())
    }

    /// Region offset of `ptr`, if it points inside the region.
    pub(crate) fn offset_of(&self, ptr: *const u8) -> Option<u64> {
        let addr = ptr as usize;
        let base = self.base as usize;
        let off = addr.checked_sub(base)? as u64;
        (off < self.len).then_some(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(buf: &mut [u64]) -> Mem {
        // SAFETY: the buffer is 8-aligned and outlives the returned Mem in
        // each test.
        unsafe { Mem::new(buf.as_mut_ptr() as *mut u8, buf.len() * 8) }
    }

    #[test]
    fn access_past_the_end_is_rejected() {
        let mut buf = vec![0u64; 4];
        let m = mem(&mut buf);
        assert!(m.u64(24).is_ok());
        assert_eq!(
            m.u64(32).unwrap_err(),
            MemError::Bounds { offset: 32, len: 8 }
        );
        assert!(m.u32(u64::MAX - 1).is_err());
    }

    #[test]
    fn misaligned_access_is_rejected() {
        let mut buf = vec![0u64; 4];
        let m = mem(&mut buf);
        assert_eq!(m.u32(2).unwrap_err(), MemError::Misaligned(2));
        assert_eq!(m.u64(4).unwrap_err(), MemError::Misaligned(4));
    }

    #[test]
    fn offset_of_maps_pointers_back() {
        let mut buf = vec![0u64; 4];
        let m = mem(&mut buf);
        // SAFETY: 8 is inside the 32-byte buffer.
        let p = unsafe { m.base().add(8) };
        assert_eq!(m.offset_of(p), Some(8));
        assert_eq!(m.offset_of(std::ptr::null()), None);
    }
}
