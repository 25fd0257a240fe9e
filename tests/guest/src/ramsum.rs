// SPDX-License-Identifier: Apache-2.0
//! The RAM checksum and fill pattern of `scenario=checksum`, pure so the
//! host can compute the same values (and unit-test them).
//!
//! Checksum: FNV-1a over little-endian 64-bit words: start with
//! [`SUM_SEED`], then for each word `h = (h ^ w) * FNV_PRIME` (wrapping).
//! Pattern: xorshift64 (13, 7, 17) from the seed (0 is replaced by 1), one
//! step per word.

/// Initial checksum value (the FNV-1a 64-bit offset basis).
pub const SUM_SEED: u64 = 0xcbf2_9ce4_8422_2325;
/// The FNV 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds one word into the checksum.
pub fn fold(sum: u64, word: u64) -> u64 {
    (sum ^ word).wrapping_mul(FNV_PRIME)
}

/// The checksum of `words`.
pub fn checksum(words: impl IntoIterator<Item = u64>) -> u64 {
    words.into_iter().fold(SUM_SEED, fold)
}

/// The fill pattern: successive calls give successive words.
#[derive(Debug, Clone, Copy)]
pub struct Pattern(u64);

impl Pattern {
    /// A pattern from `seed` (0 acts as 1: xorshift never leaves 0).
    pub fn new(seed: u64) -> Self {
        Pattern(if seed == 0 { 1 } else { seed })
    }

    /// The next word.
    pub fn next_word(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_nothing_is_the_seed() {
        assert_eq!(checksum([]), SUM_SEED);
    }

    #[test]
    fn checksum_depends_on_word_order() {
        assert_ne!(checksum([1, 2]), checksum([2, 1]));
        assert_eq!(checksum([1, 2]), fold(fold(SUM_SEED, 1), 2));
    }

    #[test]
    fn pattern_is_xorshift_and_zero_seed_is_not_stuck() {
        let mut p = Pattern::new(1);
        assert_eq!(p.next_word(), 0x4082_2041);
        let mut z = Pattern::new(0);
        assert_ne!(z.next_word(), 0);
    }
}
