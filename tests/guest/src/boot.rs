// SPDX-License-Identifier: Apache-2.0
//! Boot code: the PVH note, the 32-bit PVH entry, the identity page tables,
//! the 64-bit GDT and the application-processor trampoline.
//!
//! The BSP enters at `pvh_start32` (32-bit protected mode, paging off,
//! `ebx` = `hvm_start_info`), zeroes `.bss`, builds page tables that
//! identity-map the first 4 GiB with 2 MiB pages (the top 1 GiB, with the PCI
//! windows, ECAM, IOAPIC and local APICs, uncached), enters long mode and
//! calls `shoal_bsp_main` with the start info address.
//!
//! An ELF loader that ignores the PVH note enters at the ELF entry point,
//! `linux_start64`, with the Linux 64-bit boot protocol: long mode on the
//! loader's page tables, `rsi` = zero page. It loads our GDT, builds the
//! same page tables and calls `shoal_bsp_main` with the zero page.
//!
//! An AP starts at the trampoline copied to [`TRAMPOLINE_ADDR`] (SIPI vector
//! `TRAMPOLINE_ADDR >> 12`), switches to 32-bit protected mode, jumps to
//! `ap_entry32` in the image, enters long mode with the same page tables,
//! takes the next free stack and calls `shoal_ap_main`.

use core::arch::global_asm;
use core::ptr::addr_of;

/// Guest-physical address the AP trampoline is copied to (see docs/platform.md).
pub const TRAMPOLINE_ADDR: u64 = 0x8000;
/// SIPI vector that starts an AP at [`TRAMPOLINE_ADDR`].
pub const SIPI_VECTOR: u8 = (TRAMPOLINE_ADDR >> 12) as u8;
/// Number of application processors that get a stack; more are parked.
pub const MAX_APS: u32 = 63;
/// Stack size of each application processor.
const AP_STACK_SIZE: u32 = 8192;
/// How the guest was entered; the second argument of
/// [`crate::shoal_bsp_main`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BootProtocol {
    /// PVH: 32-bit entry from the ELF note, first argument `hvm_start_info`.
    Pvh = 0,
    /// Linux 64-bit boot protocol: ELF entry point, first argument the zero page.
    Linux64 = 1,
}

impl BootProtocol {
    /// The protocol from its number (anything unknown is PVH).
    pub fn from_u32(value: u32) -> Self {
        if value == BootProtocol::Linux64 as u32 {
            BootProtocol::Linux64
        } else {
            BootProtocol::Pvh
        }
    }

    /// Name printed on the `SHOAL-TG entry` line.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Pvh => "pvh",
            BootProtocol::Linux64 => "linux64",
        }
    }
}

/// Stack size of the bootstrap processor.
const BSP_STACK_SIZE: u32 = 32768;

global_asm!(
    r#"
    .set CR0_PE, 0x1
    .set CR0_PG, 0x80000000
    .set CR4_PAE, 0x20
    .set MSR_EFER, 0xc0000080
    .set EFER_LME, 0x100
    .set SEL_CODE64, 0x08
    .set SEL_DATA, 0x10
    .set SEL_CODE32, 0x18

    /* Long-mode switch shared by the BSP and the APs (32-bit code, flat
       segments loaded, page tables built): PAE, CR3, EFER.LME, paging, far
       jump to the 64-bit code segment. */
    .macro ENTER_LONG_MODE target
        movl %cr4, %eax
        orl $CR4_PAE, %eax
        movl %eax, %cr4
        movl $shoal_pml4, %eax
        movl %eax, %cr3
        movl $MSR_EFER, %ecx
        rdmsr
        orl $EFER_LME, %eax
        wrmsr
        movl %cr0, %eax
        orl $(CR0_PG | CR0_PE), %eax
        movl %eax, %cr0
        lgdtl shoal_gdt_ptr
        ljmpl $SEL_CODE64, $\target
    .endm

    /* Zeroes .bss (page tables and Rust statics; the stacks are not in
       it). Valid in 32-bit and 64-bit code. */
    .macro ZERO_BSS
        movl $__bss_start, %edi
        movl $__bss_end, %ecx
        subl %edi, %ecx
        shrl $2, %ecx
        xorl %eax, %eax
        rep stosl
    .endm

    /* Identity map of the first 4 GiB with 2 MiB pages: PML4[0] -> PDPT,
       PDPT[0..4] -> the four page directories; 0..3 GiB write-back
       (P|RW|PS), 3..4 GiB uncached (P|RW|PWT|PCD|PS) for the PCI windows,
       ECAM, IOAPIC and local APICs. Valid in 32-bit and 64-bit code. */
    .macro BUILD_PAGE_TABLES
        movl $shoal_pdpt, %eax
        orl $0x3, %eax
        movl %eax, shoal_pml4
        movl $shoal_pd, %eax
        orl $0x3, %eax
        xorl %ecx, %ecx
    101:
        movl %eax, shoal_pdpt(,%ecx,8)
        addl $0x1000, %eax
        incl %ecx
        cmpl $4, %ecx
        jne 101b
        xorl %ecx, %ecx
    102:
        movl %ecx, %eax
        shll $21, %eax
        orl $0x83, %eax
        cmpl $1536, %ecx
        jb 103f
        orl $0x18, %eax
    103:
        movl %eax, shoal_pd(,%ecx,8)
        incl %ecx
        cmpl $2048, %ecx
        jne 102b
    .endm

    /* PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen". The
       descriptor is 8 bytes (upper half zero), as Linux emits it, so
       readers taking either 4 or 8 bytes find the entry. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi

    /* Flat data segments from our own GDT before touching memory. */
    lgdtl shoal_gdt_ptr
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    ljmpl $SEL_CODE32, $1f
1:
    ZERO_BSS
    BUILD_PAGE_TABLES
    ENTER_LONG_MODE bsp_start64

    .code64
bsp_start64:
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $(shoal_bsp_stack + {bsp_stack_size}), %rsp
    movl %esi, %edi
    movl ${proto_pvh}, %esi
    call shoal_bsp_main
5:
    cli
    hlt
    jmp 5b

    /* Linux 64-bit boot protocol entry (the ELF entry point, used when the
       loader ignores the PVH note): long mode on the loader's page tables
       and GDT, rsi = zero page, no stack. Switch to our GDT, reload CS,
       build our page tables and continue like the PVH path. */
    .code64
    .global linux_start64
linux_start64:
    cli
    cld
    movq %rsi, %r12
    movq $(shoal_bsp_stack + {bsp_stack_size}), %rsp
    lgdt shoal_gdt_ptr
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    pushq $SEL_CODE64
    leaq 7f(%rip), %rax
    pushq %rax
    lretq
7:
    ZERO_BSS
    BUILD_PAGE_TABLES
    movl $shoal_pml4, %eax
    movq %rax, %cr3
    movl %r12d, %edi
    movl ${proto_linux64}, %esi
    call shoal_bsp_main
8:
    cli
    hlt
    jmp 8b

    /* AP path, reached from the trampoline in 32-bit protected mode. */
    .code32
ap_entry32:
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    ENTER_LONG_MODE ap_start64

    .code64
ap_start64:
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax
    lock xaddl %eax, shoal_ap_next_slot(%rip)
    cmpl ${max_aps}, %eax
    jae 6f
    movl %eax, %edi
    incl %eax
    imull ${ap_stack_size}, %eax
    movq $shoal_ap_stacks, %rsp
    addq %rax, %rsp
    call shoal_ap_main
6:
    cli
    hlt
    jmp 6b

    /* Real-mode trampoline, copied to {tramp_addr} and entered by SIPI
       with CS = {tramp_addr} >> 4, IP = 0. */
    .code16
    .global shoal_ap_tramp_start
shoal_ap_tramp_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl {tramp_addr} + shoal_ap_tramp_gdt_ptr - shoal_ap_tramp_start
    movl %cr0, %eax
    orl $CR0_PE, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .balign 8
shoal_ap_tramp_gdt_ptr:
    .word shoal_gdt_end - shoal_gdt - 1
    .long shoal_gdt
    .global shoal_ap_tramp_end
shoal_ap_tramp_end:
    .code64
    .balign 16, 0x90

    .section .rodata.boot, "a", @progbits
    .balign 16
shoal_gdt:
    .quad 0
    .quad 0x00af9b000000ffff /* 0x08: 64-bit code, accessed */
    .quad 0x00cf93000000ffff /* 0x10: flat data, accessed */
    .quad 0x00cf9b000000ffff /* 0x18: flat 32-bit code, accessed */
    .global shoal_gdt_tss
shoal_gdt_tss:
    .quad 0 /* 0x20: the BSP's 64-bit TSS, filled in by `interrupts::init` */
    .quad 0
shoal_gdt_end:
    .balign 8
shoal_gdt_ptr:
    .word shoal_gdt_end - shoal_gdt - 1
    .quad shoal_gdt

    .section .data.boot, "aw", @progbits
    .balign 4
shoal_ap_next_slot:
    .long 0

    .section .bss.pagetables, "aw", @nobits
    .balign 4096
shoal_pml4:
    .skip 4096
shoal_pdpt:
    .skip 4096
shoal_pd:
    .skip 4 * 4096

    .section .stack, "aw", @nobits
    .balign 4096
shoal_bsp_stack:
    .skip {bsp_stack_size}
shoal_ap_stacks:
    .skip {ap_stack_size} * {max_aps}

    .text
"#,
    bsp_stack_size = const BSP_STACK_SIZE,
    ap_stack_size = const AP_STACK_SIZE,
    max_aps = const MAX_APS,
    tramp_addr = const TRAMPOLINE_ADDR,
    proto_pvh = const BootProtocol::Pvh as u32,
    proto_linux64 = const BootProtocol::Linux64 as u32,
    options(att_syntax)
);

extern "C" {
    static shoal_ap_tramp_start: u8;
    static shoal_ap_tramp_end: u8;
}

/// Copies the AP trampoline to [`TRAMPOLINE_ADDR`].
pub fn install_trampoline() {
    let start = addr_of!(shoal_ap_tramp_start) as usize;
    let end = addr_of!(shoal_ap_tramp_end) as usize;
    for offset in 0..end.saturating_sub(start) {
        // SAFETY: the source bytes are the trampoline inside our own image;
        // the destination is the page docs/platform.md reserves for it, which
        // nothing else in the guest uses, and it is identity-mapped.
        unsafe {
            let byte = core::ptr::read_volatile((start + offset) as *const u8);
            core::ptr::write_volatile((TRAMPOLINE_ADDR as usize + offset) as *mut u8, byte);
        }
    }
}
