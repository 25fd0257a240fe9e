// SPDX-License-Identifier: Apache-2.0
//! The PCI stack wired the way the vmm wires it, driven the way a guest
//! driver drives it, through the public API only.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] fns; a failure is a test failure.

use std::io;
use std::sync::{Arc, Mutex};

use devices::fuzzing::FuzzPciDevice;
use devices::pci::config_io::CONFIG_IO_BASE;
use devices::pci::config_mmio::{ECAM_BASE, ECAM_SIZE};
use devices::pci::msix::MsixNotifier;
use devices::pci::{assign_bars, BarAllocator, BarMapper, PciBus, PciConfigIo, PciConfigMmio};
use devices::{Bus, MsiMessage};

#[derive(Default)]
struct Notes(Mutex<Vec<MsiMessage>>);

impl MsixNotifier for Notes {
    fn vector_changed(&self, _vector: u16, _msg: MsiMessage, _masked: bool) {}
    fn send(&self, msg: MsiMessage) -> io::Result<()> {
        self.0.lock().unwrap().push(msg);
        Ok(())
    }
}

struct Machine {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    dev: Arc<Mutex<FuzzPciDevice>>,
    notes: Arc<Notes>,
}

fn machine() -> Machine {
    let notes = Arc::new(Notes::default());
    let dev = Arc::new(Mutex::new(FuzzPciDevice::new(notes.clone()).unwrap()));
    let mut alloc = BarAllocator::new(1 << 36, 64 << 30).unwrap();
    assign_bars(&mut *dev.lock().unwrap(), &mut alloc).unwrap();
    let pci = Arc::new(Mutex::new(PciBus::new()));
    pci.lock().unwrap().add_device(dev.clone(), None).unwrap();
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let mapper = Arc::new(BarMapper::new(pci.clone(), pio.clone(), mmio.clone(), None));
    mapper.map_all().unwrap();
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone(), mapper.clone()))),
        CONFIG_IO_BASE,
        8,
    )
    .unwrap();
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(pci, mapper))),
        ECAM_BASE,
        ECAM_SIZE,
    )
    .unwrap();
    Machine {
        pio,
        mmio,
        dev,
        notes,
    }
}

impl Machine {
    fn cf8_read(&self, slot: u32, reg_byte: u32) -> u32 {
        let a = 0x8000_0000 | slot << 11 | reg_byte;
        self.pio.write(0xcf8, &a.to_le_bytes()).unwrap();
        let mut b = [0u8; 4];
        self.pio.read(0xcfc, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn cf8_write(&self, slot: u32, reg_byte: u32, v: u32) {
        let a = 0x8000_0000 | slot << 11 | reg_byte;
        self.pio.write(0xcf8, &a.to_le_bytes()).unwrap();
        self.pio.write(0xcfc, &v.to_le_bytes()).unwrap();
    }

    fn ecam(slot: u64, byte: u64) -> u64 {
        ECAM_BASE | slot << 15 | byte
    }

    fn mmio32(&self, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(addr, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
}

#[test]
fn guest_enumerates_sizes_enables_msix_and_moves_a_bar() {
    let m = machine();

    // Scan bus 0.
    let ids: Vec<u32> = (0..32).map(|s| m.cf8_read(s, 0)).collect();
    assert_eq!(ids[0], 0x0d57_8086);
    assert_eq!(ids[1], 0x10ff_1af4);
    assert!(ids[2..].iter().all(|id| *id == u32::MAX));

    // INTA routed to IOAPIC pin 16 + 1.
    assert_eq!(m.cf8_read(1, 0x3c) & 0xffff, 0x0111);

    // Size BAR0 (256 bytes) and put it back.
    let bar0 = m.cf8_read(1, 0x10);
    m.cf8_write(1, 0x10, u32::MAX);
    assert_eq!(m.cf8_read(1, 0x10), 0xffff_ff00);
    m.cf8_write(1, 0x10, bar0);

    // Walk the capability list to MSI-X.
    assert_ne!(m.cf8_read(1, 0x04) & (1 << 20), 0);
    let cap = m.cf8_read(1, 0x34) & 0xff;
    assert_eq!(m.cf8_read(1, cap) & 0xff, 0x11);

    // Enable MSI-X with a word write through ECAM.
    m.mmio
        .write(
            Machine::ecam(1, u64::from(cap) + 2),
            &0x8000u16.to_le_bytes(),
        )
        .unwrap();

    // Program and unmask vector 0 in BAR1.
    let bar1 = u64::from(m.cf8_read(1, 0x14) & !0xf);
    m.mmio.write(bar1, &0xfee0_0000u32.to_le_bytes()).unwrap();
    m.mmio.write(bar1 + 8, &0x41u32.to_le_bytes()).unwrap();
    m.mmio.write(bar1 + 12, &0u32.to_le_bytes()).unwrap();

    m.dev.lock().unwrap().raise(0);
    assert_eq!(
        *m.notes.0.lock().unwrap(),
        vec![MsiMessage {
            addr: 0xfee0_0000,
            data: 0x41
        }]
    );

    // Move BAR1; the table follows it on the MMIO bus.
    let new = 0xd000_0000u64;
    m.cf8_write(1, 0x14, u32::MAX);
    m.cf8_write(1, 0x14, new as u32);
    assert_eq!(m.mmio32(new + 8), 0x41);
    let mut b = [0u8; 4];
    assert!(m.mmio.read(bar1 + 8, &mut b).is_err(), "old place unmapped");
}
