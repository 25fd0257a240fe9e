// SPDX-License-Identifier: Apache-2.0
//! PCI configuration mechanism #1 (ports `0xcf8` address, `0xcfc-0xcff` data).

use std::fmt;
use std::sync::{Arc, Mutex};

use super::bus::PciBus;
use super::device::{BarRelocator, PciBdf};
use crate::bus::BusDevice;

/// First port (the address register).
pub const CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports decoded: address `0xcf8-0xcfb`, data `0xcfc-0xcff`.
pub const CONFIG_IO_LEN: u64 = 8;

const ENABLE: u32 = 1 << 31;
/// Bits of the address register that hold something (enable, bus, device,
/// function, dword register); the rest reads 0.
const ADDRESS_MASK: u32 = ENABLE | 0x00ff_fffc;
const DATA_OFFSET: u64 = 4;

/// Reads `data.len()` bytes at byte `k` of config dword `reg` of `bdf`;
/// all-ones unless the access is 1..=4 bytes inside the dword.
pub(crate) fn read_bytes(pci: &Mutex<PciBus>, bdf: PciBdf, reg: usize, k: u64, data: &mut [u8]) {
    let fits = !data.is_empty() && k < 4 && k as usize + data.len() <= 4;
    if !fits {
        data.fill(0xff);
        return;
    }
    let v = crate::lock(pci).config_read(bdf, reg).to_le_bytes();
    let k = k as usize;
    data.copy_from_slice(&v[k..k + data.len()]);
}

/// Writes config bytes and reports a BAR move after the PCI lock is dropped.
pub(crate) fn write_bytes(
    pci: &Mutex<PciBus>,
    relocator: &dyn BarRelocator,
    bdf: PciBdf,
    reg: usize,
    k: u64,
    data: &[u8],
) {
    let moved = crate::lock(pci).config_write(bdf, reg, k, data);
    if let Some(r) = moved {
        relocator.relocate(&r);
    }
}

/// The mechanism #1 device; register it at [`CONFIG_IO_BASE`] with length
/// [`CONFIG_IO_LEN`].
pub struct PciConfigIo {
    address: u32,
    pci: Arc<Mutex<PciBus>>,
    relocator: Arc<dyn BarRelocator>,
}

impl fmt::Debug for PciConfigIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciConfigIo")
            .field("address", &format_args!("{:#x}", self.address))
            .finish()
    }
}

impl PciConfigIo {
    /// Creates the device over `pci`; BAR moves go to `relocator`.
    pub fn new(pci: Arc<Mutex<PciBus>>, relocator: Arc<dyn BarRelocator>) -> Self {
        Self {
            address: 0,
            pci,
            relocator,
        }
    }

    /// Current address register (snapshot).
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Restores the address register.
    pub fn set_address(&mut self, address: u32) {
        self.address = address & ADDRESS_MASK;
    }

    /// The function and register the address register selects, if enabled.
    fn target(&self) -> Option<(PciBdf, usize)> {
        let a = self.address;
        if a & ENABLE == 0 {
            return None;
        }
        let bdf = PciBdf::new(
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
        )?;
        Some((bdf, ((a & 0xfc) >> 2) as usize))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            DATA_OFFSET.. => match self.target() {
                Some((bdf, reg)) => read_bytes(&self.pci, bdf, reg, offset - DATA_OFFSET, data),
                None => data.fill(0xff),
            },
            // Only dword accesses reach the address register.
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 => {
                if let Ok(b) = <[u8; 4]>::try_from(data) {
                    self.set_address(u32::from_le_bytes(b));
                }
            }
            DATA_OFFSET.. => {
                if let Some((bdf, reg)) = self.target() {
                    write_bytes(
                        &self.pci,
                        self.relocator.as_ref(),
                        bdf,
                        reg,
                        offset - DATA_OFFSET,
                        data,
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{BarKind, PciConfiguration, PciHeader};
    use crate::pci::device::{BarReprogram, NullRelocator};
    use crate::pci::test_util::{BarDev, Recorder};

    fn io() -> PciConfigIo {
        PciConfigIo::new(Arc::new(Mutex::new(PciBus::new())), Arc::new(NullRelocator))
    }

    fn select(d: &mut PciConfigIo, dev: u32, reg_byte: u32) {
        d.write(
            CONFIG_IO_BASE,
            0,
            &(ENABLE | dev << 11 | reg_byte).to_le_bytes(),
        );
    }

    fn read(d: &mut PciConfigIo, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        d.read(CONFIG_IO_BASE, off, &mut v);
        v
    }

    #[test]
    fn dword_read_of_host_bridge_id() {
        let mut d = io();
        select(&mut d, 0, 0);
        assert_eq!(read(&mut d, 4, 4), vec![0x86, 0x80, 0x57, 0x0d]);
    }

    #[test]
    fn byte_and_word_reads_at_data_offsets() {
        let mut d = io();
        select(&mut d, 0, 0);
        assert_eq!(read(&mut d, 6, 2), vec![0x57, 0x0d]);
        assert_eq!(read(&mut d, 7, 1), vec![0x0d]);
        select(&mut d, 0, 8);
        assert_eq!(read(&mut d, 7, 1), vec![0x06], "class byte");
    }

    #[test]
    fn disabled_address_reads_all_ones() {
        let mut d = io();
        d.write(CONFIG_IO_BASE, 0, &0u32.to_le_bytes());
        assert_eq!(read(&mut d, 4, 4), vec![0xff; 4]);
    }

    #[test]
    fn absent_device_reads_all_ones() {
        let mut d = io();
        select(&mut d, 7, 0);
        assert_eq!(read(&mut d, 4, 4), vec![0xff; 4]);
    }

    #[test]
    fn address_register_reads_back_masked() {
        let mut d = io();
        d.write(CONFIG_IO_BASE, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read(&mut d, 0, 4), 0x80ff_fffcu32.to_le_bytes().to_vec());
        // Narrow accesses to 0xcf8 do not touch the address register.
        d.write(CONFIG_IO_BASE, 0, &[0]);
        d.write(CONFIG_IO_BASE, 1, &[0, 0]);
        assert_eq!(read(&mut d, 0, 4), 0x80ff_fffcu32.to_le_bytes().to_vec());
        assert_eq!(read(&mut d, 1, 1), vec![0xff]);
    }

    #[test]
    fn odd_accesses_do_not_panic_and_read_all_ones() {
        let mut d = io();
        select(&mut d, 0, 0);
        assert_eq!(read(&mut d, 5, 4), vec![0xff; 4], "crosses the dword");
        assert_eq!(read(&mut d, 4, 9), vec![0xff; 9]);
        assert_eq!(read(&mut d, 4, 3), vec![0x86, 0x80, 0x57]);
        assert!(read(&mut d, 4, 0).is_empty());
        assert_eq!(read(&mut d, u64::MAX, 2), vec![0xff; 2]);
        d.write(CONFIG_IO_BASE, 9, &[1, 2, 3]);
        d.write(CONFIG_IO_BASE, u64::MAX, &[1]);
        d.write(CONFIG_IO_BASE, 4, &[]);
    }

    #[test]
    fn bar_move_through_ports_reaches_relocator() {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let mut cfg = PciConfiguration::new(&PciHeader::default(), false);
        cfg.add_bar(0, 0x1000, BarKind::Mmio32, true).unwrap();
        cfg.set_bar_addr(0, 0xc000_0000).unwrap();
        let bdf = pci
            .lock()
            .unwrap()
            .add_device(Arc::new(Mutex::new(BarDev(cfg))), None)
            .unwrap();
        let rec = Arc::new(Recorder::default());
        let mut d = PciConfigIo::new(pci, rec.clone());
        select(&mut d, 1, 0x10);
        d.write(CONFIG_IO_BASE, 4, &u32::MAX.to_le_bytes());
        assert_eq!(read(&mut d, 4, 4), 0xffff_f000u32.to_le_bytes().to_vec());
        d.write(CONFIG_IO_BASE, 4, &0xc010_0000u32.to_le_bytes());
        assert_eq!(
            rec.take(),
            vec![BarReprogram {
                bdf,
                bar: 0,
                old: 0xc000_0000,
                new: 0xc010_0000,
                size: 0x1000,
                kind: BarKind::Mmio32,
                trapped: true
            }]
        );
    }
}
