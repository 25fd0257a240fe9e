// SPDX-License-Identifier: Apache-2.0
//! A KVM vCPU.

use kvm_bindings::{
    kvm_lapic_state, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::x86_64::{CpuIdEntry, FpuState, MsrEntry, SpecialRegisters, StandardRegisters};
use crate::{Error, Result, Vcpu, VcpuState, VmExit};

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// A KVM vCPU file descriptor.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    xsave: bool,
    xcrs: bool,
}

impl KvmVcpu {
    pub(crate) fn new(fd: VcpuFd, xsave: bool, xcrs: bool) -> Self {
        KvmVcpu { fd, xsave, xcrs }
    }
}

fn enomem(op: &'static str) -> Error {
    Error::Ioctl {
        op,
        source: std::io::Error::from_raw_os_error(libc::ENOMEM),
    }
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as i8;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// `KVM_INTERNAL_ERROR_EMULATION` with instruction bytes (flag bit 0) whose
/// first byte is `int3`: KVM's instruction emulator (all of a non-PVM guest's
/// code on PVM hosts) cannot execute `int3`, which Linux uses for its
/// self-test and for text patching.
fn is_emulated_int3(suberror: u32, data: &[u64]) -> bool {
    const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
    const FLAG_INSTRUCTION_BYTES: u64 = 1;
    match data {
        [flags, bytes, ..] => {
            suberror == KVM_INTERNAL_ERROR_EMULATION
                && flags & FLAG_INSTRUCTION_BYTES != 0
                // Byte 0 is the instruction length, byte 1 the first opcode byte.
                && bytes & 0xff >= 1
                && (bytes >> 8) & 0xff == 0xcc
        }
        _ => false,
    }
}

impl Vcpu for KvmVcpu {
    fn inject_breakpoint(&self) -> Result<()> {
        let mut regs = self.regs()?;
        regs.rip = regs.rip.wrapping_add(1);
        self.set_regs(&regs)?;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = 3;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(Error::ioctl("KVM_SET_VCPU_EVENTS"))
    }

    fn run(&mut self) -> Result<VmExit<'_>> {
        // Kept to read the internal-error details below, while `exit` borrows `fd`.
        let run_page = self.fd.get_kvm_run() as *const kvm_bindings::kvm_run;
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::IoIn(port, data) => VmExit::IoIn(port, data),
                VcpuExit::IoOut(port, data) => VmExit::IoOut(port, data),
                VcpuExit::MmioRead(addr, data) => VmExit::MmioRead(addr, data),
                VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite(addr, data),
                VcpuExit::Hlt => VmExit::Hlt,
                VcpuExit::Shutdown => VmExit::Shutdown,
                VcpuExit::Intr => VmExit::Interrupted,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => VmExit::Reset,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => VmExit::PowerOff,
                VcpuExit::SystemEvent(kind, _) => VmExit::Failed(format!("system event {kind}")),
                VcpuExit::FailEntry(reason, cpu) => VmExit::Failed(format!(
                    "entry failure, hardware reason {reason:#x} on cpu {cpu}"
                )),
                VcpuExit::InternalError => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the
                    // `internal` member of the union is the valid one.
                    // The kvm_run page stays mapped for the life of the vCPU fd.
                    let internal = unsafe { (*run_page).__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    let data = internal.data;
                    if is_emulated_int3(internal.suberror, &data[..n]) {
                        return Ok(VmExit::EmulatedInt3);
                    }
                    VmExit::Failed(format!(
                        "KVM internal error, suberror {} data {:x?}",
                        internal.suberror,
                        &data[..n]
                    ))
                }
                VcpuExit::Unsupported(reason) => VmExit::Other(reason),
                other => VmExit::Failed(format!("unexpected exit {other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VmExit::Interrupted)
            }
            Err(e) => Err(Error::ioctl("KVM_RUN")(e)),
        }
    }

    fn immediate_exit_flag(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit as *mut u8
    }

    fn regs(&self) -> Result<StandardRegisters> {
        self.fd.get_regs().map_err(Error::ioctl("KVM_GET_REGS"))
    }

    fn set_regs(&self, regs: &StandardRegisters) -> Result<()> {
        self.fd.set_regs(regs).map_err(Error::ioctl("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<SpecialRegisters> {
        self.fd.get_sregs().map_err(Error::ioctl("KVM_GET_SREGS"))
    }

    fn set_sregs(&self, sregs: &SpecialRegisters) -> Result<()> {
        self.fd
            .set_sregs(sregs)
            .map_err(Error::ioctl("KVM_SET_SREGS"))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(Error::ioctl("KVM_SET_FPU"))
    }

    fn set_cpuid(&self, entries: &[CpuIdEntry]) -> Result<()> {
        let cpuid = CpuId::from_entries(entries).map_err(|_| enomem("KVM_SET_CPUID2"))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(Error::ioctl("KVM_SET_CPUID2"))
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>> {
        let mut out = Vec::with_capacity(indices.len());
        // KVM stops at the first MSR it refuses; read in chunks and skip it.
        let mut rest = indices;
        while !rest.is_empty() {
            let entries: Vec<MsrEntry> = rest
                .iter()
                .map(|&index| MsrEntry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| enomem("KVM_GET_MSRS"))?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(Error::ioctl("KVM_GET_MSRS"))?;
            out.extend_from_slice(&msrs.as_slice()[..n.min(rest.len())]);
            // Skip the refused one.
            rest = rest.get(n + 1..).unwrap_or(&[]);
        }
        Ok(out)
    }

    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<()> {
        let msrs = Msrs::from_entries(entries).map_err(|_| enomem("KVM_SET_MSRS"))?;
        let n = self
            .fd
            .set_msrs(&msrs)
            .map_err(Error::ioctl("KVM_SET_MSRS"))?;
        if n != entries.len() {
            let index = entries.get(n).map(|e| e.index).unwrap_or_default();
            return Err(Error::Ioctl {
                op: if index == 0 {
                    "KVM_SET_MSRS"
                } else {
                    "KVM_SET_MSRS (refused an MSR)"
                },
                source: std::io::Error::other(format!("MSR {index:#x} refused")),
            });
        }
        Ok(())
    }

    fn setup_lint(&self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().map_err(Error::ioctl("KVM_GET_LAPIC"))?;
        let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
        set_lapic_reg(
            &mut lapic,
            APIC_LVT_LINT0,
            set_delivery_mode(lint0, APIC_MODE_EXTINT),
        );
        let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
        set_lapic_reg(
            &mut lapic,
            APIC_LVT_LINT1,
            set_delivery_mode(lint1, APIC_MODE_NMI),
        );
        self.fd
            .set_lapic(&lapic)
            .map_err(Error::ioctl("KVM_SET_LAPIC"))
    }

    fn state(&self, msr_indices: &[u32]) -> Result<VcpuState> {
        // mp_state first: KVM_GET_MP_STATE may complete pending INIT/SIPI handling.
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(Error::ioctl("KVM_GET_MP_STATE"))?;
        let cpuid = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::ioctl("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        Ok(VcpuState {
            cpuid,
            mp_state,
            regs: self.regs()?,
            sregs: self.sregs()?,
            fpu: self
                .fd
                .get_fpu()
                .map_err(Error::ioctl("KVM_GET_FPU"))?
                .into(),
            xsave: if self.xsave {
                Some(self.fd.get_xsave().map_err(Error::ioctl("KVM_GET_XSAVE"))?)
            } else {
                None
            },
            xcrs: if self.xcrs {
                Some(self.fd.get_xcrs().map_err(Error::ioctl("KVM_GET_XCRS"))?)
            } else {
                None
            },
            lapic: self.fd.get_lapic().map_err(Error::ioctl("KVM_GET_LAPIC"))?,
            msrs: self.msrs(msr_indices)?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    fn set_state(&self, state: &VcpuState) -> Result<()> {
        self.set_cpuid(&state.cpuid)?;
        self.set_sregs(&state.sregs)?;
        self.set_regs(&state.regs)?;
        self.set_fpu(&state.fpu.into())?;
        if let Some(xcrs) = &state.xcrs {
            self.fd
                .set_xcrs(xcrs)
                .map_err(Error::ioctl("KVM_SET_XCRS"))?;
        }
        if let Some(xsave) = &state.xsave {
            // SAFETY: the buffer came from KVM_GET_XSAVE on a vCPU of the same
            // kind (checked by the snapshot's host compatibility header).
            unsafe { self.fd.set_xsave(xsave) }.map_err(Error::ioctl("KVM_SET_XSAVE"))?;
        }
        self.fd
            .set_lapic(&state.lapic)
            .map_err(Error::ioctl("KVM_SET_LAPIC"))?;
        self.set_msrs(&state.msrs)?;
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(Error::ioctl("KVM_SET_VCPU_EVENTS"))?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(Error::ioctl("KVM_SET_MP_STATE"))
    }
}

#[cfg(test)]
mod tests {
    use super::is_emulated_int3;

    #[test]
    fn int3_emulation_failure_is_recognised() {
        // flags = instruction bytes present; length 15; bytes cc 90 ...
        assert!(is_emulated_int3(1, &[1, 0x7c83_9090_9090_cc0f]));
    }

    #[test]
    fn other_emulation_failures_are_not_int3() {
        assert!(!is_emulated_int3(1, &[1, 0x7c83_9090_9090_0b0f]));
        assert!(!is_emulated_int3(1, &[0, 0x7c83_9090_9090_cc0f]));
        assert!(!is_emulated_int3(2, &[1, 0x7c83_9090_9090_cc0f]));
        assert!(!is_emulated_int3(1, &[1, 0xcc00]));
        assert!(!is_emulated_int3(1, &[1]));
    }
}
