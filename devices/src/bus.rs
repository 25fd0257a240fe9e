// SPDX-License-Identifier: Apache-2.0
//! An address bus mapping non-overlapping ranges to devices.
//!
//! The vmm keeps one [`Bus`] for port I/O and one for MMIO; its vCPU exit
//! handler calls [`Bus::read`] / [`Bus::write`]. Lookups are O(log n) in a
//! `BTreeMap` keyed by range base. The bus is shared between vCPU threads and
//! can be changed while they run (a guest moving a BAR): the range map sits
//! behind an `RwLock` that is never held while a device runs, so a device may
//! itself cause a range to move.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;

/// A device reachable through a [`Bus`].
///
/// `base` is the start of the range the access hit and `offset` the distance
/// from it, so one device registered at several ranges can tell them apart
/// (`base + offset` is the absolute address). `data.len()` is the access size
/// and can be anything, including 0: implementations must not panic on it.
pub trait BusDevice: Send {
    /// Handles a read; fill `data` (it starts zeroed).
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles a write.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device shared between a bus and its owner.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of [`Bus`] operations.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// A range of length zero was inserted.
    #[error("Zero-length range at {0:#x}")]
    ZeroLength(u64),
    /// The range runs past the end of the address space.
    #[error("Range at {base:#x} with length {len:#x} wraps around")]
    Wraps {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps one already on the bus.
    #[error("Range at {base:#x} with length {len:#x} overlaps an existing range")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// No range starts at this address.
    #[error("No range starts at {0:#x}")]
    NoSuchRange(u64),
    /// The access hit no device (reads return all-ones, writes are dropped).
    #[error("Unhandled access at {addr:#x} of {len} bytes")]
    Unhandled {
        /// Address of the access.
        addr: u64,
        /// Size of the access.
        len: usize,
    },
}

struct Entry {
    len: u64,
    dev: SharedBusDevice,
}

/// Maps address ranges to devices. Shared by reference between vCPU threads.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map();
        f.debug_list()
            .entries(map.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

fn last_addr(base: u64, len: u64) -> Result<u64, BusError> {
    if len == 0 {
        return Err(BusError::ZeroLength(base));
    }
    base.checked_add(len - 1)
        .ok_or(BusError::Wraps { base, len })
}

fn overlaps(map: &BTreeMap<u64, Entry>, base: u64, last: u64, ignore: Option<u64>) -> bool {
    // The nearest range starting at or below `last` is the only candidate:
    // ranges never overlap each other, so anything starting earlier ends
    // before that one starts.
    map.range(..=last)
        .rev()
        .find(|(b, _)| Some(**b) != ignore)
        .is_some_and(|(b, e)| b.saturating_add(e.len - 1) >= base)
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn map_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Maps `[base, base + len)` to `dev`.
    pub fn insert(&self, dev: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let last = last_addr(base, len)?;
        let mut map = self.map_mut();
        if overlaps(&map, base, last, None) {
            return Err(BusError::Overlap { base, len });
        }
        map.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Unmaps the range starting at `base` and returns its device.
    pub fn remove(&self, base: u64) -> Result<SharedBusDevice, BusError> {
        self.map_mut()
            .remove(&base)
            .map(|e| e.dev)
            .ok_or(BusError::NoSuchRange(base))
    }

    /// Moves the range starting at `old_base` to `[new_base, new_base + new_len)`
    /// in one step, keeping its device. On error nothing changes.
    pub fn update_range(&self, old_base: u64, new_base: u64, new_len: u64) -> Result<(), BusError> {
        let last = last_addr(new_base, new_len)?;
        let mut map = self.map_mut();
        if !map.contains_key(&old_base) {
            return Err(BusError::NoSuchRange(old_base));
        }
        if overlaps(&map, new_base, last, Some(old_base)) {
            return Err(BusError::Overlap {
                base: new_base,
                len: new_len,
            });
        }
        let entry = map
            .remove(&old_base)
            .ok_or(BusError::NoSuchRange(old_base))?;
        map.insert(
            new_base,
            Entry {
                len: new_len,
                dev: entry.dev,
            },
        );
        Ok(())
    }

    /// Returns `(base, len, device)` of the range containing `addr`.
    pub fn get(&self, addr: u64) -> Option<(u64, u64, SharedBusDevice)> {
        let map = self.map();
        let (base, e) = map.range(..=addr).next_back()?;
        (addr - base < e.len).then(|| (*base, e.len, e.dev.clone()))
    }

    /// The device and base for an access of `len` bytes at `addr`, if one
    /// range holds the whole access.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, SharedBusDevice)> {
        let (base, rlen, dev) = self.get(addr)?;
        let end = (addr - base).checked_add(len as u64)?;
        (end <= rlen).then_some((base, dev))
    }

    /// Reads `data.len()` bytes at `addr`.
    ///
    /// An access that no single range holds fills `data` with `0xff` and
    /// returns [`BusError::Unhandled`], for the caller to log (rate-limited).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                data.fill(0);
                crate::lock(&dev).read(base, addr - base, data);
                Ok(())
            }
            None => {
                data.fill(0xff);
                Err(BusError::Unhandled {
                    addr,
                    len: data.len(),
                })
            }
        }
    }

    /// Writes `data` at `addr`; an access no range holds is dropped and
    /// reported as [`BusError::Unhandled`].
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                crate::lock(&dev).write(base, addr - base, data);
                Ok(())
            }
            None => Err(BusError::Unhandled {
                addr,
                len: data.len(),
            }),
        }
    }

    /// Number of mapped ranges.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no range is mapped.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access; reads return `offset` in every byte.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.last = Some((base, offset, data.to_vec()));
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, SharedBusDevice) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let d: SharedBusDevice = p.clone();
        (p, d)
    }

    #[test]
    fn read_reaches_device_with_base_and_offset() {
        let bus = Bus::new();
        let (p, d) = probe();
        bus.insert(d, 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        bus.read(0x3fd, &mut buf).unwrap();
        assert_eq!(buf, [5]);
        assert_eq!(p.lock().unwrap().last.as_ref().unwrap().0, 0x3f8);
    }

    #[test]
    fn unhandled_read_is_all_ones() {
        let bus = Bus::new();
        let mut buf = [0u8; 4];
        assert_eq!(
            bus.read(0x1234, &mut buf),
            Err(BusError::Unhandled {
                addr: 0x1234,
                len: 4
            })
        );
        assert_eq!(buf, [0xff; 4]);
    }

    #[test]
    fn unhandled_write_is_reported() {
        let bus = Bus::new();
        assert!(bus.write(0x10, &[1]).is_err());
    }

    #[test]
    fn access_straddling_range_end_is_unhandled() {
        let bus = Bus::new();
        let (p, d) = probe();
        bus.insert(d, 0x100, 4).unwrap();
        let mut buf = [0u8; 4];
        assert!(bus.read(0x102, &mut buf).is_err());
        assert_eq!(buf, [0xff; 4]);
        assert!(p.lock().unwrap().last.is_none());
    }

    #[test]
    fn zero_length_access_reaches_device_without_panic() {
        let bus = Bus::new();
        let (p, d) = probe();
        bus.insert(d, 0x100, 4).unwrap();
        bus.write(0x103, &[]).unwrap();
        assert_eq!(p.lock().unwrap().last, Some((0x100, 3, vec![])));
    }

    #[test]
    fn overlapping_insert_is_rejected() {
        let bus = Bus::new();
        bus.insert(probe().1, 0x100, 0x10).unwrap();
        for (base, len) in [
            (0xf8, 0x9),
            (0x10f, 1),
            (0x100, 0x10),
            (0x0, 0x1000),
            (0x104, 2),
        ] {
            assert_eq!(
                bus.insert(probe().1, base, len),
                Err(BusError::Overlap { base, len }),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(probe().1, 0xf0, 0x10).unwrap();
        bus.insert(probe().1, 0x110, 0x10).unwrap();
        assert_eq!(bus.len(), 3);
    }

    #[test]
    fn zero_length_and_wrapping_ranges_are_rejected() {
        let bus = Bus::new();
        assert_eq!(bus.insert(probe().1, 5, 0), Err(BusError::ZeroLength(5)));
        assert_eq!(
            bus.insert(probe().1, u64::MAX, 2),
            Err(BusError::Wraps {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(probe().1, u64::MAX, 1).unwrap();
        let mut b = [0u8; 1];
        bus.read(u64::MAX, &mut b).unwrap();
        let mut b2 = [0u8; 2];
        assert!(bus.read(u64::MAX, &mut b2).is_err());
    }

    #[test]
    fn remove_unmaps_range() {
        let bus = Bus::new();
        bus.insert(probe().1, 0x100, 4).unwrap();
        bus.remove(0x100).unwrap();
        assert!(bus.is_empty());
        assert!(matches!(
            bus.remove(0x100),
            Err(BusError::NoSuchRange(0x100))
        ));
    }

    #[test]
    fn update_range_moves_device_and_checks_overlap() {
        let bus = Bus::new();
        let (p, d) = probe();
        bus.insert(d, 0x1000, 0x100).unwrap();
        bus.insert(probe().1, 0x3000, 0x100).unwrap();
        // Moving onto itself (overlapping the old place) is fine.
        bus.update_range(0x1000, 0x1080, 0x100).unwrap();
        assert_eq!(
            bus.update_range(0x1080, 0x2f80, 0x100),
            Err(BusError::Overlap {
                base: 0x2f80,
                len: 0x100
            })
        );
        bus.update_range(0x1080, 0x2000, 0x100).unwrap();
        bus.write(0x2004, &[9]).unwrap();
        assert_eq!(p.lock().unwrap().last, Some((0x2000, 4, vec![9])));
        assert!(bus.write(0x1080, &[9]).is_err());
    }

    #[test]
    fn get_finds_containing_range_only() {
        let bus = Bus::new();
        bus.insert(probe().1, 0x10, 0x10).unwrap();
        assert_eq!(bus.get(0x1f).map(|g| (g.0, g.1)), Some((0x10, 0x10)));
        assert!(bus.get(0x20).is_none());
        assert!(bus.get(0xf).is_none());
    }

    #[test]
    fn insert_and_lookup_agree_with_a_naive_model() {
        let bus = Bus::new();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let base = next() % 0x400;
            let len = next() % 0x20 + 1;
            let clash = model.iter().any(|(b, l)| base < b + l && *b < base + len);
            assert_eq!(bus.insert(probe().1, base, len).is_ok(), !clash);
            if !clash {
                model.push((base, len));
            }
            if next() % 4 == 0 && !model.is_empty() {
                let i = (next() as usize) % model.len();
                let (b, _) = model.swap_remove(i);
                bus.remove(b).unwrap();
            }
        }
        for addr in 0..0x440u64 {
            let want = model.iter().find(|(b, l)| addr >= *b && addr < b + l);
            assert_eq!(
                bus.get(addr).map(|g| (g.0, g.1)),
                want.copied(),
                "{addr:#x}"
            );
        }
    }

    #[test]
    fn device_may_touch_bus_during_access() {
        struct Mover(Arc<Bus>);
        impl BusDevice for Mover {
            fn read(&mut self, _: u64, _: u64, _: &mut [u8]) {}
            fn write(&mut self, base: u64, _: u64, _: &[u8]) {
                let _ = self.0.update_range(base, base + 0x100, 0x10);
            }
        }
        let bus = Arc::new(Bus::new());
        bus.insert(Arc::new(Mutex::new(Mover(bus.clone()))), 0x0, 0x10)
            .unwrap();
        bus.write(0x0, &[1]).unwrap();
        assert!(bus.get(0x100).is_some());
    }
}
