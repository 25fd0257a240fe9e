// SPDX-License-Identifier: Apache-2.0
//! What the loader passes: the PVH `hvm_start_info` (in `ebx`) or, for the
//! Linux 64-bit boot protocol, the zero page (`boot_params`, in `rsi`).
//! Either gives the command line, the RSDP address and the memory map.

use crate::io::{phys_range_ok, phys_read32, phys_read64, phys_read8};

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
const OFF_MAGIC: u64 = 0;
const OFF_VERSION: u64 = 4;
const OFF_MEMMAP: u64 = 40;
const OFF_MEMMAP_ENTRIES: u64 = 48;
/// `hvm_memmap_table_entry`: addr, size, type, reserved.
const MEMMAP_ENTRY_LEN: u64 = 24;
const OFF_CMDLINE: u64 = 24;
const OFF_RSDP: u64 = 32;
const START_INFO_SIZE: u64 = 56;
/// `boot_params` fields (Linux `Documentation/arch/x86/zero-page.rst`).
const ZP_SIZE: u64 = 4096;
const ZP_ACPI_RSDP_ADDR: u64 = 0x070;
const ZP_EXT_CMD_LINE_PTR: u64 = 0x0c8;
const ZP_HDR_MAGIC: u64 = 0x202;
const ZP_CMD_LINE_PTR: u64 = 0x228;
const ZP_E820_ENTRIES: u64 = 0x1e8;
const ZP_E820_TABLE: u64 = 0x2d0;
/// `boot_e820_entry`: addr, size, type (packed).
const ZP_E820_ENTRY_LEN: u64 = 20;
/// Entries the zero page has room for.
const ZP_E820_MAX: u64 = 128;
/// `hdr.header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// Longest command line the guest reads (docs/platform.md allows 64 KiB;
/// the test guest only needs a few arguments).
pub const CMDLINE_MAX: usize = 1024;

/// Memory map entries the guest keeps.
pub const MEMMAP_MAX: usize = 32;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One memory map entry (E820 types: 1 RAM, 2 reserved, 3 ACPI, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type.
    pub kind: u32,
}

/// What the guest takes from `hvm_start_info` or the zero page.
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    /// Physical address of the RSDP, 0 when the loader gave none.
    pub rsdp_paddr: u64,
    /// The command line bytes (without the NUL).
    pub cmdline: [u8; CMDLINE_MAX],
    /// Number of valid bytes in `cmdline`.
    pub cmdline_len: usize,
    /// The memory map, in the loader's order.
    pub memmap: [MemRegion; MEMMAP_MAX],
    /// Valid entries in `memmap`.
    pub memmap_len: usize,
    /// Entries that did not fit in `memmap`.
    pub memmap_dropped: usize,
}

/// Why the start info could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// The pointer is null or outside the identity map.
    BadAddress,
    /// The magic number is wrong.
    BadMagic(u32),
}

impl StartInfoError {
    /// The bad value, for the error line.
    pub fn value(&self) -> u64 {
        match *self {
            StartInfoError::BadAddress => 0,
            StartInfoError::BadMagic(magic) => u64::from(magic),
        }
    }

    /// A short description for the `SHOAL-TG error ...` line.
    pub fn message(&self) -> &'static str {
        match self {
            StartInfoError::BadAddress => "boot info address",
            StartInfoError::BadMagic(_) => "boot info magic",
        }
    }
}

impl StartInfo {
    /// Reads the start info at physical address `addr`.
    pub fn read(addr: u64) -> Result<Self, StartInfoError> {
        if !phys_range_ok(addr, START_INFO_SIZE) {
            return Err(StartInfoError::BadAddress);
        }
        let magic = phys_read32(addr + OFF_MAGIC);
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let mut info = Self::with(
            phys_read64(addr + OFF_RSDP),
            phys_read64(addr + OFF_CMDLINE),
        );
        // The memory map fields exist from version 1 on.
        if phys_read32(addr + OFF_VERSION) >= 1 {
            let table = phys_read64(addr + OFF_MEMMAP);
            let entries = u64::from(phys_read32(addr + OFF_MEMMAP_ENTRIES));
            for i in 0..entries {
                let at = table.wrapping_add(i * MEMMAP_ENTRY_LEN);
                if !phys_range_ok(at, MEMMAP_ENTRY_LEN) {
                    break;
                }
                info.push_region(MemRegion {
                    addr: phys_read64(at),
                    size: phys_read64(at + 8),
                    kind: phys_read32(at + 16),
                });
            }
        }
        Ok(info)
    }

    /// Reads the Linux zero page at physical address `addr`.
    pub fn read_zero_page(addr: u64) -> Result<Self, StartInfoError> {
        if !phys_range_ok(addr, ZP_SIZE) {
            return Err(StartInfoError::BadAddress);
        }
        let magic = phys_read32(addr + ZP_HDR_MAGIC);
        if magic != HDR_MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let cmdline = u64::from(phys_read32(addr + ZP_CMD_LINE_PTR))
            | (u64::from(phys_read32(addr + ZP_EXT_CMD_LINE_PTR)) << 32);
        let mut info = Self::with(phys_read64(addr + ZP_ACPI_RSDP_ADDR), cmdline);
        let entries = u64::from(phys_read8(addr + ZP_E820_ENTRIES)).min(ZP_E820_MAX);
        for i in 0..entries {
            let at = addr + ZP_E820_TABLE + i * ZP_E820_ENTRY_LEN;
            info.push_region(MemRegion {
                addr: phys_read64(at),
                size: phys_read64(at + 8),
                kind: phys_read32(at + 16),
            });
        }
        Ok(info)
    }

    fn push_region(&mut self, region: MemRegion) {
        match self.memmap.get_mut(self.memmap_len) {
            Some(slot) => {
                *slot = region;
                self.memmap_len += 1;
            }
            None => self.memmap_dropped += 1,
        }
    }

    /// The memory map.
    pub fn memmap(&self) -> &[MemRegion] {
        self.memmap.get(..self.memmap_len).unwrap_or(&[])
    }

    /// Copies the NUL-terminated command line at `cmdline_paddr` (none if
    /// the address is 0 or outside the identity map).
    fn with(rsdp_paddr: u64, cmdline_paddr: u64) -> Self {
        let mut info = StartInfo {
            rsdp_paddr,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            memmap: [MemRegion::default(); MEMMAP_MAX],
            memmap_len: 0,
            memmap_dropped: 0,
        };
        if phys_range_ok(cmdline_paddr, 1) {
            for (i, slot) in info.cmdline.iter_mut().enumerate() {
                let byte = phys_read8(cmdline_paddr + i as u64);
                if byte == 0 {
                    break;
                }
                *slot = byte;
                info.cmdline_len = i + 1;
            }
        }
        info
    }

    /// The command line.
    pub fn cmdline(&self) -> &[u8] {
        self.cmdline.get(..self.cmdline_len).unwrap_or(&[])
    }
}
