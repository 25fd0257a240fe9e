// SPDX-License-Identifier: Apache-2.0
//! Read access to guest-physical memory behind a trait, so table parsers
//! (ACPI) run on the host in unit tests over a byte buffer.

/// Byte-addressed read access to physical memory; wider reads are
/// little-endian and need no alignment.
pub trait Memory {
    /// Reads one byte; addresses with nothing behind them read as `0xff`.
    fn read8(&self, addr: u64) -> u8;

    /// Reads a little-endian `u16`.
    fn read16(&self, addr: u64) -> u16 {
        u16::from(self.read8(addr)) | (u16::from(self.read8(addr.wrapping_add(1))) << 8)
    }

    /// Reads a little-endian `u32`.
    fn read32(&self, addr: u64) -> u32 {
        u32::from(self.read16(addr)) | (u32::from(self.read16(addr.wrapping_add(2))) << 16)
    }

    /// Reads a little-endian `u64`.
    fn read64(&self, addr: u64) -> u64 {
        u64::from(self.read32(addr)) | (u64::from(self.read32(addr.wrapping_add(4))) << 32)
    }

    /// Whether `len` bytes at `addr` can be read.
    fn contains(&self, addr: u64, len: u64) -> bool;
}
