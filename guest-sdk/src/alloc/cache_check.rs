// SPDX-License-Identifier: Apache-2.0
//! The heap checker's part for thread caches: every cached object is named
//! by exactly one cache entry, and every entry of a live peer's cache names
//! a cached object of its class (a dead peer's cache may also name an
//! object its thread was handing out or taking back when it died). Live peers' threads change their caches without the heap lock, so
//! [`sequences`] and [`changed`] tell the checker whether its view of them
//! was stable.

use super::cache::{self, count_at, entry_at, CAP, C_SEQ};
use super::check::HeapReport;
use super::heap::Heap;
use super::journal::Tx;
use super::AllocError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{fence, Ordering};

/// Objects in cached state: offset → class.
pub(crate) type Cached = BTreeMap<u64, usize>;

/// The sequence words of the live peers' caches.
pub(crate) fn sequences(
    tx: &mut Tx<'_>,
    alive: &dyn Fn(u32) -> bool,
) -> Result<Vec<(u64, u32)>, AllocError> {
    let mut out = Vec::new();
    for (page, owner) in cache::list(tx)? {
        if alive(owner) {
            out.push((page, tx.mem.u32(page + C_SEQ)?.load(Ordering::Acquire)));
        }
    }
    Ok(out)
}

/// How many of the caches in `before` were busy or changed since.
pub(crate) fn changed(tx: &Tx<'_>, before: &[(u64, u32)]) -> Result<u32, AllocError> {
    fence(Ordering::Acquire);
    let mut busy = 0;
    for &(page, seq) in before {
        let now = tx.mem.u32(page + C_SEQ)?.load(Ordering::Acquire);
        busy += u32::from(now != seq || seq & 1 != 0);
    }
    Ok(busy)
}

/// Checks the cache pages (page index → owner) against the objects found
/// in cached state (and the held blocks); counts caches in `r` and returns
/// the errors.
pub(crate) fn check(
    h: &Heap<'_, '_>,
    pages: &BTreeMap<u32, u32>,
    cached: &Cached,
    held: &BTreeMap<u64, u64>,
    alive: &dyn Fn(u32) -> bool,
    r: &mut HeapReport,
) -> Result<Vec<String>, AllocError> {
    let mut errors = Vec::new();
    let mut found = BTreeSet::new();
    for (&page, &owner) in pages {
        let cache = h.page_offset(page);
        let dead = !alive(owner);
        r.caches += 1;
        r.dead_caches += u32::from(dead);
        for (c, &cap) in CAP.iter().enumerate() {
            let n = h.tx.get32(count_at(cache, c))?;
            if n > cap {
                errors.push(format!("cache page {page}: class {c} holds {n}"));
            }
            for i in 0..cap {
                let x = h.tx.get64(entry_at(cache, c, i))?;
                // A dead peer may have stopped between writing an entry
                // and its count: only live caches must agree exactly.
                if !dead && (x == 0) == (i < n) {
                    errors.push(format!(
                        "cache page {page}: class {c} entry {i} does not match count {n}"
                    ));
                }
                if x == 0 {
                    continue;
                }
                match cached.get(&x) {
                    Some(&class) if class == c => {
                        if !found.insert(x) {
                            errors.push(format!("cached object {x:#x} is in two cache entries"));
                        }
                    }
                    _ if dead && held.contains_key(&x) => {}
                    _ => errors.push(format!(
                        "cache page {page}: entry {x:#x} is no cached object of class {c}"
                    )),
                }
            }
        }
    }
    for &x in cached.keys() {
        if !found.contains(&x) {
            errors.push(format!("cached object {x:#x} is in no cache"));
        }
    }
    Ok(errors)
}
