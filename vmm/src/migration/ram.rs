// SPDX-License-Identifier: Apache-2.0
//! Guest RAM as the sender reads it: the VM's own mappings, addressed by
//! RAM file offset, so pages are copied once from guest memory into the
//! frame being built (no `pread` through the page cache).

use vm_memory::VolatileSlice;

use super::frame::PAGE_SIZE;

/// A range of RAM that no mapping covers.
#[derive(Debug, thiserror::Error)]
#[error("RAM bytes {offset:#x}..{end:#x} are not mapped")]
pub struct Unmapped {
    pub offset: u64,
    pub end: u64,
}

/// All of guest RAM, mapped: `(RAM file offset, memory)` per region.
#[derive(Debug)]
pub struct RamView<'a> {
    regions: Vec<(u64, VolatileSlice<'a>)>,
}

impl<'a> RamView<'a> {
    /// A view over `regions`, in any order.
    pub fn new(mut regions: Vec<(u64, VolatileSlice<'a>)>) -> Self {
        regions.sort_by_key(|r| r.0);
        RamView { regions }
    }

    /// Copies RAM at `offset` into `buf`. The guest may write the same
    /// memory meanwhile: such a page is torn, and the dirty log has it.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Unmapped> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        let mut done = 0usize;
        while done < buf.len() {
            // The region holding `at`: the last one starting at or before it.
            let i = self.regions.partition_point(|r| r.0 <= at);
            let (start, mem) = self
                .regions
                .get(i.wrapping_sub(1))
                .ok_or(Unmapped { offset: at, end })?;
            let within = (at - start) as usize;
            if within >= mem.len() {
                return Err(Unmapped { offset: at, end });
            }
            let n = (mem.len() - within).min(buf.len() - done);
            let src = mem
                .subslice(within, n)
                .map_err(|_| Unmapped { offset: at, end })?;
            if src.copy_to(&mut buf[done..done + n]) != n {
                return Err(Unmapped { offset: at, end });
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }
}

/// Copies the `n` pages at `first` from `ram` into `buf`, leaving out the
/// zero pages: returns the bytes of data kept at the start of `buf` and
/// sets bit `i` of `zero_map` for each zero page `i`.
pub(crate) fn gather_pages(
    ram: &RamView<'_>,
    first: u64,
    n: usize,
    buf: &mut [u8],
    zero_map: &mut [u8],
) -> Result<usize, Unmapped> {
    zero_map.fill(0);
    let mut kept = 0usize;
    for i in 0..n {
        let slot = &mut buf[kept..kept + PAGE_SIZE];
        ram.read((first + i as u64) * PAGE_SIZE as u64, slot)?;
        // The page is in L1 now: testing it costs little.
        if crate::snapshot::memory::is_zero(slot) {
            zero_map[i / 8] |= 1 << (i % 8);
        } else {
            kept += PAGE_SIZE;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{MmapRegion, VolatileMemory};

    fn region(bytes: &[u8]) -> MmapRegion {
        let r = MmapRegion::new(bytes.len()).unwrap();
        r.as_volatile_slice().copy_from(bytes);
        r
    }

    #[test]
    fn reads_span_regions_in_file_order() {
        let low = region(&[1u8; 8192]);
        let high = region(&[2u8; 4096]);
        // Given out of order: high RAM at file offset 8192.
        let view = RamView::new(vec![
            (8192, high.as_volatile_slice()),
            (0, low.as_volatile_slice()),
        ]);
        let mut buf = [0u8; 8];
        view.read(8188, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn reads_past_the_end_or_into_a_gap_fail() {
        let low = region(&[1u8; 4096]);
        let high = region(&[2u8; 4096]);
        let view = RamView::new(vec![
            (0, low.as_volatile_slice()),
            (8192, high.as_volatile_slice()),
        ]);
        let mut buf = [0u8; 16];
        assert!(view.read(4090, &mut buf).is_err(), "gap at 4096..8192");
        assert!(view.read(12280, &mut buf).is_err(), "end at 12288");
        assert!(view.read(8192, &mut buf).is_ok());
    }

    #[test]
    fn gathered_pages_leave_zero_pages_out() {
        let mut bytes = vec![0u8; 4 * PAGE_SIZE];
        bytes[PAGE_SIZE] = 7; // page 1
        bytes[4 * PAGE_SIZE - 1] = 9; // page 3
        let r = region(&bytes);
        let view = RamView::new(vec![(0, r.as_volatile_slice())]);
        let mut buf = vec![0u8; 4 * PAGE_SIZE];
        let mut map = [0u8; 1];
        let kept = gather_pages(&view, 0, 4, &mut buf, &mut map).unwrap();
        assert_eq!(kept, 2 * PAGE_SIZE);
        assert_eq!(map[0], 0b0101);
        assert_eq!(buf[0], 7);
        assert_eq!(buf[2 * PAGE_SIZE - 1], 9);
    }
}
