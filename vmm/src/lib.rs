// SPDX-License-Identifier: Apache-2.0
//! One VM's lifecycle.
//!
//! `vmm` wires the other crates together: it creates the KVM VM through
//! `hypervisor`, lays out and loads the guest with `arch`, builds the device
//! models of `devices` (and later `shmem-group`) and connects them to KVM,
//! runs one thread per vCPU, and drives everything from one control loop.
//! Nothing below it depends on it.

pub mod api;
mod boot;
pub mod config;
mod control;
pub mod device_manager;
pub mod interrupts;
pub mod memory;
mod migrate;
pub mod migration;
pub mod shmem;
mod signals;
pub mod snapshot;
pub mod state;
pub mod vcpu;
mod vm;

pub use control::{run, Launch, RunOptions};
pub use vm::Error;

/// What the control loop hears about.
#[derive(Debug)]
pub enum VmEvent {
    /// The guest powered the machine off.
    PowerOff,
    /// The guest reset the machine (or triple-faulted).
    Reset,
    /// A vCPU failed; the VM cannot continue.
    Failed(String),
    /// The VMM process received a terminating signal.
    Signal(i32),
    /// A control API request and where to answer it.
    Api(api::ApiMessage),
    /// An outgoing migration ended: committed at the destination (`Ok`) or
    /// failed with the VM still running here (`Err`).
    MigrationDone(Result<migration::MigrationReport, String>),
    /// A VM received through `vm.receive-migration` (a VMM started without
    /// a VM), or why receiving it failed.
    Incoming(control::Received),
}

/// Why a VM stopped, when it stopped cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    /// The guest reset and rebooting was not asked for.
    Reset,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// The control API asked for it.
    Shutdown,
    /// The VM migrated away and runs at the destination.
    Migrated,
}
