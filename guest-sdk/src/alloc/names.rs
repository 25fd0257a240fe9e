// SPDX-License-Identifier: Apache-2.0
//! Named objects: a fixed table of (name, offset, size) so peers find each
//! other's data by name.
//!
//! ```text
//!  0 state   u32  0 empty, 1 used
//!  4 len     u32  name length
//!  8 name    40 bytes (5 × u64), zero padded
//! 48 offset  u64
//! 56 size    u64  requested size
//! ```

use super::journal::Tx;
use super::AllocError;
use crate::layout::{NAME_MAX, NAME_SLOTS, NAME_SLOT_SIZE};

const S_STATE: u64 = 0;
const S_LEN: u64 = 4;
const S_NAME: u64 = 8;
const S_OFFSET: u64 = 48;
const S_SIZE: u64 = 56;

/// A name packed into the table's five words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Name {
    len: u32,
    words: [u64; 5],
}

impl Name {
    pub(crate) fn new(name: &str) -> Result<Self, AllocError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > NAME_MAX || bytes.contains(&0) {
            return Err(AllocError::BadName);
        }
        let mut padded = [0u8; NAME_MAX];
        padded[..bytes.len()].copy_from_slice(bytes);
        let mut words = [0u64; 5];
        for (w, chunk) in words.iter_mut().zip(padded.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        Ok(Self {
            len: bytes.len() as u32,
            words,
        })
    }
}

/// A used slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) slot: u64,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

fn slot_at(tx: &Tx<'_>, i: u64) -> u64 {
    tx.geo.names + i * NAME_SLOT_SIZE
}

fn matches(tx: &Tx<'_>, at: u64, name: &Name) -> Result<bool, AllocError> {
    if tx.get32(at + S_STATE)? != 1 || tx.get32(at + S_LEN)? != name.len {
        return Ok(false);
    }
    for (i, w) in name.words.iter().enumerate() {
        if tx.get64(at + S_NAME + 8 * i as u64)? != *w {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Looks `name` up.
pub(crate) fn find(tx: &Tx<'_>, name: &Name) -> Result<Option<Entry>, AllocError> {
    for i in 0..NAME_SLOTS {
        let at = slot_at(tx, i);
        if matches(tx, at, name)? {
            return Ok(Some(Entry {
                slot: i,
                offset: tx.get64(at + S_OFFSET)?,
                size: tx.get64(at + S_SIZE)?,
            }));
        }
    }
    Ok(None)
}

/// All used slots.
pub(crate) fn all(tx: &Tx<'_>) -> Result<Vec<Entry>, AllocError> {
    let mut out = Vec::new();
    for i in 0..NAME_SLOTS {
        let at = slot_at(tx, i);
        if tx.get32(at + S_STATE)? == 1 {
            out.push(Entry {
                slot: i,
                offset: tx.get64(at + S_OFFSET)?,
                size: tx.get64(at + S_SIZE)?,
            });
        }
    }
    Ok(out)
}

/// Records `name` → (`offset`, `size`) in a free slot.
pub(crate) fn insert(
    tx: &mut Tx<'_>,
    name: &Name,
    offset: u64,
    size: u64,
) -> Result<(), AllocError> {
    let slot = (0..NAME_SLOTS)
        .map(|i| slot_at(tx, i))
        .find(|&at| tx.get32(at + S_STATE).is_ok_and(|s| s == 0))
        .ok_or(AllocError::NamesFull)?;
    tx.set32(slot + S_LEN, name.len)?;
    for (i, w) in name.words.iter().enumerate() {
        tx.set64(slot + S_NAME + 8 * i as u64, *w)?;
    }
    tx.set64(slot + S_OFFSET, offset)?;
    tx.set64(slot + S_SIZE, size)?;
    tx.set32(slot + S_STATE, 1)
}

/// Clears a slot.
pub(crate) fn remove(tx: &mut Tx<'_>, entry: &Entry) -> Result<(), AllocError> {
    let at = slot_at(tx, entry.slot);
    tx.set32(at + S_STATE, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_1_to_40_bytes_without_nul() {
        assert!(Name::new("").is_err());
        assert!(Name::new(&"x".repeat(41)).is_err());
        assert!(Name::new("a\0b").is_err());
        assert!(Name::new(&"x".repeat(40)).is_ok());
    }

    #[test]
    fn different_names_pack_differently() {
        assert_ne!(Name::new("matrix").unwrap(), Name::new("matriy").unwrap());
        assert_ne!(Name::new("a").unwrap(), Name::new("a\u{1}").unwrap());
    }
}
