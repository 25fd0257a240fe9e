// SPDX-License-Identifier: Apache-2.0
//! An unmodified QEMU 7.2 `-device ivshmem-doorbell` joins a Shoal group.
//!
//! QEMU runs with TCG and no boot disk: SeaBIOS enumerates PCI and assigns
//! the BARs, then idles. The test plays the guest through QMP's
//! `human-monitor-command` (`xp` reads physical memory including MMIO,
//! `o`/`i` reach PCI config space through 0xcf8/0xcfc). A guest-originated
//! Doorbell write needs guest code and is left to the end-to-end tests.
//! Skipped (passes trivially) when `qemu-system-x86_64` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{wait_event, wait_for_peers, TestServer};
use shmem_group::client::query_status;
use shmem_group::layout::PeerState;
use shmem_group::{Membership, Peer};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
const SLOT: u32 = 4;

struct Qemu {
    child: Child,
    qmp: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(text: &str) -> u64 {
    let token = text
        .split_whitespace()
        .last()
        .unwrap_or_else(|| panic!("no value in {text:?}"));
    u64::from_str_radix(token.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("bad value in {text:?}"))
}

impl Qemu {
    fn start(group_socket: &std::path::Path) -> Option<Self> {
        let qmp_path = common::socket_path("qmp");
        let spawned = Command::new(QEMU)
            .args(["-machine", "q35", "-accel", "tcg", "-display", "none"])
            .args(["-nodefaults", "-m", "64"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-chardev")
            .arg(format!("socket,path={},id=iv", group_socket.display()))
            .arg("-device")
            .arg(format!(
                "ivshmem-doorbell,chardev=iv,vectors=2,addr={SLOT:02x}.0"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("cannot start {QEMU}: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match UnixStream::connect(&qmp_path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("QEMU's QMP socket never came up: {e}"),
            }
        };
        let _ = std::fs::remove_file(&qmp_path);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut qemu = Self {
            child,
            qmp: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let mut greeting = String::new();
        qemu.qmp.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        qemu.execute(serde_json::json!({"execute": "qmp_capabilities"}));
        Some(qemu)
    }

    fn execute(&mut self, request: serde_json::Value) -> serde_json::Value {
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let mut line = String::new();
            self.qmp.read_line(&mut line).unwrap();
            let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
            if reply.get("event").is_some() {
                continue;
            }
            assert!(reply.get("error").is_none(), "{request} failed: {reply}");
            return reply["return"].clone();
        }
    }

    fn hmp(&mut self, command: &str) -> String {
        let reply = self.execute(serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": {"command-line": command}
        }));
        reply.as_str().unwrap_or_default().to_string()
    }

    fn readl(&mut self, addr: u64) -> u32 {
        hex(&self.hmp(&format!("xp /1wx {addr:#x}"))) as u32
    }

    fn readq(&mut self, addr: u64) -> u64 {
        hex(&self.hmp(&format!("xp /1gx {addr:#x}")))
    }

    fn cfg_read(&mut self, reg: u32) -> u32 {
        let addr = 0x8000_0000 | (SLOT << 11) | reg;
        self.hmp(&format!("o /w 0xcf8 {addr:#x}"));
        hex(&self.hmp("i /w 0xcfc")) as u32
    }

    fn cfg_write(&mut self, reg: u32, value: u32) {
        let addr = 0x8000_0000 | (SLOT << 11) | reg;
        self.hmp(&format!("o /w 0xcf8 {addr:#x}"));
        self.hmp(&format!("o /w 0xcfc {value:#x}"));
    }

    /// Waits for the firmware to assign our BARs; returns BAR0..BAR2.
    fn bars(&mut self) -> [u64; 3] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.hmp("info pci");
            let ours = info
                .split("Bus  0, device")
                .find(|dev| dev.contains("1af4:1110"))
                .unwrap_or_default()
                .to_string();
            let bar = |n: usize| {
                ours.lines()
                    .find(|l| l.trim_start().starts_with(&format!("BAR{n}:")))
                    .and_then(|l| l.split(" at ").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                    .filter(|a| *a != 0 && *a != u64::MAX)
            };
            if let (Some(b0), Some(b1), Some(b2)) = (bar(0), bar(1), bar(2)) {
                return [b0, b1, b2];
            }
            assert!(
                Instant::now() < deadline,
                "firmware never assigned BARs:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Finds capability `id` in config space.
    fn capability(&mut self, id: u8) -> Option<u32> {
        let mut ptr = self.cfg_read(0x34) & 0xfc;
        while ptr != 0 {
            let head = self.cfg_read(ptr);
            if head as u8 == id {
                return Some(ptr);
            }
            ptr = (head >> 8) & 0xfc;
        }
        None
    }
}

#[test]
fn qemu_ivshmem_doorbell_joins_a_shoal_group() {
    let server = TestServer::start("qemu", 2, 8);
    let mut host = Peer::connect(&server.path).unwrap();
    let data = host.data_offset();
    host.mapping()
        .write(data as usize, &0x1122_3344u32.to_le_bytes())
        .unwrap();

    let Some(mut qemu) = Qemu::start(&server.path) else {
        eprintln!("{QEMU} not installed; skipping");
        return;
    };
    let qemu_pid = qemu.child.id();
    let event = wait_event(&mut host, |e| matches!(e, Membership::Joined(_)));
    let Membership::Joined(qemu_id) = event else {
        unreachable!()
    };
    assert_eq!(qemu_id, 1);
    let status = query_status(&server.path, Duration::from_secs(5)).unwrap();
    let member = status.members.iter().find(|m| m.id == qemu_id).unwrap();
    assert_eq!((member.pid, member.extension), (qemu_pid, false));

    // The guest's view: identity, IVPosition, the region and its table.
    let [bar0, bar1, bar2] = qemu.bars();
    qemu.execute(serde_json::json!({"execute": "stop"}));
    assert_eq!(qemu.cfg_read(0x00), 0x1110_1af4);
    assert_eq!(qemu.cfg_read(0x08) >> 8, 0x05_00_00);
    assert_eq!(qemu.readl(bar0 + 8), u32::from(qemu_id));
    assert_eq!(qemu.readl(bar2 + data), 0x1122_3344);
    let entry = shmem_group::layout::HEADER_SIZE as u64 + 32 * u64::from(qemu_id);
    assert_eq!(qemu.readl(bar2 + entry) & 0xff, PeerState::Alive as u32);
    assert_eq!(qemu.readl(bar2), u32::from_le_bytes(*b"SHOA"));

    // Host → guest doorbell: with MSI-X enabled and the vector masked (its
    // reset state), QEMU records the doorbell as a pending bit in the PBA.
    let cap = qemu.capability(0x11).expect("MSI-X capability");
    let head = qemu.cfg_read(cap);
    qemu.cfg_write(cap, head | (1 << 31));
    let pba = qemu.cfg_read(cap + 8);
    assert_eq!(pba & 7, 1, "PBA lives in BAR1");
    let pba_addr = bar1 + u64::from(pba & !7);
    assert_eq!(qemu.readq(pba_addr), 0);
    wait_for_peers(&mut host, &[qemu_id]);
    host.ring(qemu_id, 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while qemu.readq(pba_addr) & 0b10 == 0 {
        assert!(Instant::now() < deadline, "doorbell never reached QEMU");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(qemu.readq(pba_addr), 0b10, "only vector 1 is pending");

    // QEMU going away marks it dead.
    drop(qemu);
    wait_event(&mut host, |e| *e == Membership::Left(qemu_id));
    let snap = host.region().unwrap().peer(qemu_id).unwrap();
    assert_eq!(snap.state, Some(PeerState::Dead));
}
