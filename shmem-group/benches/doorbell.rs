// SPDX-License-Identifier: Apache-2.0
//! Doorbell round trip between two host peers through a group, against the
//! floor of a raw eventfd pair; and the time for a peer to join.
//!
//! `cargo bench -p shmem-group --bench doorbell` (plain main, no criterion).
//! Both round trips pin the ringing thread to CPU 0 and the echoing thread
//! to CPU 1 (with 2+ CPUs), and alternate over [`REPEATS`] runs; the medians
//! and their ratio are printed (on shared cores single runs vary by 2x).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shmem_group::doorbells::{new_eventfd, signal};
use shmem_group::{Peer, Server, ServerConfig};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ROUNDS: u32 = 20_000;
const REPEATS: usize = 7;

/// Pins the calling thread to `cpu` if the machine has it.
fn pin(cpu: usize) {
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if cpus < 2 {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET writes in it;
    // sched_setaffinity reads it (0: this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn wait(fd: &OwnedFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        // SAFETY: reads 8 bytes into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
        if n == 8 {
            return;
        }
    }
}

fn raw_eventfd_round_trip() -> Duration {
    let ping = std::sync::Arc::new(new_eventfd().unwrap());
    let pong = std::sync::Arc::new(new_eventfd().unwrap());
    let (p, q) = (ping.clone(), pong.clone());
    let echo = std::thread::spawn(move || {
        pin(1);
        for _ in 0..ROUNDS {
            wait(&p);
            signal(&*q).unwrap();
        }
    });
    pin(0);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        signal(&*ping).unwrap();
        wait(&pong);
    }
    let elapsed = start.elapsed();
    echo.join().unwrap();
    elapsed / ROUNDS
}

fn group_round_trip(path: &std::path::Path) -> Duration {
    let a = Peer::connect(path).unwrap();
    let mut b = Peer::connect(path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.peers().contains(&a.id()) {
        b.poll_events().unwrap();
        assert!(Instant::now() < deadline);
    }
    let a_id = a.id();
    let b_id = b.id();
    let echo = std::thread::spawn(move || {
        pin(1);
        for _ in 0..ROUNDS {
            while b.wait(0, None).unwrap() == 0 {}
            b.ring(a_id, 0).unwrap();
        }
    });
    let mut a = a;
    pin(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.peers().contains(&b_id) {
        a.poll_events().unwrap();
        assert!(Instant::now() < deadline);
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        a.ring(b_id, 0).unwrap();
        while a.wait(0, None).unwrap() == 0 {}
    }
    let elapsed = start.elapsed();
    echo.join().unwrap();
    elapsed / ROUNDS
}

fn join_time(path: &std::path::Path) -> Duration {
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        drop(Peer::connect(path).unwrap());
    }
    start.elapsed() / n
}

fn main() {
    let path = std::env::temp_dir().join(format!("shmem-bench-{}.sock", std::process::id()));
    let mut server = Server::new(ServerConfig::new("bench", path.clone(), 1 << 20)).unwrap();
    let stopper = server.stopper().unwrap();
    let thread = std::thread::spawn(move || server.run().unwrap());

    let mut floors = Vec::new();
    let mut groups = Vec::new();
    for _ in 0..REPEATS {
        floors.push(raw_eventfd_round_trip());
        groups.push(group_round_trip(&path));
    }
    let join = join_time(&path);
    let range = |v: &[Duration]| {
        let min = v.iter().min().copied().unwrap_or_default();
        let max = v.iter().max().copied().unwrap_or_default();
        format!("{min:.2?}..{max:.2?}")
    };
    let (floor_range, group_range) = (range(&floors), range(&groups));
    let (floor, group) = (median(floors), median(groups));
    println!("raw eventfd round trip:       median {floor:.2?} of {REPEATS} ({floor_range})");
    println!(
        "host peers through group:     median {group:.2?} of {REPEATS} ({group_range}), {:.2}x the floor",
        group.as_secs_f64() / floor.as_secs_f64()
    );
    println!("peer join (connect+greeting): {join:?}");

    stopper.stop();
    thread.join().unwrap();
}
