// SPDX-License-Identifier: Apache-2.0
//! `shoal run` boots the test guest: every vCPU comes up, the PCI host
//! bridge of docs/platform.md is on bus 0, and the guest powers the VM off
//! through the ACPI sleep register (clean exit, status 0).

use std::time::Duration;

use shoal_tests::{test_guest_linux64_path, test_guest_path, GuestProcess, GUEST_DONE};

/// Generous: the guest runs in KVM's instruction emulator on our machines.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn boot_scenario_brings_up_two_cpus_lists_host_bridge_and_powers_off() {
    let mut vm =
        GuestProcess::boot_test_guest("scenario=boot", &["--cpus", "2", "--memory", "128M"])
            .unwrap();
    vm.wait_for_line("SHOAL-TG entry pvh", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG start boot", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG acpi cpus 2", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG cpu 0 up", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG pci 00:00.0 8086:0d57", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG pci ecam agrees", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status}\n{}", vm.output());
    assert!(
        vm.guest_lines().contains(&"SHOAL-TG cpu 1 up"),
        "{}",
        vm.output()
    );
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

#[test]
fn unknown_scenario_is_reported_and_the_vm_powers_off() {
    let mut vm = GuestProcess::boot_test_guest("scenario=no-such", &["--memory", "128M"]).unwrap();
    vm.wait_for_line("SHOAL-TG error unknown scenario no-such", TIMEOUT)
        .unwrap();
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status}\n{}", vm.output());
}

#[test]
fn linux_64bit_entry_boots_the_same_scenario() {
    let mut vm = GuestProcess::boot_image(
        &test_guest_linux64_path(),
        "scenario=boot",
        &["--cpus", "2", "--memory", "128M"],
    )
    .unwrap();
    vm.wait_for_line("SHOAL-TG entry linux64", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG start boot", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG acpi cpus 2", TIMEOUT).unwrap();
    vm.wait_for_line("SHOAL-TG pci 00:00.0 8086:0d57", TIMEOUT)
        .unwrap();
    vm.wait_for_line("SHOAL-TG pci ecam agrees", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status}\n{}", vm.output());
    assert!(
        vm.guest_lines().contains(&"SHOAL-TG cpu 1 up"),
        "{}",
        vm.output()
    );
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

#[test]
fn memory_map_reaches_the_guest_through_both_entries() {
    for image in [test_guest_path(), test_guest_linux64_path()] {
        let mut vm =
            GuestProcess::boot_image(&image, "scenario=boot", &["--memory", "128M"]).unwrap();
        let line = vm
            .wait_for_line("SHOAL-TG mem ram-bytes ", TIMEOUT)
            .unwrap();
        let ram: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // 128 MiB less the legacy hole below 1 MiB.
        assert!(
            (127 << 20..=128 << 20).contains(&ram),
            "{ram}\n{}",
            vm.output()
        );
        vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
        assert!(vm.wait_for_exit(TIMEOUT).unwrap().success());
        assert!(vm.error_lines().is_empty(), "{}", vm.output());
    }
}
