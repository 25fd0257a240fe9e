// SPDX-License-Identifier: Apache-2.0
//! `shoal run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vmm::config::{self, SerialOutput, VmConfig};

/// Options of `shoal run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel: a PVH ELF, an ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// Where COM1 output goes: stdout, off or file=PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdout")]
    serial: String,
    /// Exit when the guest resets instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// Join a shared-memory group: socket=PATH[,vectors=N] (repeatable).
    #[arg(long = "shmem-group", value_name = "OPTIONS")]
    shmem_group: Vec<String>,
    /// A plain shared region without a server: path=FILE,size=SIZE (repeatable).
    #[arg(long = "shmem", value_name = "OPTIONS")]
    shmem: Vec<String>,
}

fn config(args: RunArgs) -> Result<VmConfig, config::ConfigError> {
    Ok(VmConfig {
        memory: config::parse_memory(&args.memory)?,
        serial: args.serial.parse::<SerialOutput>()?,
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        cpus: args.cpus,
        reboot: !args.no_reboot,
        groups: args
            .shmem_group
            .iter()
            .map(|g| g.parse())
            .collect::<Result<_, _>>()?,
        plain_shmem: args
            .shmem
            .iter()
            .map(|g| g.parse())
            .collect::<Result<_, _>>()?,
    })
}

/// Runs `shoal run`: 0 when the guest powers off.
pub fn run(args: RunArgs) -> ExitCode {
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => {
            crate::report(&e);
            return ExitCode::from(2);
        }
    };
    match vmm::run(config) {
        Ok(vmm::ExitReason::PowerOff) => ExitCode::SUCCESS,
        Ok(vmm::ExitReason::Reset) => {
            eprintln!("shoal: the guest reset the machine (--no-reboot)");
            ExitCode::SUCCESS
        }
        Ok(vmm::ExitReason::Signal(sig)) => {
            eprintln!("shoal: stopped by signal {sig}");
            ExitCode::from(128 + sig as u8)
        }
        Err(e) => {
            crate::report(&e);
            ExitCode::FAILURE
        }
    }
}
