// SPDX-License-Identifier: Apache-2.0
//! Entry points for fuzz targets: each takes arbitrary bytes, builds the
//! device(s) with null interrupt/control sinks and replays the bytes as
//! guest accesses. None may panic. A cargo-fuzz target is one line:
//!
//! ```ignore
//! libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::fuzz_pci(data));
//! ```
//!
//! [`FuzzPciDevice`] doubles as a small reference for writing a PCI function
//! with [`PciConfiguration`], [`MsixConfig`] and [`Intx`].

use std::io;
use std::sync::{Arc, Mutex};

use crate::acpi::{AcpiPm, ACPI_PM_BASE};
use crate::bus::{Bus, BusDevice};
use crate::i8042::{I8042, I8042_BASE};
use crate::interrupt::{MsiMessage, NullInterrupt};
use crate::pci::config::{BarInfo, BarKind, BarMove, PciConfigError, PciConfiguration, PciHeader};
use crate::pci::config_io::{PciConfigIo, CONFIG_IO_BASE};
use crate::pci::config_mmio::{PciConfigMmio, ECAM_BASE};
use crate::pci::intx::Intx;
use crate::pci::msix::{MsixConfig, MsixLocation, MsixNotifier};
use crate::pci::{assign_bars, BarAllocator, BarMapper, PciBus, PciDevice};
use crate::serial::{Serial, COM1_BASE};
use crate::vm_control::NullVmControl;

/// Reads fuzz input as a stream of small values; runs dry as zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, i| acc | u64::from(self.u8()) << (8 * i))
    }

    /// An access size, including the odd ones (0, 3, 5..9).
    fn len(&mut self) -> usize {
        usize::from(self.u8() % 10)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// A small offset usually, any 64-bit offset sometimes.
    fn offset(&mut self, small: u64) -> u64 {
        let v = self.u16();
        if v & 0x8000 != 0 && v & 0x7 == 0 {
            self.u64()
        } else {
            u64::from(v) % small
        }
    }
}

/// Replays accesses on one device registered at `base`.
fn drive(dev: &mut dyn BusDevice, base: u64, span: u64, data: &[u8]) {
    let mut inp = Input { data };
    while !inp.done() {
        let op = inp.u8();
        let off = inp.offset(span);
        let len = inp.len();
        if op & 1 == 0 {
            let mut buf = vec![0u8; len];
            dev.read(base, off, &mut buf);
        } else {
            let bytes = inp.bytes(len);
            dev.write(base, off, &bytes);
        }
    }
}

/// The serial port, with host input mixed in.
pub fn fuzz_serial(data: &[u8]) {
    let mut s = Serial::new(Arc::new(NullInterrupt), Box::new(io::sink()));
    let (input, regs) = data.split_at(
        data.len()
            .min(usize::from(data.first().copied().unwrap_or(0) % 80)),
    );
    let _ = s.enqueue_raw_bytes(input);
    drive(&mut s, COM1_BASE, 12, regs);
    let _ = s.enqueue_raw_bytes(input);
    let _ = Serial::restore(&s.snapshot(), Arc::new(NullInterrupt), Box::new(io::sink()));
}

/// The i8042 controller.
pub fn fuzz_i8042(data: &[u8]) {
    let mut d = I8042::new(Arc::new(NullVmControl));
    drive(&mut d, I8042_BASE, 8, data);
}

/// The ACPI power registers.
pub fn fuzz_acpi(data: &[u8]) {
    let mut d = AcpiPm::new(Arc::new(NullVmControl));
    drive(&mut d, ACPI_PM_BASE, 8, data);
}

/// A bus with ranges inserted, moved and removed between accesses.
pub fn fuzz_bus(data: &[u8]) {
    struct Echo;
    impl BusDevice for Echo {
        fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _: u64, _: u64, _: &[u8]) {}
    }
    let bus = Bus::new();
    let mut inp = Input { data };
    while !inp.done() {
        let a = u64::from(inp.u16());
        let b = u64::from(inp.u16());
        match inp.u8() % 5 {
            0 => {
                let _ = bus.insert(Arc::new(Mutex::new(Echo)), a, b);
            }
            1 => {
                let _ = bus.remove(a);
            }
            2 => {
                let _ = bus.update_range(a, b, u64::from(inp.u8()));
            }
            3 => {
                let mut buf = vec![0u8; inp.len()];
                let _ = bus.read(a, &mut buf);
            }
            _ => {
                let len = inp.len();
                let _ = bus.write(a, &inp.bytes(len));
            }
        }
    }
}

/// An MSI-X notifier that drops everything.
#[derive(Debug, Default)]
pub struct NullMsixNotifier;

impl MsixNotifier for NullMsixNotifier {
    fn vector_changed(&self, _vector: u16, _msg: MsiMessage, _masked: bool) {}
    fn send(&self, _msg: MsiMessage) -> io::Result<()> {
        Ok(())
    }
}

/// A PCI function exercising every piece of the PCI model: BAR0 256 bytes
/// of scratch registers (MMIO, trapped), BAR1 the MSI-X table and PBA,
/// BAR2 1 MiB RAM-like 64-bit prefetchable (not trapped), BAR4 32 I/O
/// ports, INTA, and four MSI-X vectors.
#[derive(Debug)]
pub struct FuzzPciDevice {
    config: PciConfiguration,
    msix: MsixConfig,
    intx: Intx,
    regs: [u8; 256],
}

impl FuzzPciDevice {
    /// Vectors of the MSI-X table.
    pub const VECTORS: u16 = 4;

    /// Builds the function.
    pub fn new(notifier: Arc<dyn MsixNotifier>) -> Result<Self, Box<dyn std::error::Error>> {
        let h = PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x10ff,
            class: 0xff,
            ..Default::default()
        };
        let mut config = PciConfiguration::new(&h, true);
        config.add_bar(0, 0x100, BarKind::Mmio32, true)?;
        config.add_bar(1, 0x1000, BarKind::Mmio32, true)?;
        config.add_bar(2, 1 << 20, BarKind::Mmio64 { prefetch: true }, false)?;
        config.add_bar(4, 0x20, BarKind::Io, true)?;
        config.set_interrupt(0, crate::pci::intx::INTA);
        let mut msix = MsixConfig::new(
            Self::VECTORS,
            MsixLocation { bar: 1, offset: 0 },
            MsixLocation {
                bar: 1,
                offset: 0x800,
            },
            notifier,
        )?;
        msix.add_capability(&mut config)?;
        Ok(Self {
            config,
            msix,
            intx: Intx::new(Arc::new(NullInterrupt)),
            regs: [0; 256],
        })
    }

    /// Raises an interrupt the way a device would: MSI-X when enabled,
    /// else INTx.
    pub fn raise(&mut self, vector: u16) {
        if self.msix.enabled() {
            let _ = self.msix.trigger(vector);
        } else {
            let _ = self.intx.set_pending(&mut self.config, true);
        }
    }
}

impl PciDevice for FuzzPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let m = self.config.write_reg(reg, offset, data);
        self.msix.config_written(&self.config);
        let _ = self.intx.update(&self.config);
        m
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if self.msix.bar_read(bar, offset, data) {
            return;
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.regs.get(start..start.saturating_add(data.len())) {
            Some(src) if bar == 0 => data.copy_from_slice(src),
            _ => data.fill(0xff),
        }
        // Reading the "status" register acknowledges INTx.
        if bar == 0 && offset == 4 {
            let _ = self.intx.set_pending(&mut self.config, false);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if self.msix.bar_write(bar, offset, data) {
            return;
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(dst) = self.regs.get_mut(start..start.saturating_add(data.len())) {
            if bar == 0 {
                dst.copy_from_slice(data);
            }
        }
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }

    fn set_bar_addr(&mut self, bar: usize, addr: u64) -> Result<(), PciConfigError> {
        self.config.set_bar_addr(bar, addr)
    }

    fn name(&self) -> &str {
        "fuzz-pci"
    }
}

/// The whole PCI stack: config mechanism #1, ECAM, BAR moves followed by a
/// [`BarMapper`] on real buses, BAR accesses through the buses, MSI-X/INTx.
pub fn fuzz_pci(data: &[u8]) {
    let Ok(dev) = FuzzPciDevice::new(Arc::new(NullMsixNotifier)) else {
        return;
    };
    let dev = Arc::new(Mutex::new(dev));
    let pci = Arc::new(Mutex::new(PciBus::new()));
    let Ok(mut alloc) = BarAllocator::new(1 << 36, 1 << 36) else {
        return;
    };
    if assign_bars(&mut *crate::lock(&dev), &mut alloc).is_err() {
        return;
    }
    if crate::lock(&pci).add_device(dev.clone(), None).is_err() {
        return;
    }
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let mapper = Arc::new(BarMapper::new(pci.clone(), pio.clone(), mmio.clone(), None));
    if mapper.map_all().is_err() {
        return;
    }
    let io = Arc::new(Mutex::new(PciConfigIo::new(pci.clone(), mapper.clone())));
    let ecam = Arc::new(Mutex::new(PciConfigMmio::new(pci.clone(), mapper)));
    if pio.insert(io, CONFIG_IO_BASE, 8).is_err()
        || mmio.insert(ecam, ECAM_BASE, 0x1000_0000).is_err()
    {
        return;
    }
    let mut inp = Input { data };
    while !inp.done() {
        let op = inp.u8();
        let len = inp.len();
        let (bus, addr) = match op % 6 {
            0 => (&pio, CONFIG_IO_BASE.wrapping_add(inp.offset(10))),
            1 => {
                let f = u64::from(inp.u8() % 4);
                let reg = u64::from(inp.u16() % 0x1008);
                (&mmio, ECAM_BASE + (f << 15 | reg))
            }
            2 | 3 => {
                let bars = crate::lock(&dev).bars();
                let Some(b) = bars.get(usize::from(inp.u8()) % bars.len().max(1)) else {
                    continue;
                };
                let bus = if b.kind == BarKind::Io { &pio } else { &mmio };
                (bus, b.addr.wrapping_add(inp.offset(b.size + 8)))
            }
            4 => {
                crate::lock(&dev).raise(u16::from(inp.u8() % 6));
                continue;
            }
            _ => (&mmio, inp.u64()),
        };
        if op & 0x80 == 0 {
            let mut buf = vec![0u8; len];
            let _ = bus.read(addr, &mut buf);
        } else {
            let _ = bus.write(addr, &inp.bytes(len));
        }
    }
}

/// Doorbells of the ivshmem fuzz target go nowhere.
struct NullDoorbell;

impl crate::ivshmem::DoorbellSink for NullDoorbell {
    fn ring(&self, _peer: u16, _vector: u16) {}
}

/// The ivshmem device: random register, MSI-X table, config-space accesses
/// and incoming doorbells, in MSI-X and INTx modes.
pub fn fuzz_ivshmem(data: &[u8]) {
    use crate::ivshmem::{Ivshmem, IvshmemConfig};
    let mut inp = Input { data };
    let vectors = u16::from(inp.u8() % 4);
    let Ok(mut dev) = Ivshmem::new(
        IvshmemConfig {
            region_size: 1 << 20,
            vectors,
            peer_id: inp.u16(),
        },
        Arc::new(NullMsixNotifier),
        Arc::new(NullInterrupt),
        Arc::new(NullDoorbell),
    ) else {
        return;
    };
    while !inp.done() {
        let op = inp.u8();
        let len = inp.len();
        match op % 5 {
            0 => {
                let mut buf = vec![0u8; len];
                dev.bar_read(usize::from(inp.u8() % 7), inp.offset(0x1008), &mut buf);
            }
            1 => {
                let bar = usize::from(inp.u8() % 7);
                let off = inp.offset(0x1008);
                let bytes = inp.bytes(len);
                dev.bar_write(bar, off, &bytes);
            }
            2 => {
                let _ = dev.config_read(usize::from(inp.u8()) % 72);
            }
            3 => {
                let reg = usize::from(inp.u8()) % 72;
                let off = u64::from(inp.u8() % 5);
                let bytes = inp.bytes(len);
                let _ = dev.config_write(reg, off, &bytes);
            }
            _ => {
                let _ = dev.interrupt(u16::from(inp.u8() % 8));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::PciBdf;

    fn ecam_id(pci: &Arc<Mutex<PciBus>>, slot: u8) -> u32 {
        pci.lock()
            .unwrap()
            .config_read(PciBdf::new(0, slot, 0).unwrap(), 0)
    }

    /// Deterministic pseudo-random inputs (xorshift64*).
    fn inputs(seed: u64, count: usize, len: usize) -> Vec<Vec<u8>> {
        let mut x = seed;
        (0..count)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn serial_survives_random_accesses() {
        for i in inputs(1, 300, 256) {
            fuzz_serial(&i);
        }
    }

    #[test]
    fn i8042_and_acpi_survive_random_accesses() {
        for i in inputs(2, 300, 256) {
            fuzz_i8042(&i);
            fuzz_acpi(&i);
        }
    }

    #[test]
    fn bus_survives_random_updates() {
        for i in inputs(3, 300, 256) {
            fuzz_bus(&i);
        }
    }

    #[test]
    fn ivshmem_survives_random_accesses() {
        for i in inputs(5, 300, 512) {
            fuzz_ivshmem(&i);
        }
        fuzz_ivshmem(&[]);
    }

    #[test]
    fn pci_stack_survives_random_accesses() {
        for i in inputs(4, 300, 512) {
            fuzz_pci(&i);
        }
        fuzz_pci(&[]);
        fuzz_pci(&[0xff; 64]);
    }

    #[test]
    fn fuzz_device_is_enumerable_and_keeps_its_identity() {
        let dev = FuzzPciDevice::new(Arc::new(NullMsixNotifier)).unwrap();
        let pci = Arc::new(Mutex::new(PciBus::new()));
        pci.lock()
            .unwrap()
            .add_device(Arc::new(Mutex::new(dev)), None)
            .unwrap();
        assert_eq!(ecam_id(&pci, 1), 0x10ff_1af4);
        assert_eq!(ecam_id(&pci, 0), 0x0d57_8086);
        assert_eq!(ecam_id(&pci, 2), u32::MAX);
    }

    #[test]
    fn fuzz_device_uses_intx_until_msix_is_enabled() {
        let mut dev = FuzzPciDevice::new(Arc::new(NullMsixNotifier)).unwrap();
        dev.raise(0);
        assert!(dev.config.intx_status());
        let mut b = [0u8; 4];
        dev.bar_read(0, 4, &mut b);
        assert!(!dev.config.intx_status());
    }
}
