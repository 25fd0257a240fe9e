// SPDX-License-Identifier: Apache-2.0
//! What a VM is made of, as the user asked for it, and its validation.

use std::path::PathBuf;

/// Smallest guest memory Shoal accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory Shoal accepts (the 64-bit PCI window sits above RAM).
pub const MAX_MEMORY: u64 = 1 << 40;
/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// Errors in a VM configuration. Each names the bad value and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "cannot parse size {0:?}: use a number with an optional K, M, G or T suffix, e.g. 512M"
    )]
    BadSize(String),
    #[error("--memory {0} is too small: a guest needs at least {min} MiB", min = MIN_MEMORY >> 20)]
    MemoryTooSmall(String),
    #[error("--memory {0} is too large: at most {max} GiB is supported", max = MAX_MEMORY >> 30)]
    MemoryTooLarge(String),
    #[error("--memory {0} is not a multiple of 4 KiB")]
    MemoryUnaligned(String),
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoCpus,
    #[error("--cpus {0}: this host's KVM allows at most {1} vCPUs per VM")]
    TooManyCpus(u32, u32),
    #[error("--cpus {0}: Shoal supports at most 254 vCPUs (one xAPIC ID each)")]
    CpusAboveApicLimit(u32),
    #[error("bad --serial {0:?}: use stdout, off or file=PATH")]
    BadSerial(String),
    #[error("bad --shmem-group {0:?}: use socket=PATH[,vectors=N]")]
    BadGroup(String),
    #[error("bad --shmem {0:?}: use path=FILE,size=SIZE (a power of two of at least 4K)")]
    BadPlainShmem(String),
    #[error("{0} describes a VM to boot: give --kernel too (without --kernel, --api-socket starts a VMM that waits for vm.restore or vm.receive-migration)")]
    NeedsKernel(String),
}

/// `--shmem-group socket=PATH[,vectors=N]`: join a group server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupConfig {
    /// The group server's socket.
    pub socket: PathBuf,
    /// Doorbell vectors of the device (default: as many as the server has).
    pub vectors: Option<u16>,
}

/// `--shmem path=FILE,size=SIZE`: an ivshmem-plain region, no server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlainShmemConfig {
    /// Backing file (created if missing; grown to `size` if shorter).
    pub path: PathBuf,
    /// Region size.
    pub size: u64,
}

/// Splits `k=v,k=v` into pairs; `None` on an item without `=` or a repeat.
fn key_values(s: &str) -> Option<Vec<(&str, &str)>> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for item in s.split(',') {
        let (k, v) = item.split_once('=')?;
        if v.is_empty() || out.iter().any(|(seen, _)| *seen == k) {
            return None;
        }
        out.push((k, v));
    }
    Some(out)
}

impl std::str::FromStr for GroupConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadGroup(s.to_string());
        let mut socket = None;
        let mut vectors = None;
        for (k, v) in key_values(s).ok_or_else(bad)? {
            match k {
                "socket" => socket = Some(PathBuf::from(v)),
                "vectors" => vectors = Some(v.parse::<u16>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        Ok(GroupConfig {
            socket: socket.ok_or_else(bad)?,
            vectors,
        })
    }
}

impl std::str::FromStr for PlainShmemConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadPlainShmem(s.to_string());
        let mut path = None;
        let mut size = None;
        for (k, v) in key_values(s).ok_or_else(bad)? {
            match k {
                "path" => path = Some(PathBuf::from(v)),
                "size" => size = Some(parse_size(v).map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        let size = size.ok_or_else(bad)?;
        if !size.is_power_of_two() || size < 4096 {
            return Err(bad());
        }
        Ok(PlainShmemConfig {
            path: path.ok_or_else(bad)?,
            size,
        })
    }
}

/// Where the guest's COM1 output goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
    Off,
}

impl std::str::FromStr for SerialOutput {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "off" => Ok(SerialOutput::Off),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
                _ => Err(ConfigError::BadSerial(s.to_string())),
            },
        }
    }
}

/// A whole VM as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory: u64,
    pub serial: SerialOutput,
    /// Reboot when the guest resets (otherwise exit).
    pub reboot: bool,
    /// Shared-memory groups the VM joins (one device each).
    pub groups: Vec<GroupConfig>,
    /// Plain shared-memory regions (one device each).
    pub plain_shmem: Vec<PlainShmemConfig>,
}

/// Parses a size such as `128M`, `4G` or `65536` into bytes (one parser for
/// all of Shoal: `shmem_group::size`).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    shmem_group::size::parse_size(s.trim()).map_err(|_| ConfigError::BadSize(s.to_string()))
}

/// Parses and checks `--memory`.
pub fn parse_memory(s: &str) -> Result<u64, ConfigError> {
    let bytes = parse_size(s)?;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(s.to_string()));
    }
    if bytes > MAX_MEMORY {
        return Err(ConfigError::MemoryTooLarge(s.to_string()));
    }
    if bytes % 4096 != 0 {
        return Err(ConfigError::MemoryUnaligned(s.to_string()));
    }
    Ok(bytes)
}

/// Checks a vCPU count against what the host's KVM allows.
pub fn check_cpus(cpus: u32, max_vcpus: u32) -> Result<(), ConfigError> {
    if cpus == 0 {
        return Err(ConfigError::NoCpus);
    }
    if cpus > 254 {
        return Err(ConfigError::CpusAboveApicLimit(cpus));
    }
    if cpus > max_vcpus {
        return Err(ConfigError::TooManyCpus(cpus, max_vcpus));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_garbage_is_named() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size(" 4G "), Ok(4 << 30));
        assert_eq!(parse_size("lots"), Err(ConfigError::BadSize("lots".into())));
        assert_eq!(parse_size("-1G"), Err(ConfigError::BadSize("-1G".into())));
    }

    #[test]
    fn memory_limits_are_enforced() {
        assert_eq!(
            parse_memory("1M"),
            Err(ConfigError::MemoryTooSmall("1M".into()))
        );
        assert_eq!(
            parse_memory("2T"),
            Err(ConfigError::MemoryTooLarge("2T".into()))
        );
        assert_eq!(
            parse_memory("16777217"),
            Err(ConfigError::MemoryUnaligned("16777217".into()))
        );
        assert_eq!(parse_memory("128M"), Ok(128 << 20));
    }

    #[test]
    fn cpu_counts_are_checked() {
        assert_eq!(check_cpus(0, 8), Err(ConfigError::NoCpus));
        assert_eq!(check_cpus(9, 8), Err(ConfigError::TooManyCpus(9, 8)));
        assert_eq!(
            check_cpus(300, 1024),
            Err(ConfigError::CpusAboveApicLimit(300))
        );
        assert_eq!(check_cpus(2, 8), Ok(()));
    }

    #[test]
    fn group_options_parse() {
        assert_eq!(
            "socket=/run/g.sock,vectors=4".parse(),
            Ok(GroupConfig {
                socket: PathBuf::from("/run/g.sock"),
                vectors: Some(4)
            })
        );
        assert_eq!(
            "socket=/g".parse::<GroupConfig>().map(|g| g.vectors),
            Ok(None)
        );
        for bad in [
            "",
            "vectors=2",
            "socket=/g,vectors=x",
            "socket=/g,socket=/h",
            "socket=/g,x=1",
            "/g",
        ] {
            assert_eq!(
                bad.parse::<GroupConfig>(),
                Err(ConfigError::BadGroup(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn plain_shmem_options_parse() {
        assert_eq!(
            "path=/dev/shm/x,size=4M".parse(),
            Ok(PlainShmemConfig {
                path: PathBuf::from("/dev/shm/x"),
                size: 4 << 20
            })
        );
        for bad in [
            "path=/x",
            "size=4M",
            "path=/x,size=3M",
            "path=/x,size=1K",
            "path=/x,size=big",
        ] {
            assert!(bad.parse::<PlainShmemConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_options_parse() {
        assert_eq!("stdout".parse(), Ok(SerialOutput::Stdout));
        assert_eq!("off".parse(), Ok(SerialOutput::Off));
        assert_eq!(
            "file=/tmp/x".parse(),
            Ok(SerialOutput::File(PathBuf::from("/tmp/x")))
        );
        assert!("file=".parse::<SerialOutput>().is_err());
        assert!("tty".parse::<SerialOutput>().is_err());
    }
}
