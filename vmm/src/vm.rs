// SPDX-License-Identifier: Apache-2.0
//! Building a VM from its configuration, and the control loop that runs it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use hypervisor::kvm::KvmHypervisor;
use hypervisor::{Hypervisor, Vcpu, Vm};

use crate::config::{self, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::interrupts::IrqRouting;
use crate::memory::{GuestRam, MemoryError};
use crate::shmem::{self, ShmemDevice};
use crate::vcpu::{stop_all, RunState, VcpuThread};
use crate::{signals, ExitReason, VmEvent};

/// MSR that PVM hosts answer with "PVM" (0x4d5650): guests that are not PVM
/// kernels then run in KVM's instruction emulator.
const MSR_PVM_SIGNATURE: u32 = 0x4b56_4d11;
const PVM_SIGNATURE: u64 = 0x4d_5650;

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
}

/// A booted VM with its vCPU threads running.
struct RunningVm {
    // Order matters on drop: threads stop before devices and memory go.
    threads: Vec<VcpuThread>,
    run: Arc<RunState>,
    _shared: Vec<ShmemDevice>,
    _devices: Arc<DeviceManager>,
    _ram: GuestRam,
    _vm: Arc<dyn Vm>,
}

impl RunningVm {
    fn stop(&mut self) {
        stop_all(&self.run, &mut self.threads);
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_emulated(vcpu: &dyn Vcpu) -> bool {
    vcpu.msrs(&[MSR_PVM_SIGNATURE])
        .ok()
        .and_then(|m| m.first().map(|e| e.data == PVM_SIGNATURE))
        .unwrap_or(false)
}

fn configure_vcpu(
    vcpu: &dyn Vcpu,
    id: u32,
    config: &VmConfig,
    supported: &[hypervisor::x86_64::CpuIdEntry],
    emulated: bool,
) -> Result<(), Error> {
    let opts = arch::CpuidOptions { emulated };
    let cpuid = arch::build_cpuid(supported, id, config.cpus, &opts);
    vcpu.set_cpuid(&cpuid).map_err(|e| Error::Vcpu(id, e))?;
    vcpu.set_msrs(&arch::boot_msrs())
        .map_err(|e| Error::Vcpu(id, e))?;
    vcpu.setup_lint().map_err(|e| Error::Vcpu(id, e))?;
    Ok(())
}

/// Logs how long each start-up phase took (at debug level): the start-up
/// profile behind `scripts/bench-boot`.
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    fn lap(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        log::debug!("boot: {phase} took {} us", (now - self.0).as_micros());
        self.0 = now;
    }
}

/// Loads the kernel and initramfs, writes ACPI tables and boot information.
fn load_guest(
    config: &VmConfig,
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<arch::KernelEntry, Error> {
    let mut kernel_file =
        arch::open_image(&config.kernel).map_err(|e| Error::Kernel(config.kernel.clone(), e))?;
    let kernel = arch::load_kernel(mem, &mut kernel_file)
        .map_err(|e| Error::Kernel(config.kernel.clone(), e))?;
    let initramfs = match &config.initramfs {
        Some(path) => {
            let mut f = arch::open_image(path).map_err(|e| Error::Initramfs(path.clone(), e))?;
            Some(
                arch::load_initramfs(mem, &mut f, kernel.kernel_end)
                    .map_err(|e| Error::Initramfs(path.clone(), e))?,
            )
        }
        None => None,
    };
    let acpi = arch::AcpiConfig {
        num_cpus: config.cpus,
        ram_bytes: config.memory,
    };
    let rsdp = arch::create_acpi_tables(mem, &acpi).map_err(Error::Acpi)?;
    let mut boot = arch::BootConfig::new(&kernel, &config.cmdline, config.memory);
    boot.initramfs = initramfs;
    boot.rsdp_addr = Some(rsdp);
    arch::configure_boot(mem, &boot).map_err(Error::Boot)?;
    Ok(kernel)
}

/// Creates and configures every vCPU; vCPU 0 gets the kernel's entry state,
/// the others wait for INIT/SIPI.
fn create_vcpus(
    hyp: &KvmHypervisor,
    vm: &dyn Vm,
    config: &VmConfig,
    mem: &vm_memory::GuestMemoryMmap,
    kernel: &arch::KernelEntry,
) -> Result<Vec<Box<dyn Vcpu>>, Error> {
    let supported = hyp.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    let mut emulated = false;
    for id in 0..config.cpus {
        let vcpu = vm.create_vcpu(id).map_err(|e| Error::Vcpu(id, e))?;
        if id == 0 {
            emulated = is_emulated(vcpu.as_ref());
            if emulated {
                log::info!("KVM is PVM: this guest runs in KVM's instruction emulator");
            }
        }
        configure_vcpu(vcpu.as_ref(), id, config, &supported, emulated)?;
        if id == 0 {
            let base = vcpu.sregs().map_err(|e| Error::Vcpu(id, e))?;
            let sregs = arch::boot_sregs(mem, kernel.protocol, &base).map_err(Error::BootRegs)?;
            vcpu.set_sregs(&sregs).map_err(|e| Error::Vcpu(id, e))?;
            let regs = arch::boot_regs(
                kernel.protocol,
                kernel.entry_addr,
                kernel.protocol.boot_info_addr(),
            );
            vcpu.set_regs(&regs).map_err(|e| Error::Vcpu(id, e))?;
            vcpu.set_fpu(&arch::boot_fpu())
                .map_err(|e| Error::Vcpu(id, e))?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

fn boot(
    hyp: &KvmHypervisor,
    config: &VmConfig,
    events: &Sender<VmEvent>,
) -> Result<RunningVm, Error> {
    let mut clock = Stopwatch(std::time::Instant::now());
    config::check_cpus(config.cpus, hyp.max_vcpus())?;
    arch::check_ram_bytes(config.memory)?;
    arch::check_vcpu_count(config.cpus)?;

    let vm = hyp.create_vm()?;
    clock.lap("creating the VM");
    vm.create_irqchip()?;
    clock.lap("in-kernel irqchip and PIT");
    let ram = GuestRam::new(&arch::ram_regions(config.memory))?;
    clock.lap("mapping RAM");

    // KVM takes milliseconds to add a large memory slot; load the guest and
    // set up the vCPUs meanwhile (neither needs the slot).
    let (devices, shared, vcpus) = std::thread::scope(|s| {
        let slots = s.spawn(|| ram.register(vm.as_ref()));
        let prepared = (|| {
            let mem = ram.memory();
            let kernel = load_guest(config, mem)?;
            clock.lap("loading the guest");
            let (mmio64_base, mmio64_size) = arch::mmio64_window(config.memory);
            let devices = Arc::new(DeviceManager::new(
                vm.as_ref(),
                &config.serial,
                events.clone(),
                (mmio64_base.0, mmio64_size),
            )?);
            let routing = Arc::new(IrqRouting::new(vm.clone()));
            let platform = shmem::Platform {
                vm: &vm,
                devices: &devices,
                routing: &routing,
            };
            let mut shared = Vec::new();
            for g in &config.groups {
                shared.push(shmem::attach_group(&platform, g)?);
            }
            for f in &config.plain_shmem {
                shared.push(shmem::attach_plain(&platform, f)?);
            }
            devices.map_bars()?;
            clock.lap("devices");
            let vcpus = create_vcpus(hyp, vm.as_ref(), config, mem, &kernel)?;
            clock.lap("vCPUs");
            Ok::<_, Error>((devices, shared, vcpus))
        })();
        let registered = slots.join().unwrap_or(Err(MemoryError::RegisterPanicked));
        clock.lap("waiting for the memory slots");
        registered?;
        prepared
    })?;

    let run = Arc::new(RunState::default());
    let mut running = RunningVm {
        threads: Vec::with_capacity(vcpus.len()),
        run: run.clone(),
        _shared: shared,
        _devices: devices.clone(),
        _ram: ram,
        _vm: vm,
    };
    for (id, vcpu) in (0u32..).zip(vcpus) {
        let t = VcpuThread::spawn(id, vcpu, devices.clone(), run.clone(), events.clone())
            .map_err(Error::Thread)?;
        running.threads.push(t);
    }
    clock.lap("starting vCPU threads");
    Ok(running)
}

fn control_loop(rx: &Receiver<VmEvent>) -> VmEvent {
    // The sender side lives in `run`, so recv only fails if that is gone.
    rx.recv()
        .unwrap_or_else(|_| VmEvent::Failed("control channel closed".into()))
}

/// Boots the VM described by `config` and runs it until the guest powers
/// off, a signal arrives, or something fails. Reboots on guest reset when
/// `config.reboot` is set.
pub fn run(config: VmConfig) -> Result<ExitReason, Error> {
    let hyp = KvmHypervisor::new()?;
    let (tx, rx) = channel();
    signals::forward_terminating_signals(tx.clone()).map_err(Error::Thread)?;
    loop {
        let mut vm = boot(&hyp, &config, &tx)?;
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
            }
            VmEvent::Reset => return Ok(ExitReason::Reset),
        }
    }
}
