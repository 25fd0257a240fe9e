// SPDX-License-Identifier: Apache-2.0
//! Synchronisation unit tests: several "peers" (handles with different ids
//! on one in-process region) and threads.

use super::*;
use crate::ptr::ShmPtr;
use crate::transport::local::LocalRegion;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn peers(n: u16) -> (Arc<LocalRegion>, Vec<Shoal>) {
    let r = LocalRegion::new(1 << 20, 8).unwrap();
    let handles = (0..n)
        .map(|id| {
            r.join(id).unwrap();
            Shoal::open_local(Arc::clone(&r), id).unwrap()
        })
        .collect();
    (r, handles)
}

#[test]
fn mutex_counter_is_exact_across_peers_and_threads() {
    let (_r, shoals) = peers(3);
    let (m, _) = shoals[0].find_or_create("m", 64).unwrap();
    let counter = ShmPtr::<AtomicU64>::from_offset(m.offset() + 8);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let s = shoals[t % 3].clone();
            std::thread::spawn(move || {
                let mutex = s.get(m.cast::<Mutex>()).unwrap();
                let c = s.get(counter).unwrap();
                for _ in 0..5000 {
                    let g = mutex.lock(&s).unwrap();
                    // Non-atomic read-modify-write: only exact under the lock.
                    let v = c.load(Ordering::Relaxed);
                    c.store(v + 1, Ordering::Relaxed);
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        shoals[1].get(counter).unwrap().load(Ordering::Relaxed),
        30_000
    );
}

#[test]
fn unlock_by_a_non_owner_is_refused() {
    let (_r, s) = peers(2);
    let p = s[0].alloc_array::<Mutex>(1).unwrap();
    let g = s[0].get(p).unwrap().lock(&s[0]).unwrap();
    let err = mutex::unlock(&s[1].inner, p.offset()).unwrap_err();
    assert!(matches!(err, SyncError::NotOwner));
    g.unlock().unwrap();
}

#[test]
fn lock_held_by_dead_peer_reports_owner_died() {
    let (r, s) = peers(2);
    let p = s[0].alloc_array::<Mutex>(1).unwrap();
    let g = s[0].get(p).unwrap().lock(&s[0]).unwrap();
    std::mem::forget(g);
    assert!(s[1].get(p).unwrap().try_lock(&s[1]).unwrap().is_none());
    r.kill(0).unwrap();
    let g = s[1].get(p).unwrap().lock(&s[1]).unwrap();
    assert!(g.owner_died());
    drop(g);
    let g = s[1].get(p).unwrap().lock(&s[1]).unwrap();
    assert!(!g.owner_died());
}

#[test]
fn sleeping_waiter_notices_owner_death() {
    let (r, s) = peers(2);
    let p = s[0].alloc_array::<Mutex>(1).unwrap();
    std::mem::forget(s[0].get(p).unwrap().lock(&s[0]).unwrap());
    let s1 = s[1].clone();
    let t = std::thread::spawn(move || s1.get(p).unwrap().lock(&s1).unwrap().owner_died());
    std::thread::sleep(Duration::from_millis(50));
    r.kill(0).unwrap();
    assert!(t.join().unwrap());
}

#[test]
fn lock_timeout_expires_while_held() {
    let (_r, s) = peers(2);
    let p = s[0].alloc_array::<Mutex>(1).unwrap();
    let _g = s[0].get(p).unwrap().lock(&s[0]).unwrap();
    let err = s[1]
        .get(p)
        .unwrap()
        .lock_timeout(&s[1], Some(Duration::from_millis(30)))
        .unwrap_err();
    assert!(matches!(err, SyncError::TimedOut));
}

#[test]
fn futex_wait_times_out_when_nobody_wakes() {
    let (_r, s) = peers(1);
    let w = s[0].alloc_array::<std::sync::atomic::AtomicU32>(1).unwrap();
    let word = s[0].get(w).unwrap();
    let start = Instant::now();
    let got = s[0]
        .futex_wait(word, 0, Some(Duration::from_millis(40)))
        .unwrap();
    assert_eq!(got, WaitOutcome::TimedOut);
    assert!(start.elapsed() >= Duration::from_millis(40));
    assert_eq!(s[0].futex_wait(word, 7, None).unwrap(), WaitOutcome::Woken);
}

#[test]
fn futex_wake_wakes_exactly_n() {
    let (_r, s) = peers(2);
    let w = s[0].alloc_array::<std::sync::atomic::AtomicU32>(1).unwrap();
    let woke = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = s[i % 2].clone();
            let woke = Arc::clone(&woke);
            std::thread::spawn(move || {
                let word = s.get(w).unwrap();
                if s.futex_wait(word, 0, Some(Duration::from_secs(2))).unwrap()
                    == WaitOutcome::Woken
                {
                    woke.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Wait until all four sleep in the kernel.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while n < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        n += s[0].futex_wake(s[0].get(w).unwrap(), 2).unwrap();
    }
    assert_eq!(n, 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(woke.load(Ordering::SeqCst), 2);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(woke.load(Ordering::SeqCst), 2, "the others time out");
}

#[test]
fn barrier_phases_never_overlap() {
    let (_r, s) = peers(4);
    let b = s[0].alloc_array::<Barrier>(1).unwrap();
    let phase_count = s[0].alloc_array::<AtomicU64>(1).unwrap();
    s[0].get(b).unwrap().init(4).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = s[i].clone();
            std::thread::spawn(move || {
                let barrier = s.get(b).unwrap();
                let count = s.get(phase_count).unwrap();
                let mut leaders = 0;
                for phase in 0..200u64 {
                    count.fetch_add(1, Ordering::SeqCst);
                    if barrier.wait(&s).unwrap() {
                        leaders += 1;
                    }
                    // Everyone of this phase arrived, nobody of the next yet.
                    assert_eq!(count.load(Ordering::SeqCst), 4 * (phase + 1));
                    barrier.wait(&s).unwrap();
                }
                leaders
            })
        })
        .collect();
    let leaders: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(leaders, 200);
}

#[test]
fn barrier_party_count_mismatch_is_an_error() {
    let (_r, s) = peers(1);
    let b = s[0].get(s[0].alloc_array::<Barrier>(1).unwrap()).unwrap();
    assert!(matches!(b.wait(&s[0]), Err(SyncError::Parties { .. })));
    b.init(3).unwrap();
    b.init(3).unwrap();
    assert!(matches!(
        b.init(2),
        Err(SyncError::Parties { got: 2, have: 3 })
    ));
}

#[test]
fn condvar_producer_consumer_loses_nothing() {
    let (_r, s) = peers(2);
    // [mutex, condvar, count, sum] in one block.
    let base = s[0].alloc_array::<AtomicU64>(4).unwrap();
    let m = base.cast::<Mutex>();
    let cv = ShmPtr::<Condvar>::from_offset(base.offset() + 8);
    let queued = ShmPtr::<AtomicU64>::from_offset(base.offset() + 16);
    let total = ShmPtr::<AtomicU64>::from_offset(base.offset() + 24);
    const ITEMS: u64 = 2000;
    let consumers: Vec<_> = (0..2)
        .map(|i| {
            let s = s[i].clone();
            std::thread::spawn(move || {
                let (m, cv) = (s.get(m).unwrap(), s.get(cv).unwrap());
                let (queued, total) = (s.get(queued).unwrap(), s.get(total).unwrap());
                let mut taken = 0;
                loop {
                    let mut g = m.lock(&s).unwrap();
                    while queued.load(Ordering::Relaxed) == 0
                        && total.load(Ordering::Relaxed) < ITEMS
                    {
                        cv.wait(&s, &mut g).unwrap();
                    }
                    if queued.load(Ordering::Relaxed) == 0 {
                        return taken;
                    }
                    queued.fetch_sub(1, Ordering::Relaxed);
                    total.fetch_add(1, Ordering::Relaxed);
                    taken += 1;
                    if total.load(Ordering::Relaxed) == ITEMS {
                        cv.notify_all(&s).unwrap();
                    }
                }
            })
        })
        .collect();
    let p = s[1].clone();
    let (mm, cvv, q) = (
        p.get(m).unwrap(),
        p.get(cv).unwrap(),
        p.get(queued).unwrap(),
    );
    for _ in 0..ITEMS {
        let g = mm.lock(&p).unwrap();
        q.fetch_add(1, Ordering::Relaxed);
        cvv.notify_one(&p).unwrap();
        drop(g);
    }
    let taken: u64 = consumers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(taken, ITEMS);
    assert_eq!(p.get(total).unwrap().load(Ordering::Relaxed), ITEMS);
}

#[test]
fn team_ranks_reductions_and_broadcast() {
    let (_r, s) = peers(4);
    let run_round = |s: &[Shoal]| {
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let s = s[i].clone();
                std::thread::spawn(move || {
                    let team = Team::join(&s, "t", 3).unwrap();
                    let r = team.rank();
                    let sum = team.sum_i64(i64::from(r) + 1).unwrap();
                    let max = team.max_f64(f64::from(r)).unwrap();
                    let min = team.min_i64(-(i64::from(r))).unwrap();
                    let b = team.broadcast(1, u64::from(r) * 100).unwrap();
                    team.barrier().unwrap();
                    (r, sum, max, min, b)
                })
            })
            .collect();
        let mut ranks = Vec::new();
        for t in threads {
            let (r, sum, max, min, b) = t.join().unwrap();
            assert_eq!((sum, max, min, b), (6, 2.0, -2, 100));
            ranks.push(r);
        }
        ranks.sort();
        assert_eq!(ranks, vec![0, 1, 2]);
    };
    run_round(&s);
    // Everyone left: the team resets and a second round works the same.
    run_round(&s);
}

#[test]
fn joining_a_full_team_times_out() {
    let (_r, s) = peers(2);
    let a = s[0].clone();
    let member = std::thread::spawn(move || Team::join(&a, "solo", 1).map(|t| t.rank()));
    assert_eq!(member.join().unwrap().unwrap(), 0);
    // That member left; a new round can start at once.
    let held = Team::join(&s[0], "solo", 1).unwrap();
    let err = Team::join_timeout(&s[1], "solo", 1, Some(Duration::from_millis(30))).unwrap_err();
    assert!(matches!(err, SyncError::TeamFull));
    drop(held);
    assert_eq!(Team::join(&s[1], "solo", 1).unwrap().rank(), 0);
}
