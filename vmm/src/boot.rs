// SPDX-License-Identifier: Apache-2.0
//! Building a VM: from its configuration (a fresh boot) or from a saved
//! state (restore, incoming migration).

use std::sync::mpsc::Sender;
use std::sync::Arc;

use hypervisor::kvm::KvmHypervisor;
use hypervisor::{Hypervisor, Vcpu, Vm};

use crate::config::{self, VmConfig};
use crate::device_manager::DeviceManager;
use crate::interrupts::IrqRouting;
use crate::memory::{GuestRam, MemoryError};
use crate::shmem;
use crate::snapshot::VmSnapshot;
use crate::vcpu::{RunState, VcpuThread};
use crate::vm::{Error, RunningVm};
use crate::VmEvent;

/// MSR that PVM hosts answer with "PVM" (0x4d5650): guests that are not PVM
/// kernels then run in KVM's instruction emulator.
const MSR_PVM_SIGNATURE: u32 = 0x4b56_4d11;
const PVM_SIGNATURE: u64 = 0x4d_5650;

/// How a VM starts.
pub(crate) enum Start<'a> {
    /// Load the kernel and boot it.
    Fresh,
    /// Continue from a saved state; `fill_ram` writes the saved RAM into the
    /// fresh guest memory file before any vCPU runs.
    Restore {
        state: &'a VmSnapshot,
        fill_ram: &'a dyn Fn(&GuestRam) -> Result<(), Error>,
    },
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

pub(crate) fn boot(
    hyp: &KvmHypervisor,
    config: &VmConfig,
    events: &Sender<VmEvent>,
    start: Start<'_>,
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
            let kernel = match &start {
                Start::Fresh => Some(load_guest(config, mem)?),
                Start::Restore { fill_ram, .. } => {
                    fill_ram(&ram)?;
                    None
                }
            };
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
            if let Start::Restore { state, .. } = &start {
                crate::state::restore_devices(&devices, &shared, &state.devices)?;
            }
            devices.map_bars()?;
            clock.lap("devices");
            let vcpus = match (&start, &kernel) {
                (Start::Fresh, Some(kernel)) => {
                    create_vcpus(hyp, vm.as_ref(), config, mem, kernel)?
                }
                (_, _) => match &start {
                    Start::Restore { state, .. } => {
                        crate::state::restore_vcpus(vm.as_ref(), state)?
                    }
                    Start::Fresh => return Err(Error::Guest("no kernel was loaded".into())),
                },
            };
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
        shared,
        devices: devices.clone(),
        ram,
        vm,
        config: config.clone(),
        msr_indices: hyp.msr_index_list()?,
    };
    for (id, vcpu) in (0u32..).zip(vcpus) {
        let t = VcpuThread::spawn(id, vcpu, devices.clone(), run.clone(), events.clone())
            .map_err(Error::Thread)?;
        running.threads.push(t);
    }
    clock.lap("starting vCPU threads");
    Ok(running)
}
