// SPDX-License-Identifier: Apache-2.0
//! The IDT: every vector goes through one assembly stub to
//! [`shoal_interrupt`]. Exceptions (vectors 0-31) print
//! `SHOAL-TG error exception <n> ...` and power off; other vectors call the
//! handler a scenario registered with [`set_handler`], then EOI the local
//! APIC. Handlers must not print: the code they interrupted may hold the
//! serial lock (count or record, and let the scenario print).
//!
//! External vectors run on their own stack (IST 1 of the BSP's TSS): the
//! guest is built for the host target, whose ABI lets leaf functions keep
//! data in the 128-byte red zone below `rsp`, and an interrupt frame pushed
//! on the interrupted stack would overwrite it (seen as lost doorbell
//! writes). Exceptions stay on the current stack (they power off anyway),
//! so APs, which never enable interrupts, need no TSS.

use core::arch::{asm, global_asm};
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::{apic, power, serial};

const VECTORS: usize = 256;
/// Bytes per stub in `shoal_isr_table` (see the assembly below).
const STUB_SIZE: u64 = 16;
const SEL_CODE64: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate.
const GATE_INTERRUPT: u64 = 0x8e;
/// Interrupt stack table slot of external vectors.
const IST_EXTERNAL: u64 = 1;
/// GDT selector of the TSS (`shoal_gdt_tss` in `boot`).
const SEL_TSS: u16 = 0x20;
/// Size of the TSS (no I/O bitmap).
const TSS_SIZE: u64 = 104;
/// Bytes of the interrupt stack.
const IST_STACK_BYTES: usize = 16384;
/// First vector that is not an exception.
pub const FIRST_EXTERNAL: u8 = 32;
/// The local APIC spurious vector (see `apic`): ignored.
const SPURIOUS: usize = 0xff;

global_asm!(
    r#"
    .text
    .balign 16, 0x90
    .global shoal_isr_table
shoal_isr_table:
    .set vec, 0
    .rept 256
    .balign 16, 0x90
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp shoal_isr_common
    .set vec, vec + 1
    .endr

shoal_isr_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %rbp
    movq %rsp, %rdi
    movq %rsp, %rbp
    andq $-16, %rsp
    cld
    call shoal_interrupt
    movq %rbp, %rsp
    popq %rbp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp
    iretq
"#,
    options(att_syntax)
);

extern "C" {
    static shoal_isr_table: u8;
    /// The 16-byte TSS descriptor slot of the GDT (`boot`).
    static shoal_gdt_tss: u8;
}

/// The 64-bit TSS: only IST 1 and the I/O map base are used.
#[repr(C, align(16))]
struct Tss([AtomicU32; 26]);

static TSS: Tss = Tss([const { AtomicU32::new(0) }; 26]);

/// The stack external interrupts run on.
#[repr(C, align(16))]
struct IstStack([AtomicU64; IST_STACK_BYTES / 8]);

static IST_STACK: IstStack = IstStack([const { AtomicU64::new(0) }; IST_STACK_BYTES / 8]);

/// What the stub saved, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    rbp: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    /// Vector number.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// Interrupted instruction pointer.
    pub rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// A scenario's handler for an external vector; gets the vector.
pub type Handler = fn(u8);

static IDT: [AtomicU64; VECTORS * 2] = [const { AtomicU64::new(0) }; VECTORS * 2];
static HANDLERS: [AtomicUsize; VECTORS] = [const { AtomicUsize::new(0) }; VECTORS];

/// Fills the IDT (once, on the BSP) and loads it on this CPU.
pub fn init() {
    let table = addr_of!(shoal_isr_table) as u64;
    for (vector, pair) in IDT.chunks_exact(2).enumerate() {
        let stub = table + vector as u64 * STUB_SIZE;
        let ist = if vector >= usize::from(FIRST_EXTERNAL) {
            IST_EXTERNAL
        } else {
            0
        };
        let low = (stub & 0xffff)
            | (SEL_CODE64 << 16)
            | (ist << 32)
            | (GATE_INTERRUPT << 40)
            | (((stub >> 16) & 0xffff) << 48);
        if let [lo, hi] = pair {
            lo.store(low, Ordering::Relaxed);
            hi.store(stub >> 32, Ordering::Relaxed);
        }
    }
    load_tss();
    load();
}

/// Fills the TSS (IST 1 = top of [`IST_STACK`]), writes its descriptor
/// into the GDT and loads the task register (BSP only, once).
fn load_tss() {
    let stack_top = IST_STACK.0.as_ptr() as u64 + IST_STACK_BYTES as u64;
    let [ist_low, ist_high, iomap] = [9, 10, 25].map(|i| TSS.0.get(i));
    if let (Some(low), Some(high), Some(iomap)) = (ist_low, ist_high, iomap) {
        low.store(stack_top as u32, Ordering::Relaxed);
        high.store((stack_top >> 32) as u32, Ordering::Relaxed);
        // I/O map base (upper half of the last dword) past the end: no bitmap.
        iomap.store((TSS_SIZE as u32) << 16, Ordering::Relaxed);
    }
    let base = &TSS as *const Tss as u64;
    let limit = TSS_SIZE - 1;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let slot = addr_of!(shoal_gdt_tss) as *mut u64;
    // SAFETY: `shoal_gdt_tss` is the 16-byte, 8-aligned TSS slot of our own
    // GDT (identity-mapped, writable); only the BSP writes it, once, before
    // loading the task register, and no CPU has loaded that selector yet.
    unsafe {
        core::ptr::write_volatile(slot, low);
        core::ptr::write_volatile(slot.add(1), base >> 32);
        asm!("ltr {0:x}", in(reg) SEL_TSS, options(nostack, preserves_flags));
    }
}

/// Loads the IDT on the calling CPU (APs call this after [`init`]).
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (VECTORS * 16 - 1) as u16,
        base: IDT.as_ptr() as u64,
    };
    // SAFETY: the IDT is a static that lives forever and every gate points
    // at a stub in this image that saves and restores the interrupted state.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

/// Registers `handler` for an external `vector` (32-255).
pub fn set_handler(vector: u8, handler: Handler) {
    if vector >= FIRST_EXTERNAL {
        if let Some(slot) = HANDLERS.get(usize::from(vector)) {
            slot.store(handler as usize, Ordering::Release);
        }
    }
}

/// Enables interrupts on the calling CPU.
pub fn enable() {
    // SAFETY: the IDT is loaded (callers call `init`/`load` first).
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts on the calling CPU.
pub fn disable() {
    // SAFETY: `cli` only masks interrupts on this CPU.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Rust side of every interrupt stub.
#[no_mangle]
extern "C" fn shoal_interrupt(frame: &mut Frame) {
    let vector = frame.vector as usize;
    if vector < usize::from(FIRST_EXTERNAL) {
        {
            let mut line = serial::line_forced();
            line.str("error exception ")
                .dec(frame.vector)
                .str(" error-code ")
                .hex0x(frame.error_code)
                .str(" rip ")
                .hex0x(frame.rip)
                .str(" cpu ")
                .dec(u64::from(apic::id()));
            if vector == 14 {
                line.str(" cr2 ").hex0x(cr2());
            }
        }
        power::off();
    }
    if vector == SPURIOUS {
        return;
    }
    let handler = HANDLERS
        .get(vector)
        .map_or(0, |h| h.load(Ordering::Acquire));
    if handler == 0 {
        // Forced: the interrupted code on this CPU may hold the serial lock.
        serial::line_forced()
            .str("error unexpected interrupt ")
            .dec(frame.vector)
            .str(" cpu ")
            .dec(u64::from(apic::id()));
    } else {
        // SAFETY: only `set_handler` stores non-zero values, and it stores
        // `Handler` function pointers.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler(vector as u8);
    }
    apic::eoi();
}
