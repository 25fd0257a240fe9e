// SPDX-License-Identifier: Apache-2.0
//! A fuzzing entry point: allocator operation sequences decoded from bytes,
//! on a private region, with the heap checker as the oracle. Meant for a
//! cargo-fuzz target (`shoal::alloc::fuzz::run(data)`, panicking on `Err`).
//!
//! Two peers share the region; peer 1 frees some of peer 0's blocks (into
//! its own thread cache) and is made to die part-way through an operation:
//! a cached take or give stopped after any store, or a heap transaction
//! (an allocation, a cache refill or flush) stopped after any journal
//! record. After every operation the heap must be consistent, hold no
//! leaks but the blocks a dead peer had already taken, and have no dead
//! peer's cache left once peer 1 opened the region again.

use super::cache::{self, StopAfter, Take, CAP};
use super::heap::{self, Heap, Use};
use super::journal::Tx;
use super::{thread, AllocError, Shoal};
use crate::layout::{H_LOCK, PAGE};
use crate::ptr::ShmPtr;
use crate::sync::mutex;
use crate::transport::local::LocalRegion;
use std::sync::Arc;

/// The fuzzed state: the peers and what the program holds.
struct Run {
    region: Arc<LocalRegion>,
    a: Shoal,
    b: Shoal,
    /// Blocks peer 0 holds.
    live: Vec<u64>,
    /// Blocks freed and not handed out again since.
    freed: Vec<u64>,
    /// Blocks a dead peer 1 took from its cache (never freed).
    orphans: Vec<u64>,
}

/// Runs the operations encoded in `data`; `Err` names the first broken
/// invariant (an inconsistent heap, a block handed out twice, an accepted
/// bad free, a failing valid free, a leak, a dead peer's cache left over).
pub fn run(data: &[u8]) -> Result<(), String> {
    let region = LocalRegion::new(1 << 20, 4).map_err(|e| e.to_string())?;
    region.join(0);
    region.join(1);
    let mut r = Run {
        a: Shoal::open_local(region.clone(), 0).map_err(|e| e.to_string())?,
        b: Shoal::open_local(region.clone(), 1).map_err(|e| e.to_string())?,
        region,
        live: Vec::new(),
        freed: Vec::new(),
        orphans: Vec::new(),
    };
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = u64::from(bytes.next().unwrap_or(0)) | u64::from(bytes.next().unwrap_or(0)) << 8;
        r.step(op, arg)?;
        let mut expected: Vec<u64> = r.live.clone();
        expected.extend(&r.orphans);
        let report = r.a.check_heap(&expected).map_err(|e| e.to_string())?;
        if !report.is_consistent() {
            return Err(format!("after op {op}: {:?}", report.errors));
        }
        if !report.leaks.is_empty() {
            return Err(format!("after op {op}: leaked {:?}", report.leaks));
        }
        if report.busy_caches != 0 {
            return Err(format!("after op {op}: {} busy caches", report.busy_caches));
        }
        if op % 8 == 7 && report.dead_caches != 0 {
            return Err(format!("after op {op}: a dead peer's cache is left"));
        }
    }
    Ok(())
}

impl Run {
    fn step(&mut self, op: u8, arg: u64) -> Result<(), String> {
        match op % 8 {
            0..=2 => {
                let size = if op & 0x80 != 0 { arg * 4 } else { arg % 2100 };
                match self.a.alloc(size) {
                    Ok(p) => self.handed_out(p.offset())?,
                    Err(AllocError::BadSize(_) | AllocError::OutOfMemory(_)) => {}
                    Err(e) => return Err(format!("alloc({size}): {e}")),
                }
            }
            3 | 4 if !self.live.is_empty() => {
                let off = self.live.swap_remove(arg as usize % self.live.len());
                // Peer 1 frees some of peer 0's blocks (into its cache).
                let by = if op & 0x40 != 0 { &self.b } else { &self.a };
                by.free(ShmPtr::<u8>::from_offset(off))
                    .map_err(|e| format!("valid free of {off:#x}: {e}"))?;
                self.freed.push(off);
            }
            5 => {
                // Something that is not a held block start: must be refused
                // (freed blocks sit in a cache or their slab).
                let off = match self.freed.get(arg as usize % self.freed.len().max(1)) {
                    Some(&f) if op & 0x40 != 0 => f,
                    _ => arg * 8,
                };
                let held = self.live.contains(&off) || self.orphans.contains(&off);
                if !held && self.a.free(ShmPtr::<u8>::from_offset(off)).is_ok() {
                    return Err(format!("bad free of {off:#x} accepted"));
                }
            }
            6 => {
                let name = format!("n{}", arg % 5);
                if op & 0x40 != 0 {
                    let _ = self.a.remove(&name);
                } else {
                    match self.a.find_or_create(&name, 1 + arg % (3 * PAGE)) {
                        Ok(_)
                        | Err(AllocError::SizeMismatch { .. } | AllocError::OutOfMemory(_)) => {}
                        Err(e) => return Err(format!("find_or_create: {e}")),
                    }
                }
            }
            7 => {
                match op >> 3 & 3 {
                    0 => self.die_taking(arg)?,
                    1 => self.die_giving(arg)?,
                    _ => self.die_in_transaction(op, arg),
                }
                self.region.kill(1);
                self.region.join(1);
                // Opening again reclaims the dead incarnation's caches.
                self.b = Shoal::open_local(self.region.clone(), 1).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
        Ok(())
    }

    fn handed_out(&mut self, off: u64) -> Result<(), String> {
        if self.live.contains(&off) || self.orphans.contains(&off) {
            return Err(format!("{off:#x} handed out twice"));
        }
        self.freed.retain(|&f| f != off);
        self.live.push(off);
        Ok(())
    }

    /// Peer 1 dies while taking an object from its cache.
    fn die_taking(&mut self, arg: u64) -> Result<(), String> {
        let cx = &self.b.inner;
        let Some(page) = thread::page_for(cx) else {
            return Ok(());
        };
        let c = ((arg & 0xff) % CAP.len() as u64) as usize;
        let stop = (arg >> 8) as u32 % 4;
        let before = heap_objects(&self.b, c)?;
        match cache::take(&cx.mem, &cx.geo, page, c, &mut StopAfter(stop)) {
            Ok(Take::Got(_) | Take::Empty | Take::Stopped) => {
                // Once its state says held, the object is the dead
                // program's: it stays allocated.
                for x in before {
                    if state_of(&self.b, x)? == heap::S_HELD {
                        self.freed.retain(|&f| f != x);
                        self.orphans.push(x);
                    }
                }
                Ok(())
            }
            Err(e) => Err(format!("take: {e}")),
        }
    }

    /// Peer 1 dies while freeing one of peer 0's blocks into its cache.
    fn die_giving(&mut self, arg: u64) -> Result<(), String> {
        let Some(&x) = self.live.get(arg as usize % self.live.len().max(1)) else {
            return Ok(());
        };
        let cx = &self.b.inner;
        let Ok(Some(slot)) = cache::classify(&cx.mem, &cx.geo, x) else {
            return Ok(()); // a large block: not a cache operation
        };
        let Some(page) = thread::page_for(cx) else {
            return Ok(());
        };
        let stop = (arg >> 8) as u32 % 4;
        cache::give(&cx.mem, &cx.geo, page, x, &slot, &mut StopAfter(stop))
            .map_err(|e| format!("give: {e}"))?;
        // Once its state says cached, the free happened.
        if state_of(&self.b, x)? == heap::S_CACHED {
            self.live.retain(|&l| l != x);
            self.freed.push(x);
        }
        Ok(())
    }

    /// Peer 1 dies holding the heap lock, after `arg >> 8` journal records
    /// of an allocation, a refill or a flush of its cache.
    fn die_in_transaction(&mut self, op: u8, arg: u64) {
        let cx = &self.b.inner;
        let page = thread::page_for(cx);
        if mutex::lock(cx, cx.geo.field(H_LOCK), None).is_err() {
            return;
        }
        let mut tx = Tx::with_limit(&cx.mem, &cx.geo, arg >> 8);
        let c = ((arg & 0xff) % CAP.len() as u64) as usize;
        match (op >> 5, page) {
            (0 | 1, Some(page)) => {
                let _ = cache::refill(&mut tx, page, c);
            }
            (2, Some(page)) => {
                let _ = cache::flush(&mut tx, page, c, 0);
            }
            _ => {
                let mut heap = Heap { tx: &mut tx };
                let _ = heap.alloc_small(c);
                let _ = heap.alloc_large(1 + (arg % 7) as u32, cx.tag);
                if let Some(&off) = self.live.first() {
                    let _ = heap.free(off, Use::Plain);
                }
            }
        }
        // No commit, no unlock: the peer is gone.
    }
}

/// The objects of class `c` in this thread's cache of `s`.
fn heap_objects(s: &Shoal, c: usize) -> Result<Vec<u64>, String> {
    let cx = &s.inner;
    let Some(page) = thread::page_for(cx) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for i in 0..CAP[c] {
        let x = cx
            .mem
            .u64(cache::entry_at(page, c, i))
            .map_err(|e| e.to_string())?
            .load(std::sync::atomic::Ordering::Relaxed);
        if x != 0 {
            out.push(x);
        }
    }
    Ok(out)
}

/// The object state of small object `x`.
fn state_of(s: &Shoal, x: u64) -> Result<u8, String> {
    s.inner
        .transact(None, |tx| {
            let heap = Heap { tx };
            let (page, within) = heap.locate(x)?;
            let (_, index) = heap.slab_index(page, within, x)?;
            heap.state(page, index)
        })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(x: &mut u64) -> u8 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x as u8
    }

    #[test]
    fn pseudo_random_operation_sequences_pass_the_oracle() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20 {
            let data: Vec<u8> = (0..600).map(|_| xorshift(&mut x)).collect();
            run(&data).unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }

    #[test]
    fn every_crash_point_of_cached_operations_passes_the_oracle() {
        // Allocate and free (some through peer 1) to fill both caches, then
        // kill peer 1 at each store of a take and a give, and at each early
        // journal record of a refill and a flush.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for stop in 0..4u8 {
            for kind in [7u8, 7 | 8, 7 | 16, 7 | 16 | 64] {
                let mut data = Vec::new();
                for i in 0..40u8 {
                    data.extend([0, 16 + i % 5, 0]);
                }
                for _ in 0..30 {
                    data.extend([3 | 0x40, xorshift(&mut x), 0]);
                }
                data.extend([kind, 1, stop]);
                data.extend([kind, 1, stop * 3]);
                run(&data).unwrap_or_else(|e| panic!("kind {kind} stop {stop}: {e}"));
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs_are_fine() {
        run(&[]).unwrap();
        run(&[7]).unwrap();
        run(&[5, 255, 255]).unwrap();
    }
}
