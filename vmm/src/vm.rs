// SPDX-License-Identifier: Apache-2.0
//! Building a VM from its configuration, and the control loop that runs it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use hypervisor::kvm::KvmHypervisor;
use hypervisor::Vm;

use crate::boot::{boot, RamSource, Start};
use crate::config::{self, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::memory::{GuestRam, MemoryError};
use crate::shmem::{self, ShmemDevice};
use crate::vcpu::{stop_all, RunState, VcpuThread};
use crate::{signals, ExitReason, VmEvent};

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

fn control_loop(rx: &Receiver<VmEvent>) -> VmEvent {
    // The sender side lives in `run`, so recv only fails if that is gone.
    rx.recv()
        .unwrap_or_else(|_| VmEvent::Failed("control channel closed".into()))
}

/// How `run` gets its VM.
#[derive(Debug)]
pub enum Launch {
    /// Boot this configuration.
    Boot(VmConfig),
    /// Restore the snapshot in this directory; `serial` overrides where the
    /// restored VM's serial output goes.
    Restore {
        dir: std::path::PathBuf,
        serial: Option<config::SerialOutput>,
    },
}

/// Builds the first VM of `launch`; returns it and its configuration.
fn first_boot(
    hyp: &KvmHypervisor,
    launch: &Launch,
    events: &Sender<VmEvent>,
) -> Result<(RunningVm, VmConfig), Error> {
    match launch {
        Launch::Boot(config) => Ok((boot(hyp, config, events, Start::Fresh)?, config.clone())),
        Launch::Restore { dir, serial } => {
            let loaded = crate::snapshot::load(dir).map_err(|e| Error::State(e.into()))?;
            let mut config = crate::state::saved_config(&loaded.snapshot)?;
            if let Some(serial) = serial {
                config.serial = serial.clone();
            }
            if config.memory != loaded.ram_size {
                return Err(Error::State(
                    crate::snapshot::SnapshotError::RamSize {
                        found: config.memory,
                        expected: loaded.ram_size,
                    }
                    .into(),
                ));
            }
            let fill = |ram: &GuestRam| {
                crate::snapshot::restore_memory(dir, ram.file(), ram.size())
                    .map(|_| ())
                    .map_err(|e| Error::State(e.into()))
            };
            let start = Start::Restore {
                state: &loaded.snapshot,
                ram: RamSource::Fill(&fill),
            };
            let vm = boot(hyp, &config, events, start)?;
            log::info!("restored the VM saved in {}", dir.display());
            Ok((vm, config))
        }
    }
}

/// Runs a VM until the guest powers off, a signal arrives, or something
/// fails. Reboots on guest reset when the configuration says so.
pub fn run(launch: Launch) -> Result<ExitReason, Error> {
    let hyp = KvmHypervisor::new()?;
    let (tx, rx) = channel();
    signals::forward_terminating_signals(tx.clone()).map_err(Error::Thread)?;
    let (mut vm, config) = first_boot(&hyp, &launch, &tx)?;
    loop {
        let event = control_loop(&rx);
        vm.stop();
        drop(vm);
        match event {
            VmEvent::PowerOff => return Ok(ExitReason::PowerOff),
            VmEvent::Signal(sig) => return Ok(ExitReason::Signal(sig)),
            VmEvent::Failed(why) => return Err(Error::Guest(why)),
            VmEvent::Reset if config.reboot => {
                log::info!("guest reset: rebooting");
                // Drop events that raced with the reset (e.g. a second vCPU's).
                while rx.try_recv().is_ok() {}
                vm = boot(&hyp, &config, &tx, Start::Fresh)?;
            }
            VmEvent::Reset => return Ok(ExitReason::Reset),
        }
    }
}
