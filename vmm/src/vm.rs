// SPDX-License-Identifier: Apache-2.0
//! Building a VM from its configuration, and the control loop that runs it.

use std::sync::Arc;

use hypervisor::Vm;

use crate::config::{self, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::memory::{GuestRam, MemoryError};
use crate::shmem::{self, ShmemDevice};
use crate::vcpu::{stop_all, RunState, VcpuThread};

/// Errors that stop a VM from booting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM")]
    Hypervisor(#[from] hypervisor::Error),
    #[error("invalid configuration")]
    Config(#[from] config::ConfigError),
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("guest platform layout")]
    Layout(#[from] arch::LayoutError),
    #[error("cannot load the kernel {0}")]
    Kernel(std::path::PathBuf, #[source] arch::LoaderError),
    #[error("cannot load the initramfs {0}")]
    Initramfs(std::path::PathBuf, #[source] arch::LoaderError),
    #[error("cannot write the ACPI tables")]
    Acpi(#[source] arch::AcpiError),
    #[error("cannot write the boot information")]
    Boot(#[source] arch::BootError),
    #[error("cannot set up the boot vCPU")]
    BootRegs(#[source] arch::RegsError),
    #[error("cannot set up vCPU {0}")]
    Vcpu(u32, #[source] hypervisor::Error),
    #[error("devices")]
    Devices(#[from] DeviceError),
    #[error("shared memory")]
    Shmem(#[from] shmem::ShmemError),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("the guest failed: {0}")]
    Guest(String),
    #[error("VM state")]
    State(#[from] crate::state::StateError),
    #[error("control API")]
    Api(#[source] crate::api::ApiError),
    #[error("migration")]
    Migration(#[source] crate::migration::MigrationError),
}

/// A booted VM with its vCPU threads running.
#[derive(Debug)]
pub(crate) struct RunningVm {
    // Order matters on drop: threads stop before devices and memory go.
    pub(crate) threads: std::sync::Mutex<Vec<VcpuThread>>,
    pub(crate) run: Arc<RunState>,
    pub(crate) shared: Vec<ShmemDevice>,
    pub(crate) devices: Arc<DeviceManager>,
    pub(crate) ram: GuestRam,
    pub(crate) vm: Arc<dyn Vm>,
    pub(crate) config: VmConfig,
    /// MSRs a vCPU's saved state carries.
    pub(crate) msr_indices: Vec<u32>,
}

impl RunningVm {
    /// A migrated VM becomes the guest (see `ShmemDevice::go_live`); call
    /// before its first resume.
    pub(crate) fn go_live(&self) {
        for s in &self.shared {
            s.go_live();
        }
    }

    pub(crate) fn stop(&self) {
        let mut threads = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stop_all(&self.run, &mut threads);
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
    }
}
