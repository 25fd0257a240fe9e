// SPDX-License-Identifier: Apache-2.0
//! Human-readable byte sizes: `4096`, `4K`, `4M`, `1G`, `2GiB`, `1T`.
//!
//! Suffixes are binary (K = 1024) and case-insensitive; a trailing `B` or
//! `iB` is accepted. Used by `shoal group serve --size` and by the VMM's
//! `--shmem size=...` option.

use thiserror::Error;

/// Why a size string was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// The string is empty.
    #[error("Empty size")]
    Empty,
    /// The number part is missing or not a decimal number.
    #[error("Invalid size number: {0:?}")]
    Number(String),
    /// The suffix is not one of K, M, G, T (optionally followed by B or iB).
    #[error("Unknown size suffix: {0:?}")]
    Suffix(String),
    /// The value does not fit in 64 bits.
    #[error("Size is too large")]
    Overflow,
}

/// Parses a size such as `4M` or `1G` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return Err(SizeError::Number(text.to_string()));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| SizeError::Number(number.to_string()))?;
    let lower = suffix.trim().to_ascii_lowercase();
    let unit = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(SizeError::Suffix(suffix.to_string())),
    };
    if lower == "ib" {
        return Err(SizeError::Suffix(suffix.to_string()));
    }
    value.checked_mul(1u64 << shift).ok_or(SizeError::Overflow)
}

/// Formats a byte count with the largest binary suffix that divides it.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, name) in UNITS {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{}", bytes >> shift, name);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_number_is_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
    }

    #[test]
    fn binary_suffixes_scale() {
        assert_eq!(parse_size("4K"), Ok(4 << 10));
        assert_eq!(parse_size("4m"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3MB"), Ok(3 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("M"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("4X"), Err(SizeError::Suffix(_))));
        assert!(matches!(parse_size("4iB"), Err(SizeError::Suffix(_))));
        assert!(matches!(parse_size("-4M"), Err(SizeError::Number(_))));
    }

    #[test]
    fn overflow_is_rejected() {
        assert_eq!(parse_size("99999999999T"), Err(SizeError::Overflow));
        assert!(matches!(
            parse_size("999999999999999999999"),
            Err(SizeError::Number(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        assert_eq!(format_size(4 << 20), "4M");
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(parse_size(&format_size(64 << 20)), Ok(64 << 20));
    }
}
