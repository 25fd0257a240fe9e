// SPDX-License-Identifier: Apache-2.0
//! Owner tags and peer liveness from the server's state table.
//!
//! An owner tag is one 32-bit word naming a peer incarnation:
//! bits 0-15 hold `peer id + 1` (so 0 means "nobody"), bits 16-30 the low
//! 15 bits of the peer's generation, and bit 31 is left free for lock words
//! (the "waiters" bit). A tag is dead when its peer's entry is dead or
//! absent, or carries another generation (the id changed hands).

use shmem_group::layout::{PeerState, Region};

/// Bits of a lock word that hold the owner tag.
pub const TAG_MASK: u32 = 0x7fff_ffff;

/// Builds the owner tag of peer `id` at `generation`.
pub fn tag(id: u16, generation: u32) -> u32 {
    ((generation & 0x7fff) << 16) | (u32::from(id) + 1)
}

/// Peer id named by a tag, if any.
pub fn tag_peer(tag: u32) -> Option<u16> {
    let raw = (tag & 0xffff) as u16;
    raw.checked_sub(1)
}

/// Liveness checks against the state table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peers {
    region: Region<'static>,
}

impl Peers {
    /// # Safety
    /// The mapping behind `region` must outlive every use of this value.
    pub(crate) unsafe fn new(region: Region<'static>) -> Self {
        Self { region }
    }

    #[cfg(test)]
    pub(crate) fn region(&self) -> &Region<'static> {
        &self.region
    }

    /// Whether the incarnation named by `tag` is still in the group.
    /// Migrating counts as alive. Garbage tags are dead.
    pub(crate) fn alive(&self, tag: u32) -> bool {
        let tag = tag & TAG_MASK;
        let Some(id) = tag_peer(tag) else {
            return false;
        };
        let Some(snap) = self.region.peer(id) else {
            return false;
        };
        let same_generation = (snap.generation & 0x7fff) == (tag >> 16);
        same_generation && matches!(snap.state, Some(PeerState::Alive | PeerState::Migrating))
    }

    /// Our current tag, read from the table.
    pub(crate) fn tag_of(&self, id: u16) -> Option<u32> {
        self.region.peer(id).map(|s| tag(id, s.generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmem_group::layout::LayoutParams;

    fn table(buf: &mut [u64]) -> Peers {
        let len = buf.len() * 8;
        let params = LayoutParams {
            region_size: len as u64,
            max_peers: 8,
            vectors: 1,
            name: "t".into(),
        };
        // SAFETY: the buffer is aligned, len bytes, and outlives the view in
        // each test.
        let region = unsafe { Region::init(buf.as_mut_ptr() as *mut u8, len, &params) }.unwrap();
        // SAFETY: as above.
        unsafe { Peers::new(std::mem::transmute::<Region<'_>, Region<'static>>(region)) }
    }

    #[test]
    fn tag_round_trips_peer_id() {
        assert_eq!(tag_peer(tag(5, 9)), Some(5));
        assert_eq!(tag_peer(0), None);
        assert_ne!(tag(0, 0), 0);
    }

    #[test]
    fn tag_dies_with_generation_change() {
        let mut buf = vec![0u64; 1024];
        let peers = table(&mut buf);
        let g = peers
            .region()
            .set_peer(2, PeerState::Alive, 1, true)
            .unwrap();
        let t = tag(2, g);
        assert!(peers.alive(t));
        peers.region().set_peer(2, PeerState::Migrating, 1, false);
        assert!(peers.alive(t), "migrating is alive");
        peers.region().set_peer(2, PeerState::Dead, 1, true);
        assert!(!peers.alive(t));
        peers.region().set_peer(2, PeerState::Alive, 1, true);
        assert!(!peers.alive(t), "a new owner of the id is not the old one");
    }

    #[test]
    fn garbage_tags_are_dead() {
        let mut buf = vec![0u64; 1024];
        let peers = table(&mut buf);
        assert!(!peers.alive(0));
        assert!(!peers.alive(tag(100, 1)));
    }
}
