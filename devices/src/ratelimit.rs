// SPDX-License-Identifier: Apache-2.0
//! Rate limiting for log lines a guest can trigger.

use std::sync::atomic::{AtomicU64, Ordering};

/// Decides whether a guest-triggerable log line may be emitted.
///
/// The first [`LogLimiter::BURST`] events are allowed, then only events whose
/// running count is a power of two, so a guest hammering an unhandled port
/// costs the host log a few dozen lines at most.
#[derive(Debug, Default)]
pub struct LogLimiter {
    seen: AtomicU64,
}

impl LogLimiter {
    /// Events always allowed before thinning starts.
    pub const BURST: u64 = 10;

    /// Creates a limiter that has seen nothing (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
        }
    }

    /// Records one event and returns whether it should be logged.
    pub fn allow(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        n <= Self::BURST || n.is_power_of_two()
    }

    /// Number of events recorded so far.
    pub fn count(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_powers_of_two() {
        let l = LogLimiter::new();
        let allowed: Vec<u64> = (1..=100u64).filter(|_| l.allow()).collect();
        assert_eq!(allowed, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64]);
        assert_eq!(l.count(), 100);
    }
}
