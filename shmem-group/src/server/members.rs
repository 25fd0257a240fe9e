// SPDX-License-Identifier: Apache-2.0
//! The server's authoritative member registry: who holds which id, their
//! eventfds and identity tokens. The state table in the region mirrors it.

use std::io;

pub use crate::doorbells::new_eventfd;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Key of a connection in the server's connection slab.
pub type ConnKey = usize;

/// State of one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Never used.
    Absent,
    /// Held by a member (connected, or adopted and not yet reconnected).
    Live,
    /// Its holder's connection closed.
    Dead,
}

/// One id's record.
#[derive(Debug)]
pub struct Slot {
    /// State.
    pub state: SlotState,
    /// The member's connection (`None` for an adopted peer that has not
    /// reconnected yet, or when not live).
    pub conn: Option<ConnKey>,
    /// One eventfd per vector (empty when unknown).
    pub eventfds: Vec<Arc<OwnedFd>>,
    /// Identity token (kept after death so the owner can come back).
    pub token: Option<String>,
    /// Host pid.
    pub pid: u32,
    /// Joined through the extension socket.
    pub extension: bool,
}

impl Slot {
    fn absent() -> Self {
        Self {
            state: SlotState::Absent,
            conn: None,
            eventfds: Vec::new(),
            token: None,
            pid: 0,
            extension: false,
        }
    }
}

/// All ids of a group.
#[derive(Debug)]
pub struct Members {
    slots: Vec<Slot>,
}

impl Members {
    /// `max_peers` absent slots.
    pub fn new(max_peers: u32) -> Self {
        Self {
            slots: (0..max_peers).map(|_| Slot::absent()).collect(),
        }
    }

    /// A slot by id.
    pub fn get(&self, id: u16) -> Option<&Slot> {
        self.slots.get(usize::from(id))
    }

    /// A mutable slot by id.
    pub fn get_mut(&mut self, id: u16) -> Option<&mut Slot> {
        self.slots.get_mut(usize::from(id))
    }

    /// Ids and slots, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Slot)> {
        self.slots.iter().enumerate().map(|(i, s)| (i as u16, s))
    }

    /// Ids of live members.
    pub fn live_ids(&self) -> Vec<u16> {
        self.iter()
            .filter(|(_, s)| s.state == SlotState::Live)
            .map(|(id, _)| id)
            .collect()
    }

    /// The id whose slot carries `token`.
    pub fn by_token(&self, token: &str) -> Option<u16> {
        self.iter()
            .find(|(_, s)| s.token.as_deref() == Some(token))
            .map(|(id, _)| id)
    }

    /// Picks an id for a newcomer: the smallest never-used id, else the
    /// smallest dead one (its generation is bumped), so recently dead ids
    /// are reused last.
    pub fn allocate(&self) -> Option<u16> {
        let first = |state| {
            self.iter()
                .find(|(_, s)| s.state == state)
                .map(|(id, _)| id)
        };
        first(SlotState::Absent).or_else(|| first(SlotState::Dead))
    }

    /// Whether `id` may be handed to a client presenting `token`.
    pub fn claimable(&self, id: u16, token: Option<&str>) -> bool {
        let Some(slot) = self.get(id) else {
            return false;
        };
        let token_ok = match (&slot.token, token) {
            (None, _) => true,
            (Some(held), Some(given)) => held == given,
            (Some(_), None) => false,
        };
        match slot.state {
            SlotState::Absent => true,
            SlotState::Dead => token_ok,
            // A connected member can only be taken over by its own token
            // (live migration); plain v0 members have none.
            SlotState::Live if slot.conn.is_some() => {
                slot.token.is_some() && slot.token.as_deref() == token
            }
            SlotState::Live => token_ok,
        }
    }
}

/// A random 128-bit identity token, hex encoded.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the remaining bytes of the buffer.
        let n = unsafe {
            libc::getrandom(
                bytes[filled..].as_mut_ptr() as *mut libc::c_void,
                bytes.len() - filled,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_prefers_unused_then_dead_ids() {
        let mut m = Members::new(3);
        assert_eq!(m.allocate(), Some(0));
        m.get_mut(0).unwrap().state = SlotState::Live;
        m.get_mut(1).unwrap().state = SlotState::Dead;
        assert_eq!(m.allocate(), Some(2));
        m.get_mut(2).unwrap().state = SlotState::Live;
        assert_eq!(m.allocate(), Some(1));
        m.get_mut(1).unwrap().state = SlotState::Live;
        assert_eq!(m.allocate(), None);
    }

    #[test]
    fn token_guards_claims() {
        let mut m = Members::new(2);
        m.get_mut(1).unwrap().state = SlotState::Dead;
        m.get_mut(1).unwrap().token = Some("abc".into());
        assert!(m.claimable(1, Some("abc")));
        assert!(!m.claimable(1, Some("xyz")));
        assert!(!m.claimable(1, None));
        assert!(m.claimable(0, None));
        assert!(!m.claimable(9, None));
        assert_eq!(m.by_token("abc"), Some(1));
    }

    #[test]
    fn connected_member_without_token_cannot_be_taken_over() {
        let mut m = Members::new(1);
        let slot = m.get_mut(0).unwrap();
        slot.state = SlotState::Live;
        slot.conn = Some(3);
        assert!(!m.claimable(0, None));
        assert!(!m.claimable(0, Some("t")));
        m.get_mut(0).unwrap().conn = None;
        assert!(m.claimable(0, None));
    }

    #[test]
    fn tokens_are_unique_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
