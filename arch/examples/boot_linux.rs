// SPDX-License-Identifier: Apache-2.0
//! Boots a Linux kernel with this crate's platform setup on one vCPU, with
//! just enough device emulation to see the console (COM1 output, the
//! sleep-control power-off, all-ones for everything else), for checking the
//! boot information and ACPI tables against a real kernel. A development
//! tool, not the VMM.
//!
//! `cargo run -p arch --example boot_linux -- KERNEL SECONDS [CMDLINE]`

use std::error::Error;
use std::io::Write;
use std::time::{Duration, Instant};

use arch::cpuid::EMULATOR_KERNEL_PARAMS;
use arch::{
    boot_fpu, boot_msrs, boot_regs, boot_sregs, build_cpuid, configure_boot, create_acpi_tables,
    load_kernel, open_image, ram_regions, AcpiConfig, BootConfig, CpuidOptions,
};
use hypervisor::kvm::KvmHypervisor;
use hypervisor::{Hypervisor, VmExit};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const RAM: u64 = 256 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: boot_linux KERNEL SECONDS [CMDLINE]";
    let kernel_path = args.next().ok_or(usage)?;
    let seconds: u64 = args.next().ok_or(usage)?.parse()?;
    let cmdline = args.next().unwrap_or_else(|| {
        format!("console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 nokaslr mitigations=off {EMULATOR_KERNEL_PARAMS}")
    });

    let hyp = KvmHypervisor::new()?;
    let vm = hyp.create_vm()?;
    vm.create_irqchip()?;
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(RAM)
        .into_iter()
        .map(|(a, s)| (a, s as usize))
        .collect();
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&ranges)?;
    for (slot, (addr, size)) in ranges.iter().enumerate() {
        let host = mem.get_host_address(*addr)?;
        // SAFETY: `mem` maps `size` bytes at `host` and lives until exit.
        unsafe { vm.set_memory_region(slot as u32, addr.0, *size as u64, host as u64, false) }?;
    }

    let kernel = load_kernel(&mem, &mut open_image(kernel_path.as_ref())?)?;
    eprintln!(
        "kernel: {:?} entry {:#x}",
        kernel.protocol, kernel.entry_addr.0
    );
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: 1,
            ram_bytes: RAM,
        },
    )?;
    let info = configure_boot(
        &mem,
        &BootConfig {
            rsdp_addr: Some(rsdp),
            ..BootConfig::new(&kernel, &cmdline, RAM)
        },
    )?;

    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid(&build_cpuid(
        &hyp.supported_cpuid()?,
        0,
        1,
        &CpuidOptions { emulated: true },
    ))?;
    vcpu.set_msrs(&boot_msrs())?;
    vcpu.setup_lint()?;
    vcpu.set_sregs(&boot_sregs(&mem, kernel.protocol, &vcpu.sregs()?)?)?;
    vcpu.set_fpu(&boot_fpu())?;
    vcpu.set_regs(&boot_regs(kernel.protocol, kernel.entry_addr, info))?;

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut out = std::io::stdout();
    while Instant::now() < deadline {
        match vcpu.run()? {
            VmExit::IoOut(0x3f8, data) => {
                out.write_all(data)?;
                out.flush()?;
            }
            VmExit::IoOut(0x3c0, data) => {
                eprintln!("\n[sleep control write {:#x}: power-off]", data[0]);
                return Ok(());
            }
            VmExit::IoOut(0x64, [0xfe]) | VmExit::IoOut(0x3c4, [1]) => {
                eprintln!("\n[reset]");
                return Ok(());
            }
            VmExit::IoIn(0x3fd, data) => data.fill(0x60), // LSR: transmitter empty
            VmExit::IoIn(0x3f8..=0x3ff, data) => data.fill(0),
            VmExit::IoIn(_, data) | VmExit::MmioRead(_, data) => data.fill(0xff),
            VmExit::IoOut(..) | VmExit::MmioWrite(..) | VmExit::Interrupted => {}
            other => {
                eprintln!("\n[exit {other:?}]");
                return Ok(());
            }
        }
    }
    eprintln!("\n[time limit]");
    Ok(())
}
