// SPDX-License-Identifier: Apache-2.0
//! Host-peer suite: several processes × several threads joined to a real
//! group server. Children are this test binary re-run in a role (see
//! `common`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{child_open, finish, result_of, role, wait_until, TestServer};
use shoal::{Barrier, Condvar, Mutex, ShmPtr, Shoal, WaitOutcome};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const TEST: &str = "child";

fn at<T>(base: ShmPtr<u8>, off: u64) -> ShmPtr<T> {
    ShmPtr::from_offset(base.offset() + off)
}

fn args(arg: &str) -> Vec<u64> {
    arg.split(',').map(|v| v.parse().unwrap()).collect()
}

/// Entry point of child processes (does nothing in the parent run).
#[test]
fn child() {
    let Some((role, arg)) = role() else { return };
    let s = child_open();
    match role.as_str() {
        "counter" => counter_role(&s, &args(&arg)),
        "barrier" => barrier_role(&s, &args(&arg)),
        "producer" => producer_role(&s, &args(&arg)),
        "consumer" => consumer_role(&s),
        "futex_waiter" => {
            let (w, _) = s.find_or_create("fw", 64).unwrap();
            let word = s.get(w.cast::<AtomicU32>()).unwrap();
            let got = s
                .futex_wait(word, 0, Some(Duration::from_millis(args(&arg)[0])))
                .unwrap();
            println!(
                "RESULT {}",
                if got == WaitOutcome::Woken {
                    "woken"
                } else {
                    "timeout"
                }
            );
        }
        "alloc_stress" => alloc_role(&s, &args(&arg)),
        other => panic!("unknown role {other}"),
    }
}

fn counter_role(s: &Shoal, a: &[u64]) {
    let (base, _) = s.find_or_create("counter", 64).unwrap();
    let threads: Vec<_> = (0..a[0])
        .map(|_| {
            let s = s.clone();
            let iters = a[1];
            std::thread::spawn(move || {
                let m = s.get(base.cast::<Mutex>()).unwrap();
                let c = s.get(at::<AtomicU64>(base, 8)).unwrap();
                for _ in 0..iters {
                    let g = m.lock(&s).unwrap();
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
}

#[test]
fn mutex_counter_is_exact_after_a_million_increments() {
    let server = TestServer::start("counter");
    let s = server.open();
    // 4 processes × 4 threads × 62,500 = 10^6.
    let children: Vec<_> = (0..4)
        .map(|_| server.spawn(TEST, "counter", "4,62500"))
        .collect();
    for c in children {
        finish(c);
    }
    let (base, created) = s.find_or_create("counter", 64).unwrap();
    assert!(!created);
    assert_eq!(
        s.get(at::<AtomicU64>(base, 8))
            .unwrap()
            .load(Ordering::Relaxed),
        1_000_000
    );
    assert_eq!(
        s.get(base.cast::<Mutex>()).unwrap().raw(),
        0,
        "left unlocked"
    );
}

fn barrier_role(s: &Shoal, a: &[u64]) {
    let (threads, phases, parties) = (a[0], a[1], a[2]);
    let (base, _) = s.find_or_create("barrier", 64).unwrap();
    s.get(base.cast::<Barrier>())
        .unwrap()
        .init(parties as u32)
        .unwrap();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let b = s.get(base.cast::<Barrier>()).unwrap();
                let count = s.get(at::<AtomicU64>(base, 16)).unwrap();
                for phase in 0..phases {
                    count.fetch_add(1, Ordering::SeqCst);
                    b.wait(&s).unwrap();
                    assert_eq!(count.load(Ordering::SeqCst), parties * (phase + 1));
                    b.wait(&s).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn barrier_phases_never_overlap_across_processes() {
    let server = TestServer::start("barrier");
    let children: Vec<_> = (0..3)
        .map(|_| server.spawn(TEST, "barrier", "2,300,6"))
        .collect();
    for c in children {
        finish(c);
    }
    let s = server.open();
    let (base, _) = s.find_or_create("barrier", 64).unwrap();
    assert_eq!(
        s.get(at::<AtomicU64>(base, 16))
            .unwrap()
            .load(Ordering::SeqCst),
        6 * 300
    );
}

// Bounded queue "pc": mutex 0, not_empty 4, not_full 8, head 16, tail 24,
// producers done 32, slots at 64.
const SLOTS: u64 = 64;

fn queue(s: &Shoal) -> ShmPtr<u8> {
    s.find_or_create("pc", 64 + 8 * SLOTS).unwrap().0
}

fn producer_role(s: &Shoal, a: &[u64]) {
    let (me, items) = (a[0], a[1]);
    let q = queue(s);
    let m = s.get(q.cast::<Mutex>()).unwrap();
    let (not_empty, not_full) = (
        s.get(at::<Condvar>(q, 4)).unwrap(),
        s.get(at::<Condvar>(q, 8)).unwrap(),
    );
    let (head, tail) = (
        s.get(at::<AtomicU64>(q, 16)).unwrap(),
        s.get(at::<AtomicU64>(q, 24)).unwrap(),
    );
    for i in 0..items {
        let mut g = m.lock(s).unwrap();
        while tail.load(Ordering::Relaxed) - head.load(Ordering::Relaxed) == SLOTS {
            not_full.wait(s, &mut g).unwrap();
        }
        let t = tail.load(Ordering::Relaxed);
        s.get(at::<AtomicU64>(q, 64 + 8 * (t % SLOTS)))
            .unwrap()
            .store(me * 1_000_000 + i, Ordering::Relaxed);
        tail.store(t + 1, Ordering::Relaxed);
        not_empty.notify_one(s).unwrap();
    }
    let _g = m.lock(s).unwrap();
    s.get(at::<AtomicU64>(q, 32))
        .unwrap()
        .fetch_add(1, Ordering::Relaxed);
    not_empty.notify_all(s).unwrap();
}

fn consumer_role(s: &Shoal) {
    let producers = 2;
    let q = queue(s);
    let m = s.get(q.cast::<Mutex>()).unwrap();
    let (not_empty, not_full) = (
        s.get(at::<Condvar>(q, 4)).unwrap(),
        s.get(at::<Condvar>(q, 8)).unwrap(),
    );
    let (head, tail, done) = (
        s.get(at::<AtomicU64>(q, 16)).unwrap(),
        s.get(at::<AtomicU64>(q, 24)).unwrap(),
        s.get(at::<AtomicU64>(q, 32)).unwrap(),
    );
    let (mut count, mut sum) = (0u64, 0u64);
    loop {
        let mut g = m.lock(s).unwrap();
        while head.load(Ordering::Relaxed) == tail.load(Ordering::Relaxed)
            && done.load(Ordering::Relaxed) < producers
        {
            not_empty.wait(s, &mut g).unwrap();
        }
        let h = head.load(Ordering::Relaxed);
        if h == tail.load(Ordering::Relaxed) {
            break;
        }
        let v = s
            .get(at::<AtomicU64>(q, 64 + 8 * (h % SLOTS)))
            .unwrap()
            .load(Ordering::Relaxed);
        head.store(h + 1, Ordering::Relaxed);
        not_full.notify_one(s).unwrap();
        drop(g);
        count += 1;
        sum += v;
    }
    println!("RESULT {count} {sum}");
}

#[test]
fn condvar_producer_consumer_loses_nothing() {
    let server = TestServer::start("pc");
    let items = 3000u64;
    let consumers: Vec<_> = (0..2).map(|_| server.spawn(TEST, "consumer", "")).collect();
    let producers: Vec<_> = (1..=2)
        .map(|p| server.spawn(TEST, "producer", &format!("{p},{items}")))
        .collect();
    for p in producers {
        finish(p);
    }
    let (mut count, mut sum) = (0u64, 0u64);
    for c in consumers {
        let out = result_of(&finish(c)).unwrap();
        let v: Vec<u64> = out.split(' ').map(|x| x.parse().unwrap()).collect();
        count += v[0];
        sum += v[1];
    }
    let expected: u64 = (1..=2u64)
        .map(|p| (0..items).map(|i| p * 1_000_000 + i).sum::<u64>())
        .sum();
    assert_eq!(count, 2 * items);
    assert_eq!(sum, expected);
}

#[test]
fn futex_wait_times_out_and_wake_wakes_exactly_n() {
    let server = TestServer::start("futex");
    let s = server.open();
    let (w, _) = s.find_or_create("fw", 64).unwrap();
    let word = s.get(w.cast::<AtomicU32>()).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| server.spawn(TEST, "futex_waiter", "3000"))
        .collect();
    let mut woken = 0;
    wait_until(10, "two sleepers woken", || {
        woken += s.futex_wake(word, 2 - woken as u32).unwrap();
        woken >= 2
    });
    assert_eq!(woken, 2);
    let results: Vec<String> = children
        .into_iter()
        .map(|c| result_of(&finish(c)).unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| *r == "woken").count(),
        2,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| *r == "timeout").count(),
        2,
        "{results:?}"
    );
}

fn alloc_role(s: &Shoal, a: &[u64]) {
    let (threads, ops, seed) = (a[0], a[1], a[2]);
    let (table, _) = s.find_or_create("shared-table", 4096).unwrap();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut x = seed.wrapping_mul(0x9e37_79b9).wrapping_add(t + 1) | 1;
                let mut live: Vec<(ShmPtr<u8>, u64, u64)> = Vec::new();
                for op in 0..ops {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if live.is_empty() || (x % 5 < 3 && live.len() < 200) {
                        let size = if x % 16 == 0 {
                            4096 + x % 30_000
                        } else {
                            8 + x % 2040
                        };
                        let p = s.alloc(size).unwrap();
                        let tag = (seed << 40) | (t << 32) | op;
                        s.get(p.cast::<AtomicU64>())
                            .unwrap()
                            .store(tag, Ordering::Relaxed);
                        live.push((p, size, tag));
                    } else {
                        let i = (x >> 8) as usize % live.len();
                        let (p, _, tag) = live.swap_remove(i);
                        let got = s
                            .get(p.cast::<AtomicU64>())
                            .unwrap()
                            .load(Ordering::Relaxed);
                        assert_eq!(got, tag, "block {p:?} was handed out twice");
                        s.free(p).unwrap();
                    }
                }
                live.iter().map(|(p, _, _)| p.offset()).collect::<Vec<_>>()
            })
        })
        .collect();
    let kept: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let list: Vec<String> = kept.iter().map(u64::to_string).collect();
    println!("RESULT {} {}", table.offset(), list.join(","));
}

#[test]
fn allocator_stress_from_all_peers_stays_consistent() {
    let server = TestServer::start("alloc");
    let children: Vec<_> = (1..=3)
        .map(|seed| server.spawn(TEST, "alloc_stress", &format!("2,3000,{seed}")))
        .collect();
    let mut live = Vec::new();
    let mut tables = Vec::new();
    for c in children {
        let out = result_of(&finish(c)).unwrap();
        let (table, list) = out.split_once(' ').unwrap();
        tables.push(table.to_string());
        live.extend(
            list.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.parse::<u64>().unwrap()),
        );
    }
    assert!(
        tables.windows(2).all(|w| w[0] == w[1]),
        "named lookup differs: {tables:?}"
    );
    let s = server.open();
    let report = s.check_heap(&live).unwrap();
    assert!(report.is_consistent(), "{:#?}", report.errors);
    assert!(report.leaks.is_empty(), "leaked {:?}", report.leaks);
    assert_eq!(report.named, 1);
    assert_eq!(
        s.find("shared-table")
            .unwrap()
            .map(|(p, _)| p.offset().to_string()),
        Some(tables[0].clone())
    );
}
