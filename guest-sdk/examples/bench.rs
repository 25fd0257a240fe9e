// SPDX-License-Identifier: Apache-2.0
//! Quick timings of the SDK's hot paths against their pthread/eventfd/malloc
//! counterparts (a stand-in until criterion benches exist). Two host peers in
//! one process, on a group server started here.
//!
//! ```sh
//! cargo run --release -p guest-sdk --example bench
//! ```

use shmem_group::{Server, ServerConfig};
use shoal::{Barrier, Mutex, ShmPtr, Shoal};
use std::error::Error;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn per_op(start: Instant, n: u64) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

fn report(what: &str, ours: f64, theirs: f64, them: &str) {
    println!(
        "{what:<34} {ours:>9.1} ns   {them:<28} {theirs:>9.1} ns   ratio {:.2}",
        ours / theirs
    );
}

fn mutex(s: &Shoal) -> Result<(), Box<dyn Error>> {
    const N: u64 = 2_000_000;
    let m = s.get(s.alloc_array::<Mutex>(1)?)?;
    let start = Instant::now();
    for _ in 0..N {
        drop(black_box(m.lock(s)?));
    }
    let ours = per_op(start, N);
    let pm = s.alloc(64)?;
    let raw = s.raw(pm.cast::<libc::pthread_mutex_t>(), 1)?;
    // SAFETY: raw points to 64 zeroed-or-unused bytes in the region that
    // only this function uses; attributes set before use.
    let theirs = unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutex_init(raw, &attr);
        let start = Instant::now();
        for _ in 0..N {
            libc::pthread_mutex_lock(raw);
            libc::pthread_mutex_unlock(raw);
        }
        per_op(start, N)
    };
    report(
        "uncontended lock+unlock",
        ours,
        theirs,
        "pshared pthread_mutex",
    );
    Ok(())
}

fn ping_pong(a: &Shoal, b: &Shoal) -> Result<(), Box<dyn Error>> {
    const N: u64 = 20_000;
    let w = a.alloc_array::<AtomicU32>(1)?;
    let b2 = b.clone();
    let t = std::thread::spawn(move || -> Result<(), String> {
        let word = b2.get(w).map_err(|e| e.to_string())?;
        for i in 0..N as u32 {
            while word.load(Ordering::Acquire) != 2 * i + 1 {
                b2.futex_wait(word, 2 * i, None)
                    .map_err(|e| e.to_string())?;
            }
            word.store(2 * i + 2, Ordering::Release);
            b2.futex_wake(word, 1).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let word = a.get(w)?;
    let start = Instant::now();
    for i in 0..N as u32 {
        word.store(2 * i + 1, Ordering::Release);
        a.futex_wake(word, 1)?;
        while word.load(Ordering::Acquire) != 2 * i + 2 {
            a.futex_wait(word, 2 * i + 1, None)?;
        }
    }
    let ours = per_op(start, N);
    t.join().map_err(|_| "ping-pong thread")??;
    // Floor: two eventfds, blocking reads.
    // SAFETY: plain syscalls; fds closed at the end.
    let theirs = unsafe {
        let (x, y) = (libc::eventfd(0, 0), libc::eventfd(0, 0));
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let one = 1u64.to_ne_bytes();
            for _ in 0..N {
                libc::read(x, buf.as_mut_ptr() as *mut libc::c_void, 8);
                libc::write(y, one.as_ptr() as *const libc::c_void, 8);
            }
        });
        let mut buf = [0u8; 8];
        let one = 1u64.to_ne_bytes();
        let start = Instant::now();
        for _ in 0..N {
            libc::write(x, one.as_ptr() as *const libc::c_void, 8);
            libc::read(y, buf.as_mut_ptr() as *mut libc::c_void, 8);
        }
        let r = per_op(start, N);
        let _ = t.join();
        libc::close(x);
        libc::close(y);
        r
    };
    report(
        "two-peer wake round trip",
        ours,
        theirs,
        "eventfd round trip",
    );
    Ok(())
}

fn barrier(a: &Shoal, b: &Shoal) -> Result<(), Box<dyn Error>> {
    const N: u64 = 20_000;
    let p = a.alloc_array::<Barrier>(1)?;
    a.get(p)?.init(2)?;
    let b2 = b.clone();
    let t = std::thread::spawn(move || {
        let bar = b2.get(p).map_err(|e| e.to_string())?;
        for _ in 0..N {
            bar.wait(&b2).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    let bar = a.get(p)?;
    let start = Instant::now();
    for _ in 0..N {
        bar.wait(a)?;
    }
    let ours = per_op(start, N);
    t.join().map_err(|_| "barrier thread")??;
    let pb = a.alloc(128)?;
    let raw = a.raw(pb.cast::<libc::pthread_barrier_t>(), 1)?;
    let addr = raw as usize;
    // SAFETY: raw points to 128 bytes in the region used only here.
    let theirs = unsafe {
        let mut attr: libc::pthread_barrierattr_t = std::mem::zeroed();
        libc::pthread_barrierattr_init(&mut attr);
        libc::pthread_barrierattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_barrier_init(raw, &attr, 2);
        let t = std::thread::spawn(move || {
            for _ in 0..N {
                libc::pthread_barrier_wait(addr as *mut libc::pthread_barrier_t);
            }
        });
        let start = Instant::now();
        for _ in 0..N {
            libc::pthread_barrier_wait(raw);
        }
        let r = per_op(start, N);
        let _ = t.join();
        r
    };
    report("two-party barrier", ours, theirs, "pshared pthread_barrier");
    Ok(())
}

fn alloc(s: &Shoal) -> Result<(), Box<dyn Error>> {
    const N: u64 = 1_000_000;
    let mut held: Vec<ShmPtr<u8>> = Vec::with_capacity(64);
    let start = Instant::now();
    for i in 0..N {
        held.push(s.alloc(16 + (i % 8) * 24)?);
        if held.len() == 64 {
            for p in held.drain(..) {
                s.free(p)?;
            }
        }
    }
    for p in held.drain(..) {
        s.free(p)?;
    }
    let ours = per_op(start, N);
    let mut raw: Vec<*mut libc::c_void> = Vec::with_capacity(64);
    let start = Instant::now();
    for i in 0..N {
        // SAFETY: malloc/free pairs on our own pointers.
        raw.push(black_box(unsafe {
            libc::malloc(16 + (i as usize % 8) * 24)
        }));
        if raw.len() == 64 {
            for p in raw.drain(..) {
                // SAFETY: p came from malloc above.
                unsafe { libc::free(p) };
            }
        }
    }
    for p in raw.drain(..) {
        // SAFETY: p came from malloc above.
        unsafe { libc::free(p) };
    }
    let theirs = per_op(start, N);
    report("alloc+free (16-184 B)", ours, theirs, "glibc malloc+free");
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let socket = std::env::temp_dir().join(format!("shoal-bench-{}.sock", std::process::id()));
    let mut server = Server::new(ServerConfig::new("bench", socket.clone(), 64 << 20))?;
    let stopper = server.stopper()?;
    let thread = std::thread::spawn(move || server.run());
    let a = Shoal::open_host(&socket)?;
    let b = Shoal::open_host(&socket)?;
    std::thread::sleep(Duration::from_millis(10));
    // BENCH_ONLY=mutex|wake|barrier|alloc runs one of them (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    if run("mutex") {
        mutex(&a)?;
    }
    if run("wake") {
        ping_pong(&a, &b)?;
    }
    if run("barrier") {
        barrier(&a, &b)?;
    }
    if run("alloc") {
        alloc(&a)?;
    }
    drop((a, b));
    stopper.stop();
    let _ = thread.join();
    Ok(())
}
