// SPDX-License-Identifier: Apache-2.0
//! Offsets into the region, typed: [`ShmPtr<T>`].
//!
//! The region is mapped at a different address in every peer, so anything
//! stored in it refers to other data by region offset. A `ShmPtr<T>` is such
//! an offset (8 bytes, `#[repr(transparent)]`, the C `shoal_off_t`); turn it
//! into a reference with [`crate::Shoal::get`] (bounds- and alignment-checked)
//! for types that are safe to share, or into a raw pointer with
//! [`crate::Shoal::raw`].

use crate::mem::MemError;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};
use thiserror::Error;

/// Errors from turning offsets into references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AccessError {
    /// The offset range is outside the region or misaligned.
    #[error("Bad region access")]
    Mem(#[source] MemError),
    /// The object size overflows.
    #[error("Object size overflows")]
    Overflow,
}

/// A typed offset into the region. Offset 0 is the null pointer (it lies in
/// the server's header, never in the heap).
#[repr(transparent)]
pub struct ShmPtr<T> {
    off: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> ShmPtr<T> {
    /// The null offset.
    pub const fn null() -> Self {
        Self::from_offset(0)
    }

    /// Wraps a raw region offset.
    pub const fn from_offset(off: u64) -> Self {
        Self {
            off,
            _type: PhantomData,
        }
    }

    /// The raw region offset.
    pub const fn offset(self) -> u64 {
        self.off
    }

    /// Whether this is the null offset.
    pub const fn is_null(self) -> bool {
        self.off == 0
    }

    /// Reinterprets the offset as pointing to a `U`.
    pub const fn cast<U>(self) -> ShmPtr<U> {
        ShmPtr::from_offset(self.off)
    }

    /// The offset of element `n` of an array starting here (None on overflow).
    pub fn index(self, n: u64) -> Option<Self> {
        let bytes = n.checked_mul(std::mem::size_of::<T>() as u64)?;
        Some(Self::from_offset(self.off.checked_add(bytes)?))
    }
}

impl<T> Clone for ShmPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ShmPtr<T> {}

impl<T> PartialEq for ShmPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.off == other.off
    }
}

impl<T> Eq for ShmPtr<T> {}

impl<T> fmt::Debug for ShmPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShmPtr({:#x})", self.off)
    }
}

/// Types that may be viewed through a shared reference into the region.
///
/// # Safety
/// Every bit pattern must be a valid value (other peers may write anything),
/// and all mutation through `&Self` must be atomic (other peers and threads
/// access the same bytes concurrently). Atomics and the SDK's
/// synchronisation objects qualify; plain integers do not (use their atomic
/// forms, or raw pointers and your own synchronisation).
pub unsafe trait Shared {}

// SAFETY: atomics accept every bit pattern and mutate atomically.
unsafe impl Shared for AtomicU8 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU16 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU64 {}
// SAFETY: as above.
unsafe impl Shared for AtomicUsize {}
// SAFETY: as above.
unsafe impl Shared for AtomicI32 {}
// SAFETY: as above.
unsafe impl Shared for AtomicI64 {}
// SAFETY: an array of shareable values is shareable.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_scales_by_element_size() {
        let p: ShmPtr<u64> = ShmPtr::from_offset(0x1000);
        assert_eq!(p.index(3).unwrap().offset(), 0x1018);
        assert!(p.index(u64::MAX).is_none());
    }

    #[test]
    fn null_is_offset_zero() {
        assert!(ShmPtr::<u8>::null().is_null());
        assert!(!ShmPtr::<u8>::from_offset(8).is_null());
    }

    #[test]
    fn shm_ptr_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<ShmPtr<[u8; 100]>>(), 8);
    }
}
