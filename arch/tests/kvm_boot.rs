// SPDX-License-Identifier: Apache-2.0
//! Boots tiny kernels built here on real KVM with the state this crate
//! produces (memory, boot info, registers, CPUID, MSRs), through both entry
//! protocols. Skipped, with a note, on machines without `/dev/kvm`.

#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use arch::{
    boot_fpu, boot_msrs, boot_regs, boot_sregs, build_cpuid, configure_boot, create_acpi_tables,
    load_kernel, ram_regions, AcpiConfig, BootConfig, BootProtocol, CpuidOptions,
};
use hypervisor::kvm::KvmHypervisor;
use hypervisor::{Hypervisor, VmExit};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const RAM: u64 = 32 << 20;
const LOAD_ADDR: u64 = 0x10_0000;
const DONE_PORT: u16 = 0x3c0;

/// 32-bit PVH entry: report [ebx] (start info magic) and CR0, then stop.
const PVH_CODE: &[u8] = &[
    0x8b, 0x03, // mov eax, [ebx]
    0xe7, 0x80, // out 0x80, eax
    0x0f, 0x20, 0xc0, // mov eax, cr0
    0xe7, 0x84, // out 0x84, eax
    0x66, 0xba, 0xc0, 0x03, // mov dx, 0x3c0
    0xee, // out dx, al
    0xf4, // hlt
];

/// 64-bit entry: report the zero page's "HdrS", cmd_line_ptr and CR3, then stop.
const LINUX64_CODE: &[u8] = &[
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
    0xe7, 0x80, // out 0x80, eax
    0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x228]
    0xe7, 0x88, // out 0x88, eax
    0x0f, 0x20, 0xd8, // mov rax, cr3
    0xe7, 0x84, // out 0x84, eax
    0x66, 0xba, 0xc0, 0x03, // mov dx, 0x3c0
    0xee, // out dx, al
    0xf4, // hlt
];

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// An x86_64 ELF with `code` loaded at 1 MiB, with a PVH note if `pvh`.
fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    let mut b = vec![0u8; 0x1000];
    put(&mut b, 0, b"\x7fELF\x02\x01\x01");
    put(&mut b, 16, &2u16.to_le_bytes());
    put(&mut b, 18, &62u16.to_le_bytes());
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &LOAD_ADDR.to_le_bytes());
    put(&mut b, 32, &64u64.to_le_bytes());
    put(&mut b, 52, &64u16.to_le_bytes());
    put(&mut b, 54, &56u16.to_le_bytes());
    put(&mut b, 56, &(1 + u16::from(pvh)).to_le_bytes());
    put(&mut b, 64, &1u32.to_le_bytes());
    put(&mut b, 72, &0x1000u64.to_le_bytes());
    put(&mut b, 80, &LOAD_ADDR.to_le_bytes());
    put(&mut b, 88, &LOAD_ADDR.to_le_bytes());
    put(&mut b, 96, &(code.len() as u64).to_le_bytes());
    put(&mut b, 104, &(code.len() as u64).to_le_bytes());
    b.extend_from_slice(code);
    if pvh {
        let note_off = b.len() as u64;
        for word in [4u32, 4, 18] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        b.extend_from_slice(b"Xen\0");
        b.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
        put(&mut b, 120, &4u32.to_le_bytes());
        put(&mut b, 128, &note_off.to_le_bytes());
        put(&mut b, 152, &20u64.to_le_bytes());
        put(&mut b, 160, &20u64.to_le_bytes());
    }
    b
}

/// Boots `image` and returns the port writes up to [`DONE_PORT`].
fn boot(image: Vec<u8>, expected: BootProtocol) -> Option<Vec<(u16, u32)>> {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: no /dev/kvm");
        return None;
    }
    let hyp = KvmHypervisor::new().unwrap();
    let vm = hyp.create_vm().unwrap();
    vm.create_irqchip().unwrap();
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(RAM)
        .into_iter()
        .map(|(a, s)| (a, s as usize))
        .collect();
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&ranges).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: `mem` maps RAM bytes at `host` and outlives the VM.
    unsafe { vm.set_memory_region(0, 0, RAM, host as u64, false) }.unwrap();

    let kernel = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
    assert_eq!(kernel.protocol, expected);
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: 1,
            ram_bytes: RAM,
        },
    )
    .unwrap();
    let cfg = BootConfig {
        rsdp_addr: Some(rsdp),
        ..BootConfig::new(&kernel, "console=ttyS0", RAM)
    };
    let info = configure_boot(&mem, &cfg).unwrap();

    let mut vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = build_cpuid(
        &hyp.supported_cpuid().unwrap(),
        0,
        1,
        &CpuidOptions { emulated: true },
    );
    vcpu.set_cpuid(&cpuid).unwrap();
    vcpu.set_msrs(&boot_msrs()).unwrap();
    let sregs = boot_sregs(&mem, kernel.protocol, &vcpu.sregs().unwrap()).unwrap();
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_fpu(&boot_fpu()).unwrap();
    vcpu.set_regs(&boot_regs(kernel.protocol, kernel.entry_addr, info))
        .unwrap();

    let mut seen = Vec::new();
    for _ in 0..100 {
        match vcpu.run().unwrap() {
            VmExit::IoOut(DONE_PORT, _) => return Some(seen),
            VmExit::IoOut(port, data) => {
                let mut v = [0u8; 4];
                v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                seen.push((port, u32::from_le_bytes(v)));
            }
            other => panic!("unexpected exit {other:?} after {seen:x?}"),
        }
    }
    panic!("guest never finished: {seen:x?}");
}

#[test]
fn pvh_guest_sees_start_info_in_ebx_and_protected_mode() {
    let Some(seen) = boot(elf(PVH_CODE, true), BootProtocol::Pvh) else {
        return;
    };
    assert_eq!(seen[0], (0x80, 0x336e_c578), "start info magic");
    let (port, cr0) = seen[1];
    assert_eq!(port, 0x84);
    assert_eq!(cr0 & 1, 1, "protected mode");
    assert_eq!(cr0 >> 31, 0, "paging off");
}

#[test]
fn linux64_guest_sees_zero_page_in_rsi_and_long_mode() {
    let Some(seen) = boot(elf(LINUX64_CODE, false), BootProtocol::Linux64) else {
        return;
    };
    assert_eq!(seen[0], (0x80, u32::from_le_bytes(*b"HdrS")));
    assert_eq!(seen[1], (0x88, 0x2_0000), "cmd_line_ptr");
    assert_eq!(seen[2], (0x84, 0x9000), "CR3");
}
