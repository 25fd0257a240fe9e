// SPDX-License-Identifier: Apache-2.0
//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header, LOADED_HIGH};
use vm_memory::GuestAddress;

use crate::e820::E820Entry;
use crate::layout::CMDLINE_START;
use crate::loader::InitramfsRegion;

/// `boot_flag` of a valid setup header.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` magic of a valid setup header ("HdrS").
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Linux's x86 `COMMAND_LINE_SIZE` less the NUL: the limit when the kernel
/// has no setup header (an ELF booted through the 64-bit entry).
pub const ELF_CMDLINE_MAX_LEN: usize = 2047;
/// Limit for setup headers older than boot protocol 2.06.
const OLD_CMDLINE_MAX_LEN: usize = 255;

/// The longest command line (NUL excluded) the kernel behind `hdr` accepts.
pub fn cmdline_limit(hdr: Option<&setup_header>) -> usize {
    match hdr {
        None => ELF_CMDLINE_MAX_LEN,
        Some(h) if h.version < 0x0206 => OLD_CMDLINE_MAX_LEN,
        Some(h) => usize::try_from(h.cmdline_size).unwrap_or(usize::MAX),
    }
}

/// What goes into the zero page besides the kernel's own setup header.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageInfo<'a> {
    /// The bzImage setup header, or `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// The initramfs, if any.
    pub initramfs: Option<InitramfsRegion>,
    /// Address of the ACPI RSDP, if any.
    pub rsdp_addr: Option<GuestAddress>,
    /// The memory map.
    pub e820: &'a [E820Entry],
}

/// Builds the zero page. The command line is expected at
/// [`CMDLINE_START`]. At most 128 e820 entries are used.
pub fn build_zero_page(info: &ZeroPageInfo) -> boot_params {
    let mut params = boot_params::default();
    let mut hdr = info.setup_header.unwrap_or_else(|| setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        kernel_alignment: 0x100_0000,
        cmdline_size: ELF_CMDLINE_MAX_LEN as u32,
        ..Default::default()
    });
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.loadflags |= LOADED_HIGH;
    hdr.cmd_line_ptr = CMDLINE_START.0 as u32;
    if let Some(initramfs) = info.initramfs {
        hdr.ramdisk_image = initramfs.addr.0 as u32;
        hdr.ramdisk_size = initramfs.size as u32;
        params.ext_ramdisk_image = (initramfs.addr.0 >> 32) as u32;
        params.ext_ramdisk_size = (initramfs.size >> 32) as u32;
    }
    params.hdr = hdr;
    params.ext_cmd_line_ptr = (CMDLINE_START.0 >> 32) as u32;
    params.acpi_rsdp_addr = info.rsdp_addr.map_or(0, |a| a.0);

    let mut table = params.e820_table;
    let mut count = 0u8;
    for (slot, entry) in table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
        count += 1;
    }
    params.e820_table = table;
    params.e820_entries = count;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::{e820_entries, E820_RAM};

    #[test]
    fn elf_zero_page_gets_a_synthetic_header() {
        let e820 = e820_entries(128 << 20);
        let p = build_zero_page(&ZeroPageInfo {
            setup_header: None,
            initramfs: None,
            rsdp_addr: Some(GuestAddress(0xe0000)),
            e820: &e820,
        });
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries as usize, e820.len());
        let first = p.e820_table[0];
        assert_eq!(
            ({ first.addr }, { first.size }, { first.r#type }),
            (0, 0x9fc00, E820_RAM)
        );
    }

    #[test]
    fn bzimage_header_is_kept_and_initramfs_recorded() {
        let image_hdr = setup_header {
            version: 0x020f,
            cmdline_size: 4095,
            xloadflags: 1,
            init_size: 0x1234,
            ..Default::default()
        };
        let e820 = e820_entries(128 << 20);
        let p = build_zero_page(&ZeroPageInfo {
            setup_header: Some(image_hdr),
            initramfs: Some(InitramfsRegion {
                addr: GuestAddress(0x700_0000),
                size: 0x10_0000,
            }),
            rsdp_addr: None,
            e820: &e820,
        });
        let hdr = p.hdr;
        assert_eq!({ hdr.init_size }, 0x1234);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x10_0000);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn cmdline_limit_follows_the_header() {
        assert_eq!(cmdline_limit(None), 2047);
        let old = setup_header {
            version: 0x0205,
            ..Default::default()
        };
        assert_eq!(cmdline_limit(Some(&old)), 255);
        let new = setup_header {
            version: 0x020f,
            cmdline_size: 2047,
            ..Default::default()
        };
        assert_eq!(cmdline_limit(Some(&new)), 2047);
    }
}
