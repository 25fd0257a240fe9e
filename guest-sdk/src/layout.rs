// SPDX-License-Identifier: Apache-2.0
//! The SDK's part of the region: everything from the server header's
//! `data_offset` to the end.
//!
//! ```text
//! data_offset + 0      SDK header page (magic "SHOALSDK", version, geometry,
//!                      heap lock, journal, size-class lists, cache list,
//!                      wait counters)
//!             + 4096   named-object table (NAME_SLOTS × 64 bytes)
//!             + 8192   wait table (max_peers × WAIT_ENTRY bytes, page rounded)
//!   desc_off           page descriptors (heap pages × 64 bytes, page rounded)
//!   states_off         object states (heap pages × 256 bytes, page rounded):
//!                      one byte per slab object (free, held, cached)
//!   heap_off           heap pages (4 KiB each) up to the end of the region
//! ```
//!
//! The first peer to open a fresh (zero) region claims the `init` word with
//! its owner tag, lays everything out and publishes the magic last; the others
//! wait for the magic, and take over the initialisation if the claimer died.
//! Offsets in the header are absolute region offsets. Every header field is
//! re-derived from the region geometry on open and compared, so a corrupt or
//! foreign header is an error, never a wild access.

use crate::mem::{Mem, MemError};
use crate::peer::Peers;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use thiserror::Error;

/// `"SHOALSDK"` as a little-endian u64.
pub const SDK_MAGIC: u64 = u64::from_le_bytes(*b"SHOALSDK");
/// Version of the SDK layout.
pub const SDK_VERSION: u32 = 2;
/// Heap page size.
pub const PAGE: u64 = 4096;
/// Named-object slots.
pub const NAME_SLOTS: u64 = 64;
/// Bytes per named-object slot.
pub const NAME_SLOT_SIZE: u64 = 64;
/// Longest object name in bytes.
pub const NAME_MAX: usize = 40;
/// Wait-table buckets (addresses hash into these).
pub const WAIT_BUCKETS: u64 = 64;
/// Bytes per peer in the wait table: a kind word, padding, one counter per bucket.
pub const WAIT_ENTRY: u64 = 64 + 4 * WAIT_BUCKETS;
/// Bytes per page descriptor.
pub const DESC_SIZE: u64 = 64;
/// Object-state bytes per heap page (one per object of the smallest class).
pub const STATE_BYTES: u64 = 256;
/// Journal capacity (undo records).
pub const JOURNAL_CAP: u64 = 192;
/// Size-class list heads in the header.
pub const CLASS_SLOTS: u64 = 32;

// Header field offsets (relative to data_offset).
pub(crate) const H_MAGIC: u64 = 0;
pub(crate) const H_VERSION: u64 = 8;
pub(crate) const H_INIT: u64 = 12;
pub(crate) const H_MAX_PEERS: u64 = 16;
pub(crate) const H_PAGES: u64 = 20;
pub(crate) const H_NAMES: u64 = 24;
pub(crate) const H_WAIT: u64 = 32;
pub(crate) const H_DESC: u64 = 40;
pub(crate) const H_HEAP: u64 = 48;
pub(crate) const H_LOCK: u64 = 56;
pub(crate) const H_JOURNAL_LEN: u64 = 60;
pub(crate) const H_STAMP: u64 = 64;
pub(crate) const H_FREE_HEAD: u64 = 68;
pub(crate) const H_FREE_PAGES: u64 = 72;
pub(crate) const H_RECOVERIES: u64 = 76;
pub(crate) const H_STATES: u64 = 80;
/// Head of the list of thread-cache pages (page + 1; 0: empty).
pub(crate) const H_CACHE_HEAD: u64 = 88;
pub(crate) const H_CLASSES: u64 = 128;
pub(crate) const H_FUTEX_SLEEPERS: u64 = 256;
pub(crate) const H_BELL_SLEEPERS: u64 = 512;
pub(crate) const H_JOURNAL: u64 = 1024;
const _: () = assert!(H_CLASSES + 4 * CLASS_SLOTS <= H_FUTEX_SLEEPERS);
const _: () = assert!(H_BELL_SLEEPERS + 4 * WAIT_BUCKETS <= H_JOURNAL);
const _: () = assert!(H_JOURNAL + 16 * JOURNAL_CAP <= PAGE);

/// SDK layout errors.
#[derive(Debug, Error)]
pub enum LayoutError {
    /// The server's header is missing or invalid.
    #[error("Invalid group header: {0}")]
    Group(shmem_group::layout::LayoutError),
    /// The SDK area holds something that is not an SDK heap.
    #[error("Region has a foreign SDK magic {0:#x}")]
    BadMagic(u64),
    /// The SDK area was laid out by an incompatible SDK.
    #[error("Unsupported SDK layout version {0}")]
    Version(u32),
    /// The region cannot hold the SDK metadata and one heap page.
    #[error("Region too small for the SDK: {len} bytes, need {needed}")]
    TooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        len: u64,
    },
    /// A header field disagrees with the geometry.
    #[error("Corrupt SDK header: {0}")]
    Corrupt(&'static str),
    /// Another peer is initialising and did not finish in time.
    #[error("Timed out waiting for another peer to initialise the region")]
    InitTimeout,
    /// A bounds or alignment check failed.
    #[error("Bad SDK metadata access")]
    Mem(#[source] MemError),
}

impl From<MemError> for LayoutError {
    fn from(e: MemError) -> Self {
        Self::Mem(e)
    }
}

/// Where everything is, derived from the region size, `data_offset` and
/// the peer-table size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Region offset of the SDK header.
    pub header: u64,
    /// Peer-table entries covered by the wait table.
    pub max_peers: u32,
    /// Named-object table.
    pub names: u64,
    /// Wait table.
    pub wait: u64,
    /// Page descriptors.
    pub desc: u64,
    /// Object-state table.
    pub states: u64,
    /// First heap page.
    pub heap: u64,
    /// Heap pages.
    pub pages: u32,
}

impl Geometry {
    /// Computes the layout for a region of `len` bytes.
    pub fn compute(len: u64, data_offset: u64, max_peers: u32) -> Result<Self, LayoutError> {
        let round = |x: u64| x.div_ceil(PAGE) * PAGE;
        let names = data_offset + PAGE;
        let wait = names + round(NAME_SLOTS * NAME_SLOT_SIZE);
        let desc = wait + round(u64::from(max_peers) * WAIT_ENTRY);
        // Largest page count p whose descriptors, states and pages fit.
        let avail = len.saturating_sub(desc);
        let need = |p: u64| round(p * DESC_SIZE) + round(p * STATE_BYTES) + p * PAGE;
        let mut pages = avail / (PAGE + DESC_SIZE + STATE_BYTES);
        while pages > 0 && need(pages) > avail {
            pages -= 1;
        }
        if pages == 0 {
            return Err(LayoutError::TooSmall {
                needed: desc + 3 * PAGE,
                len,
            });
        }
        let pages = pages.min(u64::from(u32::MAX - 1)) as u32;
        let states = desc + round(u64::from(pages) * DESC_SIZE);
        Ok(Self {
            header: data_offset,
            max_peers,
            names,
            wait,
            desc,
            states,
            heap: states + round(u64::from(pages) * STATE_BYTES),
            pages,
        })
    }

    /// Region offset of a header field.
    pub(crate) fn field(&self, rel: u64) -> u64 {
        self.header + rel
    }

    fn write(&self, mem: &Mem) -> Result<(), MemError> {
        let put32 = |rel: u64, v: u32| -> Result<(), MemError> {
            mem.u32(self.field(rel))?.store(v, Ordering::Relaxed);
            Ok(())
        };
        let put64 = |rel: u64, v: u64| -> Result<(), MemError> {
            mem.u64(self.field(rel))?.store(v, Ordering::Relaxed);
            Ok(())
        };
        put32(H_MAX_PEERS, self.max_peers)?;
        put32(H_PAGES, self.pages)?;
        put64(H_NAMES, self.names)?;
        put64(H_WAIT, self.wait)?;
        put64(H_DESC, self.desc)?;
        put64(H_STATES, self.states)?;
        put64(H_HEAP, self.heap)
    }

    fn verify(&self, mem: &Mem) -> Result<(), LayoutError> {
        let get32 = |rel: u64| mem.u32(self.field(rel)).map(|a| a.load(Ordering::Relaxed));
        let get64 = |rel: u64| mem.u64(self.field(rel)).map(|a| a.load(Ordering::Relaxed));
        let checks = [
            (
                u64::from(get32(H_MAX_PEERS)?),
                u64::from(self.max_peers),
                "max peers",
            ),
            (
                u64::from(get32(H_PAGES)?),
                u64::from(self.pages),
                "page count",
            ),
            (get64(H_NAMES)?, self.names, "name table"),
            (get64(H_WAIT)?, self.wait, "wait table"),
            (get64(H_DESC)?, self.desc, "descriptors"),
            (get64(H_STATES)?, self.states, "object states"),
            (get64(H_HEAP)?, self.heap, "heap"),
        ];
        for (got, want, what) in checks {
            if got != want {
                return Err(LayoutError::Corrupt(what));
            }
        }
        Ok(())
    }
}

/// Opens the SDK area, initialising it if this is the first peer.
pub(crate) fn open_or_init(
    mem: &Mem,
    geo: &Geometry,
    peers: &Peers,
    tag: u32,
    timeout: Duration,
) -> Result<(), LayoutError> {
    let magic = mem.u64(geo.field(H_MAGIC))?;
    let init = mem.u32(geo.field(H_INIT))?;
    let deadline = Instant::now() + timeout;
    loop {
        let seen = magic.load(Ordering::Acquire);
        if seen == SDK_MAGIC {
            let version = mem.u32(geo.field(H_VERSION))?.load(Ordering::Relaxed);
            if version != SDK_VERSION {
                return Err(LayoutError::Version(version));
            }
            return geo.verify(mem);
        }
        if seen != 0 {
            return Err(LayoutError::BadMagic(seen));
        }
        let owner = init.load(Ordering::Acquire);
        if (owner == 0 || !peers.alive(owner))
            && init
                .compare_exchange(owner, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            initialise(mem, geo)?;
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LayoutError::InitTimeout);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Lays out a fresh SDK area (the caller holds the `init` word).
fn initialise(mem: &Mem, geo: &Geometry) -> Result<(), LayoutError> {
    // Everything after the magic/version/init words, then the tables.
    mem.zero(geo.field(H_MAX_PEERS), PAGE - H_MAX_PEERS)?;
    mem.zero(geo.names, geo.heap - geo.names)?;
    geo.write(mem)?;
    crate::alloc::heap::format(mem, geo)?;
    mem.u32(geo.field(H_VERSION))?
        .store(SDK_VERSION, Ordering::Relaxed);
    mem.u64(geo.field(H_MAGIC))?
        .store(SDK_MAGIC, Ordering::Release);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_one_mebibyte_leaves_most_pages_to_the_heap() {
        let geo = Geometry::compute(1 << 20, 4096, 64).unwrap();
        assert_eq!(geo.names, 8192);
        assert_eq!(geo.wait, 12288);
        assert_eq!(geo.desc, 12288 + 20480);
        assert_eq!(geo.states % PAGE, 0);
        assert!(geo.states >= geo.desc + u64::from(geo.pages) * DESC_SIZE);
        assert!(geo.heap >= geo.states + u64::from(geo.pages) * STATE_BYTES);
        assert_eq!(geo.heap % PAGE, 0);
        assert!(geo.heap + u64::from(geo.pages) * PAGE <= 1 << 20);
        assert!(geo.pages >= 225, "pages {}", geo.pages);
    }

    #[test]
    fn geometry_fills_the_region_exactly_or_nearly() {
        for len in [1u64 << 16, 1 << 20, 1 << 26] {
            let geo = Geometry::compute(len, 4096, 16).unwrap();
            let end = geo.heap + u64::from(geo.pages) * PAGE;
            assert!(end <= len);
            assert!(
                len - end < 3 * PAGE + DESC_SIZE + STATE_BYTES,
                "len {len} end {end}"
            );
        }
    }

    #[test]
    fn tiny_region_is_too_small() {
        let err = Geometry::compute(8192, 4096, 16).unwrap_err();
        assert!(matches!(err, LayoutError::TooSmall { .. }));
    }
}

#[cfg(test)]
mod init_tests {
    use super::*;
    use crate::handle::Shoal;
    use crate::peer::tag;
    use crate::transport::local::LocalRegion;
    use std::sync::Arc;

    fn parts(r: &Arc<LocalRegion>) -> (Shoal, Mem, Geometry) {
        let s = Shoal::open_local(Arc::clone(r), 0).unwrap();
        let (mem, geo) = (s.inner.mem, s.inner.geo);
        (s, mem, geo)
    }

    #[test]
    fn dead_initialiser_is_taken_over() {
        let r = LocalRegion::new(1 << 20, 4).unwrap();
        r.join(0).unwrap();
        let g1 = r.join(1).unwrap();
        let (_s, mem, geo) = parts(&r);
        // Pretend peer 1 claimed a fresh region and died half-way.
        mem.u64(geo.field(H_MAGIC))
            .unwrap()
            .store(0, Ordering::Release);
        mem.u32(geo.field(H_INIT))
            .unwrap()
            .store(tag(1, g1), Ordering::Release);
        r.kill(1).unwrap();
        let again = Shoal::open_local(Arc::clone(&r), 0).unwrap();
        assert!(again.check_heap(&[]).unwrap().is_consistent());
    }

    #[test]
    fn live_initialiser_that_never_finishes_times_out() {
        let r = LocalRegion::new(1 << 20, 4).unwrap();
        r.join(0).unwrap();
        let g1 = r.join(1).unwrap();
        let (s, mem, geo) = parts(&r);
        mem.u64(geo.field(H_MAGIC))
            .unwrap()
            .store(0, Ordering::Release);
        mem.u32(geo.field(H_INIT))
            .unwrap()
            .store(tag(1, g1), Ordering::Release);
        let err = open_or_init(
            &mem,
            &geo,
            &s.inner.peers,
            s.tag(),
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(matches!(err, LayoutError::InitTimeout), "{err:?}");
    }
}
