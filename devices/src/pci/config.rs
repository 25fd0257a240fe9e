// SPDX-License-Identifier: Apache-2.0
//! A type-0 PCI configuration space: header, BARs, capability list.
//!
//! Registers are kept as dwords together with a per-bit writable mask and a
//! write-one-to-clear mask, so any guest write (byte, word or dword, at any
//! byte offset) is applied the same way. BARs are ordinary registers whose
//! writable mask is their address bits: a guest writing all-ones reads back
//! the size mask, with no special case. A write that moves a BAR (outside of
//! sizing) is returned as a [`BarMove`].

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Dwords in the legacy configuration space (256 bytes).
pub const CONFIG_REGS: usize = 64;
/// Dwords in the PCIe extended configuration space (4 KiB).
pub const EXTENDED_CONFIG_REGS: usize = 1024;
/// Number of BAR registers of a type-0 header.
pub const NUM_BARS: usize = 6;

const COMMAND_REG: usize = 1;
const CLASS_REG: usize = 2;
const HEADER_REG: usize = 3;
const BAR0_REG: usize = 4;
const SUBSYSTEM_REG: usize = 11;
const CAP_PTR_REG: usize = 13;
const INTERRUPT_REG: usize = 15;
const FIRST_CAP_OFFSET: usize = 0x40;
const LEGACY_END: usize = CONFIG_REGS * 4;

/// Command register bits a guest may change: I/O, memory, bus master,
/// parity error response, SERR#, interrupt disable.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status register bits that are write-one-to-clear (error bits).
const STATUS_W1C: u32 = 0xf900;
/// Command bit: I/O space decoding.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command bit: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command bit: bus master.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bit (PCI 2.3): INTx emulation disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status bit (PCI 2.3): INTx pending.
pub const STATUS_INTX: u16 = 1 << 3;
/// Status bit: capability list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

const BAR_IO: u32 = 0x1;
const BAR_MEM64: u32 = 0x4;
const BAR_PREFETCH: u32 = 0x8;
const MIN_MEM_BAR: u64 = 16;
const MIN_IO_BAR: u64 = 4;
const MAX_IO_BAR: u64 = 256;
const MAX_MEM32_BAR: u64 = 1 << 31;

/// Errors of configuration-space setup (never of guest accesses).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciConfigError {
    /// BAR index past the header (64-bit BARs take two).
    #[error("BAR {0} does not exist")]
    BadBarIndex(usize),
    /// The BAR (or its upper half) is already in use.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// The BAR was never added.
    #[error("BAR {0} is not in use")]
    NoSuchBar(usize),
    /// Sizes must be powers of two within the kind's limits.
    #[error("BAR size {0:#x} is not valid for its kind")]
    BadBarSize(u64),
    /// The address is not aligned to the size or does not fit the kind.
    #[error("BAR address {addr:#x} is not valid for a BAR of size {size:#x}")]
    BadBarAddress {
        /// Address asked for.
        addr: u64,
        /// Size of the BAR.
        size: u64,
    },
    /// No room left in the capability area.
    #[error("No room for a capability of {0} bytes")]
    CapabilityFull(usize),
    /// A snapshot's register arrays have the wrong length.
    #[error("Configuration snapshot is malformed")]
    BadSnapshot,
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BarKind {
    /// 32-bit memory BAR (non-prefetchable).
    Mmio32,
    /// 64-bit memory BAR; takes two BAR registers.
    Mmio64 {
        /// Prefetchable (RAM-like, no read side effects).
        prefetch: bool,
    },
    /// I/O port BAR.
    Io,
}

/// A BAR as the vmm sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarInfo {
    /// BAR index (the lower register for a 64-bit BAR).
    pub index: usize,
    /// Current guest address (0 until assigned).
    pub addr: u64,
    /// Size in bytes (power of two).
    pub size: u64,
    /// What it decodes.
    pub kind: BarKind,
    /// `true`: accesses trap to the device (`bar_read`/`bar_write`).
    /// `false`: RAM-like, mapped straight into the guest (a memory slot).
    pub trapped: bool,
}

/// A BAR the guest moved, as reported by [`PciConfiguration::write_reg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarMove {
    /// BAR index.
    pub bar: usize,
    /// Address before the write.
    pub old: u64,
    /// Address after the write.
    pub new: u64,
    /// Size of the BAR.
    pub size: u64,
    /// Kind of the BAR.
    pub kind: BarKind,
    /// Whether it traps (bus range) or is RAM-like (memory slot).
    pub trapped: bool,
}

/// Identity registers of a function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BarSlot {
    size: u64,
    kind: BarKind,
    trapped: bool,
    /// Address last reported (or set by the vmm).
    addr: u64,
}

/// One function's configuration space. Serializable as its own snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfiguration {
    regs: Vec<u32>,
    wmask: Vec<u32>,
    w1c: Vec<u32>,
    bars: [Option<BarSlot>; NUM_BARS],
    /// What the guest last wrote to each BAR register (sizing detection).
    bar_raw: [u32; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

/// Splits an access at byte `offset` of a dword into (value, byte mask),
/// or `None` if it is not 1..=4 bytes inside the dword.
pub(crate) fn dword_access(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let off = usize::try_from(offset).ok()?;
    if data.is_empty() || off >= 4 || off + data.len() > 4 {
        return None;
    }
    let mut val = 0u32;
    let mut mask = 0u32;
    for (i, b) in data.iter().enumerate() {
        let shift = (off + i) * 8;
        val |= u32::from(*b) << shift;
        mask |= 0xff << shift;
    }
    Some((val, mask))
}

impl PciConfiguration {
    /// A function with the given identity, no BARs and no capabilities;
    /// `extended` gives it the 4 KiB PCIe space (extended part reads 0).
    pub fn new(h: &PciHeader, extended: bool) -> Self {
        let n = if extended {
            EXTENDED_CONFIG_REGS
        } else {
            CONFIG_REGS
        };
        let mut c = Self {
            regs: vec![0; n],
            wmask: vec![0; n],
            w1c: vec![0; n],
            bars: [None; NUM_BARS],
            bar_raw: [0; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP_OFFSET,
        };
        c.regs[0] = u32::from(h.device_id) << 16 | u32::from(h.vendor_id);
        c.regs[CLASS_REG] = u32::from(h.class) << 24
            | u32::from(h.subclass) << 16
            | u32::from(h.prog_if) << 8
            | u32::from(h.revision);
        c.regs[SUBSYSTEM_REG] = u32::from(h.subsystem_id) << 16 | u32::from(h.subsystem_vendor_id);
        c.wmask[COMMAND_REG] = COMMAND_WRITABLE;
        c.w1c[COMMAND_REG] = STATUS_W1C << 16;
        // Cache line size.
        c.wmask[HEADER_REG] = 0xff;
        // Interrupt line.
        c.wmask[INTERRUPT_REG] = 0xff;
        c
    }

    /// Checks a deserialized snapshot before use.
    pub fn validate(&self) -> Result<(), PciConfigError> {
        let n = self.regs.len();
        let ok = (n == CONFIG_REGS || n == EXTENDED_CONFIG_REGS)
            && self.wmask.len() == n
            && self.w1c.len() == n
            && self.next_cap <= LEGACY_END
            && self.last_cap.is_none_or(|c| c + 1 < LEGACY_END);
        let bars_ok = self.bars.iter().enumerate().all(|(i, s)| {
            s.is_none_or(|s| {
                let wide = matches!(s.kind, BarKind::Mmio64 { .. });
                s.size.is_power_of_two()
                    && (!wide || (i + 1 < NUM_BARS && self.bars[i + 1].is_none()))
            })
        });
        (ok && bars_ok)
            .then_some(())
            .ok_or(PciConfigError::BadSnapshot)
    }

    /// Accepts a deserialized snapshot after checking it.
    pub fn restore(state: PciConfiguration) -> Result<Self, PciConfigError> {
        state.validate()?;
        Ok(state)
    }

    /// Whether the function has the 4 KiB extended space.
    pub fn is_extended(&self) -> bool {
        self.regs.len() == EXTENDED_CONFIG_REGS
    }

    /// Reads dword `reg`; all-ones past the end of the space.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// Applies a guest write of `data` at byte `offset` (0..4) of dword
    /// `reg`. Bad sizes, offsets and registers are ignored. Returns the BAR
    /// move this write caused, if any.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let (val, bytes) = dword_access(offset, data)?;
        let wmask = *self.wmask.get(reg)? & bytes;
        let w1c = *self.w1c.get(reg)? & bytes & val;
        let cur = self.regs.get_mut(reg)?;
        *cur = ((*cur & !wmask) | (val & wmask)) & !w1c;
        let bar_reg = reg.checked_sub(BAR0_REG).filter(|r| *r < NUM_BARS)?;
        self.bar_raw[bar_reg] = (self.bar_raw[bar_reg] & !bytes) | (val & bytes);
        self.bar_written(bar_reg)
    }

    /// Sets raw register bits, bypassing the masks (device-side writes).
    pub fn set_reg(&mut self, reg: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = value;
        }
    }

    /// Makes `mask` bits of dword `reg` guest-writable (for capabilities).
    pub fn set_writable(&mut self, reg: usize, mask: u32) {
        if let Some(m) = self.wmask.get_mut(reg) {
            *m = mask;
        }
    }

    /// Identity of the function.
    pub fn vendor_device(&self) -> (u16, u16) {
        (self.regs[0] as u16, (self.regs[0] >> 16) as u16)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[COMMAND_REG] as u16
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        (self.regs[COMMAND_REG] >> 16) as u16
    }

    /// Memory space decoding enabled.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// I/O space decoding enabled.
    pub fn io_enabled(&self) -> bool {
        self.command() & COMMAND_IO != 0
    }

    /// Bus mastering (DMA, MSI) enabled.
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Command bit 10: the guest disabled INTx.
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Status bit 3: INTx pending in the function (independent of disable).
    pub fn intx_status(&self) -> bool {
        self.status() & STATUS_INTX != 0
    }

    /// Sets or clears status bit 3.
    pub fn set_intx_status(&mut self, pending: bool) {
        let bit = u32::from(STATUS_INTX) << 16;
        if pending {
            self.regs[COMMAND_REG] |= bit;
        } else {
            self.regs[COMMAND_REG] &= !bit;
        }
    }

    /// Sets the interrupt line (0x3c) and pin (0x3d, 1 = INTA, 0 = none).
    pub fn set_interrupt(&mut self, line: u8, pin: u8) {
        let r = &mut self.regs[INTERRUPT_REG];
        *r = (*r & !0xffff) | u32::from(pin) << 8 | u32::from(line);
    }

    /// Interrupt line register (0x3c).
    pub fn interrupt_line(&self) -> u8 {
        self.regs[INTERRUPT_REG] as u8
    }

    /// Interrupt pin register (0x3d).
    pub fn interrupt_pin(&self) -> u8 {
        (self.regs[INTERRUPT_REG] >> 8) as u8
    }

    /// Declares BAR `index` (address 0 until [`Self::set_bar_addr`]).
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        trapped: bool,
    ) -> Result<(), PciConfigError> {
        let wide = matches!(kind, BarKind::Mmio64 { .. });
        let last = if wide { index + 1 } else { index };
        if last >= NUM_BARS {
            return Err(PciConfigError::BadBarIndex(index));
        }
        for i in index..=last {
            if self.bars[i].is_some() || self.upper_half_of(i).is_some() {
                return Err(PciConfigError::BarInUse(i));
            }
        }
        let (min, max) = match kind {
            BarKind::Io => (MIN_IO_BAR, MAX_IO_BAR),
            BarKind::Mmio32 => (MIN_MEM_BAR, MAX_MEM32_BAR),
            BarKind::Mmio64 { .. } => (MIN_MEM_BAR, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciConfigError::BadBarSize(size));
        }
        let addr_mask = !(size - 1);
        let (flags, low_mask) = match kind {
            BarKind::Io => (BAR_IO, !0x3u32),
            BarKind::Mmio32 => (0, !0xfu32),
            BarKind::Mmio64 { prefetch } => {
                (BAR_MEM64 | if prefetch { BAR_PREFETCH } else { 0 }, !0xfu32)
            }
        };
        let r = BAR0_REG + index;
        self.regs[r] = flags;
        self.wmask[r] = addr_mask as u32 & low_mask;
        self.bar_raw[index] = flags;
        if wide {
            self.regs[r + 1] = 0;
            self.wmask[r + 1] = (addr_mask >> 32) as u32;
            self.bar_raw[index + 1] = 0;
        }
        self.bars[index] = Some(BarSlot {
            size,
            kind,
            trapped,
            addr: 0,
        });
        Ok(())
    }

    /// The 64-bit BAR whose upper register is `i`, if any.
    fn upper_half_of(&self, i: usize) -> Option<usize> {
        let lower = i.checked_sub(1)?;
        matches!(self.bars[lower]?.kind, BarKind::Mmio64 { .. }).then_some(lower)
    }

    /// Programs BAR `index` to `addr` (vmm-side, before boot or on restore).
    pub fn set_bar_addr(&mut self, index: usize, addr: u64) -> Result<(), PciConfigError> {
        let slot = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciConfigError::NoSuchBar(index))?;
        let fits = match slot.kind {
            BarKind::Mmio64 { .. } => true,
            BarKind::Mmio32 | BarKind::Io => addr
                .checked_add(slot.size - 1)
                .is_some_and(|e| e <= u64::from(u32::MAX)),
        };
        if addr % slot.size != 0 || !fits {
            return Err(PciConfigError::BadBarAddress {
                addr,
                size: slot.size,
            });
        }
        let r = BAR0_REG + index;
        self.regs[r] = (self.regs[r] & !self.wmask[r]) | (addr as u32 & self.wmask[r]);
        self.bar_raw[index] = self.regs[r];
        if let BarKind::Mmio64 { .. } = slot.kind {
            self.regs[r + 1] = (addr >> 32) as u32;
            self.bar_raw[index + 1] = self.regs[r + 1];
        }
        if let Some(s) = self.bars[index].as_mut() {
            s.addr = addr;
        }
        Ok(())
    }

    /// The address BAR `index` decodes now, from its registers.
    fn decoded_addr(&self, index: usize, slot: &BarSlot) -> u64 {
        let r = BAR0_REG + index;
        let lo = u64::from(self.regs[r] & self.wmask[r]);
        match slot.kind {
            BarKind::Mmio64 { .. } => lo | u64::from(self.regs[r + 1]) << 32,
            _ => lo,
        }
    }

    /// After a guest write to BAR register `bar_reg`: report a move unless
    /// the BAR is being sized (a half holds the all-ones sizing pattern).
    fn bar_written(&mut self, bar_reg: usize) -> Option<BarMove> {
        let index = match self.bars[bar_reg] {
            Some(_) => bar_reg,
            None => self.upper_half_of(bar_reg)?,
        };
        let slot = self.bars[index]?;
        let wide = matches!(slot.kind, BarKind::Mmio64 { .. });
        let sizing =
            self.bar_raw[index] == u32::MAX || (wide && self.bar_raw[index + 1] == u32::MAX);
        if sizing {
            return None;
        }
        let new = self.decoded_addr(index, &slot);
        if new == slot.addr {
            return None;
        }
        if let Some(s) = self.bars[index].as_mut() {
            s.addr = new;
        }
        Some(BarMove {
            bar: index,
            old: slot.addr,
            new,
            size: slot.size,
            kind: slot.kind,
            trapped: slot.trapped,
        })
    }

    /// The BARs in use.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                s.map(|s| BarInfo {
                    index,
                    addr: s.addr,
                    size: s.size,
                    kind: s.kind,
                    trapped: s.trapped,
                })
            })
            .collect()
    }

    /// One BAR, if in use.
    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        self.bars().into_iter().find(|b| b.index == index)
    }

    /// Appends a capability with ID `id` and `body` (the bytes after the
    /// ID and next-pointer), returning its byte offset. Its registers are
    /// read-only until [`Self::set_writable`] says otherwise.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, PciConfigError> {
        let len = body.len() + 2;
        let offset = self.next_cap;
        let end = offset + len;
        if end > LEGACY_END {
            return Err(PciConfigError::CapabilityFull(len));
        }
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(offset + 2 + i, *b);
        }
        match self.last_cap {
            None => self.set_byte(CAP_PTR_REG * 4, offset as u8),
            Some(prev) => self.set_byte(prev + 1, offset as u8),
        }
        self.regs[COMMAND_REG] |= u32::from(STATUS_CAP_LIST) << 16;
        self.last_cap = Some(offset);
        self.next_cap = (end + 3) & !3;
        Ok(offset)
    }

    fn set_byte(&mut self, offset: usize, v: u8) {
        let shift = (offset % 4) * 8;
        if let Some(r) = self.regs.get_mut(offset / 4) {
            *r = (*r & !(0xff << shift)) | u32::from(v) << shift;
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
