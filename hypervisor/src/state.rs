// SPDX-License-Identifier: Apache-2.0
//! VM and vCPU state for snapshot and migration.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

use crate::x86_64::{CpuIdEntry, FpuState, MsrEntry, SpecialRegisters, StandardRegisters};

/// Everything a vCPU needs to continue where it stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<CpuIdEntry>,
    pub mp_state: kvm_mp_state,
    pub regs: StandardRegisters,
    pub sregs: SpecialRegisters,
    pub fpu: Fpu,
    /// `None` when the host has no XSAVE support for guests.
    pub xsave: Option<kvm_xsave>,
    /// `None` when the host has no XCR support for guests.
    pub xcrs: Option<kvm_xcrs>,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<MsrEntry>,
    pub events: kvm_vcpu_events,
}

/// VM-wide in-kernel device state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The legacy FPU/SSE state (`kvm_fpu`), which kvm-bindings does not serialize.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fpu {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<FpuState> for Fpu {
    fn from(f: FpuState) -> Self {
        Fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<Fpu> for FpuState {
    fn from(f: Fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_round_trips_through_kvm_fpu() {
        let mut kvm = FpuState {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        kvm.xmm[3][7] = 0xaa;
        let back: FpuState = Fpu::from(kvm).into();
        assert_eq!(back, kvm);
    }

    #[test]
    fn fpu_serializes_to_json() {
        let fpu = Fpu {
            fcw: 0x37f,
            ..Default::default()
        };
        let text = serde_json::to_string(&fpu).unwrap();
        let back: Fpu = serde_json::from_str(&text).unwrap();
        assert_eq!(back, fpu);
    }
}
