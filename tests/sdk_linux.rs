// SPDX-License-Identifier: Apache-2.0
//! The guest SDK inside real Linux: the C OpenMP Jacobi example
//! (`guest-sdk/examples/c/jacobi.c`) in two QEMU `-accel tcg` q35 guests
//! plus a host peer, one team over a Shoal group server, through the SDK's
//! PCI transport — once with our guest driver's MSI-X doorbell interrupts,
//! once driverless (the SDK spins with backoff). Each run is checked twice
//! against the single-process reference: by the team's rank 0 and by the
//! host peer `demo-peer verify`, which recomputes the run alone and compares
//! the grid the team left in the region bit for bit. The Rust histogram
//! example runs the same way with the driver (it also reports how the SDK
//! sleeps: `Doorbell` in the guests).
//!
//! The image comes from `scripts/guest-image` (cached in `.cache/guest`;
//! the first build downloads the Debian cloud kernel and takes a minute or
//! two, later calls a few seconds; concurrent calls wait for each other).

// Test helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shmem_group::server::Stopper;
use shmem_group::{Server, ServerConfig};
use shoal_tests::workspace_root;

/// Longest the image build may take (a fresh one downloads and compiles).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest one run (two guest boots, the computation, power-off) may take,
/// all members together.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
const REGION: u64 = 16 << 20;
/// Jacobi grid size and sweeps: enough rows for every member, seconds under TCG.
const N: &str = "128";
const SWEEPS: &str = "30";
/// The team: two guests and one host peer.
const MEMBERS: &str = "3";

/// Builds (or finds cached) the guest image; returns its directory.
fn guest_image() -> PathBuf {
    let root = workspace_root();
    let mut child = Command::new(root.join("scripts/guest-image"))
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot run scripts/guest-image");
    let status = wait_timeout(&mut child, IMAGE_TIMEOUT)
        .unwrap_or_else(|| panic!("scripts/guest-image took longer than {IMAGE_TIMEOUT:?}"));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "scripts/guest-image failed ({status})");
    let dir = PathBuf::from(out.trim());
    for file in ["vmlinuz", "initrd.gz", "jacobi", "demo-peer"] {
        assert!(
            dir.join(file).exists(),
            "guest image lacks {file} in {dir:?}"
        );
    }
    dir
}

/// Waits for the child up to `timeout`; kills it and returns None after.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child killed on drop (so a failing test leaves no guest behind).
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Waits for the exit; returns the status (None on timeout) and the output.
    fn finish(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let status = wait_timeout(&mut self.child, timeout);
        let output = fs::read_to_string(&self.log).unwrap_or_default();
        (status, output.replace('\r', ""))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shoal-sdk-linux-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A group server on a thread, stopped on drop.
struct Group {
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl Group {
    fn start(socket: &Path) -> Self {
        let mut server = Server::new(ServerConfig::new("sdk-linux", socket, REGION)).unwrap();
        let stopper = server.stopper().unwrap();
        let thread = thread::spawn(move || server.run().unwrap());
        Group {
            stopper,
            thread: Some(thread),
        }
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

/// What the team runs: the same program in both guests and on the host.
struct Workload {
    /// Program in the initramfs (and in the image directory for the host).
    program: &'static str,
    /// Its arguments, the same for every member.
    args: &'static [&'static str],
    /// What rank 0 prints when the result equals the single-process reference.
    matches: &'static str,
    /// `demo-peer` arguments re-checking the result from the host afterwards.
    recheck: Option<&'static [&'static str]>,
}

const JACOBI: Workload = Workload {
    program: "jacobi",
    args: &[MEMBERS, N, SWEEPS],
    matches: "jacobi: result matches the single-process reference",
    recheck: Some(&["verify", N, SWEEPS]),
};

const HISTOGRAM: Workload = Workload {
    program: "histogram",
    args: &["member", MEMBERS],
    matches: "bins match the single-process reference",
    recheck: None,
};

fn linux_guest(image: &Path, socket: &Path, work: &Workload, driver: bool) -> Command {
    let mut append = format!(
        "console=ttyS0 reboot=k panic=-1 quiet shoal.run=/{},{} \
         shoal.env=OMP_NUM_THREADS=2,OMP_WAIT_POLICY=passive",
        work.program,
        work.args.join(",")
    );
    if driver {
        append.push_str(" shoal.driver=1");
    }
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "qemu64"])
        .args(["-smp", "2", "-m", "512"])
        .args(["-nographic", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.gz"))
        .args(["-append", &append])
        .args([
            "-chardev",
            &format!("socket,path={},id=group", socket.display()),
            "-device",
            "ivshmem-doorbell,chardev=group,vectors=1",
        ]);
    command
}

/// Doorbell interrupts the guest driver counted (its `/proc/interrupts` lines).
fn driver_interrupts(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.contains("SHOAL-IRQ:"))?;
    let counts = line.split_once("SHOAL-IRQ:")?.1.split_once(':')?.1;
    Some(
        counts
            .split_whitespace()
            .map_while(|word| word.parse::<u64>().ok())
            .sum(),
    )
}

/// Checks one guest's console: the program exited 0 in the guest, and
/// waited the way the mode says (driver interrupts, or the polling fallback).
fn check_guest(name: &str, output: &str, driver: bool) {
    assert!(
        output.contains("SHOAL-EXIT: 0"),
        "{name}: the program did not exit 0 in the guest"
    );
    let polling = output.contains("waiting by spinning with backoff");
    let irqs = driver_interrupts(output);
    // The Rust example reports its transport and how it sleeps.
    if output.contains("histogram: rank") {
        let kind = if driver {
            "pci, Doorbell)"
        } else {
            "pci, Poll)"
        };
        assert!(
            output.contains(kind),
            "{name}: the SDK does not report {kind}"
        );
    }
    if driver {
        assert!(!polling, "{name} polled although the driver was loaded");
        assert!(
            irqs.is_some_and(|n| n > 0),
            "{name}: no doorbell interrupt reached the guest driver ({irqs:?})"
        );
    } else {
        assert!(polling, "{name} did not report the polling fallback");
        assert_eq!(
            irqs, None,
            "{name}: the driver was loaded without shoal.driver=1"
        );
    }
}

/// One run: the workload in two guests and on the host, as one team, then
/// the host re-check if the workload has one.
fn run_in_two_guests(work: &Workload, driver: bool) {
    let image = guest_image();
    let mode = if driver { "driver" } else { "polling" };
    let scratch = Scratch::new(&format!("{}-{mode}", work.program));
    let socket = scratch.0.join("group.sock");
    let _group = Group::start(&socket);

    let started = Instant::now();
    let mut guests = [
        Process::spawn(
            "guest1",
            linux_guest(&image, &socket, work, driver),
            &scratch.0,
        ),
        Process::spawn(
            "guest2",
            linux_guest(&image, &socket, work, driver),
            &scratch.0,
        ),
    ];
    let mut host = Command::new(image.join(work.program));
    host.args(work.args)
        .env("SHOAL_SOCKET", &socket)
        .env("OMP_NUM_THREADS", "2")
        .env("OMP_WAIT_POLICY", "passive");
    let mut host = Process::spawn("host", host, &scratch.0);

    let deadline = started + RUN_TIMEOUT;
    let mut outputs = Vec::new();
    for process in guests.iter_mut().chain([&mut host]) {
        let (status, output) = process.finish(deadline.saturating_duration_since(Instant::now()));
        eprintln!("--- {} ({status:?}):\n{output}", process.name);
        outputs.push((process.name.clone(), status, output));
    }
    eprintln!("run took {:?}", started.elapsed());

    for (name, status, output) in &outputs {
        assert!(
            status.is_some(),
            "{name} did not finish within {RUN_TIMEOUT:?}"
        );
        assert!(!output.contains("MISMATCH"), "{name} saw a mismatch");
        if name == "host" {
            assert!(
                status.is_some_and(|s| s.success()),
                "the host member failed: {status:?}"
            );
        } else {
            check_guest(name, output, driver);
        }
    }
    let rank0 = outputs
        .iter()
        .filter(|(_, _, output)| output.contains(work.matches))
        .count();
    assert_eq!(
        rank0, 1,
        "exactly one member (rank 0) reports the reference match"
    );

    if let Some(args) = work.recheck {
        let mut recheck = Command::new(image.join("demo-peer"));
        recheck.args(args).env("SHOAL_SOCKET", &socket);
        let (status, output) =
            Process::spawn("recheck", recheck, &scratch.0).finish(Duration::from_secs(30));
        eprintln!("--- recheck ({status:?}):\n{output}");
        assert!(
            status.is_some_and(|s| s.success()) && output.contains(" 0 cells differ"),
            "the host re-check failed"
        );
    }
}

#[test]
fn jacobi_in_two_linux_guests_with_driver_interrupts() {
    run_in_two_guests(&JACOBI, true);
}

#[test]
fn jacobi_in_two_linux_guests_driverless_polling() {
    run_in_two_guests(&JACOBI, false);
}

#[test]
fn rust_histogram_in_two_linux_guests_with_driver_interrupts() {
    run_in_two_guests(&HISTOGRAM, true);
}

#[test]
fn driver_interrupts_sums_the_cpu_columns() {
    let log =
        "SHOAL-IRQ:  24:         12          3  PCI-MSIX-0000:00:03.0   0-edge      shoal_ivshmem";
    assert_eq!(driver_interrupts(log), Some(15));
    assert_eq!(driver_interrupts("SHOAL-EXIT: 0"), None);
}

#[test]
#[should_panic(expected = "no doorbell interrupt reached the guest driver")]
fn check_guest_rejects_a_driver_run_without_interrupts() {
    check_guest("guest1", "SHOAL-EXIT: 0\n", true);
}

#[test]
#[should_panic(expected = "did not report the polling fallback")]
fn check_guest_rejects_a_driverless_run_without_the_polling_notice() {
    check_guest("guest1", "SHOAL-EXIT: 0\n", false);
}

#[test]
#[should_panic(expected = "did not exit 0")]
fn check_guest_rejects_a_failed_program() {
    check_guest("guest1", "SHOAL-EXIT: 1\n", true);
}
