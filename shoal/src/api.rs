// SPDX-License-Identifier: Apache-2.0
//! `shoal api`: a client for a running VM's control API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use vmm::api::client::{self, ClientError, Response};
use vmm::api::{RestoreBody, ResumeBody, SnapshotBody};
use vmm::migration::{
    MigrationReport, MigrationState, MigrationStatus, ReceiveOptions, SendOptions,
};

/// Talk to a running VM through its API socket.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The VM's API socket (`shoal run --api-socket PATH`).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: ApiCommand,
}

/// The API endpoints.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Show the VM: configuration, state, vCPUs, devices, groups.
    Info,
    /// Pause the guest.
    Pause,
    /// Resume the guest.
    Resume {
        /// Also run a VM kept paused after an incoming migration whose
        /// source did not confirm the commit: only once the source VMM has
        /// exited (else two copies of the guest would run).
        #[arg(long)]
        force: bool,
    },
    /// Stop the VM.
    Shutdown,
    /// Pause the VM and write a snapshot into DIR (the VM stays paused).
    Snapshot {
        #[arg(value_name = "DIR")]
        destination: PathBuf,
    },
    /// Restore a snapshot into a VMM started without a VM (`shoal run --api-socket PATH`).
    Restore {
        #[arg(value_name = "DIR")]
        source: PathBuf,
    },
    /// Live-migrate the VM to URL (unix:PATH or tcp:HOST:PORT), showing progress.
    SendMigration {
        #[arg(value_name = "URL")]
        destination_url: String,
        /// Same host: hand the RAM over instead of copying it (unix: only).
        #[arg(long)]
        local: bool,
        /// Longest acceptable pause of the guest.
        #[arg(long, default_value_t = 100, value_name = "MS")]
        downtime_ms: u64,
        /// Give up (the VM runs on here) after this long.
        #[arg(long, default_value_t = 600, value_name = "S")]
        timeout_s: u64,
        /// Send at most this many bytes per second (K, M, G: 1024-based; 0: no limit).
        #[arg(long, default_value = "0", value_name = "BYTES", value_parser = parse_bandwidth)]
        max_bandwidth: u64,
        /// Return once the migration started, without progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Receive a VM on URL into a VMM started without a VM (answers once listening; `info` follows it).
    ReceiveMigration {
        #[arg(value_name = "URL")]
        receiver_url: String,
    },
    /// Show the progress of the current or last migration.
    MigrationStatus,
    /// Cancel the running migration (the VM runs on here).
    MigrationCancel,
}

/// `--max-bandwidth`: bytes per second, with an optional K, M or G
/// (1024-based) suffix.
fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("unknown unit {unit:?} (use K, M or G)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes per second"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Runs one `shoal api` command.
pub fn run(args: ApiArgs) -> ExitCode {
    match execute(&args.socket, args.command) {
        Ok(code) => code,
        Err(e) => {
            crate::report(&e);
            ExitCode::FAILURE
        }
    }
}

fn execute(socket: &Path, command: ApiCommand) -> Result<ExitCode, ClientError> {
    let none = None::<&()>;
    let response = match command {
        ApiCommand::Info => client::call(socket, "GET", "vm.info", none)?,
        ApiCommand::Pause => client::call(socket, "PUT", "vm.pause", none)?,
        ApiCommand::Resume { force: false } => client::call(socket, "PUT", "vm.resume", none)?,
        ApiCommand::Resume { force: true } => {
            let body = ResumeBody { force: true };
            client::call(socket, "PUT", "vm.resume", Some(&body))?
        }
        ApiCommand::Shutdown => client::call(socket, "PUT", "vm.shutdown", none)?,
        ApiCommand::Snapshot { destination } => {
            let body = SnapshotBody { destination };
            client::call(socket, "PUT", "vm.snapshot", Some(&body))?
        }
        ApiCommand::Restore { source } => {
            client::call(socket, "PUT", "vm.restore", Some(&RestoreBody { source }))?
        }
        ApiCommand::ReceiveMigration { receiver_url } => {
            let body = ReceiveOptions { receiver_url };
            client::call(socket, "PUT", "vm.receive-migration", Some(&body))?
        }
        ApiCommand::MigrationStatus => {
            let r = client::call(socket, "GET", "vm.migration-status", none)?;
            if r.is_success() {
                let s: MigrationStatus = r.parse()?;
                if is_incoming(s.state) {
                    println!("{}", incoming_line(&s));
                    if let Some(report) = &s.report {
                        print_incoming_report(report);
                    }
                } else {
                    println!("{}", status_line(&s));
                    if let Some(report) = &s.report {
                        print_report(report);
                    }
                }
                if let Some(e) = &s.error {
                    println!("error: {e}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            r
        }
        ApiCommand::MigrationCancel => client::call(socket, "PUT", "vm.migration-cancel", none)?,
        ApiCommand::SendMigration {
            destination_url,
            local,
            downtime_ms,
            timeout_s,
            max_bandwidth,
            no_wait,
        } => {
            let opts = SendOptions {
                destination_url,
                local,
                downtime_ms,
                timeout_s,
                max_bandwidth,
            };
            let r = client::call(socket, "PUT", "vm.send-migration", Some(&opts))?;
            if !r.is_success() || no_wait {
                r
            } else {
                return follow_migration(socket);
            }
        }
    };
    Ok(finish(&response))
}

/// Prints an answer; failure when it is an error.
fn finish(r: &Response) -> ExitCode {
    if r.is_success() {
        let body = r.pretty();
        if !body.is_empty() {
            println!("{body}");
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("shoal: error: {} (HTTP {})", r.error_message(), r.status);
        ExitCode::FAILURE
    }
}

/// Polls the migration status, drawing a progress line, until it ends.
fn follow_migration(socket: &Path) -> Result<ExitCode, ClientError> {
    let mut stderr = std::io::stderr();
    let mut last: Option<MigrationStatus> = None;
    loop {
        let status = match client::call(socket, "GET", "vm.migration-status", None::<&()>) {
            Ok(r) if r.is_success() => r.parse::<MigrationStatus>()?,
            Ok(r) => {
                eprintln!();
                return Ok(finish(&r));
            }
            Err(ClientError::Connect(..)) if last.is_some() => {
                // A source VMM exits once the destination committed; it may
                // be gone before a poll saw "completed".
                eprintln!();
                println!(
                    "the source VMM exited: the migration completed and the VM runs at the destination"
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => {
                eprintln!();
                return Err(e);
            }
        };
        let _ = write!(stderr, "\r\x1b[2K{}", status_line(&status));
        let _ = stderr.flush();
        match status.state {
            MigrationState::Completed => {
                eprintln!();
                println!("migration completed: the VM runs at the destination");
                if let Some(r) = &status.report {
                    print_report(r);
                }
                return Ok(ExitCode::SUCCESS);
            }
            MigrationState::Failed | MigrationState::Cancelled => {
                eprintln!();
                let what = if status.state == MigrationState::Cancelled {
                    "cancelled"
                } else {
                    "failed"
                };
                eprintln!(
                    "shoal: error: migration {what}: {}; the VM runs on here",
                    status.error.as_deref().unwrap_or("no reason given")
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        last = Some(status);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `1.5 GiB` style sizes.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn state_name(s: MigrationState) -> &'static str {
    match s {
        MigrationState::None => "no migration",
        MigrationState::Connecting => "connecting",
        MigrationState::PreCopy => "pre-copy",
        MigrationState::StopAndCopy => "stop-and-copy",
        MigrationState::Committing => "committing",
        MigrationState::Completed => "completed",
        MigrationState::Failed => "failed",
        MigrationState::Cancelled => "cancelled",
        MigrationState::Listening => "listening",
        MigrationState::Receiving => "receiving",
        MigrationState::Received => "received",
        MigrationState::Unconfirmed => "unconfirmed",
    }
}

/// One line: bar, bytes sent, rate, dirty rate, iteration, expected downtime.
fn status_line(s: &MigrationStatus) -> String {
    const WIDTH: u64 = 20;
    let done = if s.ram_size == 0 {
        0
    } else if s.iteration == 0 && s.state == MigrationState::PreCopy {
        (s.bytes_sent.min(s.ram_size) * WIDTH) / s.ram_size
    } else if s.state.is_active() {
        WIDTH - (s.remaining_bytes.min(s.ram_size) * WIDTH) / s.ram_size
    } else {
        WIDTH
    };
    let bar: String = (0..WIDTH)
        .map(|i| if i < done { '#' } else { '.' })
        .collect();
    let mut line = format!(
        "[{bar}] {:<13} {} sent  {}/s  dirty {}/s  iter {}  downtime ~{} ms",
        state_name(s.state),
        human(s.bytes_sent),
        human(s.rate_bps),
        human(s.dirty_rate_bps),
        s.iteration,
        s.expected_downtime_ms,
    );
    if s.throttle_percent > 0 {
        line.push_str(&format!("  throttle {}%", s.throttle_percent));
    }
    line
}

/// A state of the receiving side.
fn is_incoming(s: MigrationState) -> bool {
    matches!(
        s,
        MigrationState::Listening
            | MigrationState::Receiving
            | MigrationState::Received
            | MigrationState::Unconfirmed
    )
}

/// The receiving side's line: state, bytes received of the RAM size, passes.
fn incoming_line(s: &MigrationStatus) -> String {
    format!(
        "incoming: {}  {} received (RAM {})  iteration {}  {} ms",
        state_name(s.state),
        human(s.bytes_received),
        human(s.ram_size),
        s.iteration,
        s.elapsed_ms
    )
}

fn print_incoming_report(r: &MigrationReport) {
    println!("  total time      {} ms", r.total_ms);
    println!("  iterations      {}", r.iterations);
    if r.local {
        println!("  RAM             handed over (local), not copied");
    }
    println!("  bytes received  {}", human(r.bytes_total));
    println!(
        "  pages           {} with data, {} zero (not sent)",
        r.pages_data, r.pages_zero
    );
}

fn print_report(r: &MigrationReport) {
    println!("  total time      {} ms", r.total_ms);
    println!(
        "  downtime        {}.{:03} ms (pause to go, after the destination's commit)",
        r.downtime_us / 1000,
        r.downtime_us % 1000
    );
    println!("  iterations      {}", r.iterations);
    if r.local {
        println!("  RAM             handed over (local), not copied");
    }
    println!("  bytes total     {}", human(r.bytes_total));
    println!("    pre-copy      {}", human(r.bytes_precopy));
    println!("    stop-and-copy {}", human(r.bytes_stop_and_copy));
    println!("    VM state      {}", human(r.bytes_state));
    println!(
        "  pages           {} with data, {} zero (not sent)",
        r.pages_data, r.pages_zero
    );
    if r.throttle_max > 0 {
        println!("  auto-converge   throttled up to {}%", r.throttle_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiArgs,
    }

    #[test]
    fn send_migration_parses_with_defaults() {
        let cli =
            Cli::try_parse_from(["x", "--socket", "/s", "send-migration", "tcp:h:1"]).unwrap();
        match cli.api.command {
            ApiCommand::SendMigration {
                destination_url,
                local,
                downtime_ms,
                ..
            } => {
                assert_eq!(destination_url, "tcp:h:1");
                assert!(!local);
                assert_eq!(downtime_ms, 100);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn max_bandwidth_takes_a_unit() {
        let parse = |v: &str| -> Result<u64, clap::Error> {
            let cli = Cli::try_parse_from([
                "x",
                "--socket",
                "/s",
                "send-migration",
                "unix:/m",
                "--max-bandwidth",
                v,
            ])?;
            match cli.api.command {
                ApiCommand::SendMigration { max_bandwidth, .. } => Ok(max_bandwidth),
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(parse("1000").unwrap(), 1000);
        assert_eq!(parse("16M").unwrap(), 16 << 20);
        assert_eq!(parse("2g").unwrap(), 2 << 30);
        assert!(parse("12X").is_err());
        assert!(parse("M").is_err());
        assert!(parse("99999999999G").is_err());
    }

    #[test]
    fn resume_takes_force() {
        let force = |args: &[&str]| {
            let cli = Cli::try_parse_from(["x", "--socket", "/s", "resume"].iter().chain(args));
            match cli.unwrap().api.command {
                ApiCommand::Resume { force } => force,
                other => panic!("parsed as {other:?}"),
            }
        };
        assert!(!force(&[]));
        assert!(force(&["--force"]));
    }

    #[test]
    fn the_receiving_side_has_its_own_line() {
        let s = MigrationStatus {
            state: MigrationState::Receiving,
            iteration: 1,
            ram_size: 1 << 30,
            bytes_sent: 0,
            bytes_received: 3 << 20,
            rate_bps: 0,
            dirty_rate_bps: 0,
            remaining_bytes: 0,
            expected_downtime_ms: 0,
            throttle_percent: 0,
            elapsed_ms: 250,
            error: None,
            report: None,
        };
        assert!(is_incoming(s.state));
        assert!(!is_incoming(MigrationState::PreCopy));
        assert_eq!(
            incoming_line(&s),
            "incoming: receiving  3.0 MiB received (RAM 1.0 GiB)  iteration 1  250 ms"
        );
    }

    #[test]
    fn socket_is_required() {
        assert!(Cli::try_parse_from(["x", "info"]).is_err());
    }

    #[test]
    fn human_sizes_pick_the_unit() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn progress_line_shows_the_counters() {
        let s = MigrationStatus {
            state: MigrationState::PreCopy,
            iteration: 0,
            ram_size: 1 << 30,
            bytes_sent: 1 << 29,
            bytes_received: 0,
            rate_bps: 2 << 30,
            dirty_rate_bps: 10 << 20,
            remaining_bytes: 1 << 29,
            expected_downtime_ms: 7,
            throttle_percent: 20,
            elapsed_ms: 250,
            error: None,
            report: None,
        };
        let line = status_line(&s);
        assert!(
            line.starts_with("[##########..........] pre-copy"),
            "{line}"
        );
        assert!(line.contains("512.0 MiB sent"));
        assert!(line.contains("2.0 GiB/s"));
        assert!(line.contains("dirty 10.0 MiB/s"));
        assert!(line.contains("downtime ~7 ms"));
        assert!(line.contains("throttle 20%"));
    }
}
