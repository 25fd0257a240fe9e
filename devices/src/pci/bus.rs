// SPDX-License-Identifier: Apache-2.0
//! The root bus: bus 0, one function per slot, host bridge at 00:00.0.

use std::fmt;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::device::{BarReprogram, PciBdf, PciDevice, SharedPciDevice};
use super::host_bridge::HostBridge;
use super::intx::intx_pin_for_slot;

/// Config dword holding the interrupt line and pin.
const INTERRUPT_REG: usize = 15;

/// Errors of adding and removing functions.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciBusError {
    /// Every slot is taken.
    #[error("No free PCI slot")]
    NoFreeSlot,
    /// The requested slot is taken.
    #[error("PCI slot {0} is in use")]
    SlotInUse(u8),
    /// The slot number is past 31, or is the host bridge's.
    #[error("PCI slot {0} is not available")]
    BadSlot(u8),
    /// Nothing in that slot.
    #[error("PCI slot {0} is empty")]
    EmptySlot(u8),
}

/// Bus 0 of segment 0.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
}

impl fmt::Debug for PciBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect();
        f.debug_struct("PciBus").field("slots", &used).finish()
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus holding only the host bridge.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; usize::from(PciBdf::SLOTS)];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self { slots }
    }

    /// Adds `dev` as function 0 of `slot`, or of the lowest free slot.
    ///
    /// If the function declares an interrupt pin, its interrupt line
    /// register is set to the slot's IOAPIC pin ([`intx_pin_for_slot`]).
    pub fn add_device(
        &mut self,
        dev: SharedPciDevice,
        slot: Option<u8>,
    ) -> Result<PciBdf, PciBusError> {
        let slot = match slot {
            Some(s) if s == 0 || s >= PciBdf::SLOTS => return Err(PciBusError::BadSlot(s)),
            Some(s) if self.slots[usize::from(s)].is_some() => {
                return Err(PciBusError::SlotInUse(s))
            }
            Some(s) => s,
            None => (1..PciBdf::SLOTS)
                .find(|s| self.slots[usize::from(*s)].is_none())
                .ok_or(PciBusError::NoFreeSlot)?,
        };
        {
            let mut d = crate::lock(&dev);
            let pin = (d.config_read(INTERRUPT_REG) >> 8) & 0xff;
            if pin != 0 {
                d.config_write(INTERRUPT_REG, 0, &[intx_pin_for_slot(slot)]);
            }
        }
        self.slots[usize::from(slot)] = Some(dev);
        Ok(PciBdf {
            bus: 0,
            dev: slot,
            func: 0,
        })
    }

    /// Removes the function in `slot` (not the host bridge).
    pub fn remove_device(&mut self, slot: u8) -> Result<SharedPciDevice, PciBusError> {
        if slot == 0 || slot >= PciBdf::SLOTS {
            return Err(PciBusError::BadSlot(slot));
        }
        self.slots[usize::from(slot)]
            .take()
            .ok_or(PciBusError::EmptySlot(slot))
    }

    /// The function at `bdf`, if present.
    pub fn device(&self, bdf: PciBdf) -> Option<SharedPciDevice> {
        if bdf.bus != 0 || bdf.func != 0 {
            return None;
        }
        self.slots.get(usize::from(bdf.dev))?.clone()
    }

    /// Every present function with its address (host bridge included).
    pub fn devices(&self) -> Vec<(PciBdf, SharedPciDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let bdf = PciBdf::new(0, i as u8, 0)?;
                Some((bdf, d.clone()?))
            })
            .collect()
    }

    /// Reads config dword `reg` of `bdf`; all-ones if the function is absent.
    pub fn config_read(&self, bdf: PciBdf, reg: usize) -> u32 {
        match self.device(bdf) {
            Some(d) => crate::lock(&d).config_read(reg),
            None => u32::MAX,
        }
    }

    /// Writes config space of `bdf`; dropped if the function is absent.
    pub fn config_write(
        &self,
        bdf: PciBdf,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<BarReprogram> {
        let d = self.device(bdf)?;
        let m = crate::lock(&d).config_write(reg, offset, data)?;
        Some(BarReprogram::new(bdf, m))
    }
}

/// Helper for a function model: the [`PciDevice`] trait object of a
/// concrete device, to hand to [`PciBus::add_device`].
pub fn shared<D: PciDevice + 'static>(dev: D) -> (Arc<Mutex<D>>, SharedPciDevice) {
    let d = Arc::new(Mutex::new(dev));
    let s: SharedPciDevice = d.clone();
    (d, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::HostBridge;

    fn bdf(dev: u8) -> PciBdf {
        PciBdf::new(0, dev, 0).unwrap()
    }

    #[test]
    fn host_bridge_is_at_slot_zero() {
        let bus = PciBus::new();
        assert_eq!(bus.config_read(bdf(0), 0), 0x0d57_8086);
        assert_eq!(bus.config_read(bdf(0), 2) >> 16, 0x0600);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let bus = PciBus::new();
        assert_eq!(bus.config_read(bdf(1), 0), u32::MAX);
        assert_eq!(bus.config_read(PciBdf::new(0, 0, 1).unwrap(), 0), u32::MAX);
        assert_eq!(bus.config_read(PciBdf::new(1, 0, 0).unwrap(), 0), u32::MAX);
        assert!(bus.config_write(bdf(5), 1, 0, &[1]).is_none());
    }

    #[test]
    fn add_device_picks_lowest_free_slot_or_the_given_one() {
        let mut bus = PciBus::new();
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, None),
            Ok(bdf(1))
        );
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, Some(3)),
            Ok(bdf(3))
        );
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, None),
            Ok(bdf(2))
        );
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, Some(3)),
            Err(PciBusError::SlotInUse(3))
        );
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, Some(0)),
            Err(PciBusError::BadSlot(0))
        );
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, Some(32)),
            Err(PciBusError::BadSlot(32))
        );
        assert_eq!(bus.devices().len(), 4);
    }

    #[test]
    fn full_bus_reports_no_free_slot() {
        let mut bus = PciBus::new();
        for _ in 1..32 {
            bus.add_device(shared(HostBridge::new()).1, None).unwrap();
        }
        assert_eq!(
            bus.add_device(shared(HostBridge::new()).1, None),
            Err(PciBusError::NoFreeSlot)
        );
    }

    #[test]
    fn remove_device_frees_the_slot() {
        let mut bus = PciBus::new();
        bus.add_device(shared(HostBridge::new()).1, None).unwrap();
        bus.remove_device(1).unwrap();
        assert_eq!(bus.config_read(bdf(1), 0), u32::MAX);
        assert!(matches!(
            bus.remove_device(1),
            Err(PciBusError::EmptySlot(1))
        ));
        assert!(matches!(bus.remove_device(0), Err(PciBusError::BadSlot(0))));
    }

    #[test]
    fn add_device_routes_intx_line_for_functions_with_a_pin() {
        use crate::pci::config::{PciConfiguration, PciHeader};
        use crate::pci::test_util::BarDev;
        let mut bus = PciBus::new();
        let mut c = PciConfiguration::new(&PciHeader::default(), false);
        c.set_interrupt(0, 1);
        let b = bus.add_device(shared(BarDev(c)).1, Some(10)).unwrap();
        assert_eq!(bus.config_read(b, 15) & 0xffff, 0x0100 | 18);
        let plain = bus
            .add_device(
                shared(BarDev(PciConfiguration::new(&PciHeader::default(), false))).1,
                None,
            )
            .unwrap();
        assert_eq!(bus.config_read(plain, 15) & 0xffff, 0);
    }

    #[test]
    fn config_write_reaches_the_function() {
        let bus = PciBus::new();
        bus.config_write(bdf(0), 1, 0, &[0x06]);
        assert_eq!(bus.config_read(bdf(0), 1) & 0xffff, 0x06);
    }
}
