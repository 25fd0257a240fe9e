// SPDX-License-Identifier: Apache-2.0
//! A private region in this process, with a state table written by us.
//! Several handles may share one [`LocalRegion`] with different peer ids,
//! which is how the unit tests model several peers without a server.

use super::{SleepKind, Transport, TransportError};
use shmem_group::layout::{LayoutParams, PeerState, Region};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// A heap-allocated region with a group header and state table.
#[derive(Debug)]
pub struct LocalRegion {
    // Atomics: the region is written through shared references.
    buf: Box<[AtomicU64]>,
}

impl LocalRegion {
    /// Creates a zeroed region of `size` bytes with a `max_peers` table.
    pub fn new(size: u64, max_peers: u32) -> Result<Arc<Self>, TransportError> {
        if size % 4096 != 0 || !(8192..=(1 << 32)).contains(&size) {
            return Err(TransportError::Size(size));
        }
        let buf: Box<[AtomicU64]> = (0..size / 8).map(|_| AtomicU64::new(0)).collect();
        let params = LayoutParams {
            region_size: size,
            max_peers,
            vectors: 1,
            name: "local".into(),
        };
        // SAFETY: buf is size bytes, 8-aligned, and owned by the returned
        // value for as long as any view of it is used.
        unsafe { Region::init(buf.as_ptr() as *mut u8, size as usize, &params) }
            .map_err(|_| TransportError::Size(size))?;
        Ok(Arc::new(Self { buf }))
    }

    fn base(&self) -> *mut u8 {
        self.buf.as_ptr() as *mut u8
    }

    fn len(&self) -> usize {
        self.buf.len() * 8
    }

    fn region(&self) -> Option<Region<'_>> {
        // SAFETY: the buffer is len bytes, aligned, and borrowed for '_.
        unsafe { Region::open(self.base(), self.len()) }.ok()
    }

    /// Marks `id` alive with a new generation (as the server does on join).
    pub fn join(&self, id: u16) -> Option<u32> {
        self.region()?
            .set_peer(id, PeerState::Alive, std::process::id(), true)
    }

    /// Marks `id` dead (as the server does when a connection drops).
    pub fn kill(&self, id: u16) -> Option<u32> {
        self.region()?.set_peer(id, PeerState::Dead, 0, true)
    }
}

/// The transport over a [`LocalRegion`].
#[derive(Debug)]
pub struct Local {
    region: Arc<LocalRegion>,
    id: u16,
}

impl Local {
    /// A handle for peer `id` (call [`LocalRegion::join`] first).
    pub fn new(region: Arc<LocalRegion>, id: u16) -> Self {
        Self { region, id }
    }
}

// SAFETY: `base`/`len` are the LocalRegion's buffer: `len` bytes of atomics,
// 8-aligned, never moved or freed while the Arc held here lives.
unsafe impl Transport for Local {
    fn base(&self) -> *mut u8 {
        self.region.base()
    }

    fn len(&self) -> usize {
        self.region.len()
    }

    fn id(&self) -> u16 {
        self.id
    }

    fn sleep_kind(&self) -> SleepKind {
        SleepKind::Futex
    }

    fn ring(&self, _peer: u16) -> Result<(), TransportError> {
        Ok(())
    }

    fn sleep(&self, _token: u32, timeout: Option<Duration>) -> Result<(), TransportError> {
        std::thread::sleep(timeout.unwrap_or(Duration::from_millis(1)));
        Ok(())
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
