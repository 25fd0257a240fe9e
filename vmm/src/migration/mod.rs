// SPDX-License-Identifier: Apache-2.0
//! Live migration: the stream, the sender and the receiver.
//!
//! The sender ([`send`]) copies a running VM's RAM in pre-copy iterations
//! driven by the dirty log, pauses it when the rest fits the downtime
//! target, sends the VM state and waits for the destination's commit
//! acknowledgement, then writes `go`. The receiver ([`receive`]) checks
//! every frame, writes RAM, restores the state, acknowledges only then,
//! and starts the VM only when `go` arrives. Both talk to the VM through
//! the traits [`MigrationSource`] and [`MigrationTarget`], which the VM
//! implements; this module knows nothing about KVM or devices.
//!
//! Fault tolerance: any failure before `go` is written leaves the source
//! running (the sender calls [`MigrationSource::resume`] itself); once it
//! is written, [`send`] returns `Ok` and the source must stop. The
//! destination runs the VM only after reading `go`: at most one side ever
//! runs it. A `go` written but lost leaves the destination with the VM
//! restored and not started ([`ReceiveReport::unconfirmed`]), for the
//! operator to resume with force (`vm.resume` with `force`, once the
//! source is known to be gone).

pub mod fake;
pub mod frame;
mod page_pipe;
pub mod progress;
pub mod ram;
mod ram_writer;
mod receiver;
mod sender;
pub mod url;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;

use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

pub use frame::{FrameError, Hello};
pub use progress::{MigrationProgress, MigrationReport, MigrationState, MigrationStatus};
pub use ram::RamView;
pub use receiver::{fuzz_stream, receive, receive_with_progress, ReceiveReport};
pub use sender::{send, spawn_send};
pub use url::{Listener, MigrationUrl, Stream, UrlError};

/// The error type of the VM hooks.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of a migration, on either side.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration address")]
    Url(#[from] UrlError),
    #[error("local migration needs a unix: address, not {0}")]
    LocalNeedsUnix(String),
    #[error("migration stream")]
    Frame(#[from] FrameError),
    #[error("cannot send to the destination")]
    Send(#[source] std::io::Error),
    #[error("the destination refused the migration: {0}")]
    Rejected(String),
    #[error("the source aborted the migration: {0}")]
    Aborted(String),
    #[error("the destination closed the connection before committing (did it exit?)")]
    DestinationClosed,
    #[error("cannot send go after the commit (the destination keeps a paused copy: shut it down)")]
    Go(#[source] std::io::Error),
    #[error("no answer from the peer within {0} s")]
    NoAnswer(u64),
    #[error("expected {expected} from the peer, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("the VM could not {0}")]
    Vm(&'static str, #[source] HookError),
    #[error("a migration is already running")]
    Busy,
    #[error("cancelled")]
    Cancelled,
    #[error("did not complete within {0} s")]
    Timeout(u64),
    #[error("page size {0} is not supported (this build uses 4096)")]
    PageSize(u32),
    #[error("pages {first}..{end} are outside the {ram_size} bytes of guest RAM")]
    PageOutOfRange { first: u64, end: u64, ram_size: u64 },
    #[error("local migration without the RAM file descriptor")]
    NoRamFd,
    #[error("the handed-over RAM file is {len} bytes, less than the {ram_size} bytes of RAM")]
    RamFdTooSmall { len: u64, ram_size: u64 },
    #[error("RAM size {0} is not a positive multiple of 4096")]
    RamSize(u64),
    #[error("commit before the VM state")]
    CommitWithoutState,
    #[error("cannot start a migration thread")]
    Thread(#[source] std::io::Error),
}

/// The running VM, as the sender sees it. Called from the migration
/// thread while the VM's control loop runs; every method must be safe to
/// call concurrently with the guest running.
pub trait MigrationSource {
    /// Guest RAM size in bytes (a multiple of 4 KiB).
    fn ram_size(&self) -> u64;
    /// The guest RAM memfd: file offset = RAM offset of `read_ram`. Used
    /// to skip never-touched RAM (holes) and for same-host migration.
    fn ram_fd(&self) -> BorrowedFd<'_>;
    /// The VM configuration, sent to the destination first.
    fn config(&self) -> serde_json::Value;
    /// Guest RAM as mapped in this process, by RAM file offset (the
    /// sender copies pages from it while the guest runs).
    fn ram(&self) -> RamView<'_>;
    /// Starts dirty page logging (and clears the log).
    fn start_dirty_log(&self) -> Result<(), HookError>;
    /// Stops dirty page logging.
    fn stop_dirty_log(&self);
    /// The pages written since the last call (or since logging started):
    /// bit `i % 64` of word `i / 64` is page `i`. Clears the log.
    fn take_dirty_bitmap(&self) -> Result<Vec<u64>, HookError>;
    /// Stops the vCPUs (returns when none runs guest code).
    fn pause(&self) -> Result<(), HookError>;
    /// Lets the vCPUs run again.
    fn resume(&self) -> Result<(), HookError>;
    /// Slows the vCPUs down to let pre-copy converge: `percent` of the
    /// time they are kept from running (0 = full speed).
    fn throttle(&self, percent: u8);
    /// The encoded VM state (`snapshot::VmSnapshot::to_body`); the VM is paused.
    fn save_state(&self) -> Result<Vec<u8>, HookError>;
}

/// The VM being built from an incoming migration.
pub trait MigrationTarget {
    /// Creates the VM (not running) for `hello.config` with `hello.ram_size`
    /// bytes of RAM, all zero (zero pages of the first pass are not written);
    /// with `hello.local` the RAM comes from
    /// [`MigrationTarget::adopt_ram_fd`] instead.
    fn prepare(&mut self, hello: &Hello) -> Result<(), HookError>;
    /// Writes guest RAM at `offset`.
    fn write_ram(&mut self, offset: u64, data: &[u8]) -> Result<(), HookError>;
    /// Zeroes `len` bytes of guest RAM at `offset` (a page that was written
    /// in an earlier iteration and is zero now). Make it cheap:
    /// `snapshot::memory::punch_hole` on the memfd rather than writing zeros.
    fn zero_ram(&mut self, offset: u64, len: u64) -> Result<(), HookError>;
    /// The file `write_ram` and `zero_ram` act on (RAM offset = file
    /// offset), as a new descriptor, once `prepare` ran: the receiver then
    /// writes pages into it from a thread of its own, overlapping with
    /// reading the stream. `None`: every page goes through the hooks.
    fn ram_file(&self) -> Option<std::fs::File>;
    /// Takes the source's RAM memfd (same-host migration).
    fn adopt_ram_fd(&mut self, fd: OwnedFd, size: u64) -> Result<(), HookError>;
    /// Restores the VM state sent by [`MigrationSource::save_state`].
    fn restore_state(&mut self, state: &[u8]) -> Result<(), HookError>;
    /// Starts the vCPUs (after the source's `go`). Not called when `go`
    /// does not come: the VM then stays restored and not running (see
    /// [`ReceiveReport::unconfirmed`]).
    fn start(&mut self) -> Result<(), HookError>;
}

fn default_downtime_ms() -> u64 {
    100
}

fn default_timeout_s() -> u64 {
    600
}

/// How to send a VM (the body of `vm.send-migration`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendOptions {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    pub destination_url: String,
    /// Hand the RAM memfd over instead of copying (same host, unix only).
    #[serde(default)]
    pub local: bool,
    /// Longest acceptable pause of the guest.
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// Give up (and resume the source) after this long.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Most bytes per second to send (0: as fast as the link goes). Holds
    /// for the pages of every phase, like a link that slow would.
    #[serde(default)]
    pub max_bandwidth: u64,
}

impl SendOptions {
    /// Options with the defaults for `url`.
    pub fn new(url: &str) -> Self {
        SendOptions {
            destination_url: url.to_string(),
            local: false,
            downtime_ms: default_downtime_ms(),
            timeout_s: default_timeout_s(),
            max_bandwidth: 0,
        }
    }
}

/// Where to receive a VM (the body of `vm.receive-migration`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveOptions {
    pub receiver_url: String,
}

/// An error and its sources on one line (`a: b: c`), for status and logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}
