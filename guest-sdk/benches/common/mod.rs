// SPDX-License-Identifier: Apache-2.0
//! Shared bench set-up: a group server in this process (the tests' one)
//! with two host peers, thread pinning, and a partner thread that runs a
//! measured loop in lockstep with criterion's thread.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use criterion::Criterion;
use shoal::Shoal;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "../../tests/common/mod.rs"]
mod server;

/// A group server on a thread, and two host peers joined to it.
pub struct Group {
    pub a: Shoal,
    pub b: Shoal,
    // Declared last: the peers leave before the server stops.
    _server: server::TestServer,
}

impl Group {
    pub fn start(size: u64) -> Self {
        let server = server::TestServer::with_size("bench", size);
        Self {
            a: server.open(),
            b: server.open(),
            _server: server,
        }
    }
}

/// Pins the calling thread to `cpu` (modulo the CPUs we may use).
pub fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A thread pinned to CPU 1 that runs `rounds(start, n)` whenever the
/// measuring thread (pinned to CPU 0) does its side of `n` rounds.
pub struct Partner {
    go: Option<mpsc::Sender<(u64, u64)>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Partner {
    pub fn spawn(mut rounds: impl FnMut(u64, u64) + Send + 'static) -> Self {
        pin(0);
        let (go, rx) = mpsc::channel::<(u64, u64)>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            pin(1);
            for (start, n) in rx {
                rounds(start, n);
                let _ = tx.send(());
            }
        });
        Self {
            go: Some(go),
            done,
            thread: Some(thread),
        }
    }

    /// Starts the partner's side of rounds `start..start + n`.
    pub fn start(&self, start: u64, n: u64) {
        if let Some(go) = &self.go {
            go.send((start, n)).unwrap();
        }
    }

    /// Waits until the partner finished its rounds.
    pub fn finish(&self) {
        self.done.recv().unwrap();
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.go = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Criterion settings: short runs (the machine is small and shared).
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}
