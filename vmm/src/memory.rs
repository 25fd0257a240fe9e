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
    #[error("the RAM file is {file} bytes but the guest has {ram} bytes of RAM")]
    FileSize { file: u64, ram: u64 },
    #[error("cannot read KVM's dirty-page log")]
    DirtyLog(#[source] hypervisor::Error),
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
        Self::from_file(create_memfd("shoal-guest-ram", total)?, regions)
    }

    /// RAM over an existing file (a migrated VM's memfd, or one filled by
    /// an incoming migration), laid out as [`GuestRam::new`] does.
    pub fn from_file(file: File, regions: &[(GuestAddress, u64)]) -> Result<Self, MemoryError> {
        let total: u64 = regions.iter().map(|r| r.1).sum();
        let len = file
            .metadata()
            .map_err(|e| MemoryError::Truncate(total, e))?
            .len();
        if len != total {
            return Err(MemoryError::FileSize {
                file: len,
                ram: total,
            });
        }
        let file = Arc::new(file);
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
        self.register_with(vm, false)
    }

    fn register_with(&self, vm: &dyn Vm, log_dirty: bool) -> Result<u32, MemoryError> {
        let mut slot = 0;
        for region in self.mem.iter() {
            let host = region.as_ptr() as u64;
            // SAFETY: the mapping lives in `self.mem`, which the VMM keeps
            // alive for as long as the VM exists.
            unsafe {
                vm.set_memory_region(slot, region.start_addr().0, region.len(), host, log_dirty)
            }
            .map_err(MemoryError::Register)?;
            slot += 1;
        }
        Ok(slot)
    }

    /// Turns KVM's dirty-page logging of RAM on or off.
    pub fn set_dirty_logging(&self, vm: &dyn Vm, on: bool) -> Result<(), MemoryError> {
        self.register_with(vm, on).map(|_| ())
    }

    /// Pages the guest wrote since the last call (or since logging started),
    /// one bit per 4 KiB page of the RAM file, in file order.
    pub fn take_dirty_bitmap(&self, vm: &dyn Vm) -> Result<Vec<u64>, MemoryError> {
        let pages = self.size().div_ceil(4096);
        let mut out = vec![0u64; pages.div_ceil(64) as usize];
        let mut first_page = 0u64;
        for (slot, region) in (0u32..).zip(self.mem.iter()) {
            let bits = vm
                .dirty_log(slot, region.len())
                .map_err(MemoryError::DirtyLog)?;
            let region_pages = region.len() / 4096;
            for (w, word) in (0u64..).zip(bits.iter()) {
                let mut word = *word;
                while word != 0 {
                    let page = w * 64 + u64::from(word.trailing_zeros());
                    word &= word - 1;
                    if page < region_pages {
                        let at = first_page + page;
                        out[(at / 64) as usize] |= 1 << (at % 64);
                    }
                }
            }
            first_page += region_pages;
        }
        Ok(out)
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

    #[test]
    fn dirty_bitmap_reports_pages_the_guest_wrote_in_file_order() {
        use hypervisor::kvm::KvmHypervisor;
        use hypervisor::{Hypervisor, VmExit};

        // Two regions: file pages 0..256 at 0, 256..512 at 2 MiB.
        let ram =
            GuestRam::new(&[(GuestAddress(0), 1 << 20), (GuestAddress(2 << 20), 1 << 20)]).unwrap();
        // Real mode at 0x1000: write 0x0010:0x0000 (0x100, page 0 ...)
        // mov ax, 0x2010; mov ds, ax; mov byte [0x0000], 1  -> 0x20100 (page 0x20)
        // out 0x80, al
        let code = [
            0xb8, 0x10, 0x20, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0x01, 0xe6, 0x80,
        ];
        ram.memory()
            .write_slice(&code, GuestAddress(0x1000))
            .unwrap();
        let hyp = KvmHypervisor::new().unwrap();
        let vm = hyp.create_vm().unwrap();
        vm.create_irqchip().unwrap();
        ram.register(vm.as_ref()).unwrap();
        ram.set_dirty_logging(vm.as_ref(), true).unwrap();
        let _ = ram.take_dirty_bitmap(vm.as_ref()).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        assert!(matches!(vcpu.run().unwrap(), VmExit::IoOut(0x80, _)));
        // Also dirty a page of the second region from the host side.
        ram.memory()
            .write_obj(7u8, GuestAddress((2 << 20) + 3 * 4096))
            .unwrap();
        let bitmap = ram.take_dirty_bitmap(vm.as_ref()).unwrap();
        let bit = |page: u64| bitmap[(page / 64) as usize] & (1 << (page % 64)) != 0;
        assert!(bit(0x20), "the guest's write to page 0x20 is not reported");
        // Host writes are not in KVM's log (migration tracks those itself).
        assert!(!bit(256 + 3));
        assert_eq!(bitmap.len(), 512 / 64);
    }
}
