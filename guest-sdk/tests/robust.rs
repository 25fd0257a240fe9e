// SPDX-License-Identifier: Apache-2.0
//! Robustness: peers killed with SIGKILL while holding a mutex or in the
//! middle of allocator operations; bad inputs through a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{child_open, role, wait_until, TestServer};
use shoal::{AllocError, LayoutError, Mutex, OpenError, ShmPtr, Shoal};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const TEST: &str = "child";

/// Entry point of child processes (does nothing in the parent run).
#[test]
fn child() {
    let Some((role, _arg)) = role() else { return };
    let s = child_open();
    match role.as_str() {
        "holder" => {
            let (base, _) = s.find_or_create("robust", 64).unwrap();
            let guard = s.get(base.cast::<Mutex>()).unwrap().lock(&s).unwrap();
            s.get(ShmPtr::<AtomicU64>::from_offset(base.offset() + 8))
                .unwrap()
                .store(u64::from(s.id()) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(60));
            drop(guard);
        }
        "allocator" => {
            let (flag, _) = s.find_or_create("started", 64).unwrap();
            let workers: Vec<_> = (0..3)
                .map(|t| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let mut x = 0x2545_f491_4f6c_dd1du64 + t;
                        let mut live = Vec::new();
                        loop {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            if live.len() < 50 && x % 2 == 0 {
                                let size = if x % 8 == 0 { 5000 } else { 16 + x % 1000 };
                                if let Ok(p) = s.alloc(size) {
                                    live.push(p);
                                }
                            } else if let Some(p) = live.pop() {
                                s.free(p).unwrap();
                            }
                            if x % 64 == 0 {
                                let name = format!("n{}", x % 7);
                                let _ = s.find_or_create(&name, 100 + x % 3000);
                                let _ = s.remove(&name);
                            }
                        }
                    })
                })
                .collect();
            s.get(flag.cast::<AtomicU64>())
                .unwrap()
                .store(1, Ordering::SeqCst);
            for w in workers {
                let _ = w.join();
            }
        }
        "cached" => cached_role(&s),
        other => panic!("unknown role {other}"),
    }
}

const CACHED_THREADS: u64 = 3;
const SLOTS: u64 = 64;

/// Small allocations and frees only (all through the thread caches); each
/// thread records the blocks it holds in the shared "records" array, the
/// record cleared before the free and written after the allocation.
fn cached_role(s: &Shoal) {
    let (records, _) = s
        .find_or_create("records", 8 * CACHED_THREADS * SLOTS)
        .unwrap();
    let (flag, _) = s.find_or_create("started", 64).unwrap();
    let workers: Vec<_> = (0..CACHED_THREADS)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let slots = s
                    .slice(
                        ShmPtr::<AtomicU64>::from_offset(records.offset() + 8 * t * SLOTS),
                        SLOTS as usize,
                    )
                    .unwrap();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = &slots[(x % SLOTS) as usize];
                    match slot.load(Ordering::SeqCst) {
                        0 => {
                            let p = s.alloc(1 + (x >> 8) % 2048).unwrap();
                            slot.store(p.offset(), Ordering::SeqCst);
                        }
                        held => {
                            slot.store(0, Ordering::SeqCst);
                            s.free(ShmPtr::<u8>::from_offset(held)).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    s.get(flag.cast::<AtomicU64>())
        .unwrap()
        .store(u64::from(s.id()) + 1, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
}

fn kill9(child: &mut Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0);
    let _ = child.wait();
}

#[test]
fn kill_while_holding_a_mutex_gives_owner_died() {
    let server = TestServer::start("holder");
    let s = server.open();
    let (base, _) = s.find_or_create("robust", 64).unwrap();
    let mut child = server.spawn(TEST, "holder", "");
    let held = s
        .get(ShmPtr::<AtomicU64>::from_offset(base.offset() + 8))
        .unwrap();
    wait_until(10, "the child to lock", || held.load(Ordering::SeqCst) != 0);
    let holder = (held.load(Ordering::SeqCst) - 1) as u16;
    let m = s.get(base.cast::<Mutex>()).unwrap();
    assert!(m.try_lock(&s).unwrap().is_none(), "held by a live peer");
    // A second thread sleeps on the lock before the kill.
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || {
        let m = s2.get(base.cast::<Mutex>()).unwrap();
        let g = m.lock_timeout(&s2, Some(Duration::from_secs(20))).unwrap();
        g.owner_died()
    });
    std::thread::sleep(Duration::from_millis(50));
    kill9(&mut child);
    assert!(waiter.join().unwrap(), "the waiter gets owner-died");
    assert!(!s.peer_alive(holder));
    let g = m.lock(&s).unwrap();
    assert!(!g.owner_died(), "recovered once, then normal");
}

#[test]
fn kill_during_allocation_leaves_the_heap_consistent() {
    let server = TestServer::start("allockill");
    let s = server.open();
    for round in 0..4 {
        let (flag, _) = s.find_or_create("started", 64).unwrap();
        let flag = s.get(flag.cast::<AtomicU64>()).unwrap();
        flag.store(0, Ordering::SeqCst);
        let mut child = server.spawn(TEST, "allocator", "");
        wait_until(10, "the child to start", || {
            flag.load(Ordering::SeqCst) != 0
        });
        std::thread::sleep(Duration::from_millis(30 + 20 * round));
        kill9(&mut child);
        // Our own allocations go on working, and the heap adds up.
        let p = s.alloc(300).unwrap();
        let report = s.check_heap(&[p.offset()]).unwrap();
        assert!(
            report.is_consistent(),
            "round {round}: {:#?}",
            report.errors
        );
        eprintln!(
            "round {round}: {} recoveries, {} leaked blocks",
            report.recoveries,
            report.leaks.len()
        );
        s.free(p).unwrap();
    }
    // The killed peers' large blocks can be handed back.
    s.reclaim_dead().unwrap();
    let report = s.check_heap(&[]).unwrap();
    assert!(report.is_consistent(), "{:#?}", report.errors);
    assert!(report.dead_owned.is_empty());
}

#[test]
fn kill_during_cached_operations_loses_and_doubles_no_block() {
    let server = TestServer::start("cachekill");
    let s = server.open();
    for round in 0..4u64 {
        let (flag, _) = s.find_or_create("started", 64).unwrap();
        let flag = s.get(flag.cast::<AtomicU64>()).unwrap();
        flag.store(0, Ordering::SeqCst);
        let (records, _) = s
            .find_or_create("records", 8 * CACHED_THREADS * SLOTS)
            .unwrap();
        let records = s
            .slice(
                records.cast::<AtomicU64>(),
                (CACHED_THREADS * SLOTS) as usize,
            )
            .unwrap();
        for r in records {
            r.store(0, Ordering::SeqCst);
        }
        let recoveries = s.recoveries();
        let mut child = server.spawn(TEST, "cached", "");
        wait_until(10, "the child to start", || {
            flag.load(Ordering::SeqCst) != 0
        });
        let id = (flag.load(Ordering::SeqCst) - 1) as u16;
        std::thread::sleep(Duration::from_millis(20 + 15 * round));
        kill9(&mut child);
        wait_until(10, "the server to see the death", || !s.peer_alive(id));
        // Every block the child recorded is still allocated to it; at most
        // one per thread was allocated and not yet recorded (or unrecorded
        // and not yet freed) when it died.
        let recorded: Vec<u64> = records
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .filter(|&o| o != 0)
            .collect();
        let report = s.check_heap(&recorded).unwrap();
        assert!(
            report.is_consistent(),
            "round {round}: {:#?}",
            report.errors
        );
        assert!(
            report.leaks.len() as u64 <= CACHED_THREADS,
            "round {round}: {} unrecorded blocks",
            report.leaks.len()
        );
        eprintln!(
            "round {round}: {} dead caches with {} blocks, {} recorded, {} unrecorded",
            report.dead_caches,
            report.cached,
            recorded.len(),
            report.leaks.len()
        );
        // The child's caches are there, or were already emptied when it died
        // holding the heap lock and we took the lock over.
        assert!(
            report.dead_caches >= 1 || report.recoveries > recoveries,
            "round {round}: no dead cache and no recovery"
        );
        // Their caches come back; nothing the child held is handed out.
        s.reclaim_dead().unwrap();
        let report = s.check_heap(&recorded).unwrap();
        assert!(report.is_consistent(), "{:#?}", report.errors);
        assert_eq!(report.dead_caches, 0);
        let fresh: Vec<_> = (0..2000).map(|i| s.alloc(1 + i % 2048).unwrap()).collect();
        for p in &fresh {
            assert!(!recorded.contains(&p.offset()), "{p:?} handed out twice");
        }
        for p in fresh {
            s.free(p).unwrap();
        }
        for &o in &recorded {
            s.free(ShmPtr::<u8>::from_offset(o)).unwrap();
        }
        for o in s.check_heap(&[]).unwrap().leaks {
            s.free(ShmPtr::<u8>::from_offset(o)).unwrap();
        }
    }
    let report = s.check_heap(&[]).unwrap();
    assert!(report.is_consistent(), "{:#?}", report.errors);
    assert!(report.leaks.is_empty(), "{:?}", report.leaks);
}

#[test]
fn missing_server_is_a_transport_error() {
    let err = Shoal::open_host("/nonexistent/shoal.sock".as_ref()).unwrap_err();
    assert!(matches!(err, OpenError::Transport(_)), "{err:?}");
}

#[test]
fn region_too_small_for_the_sdk_is_refused() {
    let server = TestServer::with_size("tiny", 16 << 10);
    let err = Shoal::open_host(&server.path).unwrap_err();
    assert!(
        matches!(err, OpenError::Layout(LayoutError::TooSmall { .. })),
        "{err:?}"
    );
}

#[test]
fn double_free_and_foreign_offsets_through_a_server() {
    let server = TestServer::start("bad");
    let a = server.open();
    let b = server.open();
    let p = a.alloc(64).unwrap();
    b.free(p).unwrap();
    assert!(matches!(a.free(p), Err(AllocError::NotAllocated(_))));
    assert!(matches!(
        a.free(ShmPtr::<u8>::from_offset(12)),
        Err(AllocError::Foreign(_))
    ));
    assert!(matches!(
        a.free(ShmPtr::<u8>::from_offset(a.region_size() + 4096)),
        Err(AllocError::Foreign(_))
    ));
    assert!(a
        .get(ShmPtr::<AtomicU64>::from_offset(a.region_size() - 4))
        .is_err());
    assert!(a.check_heap(&[]).unwrap().is_consistent());
}
