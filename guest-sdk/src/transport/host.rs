// SPDX-License-Identifier: Apache-2.0
//! Host peers: join through the group server socket (shmem-group's client).
//!
//! The region is a memfd mapped `MAP_SHARED`, so threads sleep on shared
//! futexes and any host process of the group wakes them directly; doorbells
//! are only rung for peers that sleep on them (guests).
//!
//! Guests cannot reach host futexes, so they ring host peers that have
//! sleepers instead. A listener thread per host peer waits on its own
//! doorbell and answers each ring with `FUTEX_WAKE` on every word this
//! process is currently waiting on (spurious wake-ups are allowed; waiters
//! re-check their condition).

use super::{SleepKind, Transport, TransportError};
use crate::sync::futex;
use shmem_group::client::ClientError;
use shmem_group::{Peer, PeerOptions};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Words this process sleeps on (address → sleepers).
#[derive(Debug, Default)]
struct Sleepers(Mutex<HashMap<usize, usize>>);

impl Sleepers {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<usize, usize>) -> T) -> T {
        let mut guard = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

fn eventfd() -> Result<OwnedFd, TransportError> {
    // SAFETY: plain syscall; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(TransportError::Io(
            "cannot create eventfd",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn dup(fd: RawFd) -> Result<OwnedFd, TransportError> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd; the result is checked.
    let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if raw < 0 {
        return Err(TransportError::Io(
            "cannot dup the doorbell",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads 8 bytes into a valid buffer; the fd is non-blocking or
    // known readable.
    unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
}

/// Turns rings on our doorbell into futex wakes until `stop` fires.
fn listen(bell: OwnedFd, stop: OwnedFd, sleepers: Arc<Sleepers>) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: bell.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            drain(bell.as_raw_fd());
            sleepers.with(|map| {
                for &addr in map.keys() {
                    // SAFETY: addr is the address of an AtomicU32 in the
                    // region that a thread of this process is sleeping on
                    // right now (it deregisters before it stops borrowing
                    // the region); FUTEX_WAKE only uses it as a key.
                    futex::wake(unsafe { &*(addr as *const AtomicU32) }, u32::MAX);
                }
            });
        } else if fds[0].revents != 0 {
            return;
        }
    }
}

/// A host peer joined to a group server.
#[derive(Debug)]
pub struct Host {
    base: *mut u8,
    len: usize,
    id: u16,
    peer: Mutex<Peer>,
    sleepers: Arc<Sleepers>,
    stop: Option<OwnedFd>,
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
        let sleepers = Arc::new(Sleepers::default());
        let stop = match peer.vector_fd(0) {
            Some(fd) => {
                let bell = dup(fd)?;
                let stop = eventfd()?;
                let stop_rx = dup(stop.as_raw_fd())?;
                let map = Arc::clone(&sleepers);
                std::thread::Builder::new()
                    .name("shoal-bell".into())
                    .spawn(move || listen(bell, stop_rx, map))
                    .map_err(|e| TransportError::Io("cannot start the doorbell thread", e))?;
                Some(stop)
            }
            None => None,
        };
        Ok(Self {
            base: peer.mapping().as_ptr(),
            len: peer.mapping().len(),
            id: peer.id(),
            peer: Mutex::new(peer),
            sleepers,
            stop,
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

// SAFETY: `base`/`len` are the Peer's shared mapping of the group memfd
// (page aligned), owned by `peer` and unmapped only when this transport drops.
unsafe impl Transport for Host {
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
        // Host peers sleep in futexes; the doorbell belongs to the listener.
        let nap = Duration::from_millis(1);
        std::thread::sleep(timeout.map_or(nap, |t| t.min(nap)));
        Ok(())
    }

    fn name(&self) -> &'static str {
        "host"
    }

    fn note_sleep(&self, word: &AtomicU32, sleeping: bool) {
        let addr = word.as_ptr() as usize;
        self.sleepers.with(|map| {
            if sleeping {
                *map.entry(addr).or_insert(0) += 1;
            } else if let Some(n) = map.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&addr);
                }
            }
        });
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
            unsafe { libc::write(stop.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::handle::Shoal;
    use crate::sync::WaitOutcome;
    use shmem_group::{Server, ServerConfig};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn a_ring_wakes_a_host_peer_sleeping_in_a_futex() {
        let path = std::env::temp_dir().join(format!("shoal-sdk-host-{}.sock", std::process::id()));
        let mut server = Server::new(ServerConfig::new("host", path.clone(), 1 << 20)).unwrap();
        let stopper = server.stopper().unwrap();
        let thread = std::thread::spawn(move || server.run());
        let a = Shoal::open_host(&path).unwrap();
        let b = Shoal::open_host(&path).unwrap();
        let w = a.alloc_array::<AtomicU32>(1).unwrap();
        let a2 = a.clone();
        let sleeper = std::thread::spawn(move || {
            let start = Instant::now();
            let word = a2.get(w).unwrap();
            let got = a2
                .futex_wait(word, 0, Some(Duration::from_secs(10)))
                .unwrap();
            (got, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        // Behave like a guest: change the word and ring, no futex wake.
        b.get(w).unwrap().store(1, Ordering::SeqCst);
        b.inner.transport.ring(a.id()).unwrap();
        let (got, took) = sleeper.join().unwrap();
        assert_eq!(got, WaitOutcome::Woken);
        assert!(
            took < Duration::from_secs(5),
            "woken by the timeout, not the ring"
        );
        drop((a, b));
        stopper.stop();
        let _ = thread.join();
    }
}
