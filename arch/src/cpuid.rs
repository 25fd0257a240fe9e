// SPDX-License-Identifier: Apache-2.0
//! The CPUID table of each vCPU: KVM's supported table with the topology of
//! the guest (one socket, one thread per core, N cores; vCPU *i* has APIC
//! ID *i*) and the KVM hypervisor leaves.
//!
//! Under KVM's instruction emulator (PVM, see FIELD-NOTES) CPUID cannot hide
//! most features: KVM_SET_CPUID2 keeps the host's leaf 1 ECX (XSAVE, AVX, ...)
//! whatever the table says. CX16 is the one bit known to clear, and
//! [`CpuidOptions::emulated`] clears it. A Linux guest there also needs the
//! kernel parameters in [`EMULATOR_KERNEL_PARAMS`].

use hypervisor::x86_64::{CpuIdEntry, CPUID_FLAG_SIGNIFICANT_INDEX};

use crate::layout::MAX_VCPUS;

/// Kernel parameters that keep a Linux guest away from instructions KVM's
/// emulator cannot run and that CPUID cannot hide (FIELD-NOTES).
pub const EMULATOR_KERNEL_PARAMS: &str = "noxsave nofsgsbase nopku nopcid \
clearcpuid=invpcid,umip,smap,smep,pku,fsgsbase,pcid,popcnt,movbe,rdtscp,rdpid,rdrand,rdseed,\
abm,bmi1,bmi2,avx,avx2,fma,f16c,sse4_1,sse4_2,aes,pclmulqdq,sha_ni";

/// How the VMM runs the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidOptions {
    /// KVM runs the guest in its instruction emulator (PVM): clear the
    /// features the emulator is known to lack and CPUID can hide.
    pub emulated: bool,
}

/// Leaf 1 ECX: CMPXCHG16B.
pub const LEAF1_ECX_CX16: u32 = 1 << 13;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: bits 23:16 of EBX hold the logical processor count.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_HYPERVISOR_FEATURES: u32 = 0x4000_0001;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDRESS: u32 = 0x8000_0008;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// "Auth" / "Hygo": the first vendor word of AMD and Hygon.
const AMD_VENDOR_EBX: [u32; 2] = [0x6874_7541, 0x6f67_7948];

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits of an APIC ID that number the cores of a package of `n` cores.
fn core_shift(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Leaf 0xB / 0x1F subleaves: SMT level (1 thread), core level (n cores), end.
fn topology_leaf(function: u32, apic_id: u32, num_cpus: u32) -> [CpuIdEntry; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| CpuIdEntry {
        function,
        index,
        flags: CPUID_FLAG_SIGNIFICANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_TYPE_SMT << 8),
        entry(
            1,
            core_shift(num_cpus),
            num_cpus,
            (LEVEL_TYPE_CORE << 8) | 1,
        ),
        entry(2, 0, 0, 2),
    ]
}

/// The CPUID table for vCPU `cpu_index` of `num_cpus`, from KVM's supported
/// table. `num_cpus` is clamped to 1..=[`MAX_VCPUS`]; APIC ID = `cpu_index`.
pub fn build_cpuid(
    supported: &[CpuIdEntry],
    cpu_index: u32,
    num_cpus: u32,
    opts: &CpuidOptions,
) -> Vec<CpuIdEntry> {
    let num_cpus = num_cpus.clamp(1, MAX_VCPUS);
    let apic_id = cpu_index;
    let is_amd = supported
        .iter()
        .any(|e| e.function == LEAF_VENDOR && AMD_VENDOR_EBX.contains(&e.ebx));
    let has = |f: u32| supported.iter().any(|e| e.function == f);

    let mut out: Vec<CpuIdEntry> = Vec::with_capacity(supported.len() + 6);
    for e in supported {
        let mut e = *e;
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id.min(0xff) << 24) | (num_cpus << 16);
                if e.ebx & 0xff00 == 0 {
                    e.ebx |= 8 << 8; // CLFLUSH line size: 8 x 8 bytes.
                }
                if num_cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if opts.emulated {
                    e.ecx &= !LEAF1_ECX_CX16;
                }
            }
            LEAF_CACHE => {
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { num_cpus - 1 } else { 0 };
                let cores = (num_cpus - 1).min(63);
                if e.eax & 0x1f != 0 {
                    e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores << 26);
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => continue,
            LEAF_HYPERVISOR => {
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
                e.eax = e.eax.max(LEAF_HYPERVISOR_FEATURES);
            }
            LEAF_EXT_FEATURES if is_amd => {
                // CmpLegacy: the HTT count of leaf 1 is the core count.
                if num_cpus > 1 {
                    e.ecx |= 1 << 1;
                } else {
                    e.ecx &= !(1 << 1);
                }
            }
            LEAF_EXT_ADDRESS if is_amd => {
                e.ecx = (e.ecx & !0xf0ff) | (core_shift(num_cpus) << 12) | (num_cpus - 1);
            }
            _ => {}
        }
        out.push(e);
    }
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if has(leaf) {
            out.extend(topology_leaf(leaf, apic_id, num_cpus));
        }
    }
    if !has(LEAF_HYPERVISOR) {
        let [ebx, ecx, edx] = KVM_SIGNATURE;
        out.push(CpuIdEntry {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR_FEATURES,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuIdEntry {
        CpuIdEntry {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn supported() -> Vec<CpuIdEntry> {
        vec![
            leaf(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69), // GenuineIntel
            leaf(
                1,
                0,
                0x806c1,
                0x0000_0800,
                0x8120_2000 | LEAF1_ECX_CX16,
                0x0789_fbff,
            ),
            leaf(4, 0, 0x121, 0x01c0_003f, 0x3f, 0),   // L1d
            leaf(4, 1, 0x163, 0x03c0_003f, 0x3fff, 6), // L3
            leaf(4, 2, 0, 0, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 7),
            leaf(0xb, 1, 4, 16, 0x201, 7),
            leaf(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
            leaf(0x4000_0001, 0, 0x1234, 0, 0, 0x1),
        ]
    }

    fn find(t: &[CpuIdEntry], function: u32, index: u32) -> CpuIdEntry {
        *t.iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_reports_apic_id_count_and_htt() {
        let t = build_cpuid(&supported(), 3, 4, &CpuidOptions::default());
        let l1 = find(&t, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_CX16, 0, "CX16 kept without emulation");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let t = build_cpuid(&supported(), 0, 1, &CpuidOptions::default());
        assert_eq!(find(&t, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn emulated_clears_cx16() {
        let t = build_cpuid(&supported(), 0, 2, &CpuidOptions { emulated: true });
        assert_eq!(find(&t, 1, 0).ecx & LEAF1_ECX_CX16, 0);
    }

    #[test]
    fn leaf4_reports_cores_per_package() {
        let t = build_cpuid(&supported(), 0, 4, &CpuidOptions::default());
        let l1d = find(&t, 4, 0);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax & 0x3fff, 0x121);
        let l3 = find(&t, 4, 1);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(find(&t, 4, 2).eax, 0, "terminating subleaf untouched");
    }

    #[test]
    fn leaf_b_describes_cores_with_x2apic_id() {
        let t = build_cpuid(&supported(), 5, 6, &CpuidOptions::default());
        let smt = find(&t, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&t, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!(find(&t, 0xb, 2).ecx >> 8, 0, "invalid level ends the list");
        assert_eq!(t.iter().filter(|e| e.function == 0xb).count(), 3);
        assert!(
            t.iter().all(|e| e.function != 0x1f),
            "0x1f only if supported"
        );
    }

    #[test]
    fn hypervisor_leaves_are_kvm() {
        let t = build_cpuid(&supported(), 0, 1, &CpuidOptions::default());
        let h = find(&t, 0x4000_0000, 0);
        let mut sig = Vec::new();
        for r in [h.ebx, h.ecx, h.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert_eq!(find(&t, 0x4000_0001, 0).eax, 0x1234);
    }

    #[test]
    fn core_shift_rounds_up_to_a_power_of_two() {
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(2), 1);
        assert_eq!(core_shift(3), 2);
        assert_eq!(core_shift(4), 2);
        assert_eq!(core_shift(5), 3);
        assert_eq!(core_shift(255), 8);
    }

    #[test]
    fn amd_reports_core_count_in_extended_leaves() {
        let mut s = supported();
        s[0].ebx = 0x6874_7541;
        s.push(leaf(0x8000_0001, 0, 0, 0, 0, 0));
        s.push(leaf(0x8000_0008, 0, 0x3030, 0, 0, 0));
        let t = build_cpuid(&s, 0, 4, &CpuidOptions::default());
        assert_eq!(find(&t, 0x8000_0008, 0).ecx, (2 << 12) | 3);
        assert_ne!(find(&t, 0x8000_0001, 0).ecx & 2, 0);
    }
}
