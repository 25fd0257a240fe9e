// SPDX-License-Identifier: Apache-2.0
//! PCI Express enhanced configuration access (ECAM, the MCFG region).
//!
//! Offset within the region = `bus << 20 | dev << 15 | fn << 12 | byte`.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::bus::PciBus;
use super::config_io::{read_bytes, write_bytes};
use super::device::{BarRelocator, PciBdf};
use crate::bus::BusDevice;

/// Guest physical base of the ECAM region (docs/platform.md).
pub const ECAM_BASE: u64 = 0xe000_0000;
/// Size of the ECAM region: 256 buses of 1 MiB.
pub const ECAM_SIZE: u64 = 0x1000_0000;

/// The ECAM device; register it at [`ECAM_BASE`] with length [`ECAM_SIZE`].
pub struct PciConfigMmio {
    pci: Arc<Mutex<PciBus>>,
    relocator: Arc<dyn BarRelocator>,
}

impl fmt::Debug for PciConfigMmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PciConfigMmio")
    }
}

/// Function, dword register and byte within it for an ECAM offset.
fn decode(offset: u64) -> Option<(PciBdf, usize, u64)> {
    if offset >= ECAM_SIZE {
        return None;
    }
    let bdf = PciBdf::new(
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
    )?;
    Some((bdf, ((offset & 0xfff) >> 2) as usize, offset & 3))
}

impl PciConfigMmio {
    /// Creates the device over `pci`; BAR moves go to `relocator`.
    pub fn new(pci: Arc<Mutex<PciBus>>, relocator: Arc<dyn BarRelocator>) -> Self {
        Self { pci, relocator }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match decode(offset) {
            Some((bdf, reg, k)) => read_bytes(&self.pci, bdf, reg, k, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((bdf, reg, k)) = decode(offset) {
            write_bytes(&self.pci, self.relocator.as_ref(), bdf, reg, k, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{BarKind, PciConfiguration, PciHeader};
    use crate::pci::device::NullRelocator;
    use crate::pci::test_util::{BarDev, Recorder};

    fn ecam() -> PciConfigMmio {
        PciConfigMmio::new(Arc::new(Mutex::new(PciBus::new())), Arc::new(NullRelocator))
    }

    fn off(bus: u64, dev: u64, func: u64, byte: u64) -> u64 {
        bus << 20 | dev << 15 | func << 12 | byte
    }

    fn read(d: &mut PciConfigMmio, o: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        d.read(ECAM_BASE, o, &mut v);
        v
    }

    #[test]
    fn host_bridge_id_via_ecam() {
        let mut d = ecam();
        assert_eq!(read(&mut d, 0, 4), vec![0x86, 0x80, 0x57, 0x0d]);
        assert_eq!(read(&mut d, 2, 2), vec![0x57, 0x0d]);
    }

    #[test]
    fn extended_space_of_host_bridge_reads_zero() {
        let mut d = ecam();
        assert_eq!(read(&mut d, 0x100, 4), vec![0; 4]);
    }

    #[test]
    fn absent_bus_device_function_read_all_ones() {
        let mut d = ecam();
        assert_eq!(read(&mut d, off(1, 0, 0, 0), 4), vec![0xff; 4]);
        assert_eq!(read(&mut d, off(0, 3, 0, 0), 4), vec![0xff; 4]);
        assert_eq!(read(&mut d, off(0, 0, 2, 0), 4), vec![0xff; 4]);
        assert_eq!(read(&mut d, ECAM_SIZE, 4), vec![0xff; 4]);
    }

    #[test]
    fn bad_sizes_read_all_ones_and_writes_are_dropped() {
        let mut d = ecam();
        assert_eq!(read(&mut d, 0, 8), vec![0xff; 8]);
        assert_eq!(read(&mut d, 3, 2), vec![0xff; 2]);
        d.write(ECAM_BASE, 4, &[0xff; 8]);
        d.write(ECAM_BASE, 4, &[]);
        d.write(ECAM_BASE, u64::MAX, &[1]);
        assert_eq!(read(&mut d, 4, 2), vec![0, 0]);
    }

    #[test]
    fn bar_sizing_and_move_via_ecam() {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let mut cfg = PciConfiguration::new(&PciHeader::default(), false);
        cfg.add_bar(2, 1 << 20, BarKind::Mmio64 { prefetch: true }, false)
            .unwrap();
        pci.lock()
            .unwrap()
            .add_device(Arc::new(Mutex::new(BarDev(cfg))), Some(4))
            .unwrap();
        let rec = Arc::new(Recorder::default());
        let mut d = PciConfigMmio::new(pci, rec.clone());
        let bar_lo = off(0, 4, 0, 0x18);
        d.write(ECAM_BASE, bar_lo, &u32::MAX.to_le_bytes());
        assert_eq!(
            read(&mut d, bar_lo, 4),
            0xfff0_000cu32.to_le_bytes().to_vec()
        );
        d.write(ECAM_BASE, bar_lo, &0x0010_0000u32.to_le_bytes());
        d.write(ECAM_BASE, bar_lo + 4, &0x40u32.to_le_bytes());
        let moves = rec.take();
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[1].new, 0x40_0010_0000);
        assert!(!moves[1].trapped);
    }
}
