// SPDX-License-Identifier: Apache-2.0
//! Boot vCPU state: general registers, segments and control registers (with
//! the boot GDT, IDT and page tables they point at), and the FPU.

use hypervisor::x86_64::{FpuState, SegmentRegister, SpecialRegisters, StandardRegisters};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, PDPT_START, PD_START, PML4_START};
use crate::loader::BootProtocol;

/// Errors of the boot-state setup.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables failed.
    #[error("Writing boot tables to guest memory failed")]
    GuestMemory(#[source] GuestMemoryError),
}

/// Selector of the flat 32-bit code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// Selector of the flat 64-bit code segment (`__BOOT_CS` of the Linux boot protocol).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;

/// Access/flags of the GDT entries, in the layout of descriptor bits 40..56.
const CODE32_FLAGS: u16 = 0xc09b; // G, D, P, S, execute/read, accessed
const CODE64_FLAGS: u16 = 0xa09b; // G, L, P, S, execute/read, accessed
const DATA_FLAGS: u16 = 0xc093; // G, B, P, S, read/write, accessed

/// Busy 32-bit TSS, the type TR must have.
const TSS_BUSY_TYPE: u8 = 0xb;
const TSS_LIMIT: u32 = 0x67;

const CR0_PE: u64 = 1 << 0;
/// Extension type: hard-wired to 1 on every x86_64 CPU.
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;
const TWO_MIB: u64 = 2 << 20;

/// RFLAGS with only the always-one bit set.
pub const RFLAGS_RESERVED: u64 = 0x2;

/// Encodes a GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, 32-bit code, 64-bit code, data (all flat 4 GiB).
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE32_FLAGS, 0, 0xfffff),
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
    ]
}

/// The segment register KVM wants for `selector` of `gdt`.
fn segment(gdt: &[u64], selector: u16) -> SegmentRegister {
    let entry = gdt.get(usize::from(selector >> 3)).copied().unwrap_or(0);
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let flag = |bit: u32| ((entry >> bit) & 1) as u8;
    let g = flag(55);
    let present = flag(47);
    SegmentRegister {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: flag(54),
        s: flag(44),
        l: flag(53),
        g,
        avl: flag(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// General registers at the kernel entry.
///
/// PVH: `rip` = entry, `rbx` = start info. Linux 64-bit: `rip` = entry,
/// `rsi` = zero page. `boot_info` is what [`crate::configure_boot`] returned.
pub fn boot_regs(
    protocol: BootProtocol,
    entry: GuestAddress,
    boot_info: GuestAddress,
) -> StandardRegisters {
    let mut regs = StandardRegisters {
        rip: entry.0,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Pvh => regs.rbx = boot_info.0,
        BootProtocol::Linux64 => regs.rsi = boot_info.0,
    }
    regs
}

/// Identity map of the first 1 GiB with 2 MiB pages at [`PML4_START`].
fn write_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    let mut pml4 = [0u64; 512];
    pml4[0] = PDPT_START.0 | PTE_PRESENT_RW;
    let mut pdpt = [0u64; 512];
    pdpt[0] = PD_START.0 | PTE_PRESENT_RW;
    let mut pd = [0u64; 512];
    for (i, e) in pd.iter_mut().enumerate() {
        *e = (i as u64 * TWO_MIB) | PTE_PRESENT_RW | PDE_HUGE;
    }
    for (table, at) in [(pml4, PML4_START), (pdpt, PDPT_START), (pd, PD_START)] {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, at)
            .map_err(RegsError::GuestMemory)?;
    }
    Ok(())
}

/// Special registers at the kernel entry, starting from `base` (the vCPU's
/// current special registers, so APIC base and the like are kept).
///
/// Writes the boot GDT at [`BOOT_GDT_START`] and an empty IDT at
/// [`BOOT_IDT_START`] for both protocols; for the Linux 64-bit protocol also
/// the identity page tables at [`PML4_START`].
///
/// PVH: 32-bit protected mode (CR0.PE|ET), paging off, flat CS (0x08) and
/// data (0x18). Linux 64-bit: long mode (CR0.PE|ET|PG, CR4.PAE, EFER.LME|LMA, CR3 =
/// [`PML4_START`]), 64-bit CS (0x10), data 0x18.
pub fn boot_sregs<M: GuestMemoryBackend>(
    mem: &M,
    protocol: BootProtocol,
    base: &SpecialRegisters,
) -> Result<SpecialRegisters, RegsError> {
    let gdt = boot_gdt();
    mem.write_obj(gdt, BOOT_GDT_START)
        .map_err(RegsError::GuestMemory)?;
    mem.write_obj(0u64, BOOT_IDT_START)
        .map_err(RegsError::GuestMemory)?;

    let mut sregs = *base;
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START.0;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let data = segment(&gdt, DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = SegmentRegister {
        base: 0,
        limit: TSS_LIMIT,
        selector: 0,
        type_: TSS_BUSY_TYPE,
        present: 1,
        ..Default::default()
    };

    match protocol {
        BootProtocol::Pvh => {
            sregs.cs = segment(&gdt, CODE32_SELECTOR);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            write_page_tables(mem)?;
            sregs.cs = segment(&gdt, CODE64_SELECTOR);
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START.0;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// FPU state at the kernel entry: `fcw` 0x37f (x87 default), `mxcsr` 0x1f80.
pub fn boot_fpu() -> FpuState {
    FpuState {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entries_match_known_encodings() {
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segments_decode_from_the_gdt() {
        let gdt = boot_gdt();
        let cs = segment(&gdt, CODE64_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(&gdt, CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db, cs32.s), (0, 1, 1));
        let ds = segment(&gdt, DATA_SELECTOR);
        assert_eq!((ds.type_, ds.db, ds.selector), (3, 1, 0x18));
    }

    #[test]
    fn regs_point_at_the_boot_info() {
        let pvh = boot_regs(
            BootProtocol::Pvh,
            GuestAddress(0x1000),
            GuestAddress(0x6000),
        );
        assert_eq!(
            (pvh.rip, pvh.rbx, pvh.rsi, pvh.rflags),
            (0x1000, 0x6000, 0, 2)
        );
        let l64 = boot_regs(
            BootProtocol::Linux64,
            GuestAddress(0x1200),
            GuestAddress(0x7000),
        );
        assert_eq!(
            (l64.rip, l64.rbx, l64.rsi, l64.rflags),
            (0x1200, 0, 0x7000, 2)
        );
    }

    #[test]
    fn linux64_sregs_enter_long_mode_with_identity_tables() {
        let m = mem();
        let s = boot_sregs(&m, BootProtocol::Linux64, &SpecialRegisters::default()).unwrap();
        assert_eq!(s.cr0, CR0_PE | CR0_ET | CR0_PG);
        assert_eq!(s.cr4, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!((s.cs.selector, s.cs.l), (0x10, 1));
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));

        let pml4: u64 = m.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpt: u64 = m.read_obj(GuestAddress(0xa000)).unwrap();
        assert_eq!(pdpt, 0xb003);
        let pd0: u64 = m.read_obj(GuestAddress(0xb000)).unwrap();
        assert_eq!(pd0, 0x83);
        let pd511: u64 = m.read_obj(GuestAddress(0xb000 + 511 * 8)).unwrap();
        assert_eq!(pd511, (511 << 21) | 0x83);
        let gdt2: u64 = m.read_obj(GuestAddress(0x510)).unwrap();
        assert_eq!(gdt2, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode_without_paging() {
        let m = mem();
        let base = SpecialRegisters {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        let s = boot_sregs(&m, BootProtocol::Pvh, &base).unwrap();
        assert_eq!(s.cr0, CR0_PE | CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!(
            (s.cs.selector, s.cs.db, s.cs.l, s.cs.limit),
            (0x08, 1, 0, 0xffff_ffff)
        );
        assert_eq!((s.ss.base, s.ss.limit), (0, 0xffff_ffff));
        assert_eq!((s.tr.type_, s.tr.limit), (0xb, 0x67));
        assert_eq!(s.apic_base, 0xfee0_0900, "base registers are kept");
        let pml4: u64 = m.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0, "no page tables for PVH");
    }

    #[test]
    fn sregs_fail_cleanly_without_memory() {
        let m: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(boot_sregs(&m, BootProtocol::Pvh, &SpecialRegisters::default()).is_err());
    }

    #[test]
    fn fpu_defaults() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }
}
