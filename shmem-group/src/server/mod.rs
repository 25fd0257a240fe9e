// SPDX-License-Identifier: Apache-2.0
//! The group server: owns the region memfd, hands out ids and eventfds over
//! the v0 socket (QEMU) and the extension socket (Shoal), keeps the state
//! table current, and notices dead peers. One thread, one epoll.

mod conn;
mod listener;
mod members;

pub use listener::{group_id, ListenerError};

/// Fuzzing hook: see [`crate::fuzzing::fuzz_server_conn`].
#[doc(hidden)]
pub fn conn_fuzz(data: &[u8]) {
    conn::fuzz_feed(data);
}

use crate::ext::{self, Event, EventKind, MemberStatus, Reply, Request, StatusReport};
use crate::layout::{LayoutParams, PeerState, Region};
use crate::memory::{self, Mapping, MemoryError};
use conn::{Conn, ConnError, ConnRole, Kind};
use listener::SocketFile;
use log::{info, warn};
use members::{ConnKey, Members, SlotState};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Most vectors per peer the server accepts.
pub const MAX_VECTORS: u32 = 256;
/// Most peers per group (ids are 16-bit; this bounds fds and the table).
pub const MAX_PEERS: u32 = 1024;
/// How long an extension client may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

const TOKEN_V0: u64 = 0;
const TOKEN_EXT: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_CONN_BASE: u64 = 16;

/// Server errors.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A configuration value is out of range.
    #[error("Invalid configuration: {0}")]
    Config(String),
    /// Socket setup failed.
    #[error("Cannot create the group socket")]
    Listener(#[source] ListenerError),
    /// Region setup failed.
    #[error("Cannot create the group region")]
    Memory(#[source] MemoryError),
    /// epoll or eventfd failed.
    #[error("Event loop failure")]
    Io(#[source] io::Error),
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Group name (at most 32 bytes are stored in the region header).
    pub name: String,
    /// v0 socket path; the extension socket is this path plus `.ext`.
    pub socket: PathBuf,
    /// Region size (power of two).
    pub size: u64,
    /// Doorbell vectors per peer.
    pub vectors: u32,
    /// Peer limit.
    pub max_peers: u32,
    /// Back the region with huge pages.
    pub hugepages: bool,
    /// Make the sockets 0660 and owned by this unix group.
    pub socket_group: Option<String>,
    /// Messages queued for a client that does not read before it is dropped.
    /// `None`: twice a full greeting plus slack.
    pub queue_limit: Option<usize>,
}

impl ServerConfig {
    /// Defaults: 1 vector, 64 peers, no huge pages, socket 0600.
    pub fn new(name: &str, socket: impl Into<PathBuf>, size: u64) -> Self {
        Self {
            name: name.to_string(),
            socket: socket.into(),
            size,
            vectors: 1,
            max_peers: 64,
            hugepages: false,
            socket_group: None,
            queue_limit: None,
        }
    }

    fn validate(&self) -> Result<(), ServerError> {
        let bad = |msg: String| Err(ServerError::Config(msg));
        if self.name.is_empty() || self.name.len() > crate::layout::NAME_LEN {
            return bad(format!(
                "group name must be 1 to {} bytes",
                crate::layout::NAME_LEN
            ));
        }
        if !(1..=MAX_VECTORS).contains(&self.vectors) {
            return bad(format!("vectors must be 1 to {MAX_VECTORS}"));
        }
        if !(1..=MAX_PEERS).contains(&self.max_peers) {
            return bad(format!("max peers must be 1 to {MAX_PEERS}"));
        }
        memory::check_region_size(self.size).or_else(|e| bad(e.to_string()))?;
        if crate::layout::data_offset(self.max_peers) >= self.size {
            return bad("region too small for the peer table".into());
        }
        Ok(())
    }
}

/// Stops a running server from another thread.
#[derive(Debug)]
pub struct Stopper(EventFd);

impl Stopper {
    /// Asks the server loop to return.
    pub fn stop(&self) {
        let _ = self.0.write(1);
    }

    /// The eventfd behind the stopper: writing 8 bytes (any non-zero u64) to
    /// it stops the server, which is async-signal-safe (for SIGTERM handlers).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Allows a few warnings per second; counts the rest.
#[derive(Debug)]
struct RateLimit {
    window: Instant,
    count: u32,
    dropped: u64,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                warn!("{} more client errors were not logged", self.dropped);
            }
            self.window = Instant::now();
            self.count = 0;
            self.dropped = 0;
        }
        self.count += 1;
        if self.count > 20 {
            self.dropped += 1;
            return false;
        }
        true
    }
}

struct ConnSlot {
    serial: u32,
    conn: Option<Conn>,
}

/// The group server.
pub struct Server {
    config: ServerConfig,
    memfd: Arc<OwnedFd>,
    mapping: Mapping,
    identity: (u64, u64),
    fresh: bool,
    epoll: Epoll,
    v0: UnixListener,
    ext: UnixListener,
    stop: EventFd,
    conns: Vec<ConnSlot>,
    members: Members,
    queue_limit: usize,
    warnings: RateLimit,
    _files: [SocketFile; 2],
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.config.name)
            .field("socket", &self.config.socket)
            .finish()
    }
}

fn raise_fd_limit() {
    // SAFETY: an all-zero rlimit is a valid out-parameter.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Server {
    /// Creates the region and both sockets; call [`Server::run`] to serve.
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        raise_fd_limit();
        let memfd = memory::create_memfd(&config.name, config.size, config.hugepages)
            .map_err(ServerError::Memory)?;
        let mapping = memory::map_new_region(&memfd, config.size, config.hugepages)
            .map_err(ServerError::Memory)?;
        let params = LayoutParams {
            region_size: config.size,
            max_peers: config.max_peers,
            vectors: config.vectors,
            name: config.name.clone(),
        };
        // SAFETY: the mapping covers its whole length and outlives this call.
        unsafe { Region::init(mapping.as_ptr(), mapping.len(), &params) }
            .map_err(|e| ServerError::Memory(MemoryError::Layout(e)))?;
        let (_, identity) = memory::fd_identity(&memfd).map_err(ServerError::Memory)?;
        let gid = match &config.socket_group {
            Some(name) => Some(group_id(name).map_err(ServerError::Listener)?),
            None => None,
        };
        let ext_path = ext::ext_socket_path(&config.socket);
        let v0 = listener::bind(&config.socket, gid).map_err(ServerError::Listener)?;
        let v0_file = SocketFile(config.socket.clone());
        let ext = listener::bind(&ext_path, gid).map_err(ServerError::Listener)?;
        let ext_file = SocketFile(ext_path);
        let epoll = Epoll::new().map_err(ServerError::Io)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ServerError::Io)?;
        for (fd, token) in [
            (v0.as_raw_fd(), TOKEN_V0),
            (ext.as_raw_fd(), TOKEN_EXT),
            (stop.as_raw_fd(), TOKEN_STOP),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ServerError::Io)?;
        }
        let greeting = 3 + (config.max_peers as usize) * (config.vectors as usize);
        let queue_limit = config.queue_limit.unwrap_or(2 * greeting + 64);
        Ok(Self {
            members: Members::new(config.max_peers),
            config,
            memfd: Arc::new(memfd),
            mapping,
            identity,
            fresh: true,
            epoll,
            v0,
            ext,
            stop,
            conns: Vec::new(),
            queue_limit,
            warnings: RateLimit {
                window: Instant::now(),
                count: 0,
                dropped: 0,
            },
            _files: [v0_file, ext_file],
        })
    }

    /// A handle that makes [`Server::run`] return.
    pub fn stopper(&self) -> Result<Stopper, ServerError> {
        self.stop.try_clone().map(Stopper).map_err(ServerError::Io)
    }

    /// The region fd (e.g. for a VMM that hosts the server in-process).
    pub fn memfd(&self) -> &OwnedFd {
        &self.memfd
    }

    fn region(&self) -> Option<Region<'_>> {
        self.mapping.region().ok()
    }

    /// Serves until stopped.
    pub fn run(&mut self) -> Result<(), ServerError> {
        info!(
            "group {}: serving on {} ({} bytes, {} vectors, up to {} peers)",
            self.config.name,
            self.config.socket.display(),
            self.config.size,
            self.config.vectors,
            self.config.max_peers
        );
        let mut events = vec![EpollEvent::default(); 64];
        let mut last_reap = Instant::now();
        loop {
            let n = match self.epoll.wait(1000, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Io(e)),
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_STOP => {
                        info!("group {}: stopping", self.config.name);
                        return Ok(());
                    }
                    TOKEN_V0 => self.accept(Kind::V0),
                    TOKEN_EXT => self.accept(Kind::Ext),
                    data => self.conn_event(data, event.event_set()),
                }
            }
            self.expire_pending();
            if last_reap.elapsed() >= Duration::from_secs(1) {
                last_reap = Instant::now();
                self.reap_orphans();
            }
        }
    }

    fn accept(&mut self, kind: Kind) {
        loop {
            let listener = match kind {
                Kind::V0 => &self.v0,
                Kind::Ext => &self.ext,
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.warnings.allow() {
                        warn!("group {}: accept failed: {e}", self.config.name);
                    }
                    return;
                }
            };
            let limit = 2 * self.config.max_peers as usize + 64;
            let open = self.conns.iter().filter(|s| s.conn.is_some()).count();
            if open >= limit {
                if self.warnings.allow() {
                    warn!(
                        "group {}: too many connections, refusing one",
                        self.config.name
                    );
                }
                continue;
            }
            let conn = match Conn::new(stream, kind, self.queue_limit) {
                Ok(conn) => conn,
                Err(e) => {
                    warn!("group {}: cannot set up connection: {e}", self.config.name);
                    continue;
                }
            };
            let Some(key) = self.insert(conn) else {
                continue;
            };
            if kind == Kind::V0 {
                self.join_v0(key);
            }
            self.after_io(key);
        }
    }

    fn insert(&mut self, conn: Conn) -> Option<ConnKey> {
        let key = match self.conns.iter().position(|s| s.conn.is_none()) {
            Some(key) => key,
            None => {
                self.conns.push(ConnSlot {
                    serial: 0,
                    conn: None,
                });
                self.conns.len() - 1
            }
        };
        let slot = &mut self.conns[key];
        slot.serial = slot.serial.wrapping_add(1);
        let data = TOKEN_CONN_BASE + key as u64 + (u64::from(slot.serial) << 32);
        let events = EventSet::IN | EventSet::READ_HANG_UP;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            conn.stream.as_raw_fd(),
            EpollEvent::new(events, data),
        ) {
            warn!("group {}: cannot watch connection: {e}", self.config.name);
            return None;
        }
        slot.conn = Some(conn);
        Some(key)
    }

    fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.conns.get_mut(key).and_then(|s| s.conn.as_mut())
    }

    fn conn_event(&mut self, data: u64, events: EventSet) {
        let key = ((data & 0xffff_ffff) - TOKEN_CONN_BASE) as usize;
        let serial = (data >> 32) as u32;
        match self.conns.get(key) {
            Some(slot) if slot.serial == serial && slot.conn.is_some() => {}
            _ => return,
        }
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
        {
            if let Err(e) = self.serve_input(key) {
                self.drop_conn(key, &e);
                return;
            }
        }
        self.after_io(key);
    }

    fn serve_input(&mut self, key: ConnKey) -> Result<(), ConnError> {
        loop {
            let Some(conn) = self.conn_mut(key) else {
                return Ok(());
            };
            conn.read_input()?;
            let mut served = false;
            loop {
                let next = match self.conn_mut(key) {
                    Some(conn) => conn.next_request()?,
                    None => None,
                };
                let Some((request, fds)) = next else {
                    break;
                };
                served = true;
                self.handle_request(key, request, fds)?;
            }
            if !served {
                return Ok(());
            }
        }
    }

    /// Flushes output and re-arms EPOLLOUT as needed; drops the connection on
    /// errors.
    fn after_io(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let serial = slot.serial;
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        let drained = match conn.flush() {
            Ok(drained) => drained,
            Err(e) => {
                self.drop_conn(key, &e);
                return;
            }
        };
        if drained == conn.writable_armed {
            let mut events = EventSet::IN | EventSet::READ_HANG_UP;
            if !drained {
                events |= EventSet::OUT;
            }
            let data = TOKEN_CONN_BASE + key as u64 + (u64::from(serial) << 32);
            let fd = conn.stream.as_raw_fd();
            conn.writable_armed = !drained;
            if let Err(e) =
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, data))
            {
                self.drop_conn(key, &ConnError::Io(e));
            }
        }
    }

    fn drop_conn(&mut self, key: ConnKey, why: &ConnError) {
        let Some(conn) = self.conns.get_mut(key).and_then(|s| s.conn.take()) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            conn.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let quiet = match why {
            ConnError::Closed => true,
            ConnError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        };
        match conn.role {
            ConnRole::Peer(id) => {
                if !quiet && self.warnings.allow() {
                    warn!(
                        "group {}: dropping peer {id} (pid {}): {why}",
                        self.config.name, conn.pid
                    );
                }
                let owns = self.members.get(id).is_some_and(|s| s.conn == Some(key));
                if owns {
                    self.peer_died(id);
                }
            }
            ConnRole::Pending(_) | ConnRole::Control => {
                if !quiet && self.warnings.allow() {
                    warn!(
                        "group {}: dropping client (pid {}): {why}",
                        self.config.name, conn.pid
                    );
                }
            }
        }
    }

    fn expire_pending(&mut self) {
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(key, s)| match s.conn.as_ref().map(|c| c.role) {
                Some(ConnRole::Pending(since)) if since.elapsed() > HELLO_TIMEOUT => Some(key),
                _ => None,
            })
            .collect();
        for key in expired {
            self.drop_conn(
                key,
                &ConnError::Io(io::Error::from(io::ErrorKind::TimedOut)),
            );
        }
    }

    /// Adopted members that have not reconnected have no socket whose
    /// closing would tell us they died; check their pid instead (same host).
    fn reap_orphans(&mut self) {
        let gone: Vec<u16> = self
            .members
            .iter()
            .filter(|(_, s)| s.state == SlotState::Live && s.conn.is_none() && s.pid != 0)
            .filter(|(_, s)| {
                // SAFETY: kill with signal 0 only checks for existence.
                let rc = unsafe { libc::kill(s.pid as libc::pid_t, 0) };
                rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            })
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            info!("group {}: adopted peer {id} has exited", self.config.name);
            self.peer_died(id);
        }
    }

    /// Sends `reply` to `key` (errors surface on the next flush).
    fn reply(&mut self, key: ConnKey, reply: &Reply) -> Result<(), ConnError> {
        match self.conn_mut(key) {
            Some(conn) => conn.queue_reply(reply),
            None => Ok(()),
        }
    }

    fn handle_request(
        &mut self,
        key: ConnKey,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ConnError> {
        let role = self.conn_mut(key).map(|c| c.role);
        match (role, request) {
            (Some(ConnRole::Pending(_)), Request::Hello(hello)) => self.hello(key, hello, fds),
            (Some(ConnRole::Pending(_)), _) => Err(protocol_error("first request must be hello")),
            (_, Request::Hello(_)) => Err(protocol_error("duplicate hello")),
            (_, Request::Status) => {
                let status = self.status();
                self.reply(key, &Reply::Status(status))
            }
            (_, Request::Watch) => {
                if let Some(conn) = self.conn_mut(key) {
                    conn.watch = true;
                }
                Ok(())
            }
            (Some(ConnRole::Peer(id)), Request::Migrating) => {
                self.set_state(id, PeerState::Migrating, false, EventKind::Migrating);
                info!("group {}: peer {id} is migrating", self.config.name);
                Ok(())
            }
            (_, Request::Migrating) => Err(protocol_error("only peers migrate")),
        }
    }

    /// Writes the table entry for `id` and notifies watchers.
    fn set_state(&mut self, id: u16, state: PeerState, bump: bool, kind: EventKind) -> u32 {
        let pid = self.members.get(id).map_or(0, |s| s.pid);
        let generation = self
            .region()
            .and_then(|r| r.set_peer(id, state, pid, bump))
            .unwrap_or(0);
        let event = Reply::Event(Event {
            kind,
            id,
            pid,
            generation,
        });
        let watchers: Vec<ConnKey> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.as_ref().is_some_and(|c| c.watch))
            .map(|(k, _)| k)
            .collect();
        for key in watchers {
            if let Err(e) = self.reply(key, &event) {
                self.drop_conn(key, &e);
            } else {
                self.after_io(key);
            }
        }
        generation
    }

    fn status(&self) -> StatusReport {
        let region = self.region();
        let members = self
            .members
            .iter()
            .filter(|(_, s)| s.state != SlotState::Absent)
            .map(|(id, slot)| {
                let snap = region.as_ref().and_then(|r| r.peer(id));
                MemberStatus {
                    id,
                    state: match slot.state {
                        SlotState::Live => snap
                            .and_then(|s| s.state)
                            .unwrap_or(PeerState::Alive)
                            .name()
                            .to_string(),
                        SlotState::Dead => "dead".into(),
                        SlotState::Absent => "absent".into(),
                    },
                    generation: snap.map_or(0, |s| s.generation),
                    pid: slot.pid,
                    extension: slot.extension,
                    connected: slot.conn.is_some(),
                    doorbells_sent: snap.map_or(0, |s| s.doorbells_sent),
                    doorbells_received: snap.map_or(0, |s| s.doorbells_received),
                }
            })
            .collect();
        StatusReport {
            group: self.config.name.clone(),
            size: self.config.size,
            vectors: self.config.vectors,
            max_peers: self.config.max_peers,
            server_epoch: region.map_or(0, |r| r.server_epoch()),
            members,
        }
    }
}

fn protocol_error(what: &str) -> ConnError {
    ConnError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_string()))
}

mod join;
