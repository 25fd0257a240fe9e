// SPDX-License-Identifier: Apache-2.0
//! The heap checker: walks every page descriptor, the free list, the class
//! lists and the name table, and reports what does not add up.

use super::heap::{
    self, Heap, CLASSES, D_BITMAP, D_FLAGS, D_KIND, D_LEN, D_NEXT, D_OWNER, D_PREV, D_USED, F_NAMED,
};
use super::journal::Tx;
use super::{names, AllocError};
use crate::layout::{H_CLASSES, H_FREE_HEAD, H_FREE_PAGES, PAGE};
use std::collections::{BTreeMap, BTreeSet};

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeapReport {
    /// Heap pages.
    pub pages: u32,
    /// Free pages.
    pub free_pages: u32,
    /// Free runs.
    pub free_runs: u32,
    /// Live large blocks.
    pub large_blocks: u32,
    /// Slab pages.
    pub slab_pages: u32,
    /// Live slab objects.
    pub objects: u64,
    /// Bytes in live blocks (usable sizes).
    pub allocated_bytes: u64,
    /// Named objects.
    pub named: u32,
    /// Allocated blocks neither named nor listed as live.
    pub leaks: Vec<u64>,
    /// Unnamed large blocks whose allocating peer is dead (candidates for
    /// [`crate::Shoal::reclaim_dead`]).
    pub dead_owned: Vec<u64>,
    /// Inconsistencies (empty for a healthy heap).
    pub errors: Vec<String>,
    /// Heap-lock recoveries so far.
    pub recoveries: u32,
}

impl HeapReport {
    /// True when no inconsistency was found.
    pub fn is_consistent(&self) -> bool {
        self.errors.is_empty()
    }
}

pub(crate) fn walk(
    tx: &mut Tx<'_>,
    live: &[u64],
    alive: &dyn Fn(u32) -> bool,
) -> Result<HeapReport, AllocError> {
    let geo = *tx.geo;
    let mut r = HeapReport {
        pages: geo.pages,
        ..HeapReport::default()
    };
    let h = Heap { tx };
    let mut blocks: BTreeMap<u64, u64> = BTreeMap::new();
    let mut flagged = BTreeSet::new();
    let mut free_heads = BTreeSet::new();
    let mut partial: BTreeSet<(usize, u32)> = BTreeSet::new();
    let mut p = 0u32;
    let mut prev_free = false;
    while p < geo.pages {
        let kind = h.get(p, D_KIND)?;
        let mut step = 1;
        let mut is_free = false;
        match kind {
            heap::K_FREE => match h.span_at(p, heap::K_FREE)? {
                Some(len) => {
                    if prev_free {
                        r.errors.push(format!("page {p}: free run not coalesced"));
                    }
                    r.free_pages += len;
                    r.free_runs += 1;
                    free_heads.insert(p);
                    step = len;
                    is_free = true;
                }
                None => r.errors.push(format!("page {p}: broken free run")),
            },
            heap::K_LARGE => match h.span_at(p, heap::K_LARGE)? {
                Some(n) => {
                    blocks.insert(h.page_offset(p), u64::from(n) * PAGE);
                    if h.get(p, D_FLAGS)? & F_NAMED != 0 {
                        flagged.insert(h.page_offset(p));
                    } else if !alive(h.get(p, D_OWNER)?) {
                        r.dead_owned.push(h.page_offset(p));
                    }
                    r.large_blocks += 1;
                    step = n;
                }
                None => r.errors.push(format!("page {p}: broken large block")),
            },
            heap::K_SLAB => check_slab(&h, p, &mut r, &mut blocks, &mut partial)?,
            k => r
                .errors
                .push(format!("page {p}: kind {k} outside any block")),
        }
        prev_free = is_free;
        p += step;
    }
    // The free list holds exactly the free runs.
    let mut seen = BTreeSet::new();
    let mut link = h.tx.get32(geo.field(H_FREE_HEAD))?;
    let mut prev = 0;
    while link != 0 {
        let page = link - 1;
        if !free_heads.contains(&page) || !seen.insert(page) {
            r.errors.push(format!(
                "free list: page {page} is not a free run (or repeats)"
            ));
            break;
        }
        if h.get(page, D_PREV)? != prev {
            r.errors
                .push(format!("free list: bad back link at page {page}"));
        }
        prev = link;
        link = h.get(page, D_NEXT)?;
    }
    if seen.len() != free_heads.len() {
        r.errors.push(format!(
            "free list has {} runs, heap has {}",
            seen.len(),
            free_heads.len()
        ));
    }
    let counted = h.tx.get32(geo.field(H_FREE_PAGES))?;
    if counted != r.free_pages {
        r.errors.push(format!(
            "free page count {counted}, walked {}",
            r.free_pages
        ));
    }
    // Each class list holds exactly the non-full slabs of that class.
    for c in 0..CLASSES.len() {
        let mut link = h.tx.get32(geo.field(H_CLASSES) + 4 * c as u64)?;
        let mut prev = 0;
        let mut n = 0;
        while link != 0 {
            let page = link - 1;
            if !partial.remove(&(c, page)) {
                r.errors.push(format!(
                    "class {c} list: page {page} is not a partial slab of it"
                ));
                break;
            }
            if h.get(page, D_PREV)? != prev {
                r.errors
                    .push(format!("class {c} list: bad back link at page {page}"));
            }
            n += 1;
            prev = link;
            link = h.get(page, D_NEXT)?;
            if n > geo.pages {
                break;
            }
        }
    }
    for (c, page) in partial {
        r.errors.push(format!(
            "page {page}: partial slab missing from class {c} list"
        ));
    }
    // Names point at live blocks big enough.
    let named = names::all(h.tx)?;
    r.named = named.len() as u32;
    let named_offsets: BTreeSet<u64> = named.iter().map(|e| e.offset).collect();
    for e in &named {
        match blocks.get(&e.offset) {
            Some(&size) if size >= e.size => {}
            _ => r
                .errors
                .push(format!("name slot {} points at no block", e.slot)),
        }
    }
    let live_set: BTreeSet<u64> = live.iter().copied().collect();
    for &off in &live_set {
        if !blocks.contains_key(&off) {
            r.errors
                .push(format!("live offset {off:#x} is not allocated"));
        }
    }
    if live_set.len() != live.len() {
        r.errors.push("a live offset is listed twice".into());
    }
    r.allocated_bytes = blocks.values().sum();
    r.leaks = blocks
        .keys()
        .filter(|o| !live_set.contains(o) && !named_offsets.contains(o))
        .copied()
        .collect();
    Ok(r)
}

fn check_slab(
    h: &Heap<'_, '_>,
    p: u32,
    r: &mut HeapReport,
    blocks: &mut BTreeMap<u64, u64>,
    partial: &mut BTreeSet<(usize, u32)>,
) -> Result<(), AllocError> {
    let c = h.get(p, D_LEN)? as usize;
    let Some(&size) = CLASSES.get(c) else {
        r.errors
            .push(format!("page {p}: slab of unknown class {c}"));
        return Ok(());
    };
    let cap = heap::per_page(c);
    let mut count = 0;
    for w in 0..4u32 {
        let bits = h.tx.get64(h.d(p, D_BITMAP + 8 * u64::from(w)))?;
        for b in 0..64 {
            if bits & (1 << b) == 0 {
                continue;
            }
            let i = w * 64 + b;
            if i >= cap {
                r.errors.push(format!("page {p}: bit {i} beyond the slab"));
                continue;
            }
            count += 1;
            blocks.insert(h.page_offset(p) + u64::from(i * size), u64::from(size));
        }
    }
    let used = h.get(p, D_USED)?;
    if used != count {
        r.errors
            .push(format!("page {p}: slab says {used} used, bitmap {count}"));
    }
    if count < cap {
        partial.insert((c, p));
    }
    r.slab_pages += 1;
    r.objects += u64::from(count);
    Ok(())
}
