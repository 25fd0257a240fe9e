// SPDX-License-Identifier: Apache-2.0
//! What the loader passes: the PVH `hvm_start_info` (in `ebx`) or, for the
//! Linux 64-bit boot protocol, the zero page (`boot_params`, in `rsi`).
//! Either gives the command line and the RSDP address.

use crate::io::{phys_range_ok, phys_read32, phys_read64, phys_read8};

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
const OFF_MAGIC: u64 = 0;
const OFF_CMDLINE: u64 = 24;
const OFF_RSDP: u64 = 32;
const START_INFO_SIZE: u64 = 56;
/// `boot_params` fields (Linux `Documentation/arch/x86/zero-page.rst`).
const ZP_SIZE: u64 = 4096;
const ZP_ACPI_RSDP_ADDR: u64 = 0x070;
const ZP_EXT_CMD_LINE_PTR: u64 = 0x0c8;
const ZP_HDR_MAGIC: u64 = 0x202;
const ZP_CMD_LINE_PTR: u64 = 0x228;
/// `hdr.header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// Longest command line the guest reads (docs/platform.md allows 64 KiB;
/// the test guest only needs a few arguments).
pub const CMDLINE_MAX: usize = 1024;

/// What the guest takes from `hvm_start_info`.
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    /// Physical address of the RSDP, 0 when the loader gave none.
    pub rsdp_paddr: u64,
    /// The command line bytes (without the NUL).
    pub cmdline: [u8; CMDLINE_MAX],
    /// Number of valid bytes in `cmdline`.
    pub cmdline_len: usize,
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
        Ok(Self::with(
            phys_read64(addr + OFF_RSDP),
            phys_read64(addr + OFF_CMDLINE),
        ))
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
        Ok(Self::with(phys_read64(addr + ZP_ACPI_RSDP_ADDR), cmdline))
    }

    /// Copies the NUL-terminated command line at `cmdline_paddr` (none if
    /// the address is 0 or outside the identity map).
    fn with(rsdp_paddr: u64, cmdline_paddr: u64) -> Self {
        let mut info = StartInfo {
            rsdp_paddr,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
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
