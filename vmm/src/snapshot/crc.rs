// SPDX-License-Identifier: Apache-2.0
//! CRC-32C (Castagnoli): the checksum of snapshot files and migration frames.
//!
//! Uses the SSE4.2 `crc32` instruction when the host has it (several GiB/s,
//! so checksumming never limits a migration) and a table otherwise.

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82f6_3b78;

const TABLE: [u32; 256] = make_table();

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// A running CRC-32C.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c {
    state: u32,
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c { state: !0 }
    }

    /// Adds `data` to the checksum.
    pub fn update(&mut self, data: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the host CPU supports SSE4.2 (checked just above).
            self.state = unsafe { update_sse42(self.state, data) };
            return;
        }
        self.state = update_table(self.state, data);
    }

    /// The checksum of everything added so far.
    pub fn finish(&self) -> u32 {
        !self.state
    }
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(data);
    crc.finish()
}

fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// # Safety
///
/// The CPU must support SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(crc);
    let words = data.chunks_exact(8);
    let rest = words.remainder();
    for w in words {
        let mut v = [0u8; 8];
        v.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(v));
    }
    // The instruction keeps the upper half zero.
    let mut c = c as u32;
    for &b in rest {
        c = _mm_crc32_u8(c, b);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C for "123456789" (RFC 3720, iSCSI).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn hardware_and_table_paths_agree() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let table = !update_table(!0, &data);
        assert_eq!(crc32c(&data), table);
    }

    #[test]
    fn incremental_updates_equal_one_shot() {
        let data: Vec<u8> = (0..333u32).map(|i| i as u8).collect();
        let mut crc = Crc32c::new();
        crc.update(&data[..100]);
        crc.update(&data[100..]);
        assert_eq!(crc.finish(), crc32c(&data));
    }

    #[test]
    fn empty_input_has_crc_zero() {
        assert_eq!(crc32c(&[]), 0);
    }
}
