// SPDX-License-Identifier: Apache-2.0
//! PCI configuration space through mechanism #1 (ports 0xcf8/0xcfc), and a
//! scan of bus 0.

use crate::io::{inl, outl};

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

impl Bdf {
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
    #[allow(dead_code)] // For device scenarios (BARs, command register).
    pub fn write32(&self, offset: u8, value: u32) {
        outl(CONFIG_ADDRESS, self.address(offset));
        outl(CONFIG_DATA, value);
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

fn probe(bdf: Bdf) -> Option<(Function, u32)> {
    let id = bdf.read32(OFF_VENDOR_DEVICE);
    let vendor = (id & 0xffff) as u16;
    if vendor == NO_VENDOR || vendor == 0 {
        return None;
    }
    let function = Function {
        bdf,
        vendor,
        device: (id >> 16) as u16,
    };
    Some((function, bdf.read32(OFF_HEADER_TYPE_DWORD)))
}

/// Calls `visit` for every function on bus 0: all 32 devices, functions
/// 1-7 only when function 0 is multifunction.
pub fn scan_bus0(mut visit: impl FnMut(&Function)) {
    for device in 0..32 {
        let bdf = |function| Bdf {
            bus: 0,
            device,
            function,
        };
        let Some((first, header)) = probe(bdf(0)) else {
            continue;
        };
        visit(&first);
        if header & HEADER_MULTIFUNCTION != 0 {
            for function in 1..8 {
                if let Some((f, _)) = probe(bdf(function)) {
                    visit(&f);
                }
            }
        }
    }
}

/// The first function on bus 0 with this vendor and device ID.
#[allow(dead_code)] // For device scenarios.
pub fn find(vendor: u16, device: u16) -> Option<Function> {
    let mut found = None;
    scan_bus0(|f| {
        if found.is_none() && f.vendor == vendor && f.device == device {
            found = Some(*f);
        }
    });
    found
}
