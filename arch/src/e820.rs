// SPDX-License-Identifier: Apache-2.0
//! The e820 memory map handed to the guest, shared by the Linux zero page
//! and the PVH start info.

use crate::layout::{
    low_ram_end, ram_regions, ACPI_END, EBDA_START, HIGH_RAM_START, PCI_ECAM_SIZE, PCI_ECAM_START,
};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 (or PVH memory map) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for a guest with `ram_bytes` of RAM, sorted by address:
/// RAM below the EBDA, the reserved EBDA/ROM/ACPI area up to 1 MiB, RAM from
/// 1 MiB to the top of low RAM, the reserved PCI ECAM area, and RAM above
/// 4 GiB if any. The 3 GiB..4 GiB hole is otherwise absent (not RAM).
///
/// `ram_bytes` must have passed [`crate::layout::check_ram_bytes`].
pub fn e820_entries(ram_bytes: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(ram_bytes).0;
    let mut entries = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START.0,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START.0,
            size: ACPI_END.0 - EBDA_START.0,
            kind: E820_RESERVED,
        },
    ];
    if low_end > HIGH_RAM_START.0 {
        entries.push(E820Entry {
            addr: HIGH_RAM_START.0,
            size: low_end - HIGH_RAM_START.0,
            kind: E820_RAM,
        });
    }
    entries.push(E820Entry {
        addr: PCI_ECAM_START.0,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    for (start, size) in ram_regions(ram_bytes).into_iter().skip(1) {
        entries.push(E820Entry {
            addr: start.0,
            size,
            kind: E820_RAM,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn map_for_128_mib_guest() {
        let map = e820_entries(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x6_0400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: MIB,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0xe000_0000,
                    size: 256 * MIB,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn map_for_4_gib_guest_skips_the_hole() {
        let map = e820_entries(4 * GIB);
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[2],
            E820Entry {
                addr: MIB,
                size: 3 * GIB - MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 4 * GIB - (MIB - 0x9_fc00));
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for ram in [2 * MIB, 128 * MIB, 3 * GIB, 4 * GIB, 64 * GIB] {
            let map = e820_entries(ram);
            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{ram}: {pair:?}"
                );
            }
        }
    }
}
