// SPDX-License-Identifier: Apache-2.0
//! The test guest's `shm` scenario against QEMU's ivshmem devices:
//! `ivshmem-plain` on a file, and `ivshmem-doorbell` joined to a Shoal
//! group server (in this process, `shmem_group::Server`) next to a host
//! peer (`shmem_group::Peer`) and, for interop, a `shoal run` VM.
//!
//! QEMU runs `-machine q35 -accel tcg` (SeaBIOS assigns the BARs; under
//! KVM's instruction emulator SeaBIOS alone takes seconds). q35's FADT has
//! no sleep register, so the guest leaves through the reset register and
//! `-no-reboot`: only lines before `SHOAL-TG done` are checked for errors.

// Test helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shmem_group::server::Stopper;
use shmem_group::{Peer, PeerOptions, Server, ServerConfig};
use shoal_tests::{test_guest_path, GuestProcess, GUEST_DONE, GUEST_ERROR};

const TIMEOUT: Duration = Duration::from_secs(60);
const REGION: u64 = 4 << 20;

fn qemu() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")
        })
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shoal-shm-qemu-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A group server running on a thread, stopped on drop.
struct Group {
    socket: PathBuf,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl Group {
    fn start(socket: PathBuf, vectors: u32) -> Self {
        let mut config = ServerConfig::new("qemu", &socket, REGION);
        config.vectors = vectors;
        let mut server = Server::new(config).unwrap();
        let stopper = server.stopper().unwrap();
        let thread = thread::spawn(move || {
            server.run().unwrap();
        });
        Group {
            socket,
            stopper,
            thread: Some(thread),
        }
    }

    fn host_peer(&self) -> Peer {
        Peer::connect_with(&self.socket, PeerOptions::default()).unwrap()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A zeroed region file, open for reading and writing.
fn region_file(path: &Path) -> fs::File {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.set_len(REGION).unwrap();
    file
}

fn q35(cmdline: &str) -> Command {
    let mut command = Command::new(qemu());
    command
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "qemu64,pni=off"])
        .args(["-smp", "1", "-m", "128"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(test_guest_path())
        .args(["-append", cmdline]);
    command
}

fn with_plain(mut command: Command, file: &Path) -> Command {
    command.args([
        "-object",
        &format!(
            "memory-backend-file,id=m,share=on,mem-path={},size={REGION}",
            file.display()
        ),
        "-device",
        "ivshmem-plain,memdev=m",
    ]);
    command
}

fn with_doorbell(mut command: Command, socket: &Path, vectors: u32) -> Command {
    command.args([
        "-chardev",
        &format!("socket,path={},id=c", socket.display()),
        "-device",
        &format!("ivshmem-doorbell,chardev=c,vectors={vectors}"),
    ]);
    command
}

/// Waits for `done`, then for the exit, and checks no error line came first.
fn finish(vm: &mut GuestProcess) {
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    vm.wait_for_exit(TIMEOUT).unwrap();
    let errors: Vec<&str> = vm
        .guest_lines()
        .into_iter()
        .take_while(|l| *l != GUEST_DONE)
        .filter(|l| l.starts_with(GUEST_ERROR))
        .collect();
    assert!(errors.is_empty(), "{}", vm.output());
}

/// The number after `key ` in `line`.
fn field(line: &str, key: &str) -> u64 {
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == key)
        .and_then(|_| words.next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
}

#[test]
fn plain_region_carries_bytes_both_ways() {
    let scratch = Scratch::new("plain");
    let file = scratch.path("region");
    let region = region_file(&file);
    region
        .write_all_at(&0x1122_3344_5566_7788u64.to_le_bytes(), 0x2000)
        .unwrap();
    let command = with_plain(
        q35("scenario=shm op=info,read,write offset=0x2000 pattern=0xfeedface00c0ffee"),
        &file,
    );
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG shm read 0x2000 0x1122334455667788", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm wrote 0x2000 0xfeedface00c0ffee", TIMEOUT)
        .unwrap();
    finish(&mut vm);
    let mut word = [0u8; 8];
    region.read_exact_at(&mut word, 0x2000).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0xfeed_face_00c0_ffee);
}

#[test]
fn plain_info_reports_size_and_bars() {
    let scratch = Scratch::new("info");
    let file = scratch.path("region");
    region_file(&file);
    let mut vm = GuestProcess::spawn(with_plain(q35("scenario=shm op=info"), &file)).unwrap();
    let info = vm.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "size"), REGION, "{info}");
    assert_eq!(field(&info, "vectors"), 1, "{info}");
    vm.wait_for_line("SHOAL-TG shm bar 0 ", TIMEOUT).unwrap();
    let bar2 = vm.wait_for_line("SHOAL-TG shm bar 2 ", TIMEOUT).unwrap();
    assert!(bar2.ends_with(" 0x400000 vmm"), "{bar2}");
    vm.wait_for_line("SHOAL-TG shm data-offset 0", TIMEOUT)
        .unwrap();
    finish(&mut vm);
}

/// The guest clears the BARs and assigns them itself: BAR2 lands in the
/// 64-bit window at 4 GiB (128 MiB of RAM), which it maps on demand.
#[test]
fn plain_bars_assigned_by_the_guest_reach_above_4gib() {
    let scratch = Scratch::new("assign");
    let file = scratch.path("region");
    let region = region_file(&file);
    region
        .write_all_at(&0xa5a5_0000_5a5au64.to_le_bytes(), 0x3ff8)
        .unwrap();
    let command = with_plain(
        q35("scenario=shm bars=guest op=info,read,write offset=0x3ff8 pattern=0x77"),
        &file,
    );
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line("SHOAL-TG shm bar 2 0x100000000 0x400000 guest", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm read 0x3ff8 0xa5a500005a5a", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm wrote 0x3ff8 0x77", TIMEOUT)
        .unwrap();
    finish(&mut vm);
    let mut word = [0u8; 8];
    region.read_exact_at(&mut word, 0x3ff8).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x77);
}

/// Collects membership events until `id` has joined.
fn wait_joined(peer: &mut Peer, id: u16) {
    let deadline = Instant::now() + TIMEOUT;
    while !peer.peers().contains(&id) {
        assert!(Instant::now() < deadline, "peer {id} never joined");
        peer.poll_events().unwrap();
        thread::sleep(Duration::from_millis(5));
    }
}

/// A QEMU guest and a host peer in one group: the guest sees the group
/// header, each side reads what the other wrote, and doorbells arrive in
/// both directions on the vector they were sent to.
#[test]
fn doorbell_guest_and_host_peer_exchange_data_and_interrupts() {
    let scratch = Scratch::new("host-peer");
    let group = Group::start(scratch.path("g.sock"), 2);
    let mut host = group.host_peer();
    let data = host.data_offset();
    let guest_word = data + 0x100;
    let host_word = data + 0x200;
    let cmdline = format!(
        "scenario=shm op=info,write,wait,ring,await timeout=30 \
         write.offset={guest_word:#x} write.pattern=0x6775657374 count=1 \
         peer={} vector=0 await.offset={host_word:#x} await.pattern=0x686f7374",
        host.id()
    );
    let command = with_doorbell(q35(&cmdline), &group.socket, 2);
    let mut vm = GuestProcess::spawn(command).unwrap();
    let info = vm.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    let guest_id = u16::try_from(field(&info, "id")).unwrap();
    assert_ne!(guest_id, host.id());
    assert_eq!(field(&info, "vectors"), 2, "{info}");
    assert_eq!(field(&info, "size"), REGION, "{info}");
    vm.wait_for_line(&format!("SHOAL-TG shm data-offset {data}"), TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm wrote", TIMEOUT).unwrap();
    let mut word = [0u8; 8];
    host.mapping().read(guest_word as usize, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x67_7565_7374);

    vm.wait_for_line("SHOAL-TG shm ready msix 2", TIMEOUT)
        .unwrap();
    wait_joined(&mut host, guest_id);
    host.ring(guest_id, 1).unwrap();
    vm.wait_for_line("SHOAL-TG shm irq vector 1", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm wait done 1", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG shm rang", TIMEOUT).unwrap();
    assert!(host.wait(0, Some(TIMEOUT)).unwrap() >= 1);

    host.mapping()
        .write(host_word as usize, &0x686f_7374u64.to_le_bytes())
        .unwrap();
    vm.wait_for_line(
        &format!("SHOAL-TG shm saw {host_word:#x} 0x686f7374"),
        TIMEOUT,
    )
    .unwrap();
    finish(&mut vm);
}

/// Two QEMU guests ring each other's vector 0 in turn through the group.
#[test]
fn doorbell_two_guests_ping_pong() {
    const ROUNDS: u64 = 200;
    let scratch = Scratch::new("pingpong");
    let group = Group::start(scratch.path("g.sock"), 1);
    // The responder joins first and gets id 0, the initiator id 1 (the
    // server hands out the lowest free id).
    let responder_cmd =
        format!("scenario=shm op=info,pingpong role=responder peer=1 count={ROUNDS}");
    let mut responder =
        GuestProcess::spawn(with_doorbell(q35(&responder_cmd), &group.socket, 1)).unwrap();
    let info = responder.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "id"), 0, "{}", responder.output());
    responder
        .wait_for_line("SHOAL-TG shm ready msix 1", TIMEOUT)
        .unwrap();
    let initiator_cmd =
        format!("scenario=shm op=info,pingpong role=initiator peer=0 count={ROUNDS}");
    let mut initiator =
        GuestProcess::spawn(with_doorbell(q35(&initiator_cmd), &group.socket, 1)).unwrap();
    let info = initiator.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "id"), 1, "{}", initiator.output());
    let want = format!("SHOAL-TG shm pingpong done {ROUNDS} sent {ROUNDS} received {ROUNDS}");
    initiator.wait_for_line(&want, TIMEOUT).unwrap();
    responder.wait_for_line(&want, TIMEOUT).unwrap();
    finish(&mut initiator);
    finish(&mut responder);
}

/// Two QEMU guests run `op=exchange` (lockstep doorbells and region
/// writes, each checking the other's data) until the host peer sets the
/// stop word; no doorbell needed a second ring.
#[test]
fn doorbell_two_guests_exchange_until_the_host_stops_them() {
    let scratch = Scratch::new("exchange");
    let group = Group::start(scratch.path("g.sock"), 1);
    let host = group.host_peer();
    assert_eq!(host.id(), 0);
    let base = host.data_offset();
    let responder_cmd = "scenario=shm op=info,exchange role=responder peer=2 every=16";
    let mut responder =
        GuestProcess::spawn(with_doorbell(q35(responder_cmd), &group.socket, 1)).unwrap();
    let info = responder.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "id"), 1, "{}", responder.output());
    responder
        .wait_for_line("SHOAL-TG shm ready msix 1", TIMEOUT)
        .unwrap();
    let initiator_cmd = "scenario=shm op=info,exchange role=initiator peer=1 every=16";
    let mut initiator =
        GuestProcess::spawn(with_doorbell(q35(initiator_cmd), &group.socket, 1)).unwrap();
    let info = initiator.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "id"), 2, "{}", initiator.output());
    initiator
        .wait_for_line("SHOAL-TG shm exchange 64", TIMEOUT)
        .unwrap();
    responder
        .wait_for_line("SHOAL-TG shm exchange 64", TIMEOUT)
        .unwrap();
    // The host peer's view of the slots: seq and data of both guests.
    let word = |offset: u64| {
        let mut bytes = [0u8; 8];
        host.mapping().read(offset as usize, &mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    };
    let seq1 = word(base + 64 + 64);
    assert!(seq1 >= 64, "responder seq {seq1}");
    assert_eq!(
        word(base + 64 + 64 + 8),
        seq1 ^ 0x5348_4f41_4c58_4348 ^ 1,
        "responder data word"
    );
    host.mapping()
        .write(base as usize, &1u64.to_le_bytes())
        .unwrap();
    for vm in [&mut initiator, &mut responder] {
        let done = vm
            .wait_for_line("SHOAL-TG shm exchange done", TIMEOUT)
            .unwrap();
        let rounds = field(&done, "done");
        assert!(rounds >= 64, "{done}");
        assert_eq!(field(&done, "rerings"), 0, "{done}");
        assert!(field(&done, "sent").abs_diff(rounds) <= 1, "{done}");
        assert!(field(&done, "received").abs_diff(rounds) <= 1, "{done}");
        finish(vm);
    }
}

/// QEMU interop: a QEMU guest (`ivshmem-doorbell`) and a `shoal run` VM
/// (`--shmem-group`) in one Shoal group ping-pong doorbells, and the host
/// peer reads what each wrote into the region.
#[test]
fn doorbell_qemu_guest_and_shoal_vm_ping_pong_and_share_bytes() {
    const ROUNDS: u64 = 100;
    let scratch = Scratch::new("interop");
    let group = Group::start(scratch.path("g.sock"), 1);
    let host = group.host_peer();
    assert_eq!(host.id(), 0);
    let data = host.data_offset();
    // The Shoal VM joins second (id 1) and answers; QEMU (id 2) starts.
    let shoal_cmd = format!(
        "scenario=shm op=info,write,pingpong role=responder peer=2 count={ROUNDS} \
         offset={:#x} pattern=0x73686f616c",
        data + 8
    );
    let group_arg = format!("socket={},vectors=1", group.socket.display());
    let mut shoal = GuestProcess::boot_test_guest(
        &shoal_cmd,
        &["--memory", "128M", "--shmem-group", &group_arg],
    )
    .unwrap();
    let info = shoal.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "id"), 1, "{}", shoal.output());
    shoal
        .wait_for_line("SHOAL-TG shm ready msix 1", TIMEOUT)
        .unwrap();
    let qemu_cmd = format!(
        "scenario=shm op=info,write,pingpong role=initiator peer=1 count={ROUNDS} \
         offset={:#x} pattern=0x71656d75",
        data + 16
    );
    let mut qemu = GuestProcess::spawn(with_doorbell(q35(&qemu_cmd), &group.socket, 1)).unwrap();
    let info = qemu.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
    assert_eq!(field(&info, "id"), 2, "{}", qemu.output());
    let want = format!("SHOAL-TG shm pingpong done {ROUNDS} sent {ROUNDS} received {ROUNDS}");
    qemu.wait_for_line(&want, TIMEOUT).unwrap();
    shoal.wait_for_line(&want, TIMEOUT).unwrap();
    finish(&mut qemu);
    finish(&mut shoal);
    let word = |offset: u64| {
        let mut bytes = [0u8; 8];
        host.mapping().read(offset as usize, &mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    };
    assert_eq!(word(data + 8), 0x73_686f_616c);
    assert_eq!(word(data + 16), 0x7165_6d75);
}

/// `op=exchange` as a star: one initiator lockstepped with two responders
/// (what a migrating member runs against a host peer and another VM).
#[test]
fn doorbell_initiator_exchanges_with_two_responders() {
    let scratch = Scratch::new("star");
    let group = Group::start(scratch.path("g.sock"), 1);
    let host = group.host_peer();
    let base = host.data_offset();
    let mut responders = Vec::new();
    for id in [1, 2] {
        let cmd = "scenario=shm op=info,exchange role=responder peer=3 every=16";
        let mut vm = GuestProcess::spawn(with_doorbell(q35(cmd), &group.socket, 1)).unwrap();
        let info = vm.wait_for_line("SHOAL-TG shm id", TIMEOUT).unwrap();
        assert_eq!(field(&info, "id"), id, "{}", vm.output());
        vm.wait_for_line("SHOAL-TG shm ready msix 1", TIMEOUT)
            .unwrap();
        responders.push(vm);
    }
    let cmd = "scenario=shm op=info,exchange role=initiator peer=1,2 every=16";
    let mut initiator = GuestProcess::spawn(with_doorbell(q35(cmd), &group.socket, 1)).unwrap();
    initiator
        .wait_for_line("SHOAL-TG shm exchange 32", TIMEOUT)
        .unwrap();
    host.mapping()
        .write(base as usize, &1u64.to_le_bytes())
        .unwrap();
    let done = initiator
        .wait_for_line("SHOAL-TG shm exchange done", TIMEOUT)
        .unwrap();
    let rounds = field(&done, "done");
    assert!(rounds >= 32, "{done}");
    assert_eq!(field(&done, "rerings"), 0, "{done}");
    // Both responders ring vector 0: their doorbells may coalesce.
    assert!(field(&done, "received") >= rounds, "{done}");
    finish(&mut initiator);
    for vm in &mut responders {
        let done = vm
            .wait_for_line("SHOAL-TG shm exchange done", TIMEOUT)
            .unwrap();
        assert!(field(&done, "done").abs_diff(rounds) <= 1, "{done}");
        assert_eq!(field(&done, "rerings"), 0, "{done}");
        finish(vm);
    }
}
