// SPDX-License-Identifier: Apache-2.0
//! Driver for the shared-memory group device, register-compatible with
//! QEMU's ivshmem (PCI `1af4:1110`): BAR0 registers, BAR1 MSI-X (doorbell
//! mode), BAR2 the shared region (64-bit prefetchable, maybe above 4 GiB).
//!
//! [`open`] finds the device (ports 0xcf8/0xcfc, else ECAM), takes its
//! BARs as the VMM assigned them (or assigns them itself when they read 0),
//! maps them, and turns on memory decoding and bus mastering. Interrupts:
//! [`Device::enable_msix`] routes MSI-X vector `i` to a local APIC vector;
//! [`Device::enable_intx`] routes INTx through the IOAPIC pin from the
//! interrupt-line register.

use crate::acpi::Mcfg;
use crate::io::{mmio_read32, mmio_write32};
use crate::paging::{self, PagingError};
use crate::pci::{self, Access, Bdf, Function};
use crate::pci_bars::{self, Bar, BarError, CMD_BUS_MASTER, CMD_INTX_DISABLE, CMD_MEMORY};
use crate::{io, ioapic};

/// PCI vendor ID.
pub const VENDOR: u16 = 0x1af4;
/// PCI device ID.
pub const DEVICE: u16 = 0x1110;
/// Register offsets in BAR0.
pub const REG_INTR_MASK: u64 = 0x0;
/// Interrupt status (read clears).
pub const REG_INTR_STATUS: u64 = 0x4;
/// Own peer id.
pub const REG_IV_POSITION: u64 = 0x8;
/// Doorbell: `(peer << 16) | vector`.
pub const REG_DOORBELL: u64 = 0xc;
const CAP_MSIX: u8 = 0x11;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
const MSIX_ENTRY_SIZE: u64 = 16;
const MSI_ADDRESS: u32 = 0xfee0_0000;
/// Vectors the guest routes at most.
pub const MAX_VECTORS: u16 = 16;
/// `"SHOALGRP"`: a Shoal group server keeps a header at the region start.
pub const GROUP_MAGIC: u64 = u64::from_le_bytes(*b"SHOALGRP");
/// Offset of `data_offset` in the group header.
const GROUP_DATA_OFFSET: u64 = 40;

/// Why the device is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// No `1af4:1110` on bus 0.
    NotFound,
    /// A BAR is unusable.
    Bar(u8, BarError),
    /// A BAR could not be mapped.
    Map(u8, PagingError),
}

impl OpenError {
    /// Text for an error line.
    pub fn message(self) -> &'static str {
        match self {
            OpenError::NotFound => "device 1af4:1110 not found",
            OpenError::Bar(_, e) => e.message(),
            OpenError::Map(_, e) => e.message(),
        }
    }

    /// The BAR concerned, if any.
    pub fn bar(self) -> Option<u8> {
        match self {
            OpenError::NotFound => None,
            OpenError::Bar(i, _) | OpenError::Map(i, _) => Some(i),
        }
    }
}

/// A BAR as found: where, how big, and who assigned it.
#[derive(Debug, Clone, Copy)]
pub struct BarInfo {
    /// The BAR.
    pub bar: Bar,
    /// The guest assigned it (the VMM left it at 0).
    pub by_guest: bool,
}

/// The MSI-X capability.
#[derive(Debug, Clone, Copy)]
pub struct Msix {
    /// Config offset of the capability.
    cap: u16,
    /// Physical address of the table.
    table: u64,
    /// Table size.
    pub vectors: u16,
    /// The BAR holding the table.
    pub bar: BarInfo,
}

/// The shared region (BAR2), bounds-checked 64-bit accesses.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    base: u64,
    size: u64,
}

impl Region {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn word(&self, offset: u64) -> Option<*mut u64> {
        let end = offset.checked_add(8)?;
        (offset.is_multiple_of(8) && end <= self.size).then_some((self.base + offset) as *mut u64)
    }

    /// The 64-bit word at `offset` (8-aligned, inside the region).
    pub fn read64(&self, offset: u64) -> Option<u64> {
        let ptr = self.word(offset)?;
        // SAFETY: `word` checked that the 8 bytes lie in BAR2, which `open`
        // mapped; other peers write it concurrently, hence volatile.
        Some(unsafe { core::ptr::read_volatile(ptr) })
    }

    /// Writes the 64-bit word at `offset`; false when out of range.
    pub fn write64(&self, offset: u64, value: u64) -> bool {
        match self.word(offset) {
            Some(ptr) => {
                // SAFETY: as for `read64`.
                unsafe { core::ptr::write_volatile(ptr, value) };
                true
            }
            None => false,
        }
    }

    /// First byte after the group header when a Shoal group server keeps
    /// one (`SHOALGRP` magic), else 0.
    pub fn data_offset(&self) -> u64 {
        if self.read64(0) != Some(GROUP_MAGIC) {
            return 0;
        }
        match self.read64(GROUP_DATA_OFFSET) {
            Some(off) if off < self.size && off.is_multiple_of(8) => off,
            _ => 0,
        }
    }
}

/// An opened device.
#[derive(Debug, Clone, Copy)]
pub struct Device {
    /// Its function.
    pub function: Function,
    /// How config space is reached.
    pub access: Access,
    /// BAR0 (registers).
    pub regs: BarInfo,
    /// BAR2 (shared region).
    pub shared: BarInfo,
    /// The region.
    pub region: Region,
    /// MSI-X, when the device has it (doorbell mode).
    pub msix: Option<Msix>,
}

fn bar(access: Access, bdf: Bdf, index: u8, ram_end: u64) -> Result<BarInfo, OpenError> {
    let (bar, by_guest) = pci_bars::probe_or_assign(access, bdf, index, ram_end)
        .map_err(|e| OpenError::Bar(index, e))?;
    paging::map(bar.addr, bar.size, bar.prefetchable).map_err(|e| OpenError::Map(index, e))?;
    Ok(BarInfo { bar, by_guest })
}

/// Finds and enables the device; `ram_end` is the end of the highest RAM
/// region (for assigning a 64-bit BAR). With `unassign`, the guest first
/// clears BARs 0-3, as if the VMM had left them unassigned, and then
/// assigns them itself (a test of that path on VMMs that always assign).
pub fn open(mcfg: Option<&Mcfg>, ram_end: u64, unassign: bool) -> Result<Device, OpenError> {
    let (function, access) = match pci::find_via(Access::Port, VENDOR, DEVICE) {
        Some(f) => (f, Access::Port),
        None => {
            let ecam = Access::Ecam(*mcfg.ok_or(OpenError::NotFound)?);
            (
                pci::find_via(ecam, VENDOR, DEVICE).ok_or(OpenError::NotFound)?,
                ecam,
            )
        }
    };
    let bdf = function.bdf;
    if unassign {
        let cmd = pci_bars::command(access, bdf);
        pci_bars::set_command(access, bdf, cmd & !(CMD_MEMORY | CMD_BUS_MASTER));
        for index in 0..4 {
            pci_bars::clear(access, bdf, index);
        }
    }
    let regs = bar(access, bdf, 0, ram_end)?;
    let shared = bar(access, bdf, 2, ram_end)?;
    let msix = match pci_bars::find_capability(access, bdf, CAP_MSIX) {
        Some(cap) => {
            let control = bdf.read16_via(access, cap + 2);
            let table = bdf.read32_via(access, cap + 4);
            let index = (table & 0x7) as u8;
            let info = match index {
                0 => regs,
                2 => shared,
                _ => bar(access, bdf, index, ram_end)?,
            };
            Some(Msix {
                cap,
                table: info.bar.addr + u64::from(table & !0x7),
                vectors: (control & 0x7ff) + 1,
                bar: info,
            })
        }
        None => None,
    };
    let cmd = pci_bars::command(access, bdf);
    pci_bars::set_command(access, bdf, cmd | CMD_MEMORY | CMD_BUS_MASTER);
    Ok(Device {
        function,
        access,
        regs,
        shared,
        region: Region {
            base: shared.bar.addr,
            size: shared.bar.size,
        },
        msix,
    })
}

impl Device {
    fn reg(&self, offset: u64) -> u64 {
        self.regs.bar.addr + offset
    }

    /// IVPosition: own peer id.
    pub fn id(&self) -> u32 {
        mmio_read32(self.reg(REG_IV_POSITION))
    }

    /// Rings `vector` of `peer`.
    pub fn ring(&self, peer: u16, vector: u16) {
        mmio_write32(
            self.reg(REG_DOORBELL),
            (u32::from(peer) << 16) | u32::from(vector),
        );
    }

    /// Reads (and so clears) IntrStatus.
    pub fn take_status(&self) -> u32 {
        mmio_read32(self.reg(REG_INTR_STATUS))
    }

    /// Vectors the device can raise (MSI-X table size; 1 for INTx).
    pub fn vectors(&self) -> u16 {
        self.msix.map_or(1, |m| m.vectors)
    }

    /// Routes MSI-X vector `i` (up to [`MAX_VECTORS`]) to local APIC vector
    /// `base + i` on `apic_id`, unmasks them and enables MSI-X (INTx off).
    /// Returns the number of vectors routed; 0 without MSI-X.
    pub fn enable_msix(&self, base: u8, apic_id: u8) -> u16 {
        let Some(msix) = self.msix else {
            return 0;
        };
        let bdf = self.function.bdf;
        let routed = msix.vectors.min(MAX_VECTORS);
        let control = bdf.read16_via(self.access, msix.cap + 2);
        bdf.write16_via(self.access, msix.cap + 2, control | MSIX_FUNCTION_MASK);
        for i in 0..routed {
            let entry = msix.table + u64::from(i) * MSIX_ENTRY_SIZE;
            mmio_write32(entry, MSI_ADDRESS | (u32::from(apic_id) << 12));
            mmio_write32(entry + 4, 0);
            mmio_write32(entry + 8, u32::from(base) + u32::from(i));
            mmio_write32(entry + 12, 0);
        }
        let cmd = pci_bars::command(self.access, bdf);
        pci_bars::set_command(self.access, bdf, cmd | CMD_INTX_DISABLE);
        bdf.write16_via(
            self.access,
            msix.cap + 2,
            (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK,
        );
        routed
    }

    /// The IOAPIC pin of INTx (interrupt-line register), if the function
    /// has an interrupt pin.
    pub fn intx_pin(&self) -> Option<u8> {
        let value = self
            .function
            .bdf
            .read32_via(self.access, pci_bars::OFF_INTERRUPT_LINE);
        let line = (value & 0xff) as u8;
        let pin = ((value >> 8) & 0xff) as u8;
        (pin != 0 && line != 0xff).then_some(line)
    }

    /// INTx mode: MSI-X off, INTx on, IntrMask all ones, `gsi` routed
    /// level-triggered to `vector` on `apic_id` through the IOAPIC at
    /// `ioapic_base`.
    pub fn enable_intx(&self, ioapic_base: u64, gsi: u8, vector: u8, apic_id: u8) {
        let bdf = self.function.bdf;
        if let Some(msix) = self.msix {
            let control = bdf.read16_via(self.access, msix.cap + 2);
            bdf.write16_via(self.access, msix.cap + 2, control & !MSIX_ENABLE);
        }
        let cmd = pci_bars::command(self.access, bdf);
        pci_bars::set_command(self.access, bdf, cmd & !CMD_INTX_DISABLE);
        mmio_write32(self.reg(REG_INTR_MASK), u32::MAX);
        let _ = self.take_status();
        ioapic::route(ioapic_base, gsi, vector, apic_id, true);
        io::pause();
    }
}
