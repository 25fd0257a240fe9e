// SPDX-License-Identifier: Apache-2.0
//! Deaths, migration takeovers and server restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{wait_event, wait_for_peers, TestServer};
use shmem_group::client::query_status;
use shmem_group::layout::PeerState;
use shmem_group::{Membership, Peer, PeerOptions, ServerConfig};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Option<Duration> = Some(Duration::from_secs(5));
const CHILD_ENV: &str = "SHMEM_GROUP_TEST_CHILD_SOCKET";

/// Not a test on its own: the body of the child process used below.
#[test]
fn child_peer_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let peer = Peer::connect(path.as_ref()).unwrap();
    // Straight to fd 1: libtest may capture `println!` even with --nocapture.
    let mut out = std::io::stdout();
    writeln!(out, "CHILD-ID {}", peer.id()).unwrap();
    out.flush().unwrap();
    // Wait to be killed; give up after a minute so a failed parent leaves
    // no orphan behind.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn killed_peer_is_marked_dead_and_a_new_peer_gets_a_fresh_id() {
    let server = TestServer::start("kill", 1, 8);
    let mut observer = Peer::connect(&server.path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_peer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &server.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child_id: u16 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            // libtest may print "test child_peer_process ... " on the same line.
            let (_, id) = line.split_once("CHILD-ID ")?;
            Some(id.trim().parse().unwrap())
        })
        .expect("child reports its id");
    wait_for_peers(&mut observer, &[child_id]);
    let region = observer.region().unwrap();
    let before = region.peer(child_id).unwrap();
    assert_eq!(before.state, Some(PeerState::Alive));
    assert_eq!(before.pid, child.id());

    child.kill().unwrap();
    child.wait().unwrap();
    wait_event(&mut observer, |e| *e == Membership::Left(child_id));

    let after = observer.region().unwrap().peer(child_id).unwrap();
    assert_eq!(after.state, Some(PeerState::Dead));
    assert_eq!(after.generation, before.generation + 1);
    assert!(observer.ring(child_id, 0).is_err());
    // The departed peer's eventfds are kept for ioeventfd deregistration.
    assert_eq!(observer.take_retired(child_id).map(|f| f.len()), Some(1));
    assert!(observer.take_retired(child_id).is_none());

    let newcomer = Peer::connect(&server.path).unwrap();
    assert_ne!(newcomer.id(), child_id);
    assert_ne!(newcomer.id(), observer.id());
    let status = query_status(&server.path, Duration::from_secs(5)).unwrap();
    let dead = status.members.iter().find(|m| m.id == child_id).unwrap();
    assert_eq!(dead.state, "dead");
    assert!(!dead.connected);
}

#[test]
fn migration_takeover_keeps_id_and_doorbells_without_a_departure() {
    let server = TestServer::start("migrate", 2, 8);
    let mut source = Peer::connect(&server.path).unwrap();
    let mut other = Peer::connect(&server.path).unwrap();
    wait_for_peers(&mut other, &[source.id()]);
    source.announce_migration().unwrap();
    let options = PeerOptions {
        token: source.token().map(str::to_string),
        id: Some(source.id()),
        ..PeerOptions::default()
    };
    let destination = Peer::connect_with(&server.path, options).unwrap();
    assert_eq!(destination.id(), source.id());
    wait_event(&mut source, |e| *e == Membership::ServerGone);
    // The other peer saw nothing and its doorbell reaches the destination.
    other.ring(destination.id(), 1).unwrap();
    assert_eq!(destination.wait(1, LONG).unwrap(), 1);
    assert!(other
        .poll_events()
        .unwrap()
        .iter()
        .all(|e| !matches!(e, Membership::Left(_))));
    let snap = destination
        .region()
        .unwrap()
        .peer(destination.id())
        .unwrap();
    assert_eq!(snap.state, Some(PeerState::Alive));
    assert_eq!(snap.generation, 1);
}

#[test]
fn id_of_a_connected_peer_cannot_be_stolen() {
    let server = TestServer::start("steal", 1, 8);
    let victim = Peer::connect(&server.path).unwrap();
    let options = PeerOptions {
        token: Some("0123456789abcdef0123456789abcdef".into()),
        id: Some(victim.id()),
        ..PeerOptions::default()
    };
    let thief = Peer::connect_with(&server.path, options).unwrap();
    assert_ne!(thief.id(), victim.id());
}

#[test]
fn wrong_group_name_is_refused() {
    let server = TestServer::start("name", 1, 8);
    let options = PeerOptions {
        group: Some("other".into()),
        ..PeerOptions::default()
    };
    let err = Peer::connect_with(&server.path, options).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn restarted_server_adopts_the_region_and_peers_keep_their_ids() {
    let path = common::socket_path("restart");
    let mut config = ServerConfig::new("test", path.clone(), 1 << 20);
    config.vectors = 2;
    let server = TestServer::with_config(config.clone());
    let mut a = Peer::connect(&path).unwrap();
    let mut b = Peer::connect(&path).unwrap();
    wait_for_peers(&mut a, &[b.id()]);
    let base = a.data_offset() as usize;
    a.mapping().write(base, b"before restart").unwrap();
    server.stop();
    wait_event(&mut a, |e| *e == Membership::ServerGone);
    wait_event(&mut b, |e| *e == Membership::ServerGone);
    // Doorbells keep working without a server.
    a.ring(b.id(), 0).unwrap();
    assert_eq!(b.wait(0, LONG).unwrap(), 1);

    let _server = TestServer::with_config(config);
    a.reconnect().unwrap();
    b.reconnect().unwrap();
    assert_eq!((a.id(), b.id()), (0, 1));
    assert_eq!(a.region().unwrap().server_epoch(), 2);

    let mut c = Peer::connect(&path).unwrap();
    assert_eq!(c.id(), 2);
    let mut got = [0u8; 14];
    c.mapping().read(base, &mut got).unwrap();
    assert_eq!(&got, b"before restart");
    wait_for_peers(&mut c, &[0, 1]);
    wait_event(&mut a, |e| *e == Membership::Joined(2));
    wait_event(&mut b, |e| *e == Membership::Joined(2));
    c.ring(a.id(), 1).unwrap();
    assert_eq!(a.wait(1, LONG).unwrap(), 1);
    b.ring(c.id(), 0).unwrap();
    assert_eq!(c.wait(0, LONG).unwrap(), 1);
    // a and b were not announced to each other again.
    assert!(a.poll_events().unwrap().is_empty());
    drop(b);
    wait_event(&mut a, |e| *e == Membership::Left(1));
}

/// Starts the child peer process and returns it with its id.
fn spawn_child_peer(path: &std::path::Path) -> (std::process::Child, u16) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_peer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let id = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let (_, id) = line.split_once("CHILD-ID ")?;
            Some(id.trim().parse().unwrap())
        })
        .expect("child reports its id");
    (child, id)
}

#[test]
fn adopted_peer_that_exits_before_reconnecting_is_marked_dead() {
    let path = common::socket_path("orphan");
    let config = ServerConfig::new("test", path.clone(), 1 << 20);
    let server = TestServer::with_config(config.clone());
    let mut a = Peer::connect(&path).unwrap();
    let (mut child, child_id) = spawn_child_peer(&path);
    wait_for_peers(&mut a, &[child_id]);
    server.stop();
    wait_event(&mut a, |e| *e == Membership::ServerGone);
    child.kill().unwrap();
    child.wait().unwrap();

    let _server = TestServer::with_config(config);
    a.reconnect().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snap = a.region().unwrap().peer(child_id).unwrap();
        if snap.state == Some(PeerState::Dead) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "orphan never reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_event(&mut a, |e| *e == Membership::Left(child_id));
}

#[test]
fn foreign_region_is_refused_once_the_server_is_in_use() {
    let first = TestServer::start("foreign1", 1, 8);
    let mut stranger = Peer::connect(&first.path).unwrap();
    first.stop();
    wait_event(&mut stranger, |e| *e == Membership::ServerGone);
    let second = TestServer::start("foreign2", 1, 8);
    let _member = Peer::connect(&second.path).unwrap();
    // Point the stranger at the second server: its region is not that one.
    let err = reconnect_to(&mut stranger, &second.path).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

fn reconnect_to(
    peer: &mut Peer,
    path: &std::path::Path,
) -> Result<(), shmem_group::client::ClientError> {
    peer.set_socket(path);
    peer.reconnect()
}
