// SPDX-License-Identifier: Apache-2.0
//! Model-specific registers at boot.
//!
//! IA32_ARCH_CAPABILITIES (0x10a) is deliberately left out: PVM rejects any
//! non-zero write to it (FIELD-NOTES), and KVM's default is what the guest
//! should see.

use hypervisor::x86_64::MsrEntry;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_ARCH_CAPABILITIES: must be written as 0 or not at all on PVM.
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;
/// STAR.
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK (FMASK).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE.FAST_STRING.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRR default type: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

/// The MSRs to set on every vCPU before it runs.
pub fn boot_msrs() -> Vec<MsrEntry> {
    let entry = |index: u32, data: u64| MsrEntry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_capabilities_is_never_written_non_zero() {
        assert!(boot_msrs()
            .iter()
            .all(|e| e.index != MSR_IA32_ARCH_CAPABILITIES || e.data == 0));
    }

    #[test]
    fn misc_enable_and_mtrr_defaults() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
    }
}
