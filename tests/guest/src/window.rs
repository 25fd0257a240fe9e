// SPDX-License-Identifier: Apache-2.0
//! Address arithmetic for assigning BARs (pure, unit-tested on the host):
//! free space in a window, and where the 64-bit window starts.

const GIB: u64 = 1 << 30;

/// The first `size`-aligned address in `[start, start + len)` that
/// overlaps none of `used`.
pub fn find_free(start: u64, len: u64, size: u64, used: &[(u64, u64)]) -> Option<u64> {
    if size == 0 || !size.is_power_of_two() {
        return None;
    }
    let end = start.checked_add(len)?;
    let mut candidate = start.checked_next_multiple_of(size)?;
    loop {
        let candidate_end = candidate.checked_add(size)?;
        if candidate_end > end {
            return None;
        }
        match used
            .iter()
            .find(|&&(s, e)| s < candidate_end && candidate < e)
        {
            Some(&(_, e)) => candidate = e.checked_next_multiple_of(size)?,
            None => return Some(candidate),
        }
    }
}

/// Start of the 64-bit window: after the highest RAM (at least 4 GiB),
/// 1 GiB aligned.
pub fn mmio64_base(ram_end: u64) -> u64 {
    ram_end.max(1 << 32).div_ceil(GIB).saturating_mul(GIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_skips_overlapping_bars() {
        let used = [(0xc000_0000, 0xc000_1000), (0xc010_0000, 0xc020_0000)];
        assert_eq!(
            find_free(0xc000_0000, 0x2000_0000, 0x10_0000, &used),
            Some(0xc020_0000)
        );
        assert_eq!(
            find_free(0xc000_0000, 0x2000_0000, 0x1000, &used),
            Some(0xc000_1000)
        );
    }

    #[test]
    fn free_space_fails_when_the_window_is_full() {
        let used = [(0xc000_0000, 0xe000_0000)];
        assert_eq!(find_free(0xc000_0000, 0x2000_0000, 0x1000, &used), None);
        assert_eq!(find_free(0, 0x1000, 0x2000, &[]), None);
        assert_eq!(find_free(0, 0x1000, 3, &[]), None);
    }

    #[test]
    fn window_64_follows_ram_on_a_gib_boundary() {
        assert_eq!(mmio64_base(128 << 20), 4 * GIB);
        assert_eq!(mmio64_base(4 * GIB), 4 * GIB);
        assert_eq!(mmio64_base(4 * GIB + 4096), 5 * GIB);
    }
}
