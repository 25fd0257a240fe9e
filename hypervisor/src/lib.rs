// SPDX-License-Identifier: Apache-2.0
//! KVM behind small traits.
//!
//! This crate owns everything that talks to `/dev/kvm`: the [`Hypervisor`],
//! [`Vm`] and [`Vcpu`] traits, their KVM implementation ([`kvm`]), and the
//! serde state types that snapshot and migration carry ([`state`]). It
//! depends on no other Shoal crate; the rest of Shoal reaches KVM only
//! through these traits.

pub mod kvm;
pub mod state;
pub mod x86_64;

use std::os::fd::RawFd;
use std::sync::Arc;

pub use state::{VcpuState, VmState};
use x86_64::{CpuIdEntry, FpuState, MsrEntry, SpecialRegisters, StandardRegisters};

/// Errors of hypervisor operations. Each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] std::io::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a capability Shoal needs: {0}")]
    MissingCapability(&'static str),
    #[error("KVM ioctl {op} failed")]
    Ioctl {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Result of hypervisor operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |e| Error::Ioctl {
            op,
            source: std::io::Error::from_raw_os_error(e.errno()),
        }
    }

    /// The OS error number behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::OpenKvm(e) | Error::Ioctl { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}

/// Why a vCPU stopped running guest code.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// `in` from a port: fill `data` before the next run.
    IoIn(u16, &'a mut [u8]),
    /// `out` to a port.
    IoOut(u16, &'a [u8]),
    /// MMIO read: fill `data` before the next run.
    MmioRead(u64, &'a mut [u8]),
    /// MMIO write.
    MmioWrite(u64, &'a [u8]),
    /// The guest halted with interrupts off (no in-kernel wake-up possible).
    Hlt,
    /// Triple fault or similar: the machine must reset.
    Shutdown,
    /// The guest asked for a reset through a system event.
    Reset,
    /// The guest asked for power-off through a system event.
    PowerOff,
    /// `KVM_RUN` was interrupted by a signal or by immediate exit.
    Interrupted,
    /// KVM's instruction emulator met an `int3` it cannot execute (the
    /// guest runs emulated, as on PVM hosts): call
    /// [`Vcpu::inject_breakpoint`] and run again.
    EmulatedInt3,
    /// KVM could not run the guest (entry failure, emulation failure, ...).
    Failed(String),
    /// Any other exit, by its KVM reason number.
    Other(u32),
}

/// Where an ioeventfd listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// One GSI route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqRoute {
    /// GSI to an MSI message.
    Msi { gsi: u32, addr: u64, data: u32 },
    /// GSI to an IOAPIC pin.
    IoApic { gsi: u32, pin: u32 },
    /// GSI to an 8259 PIC pin (`chip` 0 master, 1 slave).
    Pic { gsi: u32, chip: u32, pin: u32 },
}

/// A hypervisor: creates VMs and answers questions about the host.
pub trait Hypervisor: Send + Sync {
    /// Creates a VM with no memory and no vCPUs.
    fn create_vm(&self) -> Result<Arc<dyn Vm>>;
    /// The largest vCPU count a VM may have.
    fn max_vcpus(&self) -> u32;
    /// The recommended vCPU count (`KVM_CAP_NR_VCPUS`).
    fn recommended_vcpus(&self) -> u32;
    /// CPUID entries the host supports for guests.
    fn supported_cpuid(&self) -> Result<Vec<CpuIdEntry>>;
    /// MSR indices whose values a vCPU's state must carry.
    fn msr_index_list(&self) -> Result<Vec<u32>>;
}

/// A VM: guest memory slots, the in-kernel interrupt controllers, eventfds.
pub trait Vm: Send + Sync + std::fmt::Debug {
    /// Creates vCPU `id` (which is also its APIC ID).
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>>;
    /// Creates the in-kernel IOAPIC, PICs and local APICs, and the PIT.
    fn create_irqchip(&self) -> Result<()>;

    /// Maps `size` bytes at host address `host_addr` at guest address
    /// `guest_addr` in `slot`, replacing what the slot held.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must stay mapped (or the slot be removed)
    /// for as long as the VM runs.
    unsafe fn set_memory_region(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        log_dirty: bool,
    ) -> Result<()>;
    /// Removes a memory slot.
    fn remove_memory_region(&self, slot: u32, guest_addr: u64) -> Result<()>;
    /// Returns the dirty bitmap of a slot (one bit per 4 KiB page) and clears it.
    fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>>;

    /// Raises (`true`) or lowers an interrupt line (IOAPIC pin / GSI).
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()>;
    /// Sends one MSI.
    fn signal_msi(&self, addr: u64, data: u32) -> Result<()>;
    /// Replaces the whole GSI routing table.
    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<()>;
    /// Makes a write to `fd` inject `gsi`; with `resample`, a level-triggered GSI
    /// whose EOI signals `resample`.
    fn register_irqfd(&self, fd: RawFd, gsi: u32, resample: Option<RawFd>) -> Result<()>;
    /// Undoes [`Vm::register_irqfd`].
    fn unregister_irqfd(&self, fd: RawFd, gsi: u32) -> Result<()>;
    /// Makes a guest write to `addr` (of `len` bytes, matching `datamatch` if
    /// given) signal `fd` inside the kernel, without a userspace exit.
    fn register_ioevent(
        &self,
        fd: RawFd,
        addr: IoEventAddress,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<()>;
    /// Undoes [`Vm::register_ioevent`].
    fn unregister_ioevent(
        &self,
        fd: RawFd,
        addr: IoEventAddress,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<()>;

    /// Saves interrupt controllers, PIT and clock.
    fn state(&self) -> Result<VmState>;
    /// Restores what [`Vm::state`] saved.
    fn set_state(&self, state: &VmState) -> Result<()>;
}

/// One virtual CPU. Runs on its own thread.
pub trait Vcpu: Send + std::fmt::Debug {
    /// Runs guest code until the next exit that userspace must handle.
    fn run(&mut self) -> Result<VmExit<'_>>;
    /// Address of this vCPU's `immediate_exit` byte: a signal handler on the
    /// vCPU thread sets it to 1 so that a `run` that races with the signal
    /// returns at once instead of entering the guest.
    fn immediate_exit_flag(&mut self) -> *mut u8;

    fn regs(&self) -> Result<StandardRegisters>;
    fn set_regs(&self, regs: &StandardRegisters) -> Result<()>;
    fn sregs(&self) -> Result<SpecialRegisters>;
    fn set_sregs(&self, sregs: &SpecialRegisters) -> Result<()>;
    fn set_fpu(&self, fpu: &FpuState) -> Result<()>;
    fn set_cpuid(&self, entries: &[CpuIdEntry]) -> Result<()>;
    /// Reads the given MSRs; entries that the host refuses come back absent.
    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>>;
    /// Writes MSRs; fails naming the first one KVM refused.
    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<()>;
    /// Does what the CPU does for `int3`: a #BP trap whose saved instruction
    /// pointer is after the one-byte instruction.
    fn inject_breakpoint(&self) -> Result<()>;
    /// Sets the local APIC's LINT0 to ExtINT and LINT1 to NMI, as firmware does.
    fn setup_lint(&self) -> Result<()>;

    /// Saves the complete vCPU state.
    fn state(&self, msr_indices: &[u32]) -> Result<VcpuState>;
    /// Restores what [`Vcpu::state`] saved.
    fn set_state(&self, state: &VcpuState) -> Result<()>;
}
