// SPDX-License-Identifier: Apache-2.0
//! The Shoal guest SDK: what programs inside the VMs of a shared-memory group
//! (and host processes joined to it) link to share data and synchronise.
//!
//! This crate owns:
//! - the SDK's part of the region ([`layout`]): versioned header, named
//!   objects, wait table, page descriptors, heap;
//! - [`ShmPtr`] offsets and checked access ([`Shoal::get`], [`Shoal::raw`]);
//! - the allocator ([`alloc`]): size classes, large blocks, named objects,
//!   crash recovery through an undo journal, heap checker;
//! - synchronisation ([`sync`]): futex-like wait/wake across peers, robust
//!   mutex, condvar, barrier, team;
//! - transports ([`transport`]): host peer (group server socket), Linux
//!   guest (ivshmem PCI device), in-process;
//! - the C ABI ([`ffi`], header `include/shoal.h`).
//!
//! It depends only on `shmem-group`'s region header/state table and host-peer
//! client; it must not depend on the VMM, devices or KVM.
//!
//! ```no_run
//! use shoal::Shoal;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! let shoal = Shoal::open_host("/run/shoal/g.sock".as_ref())?;
//! let (counter, _created) = shoal.find_or_create("counter", 8)?;
//! let counter = shoal.get(counter.cast::<AtomicU64>())?;
//! counter.fetch_add(1, Ordering::Relaxed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alloc;
pub mod ffi;
mod handle;
pub mod layout;
mod mem;
pub mod peer;
pub mod ptr;
pub mod sync;
pub mod transport;

pub use alloc::{AllocError, HeapReport};
pub use handle::{OpenError, Shoal, SOCKET_ENV};
pub use layout::LayoutError;
pub use mem::MemError;
pub use ptr::{AccessError, Shared, ShmPtr};
pub use sync::{Barrier, Condvar, Locked, Mutex, MutexGuard, SyncError, Team, WaitOutcome};
pub use transport::local::LocalRegion;
pub use transport::SleepKind;
