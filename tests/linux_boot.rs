// SPDX-License-Identifier: Apache-2.0
//! The slow Linux check: Debian's cloud kernel boots in `shoal run` far
//! enough to show that it accepted our boot information, e820 map and ACPI
//! MADT, through the PVH entry (vmlinux) and the Linux 64-bit boot protocol
//! (bzImage).
//!
//! On our PVM machines the kernel runs in KVM's instruction emulator, so only
//! its early boot is in reach (docs: ../shared FIELD-NOTES); the command line
//! turns off CPU features the emulator cannot execute. The kernel comes from
//! `scripts/linux-kernel` (fetched and cached once; `scripts/test` does it
//! before the tests start).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_tests::{workspace_root, GuestProcess};

/// CPU features KVM's instruction emulator cannot run, and early-console options.
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 nokaslr noxsave \
    mitigations=off nofsgsbase nopku nopcid clearcpuid=invpcid,umip,smap,smep,pku,fsgsbase,\
    pcid,popcnt,movbe,rdtscp,rdpid,rdrand,rdseed,abm,bmi1,bmi2,avx,avx2,fma,f16c,sse4_1,\
    sse4_2,aes,pclmulqdq,sha_ni";

/// Fetches (or finds in the cache) the kernel; returns (bzImage, vmlinux).
fn kernel() -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let out = Command::new(root.join("scripts/linux-kernel"))
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/linux-kernel failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|| panic!("no {key} line in {text}"))
    };
    (path("bzimage "), path("vmlinux "))
}

/// Boots `kernel` with 2 vCPUs and waits for the lines that prove Linux took
/// our boot information, in the order Linux prints them.
fn boots_to_smp_setup(kernel: &Path, timeout: Duration) {
    let mut vm = GuestProcess::shoal(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "2",
        "--memory",
        "512M",
        "--no-reboot",
        "--cmdline",
        CMDLINE,
    ])
    .unwrap();
    let expect = [
        "Linux version 6.",
        // The first e820 entry of docs/platform.md, as Linux accepted it.
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
    ];
    let start = Instant::now();
    for line in expect {
        let left = timeout.saturating_sub(start.elapsed());
        if let Err(e) = vm.wait_for_line(line, left) {
            panic!("{e}: waiting for {line:?}\n{}", vm.output());
        }
    }
}

#[test]
fn linux_boot_pvh_vmlinux_reaches_smp_setup() {
    let (_, vmlinux) = kernel();
    boots_to_smp_setup(&vmlinux, Duration::from_secs(300));
}

#[test]
fn linux_boot_bzimage_reaches_smp_setup() {
    let (bzimage, _) = kernel();
    // The bzImage's decompressor alone takes about 100 s under the emulator.
    boots_to_smp_setup(&bzimage, Duration::from_secs(600));
}
