// SPDX-License-Identifier: Apache-2.0
//! Snapshot, restore and live migration of `shoal run` VMs running the test
//! guest, driven through the control API (`shoal api`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_tests::frame_proxy::{frame_proxy, Fault, Trigger, COMMIT, GO, HELLO, PAGES, STATE};
use shoal_tests::{shoal_api, shoal_binary, test_guest_path, GuestProcess};

const TIMEOUT: Duration = Duration::from_secs(60);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-mig-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `shoal api --socket <socket> <args>`: (success, stdout, stderr).
fn api(socket: &Path, args: &[&str]) -> (bool, String, String) {
    shoal_api(socket, args).unwrap()
}

/// Waits for the API socket of a starting VM.
fn wait_for_socket(path: &Path) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no API socket at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn guest() -> String {
    test_guest_path().to_string_lossy().into_owned()
}

/// The number in a `SHOAL-TG counter <n>` line (not the `start` line).
fn counter(line: &str) -> Option<u64> {
    line.strip_prefix("SHOAL-TG counter ")?.parse().ok()
}

/// Waits for the next `SHOAL-TG counter <n>` line; returns `n`.
fn next_count(vm: &mut GuestProcess) -> u64 {
    loop {
        let line = vm.wait_for_line("SHOAL-TG counter ", TIMEOUT).unwrap();
        if let Some(n) = counter(&line) {
            return n;
        }
    }
}

fn source_vm(dir: &Path, cmdline: &str) -> (GuestProcess, PathBuf) {
    let socket = dir.join("api.sock");
    let vm = GuestProcess::shoal(&[
        "run",
        "--kernel",
        &guest(),
        "--memory",
        "128M",
        "--cmdline",
        cmdline,
        "--api-socket",
        socket.to_str().unwrap(),
    ])
    .unwrap();
    wait_for_socket(&socket);
    (vm, socket)
}

#[test]
fn snapshot_then_restore_continues_the_counter() {
    let dir = scratch("snapshot");
    let (mut vm, socket) = source_vm(&dir, "scenario=counter shift=12");
    next_count(&mut vm);
    let snap = dir.join("snap");
    let (ok, out, err) = api(&socket, &["snapshot", snap.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    // The VM stays paused after a snapshot: the last line printed is where
    // the restored VM must continue from.
    let (ok, out, err) = api(&socket, &["shutdown"]);
    assert!(ok, "{out}{err}");
    vm.wait_for_exit(TIMEOUT).unwrap();
    let last = vm
        .guest_lines()
        .iter()
        .rev()
        .find_map(|l| counter(l))
        .unwrap();

    let mut restored = GuestProcess::shoal(&["run", "--restore", snap.to_str().unwrap()]).unwrap();
    let first = next_count(&mut restored);
    assert!(
        first > last,
        "restored counter {first} does not continue after {last}"
    );
    assert!(
        !restored
            .lines()
            .iter()
            .any(|l| l.contains("SHOAL-TG start")),
        "the restored VM booted again:\n{}",
        restored.output()
    );
}

#[test]
fn restore_refuses_a_corrupt_snapshot() {
    let dir = scratch("corrupt");
    let (mut vm, socket) = source_vm(&dir, "scenario=counter shift=12");
    next_count(&mut vm);
    let snap = dir.join("snap");
    assert!(api(&socket, &["snapshot", snap.to_str().unwrap()]).0);
    assert!(api(&socket, &["shutdown"]).0);
    let state = snap.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x55;
    std::fs::write(&state, bytes).unwrap();
    let mut restored = GuestProcess::shoal(&["run", "--restore", snap.to_str().unwrap()]).unwrap();
    let status = restored.wait_for_exit(TIMEOUT).unwrap();
    assert!(!status.success());
    let stderr = restored.stderr();
    assert!(stderr.contains("state"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Migrates a `checksum` guest to `url` and checks that the destination
/// goes on with the same RAM checksum and the source exits.
/// `shoal api migration-status` at `socket`: its first line.
fn migration_line(socket: &Path) -> String {
    let (ok, out, err) = api(socket, &["migration-status"]);
    assert!(ok, "{out}{err}");
    out.lines().next().unwrap_or_default().to_string()
}

fn migrate_keeps_ram(url: &str, dir: &Path, extra: &[&str]) {
    let dest_api = dir.join("dest-api.sock");
    let mut dest = GuestProcess::shoal(&[
        "run",
        "--incoming",
        url,
        "--api-socket",
        dest_api.to_str().unwrap(),
    ])
    .unwrap();
    // The source must not connect before the destination listens.
    if let Some(path) = url.strip_prefix("unix:") {
        wait_for_socket(Path::new(path));
    } else {
        std::thread::sleep(Duration::from_millis(300));
    }
    // While it waits, the destination answers its API.
    wait_for_socket(&dest_api);
    assert_eq!(info_state(&dest_api)["state"], "receiving");
    let waiting = migration_line(&dest_api);
    assert!(waiting.starts_with("incoming: listening"), "{waiting}");
    let (mut src, socket) = source_vm(dir, "scenario=checksum interval=100");
    let before = src.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    let mut args = vec!["send-migration", url];
    args.extend_from_slice(extra);
    let (ok, out, err) = api(&socket, &args);
    assert!(ok, "send-migration failed:\n{out}\n{err}\n{}", src.output());
    assert!(
        out.contains("downtime") || err.contains("downtime"),
        "no report:\n{out}\n{err}"
    );
    let status = src.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{}", src.output());
    let after = dest.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    assert_eq!(
        before.split(' ').next_back(),
        after.split(' ').next_back(),
        "RAM checksum changed: {before} -> {after}"
    );
    dest.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    // How the VM arrived, from the destination's side.
    let (ok, out, err) = api(&dest_api, &["migration-status"]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("incoming: received"), "{out}");
    assert!(out.contains("  bytes received  "), "{out}");
    let status = status_json(&dest_api);
    let report = &status["report"];
    assert!(report["bytes_total"].as_u64().unwrap() > 0, "{status}");
    if extra.contains(&"--local") {
        assert_eq!(report["local"], true, "{status}");
    } else {
        assert!(report["pages_data"].as_u64().unwrap() > 0, "{status}");
        assert!(status["bytes_received"].as_u64().unwrap() > 0, "{status}");
    }
    assert!(dest.error_lines().is_empty(), "{}", dest.output());
}

/// `vm.migration-status` at `socket`, as JSON (the CLI prints it as text).
fn status_json(socket: &Path) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(
        b"GET /api/v1/vm.migration-status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn live_migration_over_unix_keeps_the_guest_and_its_ram() {
    let dir = scratch("unix");
    let url = format!("unix:{}", dir.join("mig.sock").display());
    migrate_keeps_ram(&url, &dir, &[]);
}

#[test]
fn live_migration_same_host_hands_the_ram_over() {
    let dir = scratch("local");
    let url = format!("unix:{}", dir.join("mig.sock").display());
    migrate_keeps_ram(&url, &dir, &["--local"]);
}

#[test]
fn live_migration_over_tcp_loopback() {
    let dir = scratch("tcp");
    // A port unlikely to clash; the test fails clearly if it is taken.
    let port = 20000 + (std::process::id() % 20000);
    let url = format!("tcp:127.0.0.1:{port}");
    migrate_keeps_ram(&url, &dir, &[]);
}

#[test]
fn a_dirtying_guest_converges_and_loses_nothing() {
    let dir = scratch("dirty");
    let url = format!("unix:{}", dir.join("mig.sock").display());
    let mut dest = GuestProcess::shoal(&["run", "--incoming", &url]).unwrap();
    wait_for_socket(&dir.join("mig.sock"));
    let (mut src, socket) = source_vm(&dir, "scenario=dirty pages=256 every=8");
    src.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    let (ok, out, err) = api(&socket, &["send-migration", &url, "--downtime-ms", "20"]);
    assert!(ok, "{out}\n{err}");
    src.wait_for_exit(TIMEOUT).unwrap();
    // The destination goes on checking every page it rewrites.
    dest.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    dest.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    assert!(dest.error_lines().is_empty(), "{}", dest.output());
}

#[test]
fn a_guest_outpacing_a_limited_link_converges_through_auto_converge() {
    let dir = scratch("limited");
    let url = format!("unix:{}", dir.join("mig.sock").display());
    let mut dest = GuestProcess::shoal(&["run", "--incoming", &url]).unwrap();
    wait_for_socket(&dir.join("mig.sock"));
    // 1024 pages rewritten over and over: far more than 4 MiB/s.
    let (mut src, socket) = source_vm(&dir, "scenario=dirty pages=1024 every=16");
    src.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    let (ok, out, err) = api(
        &socket,
        &[
            "send-migration",
            &url,
            "--max-bandwidth",
            "4M",
            "--downtime-ms",
            "100",
        ],
    );
    assert!(ok, "{out}\n{err}\n{}", src.output());
    assert!(
        out.contains("auto-converge   throttled up to"),
        "converged without auto-converge:\n{out}"
    );
    src.wait_for_exit(TIMEOUT).unwrap();
    // Every page the destination rewrites still holds the previous pass.
    dest.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    dest.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    assert!(dest.error_lines().is_empty(), "{}", dest.output());
}

#[test]
fn source_keeps_running_when_the_destination_dies() {
    let dir = scratch("dest-dies");
    let url = format!("unix:{}", dir.join("mig.sock").display());
    // A destination that accepts and then vanishes mid-stream.
    let listener = std::os::unix::net::UnixListener::bind(dir.join("mig.sock")).unwrap();
    let killer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut conn, &mut buf);
        drop(conn);
    });
    let (mut src, socket) = source_vm(&dir, "scenario=counter shift=12");
    let before = next_count(&mut src);
    let (ok, out, err) = api(&socket, &["send-migration", &url]);
    assert!(
        !ok,
        "migration to a dead destination succeeded:\n{out}\n{err}"
    );
    killer.join().unwrap();
    // The guest keeps counting at the source.
    assert!(next_count(&mut src) > before);
    next_count(&mut src);
    let (ok, out, _) = api(&socket, &["info"]);
    assert!(ok && out.contains("running"), "{out}");
}

#[test]
fn incoming_refuses_a_garbage_stream_and_a_busy_address() {
    let dir = scratch("garbage");
    let sock = dir.join("mig.sock");
    let url = format!("unix:{}", sock.display());
    let mut dest = GuestProcess::shoal(&["run", "--incoming", &url]).unwrap();
    wait_for_socket(&sock);
    // A second receiver on the same address fails with a clear error.
    let mut busy = GuestProcess::shoal(&["run", "--incoming", &url]).unwrap();
    let status = busy.wait_for_exit(TIMEOUT).unwrap();
    assert!(!status.success());
    assert!(busy.stderr().contains("mig.sock"), "{}", busy.stderr());
    // Garbage instead of a migration stream.
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut conn, &[0x42; 4096]).unwrap();
    drop(conn);
    let status = dest.wait_for_exit(TIMEOUT).unwrap();
    assert!(!status.success());
    let stderr = dest.stderr();
    assert!(stderr.contains("migration"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Two network namespaces joined by a veth pair: the project's own test
/// hosts, removed on drop.
struct NetPair {
    names: [String; 2],
}

impl NetPair {
    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `10.<net>.0.1` in the first namespace, `10.<net>.0.2` in the second.
    fn new(net: u8) -> NetPair {
        let id = std::process::id();
        let names = [format!("shoal-a-{id}"), format!("shoal-b-{id}")];
        let pair = NetPair { names };
        let [a, b] = &pair.names;
        let (va, vb) = (
            format!("sha{}", id % 100_000),
            format!("shb{}", id % 100_000),
        );
        NetPair::ip(&["netns", "add", a]);
        NetPair::ip(&["netns", "add", b]);
        NetPair::ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        NetPair::ip(&["link", "set", &va, "netns", a]);
        NetPair::ip(&["link", "set", &vb, "netns", b]);
        for (ns, dev, addr) in [(a, &va, 1), (b, &vb, 2)] {
            let cidr = format!("10.{net}.0.{addr}/24");
            NetPair::ip(&["-n", ns, "addr", "add", &cidr, "dev", dev]);
            NetPair::ip(&["-n", ns, "link", "set", dev, "up"]);
            NetPair::ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// `ip netns exec <ns> shoal <args>` as a guest process.
    fn shoal(&self, which: usize, args: &[&str]) -> GuestProcess {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[which]])
            .arg(shoal_binary().unwrap())
            .args(args);
        GuestProcess::spawn(cmd).unwrap()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[test]
fn live_migration_over_tcp_between_network_namespaces() {
    let dir = scratch("netns");
    let net = NetPair::new(77);
    let url = "tcp:10.77.0.2:4444";
    let mut dest = net.shoal(1, &["run", "--incoming", url]);
    let socket = dir.join("api.sock");
    let mut src = net.shoal(
        0,
        &[
            "run",
            "--kernel",
            &guest(),
            "--memory",
            "128M",
            "--cmdline",
            "scenario=checksum interval=100",
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    wait_for_socket(&socket);
    let before = src.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    // The destination listens in the other namespace; retry until it does.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (ok, out, err) = api(&socket, &["send-migration", url]);
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "send-migration failed:\n{out}\n{err}\n{}",
            dest.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        src.wait_for_exit(TIMEOUT).unwrap().success(),
        "{}",
        src.output()
    );
    let after = dest.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    assert_eq!(before.split(' ').next_back(), after.split(' ').next_back());
    assert!(dest.error_lines().is_empty(), "{}", dest.output());
}

/// A migration through a [`frame_proxy`]: both VMs, their API sockets
/// (the destination's if it has one) and the result of `send-migration`.
struct Faulted {
    src: GuestProcess,
    socket: PathBuf,
    dest: GuestProcess,
    dest_api: Option<PathBuf>,
    result: (bool, String, String),
}

/// A `dirty` source and a destination (with an API socket if `dest_api`)
/// behind a [`frame_proxy`] applying `trigger`; migrates.
fn migrate_through(name: &str, trigger: Trigger, dest_api: bool) -> Faulted {
    let dir = scratch(name);
    let dest_sock = dir.join("mig.sock");
    let api_sock = dir.join("dest-api.sock");
    let url = format!("unix:{}", dest_sock.display());
    let mut args = vec!["run", "--incoming", &url];
    if dest_api {
        args.extend(["--api-socket", api_sock.to_str().unwrap()]);
    }
    let dest = GuestProcess::shoal(&args).unwrap();
    wait_for_socket(&dest_sock);
    let (proxy, seen) = frame_proxy(&dir, dest_sock, dest.pid(), trigger).unwrap();
    // 4 MiB rewritten all the time: several page frames per pass, and the
    // guest checks every page it rewrites.
    let (mut src, socket) = source_vm(&dir, "scenario=dirty pages=1024 every=16");
    src.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    let result = api(&socket, &["send-migration", &proxy]);
    let seen = seen.join().unwrap();
    assert!(
        seen.contains(&HELLO),
        "the proxy forwarded no hello: {seen:?}"
    );
    Faulted {
        src,
        socket,
        dest,
        dest_api: dest_api.then_some(api_sock),
        result,
    }
}

/// [`migrate_through`] with a fault on a frame from the source, to a
/// destination without an API socket.
fn migrate_through_fault(
    name: &str,
    kind: u8,
    nth: u32,
    fault: Fault,
) -> (GuestProcess, PathBuf, GuestProcess, (bool, String, String)) {
    let f = migrate_through(name, Trigger::source(kind, nth, fault), false);
    (f.src, f.socket, f.dest, f.result)
}

/// The migration failed, the error says `why`, and the source VM runs on
/// with its memory intact.
fn assert_failed_and_source_runs(
    src: &mut GuestProcess,
    socket: &Path,
    (ok, out, err): &(bool, String, String),
    why: &str,
) {
    assert!(!ok, "the migration succeeded:\n{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(said.contains(why), "error does not say {why:?}:\n{said}");
    assert!(said.contains("the VM runs on here"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    // The guest goes on at the source: more passes, every page checked.
    src.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    src.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    let (ok, info, _) = api(socket, &["info"]);
    assert!(ok && info.contains("running"), "{info}");
    assert!(src.error_lines().is_empty(), "{}", src.output());
}

fn assert_killed(dest: &mut GuestProcess) {
    use std::os::unix::process::ExitStatusExt;
    let status = dest.wait_for_exit(TIMEOUT).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

/// The destination exited by itself with an error that says `why`.
fn assert_refused(dest: &mut GuestProcess, why: &str) {
    let status = dest.wait_for_exit(TIMEOUT).unwrap();
    assert!(!status.success(), "the destination succeeded");
    let stderr = dest.stderr();
    assert!(stderr.contains(why), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn destination_killed_during_pre_copy_leaves_the_source_running() {
    let (mut src, socket, mut dest, result) =
        migrate_through_fault("kill-precopy", PAGES, 3, Fault::KillDestination);
    assert_killed(&mut dest);
    assert_failed_and_source_runs(&mut src, &socket, &result, "migration failed");
}

#[test]
fn destination_killed_during_stop_and_copy_leaves_the_source_running() {
    // The state frame follows the last dirty pages: the source is paused.
    let (mut src, socket, mut dest, result) =
        migrate_through_fault("kill-stop", STATE, 1, Fault::KillDestination);
    assert_killed(&mut dest);
    assert_failed_and_source_runs(&mut src, &socket, &result, "migration failed");
}

#[test]
fn destination_killed_just_before_commit_leaves_the_source_running() {
    let (mut src, socket, mut dest, result) =
        migrate_through_fault("kill-commit", COMMIT, 1, Fault::KillDestination);
    assert_killed(&mut dest);
    assert_failed_and_source_runs(&mut src, &socket, &result, "migration failed");
}

#[test]
fn connection_cut_mid_stream_leaves_the_source_running() {
    let (mut src, socket, mut dest, result) = migrate_through_fault("cut", PAGES, 3, Fault::Cut);
    assert_refused(&mut dest, "connection closed");
    assert_failed_and_source_runs(&mut src, &socket, &result, "migration failed");
}

#[test]
fn corrupt_stream_is_refused_and_the_source_runs_on() {
    let (mut src, socket, mut dest, result) =
        migrate_through_fault("corrupt-pages", PAGES, 2, Fault::Corrupt);
    assert_refused(&mut dest, "checksum mismatch");
    // The destination's reason reaches the source.
    assert_failed_and_source_runs(&mut src, &socket, &result, "checksum mismatch");
}

#[test]
fn stream_of_another_version_is_refused_and_the_source_runs_on() {
    let (mut src, socket, mut dest, result) =
        migrate_through_fault("version", HELLO, 1, Fault::Version);
    assert_refused(&mut dest, "stream version 1 is not supported");
    assert_failed_and_source_runs(
        &mut src,
        &socket,
        &result,
        "stream version 1 is not supported",
    );
}

/// Waits until `vm`'s log (stderr) says `text`.
fn wait_for_log(vm: &GuestProcess, text: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !vm.stderr().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "the log does not say {text:?}:\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The number in a `SHOAL-TG dirty pass <p>` line.
fn dirty_pass(line: &str) -> Option<u64> {
    line.strip_prefix("SHOAL-TG dirty pass ")?.parse().ok()
}

/// The destination restored the VM and keeps it paused, saying why.
fn assert_kept_paused(dest: &GuestProcess, api_sock: &Path) {
    wait_for_log(dest, "kept paused");
    let info = info_state(api_sock);
    assert_eq!(info["state"], "paused", "{info}");
    let why = info["paused_reason"].as_str().unwrap_or_default();
    assert!(why.contains("did not confirm the commit"), "{info}");
    let hint = format!("shoal api --socket {} resume --force", api_sock.display());
    assert!(dest.stderr().contains(&hint), "{}", dest.stderr());
    assert!(
        dest.guest_lines().is_empty(),
        "the destination ran the guest:\n{}",
        dest.output()
    );
}

/// A plain `resume` of the paused destination is refused with a 409 that
/// says why and what to do; the VM stays paused.
fn assert_plain_resume_refused(dest: &GuestProcess, api_sock: &Path) {
    let (ok, out, err) = api(api_sock, &["resume"]);
    assert!(!ok, "a plain resume was accepted:\n{out}{err}");
    for needle in [
        "HTTP 409",
        "the source may still run the guest",
        "resume --force",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    let info = info_state(api_sock);
    assert_eq!(info["state"], "paused", "{info}");
    assert!(info["paused_reason"].is_string(), "{info}");
    assert!(
        dest.guest_lines().is_empty(),
        "the destination ran the guest:\n{}",
        dest.output()
    );
}

#[test]
fn commit_ack_lost_leaves_the_source_running_and_the_destination_paused() {
    let mut f = migrate_through("ack-lost", Trigger::ack_lost(), true);
    assert_failed_and_source_runs(&mut f.src, &f.socket, &f.result, "before committing");
    let api_sock = f.dest_api.unwrap();
    assert_kept_paused(&f.dest, &api_sock);
    assert_plain_resume_refused(&f.dest, &api_sock);
    // The source runs: the operator shuts the paused copy down.
    let (ok, out, err) = api(&api_sock, &["shutdown"]);
    assert!(ok, "{out}{err}");
    let status = f.dest.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{}", f.dest.output());
    assert!(
        f.dest.guest_lines().is_empty(),
        "the destination ran the guest:\n{}",
        f.dest.output()
    );
    // And the source goes on.
    f.src.wait_for_line("SHOAL-TG dirty pass", TIMEOUT).unwrap();
    assert!(f.src.error_lines().is_empty(), "{}", f.src.output());
}

#[test]
fn go_lost_leaves_a_paused_destination_that_resumes_the_guest_only_by_force() {
    let mut f = migrate_through("go-lost", Trigger::source(GO, 1, Fault::Cut), true);
    let (ok, out, err) = &f.result;
    assert!(ok, "the source did not commit:\n{out}\n{err}");
    let status = f.src.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{}", f.src.output());
    let last = f
        .src
        .guest_lines()
        .iter()
        .rev()
        .find_map(|l| dirty_pass(l))
        .unwrap();
    let api_sock = f.dest_api.unwrap();
    assert_kept_paused(&f.dest, &api_sock);
    let status = status_json(&api_sock);
    assert_eq!(status["state"], "unconfirmed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("did not confirm"),
        "{status}"
    );
    // The destination cannot tell that the source is gone: a plain resume
    // is refused.
    assert_plain_resume_refused(&f.dest, &api_sock);
    // The source exited: the paused VM is the only copy; resume it by force.
    let (ok, out, err) = api(&api_sock, &["resume", "--force"]);
    assert!(ok, "{out}{err}\n{}", f.dest.output());
    let first = loop {
        let line = f
            .dest
            .wait_for_line("SHOAL-TG dirty pass", TIMEOUT)
            .unwrap();
        if let Some(n) = dirty_pass(&line) {
            break n;
        }
    };
    assert!(first > last, "pass {first} does not continue after {last}");
    f.dest
        .wait_for_line("SHOAL-TG dirty pass", TIMEOUT)
        .unwrap();
    let info = info_state(&api_sock);
    assert_eq!(info["state"], "running", "{info}");
    assert!(info.get("paused_reason").is_none(), "{info}");
    // Every page the guest rewrote held what it wrote before, and it did
    // not boot again.
    assert!(f.dest.error_lines().is_empty(), "{}", f.dest.output());
    assert!(
        !f.dest.lines().iter().any(|l| l.contains("SHOAL-TG start")),
        "{}",
        f.dest.output()
    );
    assert!(api(&api_sock, &["shutdown"]).0);
    assert!(f.dest.wait_for_exit(TIMEOUT).unwrap().success());
}

#[test]
fn a_paused_destination_without_an_api_socket_says_it_cannot_be_resumed() {
    let mut f = migrate_through("ack-lost-no-api", Trigger::ack_lost(), false);
    assert_failed_and_source_runs(&mut f.src, &f.socket, &f.result, "before committing");
    wait_for_log(&f.dest, "has no --api-socket, so it cannot be resumed");
    // The operator stops it.
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(f.dest.pid() as i32, libc::SIGTERM) };
    f.dest.wait_for_exit(TIMEOUT).unwrap();
    assert!(
        f.dest.guest_lines().is_empty(),
        "the destination ran the guest:\n{}",
        f.dest.output()
    );
}

#[test]
fn incoming_on_a_busy_tcp_port_fails_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let url = format!("tcp:127.0.0.1:{port}");
    let mut dest = GuestProcess::shoal(&["run", "--incoming", &url]).unwrap();
    let status = dest.wait_for_exit(TIMEOUT).unwrap();
    assert!(!status.success());
    let stderr = dest.stderr();
    assert!(
        stderr.contains(&url) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `shoal run --api-socket PATH` with no VM: returns the process and its
/// socket once the API answers.
fn empty_vmm(dir: &Path) -> (GuestProcess, PathBuf) {
    let socket = dir.join("empty.sock");
    let vmm = GuestProcess::shoal(&["run", "--api-socket", socket.to_str().unwrap()]).unwrap();
    wait_for_socket(&socket);
    (vmm, socket)
}

fn info_state(socket: &Path) -> serde_json::Value {
    let (ok, out, err) = api(socket, &["info"]);
    assert!(ok, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_vmm_without_a_vm_restores_a_snapshot_through_the_api() {
    let dir = scratch("api-restore");
    let (mut vm, socket) = source_vm(&dir, "scenario=counter shift=12");
    next_count(&mut vm);
    let snap = dir.join("snap");
    assert!(api(&socket, &["snapshot", snap.to_str().unwrap()]).0);
    assert!(api(&socket, &["shutdown"]).0);
    vm.wait_for_exit(TIMEOUT).unwrap();
    let last = vm
        .guest_lines()
        .iter()
        .rev()
        .find_map(|l| counter(l))
        .unwrap();

    let (mut vmm, empty) = empty_vmm(&dir);
    assert_eq!(info_state(&empty)["state"], "not-created");
    // Nothing to pause yet; a bad snapshot is refused and the VMM waits on.
    let (ok, _, err) = api(&empty, &["pause"]);
    assert!(!ok && err.contains("no VM yet"), "{err}");
    let missing = dir.join("missing");
    let (ok, _, err) = api(&empty, &["restore", missing.to_str().unwrap()]);
    assert!(!ok && err.contains("missing"), "{err}");
    let info = info_state(&empty);
    assert_eq!(info["state"], "not-created");
    assert!(
        info["error"].as_str().unwrap().contains("missing"),
        "{info}"
    );

    let (ok, out, err) = api(&empty, &["restore", snap.to_str().unwrap()]);
    assert!(ok, "{out}{err}\n{}", vmm.output());
    let first = next_count(&mut vmm);
    assert!(
        first > last,
        "restored counter {first} does not continue after {last}"
    );
    assert_eq!(info_state(&empty)["state"], "running");
    // One VM per VMM.
    let (ok, _, err) = api(&empty, &["restore", snap.to_str().unwrap()]);
    assert!(!ok && err.contains("already runs a VM"), "{err}");
    assert!(api(&empty, &["shutdown"]).0);
    assert!(
        vmm.wait_for_exit(TIMEOUT).unwrap().success(),
        "{}",
        vmm.output()
    );
}

#[test]
fn a_vmm_without_a_vm_receives_a_migration_through_the_api() {
    let dir = scratch("api-receive");
    let (mut dest, empty) = empty_vmm(&dir);
    let url = format!("unix:{}", dir.join("in.sock").display());

    // A stream that is not a migration fails the receive; the VMM waits on.
    let (ok, out, err) = api(&empty, &["receive-migration", &url]);
    assert!(ok, "{out}{err}");
    assert_eq!(info_state(&empty)["state"], "receiving");
    let (ok, _, err) = api(&empty, &["receive-migration", &url]);
    assert!(!ok && err.contains("already receiving"), "{err}");
    {
        use std::io::Write;
        let mut junk = std::os::unix::net::UnixStream::connect(dir.join("in.sock")).unwrap();
        let _ = junk.write_all(&[0x5a; 64]);
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    let info = loop {
        let info = info_state(&empty);
        if info["state"] == "not-created" {
            break info;
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(info["error"].is_string(), "{info}");
    let failed = status_json(&empty);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["error"].is_string(), "{failed}");

    // A real migration then arrives and runs here.
    let (ok, out, err) = api(&empty, &["receive-migration", &url]);
    assert!(ok, "{out}{err}");
    assert_eq!(status_json(&empty)["state"], "listening");
    let (mut src, socket) = source_vm(&dir, "scenario=checksum interval=100");
    let before = src.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    let (ok, out, err) = api(&socket, &["send-migration", &url]);
    assert!(ok, "send-migration failed:\n{out}\n{err}\n{}", src.output());
    assert!(
        src.wait_for_exit(TIMEOUT).unwrap().success(),
        "{}",
        src.output()
    );
    let after = dest.wait_for_line("SHOAL-TG ramsum", TIMEOUT).unwrap();
    assert_eq!(
        before.split(' ').next_back(),
        after.split(' ').next_back(),
        "RAM checksum changed: {before} -> {after}"
    );
    assert_eq!(info_state(&empty)["state"], "running");
    let arrived = status_json(&empty);
    assert_eq!(arrived["state"], "received", "{arrived}");
    assert_eq!(arrived.get("error"), None, "{arrived}");
    assert!(api(&empty, &["shutdown"]).0);
    assert!(
        dest.wait_for_exit(TIMEOUT).unwrap().success(),
        "{}",
        dest.output()
    );
}
