// SPDX-License-Identifier: Apache-2.0
//! The PVH `hvm_start_info` (Xen's `arch-x86/hvm/start_info.h`, version 1),
//! written byte by byte: start info, then one module entry, then the memory map.

use vm_memory::GuestAddress;

use crate::e820::E820Entry;
use crate::layout::{CMDLINE_START, PVH_INFO_END, PVH_INFO_START};
use crate::loader::InitramfsRegion;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version of the start info written here (has the memory map fields).
pub const START_INFO_VERSION: u32 = 1;
/// Size of `hvm_start_info`.
pub const START_INFO_LEN: usize = 56;
/// Offset of the module list from [`PVH_INFO_START`].
pub const MODLIST_OFFSET: usize = 0x40;
/// Size of one `hvm_modlist_entry`.
pub const MODLIST_ENTRY_LEN: usize = 32;
/// Offset of the memory map from [`PVH_INFO_START`].
pub const MEMMAP_OFFSET: usize = 0x80;
/// Size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_LEN: usize = 24;

/// Most memory-map entries that fit before [`PVH_INFO_END`].
pub const MAX_MEMMAP_ENTRIES: usize =
    ((PVH_INFO_END.0 - PVH_INFO_START.0) as usize - MEMMAP_OFFSET) / MEMMAP_ENTRY_LEN;

// The three parts must not overlap; checked at compile time.
const _: () = {
    assert!(START_INFO_LEN <= MODLIST_OFFSET);
    assert!(MODLIST_OFFSET + MODLIST_ENTRY_LEN <= MEMMAP_OFFSET);
    assert!(MAX_MEMMAP_ENTRIES >= 8);
};

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Builds the bytes to write at [`PVH_INFO_START`]. The command line is
/// expected at [`CMDLINE_START`]. At most [`MAX_MEMMAP_ENTRIES`] entries are used.
pub fn build_start_info(
    e820: &[E820Entry],
    initramfs: Option<InitramfsRegion>,
    rsdp_addr: Option<GuestAddress>,
) -> Vec<u8> {
    let entries = &e820[..e820.len().min(MAX_MEMMAP_ENTRIES)];
    let mut buf = vec![0u8; MEMMAP_OFFSET + entries.len() * MEMMAP_ENTRY_LEN];
    let base = PVH_INFO_START.0;

    put(&mut buf, 0, &XEN_HVM_START_MAGIC.to_le_bytes());
    put(&mut buf, 4, &START_INFO_VERSION.to_le_bytes());
    // flags (8) stay 0.
    if let Some(initramfs) = initramfs {
        put(&mut buf, 12, &1u32.to_le_bytes());
        put(&mut buf, 16, &(base + MODLIST_OFFSET as u64).to_le_bytes());
        put(&mut buf, MODLIST_OFFSET, &initramfs.addr.0.to_le_bytes());
        put(&mut buf, MODLIST_OFFSET + 8, &initramfs.size.to_le_bytes());
        // The module has no command line (cmdline_paddr 0) and reserved is 0.
    }
    put(&mut buf, 24, &CMDLINE_START.0.to_le_bytes());
    put(&mut buf, 32, &rsdp_addr.map_or(0, |a| a.0).to_le_bytes());
    put(&mut buf, 40, &(base + MEMMAP_OFFSET as u64).to_le_bytes());
    put(&mut buf, 48, &(entries.len() as u32).to_le_bytes());
    // reserved (52) stays 0.

    for (i, e) in entries.iter().enumerate() {
        let off = MEMMAP_OFFSET + i * MEMMAP_ENTRY_LEN;
        put(&mut buf, off, &e.addr.to_le_bytes());
        put(&mut buf, off + 8, &e.size.to_le_bytes());
        put(&mut buf, off + 16, &e.kind.to_le_bytes());
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::e820_entries;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn start_info_fields_and_memmap() {
        let e820 = e820_entries(4 << 30);
        let b = build_start_info(&e820, None, Some(GuestAddress(0xe0000)));
        assert_eq!(u32_at(&b, 0), 0x336e_c578);
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u32_at(&b, 12), 0, "no modules");
        assert_eq!(u64_at(&b, 16), 0);
        assert_eq!(u64_at(&b, 24), 0x20000);
        assert_eq!(u64_at(&b, 32), 0xe0000);
        assert_eq!(u64_at(&b, 40), 0x6080);
        assert_eq!(u32_at(&b, 48) as usize, e820.len());
        let last = MEMMAP_OFFSET + (e820.len() - 1) * MEMMAP_ENTRY_LEN;
        assert_eq!(u64_at(&b, last), 4 << 30);
        assert_eq!(u64_at(&b, last + 8), 1 << 30);
        assert_eq!(u32_at(&b, last + 16), 1);
        assert!(PVH_INFO_START.0 + b.len() as u64 <= PVH_INFO_END.0);
    }

    #[test]
    fn initramfs_becomes_the_first_module() {
        let e820 = e820_entries(128 << 20);
        let initramfs = InitramfsRegion {
            addr: GuestAddress(0x7f0_0000),
            size: 0x1234,
        };
        let b = build_start_info(&e820, Some(initramfs), None);
        assert_eq!(u32_at(&b, 12), 1);
        assert_eq!(u64_at(&b, 16), 0x6040);
        assert_eq!(u64_at(&b, MODLIST_OFFSET), 0x7f0_0000);
        assert_eq!(u64_at(&b, MODLIST_OFFSET + 8), 0x1234);
        assert_eq!(u64_at(&b, MODLIST_OFFSET + 16), 0);
        assert_eq!(u64_at(&b, 32), 0, "no RSDP");
    }
}
