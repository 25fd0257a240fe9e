// SPDX-License-Identifier: Apache-2.0
//! The test guest's own scenarios under `shoal run`, checked for their
//! markers (the feature files use them under load: `migration.rs` the
//! memory ones, `shm_group.rs` the group ones): `counter`, `dirty` and
//! `checksum` run to their limits, and `shm bars=guest` moves the group
//! device's BARs, BAR2 into the 64-bit window, which the VMM must follow.

// Test helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::time::Duration;

use shoal_tests::{GuestProcess, GUEST_DONE};

/// Generous: the guest runs in KVM's instruction emulator on our machines.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Boots the guest with 128 MiB and `extra`, waits for `done` and a clean
/// exit, and checks it printed no error line.
fn run_to_done(cmdline: &str, extra: &[&str]) -> GuestProcess {
    let mut args = vec!["--memory", "128M"];
    args.extend_from_slice(extra);
    let mut vm = GuestProcess::boot_test_guest(cmdline, &args).unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status}\n{}", vm.output());
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
    vm
}

#[test]
fn counter_prints_increasing_values_up_to_its_limit() {
    let vm = run_to_done("scenario=counter shift=10 limit=5000", &[]);
    let values: Vec<u64> = vm
        .guest_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("SHOAL-TG counter "))
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(
        values,
        vec![1024, 2048, 3072, 4096, 5000],
        "{}",
        vm.output()
    );
}

#[test]
fn dirty_rewrites_its_pages_and_finds_each_previous_pass() {
    let vm = run_to_done("scenario=dirty pages=8 stride=1024 every=4 limit=12", &[]);
    let lines = vm.guest_lines();
    assert!(
        lines.contains(&"SHOAL-TG dirty start pages 8 stride 1024 base 0x1000000"),
        "{}",
        vm.output()
    );
    for pass in [4, 8, 12] {
        let want = format!("SHOAL-TG dirty pass {pass}");
        assert!(lines.contains(&want.as_str()), "{want}\n{}", vm.output());
    }
}

#[test]
fn checksum_prints_the_documented_sum_every_time() {
    let vm = run_to_done("scenario=checksum count=3 interval=50", &[]);
    let sums: Vec<&str> = vm
        .guest_lines()
        .into_iter()
        .filter(|l| l.starts_with("SHOAL-TG ramsum "))
        .collect();
    // Seed 1 over 64 KiB (see guest_units.rs): the same on every line.
    assert_eq!(
        sums,
        vec!["SHOAL-TG ramsum 0x1000000 0x10000 b7e1287c2ec6ad7a"; 3],
        "{}",
        vm.output()
    );
}

#[test]
fn checksum_refuses_a_buffer_over_the_image() {
    let mut vm =
        GuestProcess::boot_test_guest("scenario=checksum base=0x100000", &["--memory", "128M"])
            .unwrap();
    vm.wait_for_line("SHOAL-TG error checksum buffer 0x100000", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
}

#[test]
fn shm_bars_moved_by_the_guest_are_followed_by_the_vmm() {
    let dir = std::env::temp_dir().join(format!("shoal-guest-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("region");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(4 << 20).unwrap();
    file.write_all_at(&0x1234_5678u64.to_le_bytes(), 0x8000)
        .unwrap();
    let shmem = format!("path={},size=4M", path.display());
    let vm = run_to_done(
        "scenario=shm bars=guest op=info,read,write offset=0x8000 pattern=0xc0ffee \
         read.offset=0x8000",
        &["--shmem", &shmem],
    );
    let lines = vm.guest_lines();
    let bar2 = lines
        .iter()
        .find(|l| l.starts_with("SHOAL-TG shm bar 2 "))
        .unwrap();
    assert!(bar2.ends_with(" 0x400000 guest"), "{bar2}");
    assert!(
        lines.contains(&"SHOAL-TG shm read 0x8000 0x12345678"),
        "{}",
        vm.output()
    );
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, 0x8000).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0xc0_ffee);
    let _ = std::fs::remove_dir_all(&dir);
}
