// SPDX-License-Identifier: Apache-2.0
//! Boot information: the command line plus the Linux zero page or the PVH
//! start info, whichever the kernel's boot protocol needs.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::boot_params::{build_zero_page, cmdline_limit, ZeroPageInfo};
use crate::e820::e820_entries;
use crate::layout::PVH_INFO_START;
use crate::layout::{CMDLINE_MAX_LEN, CMDLINE_START, ZERO_PAGE_START};
use crate::loader::{BootProtocol, InitramfsRegion, KernelEntry};
use crate::pvh::build_start_info;

/// Errors of [`configure_boot`].
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The command line is longer than the kernel accepts.
    #[error("Kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("Kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// Guest memory access failed.
    #[error("Writing boot information to guest memory failed")]
    GuestMemory(#[source] GuestMemoryError),
}

/// What [`configure_boot`] needs to know.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    /// Boot protocol of the loaded kernel.
    pub protocol: BootProtocol,
    /// Entry point of the loaded kernel (informational; registers come from
    /// [`crate::boot_regs`]).
    pub entry: GuestAddress,
    /// Kernel command line, without a trailing NUL.
    pub cmdline: &'a str,
    /// The loaded initramfs, if any.
    pub initramfs: Option<InitramfsRegion>,
    /// Address of the ACPI RSDP, from [`crate::create_acpi_tables`].
    pub rsdp_addr: Option<GuestAddress>,
    /// Guest RAM size, as given to [`crate::ram_regions`].
    pub ram_bytes: u64,
    /// The bzImage setup header from [`KernelEntry::setup_header`].
    pub setup_header: Option<setup_header>,
}

impl<'a> BootConfig<'a> {
    /// A configuration for `kernel` without initramfs and ACPI.
    pub fn new(kernel: &KernelEntry, cmdline: &'a str, ram_bytes: u64) -> Self {
        BootConfig {
            protocol: kernel.protocol,
            entry: kernel.entry_addr,
            cmdline,
            initramfs: None,
            rsdp_addr: None,
            ram_bytes,
            setup_header: kernel.setup_header,
        }
    }
}

/// The longest command line (NUL excluded) for this configuration.
pub fn max_cmdline_len(cfg: &BootConfig) -> usize {
    match cfg.protocol {
        BootProtocol::Pvh => CMDLINE_MAX_LEN,
        BootProtocol::Linux64 => cmdline_limit(cfg.setup_header.as_ref()).min(CMDLINE_MAX_LEN),
    }
}

/// Writes the command line at [`CMDLINE_START`] and the boot information
/// for `cfg.protocol`; returns the address of that information (the value
/// for `rbx`/`rsi`, see [`crate::boot_regs`]).
pub fn configure_boot<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootConfig,
) -> Result<GuestAddress, BootError> {
    let max = max_cmdline_len(cfg);
    if cfg.cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cfg.cmdline.len(),
            max,
        });
    }
    if cfg.cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineHasNul);
    }
    let mut cmdline = Vec::with_capacity(cfg.cmdline.len() + 1);
    cmdline.extend_from_slice(cfg.cmdline.as_bytes());
    cmdline.push(0);
    mem.write_slice(&cmdline, CMDLINE_START)
        .map_err(BootError::GuestMemory)?;

    let e820 = e820_entries(cfg.ram_bytes);
    match cfg.protocol {
        BootProtocol::Linux64 => {
            let params = build_zero_page(&ZeroPageInfo {
                setup_header: cfg.setup_header,
                initramfs: cfg.initramfs,
                rsdp_addr: cfg.rsdp_addr,
                e820: &e820,
            });
            mem.write_obj(params, ZERO_PAGE_START)
                .map_err(BootError::GuestMemory)?;
        }
        BootProtocol::Pvh => {
            let info = build_start_info(&e820, cfg.initramfs, cfg.rsdp_addr);
            mem.write_slice(&info, PVH_INFO_START)
                .map_err(BootError::GuestMemory)?;
        }
    }
    Ok(cfg.protocol.boot_info_addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::GuestMemoryMmap;

    const RAM: u64 = 128 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn cfg(protocol: BootProtocol, cmdline: &str) -> BootConfig<'_> {
        BootConfig {
            protocol,
            entry: GuestAddress(0x100_0000),
            cmdline,
            initramfs: Some(InitramfsRegion {
                addr: GuestAddress(0x7f0_0000),
                size: 0x800,
            }),
            rsdp_addr: Some(GuestAddress(0xe0000)),
            ram_bytes: RAM,
            setup_header: None,
        }
    }

    #[test]
    fn linux64_writes_cmdline_and_zero_page() {
        let m = mem();
        let at = configure_boot(&m, &cfg(BootProtocol::Linux64, "console=ttyS0")).unwrap();
        assert_eq!(at, ZERO_PAGE_START);
        let mut line = [0u8; 14];
        m.read_slice(&mut line, CMDLINE_START).unwrap();
        assert_eq!(&line, b"console=ttyS0\0");
        let p: boot_params = m.read_obj(ZERO_PAGE_START).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x800);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 4);
    }

    #[test]
    fn pvh_writes_start_info() {
        let m = mem();
        let at = configure_boot(&m, &cfg(BootProtocol::Pvh, "quiet")).unwrap();
        assert_eq!(at, PVH_INFO_START);
        let magic: u32 = m.read_obj(PVH_INFO_START).unwrap();
        assert_eq!(magic, 0x336e_c578);
        let cmdline_paddr: u64 = m.read_obj(GuestAddress(0x6018)).unwrap();
        assert_eq!(cmdline_paddr, 0x20000);
        let entries: u32 = m.read_obj(GuestAddress(0x6030)).unwrap();
        assert_eq!(entries, 4);
    }

    #[test]
    fn too_long_cmdline_is_rejected_per_protocol() {
        let m = mem();
        let long = "x".repeat(2048);
        match configure_boot(&m, &cfg(BootProtocol::Linux64, &long)) {
            Err(BootError::CmdlineTooLong {
                len: 2048,
                max: 2047,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(configure_boot(&m, &cfg(BootProtocol::Pvh, &long)).is_ok());
        let huge = "x".repeat(CMDLINE_MAX_LEN + 1);
        assert!(matches!(
            configure_boot(&m, &cfg(BootProtocol::Pvh, &huge)),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn bzimage_cmdline_limit_comes_from_its_header() {
        let m = mem();
        let mut c = cfg(BootProtocol::Linux64, "0123456789");
        c.setup_header = Some(setup_header {
            version: 0x020f,
            cmdline_size: 9,
            ..Default::default()
        });
        assert!(matches!(
            configure_boot(&m, &c),
            Err(BootError::CmdlineTooLong { len: 10, max: 9 })
        ));
    }

    #[test]
    fn nul_in_cmdline_is_rejected() {
        let m = mem();
        assert!(matches!(
            configure_boot(&m, &cfg(BootProtocol::Pvh, "a\0b")),
            Err(BootError::CmdlineHasNul)
        ));
    }

    #[test]
    fn memory_too_small_for_boot_info_is_an_error() {
        let m: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            configure_boot(&m, &cfg(BootProtocol::Pvh, "x")),
            Err(BootError::GuestMemory(_))
        ));
    }
}
