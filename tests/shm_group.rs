// SPDX-License-Identifier: Apache-2.0
//! Shared-memory groups end to end: a group server (in this process), host
//! peers and `shoal run` VMs with `--shmem-group`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmem_group::server::Stopper;
use shmem_group::{Membership, Peer, Server, ServerConfig};
use shoal_tests::{GuestProcess, GUEST_DONE};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A group server on its own thread, stopped on drop.
struct Group {
    socket: PathBuf,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl Group {
    fn start(name: &str, vectors: u32) -> Group {
        let dir = std::env::temp_dir().join(format!("shoal-shm-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("group.sock");
        let mut config = ServerConfig::new(name, &socket, 4 << 20);
        config.vectors = vectors;
        let mut server = Server::new(config).unwrap();
        let stopper = server.stopper().unwrap();
        let thread = std::thread::spawn(move || server.run().unwrap());
        Group {
            socket,
            stopper,
            thread: Some(thread),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `peer` sees `want` join (or any peer, with `None`); returns its id.
fn wait_for_join(peer: &mut Peer, want: Option<u16>) -> u16 {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        for event in peer.poll_events().unwrap() {
            if let Membership::Joined(id) = event {
                if want.is_none_or(|w| w == id) {
                    return id;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no peer joined within {TIMEOUT:?}");
}

#[test]
fn vm_joins_a_group_and_sees_the_device() {
    let group = Group::start("join", 2);
    let mut host = Peer::connect(&group.socket).unwrap();
    let socket = group.socket.to_str().unwrap().to_string();
    let mut vm = GuestProcess::boot_test_guest(
        "scenario=boot",
        &[
            "--memory",
            "128M",
            "--shmem-group",
            &format!("socket={socket}"),
        ],
    )
    .unwrap();
    vm.wait_for_line("SHOAL-TG pci 00:01.0 1af4:1110", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    let vm_id = wait_for_join(&mut host, None);
    assert_ne!(vm_id, host.id());
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{}", vm.output());
}
