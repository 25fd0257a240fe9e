// SPDX-License-Identifier: Apache-2.0
//! Sans-IO device models for Shoal guests.
//!
//! This crate owns the models of the devices a guest can touch: the port/MMIO
//! [`bus`], the COM1 [`serial`] port, the [`i8042`] keyboard controller (used
//! only for reset), the hardware-reduced [`acpi`] power registers, and the
//! [`pci`] root complex (config space, configuration mechanism #1 and ECAM,
//! BAR allocation, INTx routing and the reusable MSI-X model).
//!
//! Device models never call KVM and never own file descriptors for guest
//! events: interrupts leave through the small traits in [`interrupt`], and
//! machine-level requests (power off, reset) through [`vm_control`]. The `vmm`
//! crate implements those traits. This crate must not depend on `hypervisor`,
//! `vmm` or `shmem-group`.
//!
//! Every entry point a guest can reach is safe on any input: odd access sizes,
//! unaligned offsets and out-of-range registers read as all-ones (or a defined
//! value) and writes are ignored. [`fuzzing`] exposes one function per device
//! that a fuzz target (or a test) can drive with arbitrary bytes.

pub mod acpi;
pub mod bus;
pub mod fuzzing;
pub mod i8042;
pub mod interrupt;
pub mod ivshmem;
pub mod pci;
pub mod ratelimit;
pub mod serial;
pub mod vm_control;

pub use bus::{Bus, BusDevice, BusError};
pub use interrupt::{InterruptLine, LevelInterruptLine, MsiMessage};
pub use vm_control::{VmControl, VmEvent};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the data if a previous holder panicked.
///
/// A poisoned device lock must not turn one bug into a VMM-wide panic; the
/// device state is still structurally valid, so we keep going with it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
