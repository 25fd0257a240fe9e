// SPDX-License-Identifier: Apache-2.0
//! The Shoal extension protocol (version 1), spoken on `<socket>.ext`.
//!
//! See `docs/protocol.md` for the full description. In short: a client of
//! the extension socket writes a [`Request::Hello`] first; the server answers
//! with a [`Reply::Welcome`] and then, for peers, the ordinary v0 greeting on
//! the same connection. A plain QEMU client never connects to this socket, so
//! it never sees any of this.
//!
//! Framing:
//! - client → server: `u32` little-endian length, then that many bytes of
//!   JSON ([`Request`]). File descriptors (only [`Hello`] with `adopt`) are
//!   attached to the frame's bytes.
//! - server → client: the `i64` value [`EXT_FRAME_TAG`] (never valid in v0),
//!   a `u32` little-endian length, then JSON ([`Reply`]). Interleaved with
//!   plain v0 messages.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Extension protocol version.
pub const EXT_VERSION: u32 = 1;
/// Largest JSON body accepted in either direction.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// The v0-stream value that introduces an extension frame (v0 values are >= -1).
pub const EXT_FRAME_TAG: i64 = -2;
/// Suffix appended to the v0 socket path to get the extension socket path.
pub const EXT_SOCKET_SUFFIX: &str = ".ext";

/// Extension framing errors.
#[derive(Debug, Error)]
pub enum ExtError {
    /// A frame announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("Frame of {0} bytes is too large")]
    TooLarge(usize),
    /// The JSON body did not parse.
    #[error("Malformed frame")]
    Json(#[source] serde_json::Error),
}

/// Path of the extension socket that belongs to v0 socket `path`.
pub fn ext_socket_path(path: &Path) -> PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push(EXT_SOCKET_SUFFIX);
    PathBuf::from(os)
}

/// What a connection wants to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A group member (gets an id, the region and eventfds).
    Peer,
    /// A management client (status, watch); gets no id.
    Control,
}

/// The first frame of every extension connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Extension version the client speaks.
    pub ext_version: u32,
    /// Peer or control.
    pub role: Role,
    /// If set, the server refuses the client unless its group has this name.
    #[serde(default)]
    pub group: Option<String>,
    /// Peer identity token from an earlier [`Welcome`]: asks for the same id.
    #[serde(default)]
    pub token: Option<String>,
    /// The id the client held (with `token`, or with `adopt`).
    #[serde(default)]
    pub id: Option<u16>,
    /// Server restart: the client hands back the region and its own
    /// eventfds. Attached fds: the memfd, then `vectors` eventfds.
    #[serde(default)]
    pub adopt: Option<Adopt>,
    /// Resuming client: the peer ids whose eventfds it still holds. With
    /// this set the server skips the v0 greeting and only sends what changed
    /// (connects for peers not listed, disconnects for listed peers that are
    /// gone). Without it the client gets the full v0 greeting.
    #[serde(default)]
    pub known_peers: Option<Vec<u16>>,
}

/// Re-adoption data sent by a peer to a restarted server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopt {
    /// Number of own eventfds attached after the memfd.
    pub vectors: u32,
}

impl Hello {
    /// Number of fds that must accompany this frame.
    pub fn fd_count(&self) -> usize {
        self.adopt
            .as_ref()
            .map_or(0, |a| 1usize.saturating_add(a.vectors as usize))
    }
}

/// Client → server requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Must be first.
    Hello(Hello),
    /// Ask for a [`StatusReport`].
    Status,
    /// Subscribe to membership [`Event`]s.
    Watch,
    /// A peer announces it is being live-migrated (state becomes migrating
    /// until a connection with its token takes over, or it closes).
    Migrating,
}

impl Request {
    /// Number of fds that must accompany this frame.
    pub fn fd_count(&self) -> usize {
        match self {
            Self::Hello(hello) => hello.fd_count(),
            _ => 0,
        }
    }
}

/// Sent once after a successful hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Extension version the server speaks.
    pub ext_version: u32,
    /// Group name.
    pub group: String,
    /// Peer id (peers only).
    pub id: Option<u16>,
    /// Identity token to present when reconnecting (peers only).
    pub token: Option<String>,
    /// Doorbell vectors per peer.
    pub vectors: u32,
    /// Region size in bytes.
    pub size: u64,
    /// True if the peer got back the id it asked for.
    pub resumed: bool,
    /// True if the server adopted the client's region.
    pub adopted: bool,
}

/// One member in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Peer id.
    pub id: u16,
    /// absent / alive / migrating / dead.
    pub state: String,
    /// Generation counter from the state table.
    pub generation: u32,
    /// Host pid (0 if unknown).
    pub pid: u32,
    /// Connected through the extension socket (false: plain v0, e.g. QEMU).
    pub extension: bool,
    /// Connected to this server (false: adopted peer that has not reconnected).
    pub connected: bool,
    /// Doorbells sent, as counted by the peer in the state table.
    pub doorbells_sent: u64,
    /// Doorbells received, as counted by the peer in the state table.
    pub doorbells_received: u64,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Group name.
    pub group: String,
    /// Region size.
    pub size: u64,
    /// Vectors per peer.
    pub vectors: u32,
    /// Peer limit.
    pub max_peers: u32,
    /// Server epoch from the region header.
    pub server_epoch: u32,
    /// Every id that is not absent.
    pub members: Vec<MemberStatus>,
}

impl StatusReport {
    /// Pretty-printed JSON (for `shoal group status --json`).
    pub fn to_json(&self) -> Result<String, ExtError> {
        serde_json::to_string_pretty(self).map_err(ExtError::Json)
    }
}

/// Membership change kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A peer joined (or re-joined).
    Joined,
    /// A peer's connection closed; it is marked dead.
    Died,
    /// A peer announced a migration.
    Migrating,
    /// A new connection took over a peer id (migration completed).
    Resumed,
}

/// A membership event for watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Which peer.
    pub id: u16,
    /// Its pid, if known.
    pub pid: u32,
    /// Generation after the change.
    pub generation: u32,
}

/// Server → client frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// Hello accepted.
    Welcome(Welcome),
    /// Status answer.
    Status(StatusReport),
    /// Membership change (after [`Request::Watch`]).
    Event(Event),
    /// The request failed; the server closes the connection after fatal ones.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

/// Encodes a client request frame.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, ExtError> {
    let body = serde_json::to_vec(request).map_err(ExtError::Json)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ExtError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one request from the front of `buf`. `Ok(None)` means more bytes
/// are needed; `Ok(Some((request, used)))` consumed `used` bytes.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ExtError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(len_bytes);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ExtError::TooLarge(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let request = serde_json::from_slice(body).map_err(ExtError::Json)?;
    Ok(Some((request, 4 + len)))
}

/// Encodes a server reply frame (tag, length, JSON).
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, ExtError> {
    let body = serde_json::to_vec(reply).map_err(ExtError::Json)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ExtError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&EXT_FRAME_TAG.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Validates a reply frame's length field (the 4 bytes after the tag).
pub fn reply_len(len_bytes: [u8; 4]) -> Result<usize, ExtError> {
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ExtError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a reply body (the JSON after tag and length).
pub fn decode_reply_body(body: &[u8]) -> Result<Reply, ExtError> {
    serde_json::from_slice(body).map_err(ExtError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Request {
        Request::Hello(Hello {
            ext_version: EXT_VERSION,
            role: Role::Peer,
            group: Some("g".into()),
            token: None,
            id: None,
            adopt: None,
            known_peers: None,
        })
    }

    #[test]
    fn request_round_trips() {
        let frame = encode_request(&hello()).unwrap();
        let (decoded, used) = decode_request(&frame).unwrap().unwrap();
        assert_eq!(decoded, hello());
        assert_eq!(used, frame.len());
    }

    #[test]
    fn partial_request_needs_more() {
        let frame = encode_request(&Request::Status).unwrap();
        assert!(decode_request(&frame[..3]).unwrap().is_none());
        assert!(decode_request(&frame[..frame.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn oversized_request_is_rejected_from_header() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(
            decode_request(&header),
            Err(ExtError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_request_is_malformed() {
        let mut frame = 5u32.to_le_bytes().to_vec();
        frame.extend_from_slice(b"{{{{{");
        assert!(matches!(decode_request(&frame), Err(ExtError::Json(_))));
    }

    #[test]
    fn reply_starts_with_tag() {
        let frame = encode_reply(&Reply::Error {
            message: "x".into(),
        })
        .unwrap();
        assert_eq!(frame[..8], EXT_FRAME_TAG.to_le_bytes());
        let len = reply_len(frame[8..12].try_into().unwrap()).unwrap();
        let reply = decode_reply_body(&frame[12..12 + len]).unwrap();
        assert_eq!(
            reply,
            Reply::Error {
                message: "x".into()
            }
        );
    }

    #[test]
    fn adopt_hello_counts_fds() {
        let hello = Hello {
            ext_version: 1,
            role: Role::Peer,
            group: None,
            token: None,
            id: Some(2),
            adopt: Some(Adopt { vectors: 3 }),
            known_peers: None,
        };
        assert_eq!(Request::Hello(hello).fd_count(), 4);
        assert_eq!(Request::Status.fd_count(), 0);
    }

    #[test]
    fn ext_path_appends_suffix() {
        assert_eq!(
            ext_socket_path(Path::new("/tmp/g.sock")),
            PathBuf::from("/tmp/g.sock.ext")
        );
    }
}
