// SPDX-License-Identifier: Apache-2.0
//! Shared helpers for the integration tests: a server on a private socket.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use shmem_group::server::Stopper;
use shmem_group::{Membership, Peer, Server, ServerConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private socket path for one test.
pub fn socket_path(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("shmem-it-{}-{tag}-{n}.sock", std::process::id()))
}

/// A server running on its own thread; stopped on drop.
pub struct TestServer {
    pub path: PathBuf,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(tag: &str, vectors: u32, max_peers: u32) -> Self {
        let path = socket_path(tag);
        let mut config = ServerConfig::new("test", path.clone(), 1 << 20);
        config.vectors = vectors;
        config.max_peers = max_peers;
        Self::with_config(config)
    }

    pub fn with_config(config: ServerConfig) -> Self {
        let path = config.socket.clone();
        let mut server = Server::new(config).expect("server starts");
        let stopper = server.stopper().expect("stopper");
        let thread = std::thread::spawn(move || server.run().expect("server runs"));
        Self {
            path,
            stopper,
            thread: Some(thread),
        }
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Polls `peer` until `pred` accepts a membership event, or panics after 5 s.
pub fn wait_event(peer: &mut Peer, pred: impl Fn(&Membership) -> bool) -> Membership {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for event in peer.poll_events().expect("poll events") {
            if pred(&event) {
                return event;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for an event");
        if let Some(fd) = peer.socket_fd() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Polls until `peer` holds doorbells for all of `ids`.
pub fn wait_for_peers(peer: &mut Peer, ids: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        peer.poll_events().expect("poll events");
        let have = peer.peers();
        if ids.iter().all(|id| have.contains(id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "peer {} never saw {ids:?}",
            peer.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
