// SPDX-License-Identifier: Apache-2.0
//! One client connection: a bounded non-blocking output queue and, for the
//! extension socket, an input buffer of request frames with their fds.

use crate::ext::{self, ExtError, Request, MAX_FRAME_LEN};
use crate::protocol;
use crate::scm;
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// Why a connection is dropped.
#[derive(Debug, Error)]
pub enum ConnError {
    /// The client closed its end.
    #[error("Connection closed")]
    Closed,
    /// A socket error.
    #[error("Socket error")]
    Io(#[source] io::Error),
    /// The client does not read fast enough.
    #[error("Output queue full ({0} messages)")]
    QueueFull(usize),
    /// A v0 client wrote something (v0 clients never write).
    #[error("Plain client sent {0} unexpected bytes")]
    UnexpectedData(usize),
    /// A bad extension frame.
    #[error("Bad request")]
    Frame(#[source] ExtError),
    /// Fds that do not match the request.
    #[error("Wrong number of file descriptors: got {got}, expected {expected}")]
    FdCount {
        /// Received.
        got: usize,
        /// Expected.
        expected: usize,
    },
    /// Input buffer overflow (frames arriving faster than they are served).
    #[error("Input buffer overflow")]
    InputOverflow,
    /// A request the server refuses (the client got an error reply).
    #[error("Refused: {0}")]
    Refused(String),
}

/// Which socket the connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The QEMU-compatible socket.
    V0,
    /// The extension socket.
    Ext,
}

/// What the connection currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRole {
    /// Extension client that has not sent its hello yet.
    Pending(Instant),
    /// A member.
    Peer(u16),
    /// A management client.
    Control,
}

struct OutItem {
    data: Vec<u8>,
    fd: Option<Arc<OwnedFd>>,
    sent: usize,
}

/// A client connection.
pub struct Conn {
    /// The socket (non-blocking).
    pub stream: UnixStream,
    /// Origin socket.
    pub kind: Kind,
    /// Current role.
    pub role: ConnRole,
    /// Host pid from SO_PEERCRED (0 if unknown).
    pub pid: u32,
    /// Wants membership events.
    pub watch: bool,
    /// Peer ids whose eventfds this client holds (v0 "connect" sent, no
    /// "disconnect" since).
    pub known: BTreeSet<u16>,
    /// Whether EPOLLOUT is currently registered.
    pub writable_armed: bool,
    out: VecDeque<OutItem>,
    limit: usize,
    inbuf: Vec<u8>,
    infds: Vec<OwnedFd>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("fd", &self.stream.as_raw_fd())
            .field("kind", &self.kind)
            .field("role", &self.role)
            .field("pid", &self.pid)
            .field("queued", &self.out.len())
            .finish()
    }
}

/// Reads SO_PEERCRED's pid (0 if unavailable).
pub fn peer_pid(stream: &UnixStream) -> u32 {
    // SAFETY: an all-zero ucred is a valid out-parameter.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into cred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        0
    } else {
        cred.pid.max(0) as u32
    }
}

impl Conn {
    /// Wraps an accepted stream.
    pub fn new(stream: UnixStream, kind: Kind, limit: usize) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let pid = peer_pid(&stream);
        Ok(Self {
            stream,
            kind,
            role: ConnRole::Pending(Instant::now()),
            pid,
            watch: false,
            known: BTreeSet::new(),
            writable_armed: false,
            out: VecDeque::new(),
            limit,
            inbuf: Vec::new(),
            infds: Vec::new(),
        })
    }

    fn push(&mut self, item: OutItem) -> Result<(), ConnError> {
        if self.out.len() >= self.limit {
            return Err(ConnError::QueueFull(self.limit));
        }
        self.out.push_back(item);
        Ok(())
    }

    /// Queues a v0 message, optionally with an fd.
    pub fn queue_v0(&mut self, value: i64, fd: Option<Arc<OwnedFd>>) -> Result<(), ConnError> {
        self.push(OutItem {
            data: protocol::encode(value).to_vec(),
            fd,
            sent: 0,
        })
    }

    /// Queues an extension reply (ignored for v0 connections).
    pub fn queue_reply(&mut self, reply: &ext::Reply) -> Result<(), ConnError> {
        if self.kind == Kind::V0 {
            return Ok(());
        }
        let data = ext::encode_reply(reply).map_err(ConnError::Frame)?;
        self.push(OutItem {
            data,
            fd: None,
            sent: 0,
        })
    }

    /// Sends as much as the socket takes. Returns true when the queue is empty.
    pub fn flush(&mut self) -> Result<bool, ConnError> {
        while let Some(item) = self.out.front_mut() {
            let fds: Vec<RawFd> = match (&item.fd, item.sent) {
                (Some(fd), 0) => vec![fd.as_raw_fd()],
                _ => Vec::new(),
            };
            match scm::send(&self.stream, &item.data[item.sent..], &fds) {
                Ok(n) => {
                    item.sent += n;
                    if item.sent >= item.data.len() {
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        Ok(true)
    }

    /// Drains readable input. v0 clients must not write anything; extension
    /// input is buffered for [`Conn::next_request`].
    pub fn read_input(&mut self) -> Result<(), ConnError> {
        let mut buf = [0u8; 4096];
        loop {
            let mut fds = Vec::new();
            match scm::recv(&self.stream, &mut buf, &mut fds, true) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    if self.kind == Kind::V0 {
                        return Err(ConnError::UnexpectedData(n));
                    }
                    if self.inbuf.len() + n > MAX_FRAME_LEN + 4
                        || self.infds.len() + fds.len() > scm::MAX_FDS_PER_MSG
                    {
                        return Err(ConnError::InputOverflow);
                    }
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.infds.extend(fds);
                    // Let the caller serve what is complete before reading on.
                    if ext::decode_request(&self.inbuf)
                        .map_err(ConnError::Frame)?
                        .is_some()
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
    }

    /// Takes the next complete request and its fds from the input buffer.
    pub fn next_request(&mut self) -> Result<Option<(Request, Vec<OwnedFd>)>, ConnError> {
        let Some((request, used)) = ext::decode_request(&self.inbuf).map_err(ConnError::Frame)?
        else {
            return Ok(None);
        };
        self.inbuf.drain(..used);
        let expected = request.fd_count();
        if self.infds.len() < expected || (self.inbuf.is_empty() && self.infds.len() != expected) {
            return Err(ConnError::FdCount {
                got: self.infds.len(),
                expected,
            });
        }
        let fds: Vec<OwnedFd> = self.infds.drain(..expected).collect();
        Ok(Some((request, fds)))
    }
}

/// Feeds `data` to an extension connection as client input (fuzzing).
pub fn fuzz_feed(data: &[u8]) {
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    let Ok(mut conn) = Conn::new(ours, Kind::Ext, 64) else {
        return;
    };
    let _ = theirs.set_nonblocking(true);
    let mut writer = &theirs;
    for chunk in data.chunks(97) {
        if std::io::Write::write_all(&mut writer, chunk).is_err() {
            break;
        }
        if conn.read_input().is_err() {
            return;
        }
        loop {
            match conn.next_request() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext::Request;
    use std::io::{Read, Write};

    #[test]
    fn queue_limit_is_enforced() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(a, Kind::V0, 2).unwrap();
        conn.queue_v0(1, None).unwrap();
        conn.queue_v0(2, None).unwrap();
        assert!(matches!(
            conn.queue_v0(3, None),
            Err(ConnError::QueueFull(2))
        ));
    }

    #[test]
    fn flush_sends_queued_messages_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(a, Kind::V0, 8).unwrap();
        conn.queue_v0(0, None).unwrap();
        conn.queue_v0(5, None).unwrap();
        assert!(conn.flush().unwrap());
        let mut buf = [0u8; 16];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..8], &protocol::encode(0));
        assert_eq!(&buf[8..], &protocol::encode(5));
    }

    #[test]
    fn v0_client_writing_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(a, Kind::V0, 8).unwrap();
        b.write_all(b"junk").unwrap();
        assert!(matches!(
            conn.read_input(),
            Err(ConnError::UnexpectedData(4))
        ));
    }

    #[test]
    fn ext_request_is_parsed_after_partial_reads() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(a, Kind::Ext, 8).unwrap();
        let frame = ext::encode_request(&Request::Status).unwrap();
        b.write_all(&frame[..3]).unwrap();
        conn.read_input().unwrap();
        assert!(conn.next_request().unwrap().is_none());
        b.write_all(&frame[3..]).unwrap();
        conn.read_input().unwrap();
        let (req, fds) = conn.next_request().unwrap().unwrap();
        assert_eq!(req, Request::Status);
        assert!(fds.is_empty());
    }

    #[test]
    fn stray_fds_are_a_count_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(a, Kind::Ext, 8).unwrap();
        let frame = ext::encode_request(&Request::Status).unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        scm::send(&b, &frame, &[x.as_raw_fd()]).unwrap();
        conn.read_input().unwrap();
        assert!(matches!(
            conn.next_request(),
            Err(ConnError::FdCount {
                got: 1,
                expected: 0
            })
        ));
    }

    #[test]
    fn closed_client_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(a, Kind::Ext, 8).unwrap();
        drop(b);
        assert!(matches!(conn.read_input(), Err(ConnError::Closed)));
    }
}
