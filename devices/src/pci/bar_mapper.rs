// SPDX-License-Identifier: Apache-2.0
//! Keeps trapped BARs mapped on the PIO/MMIO buses as the guest moves them.
//!
//! [`BarMapper`] is a ready-made [`BarRelocator`] for the vmm: it inserts a
//! [`PciBarRegion`] for every trapped BAR and follows moves. It remembers
//! where each BAR is mapped, so a move that cannot be mapped (overlap, BAR at
//! 0 over something else) just leaves that BAR unmapped until the guest moves
//! it somewhere sane; nothing is lost and nothing fails the VM. Every move,
//! trapped or not, is then forwarded to the vmm's own relocator (`next`),
//! which moves KVM memory slots of RAM-like BARs and ioeventfds registered
//! inside trapped ones.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use thiserror::Error;

use super::bus::PciBus;
use super::config::BarKind;
use super::device::{BarRelocator, BarReprogram, PciBarRegion, PciBdf};
use crate::bus::{Bus, BusError};
use crate::ratelimit::LogLimiter;

/// Errors of the initial mapping.
#[derive(Debug, Error)]
pub enum BarMapperError {
    /// A BAR could not be put on its bus.
    #[error("Failed to map BAR {bar} of {bdf}")]
    Map {
        /// Function.
        bdf: PciBdf,
        /// BAR index.
        bar: usize,
        /// Why.
        #[source]
        source: BusError,
    },
}

/// See the module docs.
pub struct BarMapper {
    pci: Arc<Mutex<PciBus>>,
    // Weak: the buses hold the config-space devices that hold this mapper.
    pio: Weak<Bus>,
    mmio: Weak<Bus>,
    next: Option<Arc<dyn BarRelocator>>,
    mapped: Mutex<HashMap<(PciBdf, usize), (u64, u64)>>,
    log: LogLimiter,
}

impl fmt::Debug for BarMapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BarMapper")
            .field("mapped", &*crate::lock(&self.mapped))
            .finish()
    }
}

impl BarMapper {
    /// Maps trapped BARs of functions on `pci` onto `pio` / `mmio`; every
    /// move is also passed on to `next` (if any), after the bus is updated.
    pub fn new(
        pci: Arc<Mutex<PciBus>>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        next: Option<Arc<dyn BarRelocator>>,
    ) -> Self {
        Self {
            pci,
            pio: Arc::downgrade(&pio),
            mmio: Arc::downgrade(&mmio),
            next,
            mapped: Mutex::new(HashMap::new()),
            log: LogLimiter::new(),
        }
    }

    fn bus(&self, kind: BarKind) -> Option<Arc<Bus>> {
        match kind {
            BarKind::Io => self.pio.upgrade(),
            _ => self.mmio.upgrade(),
        }
    }

    fn map_one(
        &self,
        bdf: PciBdf,
        bar: usize,
        addr: u64,
        size: u64,
        kind: BarKind,
    ) -> Result<(), BusError> {
        let dev = crate::lock(&self.pci)
            .device(bdf)
            .ok_or(BusError::NoSuchRange(addr))?;
        let region = Arc::new(Mutex::new(PciBarRegion::new(dev, bar)));
        self.bus(kind)
            .ok_or(BusError::NoSuchRange(addr))?
            .insert(region, addr, size)?;
        crate::lock(&self.mapped).insert((bdf, bar), (addr, size));
        Ok(())
    }

    /// Maps every trapped BAR at its current address (after
    /// [`super::assign_bars`], before the guest runs). BARs at address 0
    /// are left unmapped.
    pub fn map_all(&self) -> Result<(), BarMapperError> {
        let devices = crate::lock(&self.pci).devices();
        for (bdf, dev) in devices {
            let bars = crate::lock(&dev).bars();
            for b in bars.into_iter().filter(|b| b.trapped && b.addr != 0) {
                self.map_one(bdf, b.index, b.addr, b.size, b.kind)
                    .map_err(|source| BarMapperError::Map {
                        bdf,
                        bar: b.index,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Where a trapped BAR is mapped now, if it is.
    pub fn mapped_at(&self, bdf: PciBdf, bar: usize) -> Option<u64> {
        crate::lock(&self.mapped).get(&(bdf, bar)).map(|m| m.0)
    }
}

impl BarRelocator for BarMapper {
    fn relocate(&self, r: &BarReprogram) {
        if r.trapped {
            self.move_trapped(r);
        }
        if let Some(next) = &self.next {
            next.relocate(r);
        }
    }
}

impl BarMapper {
    fn move_trapped(&self, r: &BarReprogram) {
        let old = crate::lock(&self.mapped).remove(&(r.bdf, r.bar));
        if let Some((base, _)) = old {
            // Failure means someone else removed it; nothing left to undo.
            if let Some(bus) = self.bus(r.kind) {
                let _ = bus.remove(base);
            }
        }
        if r.new == 0 {
            return;
        }
        if let Err(e) = self.map_one(r.bdf, r.bar, r.new, r.size, r.kind) {
            if self.log.allow() {
                log::warn!("pci: BAR {} of {} left unmapped: {e}", r.bar, r.bdf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{PciConfiguration, PciHeader};
    use crate::pci::test_util::BarDev;

    fn setup() -> (BarMapper, Arc<Bus>, Arc<Mutex<PciBus>>, PciBdf) {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let mut c = PciConfiguration::new(&PciHeader::default(), false);
        c.add_bar(0, 0x1000, BarKind::Mmio32, true).unwrap();
        c.add_bar(1, 0x1000, BarKind::Mmio32, true).unwrap();
        c.set_bar_addr(0, 0xc000_0000).unwrap();
        c.set_bar_addr(1, 0xc000_1000).unwrap();
        let bdf = pci
            .lock()
            .unwrap()
            .add_device(Arc::new(Mutex::new(BarDev(c))), None)
            .unwrap();
        let mmio = Arc::new(Bus::new());
        let m = BarMapper::new(pci.clone(), Arc::new(Bus::new()), mmio.clone(), None);
        m.map_all().unwrap();
        (m, mmio, pci, bdf)
    }

    fn mv(bdf: PciBdf, bar: usize, old: u64, new: u64) -> BarReprogram {
        BarReprogram {
            bdf,
            bar,
            old,
            new,
            size: 0x1000,
            kind: BarKind::Mmio32,
            trapped: true,
        }
    }

    #[test]
    fn map_all_puts_trapped_bars_on_the_bus() {
        let (_, mmio, _, _) = setup();
        let mut b = [0u8; 4];
        mmio.read(0xc000_1004, &mut b).unwrap();
        assert_eq!(b, [0xab; 4]);
        assert_eq!(mmio.len(), 2);
    }

    #[test]
    fn move_follows_the_guest() {
        let (m, mmio, _, bdf) = setup();
        m.relocate(&mv(bdf, 0, 0xc000_0000, 0xd000_0000));
        assert!(mmio.get(0xc000_0000).is_none());
        assert!(mmio.get(0xd000_0000).is_some());
        assert_eq!(m.mapped_at(bdf, 0), Some(0xd000_0000));
    }

    #[test]
    fn impossible_move_unmaps_and_later_move_recovers() {
        let (m, mmio, _, bdf) = setup();
        // Onto BAR1: cannot map, BAR0 becomes unmapped.
        m.relocate(&mv(bdf, 0, 0xc000_0000, 0xc000_1000));
        assert_eq!(m.mapped_at(bdf, 0), None);
        assert_eq!(mmio.len(), 1);
        m.relocate(&mv(bdf, 0, 0xc000_1000, 0xc000_4000));
        assert_eq!(m.mapped_at(bdf, 0), Some(0xc000_4000));
    }

    #[test]
    fn trapped_moves_are_forwarded_after_the_bus_update() {
        let (_, mmio, pci, bdf) = setup();
        let rec = Arc::new(crate::pci::test_util::Recorder::default());
        let m = BarMapper::new(pci, Arc::new(Bus::new()), mmio.clone(), Some(rec.clone()));
        let r = mv(bdf, 0, 0, 0xd000_0000);
        m.relocate(&r);
        assert!(mmio.get(0xd000_0000).is_some());
        assert_eq!(rec.take(), vec![r]);
    }

    #[test]
    fn untrapped_moves_go_to_the_next_relocator() {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let rec = Arc::new(crate::pci::test_util::Recorder::default());
        let m = BarMapper::new(
            pci,
            Arc::new(Bus::new()),
            Arc::new(Bus::new()),
            Some(rec.clone()),
        );
        let mut r = mv(PciBdf::default(), 2, 0, 0x40_0000_0000);
        r.trapped = false;
        m.relocate(&r);
        assert_eq!(rec.take(), vec![r]);
    }
}
