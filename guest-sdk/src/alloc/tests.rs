// SPDX-License-Identifier: Apache-2.0
//! Allocator unit tests over in-process regions.

use super::*;
use crate::layout::{LayoutError, SDK_MAGIC};
use crate::transport::local::LocalRegion;
use crate::OpenError;
use std::sync::Arc;

pub(super) fn region(size: u64) -> Arc<LocalRegion> {
    let r = LocalRegion::new(size, 8).unwrap();
    for id in 0..4 {
        r.join(id).unwrap();
    }
    r
}

pub(super) fn open(r: &Arc<LocalRegion>, id: u16) -> Shoal {
    Shoal::open_local(Arc::clone(r), id).unwrap()
}

pub(super) fn consistent(s: &Shoal, live: &[u64]) -> HeapReport {
    let report = s.check_heap(live).unwrap();
    assert!(report.is_consistent(), "{:#?}", report.errors);
    report
}

#[test]
fn second_peer_sees_the_first_peers_layout() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    let b = open(&r, 1);
    assert_eq!(a.geometry(), b.geometry());
    let report = consistent(&b, &[]);
    assert_eq!(report.free_pages, report.pages);
}

#[test]
fn foreign_magic_is_refused() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    let magic = a
        .get(ShmPtr::<std::sync::atomic::AtomicU64>::from_offset(
            a.geometry().header,
        ))
        .unwrap();
    magic.store(0x1234, Ordering::Release);
    let err = Shoal::open_local(Arc::clone(&r), 1).unwrap_err();
    assert!(
        matches!(err, OpenError::Layout(LayoutError::BadMagic(0x1234))),
        "{err:?}"
    );
    magic.store(SDK_MAGIC, Ordering::Release);
    assert!(Shoal::open_local(Arc::clone(&r), 1).is_ok());
}

#[test]
fn wrong_version_is_refused() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    let version = a
        .get(ShmPtr::<std::sync::atomic::AtomicU32>::from_offset(
            a.geometry().header + 8,
        ))
        .unwrap();
    version.store(99, Ordering::Relaxed);
    let err = Shoal::open_local(Arc::clone(&r), 1).unwrap_err();
    assert!(
        matches!(err, OpenError::Layout(LayoutError::Version(99))),
        "{err:?}"
    );
}

#[test]
fn corrupt_geometry_is_refused() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    let pages = a
        .get(ShmPtr::<std::sync::atomic::AtomicU32>::from_offset(
            a.geometry().header + 20,
        ))
        .unwrap();
    pages.store(1_000_000, Ordering::Relaxed);
    let err = Shoal::open_local(Arc::clone(&r), 1).unwrap_err();
    assert!(
        matches!(err, OpenError::Layout(LayoutError::Corrupt(_))),
        "{err:?}"
    );
}

#[test]
fn too_small_region_is_refused() {
    let r = LocalRegion::new(16384, 8).unwrap();
    r.join(0).unwrap();
    let err = Shoal::open_local(r, 0).unwrap_err();
    assert!(
        matches!(err, OpenError::Layout(LayoutError::TooSmall { .. })),
        "{err:?}"
    );
}

#[test]
fn small_and_large_blocks_are_distinct_and_aligned() {
    let r = region(1 << 20);
    let s = open(&r, 0);
    let mut live = Vec::new();
    for size in [1u64, 16, 17, 100, 2048, 2049, 4096, 10_000, 40_000] {
        let p = s.alloc(size).unwrap();
        assert_eq!(p.offset() % 16, 0);
        if size > MAX_SMALL {
            assert_eq!(p.offset() % PAGE, 0);
        }
        assert!(s.usable_size(p).unwrap() >= size);
        live.push(p.offset());
    }
    let report = consistent(&s, &live);
    assert!(report.leaks.is_empty());
    assert_eq!(report.large_blocks, 4);
    for off in &live {
        s.free(ShmPtr::<u8>::from_offset(*off)).unwrap();
    }
    let report = consistent(&s, &[]);
    assert_eq!(report.objects, 0);
    assert_eq!(report.large_blocks, 0);
}

#[test]
fn freed_pages_coalesce_back_into_one_run() {
    let r = region(1 << 20);
    let s = open(&r, 0);
    let blocks: Vec<_> = (0..6).map(|_| s.alloc(3 * PAGE).unwrap()).collect();
    for i in [1, 3, 5, 0, 4, 2] {
        s.free(blocks[i]).unwrap();
    }
    let report = consistent(&s, &[]);
    assert_eq!(report.free_runs, 1);
    assert_eq!(report.free_pages, report.pages);
}

#[test]
fn double_free_is_an_error() {
    let r = region(1 << 20);
    let s = open(&r, 0);
    let small = s.alloc(40).unwrap();
    let other = s.alloc(40).unwrap();
    let large = s.alloc(3 * PAGE).unwrap();
    s.free(small).unwrap();
    s.free(large).unwrap();
    assert!(matches!(s.free(small), Err(AllocError::NotAllocated(_))));
    assert!(matches!(s.free(large), Err(AllocError::NotAllocated(_))));
    consistent(&s, &[other.offset()]);
}

#[test]
fn foreign_and_interior_offsets_are_errors() {
    let r = region(1 << 20);
    let s = open(&r, 0);
    let small = s.alloc(64).unwrap();
    let large = s.alloc(2 * PAGE).unwrap();
    for bad in [0, 8, s.geometry().header, u64::MAX, 1 << 20] {
        assert!(matches!(
            s.free(ShmPtr::<u8>::from_offset(bad)),
            Err(AllocError::Foreign(_))
        ));
    }
    assert!(matches!(
        s.free(ShmPtr::<u8>::from_offset(small.offset() + 8)),
        Err(AllocError::Foreign(_))
    ));
    assert!(s
        .free(ShmPtr::<u8>::from_offset(large.offset() + PAGE))
        .is_err());
    assert!(s
        .free(ShmPtr::<u8>::from_offset(large.offset() + 16))
        .is_err());
    consistent(&s, &[small.offset(), large.offset()]);
}

#[test]
fn named_objects_are_shared_between_peers() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    let b = open(&r, 1);
    let (pa, created_a) = a.find_or_create("matrix", 5000).unwrap();
    let (pb, created_b) = b.find_or_create("matrix", 5000).unwrap();
    assert!(created_a && !created_b);
    assert_eq!(pa, pb);
    assert_eq!(b.find("matrix").unwrap(), Some((pa, 5000)));
    assert!(matches!(
        b.find_or_create("matrix", 6000),
        Err(AllocError::SizeMismatch { .. })
    ));
    assert!(matches!(b.free(pa), Err(AllocError::Named(_))));
    let report = consistent(&a, &[]);
    assert_eq!(report.named, 1);
    assert!(report.leaks.is_empty());
    assert!(b.remove("matrix").unwrap());
    assert!(!b.remove("matrix").unwrap());
    assert_eq!(a.find("matrix").unwrap(), None);
}

#[test]
fn named_objects_start_zeroed() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    let p = a.alloc(3000).unwrap();
    let raw = a.raw(p, 3000).unwrap();
    // SAFETY: the block is ours and 3000 bytes long.
    unsafe { std::ptr::write_bytes(raw, 0xab, 3000) };
    a.free(p).unwrap();
    let (q, _) = a.find_or_create("zeroed", 3000).unwrap();
    let bytes = a
        .slice(q.cast::<std::sync::atomic::AtomicU8>(), 3000)
        .unwrap();
    assert!(bytes.iter().all(|b| b.load(Ordering::Relaxed) == 0));
}

#[test]
fn bad_names_and_sizes_are_errors() {
    let r = region(1 << 20);
    let a = open(&r, 0);
    assert!(matches!(a.find_or_create("", 8), Err(AllocError::BadName)));
    assert!(matches!(a.alloc(0), Err(AllocError::BadSize(0))));
    assert!(matches!(a.alloc(1 << 30), Err(AllocError::BadSize(_))));
    let _small = a.alloc(8).unwrap();
    let all = u64::from(a.geometry().pages) * PAGE;
    assert!(matches!(a.alloc(all), Err(AllocError::OutOfMemory(_))));
    consistent(&a, &[]);
}

#[test]
fn dead_holder_transaction_is_rolled_back() {
    let r = region(1 << 20);
    let a = open(&r, 1);
    let b = open(&r, 2);
    let keep = a.alloc(100).unwrap();
    // Peer 1 takes the heap lock and dies half-way through an allocation.
    let cx = &*a.inner;
    let how = mutex::lock(cx, cx.geo.field(H_LOCK), None).unwrap();
    assert_eq!(how, Locked::Acquired);
    let mut tx = Tx::begin(&cx.mem, &cx.geo);
    Heap { tx: &mut tx }.alloc_large(5, cx.tag).unwrap();
    Heap { tx: &mut tx }.alloc_small(3).unwrap();
    let _abandoned = tx;
    r.kill(1).unwrap();
    let report = b.check_heap(&[keep.offset()]).unwrap();
    assert!(report.is_consistent(), "{:#?}", report.errors);
    assert_eq!(report.large_blocks, 0);
    assert_eq!(report.objects, 1);
    assert_eq!(report.recoveries, 1);
}

#[test]
fn random_operation_sequences_keep_the_heap_consistent() {
    let r = region(1 << 20);
    let s = open(&r, 0);
    let mut live: Vec<u64> = Vec::new();
    let mut x = 0x1234_5678_9abc_def0u64;
    for step in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if live.is_empty() || x % 3 != 0 {
            let size = match x % 10 {
                0 => 3000 + (x >> 20) % 20_000,
                _ => 1 + (x >> 20) % 2048,
            };
            if let Ok(p) = s.alloc(size) {
                live.push(p.offset());
            }
        } else {
            let i = ((x >> 8) % live.len() as u64) as usize;
            s.free(ShmPtr::<u8>::from_offset(live.swap_remove(i)))
                .unwrap();
        }
        if step % 500 == 0 {
            let report = consistent(&s, &live);
            assert!(report.leaks.is_empty());
        }
    }
    for off in live.drain(..) {
        s.free(ShmPtr::<u8>::from_offset(off)).unwrap();
    }
    let report = consistent(&s, &[]);
    assert_eq!(
        report.free_pages + report.slab_pages + report.caches,
        report.pages
    );
}

#[test]
fn large_blocks_of_dead_peers_are_reported_and_reclaimed() {
    let r = region(1 << 20);
    let a = open(&r, 1);
    let b = open(&r, 2);
    let mine = b.alloc(3 * PAGE).unwrap();
    let orphan = a.alloc(2 * PAGE).unwrap();
    let (named, _) = a.find_or_create("kept", 5000).unwrap();
    r.kill(1).unwrap();
    let report = b.check_heap(&[mine.offset()]).unwrap();
    assert_eq!(report.dead_owned, vec![orphan.offset()]);
    assert_eq!(b.reclaim_dead().unwrap(), 1);
    let report = consistent(&b, &[mine.offset()]);
    assert!(report.dead_owned.is_empty() && report.leaks.is_empty());
    assert_eq!(b.find("kept").unwrap().map(|(p, _)| p), Some(named));
}
