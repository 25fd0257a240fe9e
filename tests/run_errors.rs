// SPDX-License-Identifier: Apache-2.0
//! `shoal run` with bad input: a non-zero exit, one error line that names the
//! problem, no panic and no core dump.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use shoal_tests::{test_guest_path, GuestProcess};

const TIMEOUT: Duration = Duration::from_secs(30);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-run-errors-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `shoal run <args>` and checks that it failed cleanly with an error
/// line containing every one of `needles`. Returns the error line.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    let mut p = GuestProcess::shoal(&argv).unwrap();
    let status = p.wait_for_exit(TIMEOUT).unwrap();
    let stderr = p.stderr();
    assert!(
        status.signal().is_none(),
        "killed by a signal: {status}\n{stderr}"
    );
    assert!(!status.success(), "succeeded: {args:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
    errors[0].to_string()
}

fn guest() -> String {
    test_guest_path().to_string_lossy().into_owned()
}

#[test]
fn missing_kernel_is_named() {
    fails_with(
        &["--kernel", "/nonexistent/vmlinux"],
        &["/nonexistent/vmlinux"],
    );
}

#[test]
fn empty_kernel_is_rejected() {
    let path = scratch("empty");
    fs::write(&path, b"").unwrap();
    fails_with(&["--kernel", path.to_str().unwrap()], &["kernel", "empty"]);
}

#[test]
fn truncated_elf_kernel_is_rejected() {
    let image = fs::read(test_guest_path()).unwrap();
    let path = scratch("truncated.elf");
    fs::write(&path, &image[..200]).unwrap();
    fails_with(&["--kernel", path.to_str().unwrap()], &["kernel"]);
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage_is_rejected() {
    let path = scratch("garbage");
    fs::write(&path, vec![0x5a; 8192]).unwrap();
    fails_with(&["--kernel", path.to_str().unwrap()], &["kernel"]);
}

#[test]
fn initramfs_that_does_not_fit_is_rejected() {
    let path = scratch("huge-initramfs");
    let f = fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    fails_with(
        &[
            "--kernel",
            &guest(),
            "--memory",
            "32M",
            "--initramfs",
            path.to_str().unwrap(),
        ],
        &["initramfs"],
    );
}

#[test]
fn zero_cpus_are_rejected() {
    fails_with(&["--kernel", &guest(), "--cpus", "0"], &["--cpus 0"]);
}

#[test]
fn too_many_cpus_are_rejected() {
    fails_with(&["--kernel", &guest(), "--cpus", "2000"], &["--cpus 2000"]);
    fails_with(&["--kernel", &guest(), "--cpus", "255"], &["--cpus 255"]);
}

#[test]
fn bad_memory_sizes_are_rejected() {
    fails_with(
        &["--kernel", &guest(), "--memory", "1M"],
        &["--memory 1M", "too small"],
    );
    fails_with(
        &["--kernel", &guest(), "--memory", "4T"],
        &["--memory 4T", "too large"],
    );
    fails_with(&["--kernel", &guest(), "--memory", "lots"], &["lots"]);
}

#[test]
fn overlong_command_line_is_rejected() {
    let long = "x".repeat(70_000);
    fails_with(
        &["--kernel", &guest(), "--cmdline", &long],
        &["command line"],
    );
}

#[test]
fn bad_serial_option_is_rejected() {
    fails_with(
        &["--kernel", &guest(), "--serial", "tty"],
        &["--serial", "tty"],
    );
}
