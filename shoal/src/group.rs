// SPDX-License-Identifier: Apache-2.0
//! `shoal group serve|status`: run a shared-memory group server, or ask one
//! for its members.

use clap::Subcommand;
use shmem_group::client::query_status;
use shmem_group::ext::StatusReport;
use shmem_group::server::{Server, ServerConfig, Stopper};
use shmem_group::size::{format_size, parse_size};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// `shoal group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Serve a group in the foreground (QEMU ivshmem-server compatible).
    Serve {
        /// Group name (at most 32 bytes; stored in the region header).
        #[arg(long)]
        name: String,
        /// Socket path (QEMU: `-chardev socket,path=PATH`); the Shoal
        /// extension listens on PATH.ext.
        #[arg(long)]
        socket: PathBuf,
        /// Region size, a power of two: 4M, 64M, 1G...
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Doorbell vectors per peer (QEMU's `vectors` must not exceed it).
        #[arg(long, default_value_t = 1)]
        vectors: u32,
        /// Most peers in the group.
        #[arg(long, default_value_t = 64)]
        max_peers: u32,
        /// Back the region with huge pages (size must be a multiple of them).
        #[arg(long)]
        hugepages: bool,
        /// Make the sockets 0660 and owned by this unix group (default 0600).
        #[arg(long)]
        socket_group: Option<String>,
    },
    /// Show the members of a running group.
    Status {
        /// The group's socket path (as given to `serve`).
        #[arg(long)]
        socket: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `shoal group` subcommand.
pub fn run(cmd: GroupCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        GroupCommand::Serve {
            name,
            socket,
            size,
            vectors,
            max_peers,
            hugepages,
            socket_group,
        } => {
            let mut config = ServerConfig::new(&name, socket, size);
            config.vectors = vectors;
            config.max_peers = max_peers;
            config.hugepages = hugepages;
            config.socket_group = socket_group;
            serve(config)
        }
        GroupCommand::Status { socket, json } => {
            let report = query_status(&socket, Duration::from_secs(5))?;
            if json {
                println!("{}", report.to_json()?);
            } else {
                print!("{}", render(&report));
            }
            Ok(())
        }
    }
}

/// The stop eventfd of the running server, for the signal handler.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = STOP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) on an eventfd is async-signal-safe; the buffer is
        // a valid 8-byte local.
        unsafe { libc::write(fd, one.as_ptr() as *const libc::c_void, 8) };
    }
}

fn serve(config: ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server::new(config)?;
    // The stopper stays alive for the whole run, so its fd stays valid for
    // the signal handler.
    let stopper: Stopper = server.stopper()?;
    STOP_FD.store(stopper.raw_fd(), Ordering::Relaxed);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only calls write(2).
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let result = server.run();
    STOP_FD.store(-1, Ordering::Relaxed);
    drop(stopper);
    Ok(result?)
}

fn render(report: &StatusReport) -> String {
    let mut out = format!(
        "group {}: {} region, {} vector(s), {} of {} peers, server epoch {}\n",
        report.group,
        format_size(report.size),
        report.vectors,
        report.members.iter().filter(|m| m.state != "dead").count(),
        report.max_peers,
        report.server_epoch
    );
    out.push_str("  ID  STATE      GEN      PID  KIND   CONNECTED       SENT   RECEIVED\n");
    for m in &report.members {
        out.push_str(&format!(
            "{:>4}  {:<9} {:>4} {:>8}  {:<6} {:<9} {:>10} {:>10}\n",
            m.id,
            m.state,
            m.generation,
            m.pid,
            if m.extension { "shoal" } else { "plain" },
            if m.connected { "yes" } else { "no" },
            m.doorbells_sent,
            m.doorbells_received
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use shmem_group::ext::MemberStatus;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: GroupCommand,
    }

    #[test]
    fn serve_parses_sizes_with_suffixes() {
        let cli = Cli::try_parse_from([
            "x",
            "serve",
            "--name",
            "g",
            "--socket",
            "/tmp/s",
            "--size",
            "4M",
            "--vectors",
            "2",
        ])
        .unwrap();
        match cli.cmd {
            GroupCommand::Serve { size, vectors, .. } => {
                assert_eq!(size, 4 << 20);
                assert_eq!(vectors, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_size_is_a_usage_error() {
        let err = Cli::try_parse_from([
            "x", "serve", "--name", "g", "--socket", "/tmp/s", "--size", "4Q",
        ]);
        assert!(err.is_err());
    }

    #[test]
    fn status_table_lists_members() {
        let report = StatusReport {
            group: "g".into(),
            size: 1 << 20,
            vectors: 1,
            max_peers: 8,
            server_epoch: 1,
            members: vec![MemberStatus {
                id: 3,
                state: "dead".into(),
                generation: 2,
                pid: 42,
                extension: true,
                connected: false,
                doorbells_sent: 7,
                doorbells_received: 1,
            }],
        };
        let text = render(&report);
        assert!(text.contains("group g: 1M region"));
        assert!(text.contains("   3  dead"));
        assert!(text.contains("0 of 8 peers"));
    }
}
