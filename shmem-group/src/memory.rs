// SPDX-License-Identifier: Apache-2.0
//! The group's memfd and shared mappings of it.

use crate::layout::{LayoutError, Region};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use thiserror::Error;

/// Smallest region: the header page plus one data page.
pub const MIN_REGION_SIZE: u64 = 8192;
/// Largest region accepted (64 GiB, the size of the 64-bit PCI window).
pub const MAX_REGION_SIZE: u64 = 64 << 30;

/// Memory errors.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The size is not a power of two or out of range.
    #[error("Region size {0} must be a power of two between 8K and 64G")]
    Size(u64),
    /// memfd_create failed.
    #[error("Cannot create memfd")]
    Create(#[source] io::Error),
    /// ftruncate failed (for hugetlbfs: size not a multiple of the page size?).
    #[error("Cannot size memfd")]
    Truncate(#[source] io::Error),
    /// Adding seals failed.
    #[error("Cannot seal memfd")]
    Seal(#[source] io::Error),
    /// fstat failed.
    #[error("Cannot stat region fd")]
    Stat(#[source] io::Error),
    /// mmap failed.
    #[error("Cannot map region")]
    Map(#[source] io::Error),
    /// A huge-page region whose size is not a whole number of huge pages.
    #[error("Region size {size} is not a multiple of the huge page size ({page} bytes)")]
    HugeSize {
        /// Region size.
        size: u64,
        /// Huge page size.
        page: u64,
    },
    /// Too few free huge pages for the region.
    #[error(
        "Not enough free huge pages for a {size}-byte region: reserve {pages} more in /proc/sys/vm/nr_hugepages, or drop --hugepages"
    )]
    NoHugePages {
        /// Region size.
        size: u64,
        /// Huge pages the region needs.
        pages: u64,
    },
    /// An offset/length outside the mapping.
    #[error("Access at {offset:#x}+{len:#x} is outside the region")]
    Bounds {
        /// Offset.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The region header is invalid.
    #[error("Invalid region header")]
    Layout(#[source] LayoutError),
}

/// Checks that `size` is a power of two in the accepted range.
pub fn check_region_size(size: u64) -> Result<(), MemoryError> {
    if !size.is_power_of_two() || !(MIN_REGION_SIZE..=MAX_REGION_SIZE).contains(&size) {
        return Err(MemoryError::Size(size));
    }
    Ok(())
}

/// Creates a sealed memfd of `size` bytes (shrink, grow and further sealing
/// are forbidden, so nobody can truncate the region under the guests).
pub fn create_memfd(name: &str, size: u64, hugepages: bool) -> Result<OwnedFd, MemoryError> {
    check_region_size(size)?;
    let cname = CString::new(format!("shoal-group:{}", name.replace('\0', "")))
        .map_err(|_| MemoryError::Create(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if hugepages {
        let page = huge_page_size();
        if size % page != 0 {
            return Err(MemoryError::HugeSize { size, page });
        }
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: cname is a valid NUL-terminated string.
    let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if raw < 0 {
        return Err(MemoryError::Create(io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fd is a valid descriptor; size fits in off_t (<= 64 GiB).
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
        return Err(MemoryError::Truncate(io::Error::last_os_error()));
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a valid fd with an integer argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(MemoryError::Seal(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// The default huge page size (`Hugepagesize` in /proc/meminfo; 2 MiB if
/// it cannot be read), which `MFD_HUGETLB` uses.
pub fn huge_page_size() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_huge_page_size(&text))
        .unwrap_or(2 << 20)
}

fn parse_huge_page_size(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// Maps a new region fd, naming the usual cause when a huge-page region
/// cannot be mapped (the kernel reserves its pages at mmap time).
pub fn map_new_region(fd: &OwnedFd, size: u64, hugepages: bool) -> Result<Mapping, MemoryError> {
    Mapping::new(fd).map_err(|e| match e {
        MemoryError::Map(io) if hugepages && io.raw_os_error() == Some(libc::ENOMEM) => {
            MemoryError::NoHugePages {
                size,
                pages: size.div_ceil(huge_page_size()),
            }
        }
        e => e,
    })
}

/// Size of the file behind `fd`, plus its (device, inode) identity.
pub fn fd_identity(fd: &impl AsRawFd) -> Result<(u64, (u64, u64)), MemoryError> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into st, a valid stat struct.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(MemoryError::Stat(io::Error::last_os_error()));
    }
    Ok((st.st_size as u64, (st.st_dev, st.st_ino)))
}

/// A read-write shared mapping of a whole region fd.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through raw
// pointer copies or atomics, which are fine from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `fd` read-write and shared; the length is the file's size.
    pub fn new(fd: &impl AsRawFd) -> Result<Self, MemoryError> {
        let (size, _) = fd_identity(fd)?;
        check_region_size(size)?;
        let len = size as usize;
        // SAFETY: mapping a fresh range chosen by the kernel; the result is
        // checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr as *mut u8)
            .ok_or_else(|| MemoryError::Map(io::Error::from_raw_os_error(libc::EFAULT)))?;
        Ok(Self { ptr, len })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (mappings are at least [`MIN_REGION_SIZE`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The header/state table view of an initialised region.
    pub fn region(&self) -> Result<Region<'_>, MemoryError> {
        // SAFETY: the mapping is len bytes, page aligned, and lives as long
        // as the returned borrow of self.
        unsafe { Region::open(self.as_ptr(), self.len) }.map_err(MemoryError::Layout)
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MemoryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemoryError::Bounds { offset, len }),
        }
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        self.check(offset, data.len())?;
        // SAFETY: the destination range is inside the mapping (checked);
        // other peers may access it concurrently, which for shared memory is
        // the point; no Rust reference to the region bytes is formed.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copies bytes at `offset` out of the region into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        self.check(offset, out.len())?;
        // SAFETY: the source range is inside the mapping (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and nobody else unmaps.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_size_is_read_from_meminfo() {
        let text = "MemTotal: 1 kB\nHugepagesize:       2048 kB\nHugetlb: 0 kB\n";
        assert_eq!(parse_huge_page_size(text), Some(2 << 20));
        assert_eq!(
            parse_huge_page_size("Hugepagesize: 1048576 kB"),
            Some(1 << 30)
        );
        assert_eq!(parse_huge_page_size("Hugepagesize: lots"), None);
        assert_eq!(parse_huge_page_size("MemTotal: 1 kB"), None);
    }

    #[test]
    fn huge_page_region_must_be_whole_huge_pages() {
        let page = huge_page_size();
        match create_memfd("t", page / 2, true) {
            Err(MemoryError::HugeSize { size, page: p }) => {
                assert_eq!((size, p), (page / 2, page));
            }
            other => panic!("expected HugeSize, got {other:?}"),
        }
    }

    #[test]
    fn non_power_of_two_size_is_rejected() {
        assert!(matches!(
            create_memfd("t", 3 << 20, false),
            Err(MemoryError::Size(_))
        ));
        assert!(matches!(
            create_memfd("t", 4096, false),
            Err(MemoryError::Size(_))
        ));
    }

    #[test]
    fn sealed_memfd_cannot_shrink_or_grow() {
        let fd = create_memfd("t", 1 << 20, false).unwrap();
        // SAFETY: ftruncate on a valid fd.
        let shrink = unsafe { libc::ftruncate(fd.as_raw_fd(), 4096) };
        assert!(shrink < 0);
        // SAFETY: ftruncate on a valid fd.
        let grow = unsafe { libc::ftruncate(fd.as_raw_fd(), 2 << 20) };
        assert!(grow < 0);
        assert_eq!(fd_identity(&fd).unwrap().0, 1 << 20);
    }

    #[test]
    fn two_mappings_see_each_others_writes() {
        let fd = create_memfd("t", 1 << 16, false).unwrap();
        let a = Mapping::new(&fd).unwrap();
        let b = Mapping::new(&fd).unwrap();
        a.write(100, b"shoal").unwrap();
        let mut out = [0u8; 5];
        b.read(100, &mut out).unwrap();
        assert_eq!(&out, b"shoal");
    }

    #[test]
    fn out_of_bounds_access_is_rejected() {
        let fd = create_memfd("t", 1 << 16, false).unwrap();
        let map = Mapping::new(&fd).unwrap();
        assert!(map.write((1 << 16) - 2, b"abc").is_err());
        assert!(map.read(usize::MAX, &mut [0u8; 2]).is_err());
    }
}
