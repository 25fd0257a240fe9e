// SPDX-License-Identifier: Apache-2.0
//! A shareable table of the eventfds that ring each peer of one group.
//!
//! [`crate::Peer`] keeps it current as peers join and leave; a VMM hands a
//! clone to its ivshmem device model as the [`DoorbellSink`] (the slow path
//! for Doorbell writes the kernel did not catch with an ioeventfd). Only the
//! peers of this one group can be rung, and a doorbell to an absent peer or
//! vector is dropped.

use devices::ivshmem::DoorbellSink;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, PoisonError, RwLock};

type Table = BTreeMap<u16, Vec<Arc<OwnedFd>>>;

/// Eventfds by peer id, one per vector (shared, cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Doorbells {
    inner: Arc<RwLock<Table>>,
}

/// Creates one non-blocking close-on-exec eventfd.
pub fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2) call; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: eventfd returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Writes 1 to an eventfd.
pub fn signal(fd: &impl AsRawFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a valid buffer to a descriptor the caller
    // keeps open for the duration of the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Doorbells {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rings `peer` on `vector`. `Ok(false)`: no such peer or vector.
    pub fn ring(&self, peer: u16, vector: u32) -> io::Result<bool> {
        let table = self.read();
        let Some(fd) = table.get(&peer).and_then(|fds| fds.get(vector as usize)) else {
            return Ok(false);
        };
        signal(fd)?;
        Ok(true)
    }

    /// The eventfds of `peer` (e.g. to register KVM ioeventfds for them).
    pub fn fds(&self, peer: u16) -> Option<Vec<Arc<OwnedFd>>> {
        self.read().get(&peer).cloned()
    }

    /// Ids in the table, in order.
    pub fn ids(&self) -> Vec<u16> {
        self.read().keys().copied().collect()
    }

    /// Appends the next vector's eventfd of `peer`; returns its vector count.
    pub(crate) fn push(&self, peer: u16, fd: Arc<OwnedFd>) -> usize {
        let mut table = self.write();
        let fds = table.entry(peer).or_default();
        fds.push(fd);
        fds.len()
    }

    /// Removes `peer`, returning its eventfds.
    pub(crate) fn remove(&self, peer: u16) -> Option<Vec<Arc<OwnedFd>>> {
        self.write().remove(&peer)
    }
}

impl DoorbellSink for Doorbells {
    fn ring(&self, peer: u16, vector: u16) {
        // Dropped silently when absent: guests may ring anything.
        if let Err(e) = Doorbells::ring(self, peer, u32::from(vector)) {
            log::debug!("doorbell to peer {peer} vector {vector} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_counter(fd: &OwnedFd) -> u64 {
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
        if n == 8 {
            u64::from_ne_bytes(buf)
        } else {
            0
        }
    }

    #[test]
    fn ring_reaches_only_the_addressed_vector() {
        let table = Doorbells::new();
        let v0 = Arc::new(new_eventfd().unwrap());
        let v1 = Arc::new(new_eventfd().unwrap());
        assert_eq!(table.push(3, v0.clone()), 1);
        assert_eq!(table.push(3, v1.clone()), 2);
        assert!(table.ring(3, 1).unwrap());
        assert_eq!(read_counter(&v0), 0);
        assert_eq!(read_counter(&v1), 1);
    }

    #[test]
    fn absent_peer_or_vector_is_dropped() {
        let table = Doorbells::new();
        table.push(1, Arc::new(new_eventfd().unwrap()));
        assert!(!table.ring(2, 0).unwrap());
        assert!(!table.ring(1, 1).unwrap());
        DoorbellSink::ring(&table, 9, 9);
    }

    #[test]
    fn removed_peer_returns_its_fds() {
        let table = Doorbells::new();
        table.push(1, Arc::new(new_eventfd().unwrap()));
        assert_eq!(table.remove(1).map(|f| f.len()), Some(1));
        assert!(table.ids().is_empty());
    }
}
