// SPDX-License-Identifier: Apache-2.0
//! Runs tiny real-mode guests on the KVM implementation.

#![allow(clippy::unwrap_used)]

use hypervisor::kvm::KvmHypervisor;
use hypervisor::{Hypervisor, Vcpu, Vm, VmExit};

const GUEST_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x4000;

struct Mapping(*mut u8);

impl Mapping {
    fn new(code: &[u8]) -> Self {
        // SAFETY: anonymous private mapping, checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: `p` maps MEM_SIZE bytes and `code` is shorter.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p as *mut u8, code.len()) };
        Mapping(p as *mut u8)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `new`.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, MEM_SIZE) };
    }
}

fn real_mode_vcpu(vm: &dyn Vm) -> Box<dyn Vcpu> {
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    vcpu
}

#[test]
fn port_writes_reach_userspace_in_order() {
    // mov dx, 0x3f8; mov al, 'S'; out dx, al; mov al, 'H'; out dx, al; mov dx, 0x3c0; out dx, al
    let code = [
        0xba, 0xf8, 0x03, 0xb0, b'S', 0xee, 0xb0, b'H', 0xee, 0xba, 0xc0, 0x03, 0xee,
    ];
    let mem = Mapping::new(&code);
    let hyp = KvmHypervisor::new().unwrap();
    let vm = hyp.create_vm().unwrap();
    vm.create_irqchip().unwrap();
    // SAFETY: `mem` outlives the VM in this test.
    unsafe { vm.set_memory_region(0, GUEST_ADDR, MEM_SIZE as u64, mem.0 as u64, false) }.unwrap();
    let mut vcpu = real_mode_vcpu(vm.as_ref());
    let mut seen = Vec::new();
    loop {
        match vcpu.run().unwrap() {
            VmExit::IoOut(0x3f8, data) => seen.push(data[0]),
            VmExit::IoOut(0x3c0, _) => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(seen, b"SH");
}

#[test]
fn vcpu_state_round_trips() {
    // inc ax; out 0x80, al (forever)
    let code = [0x40, 0xe6, 0x80, 0xeb, 0xfb];
    let mem = Mapping::new(&code);
    let hyp = KvmHypervisor::new().unwrap();
    let vm = hyp.create_vm().unwrap();
    vm.create_irqchip().unwrap();
    // SAFETY: `mem` outlives the VM in this test.
    unsafe { vm.set_memory_region(0, GUEST_ADDR, MEM_SIZE as u64, mem.0 as u64, false) }.unwrap();
    let mut vcpu = real_mode_vcpu(vm.as_ref());
    for _ in 0..3 {
        assert!(matches!(vcpu.run().unwrap(), VmExit::IoOut(0x80, _)));
    }
    let msrs = hyp.msr_index_list().unwrap();
    let state = vcpu.state(&msrs).unwrap();
    assert_eq!(state.regs.rax & 0xffff, 3);
    let json = serde_json::to_string(&state).unwrap();

    // A fresh vCPU in a fresh VM continues from the saved state.
    let vm2 = hyp.create_vm().unwrap();
    vm2.create_irqchip().unwrap();
    // SAFETY: `mem` outlives the VM in this test.
    unsafe { vm2.set_memory_region(0, GUEST_ADDR, MEM_SIZE as u64, mem.0 as u64, false) }.unwrap();
    let mut vcpu2 = vm2.create_vcpu(0).unwrap();
    vcpu2
        .set_state(&serde_json::from_str(&json).unwrap())
        .unwrap();
    match vcpu2.run().unwrap() {
        VmExit::IoOut(0x80, data) => assert_eq!(data[0], 4),
        other => panic!("unexpected exit {other:?}"),
    }
    let vm_state = vm2.state().unwrap();
    vm2.set_state(&vm_state).unwrap();
}

#[test]
fn ioeventfd_swallows_matching_writes() {
    // mov dx, 0x3f8; mov al, 7; out dx, al (matched); mov al, 8; out dx, al (exits)
    let code = [0xba, 0xf8, 0x03, 0xb0, 7, 0xee, 0xb0, 8, 0xee];
    let mem = Mapping::new(&code);
    let hyp = KvmHypervisor::new().unwrap();
    let vm = hyp.create_vm().unwrap();
    vm.create_irqchip().unwrap();
    // SAFETY: `mem` outlives the VM in this test.
    unsafe { vm.set_memory_region(0, GUEST_ADDR, MEM_SIZE as u64, mem.0 as u64, false) }.unwrap();
    let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    use std::os::fd::AsRawFd;
    let addr = hypervisor::IoEventAddress::Pio(0x3f8);
    vm.register_ioevent(efd.as_raw_fd(), addr, 1, Some(7))
        .unwrap();
    let mut vcpu = real_mode_vcpu(vm.as_ref());
    match vcpu.run().unwrap() {
        VmExit::IoOut(0x3f8, data) => assert_eq!(data, [8]),
        other => panic!("unexpected exit {other:?}"),
    }
    assert_eq!(efd.read().unwrap(), 1);
    vm.unregister_ioevent(efd.as_raw_fd(), addr, 1, Some(7))
        .unwrap();
}
