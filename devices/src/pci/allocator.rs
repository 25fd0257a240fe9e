// SPDX-License-Identifier: Apache-2.0
//! BAR address allocation over the PCI windows of docs/platform.md.
//!
//! First fit with natural alignment (a BAR is aligned to its size). The vmm
//! places every BAR before boot with [`assign_bars`].

use std::collections::BTreeMap;

use thiserror::Error;

use super::config::{BarInfo, BarKind, PciConfigError};
use super::device::PciDevice;

/// Start of the 32-bit MMIO window.
pub const MMIO32_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO window.
pub const MMIO32_END: u64 = 0xe000_0000;
/// Start of the I/O port window used for I/O BARs (inside the DSDT's
/// `0x0d00-0xffff` range).
pub const IO_START: u64 = 0x1000;
/// End (exclusive) of the I/O port window.
pub const IO_END: u64 = 0x1_0000;

/// Errors of BAR allocation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AllocatorError {
    /// Size is zero or not a power of two.
    #[error("Allocation size {0:#x} is not a power of two")]
    BadSize(u64),
    /// The window has no aligned gap that large.
    #[error("No room for {size:#x} bytes in the {window} window")]
    Exhausted {
        /// Size asked for.
        size: u64,
        /// Which window.
        window: &'static str,
    },
    /// The window itself is empty or wraps.
    #[error("Window at {base:#x} with size {size:#x} is not valid")]
    BadWindow {
        /// Base.
        base: u64,
        /// Size.
        size: u64,
    },
    /// The range is not free (reserve) or not allocated (free).
    #[error("Range at {0:#x} is not available")]
    NotAvailable(u64),
    /// The device refused the address.
    #[error("Device refused its BAR address")]
    Device(#[source] PciConfigError),
}

#[derive(Debug)]
struct Window {
    name: &'static str,
    start: u64,
    end: u64,
    used: BTreeMap<u64, u64>,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

impl Window {
    fn new(name: &'static str, start: u64, end: u64) -> Self {
        Self {
            name,
            start,
            end,
            used: BTreeMap::new(),
        }
    }

    fn allocate(&mut self, size: u64) -> Result<u64, AllocatorError> {
        if !size.is_power_of_two() {
            return Err(AllocatorError::BadSize(size));
        }
        let full = AllocatorError::Exhausted {
            size,
            window: self.name,
        };
        let mut cursor = align_up(self.start, size).ok_or(AllocatorError::Exhausted {
            size,
            window: self.name,
        })?;
        for (b, s) in &self.used {
            if cursor.checked_add(size).is_some_and(|e| e <= *b) {
                break;
            }
            cursor = cursor.max(align_up(b + s, size).ok_or(AllocatorError::Exhausted {
                size,
                window: self.name,
            })?);
        }
        match cursor.checked_add(size) {
            Some(e) if e <= self.end => {
                self.used.insert(cursor, size);
                Ok(cursor)
            }
            _ => Err(full),
        }
    }

    fn reserve(&mut self, base: u64, size: u64) -> Result<(), AllocatorError> {
        let end = base
            .checked_add(size)
            .filter(|e| size > 0 && base >= self.start && *e <= self.end)
            .ok_or(AllocatorError::NotAvailable(base))?;
        let clash = self
            .used
            .range(..end)
            .next_back()
            .is_some_and(|(b, s)| b + s > base);
        if clash {
            return Err(AllocatorError::NotAvailable(base));
        }
        self.used.insert(base, size);
        Ok(())
    }

    fn free(&mut self, base: u64) -> Result<(), AllocatorError> {
        self.used
            .remove(&base)
            .map(|_| ())
            .ok_or(AllocatorError::NotAvailable(base))
    }
}

/// Allocates BAR addresses in the I/O, 32-bit and 64-bit windows.
#[derive(Debug)]
pub struct BarAllocator {
    io: Window,
    mmio32: Window,
    mmio64: Window,
}

impl BarAllocator {
    /// Creates an allocator whose 64-bit window is `[mmio64_base, +mmio64_size)`
    /// (after high RAM, 1 GiB aligned, 64 GiB on our platform).
    pub fn new(mmio64_base: u64, mmio64_size: u64) -> Result<Self, AllocatorError> {
        let end = mmio64_base
            .checked_add(mmio64_size)
            .filter(|_| mmio64_size > 0)
            .ok_or(AllocatorError::BadWindow {
                base: mmio64_base,
                size: mmio64_size,
            })?;
        Ok(Self {
            io: Window::new("I/O", IO_START, IO_END),
            mmio32: Window::new("32-bit MMIO", MMIO32_START, MMIO32_END),
            mmio64: Window::new("64-bit MMIO", mmio64_base, end),
        })
    }

    fn window(&mut self, kind: BarKind) -> &mut Window {
        match kind {
            BarKind::Io => &mut self.io,
            // Non-prefetchable memory stays below 4 GiB, as bridges expect.
            BarKind::Mmio32 | BarKind::Mmio64 { prefetch: false } => &mut self.mmio32,
            BarKind::Mmio64 { prefetch: true } => &mut self.mmio64,
        }
    }

    /// Allocates `size` bytes (a power of two) aligned to `size`.
    pub fn allocate(&mut self, size: u64, kind: BarKind) -> Result<u64, AllocatorError> {
        self.window(kind).allocate(size)
    }

    /// Marks `[base, base + size)` as used (restore, fixed placements).
    pub fn reserve(&mut self, base: u64, size: u64, kind: BarKind) -> Result<(), AllocatorError> {
        self.window(kind).reserve(base, size)
    }

    /// Releases an allocation made at `base`.
    pub fn free(&mut self, base: u64, kind: BarKind) -> Result<(), AllocatorError> {
        self.window(kind).free(base)
    }
}

/// Gives every BAR of `dev` an address and programs it; returns the BARs.
pub fn assign_bars(
    dev: &mut dyn PciDevice,
    alloc: &mut BarAllocator,
) -> Result<Vec<BarInfo>, AllocatorError> {
    let mut bars = dev.bars();
    // Largest first keeps natural alignment from wasting the window.
    bars.sort_by_key(|b| std::cmp::Reverse(b.size));
    for b in bars {
        let addr = alloc.allocate(b.size, b.kind)?;
        dev.set_bar_addr(b.index, addr)
            .map_err(AllocatorError::Device)?;
    }
    Ok(dev.bars())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{PciConfiguration, PciHeader};
    use crate::pci::test_util::BarDev;

    const W64: u64 = 0x10_0000_0000;

    fn alloc() -> BarAllocator {
        BarAllocator::new(W64, 64 << 30).unwrap()
    }

    #[test]
    fn allocations_are_naturally_aligned_and_disjoint() {
        let mut a = alloc();
        let x = a.allocate(0x100, BarKind::Mmio32).unwrap();
        let y = a.allocate(0x10_0000, BarKind::Mmio32).unwrap();
        let z = a.allocate(0x100, BarKind::Mmio32).unwrap();
        assert_eq!(x, MMIO32_START);
        assert_eq!(y % 0x10_0000, 0);
        assert!(y >= x + 0x100);
        assert_eq!(z, x + 0x100, "first fit reuses the gap");
    }

    #[test]
    fn kinds_use_their_windows() {
        let mut a = alloc();
        assert_eq!(a.allocate(0x20, BarKind::Io).unwrap(), IO_START);
        assert_eq!(
            a.allocate(1 << 30, BarKind::Mmio64 { prefetch: true })
                .unwrap(),
            W64
        );
        assert_eq!(
            a.allocate(0x1000, BarKind::Mmio64 { prefetch: false })
                .unwrap(),
            MMIO32_START
        );
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = alloc();
        a.allocate(256 << 20, BarKind::Mmio32).unwrap();
        a.allocate(256 << 20, BarKind::Mmio32).unwrap();
        assert_eq!(
            a.allocate(16, BarKind::Mmio32),
            Err(AllocatorError::Exhausted {
                size: 16,
                window: "32-bit MMIO"
            })
        );
        assert!(a
            .allocate(1 << 40, BarKind::Mmio64 { prefetch: true })
            .is_err());
    }

    #[test]
    fn bad_sizes_and_windows_are_errors() {
        let mut a = alloc();
        assert_eq!(
            a.allocate(0, BarKind::Mmio32),
            Err(AllocatorError::BadSize(0))
        );
        assert_eq!(
            a.allocate(24, BarKind::Io),
            Err(AllocatorError::BadSize(24))
        );
        assert!(BarAllocator::new(u64::MAX, 2).is_err());
        assert!(BarAllocator::new(0, 0).is_err());
    }

    #[test]
    fn free_and_reserve() {
        let mut a = alloc();
        let x = a.allocate(0x1000, BarKind::Mmio32).unwrap();
        assert!(a.reserve(x, 0x10, BarKind::Mmio32).is_err());
        a.free(x, BarKind::Mmio32).unwrap();
        assert!(a.free(x, BarKind::Mmio32).is_err());
        a.reserve(MMIO32_START, 0x1000, BarKind::Mmio32).unwrap();
        assert_eq!(
            a.allocate(0x1000, BarKind::Mmio32).unwrap(),
            MMIO32_START + 0x1000
        );
        assert!(
            a.reserve(0x1000, 0x10, BarKind::Mmio32).is_err(),
            "outside window"
        );
    }

    #[test]
    fn random_allocations_stay_aligned_disjoint_and_inside() {
        let mut a = alloc();
        let mut got: Vec<(u64, u64)> = Vec::new();
        let mut x: u64 = 12345;
        for _ in 0..500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = 1u64 << (4 + (x >> 59) % 20);
            match a.allocate(size, BarKind::Mmio32) {
                Ok(base) => {
                    assert_eq!(base % size, 0);
                    assert!(base >= MMIO32_START && base + size <= MMIO32_END);
                    assert!(got.iter().all(|(b, s)| base + size <= *b || b + s <= base));
                    got.push((base, size));
                }
                Err(e) => assert!(matches!(e, AllocatorError::Exhausted { .. })),
            }
            if x % 3 == 0 && !got.is_empty() {
                let (b, _) = got.swap_remove((x >> 32) as usize % got.len());
                a.free(b, BarKind::Mmio32).unwrap();
            }
        }
        assert!(!got.is_empty());
    }

    #[test]
    fn assign_bars_programs_the_device() {
        let mut cfg = PciConfiguration::new(&PciHeader::default(), false);
        cfg.add_bar(0, 0x100, BarKind::Mmio32, true).unwrap();
        cfg.add_bar(1, 0x1000, BarKind::Mmio32, true).unwrap();
        cfg.add_bar(2, 1 << 22, BarKind::Mmio64 { prefetch: true }, false)
            .unwrap();
        let mut dev = BarDev(cfg);
        let bars = assign_bars(&mut dev, &mut alloc()).unwrap();
        assert_eq!(bars[0].addr, MMIO32_START + 0x1000);
        assert_eq!(bars[1].addr, MMIO32_START);
        assert_eq!(bars[2].addr, W64);
        assert_eq!(dev.0.read_reg(7), 0x10);
    }
}
