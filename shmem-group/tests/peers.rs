// SPDX-License-Identifier: Apache-2.0
//! Host peers share memory and doorbells through the group server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{wait_for_peers, TestServer};
use shmem_group::{Peer, PeerOptions};
use std::time::Duration;

// An eventfd write is complete when `ring` returns, so a peer that was not
// rung must show nothing right away.
const SHORT: Option<Duration> = Some(Duration::ZERO);
const LONG: Option<Duration> = Some(Duration::from_secs(5));

fn join_all(server: &TestServer, n: usize) -> Vec<Peer> {
    let mut peers: Vec<Peer> = (0..n)
        .map(|_| Peer::connect(&server.path).expect("join"))
        .collect();
    let ids: Vec<u16> = peers.iter().map(|p| p.id()).collect();
    for peer in &mut peers {
        let others: Vec<u16> = ids.iter().copied().filter(|i| *i != peer.id()).collect();
        wait_for_peers(peer, &others);
    }
    peers
}

fn check_writes_visible(peers: &[Peer]) {
    let base = peers[0].data_offset() as usize;
    for (i, writer) in peers.iter().enumerate() {
        let pattern = [i as u8 + 1; 64];
        writer.mapping().write(base + i * 64, &pattern).unwrap();
    }
    for reader in peers {
        for i in 0..peers.len() {
            let mut got = [0u8; 64];
            reader.mapping().read(base + i * 64, &mut got).unwrap();
            assert_eq!(
                got,
                [i as u8 + 1; 64],
                "peer {} reading slot {i}",
                reader.id()
            );
        }
    }
}

/// Rings every (peer, vector) once and checks that exactly that one fires.
fn check_doorbells_exact(peers: &[Peer], vectors: u32) {
    for sender in peers {
        for target in peers {
            for vector in 0..vectors {
                sender.ring(target.id(), vector).unwrap();
                for receiver in peers {
                    for v in 0..vectors {
                        let expected = receiver.id() == target.id() && v == vector;
                        let timeout = if expected { LONG } else { SHORT };
                        let got = receiver.wait(v, timeout).unwrap();
                        assert_eq!(
                            got,
                            u64::from(expected),
                            "{} rang {} v{vector}; {} v{v} saw {got}",
                            sender.id(),
                            target.id(),
                            receiver.id()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn two_peers_see_each_others_writes_and_doorbells() {
    let server = TestServer::start("two", 2, 8);
    let peers = join_all(&server, 2);
    assert_eq!(peers[0].id(), 0);
    assert_eq!(peers[1].id(), 1);
    check_writes_visible(&peers);
    check_doorbells_exact(&peers, 2);
}

#[test]
fn four_peers_doorbells_reach_exactly_the_addressed_vector() {
    let server = TestServer::start("four", 3, 8);
    let peers = join_all(&server, 4);
    let mut ids: Vec<u16> = peers.iter().map(|p| p.id()).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    check_writes_visible(&peers);
    check_doorbells_exact(&peers, 3);
}

#[test]
fn plain_v0_client_joins_like_qemu() {
    let server = TestServer::start("v0", 2, 8);
    let mut shoal = Peer::connect(&server.path).unwrap();
    let options = PeerOptions {
        extension: false,
        vectors: 2,
        ..PeerOptions::default()
    };
    let mut plain = Peer::connect_with(&server.path, options).unwrap();
    assert!(plain.token().is_none());
    wait_for_peers(&mut plain, &[shoal.id()]);
    wait_for_peers(&mut shoal, &[plain.id()]);
    plain.ring(shoal.id(), 1).unwrap();
    assert_eq!(shoal.wait(1, LONG).unwrap(), 1);
    shoal.ring(plain.id(), 0).unwrap();
    assert_eq!(plain.wait(0, LONG).unwrap(), 1);
}

#[test]
fn doorbell_counters_land_in_the_state_table() {
    let server = TestServer::start("stats", 1, 8);
    let peers = join_all(&server, 2);
    for _ in 0..3 {
        peers[0].ring(peers[1].id(), 0).unwrap();
    }
    let mut total = 0;
    while total < 3 {
        total += peers[1].wait(0, LONG).unwrap();
    }
    let region = peers[1].region().unwrap();
    assert_eq!(region.peer(peers[0].id()).unwrap().doorbells_sent, 3);
    assert_eq!(region.peer(peers[1].id()).unwrap().doorbells_received, 3);
    let status = shmem_group::client::query_status(&server.path, Duration::from_secs(5)).unwrap();
    let sender = status
        .members
        .iter()
        .find(|m| m.id == peers[0].id())
        .unwrap();
    assert_eq!(sender.doorbells_sent, 3);
    assert_eq!(sender.state, "alive");
}
