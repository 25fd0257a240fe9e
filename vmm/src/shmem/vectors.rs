// SPDX-License-Identifier: Apache-2.0
//! Incoming doorbells: each of our own eventfds is a KVM irqfd on a GSI that
//! routes to the MSI-X message the guest programmed, so a peer's doorbell
//! reaches the guest kernel to kernel. A masked vector (or MSI-X disabled)
//! has its irqfd removed; doorbells then wait in the eventfd and are
//! delivered when the vector is unmasked, or through INTx by the group
//! thread while MSI-X is off.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};

use devices::pci::MsixNotifier;
use devices::ratelimit::LogLimiter;
use devices::MsiMessage;
use hypervisor::Vm;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupts::{IrqRouting, RoutingError};

#[derive(Debug)]
struct Vector {
    gsi: u32,
    fd: RawFd,
    /// The guest wants this vector delivered (unmasked, MSI-X on).
    wanted: bool,
    /// Its irqfd is registered.
    wired: bool,
}

/// The MSI-X side of a group device.
#[derive(Debug)]
pub struct Vectors {
    vm: Arc<dyn Vm>,
    routing: Arc<IrqRouting>,
    vectors: Mutex<Vec<Vector>>,
    /// Delivery is held back (the VM is being migrated away, or is a
    /// migration destination waiting for `go`): doorbells stay in the
    /// eventfds, for whichever VM wires them next. The group thread reads
    /// it too (no INTx delivery while held).
    held: Arc<std::sync::atomic::AtomicBool>,
    /// Signalled when a vector's wiring changed (the group thread then
    /// re-checks whether it must deliver through INTx).
    changed: Arc<EventFd>,
    log: LogLimiter,
}

impl Vectors {
    /// One GSI per own eventfd (`fds[v]` is vector `v`; the group client
    /// keeps them open for the life of the membership).
    pub fn new(
        vm: Arc<dyn Vm>,
        routing: Arc<IrqRouting>,
        fds: &[RawFd],
        changed: Arc<EventFd>,
    ) -> Result<Self, RoutingError> {
        let mut vectors = Vec::with_capacity(fds.len());
        for &fd in fds {
            vectors.push(Vector {
                gsi: routing.allocate_gsi()?,
                fd,
                wanted: false,
                wired: false,
            });
        }
        Ok(Vectors {
            vm,
            routing,
            vectors: Mutex::new(vectors),
            held: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            changed,
            log: LogLimiter::new(),
        })
    }

    fn warn(&self, what: &str, e: &dyn std::error::Error) {
        if self.log.allow() {
            log::warn!("shmem: {what}: {e}");
        }
    }

    fn wire(&self, v: &mut Vector) {
        match self.vm.register_irqfd(v.fd, v.gsi, None) {
            Ok(()) => v.wired = true,
            Err(e) => self.warn("cannot wire an MSI-X vector", &e),
        }
    }

    fn unwire(&self, v: &mut Vector) {
        if let Err(e) = self.vm.unregister_irqfd(v.fd, v.gsi) {
            self.warn("cannot unwire an MSI-X vector", &e);
        }
        v.wired = false;
    }

    /// Whether delivery is held (see [`Vectors::hold`]), for the group thread.
    pub fn held_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.held.clone()
    }

    /// Stops delivering doorbells to this VM (before its state is saved for
    /// a migration): they wait in the eventfds instead of being consumed.
    pub fn hold(&self) {
        let mut vectors = self.vectors.lock().unwrap_or_else(PoisonError::into_inner);
        self.held.store(true, std::sync::atomic::Ordering::Release);
        for v in vectors.iter_mut().filter(|v| v.wired) {
            self.unwire(v);
        }
        // The group thread stops watching for INTx.
        let _ = self.changed.write(1);
    }

    /// Delivers again after [`Vectors::hold`] (the migration failed, or
    /// the migrated VM runs).
    pub fn release(&self) {
        let mut vectors = self.vectors.lock().unwrap_or_else(PoisonError::into_inner);
        self.held.store(false, std::sync::atomic::Ordering::Release);
        for v in vectors.iter_mut().filter(|v| v.wanted && !v.wired) {
            self.wire(v);
        }
        let _ = self.changed.write(1);
    }

    /// Unwires every vector (the device goes away or the VM stops).
    pub fn unwire_all(&self) {
        let mut vectors = self.vectors.lock().unwrap_or_else(PoisonError::into_inner);
        for v in vectors.iter_mut() {
            if v.wired {
                let _ = self.vm.unregister_irqfd(v.fd, v.gsi);
                v.wired = false;
            }
            let _ = self.routing.free_gsi(v.gsi);
        }
    }
}

impl MsixNotifier for Vectors {
    fn vector_changed(&self, vector: u16, msg: MsiMessage, masked: bool) {
        let mut vectors = self.vectors.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(v) = vectors.get_mut(usize::from(vector)) else {
            return;
        };
        if !masked {
            if let Err(e) = self.routing.set_msi(v.gsi, msg) {
                self.warn("cannot route an MSI-X vector", &e);
                return;
            }
        }
        v.wanted = !masked;
        let held = self.held.load(std::sync::atomic::Ordering::Acquire);
        match (v.wanted && !held, v.wired) {
            (true, false) => self.wire(v),
            (false, true) => self.unwire(v),
            _ => {}
        }
        let _ = self.changed.write(1);
    }

    fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
        self.vm
            .signal_msi(msg.addr, msg.data)
            .map_err(std::io::Error::other)
    }
}

/// The INTx line of a device: an IOAPIC pin driven with `KVM_IRQ_LINE`.
#[derive(Debug)]
pub struct IrqLine {
    pub vm: Arc<dyn Vm>,
    pub gsi: std::sync::atomic::AtomicU32,
}

impl devices::LevelInterruptLine for IrqLine {
    fn set_level(&self, asserted: bool) -> std::io::Result<()> {
        let gsi = self.gsi.load(std::sync::atomic::Ordering::Acquire);
        self.vm
            .set_irq_line(gsi, asserted)
            .map_err(std::io::Error::other)
    }
}
