// SPDX-License-Identifier: Apache-2.0
//! The two-party ops of `scenario=shm`: doorbell ping-pong and the
//! continuous exchange a migration test runs a group member under.
//!
//! `op=pingpong peer=<id> count=<n> role=initiator|responder`: each side
//! rings vector 0 of the other and sleeps until its own vector 0 fires; the
//! initiator rings first. Ends with `SHOAL-TG shm pingpong done <count>
//! sent <s> received <r>`. Start the initiator only after the responder
//! printed `SHOAL-TG shm ready ...`. On a timeout the error line is
//! followed by `SHOAL-TG apic ppr 0x.. isr ... irr ...` (the local APIC's
//! state, to tell a lost doorbell from a blocked vector).
//!
//! `op=exchange peer=<id> role=initiator|responder [offset=<n>]
//! [every=<rounds>] [rering=<s>]`: lockstep rounds through the region and
//! doorbells until the stop word is set. Layout at `base` (`offset=`,
//! default the group header's data offset, else 0), little-endian u64s:
//!
//! ```text
//! base + 0              stop word: non-zero ends the exchange (the test writes it)
//! base + 64 + 64*id     slot of peer `id`: +0 seq, +8 data = seq ^ EXCHANGE_SALT ^ id
//! ```
//!
//! A round: the initiator publishes seq n (data first, then seq) and rings
//! the peer, then waits for the peer's seq n and its n-th doorbell; the
//! responder waits for seq n and the n-th doorbell, checks the data,
//! publishes its own seq n and rings back. Each side checks the peer's
//! data word and seq (exactly n). Every round takes one doorbell each way,
//! so none can coalesce: after `rering` seconds (default 5) without
//! progress a side rings again and counts it; a lost doorbell (or a peer
//! paused that long) shows as `rerings` > 0, a lost write as an error line.
//! Progress: `SHOAL-TG shm exchange <rounds>` every `every` rounds (default
//! 256); at the end `SHOAL-TG shm exchange done <rounds> sent <s> received
//! <r> rerings <n>`.

use super::shm::{peer, received, Shm};
use crate::{serial, timer};

/// XORed into every exchange data word (with the seq and the writer's id).
pub const EXCHANGE_SALT: u64 = 0x5348_4f41_4c58_4348;
const SLOTS_START: u64 = 64;
const SLOT_SIZE: u64 = 64;
const DEFAULT_EVERY: u64 = 256;
const DEFAULT_RERING_S: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

fn role(shm: &Shm) -> Option<Role> {
    match shm.get("role") {
        Some(b"initiator") => Some(Role::Initiator),
        Some(b"responder") => Some(Role::Responder),
        _ => {
            serial::error().str("shm role= must be initiator or responder");
            None
        }
    }
}

/// `op=pingpong`.
pub fn pingpong(shm: &Shm) -> bool {
    let (Some(peer), Some(role)) = (peer(shm), role(shm)) else {
        return false;
    };
    let count = shm.get_u64("count").unwrap_or(1);
    if !shm.interrupts() {
        return false;
    }
    let mut sent = 0;
    for i in 0..count {
        if role == Role::Initiator {
            shm.dev.ring(peer, 0);
            sent += 1;
        }
        if !shm.wait_received(0, i + 1) {
            serial::error()
                .str("shm pingpong timed out at ")
                .dec(i)
                .str(" received ")
                .dec(received(0));
            crate::apic::report();
            return false;
        }
        if role == Role::Responder {
            shm.dev.ring(peer, 0);
            sent += 1;
        }
    }
    serial::line()
        .str("shm pingpong done ")
        .dec(count)
        .str(" sent ")
        .dec(sent)
        .str(" received ")
        .dec(received(0));
    true
}

/// The exchange's view of the region.
struct Exchange<'s, 'a> {
    shm: &'s Shm<'a>,
    base: u64,
    me: u16,
    peer: u16,
}

impl Exchange<'_, '_> {
    fn slot(&self, id: u16) -> u64 {
        self.base + SLOTS_START + SLOT_SIZE * u64::from(id)
    }

    fn stopped(&self) -> bool {
        self.shm.region().read64(self.base).is_some_and(|w| w != 0)
    }

    fn publish(&self, seq: u64) {
        let slot = self.slot(self.me);
        let region = self.shm.region();
        region.write64(slot + 8, seq ^ EXCHANGE_SALT ^ u64::from(self.me));
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        region.write64(slot, seq);
    }

    fn peer_seq(&self) -> u64 {
        self.shm.region().read64(self.slot(self.peer)).unwrap_or(0)
    }

    /// Checks the peer's slot holds `seq` with its data word.
    fn check_peer(&self, seq: u64) -> bool {
        let slot = self.slot(self.peer);
        let got_seq = self.peer_seq();
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let data = self.shm.region().read64(slot + 8).unwrap_or(0);
        let want = seq ^ EXCHANGE_SALT ^ u64::from(self.peer);
        if got_seq == seq && data == want {
            return true;
        }
        serial::error()
            .str("shm exchange peer ")
            .dec(u64::from(self.peer))
            .str(" seq ")
            .dec(got_seq)
            .str(" data ")
            .hex0x(data)
            .str(" expected seq ")
            .dec(seq)
            .str(" data ")
            .hex0x(want);
        false
    }
}

/// `op=exchange`.
pub fn exchange(shm: &Shm) -> bool {
    let (Some(peer), Some(role)) = (peer(shm), role(shm)) else {
        return false;
    };
    let base = shm
        .get_u64("offset")
        .unwrap_or_else(|| shm.region().data_offset());
    let me = u16::try_from(shm.dev.id()).unwrap_or(u16::MAX);
    let top = SLOTS_START + SLOT_SIZE * (u64::from(me.max(peer)) + 1);
    if !base.is_multiple_of(8) || base.saturating_add(top) > shm.region().size() {
        serial::error()
            .str("shm exchange layout does not fit at ")
            .hex0x(base);
        return false;
    }
    let every = shm.get_u64("every").unwrap_or(DEFAULT_EVERY).max(1);
    let rering = timer::seconds(shm.get_u64("rering").unwrap_or(DEFAULT_RERING_S)).max(1);
    if !shm.interrupts() {
        return false;
    }
    let ex = Exchange {
        shm,
        base,
        me,
        peer,
    };
    let (mut sent, mut rerings, mut rounds) = (0u64, 0u64, 0u64);
    let deadline_ticks = shm.timeout();
    'rounds: loop {
        let seq = rounds + 1;
        if role == Role::Initiator {
            ex.publish(seq);
            shm.dev.ring(peer, 0);
            sent += 1;
        }
        // Wait for the peer's seq and its doorbell, or the stop word.
        let mut waited = 0;
        loop {
            if ex.stopped() {
                break 'rounds;
            }
            let ready = || ex.peer_seq() >= seq && received(0) >= seq;
            if timer::wait_until(|| ready() || ex.stopped(), rering) {
                if ready() {
                    break;
                }
                continue;
            }
            waited += rering;
            if waited >= deadline_ticks {
                serial::error()
                    .str("shm exchange stalled at round ")
                    .dec(rounds)
                    .str(" peer seq ")
                    .dec(ex.peer_seq())
                    .str(" received ")
                    .dec(received(0));
                return false;
            }
            // Nothing for a while: ring again for what we published last
            // (a responder that has published nothing yet stays quiet).
            if role == Role::Initiator || rounds > 0 {
                shm.dev.ring(peer, 0);
                rerings += 1;
            }
        }
        if !ex.check_peer(seq) {
            return false;
        }
        if role == Role::Responder {
            ex.publish(seq);
            shm.dev.ring(peer, 0);
            sent += 1;
        }
        rounds = seq;
        if rounds.is_multiple_of(every) {
            serial::line().str("shm exchange ").dec(rounds);
        }
    }
    serial::line()
        .str("shm exchange done ")
        .dec(rounds)
        .str(" sent ")
        .dec(sent)
        .str(" received ")
        .dec(received(0))
        .str(" rerings ")
        .dec(rerings);
    true
}
