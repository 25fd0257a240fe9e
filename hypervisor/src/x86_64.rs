// SPDX-License-Identifier: Apache-2.0
//! x86_64 register and CPU state types.
//!
//! These are the KVM structures under plain names, so that `arch` can build
//! boot state without depending on KVM crates directly.

pub use kvm_bindings::kvm_cpuid_entry2 as CpuIdEntry;
pub use kvm_bindings::kvm_dtable as DescriptorTable;
pub use kvm_bindings::kvm_fpu as FpuState;
pub use kvm_bindings::kvm_msr_entry as MsrEntry;
pub use kvm_bindings::kvm_regs as StandardRegisters;
pub use kvm_bindings::kvm_segment as SegmentRegister;
pub use kvm_bindings::kvm_sregs as SpecialRegisters;
pub use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX as CPUID_FLAG_SIGNIFICANT_INDEX;
