// SPDX-License-Identifier: Apache-2.0
//! Command-line arguments: space-separated `key=value` words.
//!
//! `scenario=<name>` picks the scenario; scenarios read their own keys
//! (e.g. `bar=2 count=100`) through [`Args`].

/// Scenario run when the command line names none.
pub const DEFAULT_SCENARIO: &[u8] = b"boot";

/// A parsed view of the command line.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    line: &'a [u8],
}

impl<'a> Args<'a> {
    /// Wraps a command line.
    pub fn new(line: &'a [u8]) -> Self {
        Args { line }
    }

    /// The words of the command line.
    fn words(&self) -> impl Iterator<Item = &'a [u8]> {
        self.line
            .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
            .filter(|w| !w.is_empty())
    }

    /// The value of the last `key=value` word with this key.
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        let key = key.as_bytes();
        self.words()
            .filter_map(|word| {
                let eq = word.iter().position(|&b| b == b'=')?;
                let (k, rest) = word.split_at(eq);
                (k == key).then(|| rest.get(1..).unwrap_or(&[]))
            })
            .last()
    }

    /// The value of `<scope>.<key>=` if given, else of `<key>=`: lets
    /// several steps of one scenario take different values of one key
    /// (`op=write,await await.offset=0x10`).
    pub fn get_scoped(&self, scope: &[u8], key: &str) -> Option<&'a [u8]> {
        let key = key.as_bytes();
        let scoped = self
            .words()
            .filter_map(|word| {
                let eq = word.iter().position(|&b| b == b'=')?;
                let (k, rest) = word.split_at(eq);
                let (s, dot_key) = k.split_at(k.iter().position(|&b| b == b'.')?);
                (s == scope && dot_key.get(1..) == Some(key)).then(|| rest.get(1..).unwrap_or(&[]))
            })
            .last();
        scoped.or_else(|| self.get(core::str::from_utf8(key).unwrap_or("")))
    }

    /// [`Args::get_scoped`] as an unsigned number.
    pub fn get_scoped_u64(&self, scope: &[u8], key: &str) -> Option<u64> {
        parse_u64(self.get_scoped(scope, key)?)
    }

    /// The value of `key` as an unsigned number (decimal, or hex with `0x`).
    #[allow(dead_code)] // For scenarios with numeric arguments.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        parse_u64(self.get(key)?)
    }

    /// The scenario name (`scenario=`), or [`DEFAULT_SCENARIO`].
    pub fn scenario(&self) -> &'a [u8] {
        self.get("scenario").unwrap_or(DEFAULT_SCENARIO)
    }
}

/// Parses a decimal or `0x`-prefixed hex number; `None` on junk or overflow.
#[allow(dead_code)] // For scenarios with numeric arguments.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    let (digits, radix) = match text {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (text, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' if radix == 16 => b - b'a' + 10,
            b'A'..=b'F' if radix == 16 => b - b'A' + 10,
            _ => return None,
        };
        value = value.checked_mul(radix)?.checked_add(u64::from(d))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_is_read_from_its_key() {
        let args = Args::new(b"console=ttyS0 scenario=shm bar=2");
        assert_eq!(args.scenario(), b"shm");
        assert_eq!(args.get("bar"), Some(&b"2"[..]));
    }

    #[test]
    fn missing_scenario_defaults_to_boot() {
        assert_eq!(Args::new(b"").scenario(), DEFAULT_SCENARIO);
        assert_eq!(Args::new(b"quiet").scenario(), DEFAULT_SCENARIO);
    }

    #[test]
    fn last_occurrence_of_a_key_wins() {
        assert_eq!(Args::new(b"a=1 a=2").get("a"), Some(&b"2"[..]));
    }

    #[test]
    fn key_prefixes_do_not_match() {
        assert_eq!(Args::new(b"scenarios=x").get("scenario"), None);
        assert_eq!(Args::new(b"scenario").get("scenario"), None);
    }

    #[test]
    fn empty_value_is_present_but_empty() {
        assert_eq!(Args::new(b"scenario=").get("scenario"), Some(&b""[..]));
    }

    #[test]
    fn scoped_key_wins_over_the_plain_one() {
        let args = Args::new(b"offset=8 await.offset=0x10 read.len=16");
        assert_eq!(args.get_scoped_u64(b"await", "offset"), Some(0x10));
        assert_eq!(args.get_scoped_u64(b"write", "offset"), Some(8));
        assert_eq!(args.get_scoped_u64(b"read", "len"), Some(16));
        assert_eq!(args.get_scoped_u64(b"read", "offset"), Some(8));
        assert_eq!(args.get_scoped(b"x", "missing"), None);
    }

    #[test]
    fn numbers_parse_in_decimal_and_hex() {
        let args = Args::new(b"n=42 h=0x1F bad=12z big=18446744073709551616");
        assert_eq!(args.get_u64("n"), Some(42));
        assert_eq!(args.get_u64("h"), Some(0x1f));
        assert_eq!(args.get_u64("bad"), None);
        assert_eq!(args.get_u64("big"), None);
        assert_eq!(parse_u64(b"0x"), None);
    }
}
