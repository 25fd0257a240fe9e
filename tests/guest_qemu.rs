// SPDX-License-Identifier: Apache-2.0
//! The test guest under QEMU, independent of Shoal's VMM: it checks the
//! guest itself (PVH boot, ACPI, SMP bring-up, PCI scan, power-off).
//! Skipped, with a message, when `qemu-system-x86_64` is not installed.
//!
//! `-machine microvm,acpi=on` has hardware-reduced ACPI with the sleep
//! register on MMIO (0xfea00200), but PCI only through ECAM; `-machine pc`
//! has port 0xcf8 PCI, used for the PCI listing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_tests::{test_guest_path, GuestProcess, GUEST_DONE};

const TIMEOUT: Duration = Duration::from_secs(60);

/// QEMU is a test dependency (`scripts/test` installs it): a missing QEMU
/// fails these tests rather than skipping them.
fn qemu() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")
        })
}

/// `kvm` when /dev/kvm can be opened, else `tcg`.
fn accel() -> &'static str {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if kvm.is_ok() {
        "kvm"
    } else {
        "tcg"
    }
}

fn qemu_command(qemu: &Path, machine: &str, accel: &str, cpus: u32, cmdline: &str) -> Command {
    let mut command = Command::new(qemu);
    command
        .args([
            "-machine",
            machine,
            "-accel",
            accel,
            "-cpu",
            "qemu64,pni=off",
        ])
        .args(["-smp", &cpus.to_string(), "-m", "128"])
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

/// The guest lines up to `SHOAL-TG done` (power-off messages after it are
/// machine-specific).
fn lines_until_done(vm: &GuestProcess) -> Vec<String> {
    vm.guest_lines()
        .into_iter()
        .take_while(|l| *l != GUEST_DONE)
        .map(str::to_string)
        .collect()
}

#[test]
fn microvm_boot_brings_up_both_cpus_and_powers_off() {
    let qemu = qemu();
    let command = qemu_command(
        &qemu,
        "microvm,acpi=on,pcie=on",
        accel(),
        2,
        "scenario=boot",
    );
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line("SHOAL-TG start boot", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG acpi cpus 2", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG cpu 0 up", TIMEOUT).unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{}", vm.output());
    assert!(
        vm.guest_lines().contains(&"SHOAL-TG cpu 1 up"),
        "{}",
        vm.output()
    );
    // microvm powers off through the FADT sleep register: no error at all.
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

#[test]
fn microvm_unknown_scenario_is_reported_and_powers_off() {
    let qemu = qemu();
    let command = qemu_command(&qemu, "microvm,acpi=on", accel(), 1, "scenario=no-such");
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line("SHOAL-TG error unknown scenario no-such", TIMEOUT)
        .unwrap();
    assert!(vm.wait_for_exit(TIMEOUT).unwrap().success());
    assert!(!vm.guest_lines().contains(&GUEST_DONE), "{}", vm.output());
}

#[test]
fn pc_machine_pci_scan_lists_host_bridge_and_ivshmem() {
    let qemu = qemu();
    // SeaBIOS runs first on `pc`; under KVM's emulator that is slow, so tcg.
    let mut command = qemu_command(&qemu, "pc", "tcg", 2, "scenario=boot");
    command.args([
        "-object",
        "memory-backend-ram,id=shm,size=1M,share=on",
        "-device",
        "ivshmem-plain,memdev=shm,addr=4",
    ]);
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    vm.wait_for_exit(TIMEOUT).unwrap();
    let lines = lines_until_done(&vm);
    let has = |want: &str| lines.iter().any(|l| l == want);
    assert!(has("SHOAL-TG pci 00:00.0 8086:1237"), "{}", vm.output());
    assert!(has("SHOAL-TG pci 00:01.1 8086:7010"), "{}", vm.output());
    assert!(has("SHOAL-TG pci 00:04.0 1af4:1110"), "{}", vm.output());
    assert!(has("SHOAL-TG cpu 1 up"), "{}", vm.output());
    // `pc` has no MCFG: no ECAM comparison.
    assert!(!lines.iter().any(|l| l.contains("ecam")), "{}", vm.output());
    assert!(
        !lines.iter().any(|l| l.starts_with("SHOAL-TG error")),
        "{}",
        vm.output()
    );
}

#[test]
fn microvm_self_ipis_reach_the_handler_and_return() {
    let qemu = qemu();
    let command = qemu_command(&qemu, "microvm,acpi=on", accel(), 1, "scenario=irq count=5");
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line("SHOAL-TG irq 0x40 delivered 5", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    assert!(vm.wait_for_exit(TIMEOUT).unwrap().success());
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

#[test]
fn microvm_page_fault_is_reported_and_powers_off() {
    let qemu = qemu();
    let command = qemu_command(
        &qemu,
        "microvm,acpi=on",
        accel(),
        1,
        "scenario=fault kind=pf",
    );
    let mut vm = GuestProcess::spawn(command).unwrap();
    let line = vm
        .wait_for_line("SHOAL-TG error exception 14", TIMEOUT)
        .unwrap();
    assert!(line.ends_with("cr2 0x1000000000"), "{line}");
    assert!(vm.wait_for_exit(TIMEOUT).unwrap().success());
}

#[test]
fn q35_ecam_agrees_with_port_io() {
    let qemu = qemu();
    let command = qemu_command(&qemu, "q35", "tcg", 1, "scenario=boot");
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line("SHOAL-TG pci 00:00.0 8086:29c0", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG pci ecam agrees", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    vm.wait_for_exit(TIMEOUT).unwrap();
    let lines = lines_until_done(&vm);
    assert!(
        !lines.iter().any(|l| l.starts_with("SHOAL-TG error")),
        "{}",
        vm.output()
    );
}

#[test]
fn microvm_eight_cpus_all_report() {
    let qemu = qemu();
    // KVM here recommends at most 2 vCPUs: use tcg for 8.
    let command = qemu_command(
        &qemu,
        "microvm,acpi=on",
        "tcg,thread=multi",
        8,
        "scenario=boot",
    );
    let mut vm = GuestProcess::spawn(command).unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    assert!(vm.wait_for_exit(TIMEOUT).unwrap().success());
    let lines = vm.guest_lines();
    for id in 0..8 {
        let want = format!("SHOAL-TG cpu {id} up");
        assert!(lines.contains(&want.as_str()), "{want}\n{}", vm.output());
    }
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}
