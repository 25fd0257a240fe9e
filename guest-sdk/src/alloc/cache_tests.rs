// SPDX-License-Identifier: Apache-2.0
//! Thread-cache tests over in-process regions.

use super::cache::CAP;
use super::tests::open;
use super::*;
use crate::transport::local::LocalRegion;
use std::sync::Arc;

fn region() -> Arc<LocalRegion> {
    super::tests::region(1 << 20)
}

/// Consistent and without leaks.
fn consistent(s: &Shoal, live: &[u64]) -> HeapReport {
    let report = super::tests::consistent(s, live);
    assert!(report.leaks.is_empty(), "leaked {:?}", report.leaks);
    report
}

#[test]
fn a_freed_small_block_is_cached_and_handed_out_again() {
    let r = region();
    let s = open(&r, 0);
    let p = s.alloc(40).unwrap();
    s.free(p).unwrap();
    let report = consistent(&s, &[]);
    assert_eq!(report.caches, 1);
    assert!(report.cached >= 1);
    assert_eq!(report.objects, 0);
    assert_eq!(
        s.alloc(40).unwrap(),
        p,
        "the cache hands out its last block"
    );
    consistent(&s, &[p.offset()]);
}

#[test]
fn double_free_of_a_cached_block_is_an_error() {
    let r = region();
    let s = open(&r, 0);
    let p = s.alloc(100).unwrap();
    s.free(p).unwrap();
    assert!(matches!(s.free(p), Err(AllocError::NotAllocated(_))));
    assert!(matches!(s.usable_size(p), Err(AllocError::NotAllocated(_))));
    // Also from another peer, whose own cache is empty.
    let t = open(&r, 1);
    assert!(matches!(t.free(p), Err(AllocError::NotAllocated(_))));
    consistent(&s, &[]);
}

#[test]
fn a_cache_page_is_not_the_programs_to_free() {
    let r = region();
    let s = open(&r, 0);
    let p = s.alloc(16).unwrap();
    let cache = thread::page_for(&s.inner).unwrap();
    assert!(matches!(
        s.free(ShmPtr::<u8>::from_offset(cache)),
        Err(AllocError::Foreign(_))
    ));
    assert!(s.usable_size(ShmPtr::<u8>::from_offset(cache)).is_err());
    consistent(&s, &[p.offset()]);
}

#[test]
fn a_full_class_is_flushed_back_to_its_slabs() {
    let r = region();
    let s = open(&r, 0);
    let n = 3 * CAP[0] as usize;
    let blocks: Vec<_> = (0..n).map(|_| s.alloc(16).unwrap()).collect();
    for p in &blocks {
        s.free(*p).unwrap();
    }
    let report = consistent(&s, &[]);
    assert!(
        report.cached <= u64::from(CAP[0]),
        "{} cached",
        report.cached
    );
    assert_eq!(report.objects, 0);
}

#[test]
fn blocks_freed_by_another_peer_go_to_its_cache() {
    let r = region();
    let a = open(&r, 0);
    let b = open(&r, 1);
    let blocks: Vec<_> = (0..10).map(|_| a.alloc(200).unwrap()).collect();
    for p in &blocks {
        b.free(*p).unwrap();
    }
    let report = consistent(&a, &[]);
    assert_eq!(report.caches, 2);
    // b hands them out again, most recently freed first.
    assert_eq!(b.alloc(200).unwrap(), blocks[9]);
}

#[test]
fn a_thread_that_ends_gives_its_cache_back() {
    let r = region();
    let s = open(&r, 0);
    let s2 = s.clone();
    std::thread::spawn(move || {
        let held: Vec<_> = (0..50).map(|i| s2.alloc(16 + i * 8).unwrap()).collect();
        for p in held {
            s2.free(p).unwrap();
        }
    })
    .join()
    .unwrap();
    let report = consistent(&s, &[]);
    assert_eq!(report.caches, 0);
    assert_eq!(report.cached, 0);
    assert_eq!(report.free_pages, report.pages - report.slab_pages);
}

#[test]
fn dropping_a_handle_gives_back_the_caches_of_its_threads() {
    let r = region();
    let a = open(&r, 0);
    let b = open(&r, 1);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let b2 = b.clone();
    let worker = std::thread::spawn(move || {
        let p = b2.alloc(64).unwrap();
        b2.free(p).unwrap();
        drop(b2);
        done_tx.send(()).unwrap();
        let _ = exit_rx.recv(); // stays alive while `b` goes away
    });
    done_rx.recv().unwrap();
    assert_eq!(consistent(&a, &[]).caches, 1);
    drop(b);
    assert_eq!(consistent(&a, &[]).caches, 0);
    exit_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(consistent(&a, &[]).caches, 0);
}

#[test]
fn a_dead_peers_cache_is_reported_then_reclaimed() {
    let r = region();
    let a = open(&r, 0);
    let b = open(&r, 1);
    let blocks: Vec<_> = (0..20).map(|_| b.alloc(48).unwrap()).collect();
    for p in &blocks[..15] {
        b.free(*p).unwrap();
    }
    let kept: Vec<u64> = blocks[15..].iter().map(|p| p.offset()).collect();
    r.kill(1).unwrap();
    drop(b); // its peer is dead: nothing is given back by the handle
    let report = a.check_heap(&kept).unwrap();
    assert!(report.is_consistent(), "{:#?}", report.errors);
    assert_eq!((report.caches, report.dead_caches), (1, 1));
    assert!(report.cached >= 15);
    a.reclaim_dead().unwrap();
    let report = consistent(&a, &kept);
    assert_eq!((report.caches, report.cached), (0, 0));
}

#[test]
fn running_out_of_memory_reclaims_dead_peers_caches_first() {
    let r = region();
    let a = open(&r, 0);
    let b = open(&r, 1);
    let p = b.alloc(2048).unwrap();
    b.free(p).unwrap();
    r.kill(1).unwrap();
    drop(b);
    // Fill the heap with pages: the dead peer's cache page and its slab
    // come back when nothing else is left.
    let mut pages = Vec::new();
    while let Ok(p) = a.alloc(PAGE) {
        pages.push(p.offset());
    }
    let live: Vec<u64> = pages.clone();
    let report = consistent(&a, &live);
    assert_eq!((report.caches, report.dead_caches), (0, 0));
    assert_eq!(report.free_pages, 0);
    assert_eq!(report.large_blocks as usize, pages.len());
}

#[test]
fn opening_the_region_reclaims_dead_peers_caches() {
    let r = region();
    let a = open(&r, 0);
    let b = open(&r, 1);
    let p = b.alloc(16).unwrap();
    b.free(p).unwrap();
    r.kill(1).unwrap();
    drop(b);
    r.join(1).unwrap();
    let _b = open(&r, 1);
    let report = consistent(&a, &[]);
    assert_eq!(report.dead_caches, 0);
}

#[test]
fn many_threads_allocate_and_free_concurrently_without_overlap() {
    let r = region();
    let s = open(&r, 0);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut held: Vec<(ShmPtr<u8>, u64)> = Vec::new();
                for i in 0..20_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if held.len() < 40 && x % 3 != 0 {
                        let p = s.alloc(8 + x % 600).unwrap();
                        let word = s.get(p.cast::<std::sync::atomic::AtomicU64>()).unwrap();
                        let tag = t << 32 | i;
                        word.store(tag, Ordering::Relaxed);
                        held.push((p, tag));
                    } else if let Some((p, tag)) = held.pop() {
                        let word = s.get(p.cast::<std::sync::atomic::AtomicU64>()).unwrap();
                        assert_eq!(word.load(Ordering::Relaxed), tag, "{p:?} handed out twice");
                        s.free(p).unwrap();
                    }
                }
                held.into_iter()
                    .map(|(p, _)| p.offset())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let live: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let report = consistent(&s, &live);
    assert_eq!(report.objects as usize, live.len());
    assert_eq!(report.caches, 0, "every thread ended");
}
