// SPDX-License-Identifier: Apache-2.0
//! The PVH `hvm_start_info` structure the loader passes in `ebx`.

use crate::io::{phys_range_ok, phys_read32, phys_read64, phys_read8};

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
const OFF_MAGIC: u64 = 0;
const OFF_CMDLINE: u64 = 24;
const OFF_RSDP: u64 = 32;
const START_INFO_SIZE: u64 = 56;
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
        let mut info = StartInfo {
            rsdp_paddr: phys_read64(addr + OFF_RSDP),
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
        };
        let cmdline_paddr = phys_read64(addr + OFF_CMDLINE);
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
        Ok(info)
    }

    /// The command line.
    pub fn cmdline(&self) -> &[u8] {
        self.cmdline.get(..self.cmdline_len).unwrap_or(&[])
    }
}
