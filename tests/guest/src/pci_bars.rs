// SPDX-License-Identifier: Apache-2.0
//! A PCI function's resources: memory BARs (read, sized, assigned when the
//! VMM left one at 0), the command register and the capability list.
//!
//! BARs are sized the way Linux does it: memory decoding off, all-ones
//! written, the read-back masked, the old value restored. A BAR that reads
//! 0 gets an address in the platform's window (docs/platform.md): 32-bit
//! BARs in `0xc000_0000..0xe000_0000`, 64-bit ones in the 64-bit window
//! after RAM (1 GiB aligned), away from every other BAR of bus 0.

use crate::pci::{scan_bus0_via, Access, Bdf};
use crate::window::{find_free, mmio64_base};

const OFF_COMMAND: u16 = 0x04;
const OFF_STATUS: u16 = 0x06;
const OFF_BAR0: u16 = 0x10;
const OFF_CAP_PTR: u16 = 0x34;
/// Interrupt line (the IOAPIC pin on Shoal) and pin registers.
pub const OFF_INTERRUPT_LINE: u16 = 0x3c;
/// Command register: memory space decoding.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command register: bus master (needed for MSI/MSI-X writes).
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disabled (PCI 2.3).
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;
const BAR_IO: u32 = 1 << 0;
const BAR_TYPE_MASK: u32 = 0x6;
const BAR_TYPE_64: u32 = 0x4;
const BAR_PREFETCH: u32 = 1 << 3;
const BAR_MEM_MASK: u32 = !0xf;
/// Base of the 32-bit PCI MMIO window (docs/platform.md).
pub const MMIO32_BASE: u64 = 0xc000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const MMIO32_SIZE: u64 = 0x2000_0000;
/// Size of the 64-bit PCI MMIO window.
pub const MMIO64_SIZE: u64 = 64 << 30;
/// Capability list walk limit (a malformed list could loop).
const MAX_CAPS: u32 = 48;
/// BARs remembered while looking for free space.
const MAX_RANGES: usize = 64;

/// A memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Guest-physical address (0: unassigned).
    pub addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// 64-bit BAR (takes two slots).
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// Why a BAR is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// Index out of 0-5, or the upper half of a 64-bit BAR.
    BadIndex,
    /// An I/O BAR where memory was expected.
    NotMemory,
    /// Sizing read back nothing.
    NotImplemented,
    /// No free space of this size in the window.
    NoSpace,
    /// A 64-bit size on a 32-bit BAR, or the BAR did not keep the address.
    Rejected,
}

impl BarError {
    /// Text for an error line.
    pub fn message(self) -> &'static str {
        match self {
            BarError::BadIndex => "bad bar index",
            BarError::NotMemory => "bar is not a memory bar",
            BarError::NotImplemented => "bar not implemented",
            BarError::NoSpace => "no free space for the bar",
            BarError::Rejected => "bar did not take its address",
        }
    }
}

fn bar_offset(index: u8) -> u16 {
    OFF_BAR0 + 4 * u16::from(index)
}

/// The command register.
pub fn command(access: Access, bdf: Bdf) -> u16 {
    bdf.read16_via(access, OFF_COMMAND)
}

/// Writes the command register.
pub fn set_command(access: Access, bdf: Bdf, value: u16) {
    bdf.write16_via(access, OFF_COMMAND, value);
}

/// Reads and sizes memory BAR `index` (memory decoding is off meanwhile).
pub fn probe(access: Access, bdf: Bdf, index: u8) -> Result<Bar, BarError> {
    if index > 5 {
        return Err(BarError::BadIndex);
    }
    let off = bar_offset(index);
    let low = bdf.read32_via(access, off);
    if low & BAR_IO != 0 {
        return Err(BarError::NotMemory);
    }
    let is_64 = low & BAR_TYPE_MASK == BAR_TYPE_64;
    if is_64 && index == 5 {
        return Err(BarError::BadIndex);
    }
    let high = if is_64 {
        bdf.read32_via(access, off + 4)
    } else {
        0
    };
    let cmd = command(access, bdf);
    set_command(access, bdf, cmd & !CMD_MEMORY);
    bdf.write32_via(access, off, u32::MAX);
    let mask_low = bdf.read32_via(access, off) & BAR_MEM_MASK;
    bdf.write32_via(access, off, low);
    let mask_high = if is_64 {
        bdf.write32_via(access, off + 4, u32::MAX);
        let m = bdf.read32_via(access, off + 4);
        bdf.write32_via(access, off + 4, high);
        m
    } else {
        u32::MAX
    };
    set_command(access, bdf, cmd);
    let mask = (u64::from(mask_high) << 32) | u64::from(mask_low);
    if mask_low == 0 && (!is_64 || mask_high == 0) {
        return Err(BarError::NotImplemented);
    }
    let size = (!mask).wrapping_add(1);
    Ok(Bar {
        addr: (u64::from(high) << 32) | u64::from(low & BAR_MEM_MASK),
        size: if is_64 { size } else { size & 0xffff_ffff },
        is_64,
        prefetchable: low & BAR_PREFETCH != 0,
    })
}

/// Writes `addr` into BAR `index` and checks it stuck.
fn program(access: Access, bdf: Bdf, index: u8, bar: &Bar, addr: u64) -> Result<(), BarError> {
    let off = bar_offset(index);
    let flags = bdf.read32_via(access, off) & !BAR_MEM_MASK;
    if !bar.is_64 && addr + bar.size > 1 << 32 {
        return Err(BarError::Rejected);
    }
    let cmd = command(access, bdf);
    set_command(access, bdf, cmd & !CMD_MEMORY);
    bdf.write32_via(access, off, (addr as u32 & BAR_MEM_MASK) | flags);
    if bar.is_64 {
        bdf.write32_via(access, off + 4, (addr >> 32) as u32);
    }
    set_command(access, bdf, cmd);
    let got = probe(access, bdf, index)?;
    if got.addr == addr {
        Ok(())
    } else {
        Err(BarError::Rejected)
    }
}

/// Writes 0 to the address bits of BAR register `index` (the flag bits
/// are read-only). Memory decoding should be off.
pub fn clear(access: Access, bdf: Bdf, index: u8) {
    if index <= 5 {
        bdf.write32_via(access, bar_offset(index), 0);
    }
}

/// Every assigned memory BAR of bus 0 as `(start, end)`, at most `MAX_RANGES`.
fn used_ranges(access: Access, out: &mut [(u64, u64); MAX_RANGES]) -> usize {
    let mut count = 0;
    scan_bus0_via(access, |f| {
        let mut index = 0;
        while index < 6 {
            let step = match probe(access, f.bdf, index) {
                Ok(bar) => {
                    if bar.addr != 0 {
                        if let Some(slot) = out.get_mut(count) {
                            *slot = (bar.addr, bar.addr.saturating_add(bar.size));
                            count += 1;
                        }
                    }
                    if bar.is_64 {
                        2
                    } else {
                        1
                    }
                }
                Err(_) => 1,
            };
            index += step;
        }
    });
    count
}

/// Memory BAR `index`, assigned in its window when the VMM left it at 0.
/// `ram_end` is the end of the highest RAM region (for the 64-bit window).
/// Returns the BAR and whether the guest assigned it.
pub fn probe_or_assign(
    access: Access,
    bdf: Bdf,
    index: u8,
    ram_end: u64,
) -> Result<(Bar, bool), BarError> {
    let mut bar = probe(access, bdf, index)?;
    if bar.addr != 0 {
        return Ok((bar, false));
    }
    let mut used = [(0, 0); MAX_RANGES];
    let count = used_ranges(access, &mut used);
    let used = used.get(..count).unwrap_or(&[]);
    let (start, len) = if bar.is_64 {
        (mmio64_base(ram_end), MMIO64_SIZE)
    } else {
        (MMIO32_BASE, MMIO32_SIZE)
    };
    let addr = find_free(start, len, bar.size, used).ok_or(BarError::NoSpace)?;
    program(access, bdf, index, &bar, addr)?;
    bar.addr = addr;
    Ok((bar, true))
}

/// Offset of the first capability with `id`, if the function has one.
pub fn find_capability(access: Access, bdf: Bdf, id: u8) -> Option<u16> {
    if bdf.read16_via(access, OFF_STATUS) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut ptr = (bdf.read32_via(access, OFF_CAP_PTR) & 0xfc) as u16;
    let mut walked = 0;
    while ptr >= 0x40 && walked < MAX_CAPS {
        let header = bdf.read32_via(access, ptr);
        if header & 0xff == u32::from(id) {
            return Some(ptr);
        }
        ptr = ((header >> 8) & 0xfc) as u16;
        walked += 1;
    }
    None
}
