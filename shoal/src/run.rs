// SPDX-License-Identifier: Apache-2.0
//! `shoal run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vmm::config::{self, SerialOutput, VmConfig};

/// Options of `shoal run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel: a PVH ELF, an ELF vmlinux or a bzImage. Without --kernel,
    /// --restore or --incoming, the VMM starts with no VM and waits for
    /// `vm.restore` or `vm.receive-migration` on --api-socket.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "incoming", "api_socket"])]
    kernel: Option<PathBuf>,
    /// Start from the snapshot in DIR instead of booting (the snapshot's
    /// configuration is used; --serial may redirect its output).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initramfs", "cmdline", "cpus", "memory", "shmem_group", "shmem"])]
    restore: Option<PathBuf>,
    /// Receive a migrating VM at URL (unix:PATH or tcp:HOST:PORT) instead of
    /// booting; the sender's configuration is used, --serial may redirect.
    #[arg(long, value_name = "URL", conflicts_with_all = ["kernel", "restore", "initramfs", "cmdline", "cpus", "memory", "shmem_group", "shmem"])]
    incoming: Option<String>,
    /// Serve the control API (HTTP over a unix socket) at PATH.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Initial ramdisk loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Guest memory, e.g. 512M or 2G [default: 512M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
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

fn launch(args: RunArgs) -> Result<(vmm::Launch, vmm::RunOptions), config::ConfigError> {
    let mut options = vmm::RunOptions {
        api_socket: args.api_socket,
        serial: None,
    };
    if args.restore.is_some() || args.incoming.is_some() {
        // The saved configuration decides, unless --serial was given.
        if args.serial != "stdout" {
            options.serial = Some(args.serial.parse::<SerialOutput>()?);
        }
    }
    if let Some(dir) = args.restore {
        return Ok((vmm::Launch::Restore { dir }, options));
    }
    if let Some(url) = args.incoming {
        return Ok((vmm::Launch::Incoming { url }, options));
    }
    let Some(kernel) = args.kernel else {
        // clap let this through only with --api-socket: a VMM without a VM.
        let vm_options = [
            ("--initramfs", args.initramfs.is_some()),
            ("--cmdline", !args.cmdline.is_empty()),
            ("--cpus", args.cpus.is_some()),
            ("--memory", args.memory.is_some()),
            ("--shmem-group", !args.shmem_group.is_empty()),
            ("--shmem", !args.shmem.is_empty()),
            ("--no-reboot", args.no_reboot),
        ];
        if let Some((name, _)) = vm_options.iter().find(|(_, given)| *given) {
            return Err(config::ConfigError::NeedsKernel(name.to_string()));
        }
        if args.serial != "stdout" {
            options.serial = Some(args.serial.parse::<SerialOutput>()?);
        }
        return Ok((vmm::Launch::Api, options));
    };
    let config = VmConfig {
        memory: config::parse_memory(args.memory.as_deref().unwrap_or("512M"))?,
        serial: args.serial.parse::<SerialOutput>()?,
        kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        cpus: args.cpus.unwrap_or(1),
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
    };
    Ok((vmm::Launch::Boot(config), options))
}

/// Runs `shoal run`: 0 when the guest powers off.
pub fn run(args: RunArgs) -> ExitCode {
    let (launch, options) = match launch(args) {
        Ok(l) => l,
        Err(e) => {
            crate::report(&e);
            return ExitCode::from(2);
        }
    };
    match vmm::run(launch, options) {
        Ok(vmm::ExitReason::PowerOff) => ExitCode::SUCCESS,
        Ok(vmm::ExitReason::Reset) => {
            eprintln!("shoal: the guest reset the machine (--no-reboot)");
            ExitCode::SUCCESS
        }
        Ok(vmm::ExitReason::Shutdown) => ExitCode::SUCCESS,
        Ok(vmm::ExitReason::Migrated) => {
            eprintln!("shoal: the VM migrated and runs at the destination");
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
