// SPDX-License-Identifier: Apache-2.0
//! The `shoal` command: run a VM, serve a shared-memory group.

mod api;
mod group;
mod logger;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shoal: a KVM virtual machine monitor with shared memory across VMs.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a VM and run it until the guest powers off.
    Run(run::RunArgs),
    /// Talk to a running VM's control API.
    Api(api::ApiArgs),
    /// Serve a shared-memory group, or show its members.
    #[command(subcommand)]
    Group(group::GroupCommand),
}

/// Prints an error and its sources on one line.
pub fn report(err: &dyn std::error::Error) {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("shoal: error: {line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A group server's log is its membership record: show it by default.
    let level = match &cli.command {
        Command::Group(group::GroupCommand::Serve { .. }) => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    logger::init(level);
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Api(args) => api::run(args),
        Command::Group(cmd) => match group::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(e.as_ref());
                ExitCode::FAILURE
            }
        },
    }
}
