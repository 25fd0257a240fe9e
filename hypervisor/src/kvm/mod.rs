// SPDX-License-Identifier: Apache-2.0
//! The KVM implementation of the hypervisor traits.

mod vcpu;
mod vm;

use std::sync::Arc;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

pub use vcpu::KvmVcpu;
pub use vm::KvmVm;

use crate::x86_64::CpuIdEntry;
use crate::{Error, Hypervisor, Result, Vm};

/// `/dev/kvm`.
#[derive(Debug)]
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm` and checks that it can run Shoal guests.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| Error::OpenKvm(e.into()))?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "in-kernel irqchip"),
            (Cap::Irqfd, "irqfd"),
            (Cap::Ioeventfd, "ioeventfd"),
            (Cap::IrqRouting, "IRQ routing"),
            (Cap::UserMemory, "user memory"),
            (Cap::SignalMsi, "signal MSI"),
            (Cap::ImmediateExit, "immediate exit"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        Ok(KvmHypervisor { kvm })
    }
}

impl Hypervisor for KvmHypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(Error::ioctl("KVM_CREATE_VM"))?;
        let xsave = self.kvm.check_extension(Cap::Xsave);
        let xcrs = self.kvm.check_extension(Cap::Xcrs);
        Ok(Arc::new(KvmVm::new(fd, xsave, xcrs)))
    }

    fn max_vcpus(&self) -> u32 {
        u32::try_from(self.kvm.get_max_vcpus()).unwrap_or(u32::MAX)
    }

    fn recommended_vcpus(&self) -> u32 {
        u32::try_from(self.kvm.get_nr_vcpus()).unwrap_or(1)
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuIdEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().to_vec())
    }

    fn msr_index_list(&self) -> Result<Vec<u32>> {
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(Error::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(list.as_slice().to_vec())
    }
}
