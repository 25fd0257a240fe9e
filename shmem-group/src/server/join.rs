// SPDX-License-Identifier: Apache-2.0
//! Joining, resuming, adopting and leaving: the membership transitions.
//!
//! Every peer connection keeps the set of peer ids whose eventfds it holds
//! (`Conn::known`). Announcing a peer sends its vectors to every connection
//! that does not know it yet; a death sends a disconnect to every
//! connection that does. That single rule covers fresh joins, migrations
//! (the new connection takes over an id everybody already knows), and server
//! restarts (adopting peers report which ids they still hold).

use super::conn::{ConnError, ConnRole};
use super::members::{new_eventfd, new_token, ConnKey, SlotState};
use super::Server;
use crate::ext::{EventKind, Hello, Reply, Role, Welcome, EXT_VERSION};
use crate::layout::PeerState;
use crate::memory::{self, Mapping};
use crate::protocol::{PROTOCOL_VERSION, SHM_MESSAGE};
use log::{info, warn};
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// How a connection becomes the holder of an id.
struct Admission {
    id: u16,
    eventfds: Vec<Arc<OwnedFd>>,
    token: Option<String>,
    extension: bool,
    bump: bool,
    kind: EventKind,
    welcome: Option<Welcome>,
    known: Option<Vec<u16>>,
}

impl Server {
    fn new_eventfds(&self) -> Result<Vec<Arc<OwnedFd>>, ConnError> {
        (0..self.config.vectors)
            .map(|_| new_eventfd().map(Arc::new).map_err(ConnError::Io))
            .collect()
    }

    /// A plain (QEMU) client connected: give it the next id right away.
    pub(super) fn join_v0(&mut self, key: ConnKey) {
        let Some(id) = self.members.allocate() else {
            warn!("group {}: full, refusing a client", self.config.name);
            self.drop_conn(key, &ConnError::Refused("group is full".into()));
            return;
        };
        let result = self.new_eventfds().and_then(|eventfds| {
            self.admit(
                key,
                Admission {
                    id,
                    eventfds,
                    token: None,
                    extension: false,
                    bump: true,
                    kind: EventKind::Joined,
                    welcome: None,
                    known: None,
                },
            )
        });
        if let Err(e) = result {
            self.drop_conn(key, &e);
        }
    }

    fn refuse(&mut self, key: ConnKey, message: &str) -> ConnError {
        if let Some(conn) = self.conn_mut(key) {
            let _ = conn.queue_reply(&Reply::Error {
                message: message.to_string(),
            });
            let _ = conn.flush();
        }
        ConnError::Refused(message.to_string())
    }

    /// First frame of an extension connection.
    pub(super) fn hello(
        &mut self,
        key: ConnKey,
        hello: Hello,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ConnError> {
        if hello.ext_version < 1 {
            return Err(self.refuse(key, "unsupported extension version"));
        }
        if let Some(group) = &hello.group {
            if *group != self.config.name {
                let msg = format!("this is group {}, not {group}", self.config.name);
                return Err(self.refuse(key, &msg));
            }
        }
        match hello.role {
            Role::Control => {
                let welcome = self.welcome(None, None, false, false);
                if let Some(conn) = self.conn_mut(key) {
                    conn.role = ConnRole::Control;
                    conn.queue_reply(&Reply::Welcome(welcome))?;
                }
                Ok(())
            }
            Role::Peer => self.hello_peer(key, hello, fds),
        }
    }

    fn welcome(
        &self,
        id: Option<u16>,
        token: Option<String>,
        resumed: bool,
        adopted: bool,
    ) -> Welcome {
        Welcome {
            ext_version: EXT_VERSION,
            group: self.config.name.clone(),
            id,
            token,
            vectors: self.config.vectors,
            size: self.config.size,
            resumed,
            adopted,
        }
    }

    fn hello_peer(
        &mut self,
        key: ConnKey,
        hello: Hello,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ConnError> {
        let mut fds = fds.into_iter();
        let mut adopted = false;
        let own_fds = match &hello.adopt {
            Some(adopt) => {
                if adopt.vectors != self.config.vectors {
                    let msg = format!("group has {} vectors", self.config.vectors);
                    return Err(self.refuse(key, &msg));
                }
                let Some(memfd) = fds.next() else {
                    return Err(self.refuse(key, "adopt needs the region fd"));
                };
                adopted = match self.adopt_region(memfd) {
                    Ok(adopted) => adopted,
                    Err(msg) => return Err(self.refuse(key, &msg)),
                };
                Some(fds.map(Arc::new).collect::<Vec<_>>())
            }
            None => None,
        };
        let token = hello.token.as_deref();
        let requested = hello
            .id
            .or_else(|| token.and_then(|t| self.members.by_token(t)));
        let (id, resumed) = match requested {
            Some(id) if self.members.claimable(id, token) => (id, true),
            Some(id) if own_fds.is_some() => {
                return Err(self.refuse(key, &format!("peer id {id} is taken")));
            }
            _ => match self.members.allocate() {
                Some(id) => (id, false),
                None => return Err(self.refuse(key, "group is full")),
            },
        };
        let (prev_state, prev_conn, prev_fds) = match self.members.get_mut(id) {
            Some(slot) => (slot.state, slot.conn.take(), slot.eventfds.clone()),
            None => return Err(self.refuse(key, "peer id out of range")),
        };
        if let Some(old) = prev_conn.filter(|old| *old != key) {
            // Migration: the new connection takes the id over; the old one
            // is closed without announcing a departure.
            self.drop_conn(old, &ConnError::Refused(format!("peer {id} taken over")));
        }
        let eventfds = match own_fds {
            Some(fds) => fds,
            None if prev_state == SlotState::Live && !prev_fds.is_empty() => prev_fds,
            None => self.new_eventfds()?,
        };
        let token = match (resumed, hello.token) {
            (true, Some(token)) => token,
            _ => new_token().map_err(ConnError::Io)?,
        };
        let live_before = prev_state == SlotState::Live;
        let welcome = self.welcome(Some(id), Some(token.clone()), resumed, adopted);
        self.admit(
            key,
            Admission {
                id,
                eventfds,
                token: Some(token),
                extension: true,
                bump: !live_before,
                kind: if live_before {
                    EventKind::Resumed
                } else {
                    EventKind::Joined
                },
                welcome: Some(welcome),
                known: if resumed { hello.known_peers } else { None },
            },
        )
    }

    /// Takes over the region a reconnecting peer hands back. Returns whether
    /// the region was replaced (false: it is already ours).
    fn adopt_region(&mut self, memfd: OwnedFd) -> Result<bool, String> {
        let (size, identity) = memory::fd_identity(&memfd).map_err(|e| e.to_string())?;
        if identity == self.identity {
            return Ok(false);
        }
        if !self.fresh {
            return Err("region differs from the group's region".into());
        }
        if size != self.config.size {
            return Err(format!(
                "region is {size} bytes, group is {}",
                self.config.size
            ));
        }
        let mapping = Mapping::new(&memfd).map_err(|e| e.to_string())?;
        let region = mapping.region().map_err(|e| e.to_string())?;
        if region.name() != self.config.name
            || region.max_peers() != self.config.max_peers
            || region.vectors() != self.config.vectors
        {
            return Err("region header does not match the group configuration".into());
        }
        let epoch = region.bump_server_epoch();
        for id in 0..region.max_peers() {
            let id = id as u16;
            let (Some(snap), Some(slot)) = (region.peer(id), self.members.get_mut(id)) else {
                continue;
            };
            match snap.state {
                Some(PeerState::Alive) | Some(PeerState::Migrating) => {
                    slot.state = SlotState::Live;
                    slot.pid = snap.pid;
                }
                Some(PeerState::Dead) => slot.state = SlotState::Dead,
                _ => {}
            }
        }
        info!(
            "group {}: adopted the region of a reconnecting peer (server epoch {epoch})",
            self.config.name
        );
        self.memfd = Arc::new(memfd);
        self.mapping = mapping;
        self.identity = identity;
        self.fresh = false;
        Ok(true)
    }

    fn admit(&mut self, key: ConnKey, admission: Admission) -> Result<(), ConnError> {
        let Admission {
            id,
            eventfds,
            token,
            extension,
            bump,
            kind,
            welcome,
            known,
        } = admission;
        let pid = self.conn_mut(key).map_or(0, |c| c.pid);
        if let Some(slot) = self.members.get_mut(id) {
            slot.state = SlotState::Live;
            slot.conn = Some(key);
            slot.eventfds = eventfds.clone();
            slot.token = token;
            slot.pid = pid;
            slot.extension = extension;
        }
        self.fresh = false;
        // Peers whose eventfds can be handed out, in id order.
        let others: Vec<(u16, Vec<Arc<OwnedFd>>)> = self
            .members
            .iter()
            .filter(|(p, s)| *p != id && s.state == SlotState::Live && !s.eventfds.is_empty())
            .map(|(p, s)| (p, s.eventfds.clone()))
            .collect();
        let live: BTreeSet<u16> = self.members.live_ids().into_iter().collect();
        let memfd = self.memfd.clone();
        let Some(conn) = self.conn_mut(key) else {
            return Ok(());
        };
        conn.role = ConnRole::Peer(id);
        if let Some(welcome) = welcome {
            conn.queue_reply(&Reply::Welcome(welcome))?;
        }
        match known {
            None => {
                conn.queue_v0(PROTOCOL_VERSION, None)?;
                conn.queue_v0(i64::from(id), None)?;
                conn.queue_v0(SHM_MESSAGE, Some(memfd))?;
            }
            Some(list) => {
                // A resuming client holds its own eventfds already.
                conn.known.insert(id);
                for peer in list.into_iter().filter(|p| *p != id) {
                    if live.contains(&peer) {
                        conn.known.insert(peer);
                    } else {
                        conn.queue_v0(i64::from(peer), None)?;
                    }
                }
            }
        }
        for (peer, fds) in &others {
            if conn.known.insert(*peer) {
                for fd in fds {
                    conn.queue_v0(i64::from(*peer), Some(fd.clone()))?;
                }
            }
        }
        if conn.known.insert(id) {
            for fd in &eventfds {
                conn.queue_v0(i64::from(id), Some(fd.clone()))?;
            }
        }
        let generation = self.set_state(id, PeerState::Alive, bump, kind);
        self.announce(key, id, &eventfds);
        let verb = match kind {
            EventKind::Resumed => "resumed",
            _ => "joined",
        };
        info!(
            "group {}: peer {id} {verb} (pid {pid}, generation {generation}, {})",
            self.config.name,
            if extension { "shoal" } else { "plain" }
        );
        Ok(())
    }

    /// Sends `id`'s vectors to every peer connection that lacks them.
    fn announce(&mut self, except: ConnKey, id: u16, eventfds: &[Arc<OwnedFd>]) {
        if eventfds.is_empty() {
            return;
        }
        let mut failed = Vec::new();
        let mut touched = Vec::new();
        for (key, slot) in self.conns.iter_mut().enumerate() {
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if key == except || !matches!(conn.role, ConnRole::Peer(_)) || conn.known.contains(&id)
            {
                continue;
            }
            conn.known.insert(id);
            let result = eventfds
                .iter()
                .try_for_each(|fd| conn.queue_v0(i64::from(id), Some(fd.clone())));
            match result {
                Ok(()) => touched.push(key),
                Err(e) => failed.push((key, e)),
            }
        }
        for key in touched {
            self.after_io(key);
        }
        for (key, e) in failed {
            self.drop_conn(key, &e);
        }
    }

    /// A member's connection closed: mark it dead and tell the others.
    pub(super) fn peer_died(&mut self, id: u16) {
        let pid = match self.members.get_mut(id) {
            Some(slot) => {
                slot.state = SlotState::Dead;
                slot.conn = None;
                slot.eventfds.clear();
                slot.pid
            }
            None => return,
        };
        let generation = self.set_state(id, PeerState::Dead, true, EventKind::Died);
        info!(
            "group {}: peer {id} left (pid {pid}), marked dead, generation {generation}",
            self.config.name
        );
        let mut failed = Vec::new();
        let mut touched = Vec::new();
        for (key, slot) in self.conns.iter_mut().enumerate() {
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if !conn.known.remove(&id) || conn.role == ConnRole::Peer(id) {
                continue;
            }
            match conn.queue_v0(i64::from(id), None) {
                Ok(()) => touched.push(key),
                Err(e) => failed.push((key, e)),
            }
        }
        for key in touched {
            self.after_io(key);
        }
        for (key, e) in failed {
            self.drop_conn(key, &e);
        }
    }
}
