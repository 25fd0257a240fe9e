// SPDX-License-Identifier: Apache-2.0
//! Identity mappings above 4 GiB, made on demand.
//!
//! The boot code maps the first 4 GiB (`boot`). Devices with 64-bit BARs
//! (the group device's shared region) may sit in the 64-bit PCI window
//! above RAM (docs/platform.md: after high RAM, 1 GiB aligned, 64 GiB), so
//! [`map`] adds 2 MiB identity pages there, taking page directories (and
//! page-directory-pointer tables past 512 GiB) from a small static pool.
//! Only the BSP maps; APs share the tables.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// End of the range the boot code maps.
pub const BOOT_MAPPED: u64 = 1 << 32;
const PAGE_2M: u64 = 2 << 20;
/// Highest address plus one that 4-level paging reaches.
const ADDRESS_LIMIT: u64 = 1 << 47;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const LARGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const ENTRIES: usize = 512;
/// Tables in the pool: each page directory maps 1 GiB.
const POOL_TABLES: usize = 16;

/// Why a range could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    /// The range wraps or lies beyond 4-level paging.
    OutOfRange,
    /// The table pool is used up.
    PoolExhausted,
}

impl PagingError {
    /// Text for an error line.
    pub fn message(self) -> &'static str {
        match self {
            PagingError::OutOfRange => "range beyond 4-level paging",
            PagingError::PoolExhausted => "page table pool exhausted",
        }
    }
}

#[repr(C, align(4096))]
struct Table([AtomicU64; ENTRIES]);

static POOL: [Table; POOL_TABLES] =
    [const { Table([const { AtomicU64::new(0) }; ENTRIES]) }; POOL_TABLES];
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);

fn cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reloads CR3, flushing every non-global TLB entry.
fn flush_tlb() {
    // SAFETY: writes back the same page tables; only the TLB is flushed.
    unsafe { asm!("mov cr3, {}", in(reg) cr3(), options(nostack, preserves_flags)) }
}

/// Entry `index` of the table at physical address `table`.
fn entry(table: u64, index: u64) -> &'static AtomicU64 {
    // SAFETY: `table` is the boot PML4 or PDPT (in the image) or a table of
    // `POOL`: 4 KiB aligned, identity-mapped, alive for the whole run, and
    // only accessed through atomics. `index` is below 512.
    unsafe { &*((table + (index % ENTRIES as u64) * 8) as *const AtomicU64) }
}

/// The table `entry` points to, taking a new one from the pool if empty.
fn next_table(slot: &AtomicU64) -> Result<u64, PagingError> {
    let value = slot.load(Ordering::Acquire);
    if value & PRESENT != 0 {
        return Ok(value & ADDR_MASK);
    }
    let index = POOL_NEXT.fetch_add(1, Ordering::AcqRel);
    let table = POOL.get(index).ok_or(PagingError::PoolExhausted)?;
    let addr = table as *const Table as u64;
    slot.store(addr | PRESENT | WRITABLE, Ordering::Release);
    Ok(addr)
}

/// Identity-maps `[addr, addr + len)` with 2 MiB pages (write-back when
/// `cached`, else uncached). The first 4 GiB are mapped already; pages that
/// are present are left as they are.
pub fn map(addr: u64, len: u64, cached: bool) -> Result<(), PagingError> {
    let end = addr.checked_add(len).ok_or(PagingError::OutOfRange)?;
    if end > ADDRESS_LIMIT {
        return Err(PagingError::OutOfRange);
    }
    let flags = PRESENT
        | WRITABLE
        | LARGE
        | if cached {
            0
        } else {
            WRITE_THROUGH | CACHE_DISABLE
        };
    let mut page = (addr & !(PAGE_2M - 1)).max(BOOT_MAPPED);
    while page < end {
        let pml4 = cr3() & ADDR_MASK;
        let pdpt = next_table(entry(pml4, (page >> 39) & 511))?;
        let pdpte = entry(pdpt, (page >> 30) & 511);
        if pdpte.load(Ordering::Acquire) & (PRESENT | LARGE) == PRESENT | LARGE {
            page += 1 << 30;
            continue;
        }
        let pd = next_table(pdpte)?;
        let pde = entry(pd, (page >> 21) & 511);
        if pde.load(Ordering::Acquire) & PRESENT == 0 {
            pde.store(page | flags, Ordering::Release);
        }
        page += PAGE_2M;
    }
    flush_tlb();
    Ok(())
}

/// Whether the page holding `addr` is present in the page tables.
fn page_present(addr: u64) -> bool {
    if addr < BOOT_MAPPED {
        return true;
    }
    if addr >= ADDRESS_LIMIT {
        return false;
    }
    let mut table = cr3() & ADDR_MASK;
    for shift in [39u32, 30, 21] {
        let value = entry(table, (addr >> shift) & 511).load(Ordering::Acquire);
        if value & PRESENT == 0 {
            return false;
        }
        if shift != 39 && value & LARGE != 0 {
            return true;
        }
        table = value & ADDR_MASK;
    }
    // A 4 KiB page table: the boot code and `map` never make one.
    false
}

/// Whether all `len` bytes at `addr` are mapped (`addr` 0 never is).
pub fn is_mapped(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if addr == 0 {
        return false;
    }
    if end <= BOOT_MAPPED {
        return true;
    }
    let mut page = addr & !(PAGE_2M - 1);
    while page < end {
        if !page_present(page) {
            return false;
        }
        page += PAGE_2M;
    }
    true
}
