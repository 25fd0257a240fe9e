// SPDX-License-Identifier: Apache-2.0
//! Interrupts and exceptions in a `shoal run` guest: local APIC self-IPIs
//! reach the test guest's handler and return; a guest exception is
//! reported and ends in a clean power-off, not a hung or crashed VMM.

use std::time::Duration;

use shoal_tests::{GuestProcess, GUEST_DONE};

/// Generous: the guest runs in KVM's instruction emulator on our machines.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn self_ipis_reach_the_guest_handler_and_return() {
    let mut vm =
        GuestProcess::boot_test_guest("scenario=irq count=5", &["--memory", "128M"]).unwrap();
    vm.wait_for_line("SHOAL-TG irq 0x40 delivered 5", TIMEOUT)
        .unwrap();
    vm.wait_for_line(GUEST_DONE, TIMEOUT).unwrap();
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status}\n{}", vm.output());
    assert!(vm.error_lines().is_empty(), "{}", vm.output());
}

#[test]
fn guest_page_fault_is_reported_and_the_vm_powers_off() {
    let mut vm =
        GuestProcess::boot_test_guest("scenario=fault kind=pf", &["--memory", "128M"]).unwrap();
    let line = vm
        .wait_for_line("SHOAL-TG error exception 14", TIMEOUT)
        .unwrap();
    assert!(line.ends_with("cr2 0x1000000000"), "{line}");
    let status = vm.wait_for_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status}\n{}", vm.output());
}
