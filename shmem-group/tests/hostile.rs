// SPDX-License-Identifier: Apache-2.0
//! Malformed and hostile clients are dropped; everybody else keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{wait_for_peers, TestServer};
use shmem_group::ext::{self, ext_socket_path, Adopt, Hello, Request, Role};
use shmem_group::{scm, Peer, PeerOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Option<Duration> = Some(Duration::from_secs(5));

/// Two healthy peers that must keep working whatever happens around them.
fn healthy_pair(path: &Path) -> (Peer, Peer) {
    let mut a = Peer::connect(path).unwrap();
    let mut b = Peer::connect(path).unwrap();
    wait_for_peers(&mut b, &[a.id()]);
    wait_for_peers(&mut a, &[b.id()]);
    (a, b)
}

fn assert_still_working(path: &Path, a: &mut Peer, b: &mut Peer) {
    a.poll_events().unwrap();
    b.poll_events().unwrap();
    a.ring(b.id(), 0).unwrap();
    assert_eq!(b.wait(0, LONG).unwrap(), 1);
    b.ring(a.id(), 0).unwrap();
    assert_eq!(a.wait(0, LONG).unwrap(), 1);
    let c = Peer::connect(path).unwrap();
    assert!(c.id() != a.id() && c.id() != b.id());
}

/// Reads until EOF (the server dropped us) or panics after 5 s.
fn expect_dropped(mut stream: UnixStream) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "server did not drop the client");
    }
}

fn ext_connect(path: &Path) -> UnixStream {
    UnixStream::connect(ext_socket_path(path)).unwrap()
}

#[test]
fn garbage_on_the_plain_socket_drops_only_that_client() {
    let server = TestServer::start("garbage-v0", 1, 16);
    let (mut a, mut b) = healthy_pair(&server.path);
    let mut bad = UnixStream::connect(&server.path).unwrap();
    bad.write_all(b"\xde\xad\xbe\xef garbage").unwrap();
    expect_dropped(bad);
    assert_still_working(&server.path, &mut a, &mut b);
}

#[test]
fn malformed_extension_frames_are_dropped() {
    let server = TestServer::start("garbage-ext", 1, 16);
    let (mut a, mut b) = healthy_pair(&server.path);

    // Oversized length.
    let mut s = ext_connect(&server.path);
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    expect_dropped(s);

    // Not JSON.
    let mut s = ext_connect(&server.path);
    s.write_all(&6u32.to_le_bytes()).unwrap();
    s.write_all(b"\x00\x01{{{]").unwrap();
    expect_dropped(s);

    // A request before hello.
    let mut s = ext_connect(&server.path);
    s.write_all(&ext::encode_request(&Request::Status).unwrap())
        .unwrap();
    expect_dropped(s);

    // Truncated frame, then hang up.
    let mut s = ext_connect(&server.path);
    s.write_all(&100u32.to_le_bytes()).unwrap();
    s.write_all(b"{\"op\":").unwrap();
    drop(s);

    assert_still_working(&server.path, &mut a, &mut b);
}

#[test]
fn wrong_fd_counts_are_dropped() {
    let server = TestServer::start("fds", 1, 16);
    let (mut a, mut b) = healthy_pair(&server.path);
    let (x, _y) = UnixStream::pair().unwrap();

    // Status with an fd attached.
    let s = ext_connect(&server.path);
    let hello = Request::Hello(Hello {
        ext_version: 1,
        role: Role::Control,
        group: None,
        token: None,
        id: None,
        adopt: None,
        known_peers: None,
    });
    let mut frame = ext::encode_request(&hello).unwrap();
    frame.extend(ext::encode_request(&Request::Status).unwrap());
    scm::send(&s, &frame, &[x.as_raw_fd()]).unwrap();
    expect_dropped(s);

    // Adopt declaring 1 vector (2 fds) but sending one.
    let s = ext_connect(&server.path);
    let hello = Request::Hello(Hello {
        ext_version: 1,
        role: Role::Peer,
        group: None,
        token: None,
        id: Some(5),
        adopt: Some(Adopt { vectors: 1 }),
        known_peers: Some(vec![]),
    });
    let frame = ext::encode_request(&hello).unwrap();
    scm::send(&s, &frame, &[x.as_raw_fd()]).unwrap();
    expect_dropped(s);

    // Adopt with a socket instead of a memfd.
    let s = ext_connect(&server.path);
    scm::send(&s, &frame, &[x.as_raw_fd(), x.as_raw_fd()]).unwrap();
    expect_dropped(s);

    // fds on the plain socket.
    let s = UnixStream::connect(&server.path).unwrap();
    scm::send(&s, b"x", &[x.as_raw_fd()]).unwrap();
    expect_dropped(s);

    assert_still_working(&server.path, &mut a, &mut b);
}

#[test]
fn client_that_never_reads_is_dropped_and_others_survive_churn() {
    let server = TestServer::start("churn", 1, 16);
    let (mut a, mut b) = healthy_pair(&server.path);
    let sleeper = UnixStream::connect(&server.path).unwrap();
    let plain = PeerOptions {
        extension: false,
        ..PeerOptions::default()
    };
    for i in 0..1000 {
        if i % 2 == 0 {
            drop(Peer::connect(&server.path).unwrap());
        } else {
            drop(Peer::connect_with(&server.path, plain.clone()).unwrap());
        }
        if i % 100 == 0 {
            // Keep the healthy peers' queues drained.
            a.poll_events().unwrap();
            b.poll_events().unwrap();
        }
    }
    expect_dropped(sleeper);
    assert_still_working(&server.path, &mut a, &mut b);
}

#[test]
fn silent_extension_client_times_out() {
    let server = TestServer::start("silent", 1, 16);
    let (mut a, mut b) = healthy_pair(&server.path);
    let silent = ext_connect(&server.path);
    let started = Instant::now();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!((&silent).read(&mut buf).unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_still_working(&server.path, &mut a, &mut b);
}

#[test]
fn group_full_refuses_newcomers_but_keeps_members() {
    let server = TestServer::start("full", 1, 2);
    let (mut a, mut b) = healthy_pair(&server.path);
    assert!(Peer::connect(&server.path).is_err());
    let plain = PeerOptions {
        extension: false,
        ..PeerOptions::default()
    };
    assert!(Peer::connect_with(&server.path, plain).is_err());
    a.ring(b.id(), 0).unwrap();
    assert_eq!(b.wait(0, LONG).unwrap(), 1);
    b.poll_events().unwrap();
    a.poll_events().unwrap();
}

/// A fake plain (v0) server on `path`: greets one client as peer 1 with a
/// 1 MiB region and one vector, then sends `after` with `fds` attached.
fn hostile_server(path: &Path, after: Vec<u8>, extra_fds: usize) -> std::thread::JoinHandle<()> {
    use shmem_group::protocol::encode;
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // SAFETY: memfd_create with a valid C string; the fd is owned below.
        let memfd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(memfd >= 0);
        // SAFETY: memfd was just created and is owned by nobody else.
        let memfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(memfd) };
        std::fs::File::from(memfd.try_clone().unwrap())
            .set_len(1 << 20)
            .unwrap();
        let own = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        scm::send(&stream, &encode(0), &[]).unwrap();
        scm::send(&stream, &encode(1), &[]).unwrap();
        scm::send(&stream, &encode(-1), &[memfd.as_raw_fd()]).unwrap();
        scm::send(&stream, &encode(1), &[own.as_raw_fd()]).unwrap();
        let fds: Vec<_> = (0..extra_fds)
            .map(|_| vmm_sys_util::eventfd::EventFd::new(0).unwrap())
            .collect();
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        scm::send(&stream, &after, &raw).unwrap();
        // Keep the connection open until the client drops it: the client
        // must notice the breach itself, not through EOF.
        let mut buf = [0u8; 64];
        while matches!((&stream).read(&mut buf), Ok(n) if n > 0) {}
    })
}

use std::os::fd::FromRawFd;

#[test]
fn client_reports_a_server_that_breaks_the_protocol_and_can_drop_it() {
    use shmem_group::protocol::encode;
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("negative peer id", encode(-7).to_vec(), 0),
        ("peer id out of range", encode(70000).to_vec(), 1),
        ("two fds on one message", encode(2).to_vec(), 2),
        ("a second region", encode(-1).to_vec(), 1),
    ];
    for (what, bytes, fds) in cases {
        let dir = tempdir(what);
        let path = dir.join("g.sock");
        let server = hostile_server(&path, bytes, fds);
        let options = PeerOptions {
            extension: false,
            ..PeerOptions::default()
        };
        let mut peer = Peer::connect_with(&path, options).unwrap();
        assert_eq!(peer.id(), 1, "{what}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match peer.poll_events() {
                Err(_) => break,
                Ok(events) => assert!(events.is_empty(), "{what}: {events:?}"),
            }
            assert!(Instant::now() < deadline, "{what}: not reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        peer.disconnect();
        assert!(!peer.is_connected(), "{what}");
        assert_eq!(peer.socket_fd(), None, "{what}");
        // The region and our own doorbell keep working.
        peer.mapping().write(0, b"still here").unwrap();
        peer.ring(1, 0).unwrap();
        assert_eq!(peer.wait(0, LONG).unwrap(), 1, "{what}");
        assert!(peer.poll_events().unwrap().is_empty(), "{what}");
        server.join().unwrap();
    }
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "shoal-hostile-server-{}-{}",
        std::process::id(),
        what.replace(' ', "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
