// SPDX-License-Identifier: Apache-2.0
//! The doorbell fast path: one KVM ioeventfd per (peer, vector) on the
//! device's Doorbell register, with datamatch `(peer << 16) | vector`, wired
//! to that peer's eventfd. A guest's doorbell write then signals the peer
//! inside the kernel; the VMM process does not wake.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use devices::ivshmem::{DoorbellSink, DOORBELL};
use devices::ratelimit::LogLimiter;
use hypervisor::{IoEventAddress, Vm};

/// Duplicates `fd` so that we can unregister its ioeventfd after the group
/// client closed its own copy.
fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd the caller holds open; the result is
    // a new fd owned by nobody else.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn datamatch(peer: u16, vector: u16) -> u64 {
    (u64::from(peer) << 16) | u64::from(vector)
}

/// Every peer eventfd the guest can ring, and where their ioeventfds are.
#[derive(Debug)]
pub struct Doorbells {
    vm: Arc<dyn Vm>,
    /// Guest address of BAR0, 0 while unmapped.
    bar0: u64,
    fds: BTreeMap<(u16, u16), OwnedFd>,
    /// Doorbell writes that reached the VMM instead of an ioeventfd.
    slow_rings: u64,
    log: LogLimiter,
}

impl Doorbells {
    /// No peers yet; BAR0 not placed.
    pub fn new(vm: Arc<dyn Vm>) -> Self {
        Doorbells {
            vm,
            bar0: 0,
            fds: BTreeMap::new(),
            slow_rings: 0,
            log: LogLimiter::new(),
        }
    }

    fn register(&self, peer: u16, vector: u16, fd: &OwnedFd) {
        if self.bar0 == 0 {
            return;
        }
        let addr = IoEventAddress::Mmio(self.bar0 + DOORBELL);
        if let Err(e) =
            self.vm
                .register_ioevent(fd.as_raw_fd(), addr, 4, Some(datamatch(peer, vector)))
        {
            if self.log.allow() {
                log::warn!(
                    "shmem: doorbell to peer {peer} vector {vector} stays on the slow path: {e}"
                );
            }
        }
    }

    fn unregister(&self, peer: u16, vector: u16, fd: &OwnedFd) {
        if self.bar0 == 0 {
            return;
        }
        let addr = IoEventAddress::Mmio(self.bar0 + DOORBELL);
        let _ = self
            .vm
            .unregister_ioevent(fd.as_raw_fd(), addr, 4, Some(datamatch(peer, vector)));
    }

    /// A peer's vectors became reachable (`fds[v]` is vector `v`).
    pub fn add_peer(&mut self, peer: u16, fds: &[RawFd]) -> std::io::Result<()> {
        self.remove_peer(peer);
        for (vector, &fd) in (0u16..).zip(fds) {
            let own = dup(fd)?;
            self.register(peer, vector, &own);
            self.fds.insert((peer, vector), own);
        }
        Ok(())
    }

    /// A peer left: its doorbells are dropped from now on.
    pub fn remove_peer(&mut self, peer: u16) {
        let keys: Vec<_> = self
            .fds
            .range((peer, 0)..=(peer, u16::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(fd) = self.fds.remove(&key) {
                self.unregister(key.0, key.1, &fd);
            }
        }
    }

    /// Peers with doorbells.
    pub fn peers(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.fds.keys().map(|k| k.0).collect();
        p.dedup();
        p
    }

    /// Doorbell writes the VMM handled itself (the kernel took all others):
    /// rings to peers it had not registered yet, or to absent peers.
    pub fn slow_rings(&self) -> u64 {
        self.slow_rings
    }

    /// BAR0 moved (or was placed): move every ioeventfd.
    pub fn move_bar0(&mut self, addr: u64) {
        for ((peer, vector), fd) in &self.fds {
            self.unregister(*peer, *vector, fd);
        }
        self.bar0 = addr;
        for ((peer, vector), fd) in &self.fds {
            self.register(*peer, *vector, fd);
        }
    }

    /// The slow path: a doorbell the kernel did not catch (an unknown peer
    /// or vector, or the ioeventfd could not be registered).
    pub fn ring(&mut self, peer: u16, vector: u16) {
        self.slow_rings += 1;
        match self.fds.get(&(peer, vector)) {
            Some(fd) => {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a valid buffer to an eventfd we own.
                let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
                if n != 8 && self.log.allow() {
                    log::warn!("shmem: doorbell to peer {peer} vector {vector} failed");
                }
            }
            None => {
                if self.log.allow() {
                    log::debug!("shmem: doorbell to absent peer {peer} vector {vector} dropped");
                }
            }
        }
    }
}

/// [`DoorbellSink`] over shared [`Doorbells`].
#[derive(Debug)]
pub struct DoorbellPath(pub Arc<std::sync::Mutex<Doorbells>>);

impl DoorbellSink for DoorbellPath {
    fn ring(&self, peer: u16, vector: u16) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ring(peer, vector);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datamatch_is_the_doorbell_register_value() {
        assert_eq!(datamatch(3, 1), 0x0003_0001);
        assert_eq!(datamatch(0xffff, 0xff), 0xffff_00ff);
    }
}
