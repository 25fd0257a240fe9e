// SPDX-License-Identifier: Apache-2.0
//! A group backed by huge pages (`--hugepages`): it works when the host has
//! free huge pages, and says what to do when it has none. Reserves huge
//! pages through /proc/sys/vm/nr_hugepages (root, as scripts/test runs) and
//! puts the old value back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_for_peers;
use shmem_group::memory::{huge_page_size, MemoryError};
use shmem_group::server::ServerError;
use shmem_group::{Peer, Server, ServerConfig};
use std::os::fd::AsRawFd;
use std::time::Duration;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Sets nr_hugepages for the life of the value, restoring it on drop.
struct Reserve(String);

impl Reserve {
    fn set(pages: u64) -> Reserve {
        let old = std::fs::read_to_string(NR_HUGEPAGES).unwrap();
        std::fs::write(NR_HUGEPAGES, pages.to_string()).unwrap_or_else(|e| {
            panic!(
                "cannot write {NR_HUGEPAGES} ({e}): this test reserves huge pages and needs root"
            )
        });
        Reserve(old.trim().to_string())
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.0.as_bytes());
    }
}

fn config(dir: &std::path::Path, size: u64) -> ServerConfig {
    let mut c = ServerConfig::new("huge", dir.join("g.sock"), size);
    c.hugepages = true;
    c
}

#[test]
fn huge_page_group_works_and_a_missing_reserve_is_named() {
    let dir = std::env::temp_dir().join(format!("shoal-huge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = huge_page_size();
    let size = (4u64 << 20).max(page);
    let pages = size / page;

    {
        let _none = Reserve::set(0);
        match Server::new(config(&dir, size)) {
            Err(ServerError::Memory(MemoryError::NoHugePages { size: s, pages: p })) => {
                assert_eq!((s, p), (size, pages));
            }
            other => panic!("expected NoHugePages, got {other:?}"),
        }
    }

    let _reserve = Reserve::set(pages + 1);
    let mut server = Server::new(config(&dir, size)).unwrap();
    let stopper = server.stopper().unwrap();
    let thread = std::thread::spawn(move || server.run().unwrap());
    let socket = dir.join("g.sock");
    let mut a = Peer::connect(&socket).unwrap();
    let mut b = Peer::connect(&socket).unwrap();
    wait_for_peers(&mut a, &[b.id()]);
    wait_for_peers(&mut b, &[a.id()]);
    // The region is on hugetlbfs.
    // SAFETY: an all-zero statfs is a valid out-parameter; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a valid fd with a valid out-pointer.
    assert_eq!(unsafe { libc::fstatfs(a.memfd().as_raw_fd(), &mut st) }, 0);
    assert_eq!(st.f_type as i64, HUGETLBFS_MAGIC);
    // Both peers see each other's writes and doorbells.
    let at = a.data_offset() as usize;
    a.mapping().write(at, b"huge").unwrap();
    let mut seen = [0u8; 4];
    b.mapping().read(at, &mut seen).unwrap();
    assert_eq!(&seen, b"huge");
    a.ring(b.id(), 0).unwrap();
    assert_eq!(b.wait(0, Some(Duration::from_secs(5))).unwrap(), 1);
    drop((a, b));
    stopper.stop();
    thread.join().unwrap();
}
