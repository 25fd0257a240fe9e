// SPDX-License-Identifier: Apache-2.0
//! Kernel and initramfs loading.
//!
//! [`load_kernel`] tells the image formats apart and picks the boot protocol:
//! an ELF with a Xen `XEN_ELFNOTE_PHYS32_ENTRY` note boots through PVH, any
//! other x86_64 ELF through its entry point with the Linux 64-bit boot
//! protocol, and a bzImage through the Linux 64-bit boot protocol at
//! `load address + 0x200`. Headers are checked here first so that bad images
//! get a precise error; linux-loader then copies the segments.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    ReadVolatile,
};

use crate::layout::{HIGH_RAM_START, LOW_RAM_END, PAGE_SIZE, PVH_INFO_START, ZERO_PAGE_START};

/// Offset of the 64-bit entry point past the start of a bzImage's protected-mode code.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELF_HEADER_LEN: u64 = 64;
const ELF_PHDR_LEN: u64 = 56;
const ELF_CLASS_64: u8 = 2;
const ELF_DATA_LSB: u8 = 1;
const ELF_MACHINE_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Notes segments larger than this are not scanned for the PVH note.
const MAX_NOTES_LEN: u64 = 1 << 20;

const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
/// The 64-bit entry needs boot protocol 2.12 or later.
const BZIMAGE_MIN_VERSION: u16 = 0x020c;

/// Errors of kernel and initramfs loading.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The image file does not exist.
    #[error("Image {0} not found")]
    NotFound(PathBuf),
    /// The image file could not be opened.
    #[error("Cannot open image {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The kernel image has no bytes.
    #[error("Kernel image is empty")]
    EmptyKernel,
    /// The kernel image ends before a part its headers describe.
    #[error("Kernel image is truncated: the {what} needs {needed} bytes, the file has {len}")]
    Truncated {
        /// Which part is cut off.
        what: &'static str,
        /// File length the part needs.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// Neither the ELF magic nor the bzImage `HdrS` magic is present.
    #[error("Kernel image is neither ELF nor bzImage")]
    UnknownFormat,
    /// An ELF image this platform cannot boot.
    #[error("Unsupported ELF kernel: {0}")]
    UnsupportedElf(&'static str),
    /// A bzImage too old for the 64-bit boot protocol.
    #[error("Unsupported bzImage: boot protocol {0:#06x} without 64-bit entry (2.12+ needed)")]
    UnsupportedBzImage(u16),
    /// A kernel segment would overwrite the boot structures below 1 MiB.
    #[error("Kernel segment at {0:#x} is below the 1 MiB load area")]
    BelowLoadArea(u64),
    /// The kernel does not fit in low guest RAM.
    #[error("Kernel does not fit in guest memory: it spans {start:#x}..{end:#x}, low RAM ends at {ram_end:#x}")]
    KernelTooBig {
        /// First byte of the kernel.
        start: u64,
        /// End (exclusive) of the kernel, including its bss or init_size.
        end: u64,
        /// End (exclusive) of low RAM.
        ram_end: u64,
    },
    /// Reading the image failed.
    #[error("Reading the image failed")]
    Io(#[source] io::Error),
    /// linux-loader rejected the image.
    #[error("Loading the kernel image failed")]
    Load(#[source] linux_loader::loader::Error),
    /// Guest memory access failed.
    #[error("Guest memory access failed")]
    GuestMemory(#[source] GuestMemoryError),
    /// The initramfs has no bytes.
    #[error("Initramfs is empty")]
    EmptyInitramfs,
    /// The initramfs does not fit between the kernel and the top of low RAM.
    #[error("Initramfs does not fit: it is {size} bytes, {available} bytes are free between the kernel end {kernel_end:#x} and the top of low RAM {ram_end:#x}")]
    InitramfsTooBig {
        /// Initramfs size.
        size: u64,
        /// Bytes free for it.
        available: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, LoaderError>;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH: 32-bit protected mode, `ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64,
}

impl BootProtocol {
    /// Where [`crate::configure_boot`] puts the boot information for this
    /// protocol (the PVH start info or the zero page).
    pub fn boot_info_addr(self) -> GuestAddress {
        match self {
            BootProtocol::Pvh => PVH_INFO_START,
            BootProtocol::Linux64 => ZERO_PAGE_START,
        }
    }
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    /// Where the boot vCPU starts.
    pub entry_addr: GuestAddress,
    /// How it starts.
    pub protocol: BootProtocol,
    /// The bzImage setup header, kept for the zero page (`None` for ELF).
    pub setup_header: Option<setup_header>,
    /// End (exclusive) of the kernel in guest memory, bss and init_size included.
    pub kernel_end: GuestAddress,
}

/// An initramfs loaded into guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitramfsRegion {
    /// Guest address, page aligned.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Opens a kernel or initramfs image, turning a missing file into
/// [`LoaderError::NotFound`].
pub fn open_image(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            LoaderError::NotFound(path.to_path_buf())
        } else {
            LoaderError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// End (exclusive) of the RAM that starts at guest address 0, capped at 3 GiB.
pub fn low_ram_end_of<M: GuestMemoryBackend>(mem: &M) -> u64 {
    let mut end = 0u64;
    while let Some(region) = mem.find_region(GuestAddress(end)) {
        let next = region.start_addr().0.saturating_add(region.len());
        if next <= end {
            break;
        }
        end = next;
    }
    end.min(LOW_RAM_END.0)
}

/// Loads a kernel image (ELF or bzImage) into `mem` and says how to enter it.
///
/// `kernel` is usually a [`File`]; anything seekable works.
pub fn load_kernel<M, F>(mem: &M, kernel: &mut F) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let len = kernel.seek(SeekFrom::End(0)).map_err(LoaderError::Io)?;
    if len == 0 {
        return Err(LoaderError::EmptyKernel);
    }
    let head = read_at(kernel, 0, len.min(0x400))?;
    let ram_end = low_ram_end_of(mem);
    if head.starts_with(&ELF_MAGIC) {
        load_elf(mem, kernel, len, ram_end)
    } else if head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(&BZIMAGE_MAGIC) {
        load_bzimage(mem, kernel, len, ram_end)
    } else {
        Err(LoaderError::UnknownFormat)
    }
}

/// Loads an initramfs at the top of low RAM, page aligned, above `kernel_end`.
pub fn load_initramfs<M, F>(
    mem: &M,
    initramfs: &mut F,
    kernel_end: GuestAddress,
) -> Result<InitramfsRegion>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let size = initramfs.seek(SeekFrom::End(0)).map_err(LoaderError::Io)?;
    if size == 0 {
        return Err(LoaderError::EmptyInitramfs);
    }
    let ram_end = low_ram_end_of(mem);
    let lowest = align_up(kernel_end.0, PAGE_SIZE);
    let top = ram_end - ram_end % PAGE_SIZE;
    let available = top.saturating_sub(lowest);
    let too_big = LoaderError::InitramfsTooBig {
        size,
        available,
        kernel_end: kernel_end.0,
        ram_end,
    };
    if size > available {
        return Err(too_big);
    }
    let start = top - size;
    let addr = start - start % PAGE_SIZE;
    let count = usize::try_from(size).map_err(|_| too_big)?;
    initramfs.rewind().map_err(LoaderError::Io)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initramfs, count)
        .map_err(LoaderError::GuestMemory)?;
    Ok(InitramfsRegion {
        addr: GuestAddress(addr),
        size,
    })
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align).saturating_mul(align)
}

fn read_at<F: Read + Seek>(file: &mut F, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .map_err(LoaderError::Io)?;
    file.take(len)
        .read_to_end(&mut buf)
        .map_err(LoaderError::Io)?;
    Ok(buf)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

#[derive(Debug)]
struct ProgramHeader {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn load_elf<M, F>(mem: &M, kernel: &mut F, len: u64, ram_end: u64) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    if len < ELF_HEADER_LEN {
        return Err(LoaderError::Truncated {
            what: "ELF header",
            needed: ELF_HEADER_LEN,
            len,
        });
    }
    let ehdr = read_at(kernel, 0, ELF_HEADER_LEN)?;
    if ehdr.len() < ELF_HEADER_LEN as usize {
        return Err(LoaderError::Truncated {
            what: "ELF header",
            needed: ELF_HEADER_LEN,
            len: ehdr.len() as u64,
        });
    }
    if ehdr.get(4) != Some(&ELF_CLASS_64) {
        return Err(LoaderError::UnsupportedElf("not a 64-bit ELF"));
    }
    if ehdr.get(5) != Some(&ELF_DATA_LSB) {
        return Err(LoaderError::UnsupportedElf("not little-endian"));
    }
    if u16_at(&ehdr, 18) != ELF_MACHINE_X86_64 {
        return Err(LoaderError::UnsupportedElf("not an x86_64 ELF"));
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if u64::from(phentsize) != ELF_PHDR_LEN {
        return Err(LoaderError::UnsupportedElf(
            "unexpected program header size",
        ));
    }
    if phoff < ELF_HEADER_LEN {
        return Err(LoaderError::UnsupportedElf(
            "program headers overlap the ELF header",
        ));
    }
    let table_len = u64::from(phnum) * ELF_PHDR_LEN;
    let table_end = phoff.saturating_add(table_len);
    if table_end > len {
        return Err(LoaderError::Truncated {
            what: "program header table",
            needed: table_end,
            len,
        });
    }
    let table = read_at(kernel, phoff, table_len)?;
    let phdrs: Vec<ProgramHeader> = table
        .chunks_exact(ELF_PHDR_LEN as usize)
        .map(|p| ProgramHeader {
            kind: u32_at(p, 0),
            offset: u64_at(p, 8),
            paddr: u64_at(p, 24),
            filesz: u64_at(p, 32),
            memsz: u64_at(p, 40),
        })
        .collect();

    let mut start = u64::MAX;
    let mut end = 0u64;
    let mut pvh_entry = None;
    for ph in &phdrs {
        let file_end = ph.offset.saturating_add(ph.filesz);
        if (ph.kind == PT_LOAD || ph.kind == PT_NOTE) && file_end > len {
            return Err(LoaderError::Truncated {
                what: if ph.kind == PT_LOAD {
                    "loadable segment"
                } else {
                    "notes segment"
                },
                needed: file_end,
                len,
            });
        }
        if ph.kind == PT_NOTE && pvh_entry.is_none() && ph.filesz <= MAX_NOTES_LEN {
            let notes = read_at(kernel, ph.offset, ph.filesz)?;
            pvh_entry = find_pvh_entry(&notes);
        }
        if ph.kind != PT_LOAD || ph.memsz == 0 {
            continue;
        }
        if ph.filesz > ph.memsz {
            return Err(LoaderError::UnsupportedElf(
                "segment file size exceeds its memory size",
            ));
        }
        if ph.paddr < HIGH_RAM_START.0 {
            return Err(LoaderError::BelowLoadArea(ph.paddr));
        }
        start = start.min(ph.paddr);
        end = end.max(ph.paddr.saturating_add(ph.memsz));
    }
    if end == 0 {
        return Err(LoaderError::UnsupportedElf("no loadable segment"));
    }
    if end > ram_end {
        return Err(LoaderError::KernelTooBig {
            start,
            end,
            ram_end,
        });
    }

    Elf::load(mem, None, kernel, Some(HIGH_RAM_START)).map_err(LoaderError::Load)?;
    for ph in phdrs
        .iter()
        .filter(|p| p.kind == PT_LOAD && p.memsz > p.filesz)
    {
        zero_guest(mem, ph.paddr + ph.filesz, ph.memsz - ph.filesz)?;
    }

    let (protocol, entry_addr) = match pvh_entry {
        Some(pvh) => (BootProtocol::Pvh, pvh),
        None => (BootProtocol::Linux64, entry),
    };
    Ok(KernelEntry {
        entry_addr: GuestAddress(entry_addr),
        protocol,
        setup_header: None,
        kernel_end: GuestAddress(end),
    })
}

/// Scans an ELF notes segment for a Xen PHYS32_ENTRY note and returns its address.
fn find_pvh_entry(notes: &[u8]) -> Option<u64> {
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = u32_at(notes, off) as usize;
        let descsz = u32_at(notes, off + 4) as usize;
        let kind = u32_at(notes, off + 8);
        let name_start = off + 12;
        let desc_start = name_start.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let next = desc_start.checked_add(descsz.checked_next_multiple_of(4)?)?;
        let name = notes.get(name_start..name_start.checked_add(namesz)?)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" && descsz >= 4 {
            return Some(u64::from(u32_at(notes, desc_start)));
        }
        off = next;
    }
    None
}

fn zero_guest<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK);
        mem.write_slice(&zeros[..n as usize], GuestAddress(addr + done))
            .map_err(LoaderError::GuestMemory)?;
        done += n;
    }
    Ok(())
}

fn load_bzimage<M, F>(mem: &M, kernel: &mut F, len: u64, ram_end: u64) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let header_len = std::mem::size_of::<setup_header>() as u64;
    let header_end = SETUP_HEADER_OFFSET + header_len;
    if len < header_end {
        return Err(LoaderError::Truncated {
            what: "bzImage setup header",
            needed: header_end,
            len,
        });
    }
    let mut hdr = setup_header::default();
    kernel
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(LoaderError::Io)?;
    kernel
        .read_exact(hdr.as_mut_slice())
        .map_err(LoaderError::Io)?;
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < BZIMAGE_MIN_VERSION
        || xloadflags & XLF_KERNEL_64 == 0
        || hdr.loadflags & LOADED_HIGH == 0
    {
        return Err(LoaderError::UnsupportedBzImage(version));
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let payload_end = setup_size + u64::from(hdr.syssize) * 16;
    if len < payload_end || len <= setup_size {
        return Err(LoaderError::Truncated {
            what: "bzImage protected-mode code",
            needed: payload_end.max(setup_size + 1),
            len,
        });
    }
    let load = HIGH_RAM_START.0;
    let span = (len - setup_size).max(u64::from(hdr.init_size));
    let end = load + span;
    if end > ram_end {
        return Err(LoaderError::KernelTooBig {
            start: load,
            end,
            ram_end,
        });
    }
    let result = BzImage::load(mem, Some(HIGH_RAM_START), kernel, Some(HIGH_RAM_START))
        .map_err(LoaderError::Load)?;
    let entry = load + BZIMAGE_64BIT_ENTRY_OFFSET;
    Ok(KernelEntry {
        entry_addr: GuestAddress(entry),
        protocol: BootProtocol::Linux64,
        setup_header: result.setup_header.or(Some(hdr)),
        kernel_end: GuestAddress(end.max(result.kernel_end)),
    })
}

#[cfg(test)]
mod tests;
