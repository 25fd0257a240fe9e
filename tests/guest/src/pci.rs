// SPDX-License-Identifier: Apache-2.0
//! PCI configuration space through mechanism #1 (ports 0xcf8/0xcfc) or
//! ECAM (MMIO, from the MCFG), and a scan of bus 0.

use crate::acpi::Mcfg;
use crate::io::{inl, mmio_read32, mmio_write16, mmio_write32, outl, outw};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const ENABLE: u32 = 1 << 31;
const OFF_VENDOR_DEVICE: u8 = 0x00;
const OFF_HEADER_TYPE_DWORD: u8 = 0x0c;
const HEADER_MULTIFUNCTION: u32 = 0x80 << 16;
/// Vendor ID read from an empty slot.
pub const NO_VENDOR: u16 = 0xffff;

/// A PCI function address on segment 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

/// How configuration space is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ports 0xcf8/0xcfc (256 bytes per function).
    Port,
    /// The MCFG's ECAM window.
    Ecam(Mcfg),
}

impl Bdf {
    /// Reads the aligned config dword containing `offset` through `access`;
    /// all-ones for a bus outside the ECAM window.
    pub fn read32_via(&self, access: Access, offset: u16) -> u32 {
        match access {
            Access::Port => match u8::try_from(offset) {
                Ok(offset) => self.read32(offset),
                Err(_) => u32::MAX,
            },
            Access::Ecam(mcfg) => match self.ecam_address(&mcfg, offset & !3) {
                Some(addr) => mmio_read32(addr),
                None => u32::MAX,
            },
        }
    }

    fn address(&self, offset: u8) -> u32 {
        ENABLE
            | u32::from(self.bus) << 16
            | u32::from(self.device & 0x1f) << 11
            | u32::from(self.function & 0x7) << 8
            | u32::from(offset & 0xfc)
    }

    /// Reads the aligned config dword containing `offset`.
    pub fn read32(&self, offset: u8) -> u32 {
        outl(CONFIG_ADDRESS, self.address(offset));
        inl(CONFIG_DATA)
    }

    /// Writes the aligned config dword at `offset`.
    pub fn write32(&self, offset: u8, value: u32) {
        outl(CONFIG_ADDRESS, self.address(offset));
        outl(CONFIG_DATA, value);
    }

    /// Writes the aligned config dword at `offset` through `access`
    /// (dropped for a bus outside the ECAM window).
    pub fn write32_via(&self, access: Access, offset: u16, value: u32) {
        match access {
            Access::Port => {
                if let Ok(offset) = u8::try_from(offset) {
                    self.write32(offset, value);
                }
            }
            Access::Ecam(mcfg) => {
                if let Some(addr) = self.ecam_address(&mcfg, offset) {
                    mmio_write32(addr, value);
                }
            }
        }
    }

    /// Writes the aligned config word (16 bits) at `offset` through
    /// `access`, without touching the other half of its dword (which may
    /// hold write-1-to-clear bits, like the status register).
    pub fn write16_via(&self, access: Access, offset: u16, value: u16) {
        match access {
            Access::Port => {
                if let Ok(offset) = u8::try_from(offset) {
                    outl(CONFIG_ADDRESS, self.address(offset));
                    outw(CONFIG_DATA + u16::from(offset & 2), value);
                }
            }
            Access::Ecam(mcfg) => {
                if let Some(addr) = self.ecam_address(&mcfg, offset & !1) {
                    mmio_write16(addr, value);
                }
            }
        }
    }

    /// Reads the config word (16 bits) at `offset` through `access`.
    pub fn read16_via(&self, access: Access, offset: u16) -> u16 {
        (self.read32_via(access, offset) >> (8 * u32::from(offset & 2))) as u16
    }

    fn ecam_address(&self, mcfg: &Mcfg, offset: u16) -> Option<u64> {
        if self.bus < mcfg.start_bus || self.bus > mcfg.end_bus || offset >= 0x1000 {
            return None;
        }
        Some(
            mcfg.base
                + (u64::from(self.bus) << 20)
                + (u64::from(self.device & 0x1f) << 15)
                + (u64::from(self.function & 0x7) << 12)
                + u64::from(offset & 0xffc)
                + u64::from(offset & 3),
        )
    }
}

/// A function found by [`scan_bus0`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

fn probe(access: Access, bdf: Bdf) -> Option<(Function, u32)> {
    let id = bdf.read32_via(access, u16::from(OFF_VENDOR_DEVICE));
    let vendor = (id & 0xffff) as u16;
    if vendor == NO_VENDOR || vendor == 0 {
        return None;
    }
    let function = Function {
        bdf,
        vendor,
        device: (id >> 16) as u16,
    };
    Some((
        function,
        bdf.read32_via(access, u16::from(OFF_HEADER_TYPE_DWORD)),
    ))
}

/// Calls `visit` for every function on bus 0 through ports 0xcf8/0xcfc.
pub fn scan_bus0(visit: impl FnMut(&Function)) {
    scan_bus0_via(Access::Port, visit);
}

/// Calls `visit` for every function on bus 0: all 32 devices, functions
/// 1-7 only when function 0 is multifunction.
pub fn scan_bus0_via(access: Access, mut visit: impl FnMut(&Function)) {
    for device in 0..32 {
        let bdf = |function| Bdf {
            bus: 0,
            device,
            function,
        };
        let Some((first, header)) = probe(access, bdf(0)) else {
            continue;
        };
        visit(&first);
        if header & HEADER_MULTIFUNCTION != 0 {
            for function in 1..8 {
                if let Some((f, _)) = probe(access, bdf(function)) {
                    visit(&f);
                }
            }
        }
    }
}

/// The first function on bus 0 with this vendor and device ID, through
/// `access`.
pub fn find_via(access: Access, vendor: u16, device: u16) -> Option<Function> {
    let mut found = None;
    scan_bus0_via(access, |f| {
        if found.is_none() && f.vendor == vendor && f.device == device {
            found = Some(*f);
        }
    });
    found
}
