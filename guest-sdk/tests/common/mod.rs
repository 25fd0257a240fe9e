// SPDX-License-Identifier: Apache-2.0
//! Test harness: a group server on a thread of the test process, and child
//! processes that re-run this test binary in a "role" to act as further
//! host peers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use shmem_group::server::Stopper;
use shmem_group::{Server, ServerConfig};
use shoal::Shoal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Env var naming the role a child runs.
pub const ROLE: &str = "SHOAL_TEST_ROLE";
/// Env var with the role's argument.
pub const ARG: &str = "SHOAL_TEST_ARG";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A group server on its own thread; stopped on drop.
pub struct TestServer {
    pub path: PathBuf,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(tag: &str) -> Self {
        Self::with_size(tag, 8 << 20)
    }

    pub fn with_size(tag: &str, size: u64) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shoal-sdk-{}-{tag}-{n}.sock", std::process::id()));
        let mut config = ServerConfig::new("sdk-test", path.clone(), size);
        config.max_peers = 16;
        let mut server = Server::new(config).expect("server starts");
        let stopper = server.stopper().expect("stopper");
        let thread = std::thread::spawn(move || server.run().expect("server runs"));
        Self {
            path,
            stopper,
            thread: Some(thread),
        }
    }

    pub fn open(&self) -> Shoal {
        Shoal::open_host(&self.path).expect("join the group")
    }

    /// Starts a child process running `role` with `arg` as a host peer.
    pub fn spawn(&self, test: &str, role: &str, arg: &str) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(ARG, arg)
            .env(shoal::SOCKET_ENV, &self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for a child and checks it succeeded; returns its stdout.
pub fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("wait child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}",
        out.status
    );
    stdout
}

/// The value a child printed as `RESULT <value>`.
pub fn result_of(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, v)| v.to_string()))
}

/// This process's role (None in the parent test run).
pub fn role() -> Option<(String, String)> {
    let role = std::env::var(ROLE).ok()?;
    let arg = std::env::var(ARG).unwrap_or_default();
    Some((role, arg))
}

/// The child's handle on the group named by SHOAL_SOCKET.
pub fn child_open() -> Shoal {
    Shoal::open_default().expect("child joins the group")
}

/// Polls `pred` every few ms until true, panicking after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
