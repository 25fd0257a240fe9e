// SPDX-License-Identifier: Apache-2.0
//! The migration stream: versioned, checksummed frames.
//!
//! Every frame is a 24-byte little-endian header and a payload:
//! ```text
//!  0  magic "SHMG"      4 bytes
//!  4  stream version    u16
//!  6  kind              u8
//!  7  flags             u8 (0)
//!  8  payload length    u32
//! 12  sequence number   u32 (0, 1, 2, ... per direction)
//! 16  payload CRC-32C   u32
//! 20  header CRC-32C    u32 (over bytes 0..20)
//! ```
//! Payloads: `Hello` is JSON ([`Hello`]); `Pages` is
//! `first_page u64, count u32, 0u32, zero bitmap (count bits, 1 = zero page),
//! the non-zero pages in order`; `IterationEnd` is `iteration u32, dirty pages u64`;
//! `State` is the encoded `VmSnapshot`; `Abort` is a UTF-8 reason;
//! `Ack`, `Commit` and `Go` are empty.
//!
//! Version 2 added `Go`: the destination acknowledges the commit with the
//! VM restored but not running, and starts it only on the source's `Go`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::snapshot::crc::{crc32c, Crc32c};

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SHMG";
/// The stream version this build speaks (2: the commit ends with `Go`).
pub const STREAM_VERSION: u16 = 2;
/// Frame header length.
pub const HEADER_LEN: usize = 24;
/// The page size of the stream.
pub const PAGE_SIZE: usize = 4096;
/// Most pages in one `Pages` frame (1 MiB).
pub const MAX_CHUNK_PAGES: u32 = 256;
/// Largest payload accepted (the VM state is the largest frame).
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Bytes of a `Pages` payload before the zero bitmap.
pub const PAGES_META: usize = 16;

/// Errors of the frame layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("stream I/O failed")]
    Io(#[source] io::Error),
    #[error("not a Shoal migration stream (bad magic)")]
    BadMagic,
    #[error("corrupt frame header (checksum mismatch)")]
    HeaderChecksum,
    #[error("corrupt {0:?} frame (payload checksum mismatch)")]
    PayloadChecksum(Kind),
    #[error("stream version {found} is not supported (this build speaks version {supported})")]
    Version { found: u16, supported: u16 },
    #[error("frame {found} arrived where frame {expected} was expected")]
    Sequence { expected: u32, found: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame payload of {0} bytes is over the limit")]
    TooLarge(u32),
    #[error("malformed {0:?} frame: {1}")]
    Malformed(Kind, &'static str),
    #[error("malformed hello")]
    Hello(#[source] serde_json::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    }
}

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Ack = 2,
    Pages = 3,
    IterationEnd = 4,
    State = 5,
    Commit = 6,
    Abort = 7,
    Go = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind, FrameError> {
        Ok(match v {
            1 => Kind::Hello,
            2 => Kind::Ack,
            3 => Kind::Pages,
            4 => Kind::IterationEnd,
            5 => Kind::State,
            6 => Kind::Commit,
            7 => Kind::Abort,
            8 => Kind::Go,
            _ => return Err(FrameError::UnknownKind(v)),
        })
    }
}

/// The first frame: what is coming.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub ram_size: u64,
    pub page_size: u32,
    /// The RAM memfd comes with this frame (SCM_RIGHTS); no pages follow.
    pub local: bool,
    /// The VM configuration.
    pub config: serde_json::Value,
}

/// A decoded frame.
#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    Hello(Hello),
    Ack,
    Pages(Pages<'a>),
    IterationEnd {
        iteration: u32,
        dirty_pages: u64,
    },
    State(&'a [u8]),
    Commit,
    Abort(String),
    /// The source read the commit acknowledgement and stops for good: the
    /// destination may run the VM.
    Go,
}

/// A run of pages: zero pages are flagged, the others carried.
#[derive(Debug, PartialEq)]
pub struct Pages<'a> {
    pub first_page: u64,
    pub count: u32,
    zero_bitmap: &'a [u8],
    data: &'a [u8],
    /// Where `data` starts in the frame payload.
    data_at: usize,
}

impl<'a> Pages<'a> {
    fn is_zero(&self, i: u32) -> bool {
        self.zero_bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Runs of consecutive pages of one kind: `(first page, pages, data)`
    /// with the data's byte range in the frame payload, `None` for a run
    /// of zero pages.
    pub fn runs(&self) -> Vec<(u64, u32, Option<std::ops::Range<usize>>)> {
        let mut runs = Vec::new();
        let mut data_at = self.data_at;
        let mut i = 0u32;
        while i < self.count {
            let zero = self.is_zero(i);
            let start = i;
            while i < self.count && self.is_zero(i) == zero {
                i += 1;
            }
            let n = i - start;
            let first = self.first_page + u64::from(start);
            if zero {
                runs.push((first, n, None));
            } else {
                // decode() checked that the data holds every non-zero page.
                let len = n as usize * PAGE_SIZE;
                runs.push((first, n, Some(data_at..data_at + len)));
                data_at += len;
            }
        }
        runs
    }

    /// `(page index, Some(data) | None for a zero page)` for each page.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&'a [u8]>)> + '_ {
        let mut data = self.data;
        (0..self.count).map(move |i| {
            let page = self.first_page + u64::from(i);
            if self.zero_bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                (page, None)
            } else {
                let (d, rest) = data.split_at(PAGE_SIZE);
                data = rest;
                (page, Some(d))
            }
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Decodes a checked frame's payload.
pub fn decode(kind: Kind, payload: &[u8]) -> Result<Message<'_>, FrameError> {
    let empty = |m| {
        if payload.is_empty() {
            Ok(m)
        } else {
            Err(FrameError::Malformed(kind, "payload must be empty"))
        }
    };
    match kind {
        Kind::Hello => Ok(Message::Hello(
            serde_json::from_slice(payload).map_err(FrameError::Hello)?,
        )),
        Kind::Ack => empty(Message::Ack),
        Kind::Commit => empty(Message::Commit),
        Kind::Go => empty(Message::Go),
        Kind::State => Ok(Message::State(payload)),
        Kind::Abort => Ok(Message::Abort(
            String::from_utf8_lossy(payload).into_owned(),
        )),
        Kind::IterationEnd => {
            if payload.len() != 12 {
                return Err(FrameError::Malformed(kind, "length is not 12"));
            }
            Ok(Message::IterationEnd {
                iteration: u32_at(payload, 0),
                dirty_pages: u64_at(payload, 4),
            })
        }
        Kind::Pages => {
            if payload.len() < PAGES_META {
                return Err(FrameError::Malformed(kind, "too short"));
            }
            let first_page = u64_at(payload, 0);
            let count = u32_at(payload, 8);
            if count == 0 || count > MAX_CHUNK_PAGES {
                return Err(FrameError::Malformed(kind, "page count out of range"));
            }
            let map_len = count.div_ceil(8) as usize;
            let rest = &payload[PAGES_META..];
            if rest.len() < map_len {
                return Err(FrameError::Malformed(kind, "bitmap cut short"));
            }
            let (zero_bitmap, data) = rest.split_at(map_len);
            let zeros: u32 = (0..count)
                .filter(|i| zero_bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0)
                .count() as u32;
            if data.len() != (count - zeros) as usize * PAGE_SIZE {
                return Err(FrameError::Malformed(
                    kind,
                    "data length does not match the bitmap",
                ));
            }
            Ok(Message::Pages(Pages {
                first_page,
                count,
                zero_bitmap,
                data,
                data_at: PAGES_META + map_len,
            }))
        }
    }
}

/// The fixed start of a `Pages` payload.
fn pages_meta(first_page: u64, count: u32) -> [u8; PAGES_META] {
    let mut meta = [0u8; PAGES_META];
    meta[0..8].copy_from_slice(&first_page.to_le_bytes());
    meta[8..12].copy_from_slice(&count.to_le_bytes());
    meta
}

/// `Write::write_all` for several buffers (std's is not stable yet).
pub(crate) fn write_all_vectored(
    w: &mut impl Write,
    mut bufs: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes frames, buffered.
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    inner: io::BufWriter<W>,
    seq: u32,
    /// Bytes written, headers included.
    pub bytes: u64,
}

fn header(kind: Kind, len: u32, seq: u32, payload_crc: u32, version: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6] = kind as u8;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let crc = crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner: io::BufWriter::with_capacity(256 << 10, inner),
            seq: 0,
            bytes: 0,
        }
    }

    /// Encodes a frame whose payload is the concatenation of `parts`,
    /// without writing it (for sending with a file descriptor attached).
    pub fn encode(&mut self, kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
        self.encode_version(kind, parts, STREAM_VERSION)
    }

    /// The header of the next frame, whose payload is the concatenation
    /// of `parts`: the frame takes its sequence number and counts as
    /// written.
    fn next_header(&mut self, kind: Kind, parts: &[&[u8]], version: u16) -> [u8; HEADER_LEN] {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut crc = Crc32c::new();
        parts.iter().for_each(|p| crc.update(p));
        let h = header(kind, len as u32, self.seq, crc.finish(), version);
        self.seq = self.seq.wrapping_add(1);
        self.bytes += (HEADER_LEN + len) as u64;
        h
    }

    fn encode_version(&mut self, kind: Kind, parts: &[&[u8]], version: u16) -> Vec<u8> {
        let h = self.next_header(kind, parts, version);
        let mut out = h.to_vec();
        parts.iter().for_each(|p| out.extend_from_slice(p));
        out
    }

    /// Writes a frame whose payload is the concatenation of `parts`.
    pub fn send(&mut self, kind: Kind, parts: &[&[u8]]) -> io::Result<()> {
        let h = self.next_header(kind, parts, STREAM_VERSION);
        // One writev for the header and all parts: a large payload (pages)
        // goes from its buffer to the socket without another copy.
        let mut slices = [io::IoSlice::new(&[]); 4];
        slices[0] = io::IoSlice::new(&h);
        for (slot, p) in slices[1..].iter_mut().zip(parts) {
            *slot = io::IoSlice::new(p);
        }
        if parts.len() > slices.len() - 1 {
            self.inner.write_all(&h)?;
            parts.iter().try_for_each(|p| self.inner.write_all(p))?;
        } else {
            write_all_vectored(&mut self.inner, &mut slices[..1 + parts.len()])?;
        }
        Ok(())
    }

    /// Encodes the header and the page metadata of a `Pages` frame
    /// without writing anything (the frame takes its sequence number and
    /// counts as written): another thread writes header, metadata, bitmap
    /// and data, in this order, before any later frame.
    pub fn encode_pages(
        &mut self,
        first_page: u64,
        count: u32,
        zero_bitmap: &[u8],
        data: &[u8],
    ) -> ([u8; HEADER_LEN], [u8; PAGES_META]) {
        let meta = pages_meta(first_page, count);
        let h = self.next_header(Kind::Pages, &[&meta, zero_bitmap, data], STREAM_VERSION);
        (h, meta)
    }

    /// Writes a `Pages` frame. `data` holds the non-zero pages in order.
    pub fn send_pages(
        &mut self,
        first_page: u64,
        count: u32,
        zero_bitmap: &[u8],
        data: &[u8],
    ) -> io::Result<()> {
        let meta = pages_meta(first_page, count);
        self.send(Kind::Pages, &[&meta, zero_bitmap, data])
    }

    /// Writes an `IterationEnd` frame.
    pub fn send_iteration_end(&mut self, iteration: u32, dirty_pages: u64) -> io::Result<()> {
        let mut p = [0u8; 12];
        p[0..4].copy_from_slice(&iteration.to_le_bytes());
        p[4..12].copy_from_slice(&dirty_pages.to_le_bytes());
        self.send(Kind::IterationEnd, &[&p])
    }

    /// Writes out everything buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }

    #[cfg(test)]
    pub(crate) fn send_with_version(
        &mut self,
        kind: Kind,
        payload: &[u8],
        version: u16,
    ) -> io::Result<()> {
        let f = self.encode_version(kind, &[payload], version);
        self.inner.write_all(&f)
    }
}

/// Reads and checks frames.
#[derive(Debug)]
pub struct FrameReader<R: Read> {
    inner: R,
    seq: u32,
    prefix: Vec<u8>,
    payload: Vec<u8>,
    /// Bytes read, headers included.
    pub bytes: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            seq: 0,
            prefix: Vec::new(),
            payload: Vec::new(),
            bytes: 0,
        }
    }

    /// Makes `bytes` (already read from the stream) come first.
    pub fn with_prefix(inner: R, bytes: Vec<u8>) -> Self {
        let mut r = Self::new(inner);
        r.prefix = bytes;
        r
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        let from_prefix = self.prefix.len().min(buf.len());
        buf[..from_prefix].copy_from_slice(&self.prefix[..from_prefix]);
        self.prefix.drain(..from_prefix);
        self.inner.read_exact(&mut buf[from_prefix..])?;
        Ok(())
    }

    /// Reads the next frame and checks magic, version, checksums and order.
    pub fn next_frame(&mut self) -> Result<(Kind, &[u8]), FrameError> {
        let mut payload = std::mem::take(&mut self.payload);
        let read = self.next_frame_into(&mut payload);
        self.payload = payload;
        Ok((read?, &self.payload))
    }

    /// [`FrameReader::next_frame`] with the payload read into `payload`
    /// (resized to fit), so the caller can hand the buffer on.
    pub fn next_frame_into(&mut self, payload: &mut Vec<u8>) -> Result<Kind, FrameError> {
        let mut h = [0u8; HEADER_LEN];
        self.read_exact(&mut h)?;
        if h[0..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if crc32c(&h[..20]) != u32_at(&h, 20) {
            return Err(FrameError::HeaderChecksum);
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != STREAM_VERSION {
            return Err(FrameError::Version {
                found: version,
                supported: STREAM_VERSION,
            });
        }
        let kind = Kind::from_u8(h[6])?;
        let len = u32_at(&h, 8);
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let seq = u32_at(&h, 12);
        if seq != self.seq {
            return Err(FrameError::Sequence {
                expected: self.seq,
                found: seq,
            });
        }
        self.seq = self.seq.wrapping_add(1);
        payload.resize(len as usize, 0);
        self.read_exact(payload)?;
        if crc32c(payload) != u32_at(&h, 16) {
            return Err(FrameError::PayloadChecksum(kind));
        }
        self.bytes += (HEADER_LEN as u64) + u64::from(len);
        Ok(kind)
    }

    /// Reads and decodes the next frame.
    pub fn next_message(&mut self) -> Result<Message<'_>, FrameError> {
        let (kind, payload) = self.next_frame()?;
        decode(kind, payload)
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(f: impl FnOnce(&mut FrameWriter<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out);
        f(&mut w);
        w.flush().unwrap();
        drop(w);
        out
    }

    #[test]
    fn frames_round_trip_in_order() {
        let bytes = stream(|w| {
            w.send(Kind::Ack, &[]).unwrap();
            w.send_iteration_end(3, 77).unwrap();
            w.send(Kind::Abort, &[b"no room"]).unwrap();
        });
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.next_message().unwrap(), Message::Ack);
        assert_eq!(
            r.next_message().unwrap(),
            Message::IterationEnd {
                iteration: 3,
                dirty_pages: 77
            }
        );
        assert_eq!(r.next_message().unwrap(), Message::Abort("no room".into()));
        assert!(matches!(r.next_message(), Err(FrameError::Closed)));
    }

    #[test]
    fn pages_frame_carries_only_non_zero_pages() {
        let page = vec![0xabu8; PAGE_SIZE];
        // Pages 10..13: 10 zero, 11 data, 12 zero.
        let bytes = stream(|w| w.send_pages(10, 3, &[0b101], &page).unwrap());
        assert_eq!(bytes.len(), HEADER_LEN + PAGES_META + 1 + PAGE_SIZE);
        let mut r = FrameReader::new(&bytes[..]);
        let Message::Pages(p) = r.next_message().unwrap() else {
            panic!("not a pages frame");
        };
        let pages: Vec<_> = p.iter().map(|(i, d)| (i, d.map(|d| d[0]))).collect();
        assert_eq!(pages, vec![(10, None), (11, Some(0xab)), (12, None)]);
    }

    #[test]
    fn corrupt_payload_is_detected() {
        let mut bytes = stream(|w| w.send(Kind::State, &[b"state bytes"]).unwrap());
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        let err = FrameReader::new(&bytes[..]).next_frame().unwrap_err();
        assert!(
            matches!(err, FrameError::PayloadChecksum(Kind::State)),
            "{err}"
        );
    }

    #[test]
    fn corrupt_header_is_detected() {
        let mut bytes = stream(|w| w.send(Kind::State, &[b"state bytes"]).unwrap());
        bytes[9] ^= 1;
        let err = FrameReader::new(&bytes[..]).next_frame().unwrap_err();
        assert!(matches!(err, FrameError::HeaderChecksum), "{err}");
    }

    #[test]
    fn other_version_is_refused_with_both_numbers() {
        let bytes = stream(|w| w.send_with_version(Kind::Ack, &[], 9).unwrap());
        let err = FrameReader::new(&bytes[..]).next_frame().unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn go_is_an_empty_frame_of_its_own_kind() {
        let bytes = stream(|w| w.send(Kind::Go, &[]).unwrap());
        assert_eq!(bytes[6], 8);
        assert_eq!(
            FrameReader::new(&bytes[..]).next_message().unwrap(),
            Message::Go
        );
        let with_payload = stream(|w| w.send(Kind::Go, &[b"x"]).unwrap());
        let err = FrameReader::new(&with_payload[..])
            .next_message()
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(Kind::Go, _)), "{err}");
    }

    #[test]
    fn version_1_without_go_is_refused() {
        // A version 1 source never sends go: its destination would wait
        // with a paused VM after every commit.
        let bytes = stream(|w| w.send_with_version(Kind::Hello, b"{}", 1).unwrap());
        let err = FrameReader::new(&bytes[..]).next_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Version {
                    found: 1,
                    supported: 2
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_dropped_frame_breaks_the_sequence() {
        let bytes = stream(|w| {
            w.send(Kind::Ack, &[]).unwrap();
            w.send(Kind::Ack, &[]).unwrap();
        });
        let err = FrameReader::new(&bytes[HEADER_LEN..])
            .next_frame()
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::Sequence {
                expected: 0,
                found: 1
            }
        ));
    }

    #[test]
    fn pages_with_inconsistent_length_are_malformed() {
        let page = vec![1u8; PAGE_SIZE];
        // Bitmap says both pages are data, but only one is there.
        let bytes = stream(|w| w.send_pages(0, 2, &[0], &page).unwrap());
        let err = FrameReader::new(&bytes[..]).next_message().unwrap_err();
        assert!(
            matches!(err, FrameError::Malformed(Kind::Pages, _)),
            "{err}"
        );
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let mut h = header(Kind::State, MAX_PAYLOAD + 1, 0, 0, STREAM_VERSION).to_vec();
        h.truncate(HEADER_LEN);
        let err = FrameReader::new(&h[..]).next_frame().unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
    }

    #[test]
    fn truncated_frame_is_a_closed_connection() {
        let bytes = stream(|w| w.send(Kind::State, &[b"0123456789"]).unwrap());
        let err = FrameReader::new(&bytes[..bytes.len() - 4])
            .next_frame()
            .unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[test]
    fn prefix_bytes_come_before_the_stream() {
        let bytes = stream(|w| w.send(Kind::Commit, &[]).unwrap());
        let (a, b) = bytes.split_at(5);
        let mut r = FrameReader::with_prefix(b, a.to_vec());
        assert_eq!(r.next_message().unwrap(), Message::Commit);
    }
}
