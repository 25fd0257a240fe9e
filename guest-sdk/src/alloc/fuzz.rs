// SPDX-License-Identifier: Apache-2.0
//! A fuzzing entry point: allocator operation sequences decoded from bytes,
//! on a private region, with the heap checker as the oracle. Meant for a
//! cargo-fuzz target (`shoal::alloc::fuzz::run(data)`, panicking on `Err`).

use super::heap::Heap;
use super::journal::Tx;
use super::{AllocError, Shoal};
use crate::layout::{H_LOCK, PAGE};
use crate::ptr::ShmPtr;
use crate::sync::mutex;
use crate::transport::local::LocalRegion;

/// Runs the operations encoded in `data`; `Err` names the first broken
/// invariant (an inconsistent heap, a block handed out twice, an accepted
/// bad free, a failing valid free).
pub fn run(data: &[u8]) -> Result<(), String> {
    let region = LocalRegion::new(1 << 20, 4).map_err(|e| e.to_string())?;
    region.join(0);
    region.join(1);
    let a = Shoal::open_local(region.clone(), 0).map_err(|e| e.to_string())?;
    let mut b = Shoal::open_local(region.clone(), 1).map_err(|e| e.to_string())?;
    let mut live: Vec<u64> = Vec::new();
    let mut freed: Vec<u64> = Vec::new();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = u64::from(bytes.next().unwrap_or(0)) | u64::from(bytes.next().unwrap_or(0)) << 8;
        match op % 8 {
            0..=2 => {
                let size = if op & 0x80 != 0 { arg * 4 } else { arg % 2100 };
                match a.alloc(size) {
                    Ok(p) => {
                        if live.contains(&p.offset()) {
                            return Err(format!("{:#x} handed out twice", p.offset()));
                        }
                        freed.retain(|&f| f != p.offset());
                        live.push(p.offset());
                    }
                    Err(AllocError::BadSize(_) | AllocError::OutOfMemory(_)) => {}
                    Err(e) => return Err(format!("alloc({size}): {e}")),
                }
            }
            3 | 4 if !live.is_empty() => {
                let off = live.swap_remove(arg as usize % live.len());
                a.free(ShmPtr::<u8>::from_offset(off))
                    .map_err(|e| format!("valid free of {off:#x}: {e}"))?;
                freed.push(off);
            }
            5 => {
                // Something that is not a live block start: must be refused.
                let off = match freed.get(arg as usize % freed.len().max(1)) {
                    Some(&f) if op & 0x40 != 0 => f,
                    _ => arg * 8,
                };
                if !live.contains(&off) && a.free(ShmPtr::<u8>::from_offset(off)).is_ok() {
                    return Err(format!("bad free of {off:#x} accepted"));
                }
            }
            6 => {
                let name = format!("n{}", arg % 5);
                if op & 0x40 != 0 {
                    let _ = a.remove(&name);
                } else {
                    match a.find_or_create(&name, 1 + arg % (3 * PAGE)) {
                        Ok(_)
                        | Err(AllocError::SizeMismatch { .. } | AllocError::OutOfMemory(_)) => {}
                        Err(e) => return Err(format!("find_or_create: {e}")),
                    }
                }
            }
            _ => {
                // Peer 1 dies half-way through an operation; peer 0 recovers.
                let cx = &*b.inner;
                mutex::lock(cx, cx.geo.field(H_LOCK), None).map_err(|e| e.to_string())?;
                let mut tx = Tx::begin(&cx.mem, &cx.geo);
                let mut heap = Heap { tx: &mut tx };
                let _ = heap.alloc_small((arg % 24) as usize);
                let _ = heap.alloc_large(1 + (arg % 7) as u32, cx.tag);
                if let Some(&off) = live.first() {
                    let _ = heap.free(off, false);
                }
                region.kill(1);
                region.join(1);
                b = Shoal::open_local(region.clone(), 1).map_err(|e| e.to_string())?;
            }
        }
        let report = a.check_heap(&live).map_err(|e| e.to_string())?;
        if !report.is_consistent() {
            return Err(format!("after op {op}: {:?}", report.errors));
        }
        if !report.leaks.is_empty() {
            return Err(format!("after op {op}: leaked {:?}", report.leaks));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_operation_sequences_pass_the_oracle() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20 {
            let data: Vec<u8> = (0..600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            run(&data).unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }

    #[test]
    fn empty_and_tiny_inputs_are_fine() {
        run(&[]).unwrap();
        run(&[7]).unwrap();
        run(&[5, 255, 255]).unwrap();
    }
}
