// SPDX-License-Identifier: Apache-2.0
//! `scenario=shm op=<op>[,<op>...]`: the shared-memory group device.
//!
//! Ops run in the order given, sharing the other arguments; `<op>.<key>=`
//! overrides `<key>=` for one op (`op=write,await await.pattern=0x2`):
//!
//! - `info`: `SHOAL-TG shm id <IVPosition> size <bytes> vectors <n>`, then
//!   `SHOAL-TG shm bar <i> 0x<addr> 0x<size> vmm|guest` per BAR and
//!   `SHOAL-TG shm data-offset <n>` (0 without a Shoal group header) and
//!   `SHOAL-TG shm intx pin <gsi>` (interrupt-line register) or `intx none`.
//! - `write offset=<n> pattern=<n> [len=8]`: fills `len` bytes (whole
//!   words) with the 64-bit pattern: `SHOAL-TG shm wrote 0x<off> 0x<pattern>`.
//! - `read offset=<n> [len=8]`: `SHOAL-TG shm read 0x<off> 0x<value>` per word.
//! - `await offset=<n> pattern=<n> [timeout=<s>]`: waits until the word
//!   equals the pattern: `SHOAL-TG shm saw 0x<off> 0x<value>`.
//! - `ring peer=<id> [vector=0] [count=1]`: `SHOAL-TG shm rang <peer> <vector> <count>`.
//! - `wait count=<n> [timeout=<s>]`: `SHOAL-TG shm irq vector <v>` per
//!   MSI-X interrupt (`SHOAL-TG shm irq intx status 0x<s>` in INTx mode),
//!   then `SHOAL-TG shm wait done <n>`.
//! - `pingpong peer=<id> count=<n> role=initiator|responder`: see
//!   [`super::shm_sync`].
//! - `exchange peer=<id> role=...`: see [`super::shm_sync`].
//!
//! `bars=guest` makes the guest clear BARs 0-3 and assign them itself (the
//! path taken when a VMM leaves them at 0), BAR2 in the 64-bit window above
//! 4 GiB, mapped on demand.
//!
//! Interrupts are set up once, by the first op that needs them, which then
//! prints `SHOAL-TG shm ready msix <vectors>` or `SHOAL-TG shm ready intx
//! pin <gsi>`: a peer must not ring before that line (a doorbell to a
//! device whose MSI-X is still off is dropped). `irq=intx` picks INTx
//! (IOAPIC pin from the interrupt-line register, or `gsi=<n>`).

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{shm_sync, Context};
use crate::ivshmem::{self, Device, Region};
use crate::start_info::E820_RAM;
use crate::{apic, interrupts, ioapic, serial, timer};

/// Local APIC vector of MSI-X vector 0 (vector `i` is `MSIX_BASE + i`).
pub const MSIX_BASE: u8 = 0x50;
/// Local APIC vector of INTx.
pub const INTX_VECTOR: u8 = 0x70;
const DEFAULT_TIMEOUT_S: u64 = 60;
const MAX_READ_WORDS: u64 = 64;

/// Interrupts per device vector (index 16 counts INTx).
static RECEIVED: [AtomicU64; 17] = [const { AtomicU64::new(0) }; 17];
/// INTx interrupts that found IntrStatus clear (spurious: FIELD-NOTES).
static SPURIOUS_INTX: AtomicU64 = AtomicU64::new(0);
/// Last non-zero IntrStatus the INTx handler read.
static INTX_STATUS: AtomicU32 = AtomicU32::new(0);
/// BAR0 address for the INTx handler.
static REGS: AtomicU64 = AtomicU64::new(0);
const INTX_SLOT: usize = 16;

fn on_msix(vector: u8) {
    if let Some(count) = RECEIVED.get(usize::from(vector.wrapping_sub(MSIX_BASE))) {
        count.fetch_add(1, Ordering::AcqRel);
    }
}

fn on_intx(_vector: u8) {
    let status = crate::io::mmio_read32(REGS.load(Ordering::Acquire) + ivshmem::REG_INTR_STATUS);
    if status == 0 {
        SPURIOUS_INTX.fetch_add(1, Ordering::Relaxed);
    } else {
        INTX_STATUS.store(status, Ordering::Relaxed);
        if let Some(count) = RECEIVED.get(INTX_SLOT) {
            count.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Interrupts received on device vector `vector` (INTx counts as 0 in INTx mode).
pub fn received(vector: u16) -> u64 {
    let slot = if Mode::is_intx() {
        INTX_SLOT
    } else {
        usize::from(vector)
    };
    RECEIVED.get(slot).map_or(0, |c| c.load(Ordering::Acquire))
}

static MODE: AtomicU32 = AtomicU32::new(0);

/// How interrupts were set up.
struct Mode;

impl Mode {
    const NONE: u32 = 0;
    const MSIX: u32 = 1;
    const INTX: u32 = 2;

    fn is_intx() -> bool {
        MODE.load(Ordering::Relaxed) == Self::INTX
    }
}

/// The state the ops share.
pub struct Shm<'a> {
    /// The scenario context.
    pub ctx: &'a Context<'a>,
    /// The device.
    pub dev: Device,
    /// The op running (the scope of `<op>.<key>=` arguments).
    pub op: Cell<&'a [u8]>,
}

impl Shm<'_> {
    /// Argument `key` of the running op (`<op>.<key>=`, else `<key>=`).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.ctx.args.get_scoped(self.op.get(), key)
    }

    /// [`Shm::get`] as a number.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.ctx.args.get_scoped_u64(self.op.get(), key)
    }

    /// Timeout of each wait of the running op, in ticks (`timeout=` seconds).
    pub fn timeout(&self) -> u64 {
        timer::seconds(self.get_u64("timeout").unwrap_or(DEFAULT_TIMEOUT_S))
    }

    /// The region.
    pub fn region(&self) -> &Region {
        &self.dev.region
    }

    /// Sets up interrupts (once) and prints the ready line; false on failure.
    pub fn interrupts(&self) -> bool {
        if MODE.load(Ordering::Relaxed) != Mode::NONE {
            return true;
        }
        timer::start();
        let bsp = apic::id() as u8;
        let want_intx = self.get("irq") == Some(b"intx") || self.dev.msix.is_none();
        if want_intx {
            let gsi = match self.get_u64("gsi") {
                Some(g) => u8::try_from(g).ok(),
                None => self.dev.intx_pin(),
            };
            let Some(gsi) = gsi else {
                serial::error().str("shm no intx pin");
                return false;
            };
            let ioapic_base = self
                .ctx
                .madt
                .and_then(|m| m.ioapic)
                .map_or(ioapic::DEFAULT_BASE, |(_, addr, _)| u64::from(addr));
            REGS.store(self.dev.regs.bar.addr, Ordering::Release);
            interrupts::set_handler(INTX_VECTOR, on_intx);
            MODE.store(Mode::INTX, Ordering::Relaxed);
            self.dev.enable_intx(ioapic_base, gsi, INTX_VECTOR, bsp);
            serial::line()
                .str("shm ready intx pin ")
                .dec(u64::from(gsi));
        } else {
            for i in 0..ivshmem::MAX_VECTORS as u8 {
                interrupts::set_handler(MSIX_BASE + i, on_msix);
            }
            MODE.store(Mode::MSIX, Ordering::Relaxed);
            let routed = self.dev.enable_msix(MSIX_BASE, bsp);
            serial::line().str("shm ready msix ").dec(u64::from(routed));
        }
        true
    }

    /// Sleeps until `received(vector) >= target` or the timeout.
    pub fn wait_received(&self, vector: u16, target: u64) -> bool {
        timer::wait_until(|| received(vector) >= target, self.timeout())
    }
}

fn ram_end(ctx: &Context) -> u64 {
    ctx.memmap
        .iter()
        .filter(|r| r.kind == E820_RAM)
        .map(|r| r.addr.saturating_add(r.size))
        .max()
        .unwrap_or(0)
}

/// Runs the scenario.
pub fn run(ctx: &Context) {
    let unassign = ctx.args.get("bars") == Some(b"guest");
    let dev = match ivshmem::open(ctx.mcfg, ram_end(ctx), unassign) {
        Ok(dev) => dev,
        Err(e) => {
            let mut line = serial::error();
            line.str("shm ");
            if let Some(bar) = e.bar() {
                line.str("bar ").dec(u64::from(bar)).str(" ");
            }
            line.str(e.message());
            return;
        }
    };
    let shm = Shm {
        ctx,
        dev,
        op: Cell::new(b""),
    };
    let ops = ctx.args.get("op").unwrap_or(b"info");
    for op in ops.split(|&b| b == b',') {
        shm.op.set(op);
        let ok = match op {
            b"info" => info(&shm),
            b"write" => write(&shm),
            b"read" => read(&shm),
            b"await" => await_pattern(&shm),
            b"ring" => ring(&shm),
            b"wait" => wait(&shm),
            b"pingpong" => shm_sync::pingpong(&shm),
            b"exchange" => shm_sync::exchange(&shm),
            _ => {
                serial::error().str("shm unknown op ").bytes(op);
                false
            }
        };
        if !ok {
            break;
        }
    }
}

fn info(shm: &Shm) -> bool {
    let dev = &shm.dev;
    serial::line()
        .str("shm id ")
        .dec(u64::from(dev.id()))
        .str(" size ")
        .dec(dev.region.size())
        .str(" vectors ")
        .dec(u64::from(dev.vectors()));
    let mut bars = [(0u8, Some(dev.regs)), (2, Some(dev.shared)), (1, None)];
    if let Some(msix) = dev.msix {
        if msix.bar.bar.addr != dev.regs.bar.addr && msix.bar.bar.addr != dev.shared.bar.addr {
            bars[2].1 = Some(msix.bar);
        }
    }
    for (index, bar) in bars {
        if let Some(b) = bar {
            serial::line()
                .str("shm bar ")
                .dec(u64::from(index))
                .str(" ")
                .hex0x(b.bar.addr)
                .str(" ")
                .hex0x(b.bar.size)
                .str(if b.by_guest { " guest" } else { " vmm" });
        }
    }
    serial::line()
        .str("shm data-offset ")
        .dec(dev.region.data_offset());
    let mut line = serial::line();
    line.str("shm intx ");
    match dev.intx_pin() {
        Some(pin) => line.str("pin ").dec(u64::from(pin)),
        None => line.str("none"),
    };
    true
}

/// `offset=` (required) and `len=` (default 8, whole words).
fn span(shm: &Shm) -> Option<(u64, u64)> {
    let Some(offset) = shm.get_u64("offset") else {
        serial::error().str("shm offset= missing");
        return None;
    };
    let len = shm.get_u64("len").unwrap_or(8);
    let in_range = offset.is_multiple_of(8)
        && len.is_multiple_of(8)
        && offset
            .checked_add(len)
            .is_some_and(|end| end <= shm.region().size());
    if !in_range {
        serial::error()
            .str("shm offset ")
            .hex0x(offset)
            .str(" len ")
            .dec(len)
            .str(" not 8-aligned words inside the region");
        return None;
    }
    Some((offset, len))
}

fn pattern(shm: &Shm) -> Option<u64> {
    let p = shm.get_u64("pattern");
    if p.is_none() {
        serial::error().str("shm pattern= missing");
    }
    p
}

fn write(shm: &Shm) -> bool {
    let (Some((offset, len)), Some(pattern)) = (span(shm), pattern(shm)) else {
        return false;
    };
    let mut at = offset;
    while at < offset + len {
        shm.region().write64(at, pattern);
        at += 8;
    }
    serial::line()
        .str("shm wrote ")
        .hex0x(offset)
        .str(" ")
        .hex0x(pattern);
    true
}

fn read(shm: &Shm) -> bool {
    let Some((offset, len)) = span(shm) else {
        return false;
    };
    let words = (len / 8).min(MAX_READ_WORDS);
    for i in 0..words {
        let at = offset + 8 * i;
        serial::line()
            .str("shm read ")
            .hex0x(at)
            .str(" ")
            .hex0x(shm.region().read64(at).unwrap_or(0));
    }
    true
}

fn await_pattern(shm: &Shm) -> bool {
    let (Some((offset, _)), Some(pattern)) = (span(shm), pattern(shm)) else {
        return false;
    };
    timer::start();
    let seen = timer::wait_until(
        || shm.region().read64(offset) == Some(pattern),
        shm.timeout(),
    );
    let value = shm.region().read64(offset).unwrap_or(0);
    if seen {
        serial::line()
            .str("shm saw ")
            .hex0x(offset)
            .str(" ")
            .hex0x(value);
    } else {
        serial::error()
            .str("shm await timed out at ")
            .hex0x(offset)
            .str(" value ")
            .hex0x(value);
    }
    seen
}

/// `peer=` as a peer id.
pub fn peer(shm: &Shm) -> Option<u16> {
    let p = shm.get_u64("peer").and_then(|p| u16::try_from(p).ok());
    if p.is_none() {
        serial::error().str("shm peer= missing or not a peer id");
    }
    p
}

fn ring(shm: &Shm) -> bool {
    let Some(peer) = peer(shm) else {
        return false;
    };
    let vector = shm
        .get_u64("vector")
        .and_then(|v| u16::try_from(v).ok())
        .unwrap_or(0);
    let count = shm.get_u64("count").unwrap_or(1);
    for _ in 0..count {
        shm.dev.ring(peer, vector);
    }
    serial::line()
        .str("shm rang ")
        .dec(u64::from(peer))
        .str(" ")
        .dec(u64::from(vector))
        .str(" ")
        .dec(count);
    true
}

fn wait(shm: &Shm) -> bool {
    if !shm.interrupts() {
        return false;
    }
    let count = shm.get_u64("count").unwrap_or(1);
    let mut reported = [0u64; 17];
    let mut total = 0;
    let total_now = || {
        RECEIVED
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .sum::<u64>()
    };
    while total < count {
        let before = total;
        if !timer::wait_until(|| total_now() > before, shm.timeout()) {
            serial::error()
                .str("shm wait timed out after ")
                .dec(total)
                .str(" interrupts");
            return false;
        }
        for (slot, seen) in reported.iter_mut().enumerate() {
            let now = RECEIVED.get(slot).map_or(0, |c| c.load(Ordering::Acquire));
            while *seen < now {
                *seen += 1;
                total += 1;
                if slot == INTX_SLOT {
                    serial::line()
                        .str("shm irq intx status ")
                        .hex0x(u64::from(INTX_STATUS.load(Ordering::Relaxed)));
                } else {
                    serial::line().str("shm irq vector ").dec(slot as u64);
                }
            }
        }
    }
    serial::line()
        .str("shm wait done ")
        .dec(total)
        .str(" spurious ")
        .dec(SPURIOUS_INTX.load(Ordering::Relaxed));
    true
}
