// SPDX-License-Identifier: Apache-2.0
//! The `memory` file: a raw image of guest RAM, sparse (zero pages are holes).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

/// Pages are tested for zero in this unit.
pub const PAGE: usize = 4096;
/// RAM is copied through a buffer of this size.
const CHUNK: usize = 1 << 20;

/// What writing the image did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Bytes of non-zero pages written.
    pub data_bytes: u64,
    /// Bytes left as holes.
    pub zero_bytes: u64,
}

/// True when every byte of `page` is zero.
pub fn is_zero(page: &[u8]) -> bool {
    // Word-wise: the compiler vectorises this loop.
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets
        // the aligned middle of the slice.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0)
        && words.iter().fold(0u64, |acc, &w| acc | w) == 0
        && tail.iter().all(|&b| b == 0)
}

/// The ranges of `file` in `[0, size)` that may hold data, found with
/// SEEK_DATA/SEEK_HOLE; the whole range when the file system cannot tell.
pub fn data_ranges(file: impl AsFd, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_fd().as_raw_fd();
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let Ok(at) = libc::off_t::try_from(pos) else {
            break;
        };
        // SAFETY: lseek on a valid fd only moves its offset (which no one
        // else relies on: all I/O here is positioned).
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // No data past `pos`.
            }
            return vec![(0, size)];
        }
        let start = start as u64;
        if start >= size {
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
        if end < 0 {
            return vec![(0, size)];
        }
        let end = (end as u64).min(size);
        ranges.push((start, end));
        pos = end;
    }
    ranges
}

/// Writes the first `size` bytes of `ram` to `out` with holes for zero pages.
pub fn write_image(ram: &File, size: u64, out: &File) -> io::Result<ImageStats> {
    out.set_len(0)?;
    out.set_len(size)?;
    let mut stats = ImageStats::default();
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in data_ranges(ram, size) {
        let mut pos = start;
        while pos < end {
            let len = ((end - pos) as usize).min(CHUNK);
            let chunk = &mut buf[..len];
            ram.read_exact_at(chunk, pos)?;
            write_nonzero_runs(chunk, pos, out, &mut stats)?;
            pos += len as u64;
        }
    }
    stats.zero_bytes = size - stats.data_bytes;
    Ok(stats)
}

/// Writes each run of non-zero pages of `chunk` (at file offset `base`).
fn write_nonzero_runs(
    chunk: &[u8],
    base: u64,
    out: &File,
    stats: &mut ImageStats,
) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut off = 0;
    while off <= chunk.len() {
        let zero = off == chunk.len() || is_zero(&chunk[off..(off + PAGE).min(chunk.len())]);
        match (zero, run_start) {
            (false, None) => run_start = Some(off),
            (true, Some(s)) => {
                out.write_all_at(&chunk[s..off], base + s as u64)?;
                stats.data_bytes += (off - s) as u64;
                run_start = None;
            }
            _ => {}
        }
        off += PAGE;
    }
    Ok(())
}

/// Zeroes `len` bytes of `file` at `offset` by freeing its pages (cheap,
/// unlike writing zeros; the file keeps its size).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on a valid fd only changes that file's contents.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the data of `image` (of `size` bytes) into `ram`, skipping holes.
pub fn read_image(image: &File, size: u64, ram: &File) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    for (start, end) in data_ranges(image, size) {
        let mut pos = start;
        while pos < end {
            let len = ((end - pos) as usize).min(CHUNK);
            let chunk = &mut buf[..len];
            image.read_exact_at(chunk, pos)?;
            if !is_zero(chunk) {
                ram.write_all_at(chunk, pos)?;
                copied += len as u64;
            }
            pos += len as u64;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(size: u64) -> File {
        crate::memory::create_memfd("snapshot-test", size).unwrap()
    }

    #[test]
    fn zero_test_sees_a_single_set_byte() {
        let mut page = vec![0u8; PAGE];
        assert!(is_zero(&page));
        page[PAGE - 1] = 1;
        assert!(!is_zero(&page));
        page[PAGE - 1] = 0;
        page[3] = 0x80;
        assert!(!is_zero(&page[1..]));
    }

    #[test]
    fn image_round_trips_and_zero_pages_are_holes() {
        let size = 64 * PAGE as u64;
        let ram = memfd(size);
        ram.write_all_at(b"first page", 0).unwrap();
        ram.write_all_at(b"page 40", 40 * PAGE as u64 + 100)
            .unwrap();
        // A touched page that is zero again must not be written either.
        ram.write_all_at(&[0u8; 16], 20 * PAGE as u64).unwrap();
        let dir = std::env::temp_dir().join(format!("shoal-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let stats = write_image(&ram, size, &out).unwrap();
        assert_eq!(stats.data_bytes, 2 * PAGE as u64);
        assert_eq!(out.metadata().unwrap().len(), size);

        let back = memfd(size);
        read_image(&out, size, &back).unwrap();
        let mut a = vec![0u8; size as usize];
        let mut b = vec![0u8; size as usize];
        ram.read_exact_at(&mut a, 0).unwrap();
        back.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn punched_hole_reads_as_zero_and_keeps_the_size() {
        let ram = memfd(4 * PAGE as u64);
        ram.write_all_at(&[7u8; 3 * PAGE], 0).unwrap();
        punch_hole(&ram, PAGE as u64, PAGE as u64).unwrap();
        let mut buf = vec![0u8; 3 * PAGE];
        ram.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..PAGE].iter().all(|&b| b == 7));
        assert!(is_zero(&buf[PAGE..2 * PAGE]));
        assert!(buf[2 * PAGE..].iter().all(|&b| b == 7));
        assert_eq!(ram.metadata().unwrap().len(), 4 * PAGE as u64);
    }

    #[test]
    fn untouched_memfd_has_no_data_ranges_or_the_whole_range() {
        let ram = memfd(1 << 20);
        let r = data_ranges(&ram, 1 << 20);
        assert!(r.is_empty() || r == vec![(0, 1 << 20)], "{r:?}");
    }
}
