// SPDX-License-Identifier: Apache-2.0
//! Bringing up the application processors listed in the MADT.
//!
//! Each AP runs the trampoline, enters long mode, prints
//! `SHOAL-TG cpu <apic id> up`, marks itself in [`REPORTED`] and halts.
//! The BSP waits for all of them with an iteration-bounded loop (no timer).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::io::{halt_forever, pause};
use crate::{apic, boot, interrupts, serial};

/// One bit per APIC ID (xAPIC IDs are 8 bits).
static REPORTED: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Polls of [`REPORTED`] before the BSP gives up on missing APs. Under
/// KVM's instruction emulator (about 1.5 M instructions/s) this is several
/// seconds; an AP normally reports within a millisecond.
const WAIT_LIMIT: u32 = 2_000_000;

fn mark(apic_id: u32) {
    if let Some(word) = REPORTED.get((apic_id / 64) as usize) {
        word.fetch_or(1 << (apic_id % 64), Ordering::Release);
    }
}

fn has_reported(apic_id: u32) -> bool {
    REPORTED
        .get((apic_id / 64) as usize)
        .is_some_and(|word| word.load(Ordering::Acquire) & (1 << (apic_id % 64)) != 0)
}

fn print_up(apic_id: u32) {
    serial::line()
        .str("cpu ")
        .dec(u64::from(apic_id))
        .str(" up");
}

/// Rust entry of an application processor (called from `boot`).
#[no_mangle]
pub extern "C" fn shoal_ap_main(_slot: u32) -> ! {
    interrupts::load();
    let id = apic::id();
    print_up(id);
    mark(id);
    halt_forever()
}

/// Prints the BSP's line, starts every other CPU in `apic_ids` and waits
/// until each has reported; prints an error line for each that did not.
/// Returns the number of CPUs up, the BSP included.
pub fn start_all(apic_ids: &[u32]) -> usize {
    apic::enable();
    let bsp = apic::id();
    print_up(bsp);
    mark(bsp);
    boot::install_trampoline();

    let mut expected = 0;
    for &id in apic_ids.iter().filter(|&&id| id != bsp) {
        let Ok(id8) = u8::try_from(id) else {
            serial::error()
                .str("cpu ")
                .dec(u64::from(id))
                .str(" not addressable in xapic mode");
            continue;
        };
        if expected >= boot::MAX_APS {
            serial::error()
                .str("cpu ")
                .dec(u64::from(id))
                .str(" exceeds the guest's stacks");
            continue;
        }
        if !apic::start_cpu(id8, boot::SIPI_VECTOR) {
            serial::error()
                .str("cpu ")
                .dec(u64::from(id))
                .str(" ipi not accepted");
        }
        expected += 1;
    }

    let all_up = || {
        apic_ids
            .iter()
            .filter(|&&id| id <= u32::from(u8::MAX))
            .all(|&id| has_reported(id))
    };
    let mut polls = 0;
    while !all_up() && polls < WAIT_LIMIT {
        pause();
        polls += 1;
    }
    let mut up = 0;
    for &id in apic_ids {
        if has_reported(id) {
            up += 1;
        } else if id <= u32::from(u8::MAX) {
            serial::error()
                .str("cpu ")
                .dec(u64::from(id))
                .str(" did not start");
        }
    }
    if !apic_ids.contains(&bsp) {
        up += 1;
    }
    up
}
