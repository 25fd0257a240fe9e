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
    /// Continue from a saved state, with RAM from `ram`.
    Restore {
        state: &'a VmSnapshot,
        ram: RamSource<'a>,
    },
}

/// Where a restored VM's RAM comes from.
pub(crate) enum RamSource<'a> {
    /// A fresh memfd that this fills before any vCPU runs.
    Fill(&'a dyn Fn(&GuestRam) -> Result<(), Error>),
    /// A VM already created with its RAM registered (incoming migration:
    /// made before the guest pauses at the source, so that adding the
    /// memory slots does not count towards the downtime).
    Platform(Platform),
}

/// A KVM VM with its irqchip and its RAM registered, nothing else yet.
#[derive(Debug)]
pub(crate) struct Platform {
    vm: Arc<dyn Vm>,
    ram: GuestRam,
}

impl Platform {
    /// Creates the VM for `config` over the RAM file `file`.
    pub(crate) fn create(
        hyp: &KvmHypervisor,
        config: &VmConfig,
        file: std::fs::File,
    ) -> Result<Self, Error> {
        check_config(hyp, config)?;
        let vm = hyp.create_vm()?;
        vm.create_irqchip()?;
        let ram = GuestRam::from_file(file, &arch::ram_regions(config.memory))?;
        ram.register(vm.as_ref())?;
        Ok(Platform { vm, ram })
    }

    /// The guest RAM, to fill.
    pub(crate) fn ram(&self) -> &GuestRam {
        &self.ram
    }
}

fn check_config(hyp: &KvmHypervisor, config: &VmConfig) -> Result<(), Error> {
    config::check_cpus(config.cpus, hyp.max_vcpus())?;
    arch::check_ram_bytes(config.memory)?;
    arch::check_vcpu_count(config.cpus)?;
    Ok(())
}

/// A VM whose vCPUs exist but do not run yet.
#[derive(Debug)]
pub(crate) struct BuiltVm {
    vm: Arc<dyn Vm>,
    ram: GuestRam,
    devices: Arc<DeviceManager>,
    shared: Vec<shmem::ShmemDevice>,
    vcpus: Vec<Box<dyn Vcpu>>,
    config: VmConfig,
    msr_indices: Vec<u32>,
}

impl BuiltVm {
    /// Starts one thread per vCPU.
    pub(crate) fn start(self, events: &Sender<VmEvent>) -> Result<RunningVm, Error> {
        self.start_with(events, RunState::default())
    }

    /// Starts one thread per vCPU, each parked before its first guest
    /// instruction until [`RunningVm::resume`].
    pub(crate) fn start_paused(self, events: &Sender<VmEvent>) -> Result<RunningVm, Error> {
        self.start_with(events, RunState::paused())
    }

    fn start_with(self, events: &Sender<VmEvent>, run: RunState) -> Result<RunningVm, Error> {
        let run = Arc::new(run);
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (id, vcpu) in (0u32..).zip(self.vcpus) {
            let t = VcpuThread::spawn(id, vcpu, self.devices.clone(), run.clone(), events.clone())
                .map_err(Error::Thread)?;
            threads.push(t);
        }
        Ok(RunningVm {
            threads: std::sync::Mutex::new(threads),
            run,
            shared: self.shared,
            devices: self.devices,
            ram: self.ram,
            vm: self.vm,
            config: self.config,
            msr_indices: self.msr_indices,
        })
    }
}

/// Builds the VM of `config` and starts it.
pub(crate) fn boot(
    hyp: &KvmHypervisor,
    config: &VmConfig,
    events: &Sender<VmEvent>,
    start: Start<'_>,
) -> Result<RunningVm, Error> {
    let built = build(hyp, config, events, start)?;
    let mut clock = Stopwatch(std::time::Instant::now());
    let running = built.start(events)?;
    clock.lap("starting vCPU threads");
    Ok(running)
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

/// Builds the VM of `config`: memory, devices and vCPUs, ready to start.
pub(crate) fn build(
    hyp: &KvmHypervisor,
    config: &VmConfig,
    events: &Sender<VmEvent>,
    start: Start<'_>,
) -> Result<BuiltVm, Error> {
    let mut clock = Stopwatch(std::time::Instant::now());
    let regions = arch::ram_regions(config.memory);
    let new_vm = || -> Result<Arc<dyn Vm>, Error> {
        check_config(hyp, config)?;
        let vm = hyp.create_vm()?;
        vm.create_irqchip()?;
        Ok(vm)
    };
    // `registered`: the memory slots already exist (only for a migration).
    let (vm, ram, fill, state, registered) = match start {
        Start::Restore {
            state,
            ram: RamSource::Platform(p),
        } => (p.vm, p.ram, None, Some(state), true),
        Start::Restore {
            state,
            ram: RamSource::Fill(fill),
        } => (
            new_vm()?,
            GuestRam::new(&regions)?,
            Some(fill),
            Some(state),
            false,
        ),
        Start::Fresh => (new_vm()?, GuestRam::new(&regions)?, None, None, false),
    };
    let migrated = registered;
    clock.lap("creating the VM and mapping RAM");

    // KVM takes milliseconds to add a large memory slot; load the guest and
    // set up the vCPUs meanwhile (neither needs the slot).
    let (devices, shared, vcpus) = std::thread::scope(|s| {
        let slots = s.spawn(|| {
            if registered {
                Ok(0)
            } else {
                ram.register(vm.as_ref())
            }
        });
        let prepared = (|| {
            let mem = ram.memory();
            let kernel = match (state, fill) {
                (None, _) => Some(load_guest(config, mem)?),
                (Some(_), Some(fill)) => {
                    fill(&ram)?;
                    None
                }
                (Some(_), None) => None,
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
            for (i, g) in config.groups.iter().enumerate() {
                // Only a migration destination takes the membership over; a
                // restored snapshot joins afresh (its original may still run).
                let takeover = state
                    .filter(|_| migrated)
                    .and_then(|s| crate::state::group_identity(s, i));
                shared.push(shmem::attach_group(&platform, g, takeover.as_ref())?);
            }
            for f in &config.plain_shmem {
                shared.push(shmem::attach_plain(&platform, f)?);
            }
            if let Some(state) = state {
                // Doorbells that arrive before the vCPUs (and their local
                // APICs) are restored would be injected into nothing: keep
                // them in the eventfds until then.
                for s in &shared {
                    s.hold_doorbells();
                }
                crate::state::restore_devices(&devices, &shared, &state.devices)?;
            }
            devices.map_bars()?;
            clock.lap("devices");
            let vcpus = match (state, &kernel) {
                (Some(state), _) => crate::state::restore_vcpus(vm.as_ref(), state)?,
                (None, Some(kernel)) => create_vcpus(hyp, vm.as_ref(), config, mem, kernel)?,
                (None, None) => return Err(Error::Guest("no kernel was loaded".into())),
            };
            // A migrated VM keeps them held until the source's `go`
            // (`RunningVm::go_live`): until then the source may resume and
            // must find every doorbell that arrived meanwhile.
            if state.is_some() && !migrated {
                for s in &shared {
                    s.release_doorbells();
                }
            }
            clock.lap("vCPUs");
            Ok::<_, Error>((devices, shared, vcpus))
        })();
        let registered = slots.join().unwrap_or(Err(MemoryError::RegisterPanicked));
        clock.lap("waiting for the memory slots");
        registered?;
        prepared
    })?;

    Ok(BuiltVm {
        vm,
        ram,
        devices,
        shared,
        vcpus,
        config: config.clone(),
        msr_indices: hyp.msr_index_list()?,
    })
}
