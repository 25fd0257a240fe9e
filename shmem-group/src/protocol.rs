// SPDX-License-Identifier: Apache-2.0
//! QEMU's ivshmem-server protocol, version 0 (pure encode/decode, no I/O).
//!
//! Every message is one little-endian `i64`, optionally with one file
//! descriptor sent over `SCM_RIGHTS`. The server sends, in order:
//! 1. `0` (the protocol version, no fd);
//! 2. the client's own peer id (no fd);
//! 3. `-1` with the shared-memory fd;
//! 4. for each existing peer, its id once per vector, each with one eventfd
//!    (the N-th message for a peer carries vector N-1);
//! 5. the client's own id once per vector, each with its own eventfd.
//!
//! Afterwards: a peer id with an fd announces a vector of a new peer, a peer
//! id without an fd says that peer left. The client never writes.
//!
//! [`V0Decoder`] tracks that sequence for a client. It is generic over the fd
//! type so a fuzz target can drive it with `()` instead of real descriptors.

use std::collections::BTreeMap;
use thiserror::Error;

/// The only protocol version QEMU accepts.
pub const PROTOCOL_VERSION: i64 = 0;
/// The value that accompanies the shared-memory fd.
pub const SHM_MESSAGE: i64 = -1;
/// Largest peer id (the Doorbell register has 16 bits for it).
pub const MAX_PEER_ID: i64 = 65535;
/// Bytes in one message.
pub const MESSAGE_LEN: usize = 8;

/// Protocol violations seen by a client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message was not exactly eight bytes.
    #[error("Message has {0} bytes, expected 8")]
    Length(usize),
    /// More than one fd came with a message.
    #[error("Message came with {0} file descriptors")]
    TooManyFds(usize),
    /// The first message was not version 0 without an fd.
    #[error("Server sent protocol version {0}, expected 0")]
    Version(i64),
    /// The second message was not a valid id without an fd.
    #[error("Server sent an invalid own-id message {0}")]
    OwnId(i64),
    /// The third message was not -1 with an fd.
    #[error("Server sent {0} where the shared memory fd was expected")]
    ExpectedShm(i64),
    /// A message value outside -1..=65535, or a second shared-memory message.
    #[error("Server sent invalid message {0}")]
    Invalid(i64),
    /// A disconnect notification for ourselves.
    #[error("Server said our own peer {0} left")]
    SelfGone(u16),
    /// More eventfds for one peer than the client supports.
    #[error("Too many vectors for peer {0}")]
    TooManyVectors(u16),
}

/// One decoded raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMessage {
    /// The value.
    pub value: i64,
    /// Whether an fd came with it.
    pub has_fd: bool,
}

/// Encodes one message value.
pub fn encode(value: i64) -> [u8; MESSAGE_LEN] {
    value.to_le_bytes()
}

/// Decodes one message from exactly eight bytes and the number of fds that
/// arrived with them.
pub fn decode(bytes: &[u8], fds: usize) -> Result<RawMessage, ProtocolError> {
    let array: [u8; MESSAGE_LEN] = bytes
        .try_into()
        .map_err(|_| ProtocolError::Length(bytes.len()))?;
    if fds > 1 {
        return Err(ProtocolError::TooManyFds(fds));
    }
    Ok(RawMessage {
        value: i64::from_le_bytes(array),
        has_fd: fds == 1,
    })
}

/// What a message meant, in context.
#[derive(Debug, PartialEq, Eq)]
pub enum V0Event<F> {
    /// The version message (always 0).
    Version,
    /// Our own peer id.
    OwnId(u16),
    /// The shared-memory fd.
    Shm(F),
    /// An eventfd for ringing `peer` on `vector`.
    PeerVector {
        /// The peer.
        peer: u16,
        /// The vector this fd rings.
        vector: u32,
        /// The eventfd.
        fd: F,
    },
    /// One of our own eventfds (we wait on it).
    OwnVector {
        /// The vector.
        vector: u32,
        /// The eventfd.
        fd: F,
    },
    /// A peer left; its fds must be dropped.
    PeerGone(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    OwnId,
    Shm,
    Running,
}

/// Client-side state machine for the v0 message stream.
#[derive(Debug)]
pub struct V0Decoder {
    phase: Phase,
    own_id: Option<u16>,
    max_vectors: u32,
    vectors: BTreeMap<u16, u32>,
}

impl V0Decoder {
    /// A decoder that accepts at most `max_vectors` fds per peer.
    pub fn new(max_vectors: u32) -> Self {
        Self {
            phase: Phase::Version,
            own_id: None,
            max_vectors,
            vectors: BTreeMap::new(),
        }
    }

    /// A decoder for a resumed connection: past the greeting, with `own_id`
    /// and the listed peers already holding all their vectors.
    pub fn resumed(own_id: u16, max_vectors: u32, peers: impl IntoIterator<Item = u16>) -> Self {
        let mut vectors: BTreeMap<u16, u32> = peers.into_iter().map(|p| (p, max_vectors)).collect();
        vectors.insert(own_id, max_vectors);
        Self {
            phase: Phase::Running,
            own_id: Some(own_id),
            max_vectors,
            vectors,
        }
    }

    /// Our id, once received.
    pub fn own_id(&self) -> Option<u16> {
        self.own_id
    }

    /// Number of vectors received so far for `peer`.
    pub fn vectors_of(&self, peer: u16) -> u32 {
        self.vectors.get(&peer).copied().unwrap_or(0)
    }

    /// Whether the version, id and shared-memory messages have been seen.
    pub fn has_shm(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Interprets the next message. On error the fd (if any) is dropped and
    /// the connection should be closed.
    pub fn push<F>(&mut self, value: i64, fd: Option<F>) -> Result<V0Event<F>, ProtocolError> {
        match self.phase {
            Phase::Version => {
                if value != PROTOCOL_VERSION || fd.is_some() {
                    return Err(ProtocolError::Version(value));
                }
                self.phase = Phase::OwnId;
                Ok(V0Event::Version)
            }
            Phase::OwnId => {
                if !(0..=MAX_PEER_ID).contains(&value) || fd.is_some() {
                    return Err(ProtocolError::OwnId(value));
                }
                let id = value as u16;
                self.own_id = Some(id);
                self.phase = Phase::Shm;
                Ok(V0Event::OwnId(id))
            }
            Phase::Shm => match fd {
                Some(fd) if value == SHM_MESSAGE => {
                    self.phase = Phase::Running;
                    Ok(V0Event::Shm(fd))
                }
                _ => Err(ProtocolError::ExpectedShm(value)),
            },
            Phase::Running => self.push_running(value, fd),
        }
    }

    fn push_running<F>(&mut self, value: i64, fd: Option<F>) -> Result<V0Event<F>, ProtocolError> {
        if !(0..=MAX_PEER_ID).contains(&value) {
            return Err(ProtocolError::Invalid(value));
        }
        let peer = value as u16;
        let own = self.own_id == Some(peer);
        match fd {
            Some(fd) => {
                let count = self.vectors.entry(peer).or_insert(0);
                if *count >= self.max_vectors {
                    return Err(ProtocolError::TooManyVectors(peer));
                }
                let vector = *count;
                *count += 1;
                if own {
                    Ok(V0Event::OwnVector { vector, fd })
                } else {
                    Ok(V0Event::PeerVector { peer, vector, fd })
                }
            }
            None if own => Err(ProtocolError::SelfGone(peer)),
            None => {
                self.vectors.remove(&peer);
                Ok(V0Event::PeerGone(peer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeted(max_vectors: u32, own: i64) -> V0Decoder {
        let mut d = V0Decoder::new(max_vectors);
        d.push::<()>(0, None).unwrap();
        d.push::<()>(own, None).unwrap();
        d.push(-1, Some(())).unwrap();
        d
    }

    #[test]
    fn encode_is_little_endian() {
        assert_eq!(encode(-1), [0xff; 8]);
        assert_eq!(encode(258), [2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn decode_rejects_wrong_length_and_fd_count() {
        assert_eq!(decode(&[0; 7], 0), Err(ProtocolError::Length(7)));
        assert_eq!(decode(&[0; 9], 0), Err(ProtocolError::Length(9)));
        assert_eq!(decode(&[0; 8], 2), Err(ProtocolError::TooManyFds(2)));
        assert_eq!(
            decode(&encode(5), 1),
            Ok(RawMessage {
                value: 5,
                has_fd: true
            })
        );
    }

    #[test]
    fn full_greeting_assigns_vectors_in_order() {
        let mut d = greeted(2, 3);
        assert_eq!(d.own_id(), Some(3));
        assert_eq!(
            d.push(1, Some('a')),
            Ok(V0Event::PeerVector {
                peer: 1,
                vector: 0,
                fd: 'a'
            })
        );
        assert_eq!(
            d.push(1, Some('b')),
            Ok(V0Event::PeerVector {
                peer: 1,
                vector: 1,
                fd: 'b'
            })
        );
        assert_eq!(
            d.push(3, Some('c')),
            Ok(V0Event::OwnVector { vector: 0, fd: 'c' })
        );
        assert_eq!(d.vectors_of(1), 2);
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut d = V0Decoder::new(1);
        assert_eq!(d.push::<()>(1, None), Err(ProtocolError::Version(1)));
        let mut d = V0Decoder::new(1);
        assert_eq!(d.push(0, Some(())), Err(ProtocolError::Version(0)));
    }

    #[test]
    fn own_id_out_of_range_is_rejected() {
        let mut d = V0Decoder::new(1);
        d.push::<()>(0, None).unwrap();
        assert_eq!(d.push::<()>(65536, None), Err(ProtocolError::OwnId(65536)));
    }

    #[test]
    fn missing_shm_fd_is_rejected() {
        let mut d = V0Decoder::new(1);
        d.push::<()>(0, None).unwrap();
        d.push::<()>(0, None).unwrap();
        assert_eq!(d.push::<()>(-1, None), Err(ProtocolError::ExpectedShm(-1)));
    }

    #[test]
    fn extra_vectors_are_rejected() {
        let mut d = greeted(1, 0);
        d.push(2, Some(())).unwrap();
        assert_eq!(d.push(2, Some(())), Err(ProtocolError::TooManyVectors(2)));
    }

    #[test]
    fn peer_gone_resets_its_vectors() {
        let mut d = greeted(1, 0);
        d.push(2, Some(())).unwrap();
        assert_eq!(d.push::<()>(2, None), Ok(V0Event::PeerGone(2)));
        assert_eq!(d.vectors_of(2), 0);
        assert!(d.push(2, Some(())).is_ok());
    }

    #[test]
    fn resumed_decoder_knows_existing_peers() {
        let mut d = V0Decoder::resumed(1, 2, [0, 3]);
        assert!(d.has_shm());
        assert_eq!(d.push(0, Some(())), Err(ProtocolError::TooManyVectors(0)));
        assert_eq!(d.push::<()>(3, None), Ok(V0Event::PeerGone(3)));
        assert!(matches!(
            d.push(5, Some(())),
            Ok(V0Event::PeerVector {
                peer: 5,
                vector: 0,
                ..
            })
        ));
    }

    #[test]
    fn self_gone_and_negative_values_are_rejected() {
        let mut d = greeted(1, 4);
        assert_eq!(d.push::<()>(4, None), Err(ProtocolError::SelfGone(4)));
        assert_eq!(d.push::<()>(-1, None), Err(ProtocolError::Invalid(-1)));
        assert_eq!(d.push::<()>(-7, None), Err(ProtocolError::Invalid(-7)));
    }
}
