// SPDX-License-Identifier: Apache-2.0
//! The host-peer client: a host process joins a group like a VM does.
//!
//! ```no_run
//! use shmem_group::{Peer, PeerOptions};
//! use std::time::Duration;
//! let mut peer = Peer::connect("/run/shoal/g.sock".as_ref())?;
//! peer.mapping().write(peer.data_offset() as usize, b"hello")?;
//! peer.ring(1, 0)?;
//! let _count = peer.wait(0, Some(Duration::from_secs(1)))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::doorbells::Doorbells;
use crate::ext::{self, Adopt, Hello, Reply, Request, Role, EXT_VERSION};
use crate::layout::Region;
use crate::memory::{Mapping, MemoryError};
use crate::protocol::{ProtocolError, V0Decoder, V0Event};
use crate::scm;
use crate::stream::{Incoming, StreamError, StreamReader};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Client errors.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("Cannot connect to {0}")]
    Connect(PathBuf, #[source] io::Error),
    /// A socket error.
    #[error("Socket error")]
    Io(#[source] io::Error),
    /// The server's stream was malformed or closed.
    #[error("Server stream error")]
    Stream(#[source] StreamError),
    /// The server broke the v0 protocol.
    #[error("Server protocol error")]
    Protocol(#[source] ProtocolError),
    /// The server refused us.
    #[error("Server refused: {0}")]
    Refused(String),
    /// The server sent something unexpected.
    #[error("Unexpected server message: {0}")]
    Unexpected(String),
    /// The greeting did not complete in time.
    #[error("Timed out waiting for the server")]
    Timeout,
    /// Mapping the region failed.
    #[error("Cannot map the region")]
    Memory(#[source] MemoryError),
    /// No such peer or vector (not connected, or out of range).
    #[error("Peer {peer} vector {vector} is not connected")]
    NoSuchVector {
        /// Peer id.
        peer: u16,
        /// Vector.
        vector: u32,
    },
    /// Reconnecting did not give back our id.
    #[error("Server gave id {got} instead of {wanted}")]
    LostId {
        /// Our id.
        wanted: u16,
        /// What the server gave.
        got: u16,
    },
    /// An extension-only operation on a plain v0 connection.
    #[error("Operation needs the Shoal extension")]
    NoExtension,
}

/// How to join.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Use the extension socket (`<path>.ext`). Without it the client speaks
    /// plain v0 like QEMU and cannot reconnect.
    pub extension: bool,
    /// Refuse to join unless the group has this name.
    pub group: Option<String>,
    /// Identity token from an earlier join (to get the same id back).
    pub token: Option<String>,
    /// The id held with `token`.
    pub id: Option<u16>,
    /// Vectors to expect in plain v0 mode (the extension says it).
    pub vectors: u32,
    /// How long the greeting may take.
    pub timeout: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            extension: true,
            group: None,
            token: None,
            id: None,
            vectors: 1,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A membership change seen by [`Peer::poll_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// A peer's vectors are all connected.
    Joined(u16),
    /// A peer left (its doorbells are gone).
    Left(u16),
    /// The server closed the connection; the region and existing doorbells
    /// keep working; [`Peer::reconnect`] can restore the membership.
    ServerGone,
    /// An extension event (after [`Peer::watch`]).
    Event(ext::Event),
}

/// A joined host peer.
#[derive(Debug)]
pub struct Peer {
    socket: PathBuf,
    options: PeerOptions,
    stream: Option<UnixStream>,
    reader: StreamReader,
    decoder: V0Decoder,
    id: u16,
    token: Option<String>,
    vectors: u32,
    memfd: OwnedFd,
    mapping: Mapping,
    own: Vec<Arc<OwnedFd>>,
    doorbells: Doorbells,
    retired: BTreeMap<u16, Vec<Arc<OwnedFd>>>,
    events: VecDeque<Membership>,
    replies: VecDeque<Reply>,
}

/// State accumulated while reading a greeting.
struct Greeting {
    memfd: Option<OwnedFd>,
    own: Vec<OwnedFd>,
    peers: BTreeMap<u16, Vec<OwnedFd>>,
}

/// Polls `fd` for input up to `timeout` (None: forever). True if readable.
pub(crate) fn poll_in(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(rc > 0);
    }
}

impl Peer {
    /// Joins the group at `socket` with default options (extension on).
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        Self::connect_with(socket, PeerOptions::default())
    }

    /// Joins with explicit options.
    pub fn connect_with(socket: &Path, options: PeerOptions) -> Result<Self, ClientError> {
        let path = if options.extension {
            ext::ext_socket_path(socket)
        } else {
            socket.to_path_buf()
        };
        let stream =
            UnixStream::connect(&path).map_err(|e| ClientError::Connect(path.clone(), e))?;
        stream
            .set_read_timeout(Some(options.timeout))
            .map_err(ClientError::Io)?;
        let mut reader = StreamReader::new();
        let mut replies = VecDeque::new();
        let mut token = None;
        let mut vectors = options.vectors;
        if options.extension {
            let hello = Request::Hello(Hello {
                ext_version: EXT_VERSION,
                role: Role::Peer,
                group: options.group.clone(),
                token: options.token.clone(),
                id: options.id,
                adopt: None,
                known_peers: None,
            });
            send_request(&stream, &hello, &[])?;
            let welcome = read_welcome(&stream, &mut reader)?;
            token = welcome.token;
            vectors = welcome.vectors;
        }
        let mut decoder = V0Decoder::new(vectors);
        let mut greeting = Greeting {
            memfd: None,
            own: Vec::new(),
            peers: BTreeMap::new(),
        };
        let deadline = Instant::now() + options.timeout;
        while greeting.own.len() < vectors as usize {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout);
            }
            match read_item(&stream, &mut reader)? {
                Incoming::V0 { value, fd } => {
                    match decoder.push(value, fd).map_err(ClientError::Protocol)? {
                        V0Event::Version | V0Event::OwnId(_) => {}
                        V0Event::Shm(fd) => greeting.memfd = Some(fd),
                        V0Event::OwnVector { fd, .. } => greeting.own.push(fd),
                        V0Event::PeerVector { peer, fd, .. } => {
                            greeting.peers.entry(peer).or_default().push(fd)
                        }
                        V0Event::PeerGone(peer) => {
                            greeting.peers.remove(&peer);
                        }
                    }
                }
                Incoming::Ext(reply) => replies.push_back(reply),
            }
        }
        let id = decoder
            .own_id()
            .ok_or_else(|| ClientError::Unexpected("no id".into()))?;
        let memfd = greeting
            .memfd
            .ok_or_else(|| ClientError::Unexpected("no region".into()))?;
        let mapping = Mapping::new(&memfd).map_err(ClientError::Memory)?;
        stream.set_nonblocking(true).map_err(ClientError::Io)?;
        let doorbells = Doorbells::new();
        let own: Vec<Arc<OwnedFd>> = greeting.own.into_iter().map(Arc::new).collect();
        for fd in &own {
            doorbells.push(id, fd.clone());
        }
        for (peer, fds) in greeting.peers {
            for fd in fds {
                doorbells.push(peer, Arc::new(fd));
            }
        }
        Ok(Self {
            socket: socket.to_path_buf(),
            options,
            stream: Some(stream),
            reader,
            decoder,
            id,
            token,
            vectors,
            memfd,
            mapping,
            own,
            doorbells,
            retired: BTreeMap::new(),
            events: VecDeque::new(),
            replies,
        })
    }

    /// Our peer id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Identity token (extension only): pass it back to get the same id.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Doorbell vectors per peer.
    pub fn vectors(&self) -> u32 {
        self.vectors
    }

    /// The shared region.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The region fd (e.g. to hand to a VMM).
    pub fn memfd(&self) -> &OwnedFd {
        &self.memfd
    }

    /// The header/state table view.
    pub fn region(&self) -> Result<Region<'_>, ClientError> {
        self.mapping.region().map_err(ClientError::Memory)
    }

    /// First byte of the SDK's area (after the state table).
    pub fn data_offset(&self) -> u64 {
        self.region().map_or(0, |r| r.data_offset())
    }

    /// Other peers whose doorbells we hold, in id order.
    pub fn peers(&self) -> Vec<u16> {
        let mut ids = self.doorbells.ids();
        ids.retain(|id| *id != self.id);
        ids
    }

    /// The doorbell table (own id included), shared and kept current by
    /// [`Peer::poll_events`]; a VMM gives it to its ivshmem device model.
    pub fn doorbells(&self) -> Doorbells {
        self.doorbells.clone()
    }

    /// Eventfds of a peer that left (reported as [`Membership::Left`]), kept
    /// so a VMM can deregister the KVM ioeventfds it attached to them. Call
    /// after each `Left`; otherwise they are dropped when the id rejoins.
    pub fn take_retired(&mut self, peer: u16) -> Option<Vec<Arc<OwnedFd>>> {
        self.retired.remove(&peer)
    }

    /// Points later [`Peer::reconnect`] calls at another socket path (e.g. a
    /// server restarted elsewhere).
    pub fn set_socket(&mut self, socket: &Path) {
        self.socket = socket.to_path_buf();
    }

    /// Drops the server connection (e.g. after the server broke the
    /// protocol); the region and the doorbells keep working, and
    /// [`Peer::reconnect`] can restore the membership.
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.reader = StreamReader::new();
    }

    /// Whether the server connection is up.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Rings `peer` on `vector` (ringing ourselves is allowed).
    pub fn ring(&self, peer: u16, vector: u32) -> Result<(), ClientError> {
        if !self.doorbells.ring(peer, vector).map_err(ClientError::Io)? {
            return Err(ClientError::NoSuchVector { peer, vector });
        }
        if let Ok(region) = self.region() {
            region.count_sent(self.id, 1);
        }
        Ok(())
    }

    /// Our eventfd for `vector`, to poll on.
    pub fn vector_fd(&self, vector: u32) -> Option<RawFd> {
        self.own.get(vector as usize).map(|fd| fd.as_raw_fd())
    }

    /// Another peer's eventfd for `vector`. After the peer leaves the fd
    /// stays open until [`Peer::take_retired`] hands it over (or the id
    /// rejoins), so a KVM ioeventfd attached to it can be deregistered.
    pub fn peer_vector_fd(&self, peer: u16, vector: u32) -> Option<RawFd> {
        self.doorbells
            .fds(peer)
            .and_then(|fds| fds.get(vector as usize).map(|fd| fd.as_raw_fd()))
    }

    /// The server socket, to poll for membership changes.
    pub fn socket_fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(|s| s.as_raw_fd())
    }

    /// Waits for a doorbell on `vector` (None: forever). Returns the number
    /// of rings collected, 0 on timeout.
    pub fn wait(&self, vector: u32, timeout: Option<Duration>) -> Result<u64, ClientError> {
        let fd = self
            .own
            .get(vector as usize)
            .ok_or(ClientError::NoSuchVector {
                peer: self.id,
                vector,
            })?;
        if !poll_in(fd.as_raw_fd(), timeout).map_err(ClientError::Io)? {
            return Ok(0);
        }
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid buffer from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
        if n != 8 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(ClientError::Io(err));
        }
        let count = u64::from_ne_bytes(buf);
        if let Ok(region) = self.region() {
            region.count_received(self.id, count);
        }
        Ok(count)
    }

    /// Processes pending server messages and returns membership changes.
    pub fn poll_events(&mut self) -> Result<Vec<Membership>, ClientError> {
        while let Some(stream) = &self.stream {
            let item = match self.reader.read(stream, true) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(StreamError::Closed) => {
                    self.stream = None;
                    self.reader = StreamReader::new();
                    self.events.push_back(Membership::ServerGone);
                    break;
                }
                Err(e) => return Err(ClientError::Stream(e)),
            };
            self.handle(item)?;
        }
        Ok(self.events.drain(..).collect())
    }

    fn handle(&mut self, item: Incoming) -> Result<(), ClientError> {
        match item {
            Incoming::V0 { value, fd } => match self.decoder.push(value, fd) {
                Ok(V0Event::PeerVector { peer, fd, .. }) => {
                    self.retired.remove(&peer);
                    if self.doorbells.push(peer, Arc::new(fd)) == self.vectors as usize {
                        self.events.push_back(Membership::Joined(peer));
                    }
                }
                Ok(V0Event::PeerGone(peer)) => {
                    if let Some(fds) = self.doorbells.remove(peer) {
                        self.retired.insert(peer, fds);
                    }
                    self.events.push_back(Membership::Left(peer));
                }
                Ok(other) => {
                    return Err(ClientError::Unexpected(format!("{other:?}")));
                }
                Err(e) => return Err(ClientError::Protocol(e)),
            },
            Incoming::Ext(Reply::Event(event)) => {
                self.events.push_back(Membership::Event(event));
            }
            Incoming::Ext(reply) => self.replies.push_back(reply),
        }
        Ok(())
    }

    /// Subscribes to extension membership events (delivered by
    /// [`Peer::poll_events`] as [`Membership::Event`]).
    pub fn watch(&mut self) -> Result<(), ClientError> {
        self.request(&Request::Watch)
    }

    /// Tells the server this peer is being live-migrated.
    pub fn announce_migration(&mut self) -> Result<(), ClientError> {
        self.request(&Request::Migrating)
    }

    fn request(&mut self, request: &Request) -> Result<(), ClientError> {
        if !self.options.extension {
            return Err(ClientError::NoExtension);
        }
        let stream = self
            .stream
            .as_ref()
            .ok_or(ClientError::Stream(StreamError::Closed))?;
        send_request(stream, request, &[])
    }

    /// Reconnects to the server (after [`Membership::ServerGone`], or to a
    /// restarted server) keeping our id, region and eventfds. A restarted
    /// server adopts our region if it has none in use yet.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        if !self.options.extension {
            return Err(ClientError::NoExtension);
        }
        let path = ext::ext_socket_path(&self.socket);
        let stream =
            UnixStream::connect(&path).map_err(|e| ClientError::Connect(path.clone(), e))?;
        stream
            .set_read_timeout(Some(self.options.timeout))
            .map_err(ClientError::Io)?;
        let hello = Request::Hello(Hello {
            ext_version: EXT_VERSION,
            role: Role::Peer,
            group: self.options.group.clone(),
            token: self.token.clone(),
            id: Some(self.id),
            adopt: Some(Adopt {
                vectors: self.vectors,
            }),
            known_peers: Some(self.peers()),
        });
        let mut fds = vec![self.memfd.as_raw_fd()];
        fds.extend(self.own.iter().map(|fd| fd.as_raw_fd()));
        send_request(&stream, &hello, &fds)?;
        let mut reader = StreamReader::new();
        let welcome = read_welcome(&stream, &mut reader)?;
        let got = welcome.id.unwrap_or(u16::MAX);
        if got != self.id || !welcome.resumed {
            return Err(ClientError::LostId {
                wanted: self.id,
                got,
            });
        }
        stream.set_nonblocking(true).map_err(ClientError::Io)?;
        self.token = welcome.token;
        self.decoder = V0Decoder::resumed(self.id, self.vectors, self.peers());
        self.reader = reader;
        self.stream = Some(stream);
        Ok(())
    }
}

fn send_request(stream: &UnixStream, request: &Request, fds: &[RawFd]) -> Result<(), ClientError> {
    let frame = ext::encode_request(request).map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let mut sent = 0;
    while sent < frame.len() {
        // The fds travel with the first chunk only.
        let chunk_fds = if sent == 0 { fds } else { &[] };
        match scm::send(stream, &frame[sent..], chunk_fds) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Io(e)),
        }
    }
    Ok(())
}

fn read_item(stream: &UnixStream, reader: &mut StreamReader) -> Result<Incoming, ClientError> {
    match reader.read(stream, false) {
        Ok(Some(item)) => Ok(item),
        Ok(None) => Err(ClientError::Timeout),
        Err(StreamError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ClientError::Timeout)
        }
        Err(e) => Err(ClientError::Stream(e)),
    }
}

fn read_welcome(
    stream: &UnixStream,
    reader: &mut StreamReader,
) -> Result<ext::Welcome, ClientError> {
    match read_item(stream, reader)? {
        Incoming::Ext(Reply::Welcome(welcome)) => Ok(welcome),
        Incoming::Ext(Reply::Error { message }) => Err(ClientError::Refused(message)),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// Asks the server at `socket` for its status (extension control client).
pub fn query_status(socket: &Path, timeout: Duration) -> Result<ext::StatusReport, ClientError> {
    let path = ext::ext_socket_path(socket);
    let stream = UnixStream::connect(&path).map_err(|e| ClientError::Connect(path.clone(), e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    let hello = Request::Hello(Hello {
        ext_version: EXT_VERSION,
        role: Role::Control,
        group: None,
        token: None,
        id: None,
        adopt: None,
        known_peers: None,
    });
    send_request(&stream, &hello, &[])?;
    send_request(&stream, &Request::Status, &[])?;
    let mut reader = StreamReader::new();
    read_welcome(&stream, &mut reader)?;
    loop {
        match read_item(&stream, &mut reader)? {
            Incoming::Ext(Reply::Status(report)) => return Ok(report),
            Incoming::Ext(Reply::Error { message }) => return Err(ClientError::Refused(message)),
            Incoming::Ext(_) => {}
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
