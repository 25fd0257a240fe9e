// SPDX-License-Identifier: Apache-2.0
//! A running VM's complete state: captured while its vCPUs are parked, put
//! back into a freshly built VM (restore, incoming migration).

use std::path::Path;

use hypervisor::{Vcpu, Vm};

use crate::config::VmConfig;
use crate::device_manager::{find_state, DeviceManager};
use crate::shmem::{GroupIdentity, ShmemDevice};
use crate::snapshot::{self, SaveReport, SnapshotError, VmSnapshot};
use crate::vcpu::{pause_all, resume_all};
use crate::vm::{Error, RunningVm};

/// Errors of saving or restoring state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state of vCPU {0}")]
    SaveVcpu(u32, #[source] hypervisor::Error),
    #[error("cannot restore the state of vCPU {0}")]
    RestoreVcpu(u32, #[source] hypervisor::Error),
    #[error("cannot read the interrupt controller and clock state")]
    SaveVm(#[source] hypervisor::Error),
    #[error("cannot restore the interrupt controller and clock state")]
    RestoreVm(#[source] hypervisor::Error),
    #[error("cannot encode the state of {0}")]
    Encode(String, #[source] serde_json::Error),
    #[error("the saved configuration cannot be read")]
    Config(#[source] serde_json::Error),
    #[error("the saved state has {saved} vCPUs but the configuration has {configured}")]
    VcpuCount { saved: usize, configured: u32 },
    #[error("snapshot")]
    Snapshot(#[from] SnapshotError),
}

impl RunningVm {
    /// Everything but RAM. The vCPUs must be parked ([`RunningVm::pause`]).
    pub(crate) fn capture(&self) -> Result<VmSnapshot, Error> {
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut vcpus = Vec::with_capacity(threads.len());
        for t in threads.iter() {
            let vcpu = t
                .vcpu()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            vcpus.push(
                vcpu.state(&self.msr_indices)
                    .map_err(|e| StateError::SaveVcpu(t.id(), e))?,
            );
        }
        let vm = self.vm.state().map_err(StateError::SaveVm)?;
        let mut devices = self.devices.save_state()?;
        for s in &self.shared {
            let v = serde_json::to_value(s.save_state())
                .map_err(|e| StateError::Encode(s.state_name(), e))?;
            devices.push((s.state_name(), v));
        }
        // Group devices come first, in `config.groups` order.
        for (i, s) in self.shared.iter().enumerate() {
            if let Some(identity) = s.identity() {
                let name = group_identity_name(i);
                let v = serde_json::to_value(identity)
                    .map_err(|e| StateError::Encode(name.clone(), e))?;
                devices.push((name, v));
            }
        }
        Ok(VmSnapshot {
            config: serde_json::to_value(&self.config)
                .map_err(|e| StateError::Encode("configuration".into(), e))?,
            vcpus,
            vm,
            devices,
        })
    }

    /// Parks every vCPU.
    pub(crate) fn pause(&self) {
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pause_all(&self.run, &threads);
    }

    /// Lets the vCPUs run again.
    pub(crate) fn resume(&self) {
        resume_all(&self.run);
    }

    /// Resumes when `running` (after a failed operation on a running VM).
    pub(crate) fn resume_if(&self, running: bool) {
        if running {
            self.resume();
        }
    }

    /// Writes a snapshot of the VM into `dir`; the VM is paused meanwhile
    /// and runs again afterwards unless `stay_paused`.
    pub(crate) fn snapshot_to(&self, dir: &Path, stay_paused: bool) -> Result<SaveReport, Error> {
        self.pause();
        let result = self.capture().and_then(|state| {
            snapshot::save(dir, &state, self.ram.file(), self.ram.size())
                .map_err(|e| Error::State(e.into()))
        });
        if !stay_paused {
            self.resume();
        }
        result
    }
}

fn group_identity_name(index: usize) -> String {
    format!("group-identity {index}")
}

/// The identity of group membership `index` in a saved state, if saved.
pub(crate) fn group_identity(state: &VmSnapshot, index: usize) -> Option<GroupIdentity> {
    find_state(&state.devices, &group_identity_name(index)).ok()
}

/// The configuration a saved state was taken with.
pub fn saved_config(state: &VmSnapshot) -> Result<VmConfig, StateError> {
    serde_json::from_value(state.config.clone()).map_err(StateError::Config)
}

/// Puts the saved device states back (before the BARs are mapped).
pub(crate) fn restore_devices(
    devices: &DeviceManager,
    shared: &[ShmemDevice],
    states: &[(String, serde_json::Value)],
) -> Result<(), Error> {
    devices.restore_state(states)?;
    for s in shared {
        let state = find_state(states, &s.state_name())?;
        s.restore_state(state)?;
    }
    Ok(())
}

/// Creates the vCPUs with their saved state, then the interrupt
/// controllers, PIT and clock.
pub(crate) fn restore_vcpus(vm: &dyn Vm, state: &VmSnapshot) -> Result<Vec<Box<dyn Vcpu>>, Error> {
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (id, saved) in (0u32..).zip(&state.vcpus) {
        let vcpu = vm.create_vcpu(id).map_err(|e| Error::Vcpu(id, e))?;
        vcpu.set_state(saved)
            .map_err(|e| Error::State(StateError::RestoreVcpu(id, e)))?;
        vcpus.push(vcpu);
    }
    vm.set_state(&state.vm)
        .map_err(|e| Error::State(StateError::RestoreVm(e)))?;
    Ok(vcpus)
}
