// SPDX-License-Identifier: Apache-2.0
//! [`Shoal`]: one peer's handle on the group region.

use crate::layout::{self, Geometry, LayoutError};
use crate::mem::Mem;
use crate::peer::Peers;
use crate::ptr::{AccessError, Shared, ShmPtr};
use crate::transport::host::Host;
use crate::transport::local::{Local, LocalRegion};
use crate::transport::{SleepKind, Transport, TransportError};
use shmem_group::layout::Region;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long an opener waits for another peer that is initialising the region.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variable naming a group socket for [`Shoal::open_default`].
pub const SOCKET_ENV: &str = "SHOAL_SOCKET";

/// Errors from opening the region.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The transport failed.
    #[error("Cannot reach the group")]
    Transport(#[source] TransportError),
    /// The region or SDK header is unusable.
    #[error("Unusable region")]
    Layout(#[source] LayoutError),
    /// Our peer id has no entry in the state table.
    #[error("Peer id {0} is outside the state table")]
    NotMember(u16),
}

pub(crate) struct Inner {
    pub(crate) mem: Mem,
    pub(crate) peers: Peers,
    pub(crate) geo: Geometry,
    pub(crate) id: u16,
    pub(crate) tag: u32,
    pub(crate) kind: SleepKind,
    /// Unique among the handles of this process (keys thread caches).
    pub(crate) uid: u64,
    /// Thread-cache pages made by threads of this handle.
    pub(crate) caches: std::sync::Mutex<Vec<u64>>,
    // Declared last: dropped after the views above (which borrow it).
    pub(crate) transport: Box<dyn Transport>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shoal")
            .field("transport", &self.transport.name())
            .field("id", &self.id)
            .field("tag", &format_args!("{:#x}", self.tag))
            .field("geometry", &self.geo)
            .finish()
    }
}

/// One peer's handle on the group region: allocator, named objects,
/// synchronisation. Cheap to clone; share it between threads.
#[derive(Clone, Debug)]
pub struct Shoal {
    pub(crate) inner: Arc<Inner>,
}

impl Shoal {
    /// Joins as a host peer through the group server's socket.
    pub fn open_host(socket: &Path) -> Result<Self, OpenError> {
        let host = Host::connect(socket).map_err(OpenError::Transport)?;
        Self::open_transport(Box::new(host))
    }

    /// Opens peer `id` of an in-process region (tests, single process).
    pub fn open_local(region: Arc<LocalRegion>, id: u16) -> Result<Self, OpenError> {
        Self::open_transport(Box::new(Local::new(region, id)))
    }

    /// Opens the group this program was started in: the socket named by
    /// `SHOAL_SOCKET` (host peer) if set, else the first ivshmem PCI device.
    pub fn open_default() -> Result<Self, OpenError> {
        match std::env::var_os(SOCKET_ENV) {
            Some(path) => Self::open_host(Path::new(&path)),
            None => {
                let pci = crate::transport::pci::Pci::open_first().map_err(OpenError::Transport)?;
                Self::open_transport(Box::new(pci))
            }
        }
    }

    /// Opens the SDK area over any transport, initialising it if this is the
    /// first peer, and checking magic, version and geometry otherwise.
    pub fn open_transport(transport: Box<dyn Transport>) -> Result<Self, OpenError> {
        let base = transport.base();
        let len = transport.len();
        // SAFETY: the transport keeps `len` bytes at `base` mapped for its
        // lifetime, and it is stored in Inner after every view built here, so
        // it is dropped last.
        let region = unsafe { Region::<'static>::open(base, len) }
            .map_err(|e| OpenError::Layout(LayoutError::Group(e)))?;
        // SAFETY: as above.
        let mem = unsafe { Mem::new(base, len) };
        // SAFETY: as above.
        let peers = unsafe { Peers::new(region) };
        let id = transport.id();
        let tag = peers.tag_of(id).ok_or(OpenError::NotMember(id))?;
        let geo = Geometry::compute(len as u64, region.data_offset(), region.max_peers())
            .map_err(OpenError::Layout)?;
        layout::open_or_init(&mem, &geo, &peers, tag, INIT_TIMEOUT).map_err(OpenError::Layout)?;
        let kind = transport.sleep_kind();
        crate::sync::wait::register_kind(&mem, &geo, id, kind);
        log::debug!("shoal: peer {id} opened over {}", transport.name());
        let shoal = Self {
            inner: Arc::new(Inner {
                mem,
                peers,
                geo,
                id,
                tag,
                kind,
                uid: crate::alloc::thread::new_uid(),
                caches: std::sync::Mutex::new(Vec::new()),
                transport,
            }),
        };
        // A peer that comes (back) is a good moment to give the caches of
        // dead peers back to the heap; a heap lock held elsewhere for long
        // only delays that until memory runs out.
        if let Err(e) = shoal.inner.reclaim_dead_caches(Some(INIT_TIMEOUT / 10)) {
            log::debug!("shoal: dead peers' caches not reclaimed at open: {e}");
        }
        Ok(shoal)
    }

    /// Our peer id.
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// Our owner tag (peer id and generation, as stored in lock words).
    pub fn tag(&self) -> u32 {
        self.inner.tag
    }

    /// Region size in bytes.
    pub fn region_size(&self) -> u64 {
        self.inner.mem.len()
    }

    /// The SDK layout of this region.
    pub fn geometry(&self) -> Geometry {
        self.inner.geo
    }

    /// Which transport this handle uses (`host`, `local`, `pci`).
    pub fn transport_name(&self) -> &'static str {
        self.inner.transport.name()
    }

    /// How this peer's threads sleep when they wait (futex, doorbell
    /// interrupt, or polling with backoff when a guest has no driver).
    pub fn sleep_kind(&self) -> SleepKind {
        self.inner.kind
    }

    /// Whether peer `id` is alive (or migrating) per the state table.
    pub fn peer_alive(&self, id: u16) -> bool {
        self.inner
            .peers
            .tag_of(id)
            .is_some_and(|t| self.inner.peers.alive(t))
    }

    /// A shared reference to the `T` at `ptr` (bounds and alignment checked).
    pub fn get<T: Shared>(&self, ptr: ShmPtr<T>) -> Result<&T, AccessError> {
        let size = std::mem::size_of::<T>() as u64;
        let align = std::mem::align_of::<T>() as u64;
        let raw = self
            .inner
            .mem
            .ptr(ptr.offset(), size, align)
            .map_err(AccessError::Mem)?;
        // SAFETY: in bounds and aligned (checked); T: Shared accepts any bit
        // pattern and only mutates atomically; the mapping lives as long as
        // self.
        Ok(unsafe { &*(raw as *const T) })
    }

    /// A shared slice of `n` `T`s starting at `ptr`.
    pub fn slice<T: Shared>(&self, ptr: ShmPtr<T>, n: usize) -> Result<&[T], AccessError> {
        let size = (std::mem::size_of::<T>() as u64)
            .checked_mul(n as u64)
            .ok_or(AccessError::Overflow)?;
        let align = std::mem::align_of::<T>() as u64;
        let raw = self
            .inner
            .mem
            .ptr(ptr.offset(), size, align)
            .map_err(AccessError::Mem)?;
        // SAFETY: as in get, for n elements.
        Ok(unsafe { std::slice::from_raw_parts(raw as *const T, n) })
    }

    /// A raw pointer to `n` `T`s at `ptr` (bounds and alignment checked).
    /// Dereferencing it is up to the caller.
    pub fn raw<T>(&self, ptr: ShmPtr<T>, n: usize) -> Result<*mut T, AccessError> {
        let size = (std::mem::size_of::<T>() as u64)
            .checked_mul(n as u64)
            .ok_or(AccessError::Overflow)?;
        let align = std::mem::align_of::<T>() as u64;
        self.inner
            .mem
            .ptr(ptr.offset(), size, align)
            .map(|p| p as *mut T)
            .map_err(AccessError::Mem)
    }

    /// The offset of a pointer into the region (None if it points elsewhere).
    pub fn offset_of<T>(&self, ptr: *const T) -> Option<ShmPtr<T>> {
        self.inner
            .mem
            .offset_of(ptr as *const u8)
            .map(ShmPtr::from_offset)
    }

    /// Counts of heap-lock recoveries (dead holders whose work was undone).
    pub fn recoveries(&self) -> u32 {
        self.inner
            .mem
            .u32(self.inner.geo.field(layout::H_RECOVERIES))
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::local::Local;
    use std::sync::atomic::AtomicU64;

    /// A region of bare memory, with no group server's header in it.
    #[derive(Debug)]
    struct Bare(Box<[AtomicU64]>);

    // SAFETY: the buffer is `len` bytes of atomics, 8-aligned, owned by the
    // transport and never moved.
    unsafe impl Transport for Bare {
        fn base(&self) -> *mut u8 {
            self.0.as_ptr() as *mut u8
        }
        fn len(&self) -> usize {
            self.0.len() * 8
        }
        fn id(&self) -> u16 {
            0
        }
        fn sleep_kind(&self) -> SleepKind {
            SleepKind::Poll
        }
        fn ring(&self, _peer: u16) -> Result<(), TransportError> {
            Ok(())
        }
        fn sleep(&self, _token: u32, _timeout: Option<Duration>) -> Result<(), TransportError> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "bare"
        }
    }

    #[test]
    fn a_region_without_the_group_header_is_refused() {
        let bare = Bare((0..(1 << 17)).map(|_| AtomicU64::new(0)).collect());
        let err = Shoal::open_transport(Box::new(bare)).unwrap_err();
        assert!(
            matches!(err, OpenError::Layout(LayoutError::Group(_))),
            "{err:?}"
        );
    }

    #[test]
    fn a_peer_id_outside_the_state_table_is_refused() {
        let region = LocalRegion::new(1 << 20, 4).unwrap();
        let err = Shoal::open_transport(Box::new(Local::new(region, 9))).unwrap_err();
        assert!(matches!(err, OpenError::NotMember(9)), "{err:?}");
    }
}
