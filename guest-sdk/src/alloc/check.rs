// SPDX-License-Identifier: Apache-2.0
//! The heap checker: walks every page descriptor and object state, the free
//! list, the class lists, the thread caches and the name table, and reports
//! what does not add up.

use super::cache_check::{self, Cached};
use super::heap::{
    self, Heap, CLASSES, D_BITMAP, D_FLAGS, D_KIND, D_LEN, D_NEXT, D_OWNER, D_PREV, D_USED,
    F_CACHE, F_NAMED, S_CACHED, S_FREE, S_HELD,
};
use super::journal::Tx;
use super::{names, AllocError};
use crate::layout::{H_CACHE_HEAD, H_CLASSES, H_FREE_HEAD, H_FREE_PAGES, PAGE, STATE_BYTES};
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
    /// Live large blocks (thread-cache pages not counted).
    pub large_blocks: u32,
    /// Slab pages.
    pub slab_pages: u32,
    /// Slab objects held by programs.
    pub objects: u64,
    /// Slab objects in thread caches (free for their threads to reuse).
    pub cached: u64,
    /// Thread caches (one page each).
    pub caches: u32,
    /// Thread caches of dead peers (emptied when memory runs out, when a
    /// peer opens the region, and by [`crate::Shoal::reclaim_dead`]).
    pub dead_caches: u32,
    /// Caches of live peers that kept changing while the checker walked
    /// the heap: their contents were not cross-checked this time.
    pub busy_caches: u32,
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

/// Walks the heap. The caller holds the heap lock, so only the threads of
/// live peers change their caches meanwhile: the walk is repeated (a few
/// times) until none of them did, else their contents go unchecked.
pub(crate) fn walk(
    tx: &mut Tx<'_>,
    live: &[u64],
    alive: &dyn Fn(u32) -> bool,
) -> Result<HeapReport, AllocError> {
    let mut tries = 0;
    loop {
        let before = cache_check::sequences(tx, alive)?;
        let (mut r, cache_errors) = walk_once(tx, live, alive)?;
        let busy = cache_check::changed(tx, &before)?;
        if busy == 0 || tries == 2 {
            if busy == 0 {
                r.errors.extend(cache_errors);
            }
            r.busy_caches = busy;
            return Ok(r);
        }
        tries += 1;
    }
}

/// Everything a page walk collects.
#[derive(Default)]
struct Walked {
    /// Held blocks: offset → usable size.
    blocks: BTreeMap<u64, u64>,
    /// Objects in cached state.
    cached: Cached,
    /// Cache pages (page index) and their owners.
    cache_pages: BTreeMap<u32, u32>,
    /// Large blocks flagged as named objects.
    flagged: BTreeSet<u64>,
    free_heads: BTreeSet<u32>,
    slabs: BTreeSet<u32>,
    partial: BTreeSet<(usize, u32)>,
}

/// One walk; returns the report and, separately, the cache-content errors
/// (only valid if no live cache changed meanwhile).
fn walk_once(
    tx: &mut Tx<'_>,
    live: &[u64],
    alive: &dyn Fn(u32) -> bool,
) -> Result<(HeapReport, Vec<String>), AllocError> {
    let geo = *tx.geo;
    let mut r = HeapReport {
        pages: geo.pages,
        ..HeapReport::default()
    };
    let h = Heap { tx };
    let mut w = Walked::default();
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
                    w.free_heads.insert(p);
                    step = len;
                    is_free = true;
                }
                None => r.errors.push(format!("page {p}: broken free run")),
            },
            heap::K_LARGE => match h.span_at(p, heap::K_LARGE)? {
                Some(n) => {
                    let flags = h.get(p, D_FLAGS)?;
                    let off = h.page_offset(p);
                    if flags & F_CACHE != 0 {
                        if n != 1 || flags & F_NAMED != 0 {
                            r.errors.push(format!("page {p}: malformed cache page"));
                        }
                        w.cache_pages.insert(p, h.get(p, D_OWNER)?);
                    } else {
                        w.blocks.insert(off, u64::from(n) * PAGE);
                        if flags & F_NAMED != 0 {
                            w.flagged.insert(off);
                        } else if !alive(h.get(p, D_OWNER)?) {
                            r.dead_owned.push(off);
                        }
                        r.large_blocks += 1;
                    }
                    step = n;
                }
                None => r.errors.push(format!("page {p}: broken large block")),
            },
            heap::K_SLAB => check_slab(&h, p, &mut r, &mut w)?,
            k => r
                .errors
                .push(format!("page {p}: kind {k} outside any block")),
        }
        prev_free = is_free;
        p += step;
    }
    // Only slab pages have object states.
    for p in (0..geo.pages).filter(|p| !w.slabs.contains(p)) {
        let states = heap::state_offset(&geo, p, 0);
        for i in 0..STATE_BYTES / 8 {
            if h.tx.get64(states + 8 * i)? != 0 {
                r.errors
                    .push(format!("page {p}: object states set outside a slab"));
                break;
            }
        }
    }
    // The free list holds exactly the free runs, each class list exactly
    // the non-full slabs of its class, the cache list exactly the caches.
    let free_list = walk_list(&h, geo.field(H_FREE_HEAD), "free list", &mut r.errors)?;
    if free_list != w.free_heads {
        r.errors.push(format!(
            "free list has {} runs, heap has {}",
            free_list.len(),
            w.free_heads.len()
        ));
    }
    let counted = h.tx.get32(geo.field(H_FREE_PAGES))?;
    if counted != r.free_pages {
        r.errors.push(format!(
            "free page count {counted}, walked {}",
            r.free_pages
        ));
    }
    for c in 0..CLASSES.len() {
        let what = format!("class {c} list");
        let head = geo.field(H_CLASSES) + 4 * c as u64;
        for page in walk_list(&h, head, &what, &mut r.errors)? {
            if !w.partial.remove(&(c, page)) {
                r.errors
                    .push(format!("{what}: page {page} is not a partial slab of it"));
            }
        }
    }
    for (c, page) in &w.partial {
        r.errors.push(format!(
            "page {page}: partial slab missing from class {c} list"
        ));
    }
    let cache_list = walk_list(&h, geo.field(H_CACHE_HEAD), "cache list", &mut r.errors)?;
    if cache_list.iter().ne(w.cache_pages.keys()) {
        r.errors.push(format!(
            "cache list has {} pages, heap has {}",
            cache_list.len(),
            w.cache_pages.len()
        ));
    }
    let cache_errors = cache_check::check(&h, &w.cache_pages, &w.cached, &w.blocks, alive, &mut r)?;
    r.cached = w.cached.len() as u64;
    check_names_and_live(&h, live, &w, &mut r)?;
    Ok((r, cache_errors))
}

/// Follows a list through the descriptors' links; returns its pages
/// (reporting cycles, bad back links and pages out of range).
fn walk_list(
    h: &Heap<'_, '_>,
    head: u64,
    what: &str,
    errors: &mut Vec<String>,
) -> Result<BTreeSet<u32>, AllocError> {
    let mut seen = BTreeSet::new();
    let mut link = h.tx.get32(head)?;
    let mut prev = 0;
    while link != 0 {
        let page = link - 1;
        if page >= h.tx.geo.pages || !seen.insert(page) {
            errors.push(format!("{what}: page {page} is out of range or repeats"));
            break;
        }
        if h.get(page, D_PREV)? != prev {
            errors.push(format!("{what}: bad back link at page {page}"));
        }
        prev = link;
        link = h.get(page, D_NEXT)?;
    }
    Ok(seen)
}

fn check_names_and_live(
    h: &Heap<'_, '_>,
    live: &[u64],
    w: &Walked,
    r: &mut HeapReport,
) -> Result<(), AllocError> {
    let named = names::all(h.tx)?;
    r.named = named.len() as u32;
    let named_offsets: BTreeSet<u64> = named.iter().map(|e| e.offset).collect();
    for e in &named {
        match w.blocks.get(&e.offset) {
            Some(&size) if size >= e.size && w.flagged.contains(&e.offset) => {}
            _ => r
                .errors
                .push(format!("name slot {} points at no named block", e.slot)),
        }
    }
    let live_set: BTreeSet<u64> = live.iter().copied().collect();
    for &off in &live_set {
        if !w.blocks.contains_key(&off) {
            r.errors
                .push(format!("live offset {off:#x} is not allocated"));
        }
    }
    if live_set.len() != live.len() {
        r.errors.push("a live offset is listed twice".into());
    }
    r.allocated_bytes = w.blocks.values().sum();
    r.leaks = w
        .blocks
        .keys()
        .filter(|o| !live_set.contains(o) && !named_offsets.contains(o))
        .copied()
        .collect();
    Ok(())
}

fn check_slab(
    h: &Heap<'_, '_>,
    p: u32,
    r: &mut HeapReport,
    w: &mut Walked,
) -> Result<(), AllocError> {
    let c = h.get(p, D_LEN)? as usize;
    let Some(&size) = CLASSES.get(c) else {
        r.errors
            .push(format!("page {p}: slab of unknown class {c}"));
        return Ok(());
    };
    w.slabs.insert(p);
    let cap = heap::per_page(c);
    let (mut count, mut held) = (0, 0);
    for i in 0..STATE_BYTES as u32 {
        let word = h.tx.get64(h.d(p, D_BITMAP + 8 * u64::from(i / 64)))?;
        let bit = word & (1 << (i % 64)) != 0;
        let state = h.state(p, i)?;
        let off = h.page_offset(p) + u64::from(i * size);
        match (i < cap, bit, state) {
            (_, false, S_FREE) => {}
            (true, true, S_HELD) => {
                w.blocks.insert(off, u64::from(size));
                held += 1;
            }
            (true, true, S_CACHED) => {
                w.cached.insert(off, c);
            }
            (false, _, _) => r
                .errors
                .push(format!("page {p}: object {i} beyond the slab is in use")),
            (true, _, _) => r.errors.push(format!(
                "page {p}: object {i} has bitmap bit {bit} but state {state}"
            )),
        }
        count += u32::from(bit);
    }
    let used = h.get(p, D_USED)?;
    if used != count {
        r.errors
            .push(format!("page {p}: slab says {used} used, bitmap {count}"));
    }
    if count < cap {
        w.partial.insert((c, p));
    }
    r.slab_pages += 1;
    r.objects += held;
    Ok(())
}
