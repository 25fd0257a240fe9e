// SPDX-License-Identifier: Apache-2.0
//! The region header and peer state table at the start of a group's region.
//!
//! This module is shared with the guest SDK, so it depends on nothing but
//! `core`/`std` (not even `thiserror`) and can be copied or re-exported as is.
//!
//! # Layout (all integers native-endian, i.e. little-endian on x86_64)
//!
//! ```text
//! offset  size  field
//!      0     8  magic            "SHOALGRP" (written last, with release order)
//!      8     4  layout_version   LAYOUT_VERSION
//!     12     4  table_offset     byte offset of the peer table (HEADER_SIZE)
//!     16     8  region_size      total bytes in the region (power of two)
//!     24     4  max_peers        entries in the peer table
//!     28     4  entry_size       bytes per entry (ENTRY_SIZE)
//!     32     4  vectors          doorbell vectors per peer
//!     36     4  server_epoch     bumped each time a server (re)takes the region
//!     40     8  data_offset      first byte free for the SDK (page aligned)
//!     48    32  name             group name, UTF-8, NUL padded
//!     80    48  reserved         zero
//!    128     …  peer table       max_peers × PeerEntry
//! ```
//!
//! A [`PeerEntry`] is 32 bytes:
//!
//! ```text
//!      0     8  status           generation << 32 | state   (one atomic word)
//!      8     4  pid              host pid of the peer's process (0: unknown)
//!     12     4  flags            reserved, zero
//!     16     8  doorbells_sent   kept by the peer itself (host peer / SDK)
//!     24     8  doorbells_recv   kept by the peer itself (host peer / SDK)
//! ```
//!
//! The server is the only writer of `status` and `pid`; the generation is
//! bumped every time an id changes hands or dies, so a lock owner recorded as
//! `(id, generation)` can be checked for death without ABA problems. The
//! doorbell counters belong to the peer that owns the entry.
//!
//! Everything after `data_offset` belongs to the SDK. Guests can write the
//! header too (it is plain shared memory): readers must validate what they
//! read, and the server never trusts it except when adopting a region.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// `"SHOALGRP"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHOALGRP");
/// Version of this layout.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the fixed header; the peer table starts here.
pub const HEADER_SIZE: usize = 128;
/// Size of one peer table entry.
pub const ENTRY_SIZE: usize = 32;
/// Maximum group name length in bytes.
pub const NAME_LEN: usize = 32;
/// Alignment of `data_offset`.
pub const PAGE_SIZE: u64 = 4096;

/// Layout errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The mapping is too small for the header and table.
    TooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        len: u64,
    },
    /// The base pointer is not 8-byte aligned.
    Misaligned,
    /// The magic number is missing (not initialised, or not a Shoal region).
    BadMagic,
    /// The layout version is not one this code understands.
    Version(u32),
    /// A header field is inconsistent with the mapping.
    Corrupt(&'static str),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall { needed, len } => {
                write!(f, "Region too small: {len} bytes, need {needed}")
            }
            Self::Misaligned => write!(f, "Region is not 8-byte aligned"),
            Self::BadMagic => write!(f, "Region has no Shoal header"),
            Self::Version(v) => write!(f, "Unsupported layout version {v}"),
            Self::Corrupt(what) => write!(f, "Corrupt region header: {what}"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// State of a peer id in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PeerState {
    /// Never used (or cleared).
    Absent = 0,
    /// Connected.
    Alive = 1,
    /// Being live-migrated; it keeps its id and doorbells.
    Migrating = 2,
    /// Its connection closed without a migration: anything it held is orphaned.
    Dead = 3,
}

impl PeerState {
    /// Decodes a raw state value; unknown values read as `None`.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Absent),
            1 => Some(Self::Alive),
            2 => Some(Self::Migrating),
            3 => Some(Self::Dead),
            _ => None,
        }
    }

    /// Lower-case name, as shown by `shoal group status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Alive => "alive",
            Self::Migrating => "migrating",
            Self::Dead => "dead",
        }
    }
}

/// The fixed header (see the module docs for offsets).
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    magic: AtomicU64,
    layout_version: AtomicU32,
    table_offset: AtomicU32,
    region_size: AtomicU64,
    max_peers: AtomicU32,
    entry_size: AtomicU32,
    vectors: AtomicU32,
    server_epoch: AtomicU32,
    data_offset: AtomicU64,
    name: [AtomicU8; NAME_LEN],
    reserved: [AtomicU64; 6],
}

/// One peer's entry in the table.
#[repr(C)]
#[derive(Debug)]
pub struct PeerEntry {
    status: AtomicU64,
    pid: AtomicU32,
    flags: AtomicU32,
    doorbells_sent: AtomicU64,
    doorbells_received: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<PeerEntry>() == ENTRY_SIZE);

/// A consistent copy of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Decoded state (`None` if the raw value is unknown).
    pub state: Option<PeerState>,
    /// Generation counter.
    pub generation: u32,
    /// Host pid, 0 if unknown.
    pub pid: u32,
    /// Doorbells this peer reports having sent.
    pub doorbells_sent: u64,
    /// Doorbells this peer reports having received.
    pub doorbells_received: u64,
}

/// Parameters the server writes into a fresh header.
#[derive(Debug, Clone)]
pub struct LayoutParams {
    /// Total region size.
    pub region_size: u64,
    /// Peer table entries.
    pub max_peers: u32,
    /// Doorbell vectors per peer.
    pub vectors: u32,
    /// Group name (truncated to [`NAME_LEN`] bytes).
    pub name: String,
}

/// Bytes taken by the header and a table of `max_peers` entries, rounded up to
/// a page: the SDK's data starts here.
pub fn data_offset(max_peers: u32) -> u64 {
    let raw = HEADER_SIZE as u64 + ENTRY_SIZE as u64 * u64::from(max_peers);
    raw.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// A view of the header and table over a mapping.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    header: &'a Header,
    entries: &'a [PeerEntry],
}

impl<'a> Region<'a> {
    /// Views an initialised region (as a reader: SDK, peers, an adopting server).
    ///
    /// # Safety
    /// `base` must point to `len` bytes of mapped, readable and writable memory
    /// that stays mapped for `'a`. Other processes may write it concurrently;
    /// only atomic accesses are made through the view.
    pub unsafe fn open(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: forwarded from the caller's contract.
        let header = unsafe { Self::header_at(base, len) }?;
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let version = header.layout_version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(LayoutError::Version(version));
        }
        if header.table_offset.load(Ordering::Relaxed) as usize != HEADER_SIZE {
            return Err(LayoutError::Corrupt("table offset"));
        }
        if header.entry_size.load(Ordering::Relaxed) as usize != ENTRY_SIZE {
            return Err(LayoutError::Corrupt("entry size"));
        }
        if header.region_size.load(Ordering::Relaxed) != len as u64 {
            return Err(LayoutError::Corrupt("region size"));
        }
        let max_peers = header.max_peers.load(Ordering::Relaxed);
        if header.data_offset.load(Ordering::Relaxed) != data_offset(max_peers) {
            return Err(LayoutError::Corrupt("data offset"));
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { Self::with_table(base, len, header, max_peers) }
    }

    /// Writes a fresh header and an all-absent table (server only), publishing
    /// the magic last.
    ///
    /// # Safety
    /// Same contract as [`Region::open`].
    pub unsafe fn init(
        base: *mut u8,
        len: usize,
        params: &LayoutParams,
    ) -> Result<Self, LayoutError> {
        if params.region_size != len as u64 {
            return Err(LayoutError::Corrupt("region size"));
        }
        // SAFETY: forwarded from the caller's contract.
        let header = unsafe { Self::header_at(base, len) }?;
        // SAFETY: forwarded from the caller's contract.
        let region = unsafe { Self::with_table(base, len, header, params.max_peers) }?;
        header.magic.store(0, Ordering::Release);
        header
            .layout_version
            .store(LAYOUT_VERSION, Ordering::Relaxed);
        header
            .table_offset
            .store(HEADER_SIZE as u32, Ordering::Relaxed);
        header.region_size.store(len as u64, Ordering::Relaxed);
        header.max_peers.store(params.max_peers, Ordering::Relaxed);
        header
            .entry_size
            .store(ENTRY_SIZE as u32, Ordering::Relaxed);
        header.vectors.store(params.vectors, Ordering::Relaxed);
        header.server_epoch.store(1, Ordering::Relaxed);
        header
            .data_offset
            .store(data_offset(params.max_peers), Ordering::Relaxed);
        let name = params.name.as_bytes();
        for (i, byte) in header.name.iter().enumerate() {
            byte.store(name.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        for word in &header.reserved {
            word.store(0, Ordering::Relaxed);
        }
        for entry in region.entries {
            entry.status.store(0, Ordering::Relaxed);
            entry.pid.store(0, Ordering::Relaxed);
            entry.flags.store(0, Ordering::Relaxed);
            entry.doorbells_sent.store(0, Ordering::Relaxed);
            entry.doorbells_received.store(0, Ordering::Relaxed);
        }
        header.magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    /// # Safety
    /// Same contract as [`Region::open`].
    unsafe fn header_at(base: *mut u8, len: usize) -> Result<&'a Header, LayoutError> {
        if (base as usize) % 8 != 0 || base.is_null() {
            return Err(LayoutError::Misaligned);
        }
        if len < HEADER_SIZE {
            return Err(LayoutError::TooSmall {
                needed: HEADER_SIZE as u64,
                len: len as u64,
            });
        }
        // SAFETY: base is aligned, non-null and points to at least
        // HEADER_SIZE mapped bytes (caller contract + check above); Header is
        // made of atomics, for which every bit pattern is valid, and shared
        // references to atomics allow concurrent modification.
        Ok(unsafe { &*(base as *const Header) })
    }

    /// # Safety
    /// Same contract as [`Region::open`].
    unsafe fn with_table(
        base: *mut u8,
        len: usize,
        header: &'a Header,
        max_peers: u32,
    ) -> Result<Self, LayoutError> {
        let needed = data_offset(max_peers);
        if needed >= len as u64 {
            return Err(LayoutError::TooSmall {
                needed: needed + 1,
                len: len as u64,
            });
        }
        // SAFETY: the table lies inside the mapping (checked above), at an
        // 8-byte aligned offset of an aligned base; entries are atomics.
        let entries = unsafe {
            std::slice::from_raw_parts(
                base.add(HEADER_SIZE) as *const PeerEntry,
                max_peers as usize,
            )
        };
        Ok(Self { header, entries })
    }

    /// Number of entries in the table.
    pub fn max_peers(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Total region size.
    pub fn region_size(&self) -> u64 {
        self.header.region_size.load(Ordering::Relaxed)
    }

    /// Doorbell vectors per peer.
    pub fn vectors(&self) -> u32 {
        self.header.vectors.load(Ordering::Relaxed)
    }

    /// First byte of the SDK's area.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset.load(Ordering::Relaxed)
    }

    /// Server epoch: bumped by each server that (re)takes the region.
    pub fn server_epoch(&self) -> u32 {
        self.header.server_epoch.load(Ordering::Acquire)
    }

    /// Bumps the server epoch (server only).
    pub fn bump_server_epoch(&self) -> u32 {
        self.header
            .server_epoch
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1)
    }

    /// The group name stored in the header (lossy UTF-8, NULs trimmed).
    pub fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .header
            .name
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .take_while(|b| *b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Reads one entry; `None` if `id` is outside the table.
    pub fn peer(&self, id: u16) -> Option<PeerSnapshot> {
        let entry = self.entries.get(usize::from(id))?;
        let status = entry.status.load(Ordering::Acquire);
        Some(PeerSnapshot {
            state: PeerState::from_raw(status as u32),
            generation: (status >> 32) as u32,
            pid: entry.pid.load(Ordering::Relaxed),
            doorbells_sent: entry.doorbells_sent.load(Ordering::Relaxed),
            doorbells_received: entry.doorbells_received.load(Ordering::Relaxed),
        })
    }

    /// Sets an entry's state (server only). With `new_generation` the
    /// generation is bumped (id handed to a new owner, or owner died).
    /// Returns the resulting generation, or `None` if `id` is out of range.
    pub fn set_peer(
        &self,
        id: u16,
        state: PeerState,
        pid: u32,
        new_generation: bool,
    ) -> Option<u32> {
        let entry = self.entries.get(usize::from(id))?;
        let old = entry.status.load(Ordering::Acquire);
        let mut generation = (old >> 32) as u32;
        if new_generation {
            generation = generation.wrapping_add(1);
        }
        if state == PeerState::Alive && new_generation {
            entry.doorbells_sent.store(0, Ordering::Relaxed);
            entry.doorbells_received.store(0, Ordering::Relaxed);
        }
        entry.pid.store(pid, Ordering::Relaxed);
        entry.status.store(
            (u64::from(generation) << 32) | state as u64,
            Ordering::Release,
        );
        Some(generation)
    }

    /// Adds to the owner's sent-doorbell counter (the owning peer only).
    pub fn count_sent(&self, id: u16, n: u64) {
        if let Some(entry) = self.entries.get(usize::from(id)) {
            entry.doorbells_sent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds to the owner's received-doorbell counter (the owning peer only).
    pub fn count_received(&self, id: u16, n: u64) {
        if let Some(entry) = self.entries.get(usize::from(id)) {
            entry.doorbells_received.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(len: usize) -> Vec<u64> {
        vec![0u64; len / 8]
    }

    fn params(len: usize) -> LayoutParams {
        LayoutParams {
            region_size: len as u64,
            max_peers: 16,
            vectors: 2,
            name: "grp".into(),
        }
    }

    #[test]
    fn init_then_open_reads_back_fields() {
        let mut buf = buffer(8192);
        let base = buf.as_mut_ptr() as *mut u8;
        // SAFETY: buf is 8192 bytes, aligned and lives for the test.
        unsafe { Region::init(base, 8192, &params(8192)) }.unwrap();
        // SAFETY: as above.
        let region = unsafe { Region::open(base, 8192) }.unwrap();
        assert_eq!(region.max_peers(), 16);
        assert_eq!(region.vectors(), 2);
        assert_eq!(region.name(), "grp");
        assert_eq!(region.data_offset(), 4096);
        assert_eq!(region.peer(3).unwrap().state, Some(PeerState::Absent));
    }

    #[test]
    fn open_without_magic_fails() {
        let mut buf = buffer(8192);
        // SAFETY: buf is 8192 bytes, aligned and lives for the test.
        let err = unsafe { Region::open(buf.as_mut_ptr() as *mut u8, 8192) }.unwrap_err();
        assert_eq!(err, LayoutError::BadMagic);
    }

    #[test]
    fn region_too_small_for_table_fails() {
        let mut buf = buffer(4096);
        let base = buf.as_mut_ptr() as *mut u8;
        // SAFETY: buf is 4096 bytes, aligned and lives for the test.
        let err = unsafe { Region::init(base, 4096, &params(4096)) }.unwrap_err();
        assert!(matches!(err, LayoutError::TooSmall { .. }));
    }

    #[test]
    fn open_rejects_corrupt_sizes() {
        let mut buf = buffer(8192);
        let base = buf.as_mut_ptr() as *mut u8;
        // SAFETY: buf is 8192 bytes, aligned and lives for the test.
        unsafe { Region::init(base, 8192, &params(8192)) }.unwrap();
        buf[2] = 12345; // region_size lives at byte offset 16
                        // SAFETY: as above.
        let err = unsafe { Region::open(buf.as_mut_ptr() as *mut u8, 8192) }.unwrap_err();
        assert_eq!(err, LayoutError::Corrupt("region size"));
    }

    #[test]
    fn set_peer_bumps_generation_only_when_asked() {
        let mut buf = buffer(8192);
        let base = buf.as_mut_ptr() as *mut u8;
        // SAFETY: buf is 8192 bytes, aligned and lives for the test.
        let region = unsafe { Region::init(base, 8192, &params(8192)) }.unwrap();
        assert_eq!(region.set_peer(1, PeerState::Alive, 42, true), Some(1));
        assert_eq!(region.set_peer(1, PeerState::Migrating, 42, false), Some(1));
        assert_eq!(region.set_peer(1, PeerState::Dead, 42, true), Some(2));
        let snap = region.peer(1).unwrap();
        assert_eq!(snap.state, Some(PeerState::Dead));
        assert_eq!(snap.pid, 42);
        assert_eq!(region.set_peer(16, PeerState::Alive, 1, true), None);
    }

    #[test]
    fn counters_accumulate_and_reset_on_new_owner() {
        let mut buf = buffer(8192);
        let base = buf.as_mut_ptr() as *mut u8;
        // SAFETY: buf is 8192 bytes, aligned and lives for the test.
        let region = unsafe { Region::init(base, 8192, &params(8192)) }.unwrap();
        region.set_peer(0, PeerState::Alive, 1, true);
        region.count_sent(0, 3);
        region.count_received(0, 2);
        assert_eq!(region.peer(0).unwrap().doorbells_sent, 3);
        assert_eq!(region.peer(0).unwrap().doorbells_received, 2);
        region.set_peer(0, PeerState::Alive, 2, true);
        assert_eq!(region.peer(0).unwrap().doorbells_sent, 0);
    }

    #[test]
    fn data_offset_rounds_to_pages() {
        assert_eq!(data_offset(1), 4096);
        assert_eq!(data_offset(124), 4096);
        assert_eq!(data_offset(125), 8192);
    }
}
