// SPDX-License-Identifier: Apache-2.0
//! MSI-X: capability, vector table and pending-bit array, reusable by any
//! function model.
//!
//! The guest programs the table through a BAR ([`MsixConfig::bar_read`] /
//! [`MsixConfig::bar_write`]) and enables/masks the function through the
//! capability's message control word ([`MsixConfig::config_written`]). The
//! vmm learns every change of a vector's message or effective mask through
//! [`MsixNotifier::vector_changed`] (to keep KVM irqfd routes current, so
//! eventfd-driven interrupts go kernel to kernel); device-originated
//! interrupts go through [`MsixConfig::trigger`], which delivers with
//! [`MsixNotifier::send`] or, while masked, sets the vector's pending bit and
//! delivers on unmask.
//!
//! Guest accesses to the table and PBA must be aligned dwords or qwords;
//! anything else reads all-ones and is ignored on write. Reserved bits read 0.

use std::fmt;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::{PciConfigError, PciConfiguration, NUM_BARS};
use crate::interrupt::MsiMessage;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const CTL_ENABLE: u16 = 1 << 15;
const CTL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

/// Told about MSI-X vectors; implemented by the vmm.
pub trait MsixNotifier: Send + Sync {
    /// Vector `vector` now has message `msg`; `masked` is true when it must
    /// not be delivered (vector masked, function masked, or MSI-X disabled).
    fn vector_changed(&self, vector: u16, msg: MsiMessage, masked: bool);
    /// Delivers `msg` now (the slow path for device-originated interrupts).
    fn send(&self, msg: MsiMessage) -> io::Result<()>;
}

/// Errors of MSI-X setup and restore (never of guest accesses).
#[derive(Debug, Error)]
pub enum MsixError {
    /// Vector count is 0 or above 2048.
    #[error("MSI-X vector count {0} is not valid")]
    BadVectorCount(u16),
    /// BAR index past 5, or an offset that is not 8-byte aligned.
    #[error("MSI-X table or PBA location is not valid")]
    BadLocation,
    /// The table and the PBA overlap in one BAR.
    #[error("MSI-X table and PBA overlap")]
    Overlap,
    /// Adding the capability failed.
    #[error("Failed to add the MSI-X capability")]
    Capability(#[source] PciConfigError),
    /// A snapshot does not match this function's vector count.
    #[error("MSI-X snapshot does not match the device")]
    BadSnapshot,
}

/// One table entry as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixTableEntry {
    /// Message address, low dword (bits 1:0 read 0).
    pub addr_lo: u32,
    /// Message address, high dword.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked; the rest reads 0).
    pub vector_ctrl: u32,
}

impl Default for MsixTableEntry {
    /// Entries come out of reset masked.
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            vector_ctrl: VECTOR_MASKED,
        }
    }
}

impl MsixTableEntry {
    /// The message this entry sends.
    pub fn msg(&self) -> MsiMessage {
        MsiMessage {
            addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    /// Per-vector mask bit.
    pub fn masked(&self) -> bool {
        self.vector_ctrl & VECTOR_MASKED != 0
    }

    fn dword(&self, i: u64) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.vector_ctrl,
        }
    }

    fn set_dword(&mut self, i: u64, v: u32) {
        match i {
            0 => self.addr_lo = v & !0x3,
            1 => self.addr_hi = v,
            2 => self.data = v,
            _ => self.vector_ctrl = v & VECTOR_MASKED,
        }
    }
}

/// Guest-visible MSI-X state, for snapshot and restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// The vector table.
    pub entries: Vec<MsixTableEntry>,
    /// Pending bits, 64 vectors per element.
    pub pba: Vec<u64>,
    /// Message control: MSI-X enable.
    pub enabled: bool,
    /// Message control: function mask.
    pub function_masked: bool,
}

/// Where a structure lives: BAR index and offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixLocation {
    /// BAR index (BIR).
    pub bar: u8,
    /// Offset in the BAR (8-byte aligned).
    pub offset: u32,
}

/// The MSI-X model of one function.
pub struct MsixConfig {
    state: MsixState,
    table: MsixLocation,
    pba: MsixLocation,
    cap_offset: Option<usize>,
    notifier: Arc<dyn MsixNotifier>,
}

impl fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.state.entries.len())
            .field("enabled", &self.state.enabled)
            .field("function_masked", &self.state.function_masked)
            .field("table", &self.table)
            .field("pba", &self.pba)
            .finish()
    }
}

fn pba_len(vectors: usize) -> usize {
    vectors.div_ceil(64)
}

/// (value, width) of an aligned dword or qword access, else `None`.
fn aligned(offset: u64, len: usize) -> Option<usize> {
    match len {
        4 | 8 if offset % len as u64 == 0 => Some(len),
        _ => None,
    }
}

impl MsixConfig {
    /// A function with `vectors` vectors (all masked), its table at `table`
    /// and its PBA at `pba`; interrupts and route changes go to `notifier`.
    pub fn new(
        vectors: u16,
        table: MsixLocation,
        pba: MsixLocation,
        notifier: Arc<dyn MsixNotifier>,
    ) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::BadVectorCount(vectors));
        }
        let n = usize::from(vectors);
        for l in [table, pba] {
            if usize::from(l.bar) >= NUM_BARS || l.offset % 8 != 0 {
                return Err(MsixError::BadLocation);
            }
        }
        let c = Self {
            state: MsixState {
                entries: vec![MsixTableEntry::default(); n],
                pba: vec![0; pba_len(n)],
                enabled: false,
                function_masked: false,
            },
            table,
            pba,
            cap_offset: None,
            notifier,
        };
        if table.bar == pba.bar {
            let t = (
                u64::from(table.offset),
                u64::from(table.offset) + c.table_size(),
            );
            let p = (u64::from(pba.offset), u64::from(pba.offset) + c.pba_size());
            if t.0 < p.1 && p.0 < t.1 {
                return Err(MsixError::Overlap);
            }
        }
        Ok(c)
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.state.entries.len() as u16
    }

    /// Bytes the table takes in its BAR.
    pub fn table_size(&self) -> u64 {
        self.state.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA takes in its BAR.
    pub fn pba_size(&self) -> u64 {
        self.state.pba.len() as u64 * 8
    }

    /// MSI-X enable bit.
    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    /// Function mask bit.
    pub fn function_masked(&self) -> bool {
        self.state.function_masked
    }

    /// One table entry.
    pub fn entry(&self, vector: u16) -> Option<MsixTableEntry> {
        self.state.entries.get(usize::from(vector)).copied()
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.state
            .pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn message_control(&self) -> u16 {
        let mut ctl = self.vectors() - 1;
        if self.state.enabled {
            ctl |= CTL_ENABLE;
        }
        if self.state.function_masked {
            ctl |= CTL_FUNCTION_MASK;
        }
        ctl
    }

    /// Adds the capability to `config` (enable and function-mask bits
    /// writable) and returns its offset.
    pub fn add_capability(&mut self, config: &mut PciConfiguration) -> Result<usize, MsixError> {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&self.message_control().to_le_bytes());
        body[2..6].copy_from_slice(&(self.table.offset | u32::from(self.table.bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(self.pba.offset | u32::from(self.pba.bar)).to_le_bytes());
        let off = config
            .add_capability(MSIX_CAP_ID, &body)
            .map_err(MsixError::Capability)?;
        config.set_writable(off / 4, u32::from(CTL_ENABLE | CTL_FUNCTION_MASK) << 16);
        self.cap_offset = Some(off);
        Ok(off)
    }

    /// Picks up enable/function-mask changes after a guest config write
    /// (call after every one; cheap when nothing changed).
    pub fn config_written(&mut self, config: &PciConfiguration) {
        if let Some(off) = self.cap_offset {
            self.set_message_control((config.read_reg(off / 4) >> 16) as u16);
        }
    }

    fn effective_mask(&self, e: &MsixTableEntry) -> bool {
        !self.state.enabled || self.state.function_masked || e.masked()
    }

    /// Applies a message control value (enable bit 15, function mask bit 14).
    pub fn set_message_control(&mut self, ctl: u16) {
        let enabled = ctl & CTL_ENABLE != 0;
        let fmask = ctl & CTL_FUNCTION_MASK != 0;
        if enabled == self.state.enabled && fmask == self.state.function_masked {
            return;
        }
        let before: Vec<bool> = self
            .state
            .entries
            .iter()
            .map(|e| self.effective_mask(e))
            .collect();
        self.state.enabled = enabled;
        self.state.function_masked = fmask;
        for v in 0..self.vectors() {
            let Some(e) = self.entry(v) else { continue };
            let masked = self.effective_mask(&e);
            if before.get(usize::from(v)) != Some(&masked) {
                self.notifier.vector_changed(v, e.msg(), masked);
            }
            if !masked {
                self.deliver_pending(v);
            }
        }
    }

    /// Sends and clears `vector`'s pending bit, if set.
    fn deliver_pending(&mut self, vector: u16) {
        if !self.pending(vector) {
            return;
        }
        let v = usize::from(vector);
        if let Some(w) = self.state.pba.get_mut(v / 64) {
            *w &= !(1 << (v % 64));
        }
        if let Some(e) = self.entry(vector) {
            if let Err(err) = self.notifier.send(e.msg()) {
                log::warn!("msix: failed to deliver pending vector {vector}: {err}");
            }
        }
    }

    /// Raises `vector` from the device. Disabled MSI-X: nothing happens
    /// (the device should use INTx). Masked: the pending bit is set.
    pub fn trigger(&mut self, vector: u16) -> io::Result<()> {
        let e = self
            .entry(vector)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such MSI-X vector"))?;
        if !self.state.enabled {
            return Ok(());
        }
        if self.effective_mask(&e) {
            let v = usize::from(vector);
            if let Some(w) = self.state.pba.get_mut(v / 64) {
                *w |= 1 << (v % 64);
            }
            return Ok(());
        }
        self.notifier.send(e.msg())
    }

    /// Reads the table or PBA if `bar`/`offset` fall in one; returns whether
    /// the access was MSI-X's. Bad sizes and alignment read all-ones.
    pub fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        if let Some(o) = self.in_table(bar, offset) {
            self.table_read(o, data);
            true
        } else if let Some(o) = self.in_pba(bar, offset) {
            self.pba_read(o, data);
            true
        } else {
            false
        }
    }

    /// Writes the table (the PBA is read-only) if `bar`/`offset` fall in
    /// one; returns whether the access was MSI-X's.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if let Some(o) = self.in_table(bar, offset) {
            self.table_write(o, data);
            true
        } else {
            self.in_pba(bar, offset).is_some()
        }
    }

    fn in_region(loc: MsixLocation, size: u64, bar: usize, offset: u64) -> Option<u64> {
        if bar != usize::from(loc.bar) {
            return None;
        }
        let o = offset.checked_sub(u64::from(loc.offset))?;
        (o < size).then_some(o)
    }

    fn in_table(&self, bar: usize, offset: u64) -> Option<u64> {
        Self::in_region(self.table, self.table_size(), bar, offset)
    }

    fn in_pba(&self, bar: usize, offset: u64) -> Option<u64> {
        Self::in_region(self.pba, self.pba_size(), bar, offset)
    }

    /// Reads at `offset` from the start of the table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(len) = aligned(offset, data.len()) else {
            return;
        };
        for (i, chunk) in data.chunks_mut(4).enumerate().take(len / 4) {
            let o = offset + 4 * i as u64;
            let Some(e) = self.state.entries.get((o / MSIX_ENTRY_SIZE) as usize) else {
                return;
            };
            chunk.copy_from_slice(&e.dword((o % MSIX_ENTRY_SIZE) / 4).to_le_bytes());
        }
    }

    /// Writes at `offset` from the start of the table.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        if aligned(offset, data.len()).is_none() {
            return;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let o = offset + 4 * i as u64;
            let Ok(b) = <[u8; 4]>::try_from(chunk) else {
                return;
            };
            self.write_dword(o, u32::from_le_bytes(b));
        }
    }

    fn write_dword(&mut self, o: u64, v: u32) {
        let Ok(idx) = u16::try_from(o / MSIX_ENTRY_SIZE) else {
            return;
        };
        let Some(old) = self.entry(idx) else {
            return;
        };
        let mut new = old;
        new.set_dword((o % MSIX_ENTRY_SIZE) / 4, v);
        if new == old {
            return;
        }
        if let Some(e) = self.state.entries.get_mut(usize::from(idx)) {
            *e = new;
        }
        let masked = self.effective_mask(&new);
        let was_masked = self.effective_mask(&old);
        if !(masked && was_masked && new.msg() == old.msg()) {
            self.notifier.vector_changed(idx, new.msg(), masked);
        }
        if !masked {
            self.deliver_pending(idx);
        }
    }

    /// Reads at `offset` from the start of the PBA.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if aligned(offset, data.len()).is_none() {
            return;
        }
        let Some(w) = self.state.pba.get((offset / 8) as usize) else {
            return;
        };
        let bytes = w.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// Current state.
    pub fn state(&self) -> MsixState {
        self.state.clone()
    }

    /// Restores a snapshot taken from a function with the same vector count,
    /// then reports every vector to the notifier so routes are rebuilt.
    pub fn restore(&mut self, mut state: MsixState) -> Result<(), MsixError> {
        let n = self.state.entries.len();
        if state.entries.len() != n || state.pba.len() != pba_len(n) {
            return Err(MsixError::BadSnapshot);
        }
        for e in &mut state.entries {
            e.addr_lo &= !0x3;
            e.vector_ctrl &= VECTOR_MASKED;
        }
        if let Some(last) = state.pba.last_mut() {
            if n % 64 != 0 {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
        self.state = state;
        for v in 0..self.vectors() {
            if let Some(e) = self.entry(v) {
                self.notifier
                    .vector_changed(v, e.msg(), self.effective_mask(&e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
