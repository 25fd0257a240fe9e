// SPDX-License-Identifier: Apache-2.0
//! Synchronisation against its Linux counterparts, on the same memory (the
//! group region, a memfd mapped shared) and the same threads: the measuring
//! thread is pinned to CPU 0 and, for two-party benches, its partner to
//! CPU 1. The SDK side uses two host peers of one group (one per thread).
//! `cargo bench -p guest-sdk --bench sync`.
//!
//! - `mutex/*`: uncontended lock + unlock.
//! - `ping_pong/*`: one round trip between the two threads, each sleeping
//!   until the other answers: SDK futex wait/wake, a raw eventfd pair (the
//!   floor), the kernel's shared futex on the same word without the SDK,
//!   a process-shared pthread mutex + condvar.
//! - `barrier/*`: one two-party barrier phase.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Group, Partner};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shoal::{Barrier, Mutex, ShmPtr, Shoal};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A process-shared pthread mutex, condvar and counter in the region.
#[repr(C)]
struct PthreadPair {
    mutex: libc::pthread_mutex_t,
    cond: libc::pthread_cond_t,
    counter: u32,
}

/// An address in the region that threads of this process may share.
#[derive(Clone, Copy)]
struct Addr(usize);

impl Addr {
    fn of<T>(s: &Shoal, p: ShmPtr<T>) -> Self {
        Self(s.raw(p, 1).unwrap() as usize)
    }

    fn ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

fn pthread_mutex_in(s: &Shoal, robust: bool) -> Addr {
    let at = Addr::of(s, s.alloc(64).unwrap());
    // SAFETY: 64 unused, 16-aligned region bytes; attributes set before use.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        if robust {
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        }
        libc::pthread_mutex_init(at.ptr(), &attr);
    }
    at
}

fn mutex(c: &mut Criterion, g: &Group) {
    let s = &g.a;
    let m = s.get(s.alloc_array::<Mutex>(1).unwrap()).unwrap();
    let plain = pthread_mutex_in(s, false);
    let robust = pthread_mutex_in(s, true);
    let mut group = c.benchmark_group("mutex");
    group.bench_function(BenchmarkId::new("lock_unlock", "shoal"), |b| {
        b.iter(|| drop(black_box(m.lock(s).unwrap())))
    });
    for (name, at) in [
        ("pthread_pshared", plain),
        ("pthread_pshared_robust", robust),
    ] {
        group.bench_function(BenchmarkId::new("lock_unlock", name), |b| {
            // SAFETY: an initialised process-shared mutex in the region.
            b.iter(|| unsafe {
                libc::pthread_mutex_lock(at.ptr());
                libc::pthread_mutex_unlock(at.ptr());
            })
        });
    }
    group.finish();
}

/// Runs `side(start, n)` here and the partner's rounds there; returns the
/// time of this side.
fn lockstep(partner: &Partner, start: &mut u64, n: u64, side: impl FnOnce(u64, u64)) -> Duration {
    partner.start(*start, n);
    let t = Instant::now();
    side(*start, n);
    let elapsed = t.elapsed();
    partner.finish();
    *start += n;
    elapsed
}

fn ping_pong_shoal(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    g: &Group,
) {
    let w = g.a.alloc_array::<AtomicU32>(1).unwrap();
    let b = g.b.clone();
    let partner = Partner::spawn(move |start, n| {
        let word = b.get(w).unwrap();
        for i in start..start + n {
            let (ping, pong) = ((2 * i + 1) as u32, (2 * i + 2) as u32);
            while word.load(Ordering::Acquire) != ping {
                b.futex_wait(word, ping - 1, None).unwrap();
            }
            word.store(pong, Ordering::Release);
            b.futex_wake(word, 1).unwrap();
        }
    });
    let a = &g.a;
    let word = a.get(w).unwrap();
    let mut start = 0;
    c.bench_function(BenchmarkId::new("round_trip", "shoal_futex"), |bench| {
        bench.iter_custom(|n| {
            lockstep(&partner, &mut start, n, |start, n| {
                for i in start..start + n {
                    let (ping, pong) = ((2 * i + 1) as u32, (2 * i + 2) as u32);
                    word.store(ping, Ordering::Release);
                    a.futex_wake(word, 1).unwrap();
                    while word.load(Ordering::Acquire) != pong {
                        a.futex_wait(word, ping, None).unwrap();
                    }
                }
            })
        })
    });
}

fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a live, aligned 32-bit word; no timeout, no second
    // address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// The kernel's shared futex on the same region word, without the SDK
/// (no spinning, no wait table).
fn ping_pong_raw_futex(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    g: &Group,
) {
    let w = g.a.alloc_array::<AtomicU32>(1).unwrap();
    let at = Addr::of(&g.a, w);
    let partner = Partner::spawn(move |start, n| {
        // SAFETY: a word in the region, which outlives the partner.
        let word = unsafe { &*at.ptr::<AtomicU32>() };
        for i in start..start + n {
            let (ping, pong) = ((2 * i + 1) as u32, (2 * i + 2) as u32);
            while word.load(Ordering::Acquire) != ping {
                futex(word, libc::FUTEX_WAIT, ping - 1);
            }
            word.store(pong, Ordering::Release);
            futex(word, libc::FUTEX_WAKE, 1);
        }
    });
    let word = g.a.get(w).unwrap();
    let mut start = 0;
    c.bench_function(
        BenchmarkId::new("round_trip", "raw_futex_shared"),
        |bench| {
            bench.iter_custom(|n| {
                lockstep(&partner, &mut start, n, |start, n| {
                    for i in start..start + n {
                        let (ping, pong) = ((2 * i + 1) as u32, (2 * i + 2) as u32);
                        word.store(ping, Ordering::Release);
                        futex(word, libc::FUTEX_WAKE, 1);
                        while word.load(Ordering::Acquire) != pong {
                            futex(word, libc::FUTEX_WAIT, ping);
                        }
                    }
                })
            })
        },
    );
}

fn eventfd() -> i32 {
    // SAFETY: plain syscall; the fd is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    fd
}

fn signal(fd: i32) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a valid buffer.
    let n = unsafe { libc::write(fd, one.as_ptr() as *const libc::c_void, 8) };
    assert_eq!(n, 8);
}

fn await_signal(fd: i32) {
    let mut buf = [0u8; 8];
    // SAFETY: reads 8 bytes into a valid buffer (blocking).
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
    assert_eq!(n, 8);
}

fn ping_pong_eventfd(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let (ping, pong) = (eventfd(), eventfd());
    let partner = Partner::spawn(move |_, n| {
        for _ in 0..n {
            await_signal(ping);
            signal(pong);
        }
    });
    let mut start = 0;
    c.bench_function(BenchmarkId::new("round_trip", "eventfd"), |bench| {
        bench.iter_custom(|n| {
            lockstep(&partner, &mut start, n, |_, n| {
                for _ in 0..n {
                    signal(ping);
                    await_signal(pong);
                }
            })
        })
    });
    drop(partner);
    // SAFETY: our fds, no longer used.
    unsafe {
        libc::close(ping);
        libc::close(pong);
    }
}

fn ping_pong_pthread(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    g: &Group,
) {
    let s = &g.a;
    let at = Addr::of(s, s.alloc(256).unwrap().cast::<PthreadPair>());
    // SAFETY: 256 unused, 16-aligned region bytes (PthreadPair is smaller);
    // process-shared attributes set before use.
    unsafe {
        let p: *mut PthreadPair = at.ptr();
        let mut ma: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut ma);
        libc::pthread_mutexattr_setpshared(&mut ma, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutex_init(&mut (*p).mutex, &ma);
        let mut ca: libc::pthread_condattr_t = std::mem::zeroed();
        libc::pthread_condattr_init(&mut ca);
        libc::pthread_condattr_setpshared(&mut ca, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_cond_init(&mut (*p).cond, &ca);
        (*p).counter = 0;
    }
    // Under the mutex: optionally set the counter and signal, then wait
    // until it is `want`; optionally set it afterwards and signal.
    let step = move |first: Option<u32>, want: u32, then: Option<u32>| {
        let p: *mut PthreadPair = at.ptr();
        // SAFETY: the initialised pair above; the counter is only touched
        // with the mutex held.
        unsafe {
            libc::pthread_mutex_lock(&mut (*p).mutex);
            if let Some(v) = first {
                (*p).counter = v;
                libc::pthread_cond_signal(&mut (*p).cond);
            }
            while (*p).counter != want {
                libc::pthread_cond_wait(&mut (*p).cond, &mut (*p).mutex);
            }
            if let Some(v) = then {
                (*p).counter = v;
                libc::pthread_cond_signal(&mut (*p).cond);
            }
            libc::pthread_mutex_unlock(&mut (*p).mutex);
        }
    };
    let partner = Partner::spawn(move |start, n| {
        for i in start..start + n {
            step(None, (2 * i + 1) as u32, Some((2 * i + 2) as u32));
        }
    });
    let mut start = 0;
    c.bench_function(
        BenchmarkId::new("round_trip", "pthread_cond_pshared"),
        |bench| {
            bench.iter_custom(|n| {
                lockstep(&partner, &mut start, n, |start, n| {
                    for i in start..start + n {
                        step(Some((2 * i + 1) as u32), (2 * i + 2) as u32, None);
                    }
                })
            })
        },
    );
}

fn ping_pong(c: &mut Criterion, g: &Group) {
    let mut group = c.benchmark_group("ping_pong");
    ping_pong_shoal(&mut group, g);
    ping_pong_eventfd(&mut group);
    ping_pong_raw_futex(&mut group, g);
    ping_pong_pthread(&mut group, g);
    group.finish();
}

fn barrier(c: &mut Criterion, g: &Group) {
    let mut group = c.benchmark_group("barrier");
    let p = g.a.alloc_array::<Barrier>(1).unwrap();
    g.a.get(p).unwrap().init(2).unwrap();
    let b = g.b.clone();
    let partner = Partner::spawn(move |_, n| {
        let bar = b.get(p).unwrap();
        for _ in 0..n {
            bar.wait(&b).unwrap();
        }
    });
    let a = &g.a;
    let bar = a.get(p).unwrap();
    let mut start = 0;
    group.bench_function(BenchmarkId::new("two_party", "shoal"), |bench| {
        bench.iter_custom(|n| {
            lockstep(&partner, &mut start, n, |_, n| {
                for _ in 0..n {
                    bar.wait(a).unwrap();
                }
            })
        })
    });
    drop(partner);
    let at = Addr::of(a, a.alloc(128).unwrap().cast::<libc::pthread_barrier_t>());
    // SAFETY: 128 unused region bytes (a pthread_barrier_t is 32);
    // process-shared attribute set before use.
    unsafe {
        let mut attr: libc::pthread_barrierattr_t = std::mem::zeroed();
        libc::pthread_barrierattr_init(&mut attr);
        libc::pthread_barrierattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_barrier_init(at.ptr(), &attr, 2);
    }
    let partner = Partner::spawn(move |_, n| {
        for _ in 0..n {
            // SAFETY: the initialised barrier above.
            unsafe { libc::pthread_barrier_wait(at.ptr()) };
        }
    });
    group.bench_function(BenchmarkId::new("two_party", "pthread_pshared"), |bench| {
        bench.iter_custom(|n| {
            lockstep(&partner, &mut start, n, |_, n| {
                for _ in 0..n {
                    // SAFETY: as above.
                    unsafe { libc::pthread_barrier_wait(at.ptr()) };
                }
            })
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    common::pin(0);
    let group = Group::start(16 << 20);
    mutex(c, &group);
    ping_pong(c, &group);
    barrier(c, &group);
}

criterion_group! {
    name = sync;
    config = common::criterion();
    targets = benches
}
criterion_main!(sync);
