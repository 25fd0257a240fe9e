// SPDX-License-Identifier: Apache-2.0
//! CRC-32C (Castagnoli): the checksum of snapshot files and migration frames.
//!
//! Uses the SSE4.2 `crc32` instruction when the host has it, on three
//! interleaved streams combined at the end (over 10 GiB/s, so checksumming
//! does not limit a migration), and a table otherwise.

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

/// `a * b` modulo the polynomial, bit-reflected (bit 31 is x^0).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k]` = x^(2^k) modulo the polynomial.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    t[0] = 1 << 30; // x^1
    let mut k = 1;
    while k < 32 {
        t[k] = mult_mod_p(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// x^(8 * bytes) modulo the polynomial: shifts a CRC over `bytes` zero bytes.
fn shift_op(bytes: u64) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let mut n = bytes;
    let mut k = 3; // 8 bits per byte
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_p(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC of `A || B` from `crc(A)`, `crc(B)` and the length of B.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    mult_mod_p(shift_op(len_b), crc_a) ^ crc_b
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

/// Below this many bytes one stream is as fast as three.
#[cfg(target_arch = "x86_64")]
const INTERLEAVE_MIN: usize = 4096;

/// # Safety
///
/// The CPU must support SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::_mm_crc32_u64;
    if data.len() < INTERLEAVE_MIN {
        // SAFETY: the caller guarantees SSE4.2.
        return unsafe { update_sse42_one(crc, data) };
    }
    // Three equal parts whose CRCs are computed at once (the instruction's
    // latency is three times its throughput), then combined.
    let part = (data.len() / 3) & !7;
    let (a, rest) = data.split_at(part);
    let (b, rest) = rest.split_at(part);
    let (c, tail) = rest.split_at(part);
    let (mut ca, mut cb, mut cc) = (u64::from(crc), u64::from(!0u32), u64::from(!0u32));
    for ((wa, wb), wc) in a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .zip(c.chunks_exact(8))
    {
        let word = |w: &[u8]| {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            u64::from_le_bytes(v)
        };
        ca = _mm_crc32_u64(ca, word(wa));
        cb = _mm_crc32_u64(cb, word(wb));
        cc = _mm_crc32_u64(cc, word(wc));
    }
    // Combine finished CRCs; the state is the inverted CRC.
    let ab = combine(!(ca as u32), !(cb as u32), part as u64);
    let abc = combine(ab, !(cc as u32), part as u64);
    // SAFETY: the caller guarantees SSE4.2.
    unsafe { update_sse42_one(!abc, tail) }
}

/// # Safety
///
/// The CPU must support SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42_one(crc: u32, data: &[u8]) -> u32 {
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
    fn interleaved_path_agrees_with_the_table_for_many_lengths() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i ^ (i >> 7)) as u8).collect();
        for len in [4095, 4096, 4097, 5000, 12_345, 65_536, 70_000] {
            let table = !update_table(!0, &data[..len]);
            assert_eq!(crc32c(&data[..len]), table, "length {len}");
        }
        // And continuing from a non-initial state.
        let mut crc = Crc32c::new();
        crc.update(&data[..3]);
        crc.update(&data[3..20_000]);
        assert_eq!(crc.finish(), !update_table(!0, &data[..20_000]));
    }

    #[test]
    fn combine_joins_two_crcs() {
        let a = b"hello, ";
        let b = b"shared memory world";
        let joined = [&a[..], &b[..]].concat();
        assert_eq!(
            combine(crc32c(a), crc32c(b), b.len() as u64),
            crc32c(&joined)
        );
    }

    #[test]
    fn empty_input_has_crc_zero() {
        assert_eq!(crc32c(&[]), 0);
    }
}
