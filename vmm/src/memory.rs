// SPDX-License-Identifier: Apache-2.0
//! Guest RAM: one memfd, mapped region by region into the VMM and into KVM.
//!
//! RAM lives in a memfd so that snapshot, same-host migration and sharing can
//! hand it over as a file descriptor.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use hypervisor::Vm;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors of guest memory set-up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest RAM memfd")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest RAM memfd to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    #[error("cannot map guest RAM (is there enough address space?)")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("guest RAM region at {0:#x} is too large for this host")]
    RegionTooLarge(u64),
    #[error("cannot register guest RAM with KVM")]
    Register(#[source] hypervisor::Error),
    #[error("the thread registering guest RAM with KVM panicked")]
    RegisterPanicked,
}

/// The guest's RAM.
#[derive(Debug)]
pub struct GuestRam {
    file: Arc<File>,
    mem: GuestMemoryMmap,
}

/// Creates an anonymous memfd of `size` bytes.
pub fn create_memfd(name: &str, size: u64) -> Result<File, MemoryError> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| MemoryError::Memfd(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: `cname` is a valid NUL-terminated string; the flags are constants.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(size, e))?;
    Ok(file)
}

impl GuestRam {
    /// Creates RAM for the given `(guest address, size)` regions, backed by
    /// consecutive ranges of one memfd.
    pub fn new(regions: &[(GuestAddress, u64)]) -> Result<Self, MemoryError> {
        let total: u64 = regions.iter().map(|r| r.1).sum();
        let file = Arc::new(create_memfd("shoal-guest-ram", total)?);
        let mut offset = 0u64;
        let mut ranges = Vec::with_capacity(regions.len());
        for &(addr, size) in regions {
            let len = usize::try_from(size).map_err(|_| MemoryError::RegionTooLarge(addr.0))?;
            ranges.push((addr, len, Some(FileOffset::from_arc(file.clone(), offset))));
            offset += size;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        Ok(GuestRam { file, mem })
    }

    /// The guest memory, for loaders and devices.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The memfd behind all of RAM.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }

    /// Registers every region with KVM as slots `0..n`; returns `n`.
    pub fn register(&self, vm: &dyn Vm) -> Result<u32, MemoryError> {
        let mut slot = 0;
        for region in self.mem.iter() {
            let host = region.as_ptr() as u64;
            // SAFETY: the mapping lives in `self.mem`, which the VMM keeps
            // alive for as long as the VM exists.
            unsafe { vm.set_memory_region(slot, region.start_addr().0, region.len(), host, false) }
                .map_err(MemoryError::Register)?;
            slot += 1;
        }
        Ok(slot)
    }

    /// Raw fd of the memfd (for SCM_RIGHTS hand-over).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_regions_share_one_memfd_in_order() {
        let ram =
            GuestRam::new(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 2 << 20)]).unwrap();
        assert_eq!(ram.size(), 3 << 20);
        assert_eq!(ram.file().metadata().unwrap().len(), 3 << 20);
        ram.memory()
            .write_obj(0xabcdu32, GuestAddress((1 << 32) + 8))
            .unwrap();
        // The second region starts at file offset 1 MiB.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(ram.file(), &mut buf, (1 << 20) + 8).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xabcd);
    }
}
