// SPDX-License-Identifier: Apache-2.0
//! How a peer reaches the region and the doorbells.
//!
//! - [`host`]: a host process joined through the group server socket;
//!   sleeps on shared futexes (the memfd is shared memory on this host).
//! - [`local`]: a private in-process region (tests, single-process use).
//! - [`pci`]: inside a Linux guest, the ivshmem PCI device through sysfs.

pub mod host;
pub mod local;
pub mod pci;

use std::fmt;
use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;
use thiserror::Error;

/// Transport errors.
#[derive(Debug, Error)]
pub enum TransportError {
    /// Joining the group failed.
    #[error("Cannot join the group")]
    Join(#[source] shmem_group::client::ClientError),
    /// Ringing a doorbell failed.
    #[error("Cannot ring peer {0}")]
    Ring(u16, #[source] shmem_group::client::ClientError),
    /// A device or file operation failed.
    #[error("{0}")]
    Io(&'static str, #[source] io::Error),
    /// No ivshmem device was found.
    #[error("No Shoal/ivshmem device found")]
    NoDevice,
    /// The region size is unusable.
    #[error("Unusable region size {0}")]
    Size(u64),
}

/// How a peer's threads sleep in the slow path of a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SleepKind {
    /// Kernel futex on the shared word: woken by FUTEX_WAKE from any process
    /// on the same host.
    Futex = 1,
    /// Doorbell interrupt: woken by a ring.
    Doorbell = 2,
    /// No interrupts at all: sleeps in short, growing naps and re-checks.
    Poll = 3,
}

/// One way of reaching the region.
///
/// # Safety
/// [`crate::Shoal::open_transport`] reads and writes the region through
/// [`Transport::base`] and [`Transport::len`] for as long as the transport
/// lives: `base` must point to `len` bytes of readable and writable memory,
/// 8-byte aligned, that stay mapped (and are accessed by others, if at all,
/// only atomically or as plain shared data) until the transport is dropped,
/// and both must return the same values every time.
pub unsafe trait Transport: Send + Sync + fmt::Debug {
    /// Start of the mapped region (8-byte aligned, stays mapped while the
    /// transport lives).
    fn base(&self) -> *mut u8;
    /// Region length in bytes.
    fn len(&self) -> usize;
    /// Always false for a usable transport (regions are at least 8 KiB).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Our peer id.
    fn id(&self) -> u16;
    /// How this peer sleeps.
    fn sleep_kind(&self) -> SleepKind;
    /// Rings `peer`'s wake-up doorbell.
    fn ring(&self, peer: u16) -> Result<(), TransportError>;
    /// A token to take *before* re-checking the condition one is about to
    /// sleep on; [`Transport::sleep`] returns at once if a doorbell arrived
    /// since the token was taken, so no ring is lost in between.
    fn sleep_token(&self) -> u32 {
        0
    }
    /// Sleeps until our doorbell rings (after `token` was taken) or
    /// `timeout` passes (for [`SleepKind::Doorbell`]; others just nap).
    fn sleep(&self, token: u32, timeout: Option<Duration>) -> Result<(), TransportError>;
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Called around a futex sleep on `word` (host peers keep a list, to
    /// answer doorbells from guests with futex wakes).
    fn note_sleep(&self, _word: &AtomicU32, _sleeping: bool) {}
}
