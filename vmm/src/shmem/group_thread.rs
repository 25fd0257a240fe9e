// SPDX-License-Identifier: Apache-2.0
//! One thread per group membership: applies peer joins and departures to
//! the doorbell ioeventfds, delivers doorbells through INTx while the guest
//! has MSI-X off, and reconnects (keeping the peer id) when the server goes
//! away. It sleeps in `poll` otherwise; a doorbell in MSI-X mode never
//! wakes it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::ivshmem::Ivshmem;
use shmem_group::{Membership, Peer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::doorbells::Doorbells;

/// First wait before trying a gone server again; it doubles per failed
/// attempt up to [`RECONNECT_MAX`], so a restarted server sees its members
/// back within a few tens of milliseconds and a long outage costs one
/// attempt a second.
const RECONNECT_FIRST: Duration = Duration::from_millis(20);
/// Longest wait between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// How often a reconnect failure that keeps repeating is logged again.
const RECONNECT_LOG_EVERY: Duration = Duration::from_secs(30);

/// When to try the next reconnect, and when to log a failure.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next_attempt: Option<Instant>,
    last_logged: Option<(Instant, String)>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: RECONNECT_FIRST,
            next_attempt: None,
            last_logged: None,
        }
    }

    /// Whether an attempt is due at `now`.
    fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }

    /// How long to sleep from `now` until the next attempt.
    fn wait(&self, now: Instant) -> Duration {
        self.next_attempt
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Records a failed attempt at `now`; returns whether to log `error`
    /// (the first failure, a different error, or every
    /// [`RECONNECT_LOG_EVERY`]).
    fn failed(&mut self, now: Instant, error: &str) -> bool {
        self.next_attempt = Some(now + self.delay);
        self.delay = (self.delay * 2).min(RECONNECT_MAX);
        let log = match &self.last_logged {
            Some((at, last)) => last != error || now.duration_since(*at) >= RECONNECT_LOG_EVERY,
            None => true,
        };
        if log {
            self.last_logged = Some((now, error.to_string()));
        }
        log
    }

    /// Back to fast retries (after a success, for the next outage).
    fn reset(&mut self) {
        *self = Self::new();
    }
}

/// A running group thread.
#[derive(Debug)]
pub struct GroupThread {
    stop: Arc<EventFd>,
    handle: JoinHandle<()>,
}

/// What the thread shares with the device.
#[derive(Debug)]
pub struct Shared {
    pub dev: Arc<Mutex<Ivshmem>>,
    pub doorbells: Arc<Mutex<Doorbells>>,
    /// Signalled when the device's wiring or the flags below changed.
    pub changed: Arc<EventFd>,
    pub vectors: u16,
    /// Doorbell delivery is held (`Vectors::hold`): no INTx delivery either.
    pub held: Option<Arc<AtomicBool>>,
    /// The VM is being migrated away: the destination takes our connection
    /// over, and we must not take it back by reconnecting.
    pub migrating: Arc<AtomicBool>,
    /// A migration destination not running yet: the source may take the
    /// membership back (it resumed), and we must not reconnect either.
    pub standby: Arc<AtomicBool>,
    /// Whether the server connection is up; the thread keeps it current.
    pub connected: Arc<AtomicBool>,
}

impl GroupThread {
    /// Starts the thread; it owns the membership from now on.
    pub fn spawn(peer: Peer, shared: Shared) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let state = State {
            peer,
            dev: shared.dev,
            doorbells: shared.doorbells,
            changed: shared.changed,
            stop: stop.clone(),
            vectors: shared.vectors,
            backoff: Backoff::new(),
            held: shared.held,
            migrating: shared.migrating,
            standby: shared.standby,
            connected: shared.connected,
            announced: false,
        };
        let handle = std::thread::Builder::new()
            .name("shmem-group".into())
            .spawn(move || state.run())?;
        Ok(GroupThread { stop, handle })
    }

    /// Stops the thread and leaves the group.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

struct State {
    peer: Peer,
    dev: Arc<Mutex<Ivshmem>>,
    doorbells: Arc<Mutex<Doorbells>>,
    changed: Arc<EventFd>,
    stop: Arc<EventFd>,
    vectors: u16,
    backoff: Backoff,
    held: Option<Arc<AtomicBool>>,
    migrating: Arc<AtomicBool>,
    standby: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    announced: bool,
}

/// An error with its sources, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn readable(p: &libc::pollfd) -> bool {
    p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// Reads and clears an eventfd; the count, 0 if none.
fn drain(fd: RawFd) -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: reads 8 bytes into a valid buffer from an eventfd the caller holds.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
    if n == 8 {
        u64::from_ne_bytes(buf)
    } else {
        0
    }
}

impl State {
    fn doorbells(&self) -> std::sync::MutexGuard<'_, Doorbells> {
        self.doorbells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn peer_fds(&self, peer: u16) -> Vec<RawFd> {
        (0..u32::from(self.vectors))
            .filter_map(|v| self.peer.peer_vector_fd(peer, v))
            .collect()
    }

    fn add_peer(&self, id: u16) {
        let fds = self.peer_fds(id);
        if let Err(e) = self.doorbells().add_peer(id, &fds) {
            log::warn!("shmem: cannot add doorbells of peer {id}: {e}");
        }
    }

    /// Makes the doorbells match the client's view after a reconnect.
    fn resync(&self) {
        let now = self.peer.peers();
        let own = self.peer.id();
        let known = self.doorbells().peers();
        for gone in known.iter().filter(|p| **p != own && !now.contains(p)) {
            self.doorbells().remove_peer(*gone);
        }
        for new in now.iter().filter(|p| !known.contains(p)) {
            self.add_peer(*new);
        }
    }

    /// Publishes whether the server connection is up.
    fn note_connection(&self) {
        self.connected
            .store(self.peer.is_connected(), Ordering::Release);
    }

    fn membership(&mut self) {
        let events = self.peer.poll_events();
        // Before the log lines below: whoever reads them sees the flag.
        self.note_connection();
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                // A server that breaks the protocol would otherwise keep the
                // socket readable and this loop busy: drop the connection
                // and go through reconnecting (once a second).
                log::warn!("shmem: group server stream: {e}; reconnecting");
                self.peer.disconnect();
                return;
            }
        };
        for event in events {
            match event {
                Membership::Joined(id) => {
                    log::info!("shmem: peer {id} joined");
                    self.add_peer(id);
                }
                Membership::Left(id) => {
                    log::info!("shmem: peer {id} left");
                    self.doorbells().remove_peer(id);
                }
                Membership::ServerGone if self.standby.load(Ordering::Acquire) => {
                    log::warn!(
                        "shmem: the group server closed the membership of this VM, which has not run yet (the migration source took it back?); not reconnecting unless the VM is resumed"
                    );
                }
                Membership::ServerGone => {
                    log::warn!(
                        "shmem: group server gone; the region and doorbells keep working, reconnecting"
                    );
                }
                Membership::Event(_) => {}
            }
        }
    }

    fn try_reconnect(&mut self) {
        let now = Instant::now();
        if !self.backoff.due(now) {
            return;
        }
        match self.peer.reconnect() {
            Ok(()) => {
                log::info!(
                    "shmem: reconnected to the group server as peer {}",
                    self.peer.id()
                );
                self.backoff.reset();
                self.resync();
            }
            Err(e) => {
                let text = error_chain(&e);
                if self.backoff.failed(Instant::now(), &text) {
                    log::warn!(
                        "shmem: cannot reconnect to the group server as peer {} (retrying): {text}",
                        self.peer.id()
                    );
                }
            }
        }
    }

    /// Own eventfds to watch: only while the guest has MSI-X off (INTx), so
    /// that MSI-X doorbells never wake this thread.
    fn intx_fds(&self) -> Vec<(u16, RawFd)> {
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.load(Ordering::Acquire))
        {
            // Doorbells wait in the eventfds for whichever VM runs next.
            return Vec::new();
        }
        let msix = self
            .dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .msix_enabled();
        if msix {
            return Vec::new();
        }
        (0..self.vectors)
            .filter_map(|v| self.peer.vector_fd(u32::from(v)).map(|fd| (v, fd)))
            .collect()
    }

    /// Whether another VMM may hold our membership now (do not reconnect).
    fn stay_away(&self) -> bool {
        self.migrating.load(Ordering::Acquire) || self.standby.load(Ordering::Acquire)
    }

    fn run(mut self) {
        loop {
            let intx = self.intx_fds();
            let mut fds = vec![
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.changed.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let socket = self.peer.socket_fd();
            if let Some(fd) = socket {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let first_intx = fds.len();
            fds.extend(intx.iter().map(|&(_, fd)| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }));
            let timeout = if socket.is_some() || self.stay_away() {
                -1
            } else {
                // Rounded up: waking early would skip the attempt.
                let wait = self.backoff.wait(Instant::now());
                wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            };
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("shmem: group thread poll failed; doorbell membership is frozen");
                return;
            }
            if readable(&fds[0]) {
                return;
            }
            if readable(&fds[1]) {
                drain(self.changed.as_raw_fd());
            }
            if socket.is_some() && readable(&fds[2]) {
                self.membership();
            }
            for (i, &(vector, fd)) in intx.iter().enumerate() {
                if readable(&fds[first_intx + i]) && drain(fd) > 0 {
                    let mut dev = self.dev.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = dev.interrupt(vector) {
                        log::warn!("shmem: INTx delivery failed: {e}");
                    }
                }
            }
            let migrating = self.migrating.load(Ordering::Acquire);
            if migrating && !self.announced && self.peer.socket_fd().is_some() {
                // The state table shows `migrating` while we move.
                if let Err(e) = self.peer.announce_migration() {
                    log::warn!("shmem: cannot announce the migration: {e}");
                }
                self.announced = true;
            }
            if !migrating {
                self.announced = false;
            }
            if self.peer.socket_fd().is_none() && !self.stay_away() {
                self.try_reconnect();
            }
            self.note_connection();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        assert!(b.due(t0));
        b.failed(t0, "refused");
        assert!(!b.due(t0));
        assert_eq!(b.wait(t0), RECONNECT_FIRST);
        assert!(b.due(t0 + RECONNECT_FIRST));
        let mut now = t0;
        for _ in 0..20 {
            b.failed(now, "refused");
            now += b.wait(now);
        }
        b.failed(now, "refused");
        assert_eq!(b.wait(now), RECONNECT_MAX);
        b.reset();
        assert!(b.due(now));
        b.failed(now, "refused");
        assert_eq!(b.wait(now), RECONNECT_FIRST);
    }

    #[test]
    fn a_repeating_failure_is_logged_once_then_every_period() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        assert!(b.failed(t0, "refused"));
        assert!(!b.failed(t0 + Duration::from_secs(1), "refused"));
        assert!(b.failed(t0 + Duration::from_secs(2), "timed out"));
        assert!(!b.failed(t0 + Duration::from_secs(3), "timed out"));
        assert!(b.failed(
            t0 + Duration::from_secs(2) + RECONNECT_LOG_EVERY,
            "timed out"
        ));
    }
}
