// SPDX-License-Identifier: Apache-2.0
//! The shared-memory group: everything that lets several VMs and host
//! processes share one memory region the way QEMU's ivshmem does.
//!
//! This crate owns:
//! - [`protocol`]: QEMU's ivshmem-server wire protocol (version 0), pure;
//! - [`ext`]: the versioned Shoal extension (group name, stable identity,
//!   reconnect after a server restart, membership events, stats);
//! - [`layout`]: the region header and peer state table (shared with the
//!   guest SDK; dependency-free);
//! - [`server`]: the group server (`shoal group serve`);
//! - [`client`]: the host-peer library (a host process joins like a VM);
//! - [`doorbells`]: the per-group doorbell table, also the ivshmem device
//!   model's `DoorbellSink` (slow path) in the VMM;
//! - [`memory`], [`scm`], [`stream`]: memfd/mmap, SCM_RIGHTS and stream
//!   helpers the others are built on; [`size`]: `4M`/`1G` size parsing.
//!
//! It depends on `devices` only for the `DoorbellSink` trait, and must not
//! depend on `vmm`, `hypervisor` or KVM: the VMM wires doorbells
//! to KVM ioeventfds/irqfds itself, using the eventfds this crate hands out.
//! See `docs/protocol.md` for the protocol and the server-restart design.

pub mod client;
pub mod doorbells;
pub mod ext;
pub mod fuzzing;
pub mod layout;
pub mod memory;
pub mod protocol;
pub mod scm;
pub mod server;
pub mod size;
pub mod stream;

pub use client::{Membership, Peer, PeerOptions};
pub use doorbells::Doorbells;
pub use server::{Server, ServerConfig};
pub use size::parse_size;
