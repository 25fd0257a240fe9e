// SPDX-License-Identifier: Apache-2.0
//! Host peers: join through the group server socket (shmem-group's client).
//!
//! The region is a memfd mapped `MAP_SHARED`, so threads sleep on shared
//! futexes and any host process of the group wakes them directly; doorbells
//! are only rung for peers that sleep on them (guests).

use super::{SleepKind, Transport, TransportError};
use shmem_group::client::ClientError;
use shmem_group::{Peer, PeerOptions};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// A host peer joined to a group server.
#[derive(Debug)]
pub struct Host {
    base: *mut u8,
    len: usize,
    id: u16,
    peer: Mutex<Peer>,
}

// SAFETY: `base` points into the Peer's mapping, which is Send + Sync and is
// only accessed through atomics or raw copies; the Peer itself is behind a
// Mutex.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

impl Host {
    /// Joins the group whose v0 socket is `socket` (the extension socket
    /// `<socket>.ext` is used).
    pub fn connect(socket: &Path) -> Result<Self, TransportError> {
        Self::connect_with(socket, PeerOptions::default())
    }

    /// Joins with explicit client options.
    pub fn connect_with(socket: &Path, options: PeerOptions) -> Result<Self, TransportError> {
        let peer = Peer::connect_with(socket, options).map_err(TransportError::Join)?;
        Ok(Self {
            base: peer.mapping().as_ptr(),
            len: peer.mapping().len(),
            id: peer.id(),
            peer: Mutex::new(peer),
        })
    }

    fn with_peer<T>(&self, f: impl FnOnce(&mut Peer) -> T) -> T {
        let mut guard = match self.peer.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl Transport for Host {
    fn base(&self) -> *mut u8 {
        self.base
    }

    fn len(&self) -> usize {
        self.len
    }

    fn id(&self) -> u16 {
        self.id
    }

    fn sleep_kind(&self) -> SleepKind {
        SleepKind::Futex
    }

    fn ring(&self, target: u16) -> Result<(), TransportError> {
        self.with_peer(|peer| match peer.ring(target, 0) {
            Err(ClientError::NoSuchVector { .. }) => {
                // A peer that joined after us: pick up its eventfds.
                let _ = peer.poll_events();
                peer.ring(target, 0)
            }
            other => other,
        })
        .map_err(|e| TransportError::Ring(target, e))
    }

    fn sleep(&self, _token: u32, timeout: Option<Duration>) -> Result<(), TransportError> {
        // Only used by callers that insist on doorbells; host waiters use
        // futexes. Waiting does not need the lock for long: take the fd out.
        let fd = self.with_peer(|peer| peer.vector_fd(0));
        let Some(fd) = fd else {
            std::thread::sleep(timeout.unwrap_or(Duration::from_millis(1)));
            return Ok(());
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; fd stays open while self lives.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a valid buffer; the eventfd is ours
            // and non-blocking reads of it are harmless.
            unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "host"
    }
}
