// SPDX-License-Identifier: Apache-2.0
//! Client-side reader for the server → client byte stream: v0 messages with
//! their fds, interleaved (on the extension socket) with extension frames.
//!
//! It reads at most up to the end of the current message, the way QEMU does,
//! so a descriptor is always attributed to the message it was sent with.

use crate::ext::{self, ExtError, Reply, EXT_FRAME_TAG};
use crate::protocol::MESSAGE_LEN;
use crate::scm;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use thiserror::Error;

/// Stream errors.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The server closed the connection.
    #[error("Server closed the connection")]
    Closed,
    /// A socket error.
    #[error("Socket error")]
    Io(#[source] io::Error),
    /// Descriptors arrived where none belong.
    #[error("Unexpected file descriptors in the stream")]
    StrayFds,
    /// A malformed extension frame.
    #[error("Bad extension frame")]
    Ext(#[source] ExtError),
}

/// One item read from the stream.
#[derive(Debug)]
pub enum Incoming {
    /// A v0 message.
    V0 {
        /// The value.
        value: i64,
        /// The fd that came with it.
        fd: Option<OwnedFd>,
    },
    /// An extension frame.
    Ext(Reply),
}

/// Incremental reader; keep one per connection.
#[derive(Debug, Default)]
pub struct StreamReader {
    head: [u8; MESSAGE_LEN + 4],
    have: usize,
    fd: Option<OwnedFd>,
    body: Vec<u8>,
    body_len: Option<usize>,
}

impl StreamReader {
    /// A reader at a message boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads until one item is complete. With `nonblocking`, returns
    /// `Ok(None)` when the socket has no more data for now.
    pub fn read(
        &mut self,
        sock: &impl AsRawFd,
        nonblocking: bool,
    ) -> Result<Option<Incoming>, StreamError> {
        loop {
            let mut fds = Vec::new();
            let (want_start, want_end) = if self.have < MESSAGE_LEN + 4 {
                let end = if self.have < MESSAGE_LEN {
                    MESSAGE_LEN
                } else {
                    MESSAGE_LEN + 4
                };
                (self.have, end)
            } else {
                (0, 0)
            };
            let n = if want_end > 0 {
                let buf = &mut self.head[want_start..want_end];
                recv(sock, buf, &mut fds, nonblocking)?
            } else {
                let len = self.body_len.unwrap_or(0);
                let start = self.body.len();
                self.body.resize(len, 0);
                let got = recv(sock, &mut self.body[start..], &mut fds, nonblocking);
                match got {
                    Ok(Some(n)) => {
                        self.body.truncate(start + n);
                        Some(n)
                    }
                    other => {
                        self.body.truncate(start);
                        other?
                    }
                }
            };
            let Some(n) = n else { return Ok(None) };
            if !fds.is_empty() {
                // Only the first chunk of a v0 message may carry one fd.
                if self.have != 0 || fds.len() > 1 || self.fd.is_some() {
                    return Err(StreamError::StrayFds);
                }
                self.fd = fds.pop();
            }
            if want_end > 0 {
                self.have += n;
            }
            if let Some(item) = self.complete()? {
                return Ok(Some(item));
            }
        }
    }

    fn complete(&mut self) -> Result<Option<Incoming>, StreamError> {
        if self.have < MESSAGE_LEN {
            return Ok(None);
        }
        let mut value = [0u8; MESSAGE_LEN];
        value.copy_from_slice(&self.head[..MESSAGE_LEN]);
        let value = i64::from_le_bytes(value);
        if value != EXT_FRAME_TAG {
            self.have = 0;
            return Ok(Some(Incoming::V0 {
                value,
                fd: self.fd.take(),
            }));
        }
        if self.fd.is_some() {
            return Err(StreamError::StrayFds);
        }
        if self.have < MESSAGE_LEN + 4 {
            return Ok(None);
        }
        let len = match self.body_len {
            Some(len) => len,
            None => {
                let mut len = [0u8; 4];
                len.copy_from_slice(&self.head[MESSAGE_LEN..]);
                let len = ext::reply_len(len).map_err(StreamError::Ext)?;
                self.body_len = Some(len);
                len
            }
        };
        if self.body.len() < len {
            return Ok(None);
        }
        let reply = ext::decode_reply_body(&self.body).map_err(StreamError::Ext)?;
        self.have = 0;
        self.body.clear();
        self.body_len = None;
        Ok(Some(Incoming::Ext(reply)))
    }
}

fn recv(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> Result<Option<usize>, StreamError> {
    if buf.is_empty() {
        return Ok(Some(0));
    }
    match scm::recv(sock, buf, fds, nonblocking) {
        Ok(0) => Err(StreamError::Closed),
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(StreamError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn v0_messages_keep_their_fds() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new(0).unwrap();
        a.write_all(&encode(0)).unwrap();
        scm::send(&a, &encode(-1), &[efd.as_raw_fd()]).unwrap();
        let mut r = StreamReader::new();
        match r.read(&b, false).unwrap() {
            Some(Incoming::V0 { value: 0, fd: None }) => {}
            other => panic!("unexpected {other:?}"),
        }
        match r.read(&b, false).unwrap() {
            Some(Incoming::V0 {
                value: -1,
                fd: Some(_),
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(r.read(&b, true).unwrap().is_none());
    }

    #[test]
    fn ext_frames_are_decoded_between_v0_messages() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let frame = ext::encode_reply(&Reply::Error {
            message: "no".into(),
        })
        .unwrap();
        a.write_all(&frame[..5]).unwrap();
        let mut r = StreamReader::new();
        assert!(r.read(&b, true).unwrap().is_none());
        a.write_all(&frame[5..]).unwrap();
        a.write_all(&encode(7)).unwrap();
        assert!(matches!(
            r.read(&b, true).unwrap(),
            Some(Incoming::Ext(Reply::Error { .. }))
        ));
        assert!(matches!(
            r.read(&b, true).unwrap(),
            Some(Incoming::V0 { value: 7, fd: None })
        ));
    }

    #[test]
    fn oversized_ext_frame_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&EXT_FRAME_TAG.to_le_bytes()).unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let mut r = StreamReader::new();
        assert!(matches!(r.read(&b, false), Err(StreamError::Ext(_))));
    }

    #[test]
    fn closed_stream_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut r = StreamReader::new();
        assert!(matches!(r.read(&b, false), Err(StreamError::Closed)));
    }
}
