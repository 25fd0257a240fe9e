// SPDX-License-Identifier: Apache-2.0
//! The interface between a PCI function model and the root bus / vmm.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::config::{BarInfo, BarKind, BarMove, PciConfigError};
use crate::bus::BusDevice;

/// Bus, device (slot) and function number of a PCI function.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct PciBdf {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub dev: u8,
    /// Function number, 0..8.
    pub func: u8,
}

impl PciBdf {
    /// Slots per bus.
    pub const SLOTS: u8 = 32;
    /// Functions per slot.
    pub const FUNCTIONS: u8 = 8;

    /// A BDF, or `None` if `dev` or `func` is out of range.
    pub fn new(bus: u8, dev: u8, func: u8) -> Option<Self> {
        (dev < Self::SLOTS && func < Self::FUNCTIONS).then_some(Self { bus, dev, func })
    }
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// A BAR the guest moved; the vmm moves the bus range (`trapped`) or the
/// memory slot (RAM-like BAR) from `old` to `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarReprogram {
    /// Function that owns the BAR.
    pub bdf: PciBdf,
    /// BAR index.
    pub bar: usize,
    /// Address before.
    pub old: u64,
    /// Address after.
    pub new: u64,
    /// Size of the BAR.
    pub size: u64,
    /// What it decodes.
    pub kind: BarKind,
    /// Whether accesses trap (bus range) or go to RAM (memory slot).
    pub trapped: bool,
}

impl BarReprogram {
    /// Attaches the function's address to a [`BarMove`].
    pub fn new(bdf: PciBdf, m: BarMove) -> Self {
        Self {
            bdf,
            bar: m.bar,
            old: m.old,
            new: m.new,
            size: m.size,
            kind: m.kind,
            trapped: m.trapped,
        }
    }
}

/// Told about BAR moves by the config access devices; implemented by the vmm.
///
/// Called on a vCPU thread with no PCI or bus lock held, so it may update
/// the PIO/MMIO [`crate::Bus`] or KVM memory slots. A guest may move a BAR
/// anywhere (even to 0 or over RAM) and 64-bit BARs move in two steps (low,
/// then high dword): the vmm must refuse impossible placements without
/// failing the VM (the BAR then decodes nothing until moved again).
pub trait BarRelocator: Send + Sync {
    /// Moves one BAR.
    fn relocate(&self, r: &BarReprogram);
}

/// A [`BarRelocator`] that ignores moves (fuzzing, tests, fixed layouts).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullRelocator;

impl BarRelocator for NullRelocator {
    fn relocate(&self, _r: &BarReprogram) {}
}

/// A PCI function model.
///
/// All methods that take guest input must accept anything without
/// panicking: registers past the end read all-ones, bad sizes or offsets
/// read all-ones and are ignored on write.
pub trait PciDevice: Send {
    /// Reads configuration dword `reg` (0..64, or 0..1024 with extended space).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes `data` (1..=4 bytes) at byte `offset` (0..4) of dword `reg`.
    /// Returns the BAR this moved, if any.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove>;
    /// Reads from a trapped BAR.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes to a trapped BAR.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The function's BARs with their current addresses.
    fn bars(&self) -> Vec<BarInfo>;
    /// Places BAR `bar` at `addr` (vmm-side, before the guest runs).
    fn set_bar_addr(&mut self, bar: usize, addr: u64) -> Result<(), PciConfigError>;
    /// Short name for logs.
    fn name(&self) -> &str;
}

/// A PCI function shared between the root bus and its BAR regions.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// One trapped BAR of a function as a [`BusDevice`]: the vmm inserts it on
/// the MMIO (or PIO) bus at the BAR's address with the BAR's size.
pub struct PciBarRegion {
    dev: SharedPciDevice,
    bar: usize,
}

impl fmt::Debug for PciBarRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciBarRegion")
            .field("bar", &self.bar)
            .finish()
    }
}

impl PciBarRegion {
    /// Routes accesses to BAR `bar` of `dev`.
    pub fn new(dev: SharedPciDevice, bar: usize) -> Self {
        Self { dev, bar }
    }
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        crate::lock(&self.dev).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        crate::lock(&self.dev).bar_write(self.bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_rejects_out_of_range_and_formats() {
        assert!(PciBdf::new(0, 32, 0).is_none());
        assert!(PciBdf::new(0, 0, 8).is_none());
        assert_eq!(PciBdf::new(0, 0x1f, 7).unwrap().to_string(), "00:1f.7");
    }
}
