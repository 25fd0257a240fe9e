// SPDX-License-Identifier: Apache-2.0
//! Allocator throughput against glibc malloc, single thread, same pattern:
//! `cargo bench -p guest-sdk --bench alloc`.
//!
//! - `burst`: 64 allocations of 16-184 bytes (eight sizes in turn), then
//!   64 frees; reported per alloc+free pair.
//! - `pair`: one 64-byte allocation freed at once.
//!
//! The SDK allocates in a group region through a host peer (memfd mapped
//! shared), glibc from its own heap; both run on the same pinned thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shoal::ShmPtr;
use std::hint::black_box;
use std::time::{Duration, Instant};

const BURST: usize = 64;

fn size(i: usize) -> usize {
    16 + (i % 8) * 24
}

fn burst_shoal(s: &shoal::Shoal, iters: u64) -> Duration {
    let mut held: Vec<ShmPtr<u8>> = Vec::with_capacity(BURST);
    let start = Instant::now();
    let mut i = 0;
    while (i as u64) < iters {
        for _ in 0..BURST.min((iters - i as u64) as usize) {
            held.push(s.alloc(size(i) as u64).unwrap());
            i += 1;
        }
        for p in held.drain(..) {
            s.free(black_box(p)).unwrap();
        }
    }
    start.elapsed()
}

fn burst_glibc(iters: u64) -> Duration {
    let mut held: Vec<*mut libc::c_void> = Vec::with_capacity(BURST);
    let start = Instant::now();
    let mut i = 0;
    while (i as u64) < iters {
        for _ in 0..BURST.min((iters - i as u64) as usize) {
            // SAFETY: plain malloc; freed below.
            held.push(unsafe { libc::malloc(size(i)) });
            i += 1;
        }
        for p in held.drain(..) {
            // SAFETY: p came from malloc above and is freed once.
            unsafe { libc::free(black_box(p)) };
        }
    }
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    common::pin(0);
    let group = common::Group::start(64 << 20);
    let s = &group.a;
    let mut g = c.benchmark_group("alloc_free");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("burst", "shoal"), |b| {
        b.iter_custom(|iters| burst_shoal(s, iters))
    });
    g.bench_function(BenchmarkId::new("burst", "glibc"), |b| {
        b.iter_custom(burst_glibc)
    });
    g.bench_function(BenchmarkId::new("pair", "shoal"), |b| {
        b.iter(|| s.free(black_box(s.alloc(64).unwrap())).unwrap())
    });
    g.bench_function(BenchmarkId::new("pair", "glibc"), |b| {
        // SAFETY: malloc/free pairs on our own pointer.
        b.iter(|| unsafe { libc::free(black_box(libc::malloc(64))) })
    });
    g.finish();
    let report = s.check_heap(&[]).unwrap();
    assert!(report.is_consistent(), "{:?}", report.errors);
}

criterion_group! {
    name = alloc;
    config = common::criterion();
    targets = benches
}
criterion_main!(alloc);
