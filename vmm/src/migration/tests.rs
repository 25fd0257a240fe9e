// SPDX-License-Identifier: Apache-2.0
//! End-to-end tests of sender and receiver over real sockets, with the
//! fake VM of [`super::fake`].

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::fake::{FakeTarget, FakeVm};
use super::frame::{FrameReader, FrameWriter, Kind, Message, STREAM_VERSION};
use super::*;

const MIB: u64 = 1 << 20;

fn sock_path(name: &str) -> String {
    let p = std::env::temp_dir().join(format!("shoal-mig-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p.display().to_string()
}

type ReceiverThread = JoinHandle<(Result<ReceiveReport, MigrationError>, FakeTarget)>;

/// Binds `url` and receives one VM into a fresh fake target on a thread.
fn spawn_receiver(url: &str, target: FakeTarget) -> (ReceiverThread, String) {
    let url = MigrationUrl::parse(url).unwrap();
    let listener = url.listen().unwrap();
    let url = match listener.tcp_port() {
        Some(port) => format!("tcp:127.0.0.1:{port}"),
        None => url.to_string(),
    };
    let t = std::thread::spawn(move || {
        let mut target = target;
        let stream = listener.accept().unwrap();
        let r = receive(stream, &mut target);
        (r, target)
    });
    (t, url)
}

fn opts(url: &str) -> SendOptions {
    SendOptions {
        timeout_s: 60,
        ..SendOptions::new(url)
    }
}

fn assert_migrated(vm: &FakeVm, target: &FakeTarget) {
    assert!(target.started, "destination did not start");
    assert_eq!(
        target.state.as_deref(),
        Some(&b"{\"fake\":\"vm state\"}"[..])
    );
    assert!(
        vm.ram_bytes().unwrap() == target.ram_bytes().unwrap(),
        "RAM differs"
    );
    assert!(vm.is_paused(), "source must stay paused after commit");
    assert_eq!(vm.pause_resume_counts(), (1, 0));
}

fn assert_source_runs(vm: &FakeVm) {
    assert!(!vm.is_paused(), "source must run after a failed migration");
    let (p, r) = vm.pause_resume_counts();
    assert_eq!(p, r, "every pause must be matched by a resume");
    assert_eq!(vm.throttle_percent(), 0, "throttle must be lifted");
}

#[test]
fn idle_vm_migrates_over_unix_with_equal_ram() {
    let vm = FakeVm::new(16 * MIB).unwrap();
    vm.fill(3).unwrap();
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("idle")),
        FakeTarget::default(),
    );
    let progress = MigrationProgress::default();
    let report = send(vm.as_ref(), &opts(&url), &progress).unwrap();
    let (res, target) = rx.join().unwrap();
    let got = res.unwrap();
    assert_migrated(&vm, &target);
    assert_eq!(got.unconfirmed, None);
    assert_eq!(report.pages_data, (16 * MIB / 4096).div_ceil(3));
    assert_eq!(got.pages_data, report.pages_data);
    assert_eq!(progress.status().state, MigrationState::Completed);
    assert_eq!(progress.status().report, Some(report));
}

#[test]
fn idle_vm_migrates_over_tcp_loopback_with_equal_ram() {
    let vm = FakeVm::new(8 * MIB).unwrap();
    vm.fill(2).unwrap();
    let (rx, url) = spawn_receiver("tcp:127.0.0.1:0", FakeTarget::default());
    send(vm.as_ref(), &opts(&url), &MigrationProgress::default()).unwrap();
    let (res, target) = rx.join().unwrap();
    res.unwrap();
    assert_migrated(&vm, &target);
}

#[test]
fn touched_zero_pages_go_as_flags_and_untouched_ram_not_at_all() {
    let vm = FakeVm::new(4 * MIB).unwrap();
    // The first MiB was written with zeros (allocated, still zero); page
    // 300 holds data; the rest was never touched (holes in the memfd).
    vm.write(0, &vec![0u8; MIB as usize]).unwrap();
    vm.write(300 * 4096, b"data").unwrap();
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("zero")),
        FakeTarget::default(),
    );
    let report = send(vm.as_ref(), &opts(&url), &MigrationProgress::default()).unwrap();
    let (res, target) = rx.join().unwrap();
    let got = res.unwrap();
    assert_eq!(report.pages_data, 1);
    assert_eq!(got.pages_data, 1);
    // Page 300 lies outside the zero MiB; holes may be reported at page
    // granularity or not at all, so the touched MiB is the lower bound.
    assert!(report.pages_zero >= MIB / 4096, "{report:?}");
    assert!(
        report.bytes_total < 128 << 10,
        "zero pages must not be sent as data"
    );
    assert_migrated(&vm, &target);
}

#[test]
fn busy_guest_converges_and_ram_matches() {
    let vm = FakeVm::new(32 * MIB).unwrap();
    vm.fill(1).unwrap();
    let dirtier = vm.start_dirtier(100, 1024, Some(20_000));
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("busy")),
        FakeTarget::default(),
    );
    let report = send(vm.as_ref(), &opts(&url), &MigrationProgress::default()).unwrap();
    let (res, target) = rx.join().unwrap();
    res.unwrap();
    assert!(dirtier.pages_written() > 0);
    assert_migrated(&vm, &target);
    assert!(report.bytes_stop_and_copy > 0 || report.iterations > 0);
}

#[test]
fn fast_dirtier_converges_with_a_tiny_downtime_target() {
    let vm = FakeVm::new(32 * MIB).unwrap();
    vm.fill(1).unwrap();
    let _dirtier = vm.start_dirtier(0, 32 * MIB / 4096, None);
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("fast")),
        FakeTarget::default(),
    );
    let o = SendOptions {
        downtime_ms: 1,
        ..opts(&url)
    };
    let report = send(vm.as_ref(), &o, &MigrationProgress::default()).unwrap();
    let (res, target) = rx.join().unwrap();
    res.unwrap();
    // Whether auto-converge was needed depends on the machine's speed
    // (see next_throttle's tests); the result may not.
    assert_migrated(&vm, &target);
    assert_eq!(vm.throttle_percent(), report.throttle_max);
}

#[test]
fn guest_outpacing_a_limited_link_converges_through_auto_converge() {
    let vm = FakeVm::new(8 * MIB).unwrap();
    vm.fill(4).unwrap();
    // 16 MiB/s of dirtying over 256 pages against a 4 MiB/s link: without
    // the throttle every iteration would find the whole set dirty again.
    let _dirtier = vm.start_dirtier(0, 256, Some(4096));
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("limited")),
        FakeTarget::default(),
    );
    let o = SendOptions {
        max_bandwidth: 4 * MIB,
        downtime_ms: 100,
        ..opts(&url)
    };
    let report = send(vm.as_ref(), &o, &MigrationProgress::default()).unwrap();
    let (res, target) = rx.join().unwrap();
    res.unwrap();
    assert_migrated(&vm, &target);
    assert!(report.throttle_max > 0, "no auto-converge: {report:?}");
    assert!(report.iterations > 1, "{report:?}");
}

#[test]
fn local_migration_hands_over_the_memfd() {
    let vm = FakeVm::new(64 * MIB).unwrap();
    vm.fill(7).unwrap();
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("local")),
        FakeTarget::default(),
    );
    let o = SendOptions {
        local: true,
        ..opts(&url)
    };
    let report = send(vm.as_ref(), &o, &MigrationProgress::default()).unwrap();
    let (res, target) = rx.join().unwrap();
    assert!(res.unwrap().local);
    assert!(report.local);
    assert!(report.bytes_total < MIB, "RAM must not be copied");
    assert_migrated(&vm, &target);
    // It is the same memory, not a copy.
    vm.write(4096, b"after").unwrap();
    assert_eq!(&target.ram_bytes().unwrap()[4096..4101], b"after");
}

#[test]
fn local_migration_over_tcp_is_refused_before_connecting() {
    let vm = FakeVm::new(MIB).unwrap();
    let o = SendOptions {
        local: true,
        ..opts("tcp:127.0.0.1:1")
    };
    let err = send(vm.as_ref(), &o, &MigrationProgress::default()).unwrap_err();
    assert!(matches!(err, MigrationError::LocalNeedsUnix(_)), "{err}");
    assert_source_runs(&vm);
}

#[test]
fn destination_rejecting_the_state_leaves_the_source_running() {
    let vm = FakeVm::new(4 * MIB).unwrap();
    vm.fill(5).unwrap();
    let target = FakeTarget {
        fail_restore: true,
        ..Default::default()
    };
    let (rx, url) = spawn_receiver(&format!("unix:{}", sock_path("reject")), target);
    let progress = MigrationProgress::default();
    let err = send(vm.as_ref(), &opts(&url), &progress).unwrap_err();
    let (res, target) = rx.join().unwrap();
    assert!(res.is_err());
    assert!(!target.started);
    assert!(
        matches!(err, MigrationError::Rejected(ref why) if why.contains("does not fit")),
        "{err}"
    );
    assert_source_runs(&vm);
    assert_eq!(vm.pause_resume_counts(), (1, 1));
    let status = progress.status();
    assert_eq!(status.state, MigrationState::Failed);
    assert!(status.error.unwrap().contains("does not fit"));
}

/// A man in the middle between sender and receiver: forwards both ways,
/// and on the sender's side flips byte `corrupt_at` or cuts the connection
/// after `cut_after` bytes.
fn spawn_proxy(to: String, corrupt_at: Option<u64>, cut_after: Option<u64>) -> String {
    let path = sock_path(&format!(
        "proxy-{}-{}",
        corrupt_at.unwrap_or(0),
        cut_after.unwrap_or(0)
    ));
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut from_sender, _) = listener.accept().unwrap();
        let to_path = to.strip_prefix("unix:").unwrap().to_string();
        let mut to_receiver = UnixStream::connect(to_path).unwrap();
        let mut back_from = to_receiver.try_clone().unwrap();
        let mut back_to = from_sender.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_from, &mut back_to);
        });
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = 0u64;
        loop {
            let n = match from_sender.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = corrupt_at {
                if at >= pos && at < pos + n as u64 {
                    buf[(at - pos) as usize] ^= 0x10;
                }
            }
            if let Some(cut) = cut_after {
                if pos + n as u64 >= cut {
                    let _ = to_receiver.shutdown(std::net::Shutdown::Both);
                    let _ = from_sender.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
            if to_receiver.write_all(&buf[..n]).is_err() {
                break;
            }
            pos += n as u64;
        }
    });
    format!("unix:{path}")
}

#[test]
fn corrupt_frame_is_refused_and_the_source_resumes() {
    let vm = FakeVm::new(16 * MIB).unwrap();
    vm.fill(1).unwrap();
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("corrupt")),
        FakeTarget::default(),
    );
    let proxy = spawn_proxy(url, Some(3 * MIB + 123), None);
    let err = send(vm.as_ref(), &opts(&proxy), &MigrationProgress::default()).unwrap_err();
    let (res, target) = rx.join().unwrap();
    let rerr = res.unwrap_err();
    assert!(
        error_chain(&rerr).contains("checksum mismatch"),
        "{}",
        error_chain(&rerr)
    );
    assert!(!target.started);
    assert!(
        error_chain(&err).contains("checksum mismatch") || matches!(err, MigrationError::Send(_)),
        "{}",
        error_chain(&err)
    );
    assert_source_runs(&vm);
}

#[test]
fn connection_cut_mid_stream_leaves_the_source_running() {
    let vm = FakeVm::new(16 * MIB).unwrap();
    vm.fill(1).unwrap();
    let (rx, url) = spawn_receiver(&format!("unix:{}", sock_path("cut")), FakeTarget::default());
    let proxy = spawn_proxy(url, None, Some(5 * MIB));
    let err = send(vm.as_ref(), &opts(&proxy), &MigrationProgress::default()).unwrap_err();
    let (res, target) = rx.join().unwrap();
    assert!(matches!(
        res,
        Err(MigrationError::Frame(FrameError::Closed))
    ));
    assert!(!target.started);
    assert!(!error_chain(&err).is_empty());
    assert_source_runs(&vm);
}

#[test]
fn destination_dying_before_commit_leaves_the_source_running() {
    // A destination that takes the hello and RAM, then vanishes at the commit.
    let path = sock_path("die");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = FrameWriter::new(s.try_clone().unwrap());
        let mut r = FrameReader::new(s);
        loop {
            match r.next_message() {
                Ok(Message::Hello(_)) => {
                    w.send(Kind::Ack, &[]).unwrap();
                    w.flush().unwrap();
                }
                Ok(Message::Commit) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Dropping both halves closes the connection: "kill -9".
    });
    let vm = FakeVm::new(4 * MIB).unwrap();
    vm.fill(2).unwrap();
    let err = send(
        vm.as_ref(),
        &opts(&format!("unix:{path}")),
        &MigrationProgress::default(),
    )
    .unwrap_err();
    t.join().unwrap();
    assert!(
        matches!(err, MigrationError::DestinationClosed),
        "{}",
        error_chain(&err)
    );
    assert_source_runs(&vm);
    assert_eq!(vm.pause_resume_counts(), (1, 1));
}

#[test]
fn destination_of_another_version_is_reported_with_both_versions() {
    let path = sock_path("version");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = FrameWriter::new(s.try_clone().unwrap());
        let mut r = FrameReader::new(s);
        let _ = r.next_frame();
        w.send_with_version(Kind::Ack, &[], STREAM_VERSION + 1)
            .unwrap();
        w.flush().unwrap();
    });
    let vm = FakeVm::new(MIB).unwrap();
    let err = send(
        vm.as_ref(),
        &opts(&format!("unix:{path}")),
        &MigrationProgress::default(),
    )
    .unwrap_err();
    t.join().unwrap();
    let other = format!("stream version {}", STREAM_VERSION + 1);
    assert!(error_chain(&err).contains(&other), "{}", error_chain(&err));
    assert_source_runs(&vm);
}

#[test]
fn receiver_refuses_a_sender_of_another_version() {
    let path = sock_path("rversion");
    let (rx, _) = spawn_receiver(&format!("unix:{path}"), FakeTarget::default());
    let s = UnixStream::connect(&path).unwrap();
    let mut w = FrameWriter::new(s.try_clone().unwrap());
    w.send_with_version(Kind::Hello, b"{}", 9).unwrap();
    w.flush().unwrap();
    let (res, target) = rx.join().unwrap();
    let err = res.unwrap_err();
    assert!(
        error_chain(&err).contains("stream version 9 is not supported"),
        "{}",
        error_chain(&err)
    );
    assert!(!target.started);
    // The sender is told why.
    let mut r = FrameReader::new(s);
    assert!(matches!(r.next_message(), Ok(Message::Abort(why)) if why.contains("version 9")));
}

#[test]
fn receiver_refuses_pages_outside_ram() {
    let path = sock_path("range");
    let (rx, _) = spawn_receiver(&format!("unix:{path}"), FakeTarget::default());
    let s = UnixStream::connect(&path).unwrap();
    let mut w = FrameWriter::new(s.try_clone().unwrap());
    let hello = hello_json(MIB, false, serde_json::json!({}));
    w.send(Kind::Hello, &[&hello]).unwrap();
    w.send_pages(255, 2, &[0b11], &[]).unwrap();
    w.flush().unwrap();
    let (res, _) = rx.join().unwrap();
    assert!(matches!(
        res,
        Err(MigrationError::PageOutOfRange { first: 255, .. })
    ));
}

#[test]
fn cancel_stops_the_migration_and_the_source_runs_on() {
    let vm = FakeVm::new(16 * MIB).unwrap();
    vm.never_converge();
    let _dirtier = vm.start_dirtier(0, 16 * MIB / 4096, None);
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("cancel")),
        FakeTarget::default(),
    );
    let progress = Arc::new(MigrationProgress::default());
    let p2 = progress.clone();
    let canceller = std::thread::spawn(move || {
        while !p2.state().is_active() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        p2.cancel();
    });
    // downtime 0: never converges while the guest writes.
    let o = SendOptions {
        downtime_ms: 0,
        ..opts(&url)
    };
    let err = send(vm.as_ref(), &o, &progress).unwrap_err();
    canceller.join().unwrap();
    let (res, target) = rx.join().unwrap();
    assert!(matches!(err, MigrationError::Cancelled), "{err}");
    assert!(matches!(res, Err(MigrationError::Aborted(_))), "{res:?}");
    assert!(!target.started);
    assert_eq!(progress.status().state, MigrationState::Cancelled);
    assert_source_runs(&vm);
}

#[test]
fn timeout_stops_the_migration_and_the_source_runs_on() {
    let vm = FakeVm::new(8 * MIB).unwrap();
    vm.never_converge();
    let _dirtier = vm.start_dirtier(0, 8 * MIB / 4096, None);
    let (rx, url) = spawn_receiver(
        &format!("unix:{}", sock_path("timeout")),
        FakeTarget::default(),
    );
    let o = SendOptions {
        downtime_ms: 0,
        timeout_s: 1,
        ..SendOptions::new(&url)
    };
    let err = send(vm.as_ref(), &o, &MigrationProgress::default()).unwrap_err();
    let (res, _) = rx.join().unwrap();
    assert!(res.is_err());
    assert!(matches!(err, MigrationError::Timeout(1)), "{err}");
    assert_source_runs(&vm);
}

#[test]
fn fuzz_stream_survives_truncations_of_a_real_stream() {
    let mut bytes = Vec::new();
    {
        let mut w = FrameWriter::new(&mut bytes);
        let hello = hello_json(MIB, false, serde_json::json!({}));
        w.send(Kind::Hello, &[&hello]).unwrap();
        w.send_pages(0, 2, &[0b10], &[7u8; 4096]).unwrap();
        w.send_iteration_end(0, 2).unwrap();
        w.send(Kind::State, &[b"s"]).unwrap();
        w.send(Kind::Commit, &[]).unwrap();
        w.send(Kind::Go, &[]).unwrap();
        w.flush().unwrap();
    }
    for cut in 0..bytes.len() {
        fuzz_stream(&bytes[..cut]);
    }
    let mut flipped = bytes.clone();
    for i in (0..flipped.len()).step_by(97) {
        flipped[i] ^= 0xff;
        fuzz_stream(&flipped);
    }
}

#[test]
fn page_zeroed_after_the_first_pass_is_zeroed_at_the_destination() {
    let mut bytes = Vec::new();
    {
        let mut w = FrameWriter::new(&mut bytes);
        let hello = hello_json(MIB, false, serde_json::json!({}));
        w.send(Kind::Hello, &[&hello]).unwrap();
        w.send_pages(3, 2, &[0], &[9u8; 8192]).unwrap();
        w.send_iteration_end(0, 256).unwrap();
        // Page 3 was rewritten with zeros: only its flag comes.
        w.send_pages(3, 1, &[1], &[]).unwrap();
        w.send_iteration_end(1, 1).unwrap();
        w.send(Kind::State, &[b"{}"]).unwrap();
        w.send(Kind::Commit, &[]).unwrap();
        w.send(Kind::Go, &[]).unwrap();
        w.flush().unwrap();
    }
    let mut target = FakeTarget::default();
    let report = receiver::receive_frames(
        FrameReader::new(&bytes[..]),
        FrameWriter::new(std::io::sink()),
        None,
        &mut target,
    )
    .unwrap();
    assert_eq!(report.iterations, 2);
    let ram = target.ram_bytes().unwrap();
    assert!(
        ram[3 * 4096..4 * 4096].iter().all(|&b| b == 0),
        "page 3 must be zero"
    );
    assert!(
        ram[4 * 4096..5 * 4096].iter().all(|&b| b == 9),
        "page 4 keeps its data"
    );
    assert!(target.started);
}

/// A small deterministic mutation fuzzer over the three fuzz entry points,
/// so panics show up in `cargo test` before the cargo-fuzz targets run.
#[test]
fn fuzz_entry_points_survive_random_mutations() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Seeds: a valid stream, a valid request, a valid snapshot state.
    let mut stream = Vec::new();
    {
        let mut w = FrameWriter::new(&mut stream);
        let hello = hello_json(MIB, false, serde_json::json!({"memory": MIB}));
        w.send(Kind::Hello, &[&hello]).unwrap();
        w.send_pages(1, 9, &[0b1010_1010, 1], &[3u8; 4 * 4096])
            .unwrap();
        w.send_iteration_end(0, 9).unwrap();
        w.send(Kind::State, &[b"{}"]).unwrap();
        w.send(Kind::Commit, &[]).unwrap();
        w.send(Kind::Go, &[]).unwrap();
        w.flush().unwrap();
    }
    let json = br#"{"destination_url":"tcp:1.2.3.4:5","local":false,"downtime_ms":1}"#;
    let mut request = format!(
        "PUT /api/v1/vm.send-migration HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    request.extend_from_slice(json);
    assert!(matches!(
        crate::api::http::parse_head(&request),
        Ok(Some(h)) if h.len + h.content_length == request.len()
    ));
    let body = br#"{"config":{},"vcpus":[],"vm":{},"devices":[]}"#;
    let mut state =
        crate::snapshot::format::encode_header(&crate::snapshot::HostInfo::current(), MIB, body)
            .to_vec();
    state.extend_from_slice(body);

    for round in 0..3000 {
        for (i, seed_input) in [&stream, &request, &state].into_iter().enumerate() {
            let mut data = seed_input.clone();
            for _ in 0..1 + rand() % 8 {
                let at = (rand() % data.len() as u64) as usize;
                match rand() % 4 {
                    0 => data[at] ^= 1 << (rand() % 8),
                    1 => data[at] = rand() as u8,
                    2 => data.truncate(at),
                    _ => data.insert(at, rand() as u8),
                }
                if data.is_empty() {
                    data.push(0);
                }
            }
            match i {
                0 => fuzz_stream(&data),
                1 => crate::api::fuzz_request(&data),
                _ => crate::snapshot::fuzz_snapshot(&data),
            }
        }
        let _ = round;
    }
}

#[test]
fn receiver_refuses_a_handed_over_ram_file_shorter_than_ram() {
    let hello = hello_json(4 * MIB, true, serde_json::json!({}));
    let mut bytes = Vec::new();
    {
        let mut w = FrameWriter::new(&mut bytes);
        w.send(Kind::Hello, &[&hello]).unwrap();
        w.flush().unwrap();
    }
    let short = crate::memory::create_memfd("short", MIB).unwrap();
    let mut target = FakeTarget::default();
    let err = receiver::receive_frames(
        FrameReader::new(&bytes[..]),
        FrameWriter::new(std::io::sink()),
        Some(short.into()),
        &mut target,
    )
    .unwrap_err();
    assert!(
        matches!(err, MigrationError::RamFdTooSmall { len, .. } if len == MIB),
        "{err}"
    );
    assert!(target.ram.is_none());
}

#[test]
fn receiver_refuses_a_ram_size_that_is_not_whole_pages() {
    let hello = hello_json(4097, false, serde_json::json!({}));
    let mut bytes = Vec::new();
    {
        let mut w = FrameWriter::new(&mut bytes);
        w.send(Kind::Hello, &[&hello]).unwrap();
        w.flush().unwrap();
    }
    let err = receiver::receive_frames(
        FrameReader::new(&bytes[..]),
        FrameWriter::new(std::io::sink()),
        None,
        &mut FakeTarget::default(),
    )
    .unwrap_err();
    assert!(matches!(err, MigrationError::RamSize(4097)), "{err}");
}

/// What [`spawn_commit_proxy`] does at the end of a migration.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CommitFault {
    /// Drops the destination's commit acknowledgement and closes both
    /// sides: the acknowledgement was written but never read.
    DropAck,
    /// Shuts the source's side for reading, then passes the commit
    /// acknowledgement on: the source's `go` write fails.
    RefuseGo,
    /// Takes `go` from the source and closes both sides without passing
    /// it on: `go` was written but never read.
    DropGo,
}

/// Reads one frame (header and payload) from `r`.
fn read_raw_frame(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut frame = vec![0u8; frame::HEADER_LEN];
    r.read_exact(&mut frame).ok()?;
    let len = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]) as usize;
    frame.resize(frame::HEADER_LEN + len, 0);
    r.read_exact(&mut frame[frame::HEADER_LEN..]).ok()?;
    Some(frame)
}

/// A frame-aware man in the middle between sender and the receiver at
/// `to` that applies `fault` to the end of the commit.
fn spawn_commit_proxy(to: String, fault: CommitFault) -> String {
    use std::net::Shutdown;
    let path = sock_path(&format!("commit-proxy-{fault:?}"));
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (from_sender, _) = listener.accept().unwrap();
        let to_receiver = UnixStream::connect(to.strip_prefix("unix:").unwrap()).unwrap();
        let (mut fwd_in, mut fwd_out) = (
            from_sender.try_clone().unwrap(),
            to_receiver.try_clone().unwrap(),
        );
        let forward = std::thread::spawn(move || {
            while let Some(frame) = read_raw_frame(&mut fwd_in) {
                if fault == CommitFault::DropGo && frame[6] == Kind::Go as u8 {
                    let _ = fwd_in.shutdown(Shutdown::Both);
                    let _ = fwd_out.shutdown(Shutdown::Both);
                    return;
                }
                if fwd_out.write_all(&frame).is_err() {
                    return;
                }
            }
        });
        let (mut back_in, mut back_out) = (to_receiver, from_sender);
        let mut acks = 0;
        while let Some(frame) = read_raw_frame(&mut back_in) {
            if frame[6] == Kind::Ack as u8 {
                acks += 1;
            }
            // The first ack answers the hello, the second the commit.
            if acks == 2 && fault == CommitFault::DropAck {
                let _ = back_in.shutdown(Shutdown::Both);
                let _ = back_out.shutdown(Shutdown::Both);
                break;
            }
            if acks == 2 && fault == CommitFault::RefuseGo {
                let _ = back_out.shutdown(Shutdown::Read);
                let _ = back_out.write_all(&frame);
                let _ = back_in.shutdown(Shutdown::Both);
                break;
            }
            if back_out.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = forward.join();
    });
    format!("unix:{path}")
}

/// The receiver restored the VM, acknowledged, and did not start it.
fn assert_restored_not_started(res: Result<ReceiveReport, MigrationError>, target: &FakeTarget) {
    let report = res.unwrap();
    let why = report
        .unconfirmed
        .expect("the receiver must say why it waits");
    assert!(why.contains("did not confirm the commit"), "{why}");
    assert!(!target.started, "the destination started without go");
    assert!(target.state.is_some(), "the restored VM must be kept");
}

/// A fake VM migrated through a [`spawn_commit_proxy`].
struct CommitRun {
    vm: Arc<FakeVm>,
    sent: Result<MigrationReport, MigrationError>,
    status: MigrationStatus,
    received: Result<ReceiveReport, MigrationError>,
    target: FakeTarget,
}

fn migrate_with_commit_fault(name: &str, fault: CommitFault) -> CommitRun {
    let vm = FakeVm::new(4 * MIB).unwrap();
    vm.fill(3).unwrap();
    let (rx, url) = spawn_receiver(&format!("unix:{}", sock_path(name)), FakeTarget::default());
    let proxy = spawn_commit_proxy(url, fault);
    let progress = MigrationProgress::default();
    let sent = send(vm.as_ref(), &opts(&proxy), &progress);
    let (received, target) = rx.join().unwrap();
    CommitRun {
        vm,
        sent,
        status: progress.status(),
        received,
        target,
    }
}

/// The commit failed at the source with an error `is_expected` accepts:
/// the source paused once and runs again, the destination holds the
/// restored VM without starting it.
fn assert_source_resumed_after(run: CommitRun, is_expected: fn(&MigrationError) -> bool) {
    let err = run.sent.unwrap_err();
    assert!(is_expected(&err), "{}", error_chain(&err));
    assert_source_runs(&run.vm);
    assert_eq!(run.vm.pause_resume_counts(), (1, 1));
    assert_eq!(run.status.state, MigrationState::Failed);
    assert_restored_not_started(run.received, &run.target);
}

#[test]
fn commit_ack_lost_leaves_the_source_running_and_the_destination_not_started() {
    let run = migrate_with_commit_fault("ack-lost", CommitFault::DropAck);
    assert_source_resumed_after(run, |e| matches!(e, MigrationError::DestinationClosed));
}

#[test]
fn go_that_cannot_be_written_leaves_the_source_running_and_the_destination_not_started() {
    let run = migrate_with_commit_fault("go-refused", CommitFault::RefuseGo);
    assert_source_resumed_after(run, |e| matches!(e, MigrationError::Go(_)));
}

#[test]
fn go_lost_leaves_the_source_committed_and_a_complete_paused_destination() {
    let run = migrate_with_commit_fault("go-lost", CommitFault::DropGo);
    run.sent.unwrap();
    // The source wrote go: it is committed and stays paused (it exits).
    assert!(run.vm.is_paused());
    assert_eq!(run.vm.pause_resume_counts(), (1, 0));
    assert_eq!(run.status.state, MigrationState::Completed);
    // Neither runs; the destination holds all of the guest for the operator.
    assert!(run.vm.ram_bytes().unwrap() == run.target.ram_bytes().unwrap());
    assert_restored_not_started(run.received, &run.target);
}

/// The JSON body of a hello frame for `ram_size` bytes of 4 KiB pages.
fn hello_json(ram_size: u64, local: bool, config: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&Hello {
        ram_size,
        page_size: 4096,
        local,
        config,
    })
    .unwrap()
}

/// A whole stream up to the commit, then `tail`.
fn stream_to_commit(tail: impl FnOnce(&mut FrameWriter<&mut Vec<u8>>)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut w = FrameWriter::new(&mut bytes);
    let hello = hello_json(MIB, false, serde_json::json!({}));
    w.send(Kind::Hello, &[&hello]).unwrap();
    w.send_pages(0, 1, &[0], &[5u8; 4096]).unwrap();
    w.send_iteration_end(0, 1).unwrap();
    w.send(Kind::State, &[b"{}"]).unwrap();
    w.send(Kind::Commit, &[]).unwrap();
    tail(&mut w);
    w.flush().unwrap();
    drop(w);
    bytes
}

fn receive_bytes(bytes: &[u8]) -> (Result<ReceiveReport, MigrationError>, FakeTarget) {
    let mut target = FakeTarget::default();
    let res = receiver::receive_frames(
        FrameReader::new(bytes),
        FrameWriter::new(std::io::sink()),
        None,
        &mut target,
    );
    (res, target)
}

#[test]
fn receiver_starts_the_vm_only_on_go() {
    let (res, target) = receive_bytes(&stream_to_commit(|w| w.send(Kind::Go, &[]).unwrap()));
    assert_eq!(res.unwrap().unconfirmed, None);
    assert!(target.started);

    let (res, target) = receive_bytes(&stream_to_commit(|_| {}));
    assert_restored_not_started(res, &target);
}

#[test]
fn receiver_drops_the_vm_when_the_source_aborts_instead_of_go() {
    // An abort after the acknowledgement: the source runs on.
    let (res, target) = receive_bytes(&stream_to_commit(|w| {
        w.send(Kind::Abort, &[b"no answer from the peer"]).unwrap()
    }));
    assert!(matches!(res, Err(MigrationError::Aborted(_))), "{res:?}");
    assert!(!target.started);
}

#[test]
fn receiver_keeps_the_vm_paused_when_something_else_comes_instead_of_go() {
    // Not go, not an abort: the source's intent is unknown.
    let (res, target) = receive_bytes(&stream_to_commit(|w| w.send_iteration_end(1, 0).unwrap()));
    assert_restored_not_started(res, &target);
    let mut corrupt = stream_to_commit(|w| w.send(Kind::Go, &[]).unwrap());
    let n = corrupt.len();
    corrupt[n - 5] ^= 1;
    let (res, target) = receive_bytes(&corrupt);
    assert_restored_not_started(res, &target);
}
