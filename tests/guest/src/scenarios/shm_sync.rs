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
//! `op=exchange peer=<id>[,<id>...] role=initiator|responder [offset=<n>]
//! [every=<rounds>] [rering=<s>]`: lockstep rounds through the region and
//! doorbells until the stop word is set. An initiator may list up to 8
//! peers (a star: each responder lists only the initiator); it then waits
//! for all their seqs and at least one doorbell per round (doorbells of
//! several peers to one vector share an eventfd and may coalesce, so its
//! `received` can be below `sent`). Layout at `base` (`offset=`,
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
//! Round 1 re-rings after at most a second and does not count: a member
//! that just joined may not be known to the other VMMs yet (QEMU and Shoal
//! learn of peers from the server asynchronously) and its doorbells drop.
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

/// Peers an initiator exchanges with at most.
const MAX_PEERS: usize = 8;

/// The exchange's view of the region.
struct Exchange<'s, 'a> {
    shm: &'s Shm<'a>,
    base: u64,
    me: u16,
    peers: &'s [u16],
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

    fn ring_all(&self) {
        for &peer in self.peers {
            self.shm.dev.ring(peer, 0);
        }
    }

    fn seq_of(&self, peer: u16) -> u64 {
        self.shm.region().read64(self.slot(peer)).unwrap_or(0)
    }

    /// The lowest seq among the peers.
    fn peer_seq(&self) -> u64 {
        self.peers
            .iter()
            .map(|&p| self.seq_of(p))
            .min()
            .unwrap_or(0)
    }

    /// Checks every peer's slot holds `seq` with its data word.
    fn check_peers(&self, seq: u64) -> bool {
        self.peers.iter().all(|&peer| self.check_peer(peer, seq))
    }

    fn check_peer(&self, peer: u16, seq: u64) -> bool {
        let slot = self.slot(peer);
        let got_seq = self.seq_of(peer);
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let data = self.shm.region().read64(slot + 8).unwrap_or(0);
        let want = seq ^ EXCHANGE_SALT ^ u64::from(peer);
        if got_seq == seq && data == want {
            return true;
        }
        serial::error()
            .str("shm exchange peer ")
            .dec(u64::from(peer))
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

/// `peer=<id>[,<id>...]`: the peer list (more than one for an initiator only).
fn peer_list(shm: &Shm, list: &mut [u16; MAX_PEERS]) -> Option<usize> {
    let text = shm.get("peer").unwrap_or(b"");
    let mut count = 0;
    for word in text.split(|&b| b == b',') {
        let id = crate::cmdline::parse_u64(word).and_then(|p| u16::try_from(p).ok());
        match (id, list.get_mut(count)) {
            (Some(id), Some(slot)) => {
                *slot = id;
                count += 1;
            }
            _ => {
                serial::error().str("shm peer= must list 1 to 8 peer ids");
                return None;
            }
        }
    }
    Some(count)
}

/// `op=exchange`.
pub fn exchange(shm: &Shm) -> bool {
    let mut list = [0u16; MAX_PEERS];
    let (Some(count), Some(role)) = (peer_list(shm, &mut list), role(shm)) else {
        return false;
    };
    let peers = list.get(..count).unwrap_or(&[]);
    if role == Role::Responder && peers.len() != 1 {
        serial::error().str("shm exchange responder takes one peer");
        return false;
    }
    let base = shm
        .get_u64("offset")
        .unwrap_or_else(|| shm.region().data_offset());
    let me = u16::try_from(shm.dev.id()).unwrap_or(u16::MAX);
    let highest = peers.iter().copied().fold(me, u16::max);
    let top = SLOTS_START + SLOT_SIZE * (u64::from(highest) + 1);
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
        peers,
    };
    let fan = peers.len() as u64;
    let (mut sent, mut rerings, mut rounds) = (0u64, 0u64, 0u64);
    let deadline_ticks = shm.timeout();
    'rounds: loop {
        let seq = rounds + 1;
        let received_before = received(0);
        if role == Role::Initiator {
            ex.publish(seq);
            ex.ring_all();
            sent += fan;
        }
        // Wait for every peer's seq and doorbell, or the stop word.
        let mut waited = 0;
        let round_start = received_before;
        loop {
            if ex.stopped() {
                break 'rounds;
            }
            // One doorbell per peer, but doorbells of several peers to one
            // vector share an eventfd and may coalesce: with more than one
            // peer, one interrupt per round is all that can be counted on.
            let ready = || {
                ex.peer_seq() >= seq
                    && if fan == 1 {
                        received(0) >= seq
                    } else {
                        received(0) > round_start
                    }
            };
            // Round 1 re-rings sooner and uncounted: a peer's VMM may not
            // know a member that just joined yet, and drops its doorbells.
            let interval = if seq == 1 {
                rering.min(timer::TICK_HZ)
            } else {
                rering
            };
            if timer::wait_until(|| ready() || ex.stopped(), interval) {
                if ready() {
                    break;
                }
                continue;
            }
            waited += interval;
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
                ex.ring_all();
                if seq > 1 {
                    rerings += 1;
                }
            }
        }
        if !ex.check_peers(seq) {
            return false;
        }
        if role == Role::Responder {
            ex.publish(seq);
            ex.ring_all();
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
