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
        Group::start_at(&dir.join("group.sock"), name, vectors)
    }

    fn start_at(socket: &std::path::Path, name: &str, vectors: u32) -> Group {
        let socket = socket.to_path_buf();
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

fn group_vm(socket: &std::path::Path, cmdline: &str) -> GuestProcess {
    let group = format!("socket={}", socket.display());
    GuestProcess::boot_test_guest(cmdline, &["--memory", "128M", "--shmem-group", &group]).unwrap()
}

/// [`group_vm`] with the VMM logging at info level, so that its exit line
/// `... N doorbell write(s) reached the VMM ...` can be read.
fn group_vm_logged(socket: &std::path::Path, cmdline: &str) -> GuestProcess {
    let mut command = std::process::Command::new(shoal_tests::shoal_binary().unwrap());
    command
        .env("SHOAL_LOG", "info")
        .args(["run", "--kernel"])
        .arg(shoal_tests::test_guest_path())
        .args(["--cmdline", cmdline, "--serial", "stdout", "--no-reboot"])
        .args(["--memory", "128M", "--shmem-group"])
        .arg(format!("socket={}", socket.display()));
    GuestProcess::spawn(command).unwrap()
}

/// The count a VMM logged when it left its group: doorbell writes that
/// took the VMM's slow path instead of a KVM ioeventfd.
/// Call after the VMM exited.
fn doorbells_in_vmm(vm: &GuestProcess) -> u64 {
    let stderr = vm.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("doorbell write(s) reached the VMM"))
        .unwrap_or_else(|| panic!("no doorbell count logged\n{}", vm.output()));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "doorbell").unwrap();
    words[at - 1].parse().unwrap()
}

/// The peer id a VM printed on its `SHOAL-TG shm id <n> ...` line.
fn shm_id(vm: &mut GuestProcess) -> u16 {
    let line = vm.wait_for_line("SHOAL-TG shm id ", TIMEOUT).unwrap();
    line.split(' ').nth(3).unwrap().parse().unwrap()
}

#[test]
fn vm_and_host_peer_share_bytes_and_doorbells_both_ways() {
    let group = Group::start("vm-host", 1);
    let mut host = Peer::connect(&group.socket).unwrap();
    // The VM writes one word and waits for the host's, rings the host and
    // waits for the host's doorbell.
    let cmdline = format!(
        "scenario=shm op=info,write,await,ring,wait \
         write.offset=0x100000 write.pattern=0x5a5a1111 \
         await.offset=0x100100 await.pattern=0xa5a52222 \
         ring.peer={} wait.count=1",
        host.id()
    );
    let mut vm = group_vm(&group.socket, &cmdline);
    let vm_id = shm_id(&mut vm);
    wait_for_join(&mut host, Some(vm_id));
    vm.wait_for_line("SHOAL-TG shm wrote 0x100000 0x5a5a1111", TIMEOUT)
        .unwrap();
    let mut word = [0u8; 8];
    host.mapping().read(0x100000, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x5a5a_1111);
    host.mapping()
        .write(0x100100, &0xa5a5_2222u64.to_le_bytes())
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm saw 0x100100 0xa5a52222", TIMEOUT)
        .unwrap();
    // The guest's doorbell reaches the host peer (through the kernel).
    assert!(
        host.wait(0, Some(TIMEOUT)).unwrap() >= 1,
        "no doorbell from the VM\n{}",
        vm.output()
    );
    vm.wait_for_line("SHOAL-TG shm ready", TIMEOUT).unwrap();
    host.ring(vm_id, 0).unwrap();
    vm.wait_for_line("SHOAL-TG shm irq vector 0", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm wait done 1", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

#[test]
fn two_vms_ping_pong_a_thousand_doorbells() {
    const ROUNDS: u32 = 1000;
    let group = Group::start("pingpong", 1);
    let mut responder = group_vm_logged(
        &group.socket,
        &format!("scenario=shm op=info,pingpong role=responder peer=1 count={ROUNDS}"),
    );
    assert_eq!(shm_id(&mut responder), 0);
    responder
        .wait_for_line("SHOAL-TG shm ready", TIMEOUT)
        .unwrap();
    let mut initiator = group_vm_logged(
        &group.socket,
        &format!("scenario=shm op=info,pingpong role=initiator peer=0 count={ROUNDS}"),
    );
    assert_eq!(shm_id(&mut initiator), 1);
    let want = format!("SHOAL-TG shm pingpong done {ROUNDS} sent {ROUNDS} received {ROUNDS}");
    let long = Duration::from_secs(120);
    initiator.wait_for_line(&want, long).unwrap();
    responder.wait_for_line(&want, long).unwrap();
    assert!(initiator.error_lines().is_empty(), "{}", initiator.output());
    assert!(responder.error_lines().is_empty(), "{}", responder.output());
    // The doorbells went kernel to kernel: at most the initiator's first
    // rings, sent before its VMM had registered the responder's
    // ioeventfd, reached a VMM.
    for vm in [&mut initiator, &mut responder] {
        vm.wait_for_exit(TIMEOUT).unwrap();
        let slow = doorbells_in_vmm(vm);
        assert!(
            slow <= 2,
            "{slow} of {ROUNDS} doorbells took the slow path\n{}",
            vm.output()
        );
    }
}

#[test]
fn killed_vm_is_marked_dead_and_a_new_member_gets_a_fresh_id() {
    let group = Group::start("kill", 1);
    let mut host = Peer::connect(&group.socket).unwrap();
    let mut vm = group_vm(&group.socket, "scenario=shm op=info,wait wait.count=1000");
    let id = shm_id(&mut vm);
    wait_for_join(&mut host, Some(id));
    // kill -9 the VMM.
    // SAFETY: sends a signal to our own child process; no memory is involved.
    unsafe { libc::kill(vm.pid() as i32, libc::SIGKILL) };
    vm.wait_for_exit(TIMEOUT).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let region = host.region().unwrap();
        let state = region.peer(id).and_then(|p| p.state).map(|s| s.name());
        if state == Some("dead") {
            break;
        }
        assert!(Instant::now() < deadline, "peer {id} still {state:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The others keep working: a new VM joins with a fresh id and rings us.
    let cmdline = format!("scenario=shm op=info,ring ring.peer={}", host.id());
    let mut next = group_vm(&group.socket, &cmdline);
    let new_id = shm_id(&mut next);
    assert_ne!(new_id, id);
    assert!(host.wait(0, Some(TIMEOUT)).unwrap() >= 1);
    next.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    // `shoal group status` shows the dead and the new member.
    let status = std::process::Command::new(shoal_tests::shoal_binary().unwrap())
        .args(["group", "status", "--socket"])
        .arg(&group.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("dead"), "{text}");
}

#[test]
fn vms_keep_working_and_their_ids_across_a_server_restart() {
    let group = Group::start("restart", 1);
    let socket = group.socket.clone();
    let mut host = Peer::connect(&socket).unwrap();
    let host_id = host.id();
    // The VM takes one doorbell before and one after the restart, then
    // waits for a word the test writes only once it has seen the VM back
    // in the new server (so the VM cannot finish before it reconnects).
    let mut vm = group_vm(
        &socket,
        "scenario=shm op=info,wait,await wait.count=2 await.offset=0x100000 await.pattern=2",
    );
    let vm_id = shm_id(&mut vm);
    wait_for_join(&mut host, Some(vm_id));
    vm.wait_for_line("SHOAL-TG shm ready", TIMEOUT).unwrap();
    host.ring(vm_id, 0).unwrap();
    vm.wait_for_line("SHOAL-TG shm irq vector 0", TIMEOUT)
        .unwrap();

    // Restart the server on the same socket.
    drop(group);
    let restarted = Group::start_at(&socket, "restart", 1);
    host.reconnect().unwrap();
    assert_eq!(host.id(), host_id);
    // The VM's doorbells still work, whether or not its VMM is back yet.
    host.ring(vm_id, 0).unwrap();
    vm.wait_for_line("SHOAL-TG shm wait done 2", TIMEOUT)
        .unwrap();
    // The VM's VMM reconnects to the new server with its id.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = shmem_group::client::query_status(&socket, TIMEOUT).unwrap();
        let member = status.members.iter().find(|m| m.id == vm_id);
        if member.is_some_and(|m| m.connected && m.state == "alive") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VM {vm_id} did not reconnect: {member:?}\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And its mapping still is the group's region.
    host.mapping().write(0x100000, &2u64.to_le_bytes()).unwrap();
    vm.wait_for_line("SHOAL-TG shm saw 0x100000 0x2", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    drop(restarted);
}

/// Lockstep rounds with a VM running `op=exchange role=responder`: the host
/// publishes seq n in its slot and rings, then waits for the VM's seq n (and
/// data word) and its doorbell. Returns (rounds, doorbells received).
struct Exchange {
    base: usize,
    rounds: u64,
    received: u64,
}

const EXCHANGE_SALT: u64 = 0x5348_4f41_4c58_4348;

impl Exchange {
    /// No rounds yet; slots follow the stop word at `base`.
    fn new(base: usize) -> Exchange {
        Exchange {
            base,
            rounds: 0,
            received: 0,
        }
    }

    fn slot(&self, id: u16) -> usize {
        self.base + 64 + 64 * usize::from(id)
    }

    fn read(host: &Peer, at: usize) -> u64 {
        let mut w = [0u8; 8];
        host.mapping().read(at, &mut w).unwrap();
        u64::from_le_bytes(w)
    }

    /// Writes our data word for `seq`, then `seq` itself, and rings `peer`.
    fn publish(&self, host: &Peer, seq: u64, peer: u16) {
        let me = self.slot(host.id());
        let data = seq ^ EXCHANGE_SALT ^ u64::from(host.id());
        host.mapping().write(me + 8, &data.to_le_bytes()).unwrap();
        host.mapping().write(me, &seq.to_le_bytes()).unwrap();
        host.ring(peer, 0).unwrap();
    }

    /// Waits until `peer` published `seq` and its `seq`-th doorbell came,
    /// and checks its data word.
    fn await_peer(&mut self, host: &Peer, seq: u64, peer: u16) {
        let deadline = Instant::now() + TIMEOUT;
        while Exchange::read(host, self.slot(peer)) < seq || self.received < seq {
            assert!(Instant::now() < deadline, "round {seq} stalled");
            self.received += host.wait(0, Some(Duration::from_millis(20))).unwrap();
        }
        let data = Exchange::read(host, self.slot(peer) + 8);
        assert_eq!(
            data,
            seq ^ EXCHANGE_SALT ^ u64::from(peer),
            "round {seq}: lost write"
        );
    }

    /// One round as the initiator towards `vm` (`role=responder` there).
    fn round(&mut self, host: &Peer, vm: u16) {
        let seq = self.rounds + 1;
        self.publish(host, seq, vm);
        self.await_peer(host, seq, vm);
        self.rounds = seq;
    }

    /// One round as the responder to `initiator` (`role=initiator` in a
    /// VM): waits for its seq n and its n-th doorbell, checks its data
    /// word, publishes seq n and rings back.
    fn respond(&mut self, host: &Peer, initiator: u16) {
        let seq = self.rounds + 1;
        self.await_peer(host, seq, initiator);
        self.publish(host, seq, initiator);
        self.rounds = seq;
        if seq == 1 {
            // Round 1 re-rings, uncounted, until every peer knows every
            // other: count doorbells from round 2 on.
            self.received = 1;
        }
    }
}

/// The state-table state of peer `id` as `host` reads it.
fn peer_state(host: &Peer, id: u16) -> Option<&'static str> {
    host.region()
        .unwrap()
        .peer(id)
        .and_then(|p| p.state)
        .map(|s| s.name())
}

/// Appends the membership events of peer `id` that `host` (watching)
/// received since the last call.
fn collect_events(host: &mut Peer, id: u16, events: &mut Vec<shmem_group::ext::EventKind>) {
    for e in host.poll_events().unwrap() {
        if let Membership::Event(e) = e {
            if e.id == id {
                events.push(e.kind);
            }
        }
    }
}

/// Sets the exchange's stop word and rings `peers`.
fn stop_exchange(host: &Peer, base: usize, peers: &[u16]) {
    host.mapping().write(base, &1u64.to_le_bytes()).unwrap();
    for &p in peers {
        host.ring(p, 0).unwrap();
    }
}

/// Waits for `vm`'s end of the exchange: it never had to ring twice (no
/// doorbell lost) and printed no error.
fn assert_exchange_clean(vm: &mut GuestProcess) {
    let done = vm
        .wait_for_line("SHOAL-TG shm exchange done", TIMEOUT)
        .unwrap();
    assert!(done.ends_with("rerings 0"), "doorbells were lost: {done}");
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

/// A destination (`--incoming`) and a group member to migrate to it,
/// with an API socket, in `group`'s directory.
struct Move {
    mig: PathBuf,
    api: PathBuf,
    dest_api: PathBuf,
    dest: GuestProcess,
    src: GuestProcess,
}

impl Move {
    fn start(group: &Group, cmdline: &str) -> Move {
        let dir = group.socket.parent().unwrap().to_path_buf();
        let (mig, api) = (dir.join("mig.sock"), dir.join("api.sock"));
        let dest_api = dir.join("dest-api.sock");
        let dest = GuestProcess::shoal(&[
            "run",
            "--incoming",
            &format!("unix:{}", mig.display()),
            "--api-socket",
            dest_api.to_str().unwrap(),
        ])
        .unwrap();
        let src = GuestProcess::shoal(&[
            "run",
            "--kernel",
            shoal_tests::test_guest_path().to_str().unwrap(),
            "--memory",
            "128M",
            "--cmdline",
            cmdline,
            "--shmem-group",
            &format!("socket={}", group.socket.display()),
            "--api-socket",
            api.to_str().unwrap(),
        ])
        .unwrap();
        Move {
            mig,
            api,
            dest_api,
            dest,
            src,
        }
    }

    /// Waits until the destination listens.
    fn wait_for_destination(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.mig.exists() {
            assert!(Instant::now() < deadline, "the destination does not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `send-migration` on a thread (once the destination listens);
    /// `work` is called until it returns, then until the source VMM has
    /// exited (it lingers a little to answer status requests, and a
    /// silent peer would make the member re-ring, which the tests count
    /// as a lost doorbell).
    fn migrate_while(&mut self, mut work: impl FnMut()) {
        let deadline = Instant::now() + TIMEOUT;
        self.wait_for_destination();
        let shoal = shoal_tests::shoal_binary().unwrap();
        let (api, url) = (self.api.clone(), format!("unix:{}", self.mig.display()));
        let migrate = std::thread::spawn(move || {
            std::process::Command::new(shoal)
                .args(["api", "--socket"])
                .arg(&api)
                .args(["send-migration", &url])
                .output()
                .unwrap()
        });
        while !migrate.is_finished() {
            work();
        }
        let out = migrate.join().unwrap();
        assert!(
            out.status.success(),
            "migration failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let status = loop {
            work();
            if let Ok(status) = self.src.wait_for_exit(Duration::from_millis(1)) {
                break status;
            }
            assert!(Instant::now() < deadline, "the source VMM did not exit");
        };
        assert!(status.success(), "{}", self.src.output());
    }
}

#[test]
fn a_group_member_migrates_while_a_host_peer_and_another_vm_exchange_with_it() {
    let group = Group::start("migrate-star", 1);
    let mut host = Peer::connect(&group.socket).unwrap();
    host.watch().unwrap();
    let base = host.data_offset() as usize;
    // Ids go to the lowest free slot: the host has one, the migrating
    // member boots next, the other VM after it.
    let (member, other) = (host.id() + 1, host.id() + 2);
    let mut mv = Move::start(
        &group,
        &format!(
            "scenario=shm op=info,exchange role=initiator peer={},{other} every=16 rering=2",
            host.id()
        ),
    );
    assert_eq!(shm_id(&mut mv.src), member, "the member got another id");
    wait_for_join(&mut host, Some(member));
    let mut vm2 = group_vm(
        &group.socket,
        &format!("scenario=shm op=info,exchange role=responder peer={member} every=16 rering=2"),
    );
    assert_eq!(shm_id(&mut vm2), other, "the other VM got another id");
    let mut ex = Exchange::new(base);
    for _ in 0..30 {
        ex.respond(&host, member);
    }
    vm2.wait_for_line("SHOAL-TG shm exchange 16", TIMEOUT)
        .unwrap();
    // Migrate while both keep exchanging, watching the member's state.
    let mut events = Vec::new();
    let mut step = |host: &mut Peer, ex: &mut Exchange| {
        ex.respond(host, member);
        collect_events(host, member, &mut events);
    };
    mv.migrate_while(|| step(&mut host, &mut ex));
    for _ in 0..30 {
        step(&mut host, &mut ex);
    }
    // The state table went to `migrating` and back to the same id.
    use shmem_group::ext::EventKind;
    assert_eq!(
        events,
        vec![EventKind::Migrating, EventKind::Resumed],
        "membership events of the member"
    );
    assert_eq!(peer_state(&host, member), Some("alive"));
    // Stop: every side checked every round; nobody had to ring twice.
    stop_exchange(&host, base, &[member, other]);
    assert_exchange_clean(&mut mv.dest);
    assert_exchange_clean(&mut vm2);
    assert!(ex.received >= ex.rounds, "the host lost doorbells");
}

/// A group, a host peer (subscribed to membership events with `watch`) and a
/// member to migrate that answers the host's exchange rounds, ready for the
/// first round: (group, host, move, member id, exchange).
fn responder_member(name: &str, watch: bool) -> (Group, Peer, Move, u16, Exchange) {
    let group = Group::start(name, 1);
    let mut host = Peer::connect(&group.socket).unwrap();
    if watch {
        host.watch().unwrap();
    }
    let base = host.data_offset() as usize;
    let mut mv = Move::start(
        &group,
        &format!(
            "scenario=shm op=info,exchange role=responder peer={} every=16 rering=2",
            host.id()
        ),
    );
    let vm = shm_id(&mut mv.src);
    wait_for_join(&mut host, Some(vm));
    mv.src.wait_for_line("SHOAL-TG shm ready", TIMEOUT).unwrap();
    (group, host, mv, vm, Exchange::new(base))
}

#[test]
fn a_group_member_migrates_while_exchanging_with_a_host_peer() {
    let (_group, host, mut mv, vm, mut ex) = responder_member("migrate", false);
    let base = ex.base;
    for _ in 0..50 {
        ex.round(&host, vm);
    }
    // Migrate while the host keeps exchanging.
    mv.migrate_while(|| ex.round(&host, vm));
    for _ in 0..50 {
        ex.round(&host, vm);
    }
    // The destination holds the same peer id, and nothing was lost.
    assert_eq!(peer_state(&host, vm), Some("alive"));
    stop_exchange(&host, base, &[vm]);
    assert_exchange_clean(&mut mv.dest);
    assert_eq!(ex.received, ex.rounds, "the host lost doorbells");
}

/// Waits until `vm`'s log (stderr) says `text`.
fn wait_for_log(vm: &GuestProcess, text: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !vm.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in:\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `shoal api --socket <socket> <args>`: (success, stdout + stderr).
fn api(socket: &std::path::Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = shoal_tests::shoal_api(socket, args).unwrap();
    (ok, format!("{out}{err}"))
}

#[test]
fn a_member_whose_commit_ack_is_lost_keeps_its_id_and_doorbells_at_the_source() {
    use shoal_tests::frame_proxy::{frame_proxy, Trigger};
    let (group, mut host, mut mv, vm, mut ex) = responder_member("ack-lost", true);
    let base = ex.base;
    // Rounds also collect the member's membership events.
    let mut events = Vec::new();
    let mut step = |host: &mut Peer, ex: &mut Exchange| {
        ex.round(host, vm);
        collect_events(host, vm, &mut events);
    };
    for _ in 0..50 {
        step(&mut host, &mut ex);
    }
    // The destination takes the membership over when it restores the
    // state, before its acknowledgement is lost.
    mv.wait_for_destination();
    let dir = group.socket.parent().unwrap();
    let trigger = Trigger::ack_lost();
    let (proxy, seen) = frame_proxy(dir, mv.mig.clone(), mv.dest.pid(), trigger).unwrap();
    let migrate = {
        let api_sock = mv.api.clone();
        std::thread::spawn(move || api(&api_sock, &["send-migration", &proxy]))
    };
    // The host keeps exchanging; rounds while the source is paused wait
    // for it to resume.
    while !migrate.is_finished() {
        step(&mut host, &mut ex);
    }
    let (ok, said) = migrate.join().unwrap();
    assert!(!ok, "the migration succeeded:\n{said}");
    assert!(said.contains("the VM runs on here"), "{said}");
    seen.join().unwrap();
    // The destination waits, paused, with the membership it took over.
    wait_for_log(&mv.dest, "kept paused");
    let (ok, info) = api(&mv.dest_api, &["info"]);
    assert!(ok && info.contains("\"paused\""), "{info}");
    // The source took its membership back: same id, doorbells both ways.
    for _ in 0..50 {
        step(&mut host, &mut ex);
    }
    assert_eq!(peer_state(&host, vm), Some("alive"));
    // The destination saw its connection closed, and the group server says
    // the source holds the id: even a forced resume is refused, and the
    // paused copy leaves the membership alone.
    wait_for_log(&mv.dest, "closed the membership of this VM");
    let (ok, said) = api(&mv.dest_api, &["resume", "--force"]);
    assert!(!ok, "a forced resume was accepted:\n{said}");
    let held = format!(
        "peer {vm} of group ack-lost is held by another process (pid {})",
        mv.src.pid()
    );
    assert!(said.contains("HTTP 409") && said.contains(&held), "{said}");
    let (ok, info) = api(&mv.dest_api, &["info"]);
    assert!(ok && info.contains("\"paused\""), "{info}");
    for _ in 0..50 {
        step(&mut host, &mut ex);
    }
    assert_eq!(peer_state(&host, vm), Some("alive"));
    // The operator shuts the paused copy down; the member is not affected.
    let (ok, said) = api(&mv.dest_api, &["shutdown"]);
    assert!(ok, "{said}");
    let status = mv.dest.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{}", mv.dest.output());
    for _ in 0..50 {
        step(&mut host, &mut ex);
    }
    assert_eq!(peer_state(&host, vm), Some("alive"));
    // Taken over by the destination, taken back by the source, once each:
    // the paused destination did not fight for it.
    use shmem_group::ext::EventKind;
    assert_eq!(
        events,
        vec![EventKind::Migrating, EventKind::Resumed, EventKind::Resumed],
        "membership events of the member"
    );
    assert!(mv.dest.guest_lines().is_empty(), "{}", mv.dest.output());
    stop_exchange(&host, base, &[vm]);
    assert_exchange_clean(&mut mv.src);
    assert_eq!(ex.received, ex.rounds, "the host lost doorbells");
}

#[test]
fn a_member_whose_go_is_lost_resumes_by_force_with_its_id_and_doorbells() {
    use shoal_tests::frame_proxy::{frame_proxy, Fault, Trigger, GO};
    let (group, host, mut mv, vm, mut ex) = responder_member("go-lost", false);
    let base = ex.base;
    for _ in 0..50 {
        ex.round(&host, vm);
    }
    // The source commits and exits; its go never reaches the destination,
    // which took the membership over and keeps it, paused.
    mv.wait_for_destination();
    let dir = group.socket.parent().unwrap();
    let trigger = Trigger::source(GO, 1, Fault::Cut);
    let (proxy, seen) = frame_proxy(dir, mv.mig.clone(), mv.dest.pid(), trigger).unwrap();
    let (ok, said) = api(&mv.api, &["send-migration", &proxy]);
    assert!(ok, "the source did not commit:\n{said}");
    seen.join().unwrap();
    wait_for_log(&mv.dest, "kept paused");
    let (ok, said) = api(&mv.dest_api, &["resume"]);
    assert!(!ok && said.contains("HTTP 409"), "{said}");
    // This VMM's connection holds the id: a forced resume runs the guest.
    let (ok, said) = api(&mv.dest_api, &["resume", "--force"]);
    assert!(ok, "{said}\n{}", mv.dest.output());
    for _ in 0..50 {
        ex.round(&host, vm);
    }
    assert_eq!(peer_state(&host, vm), Some("alive"));
    assert!(mv.src.wait_for_exit(TIMEOUT).unwrap().success());
    // The guest waited paused for the operator, longer than it waits
    // before ringing again: re-rings are expected, lost writes are not.
    stop_exchange(&host, base, &[vm]);
    mv.dest
        .wait_for_line("SHOAL-TG shm exchange done", TIMEOUT)
        .unwrap();
    assert!(mv.dest.error_lines().is_empty(), "{}", mv.dest.output());
    assert!(ex.received >= ex.rounds, "the host lost doorbells");
}
