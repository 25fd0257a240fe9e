// SPDX-License-Identifier: Apache-2.0
//! Snapshots on disk.
//!
//! A snapshot is a directory with two files:
//! - `state`: a versioned, checksummed header (see [`mod@format`]) and a JSON
//!   body holding a [`VmSnapshot`];
//! - `memory`: the raw guest RAM image, sparse (zero pages are holes).
//!
//! This module only reads and writes that format. Gathering the state from
//! the VM and putting it back is the VM's job (it fills in a [`VmSnapshot`]).

pub mod crc;
pub mod format;
pub mod memory;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use format::{HostInfo, FORMAT_VERSION};
pub use memory::ImageStats;

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the RAM image in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors of saving or loading a snapshot. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot create the snapshot directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a valid snapshot state file")]
    Format(PathBuf, #[source] format::FormatError),
    #[error("{0} holds a state that cannot be decoded")]
    Body(PathBuf, #[source] serde_json::Error),
    #[error("cannot encode the VM state")]
    Encode(#[source] serde_json::Error),
    #[error("{path} is {found} bytes but the snapshot's RAM is {expected} bytes")]
    MemorySize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("guest RAM is {found} bytes but the snapshot's RAM is {expected} bytes")]
    RamSize { found: u64, expected: u64 },
}

/// Everything about a VM except its RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The VM configuration, as the VMM serializes it.
    pub config: serde_json::Value,
    pub vcpus: Vec<hypervisor::VcpuState>,
    pub vm: hypervisor::VmState,
    /// `(device name, device state)`, in the order the VM restores them.
    pub devices: Vec<(String, serde_json::Value)>,
}

impl VmSnapshot {
    /// The encoded body (also what migration sends as the VM state).
    pub fn to_body(&self) -> Result<Vec<u8>, SnapshotError> {
        serde_json::to_vec(self).map_err(SnapshotError::Encode)
    }

    /// Decodes a body written by [`VmSnapshot::to_body`].
    pub fn from_body(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// What [`save`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveReport {
    pub state_bytes: u64,
    pub memory: ImageStats,
}

fn write_atomically(path: &Path, parts: &[&[u8]]) -> Result<(), SnapshotError> {
    let tmp = path.with_extension("tmp");
    let err = |e| SnapshotError::Write(path.to_path_buf(), e);
    let mut f = File::create(&tmp).map_err(err)?;
    for p in parts {
        f.write_all(p).map_err(err)?;
    }
    f.sync_data().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Saves a snapshot into `dir` (created if missing): `body` is the encoded
/// [`VmSnapshot`], `ram` the guest RAM memfd of `ram_size` bytes. The VM
/// must be paused.
pub fn save_body(
    dir: &Path,
    body: &[u8],
    ram: &File,
    ram_size: u64,
) -> Result<SaveReport, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|e| SnapshotError::CreateDir(dir.to_path_buf(), e))?;
    let mem_path = dir.join(MEMORY_FILE);
    let tmp = mem_path.with_extension("tmp");
    let err = |e| SnapshotError::Write(mem_path.clone(), e);
    let out = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(err)?;
    let stats = memory::write_image(ram, ram_size, &out).map_err(err)?;
    out.sync_data().map_err(err)?;
    std::fs::rename(&tmp, &mem_path).map_err(err)?;

    let header = format::encode_header(&HostInfo::current(), ram_size, body);
    write_atomically(&dir.join(STATE_FILE), &[&header, body])?;
    Ok(SaveReport {
        state_bytes: (header.len() + body.len()) as u64,
        memory: stats,
    })
}

/// Saves `snapshot` and the RAM in `ram` into `dir`.
pub fn save(
    dir: &Path,
    snapshot: &VmSnapshot,
    ram: &File,
    ram_size: u64,
) -> Result<SaveReport, SnapshotError> {
    save_body(dir, &snapshot.to_body()?, ram, ram_size)
}

/// A snapshot's state, checked, with the size of its RAM.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub snapshot: VmSnapshot,
    pub ram_size: u64,
}

/// Reads and checks the state of the snapshot in `dir`, and that its
/// memory file is there with the right size. Refuses a snapshot of another
/// format version, from an incompatible host, or corrupt or truncated.
pub fn load(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let bytes =
        std::fs::read(&state_path).map_err(|e| SnapshotError::Read(state_path.clone(), e))?;
    let (header, body) = format::decode_state(&bytes, &HostInfo::current())
        .map_err(|e| SnapshotError::Format(state_path.clone(), e))?;
    let snapshot = VmSnapshot::from_body(body).map_err(|e| SnapshotError::Body(state_path, e))?;
    let mem_path = dir.join(MEMORY_FILE);
    let found = std::fs::metadata(&mem_path)
        .map_err(|e| SnapshotError::Read(mem_path.clone(), e))?
        .len();
    if found != header.ram_size {
        return Err(SnapshotError::MemorySize {
            path: mem_path,
            found,
            expected: header.ram_size,
        });
    }
    Ok(LoadedSnapshot {
        snapshot,
        ram_size: header.ram_size,
    })
}

/// Copies the snapshot's RAM image into `ram` (a fresh, zeroed memfd of
/// `ram_size` bytes); returns the bytes copied.
pub fn restore_memory(dir: &Path, ram: &File, ram_size: u64) -> Result<u64, SnapshotError> {
    let mem_path = dir.join(MEMORY_FILE);
    let err = |e| SnapshotError::Read(mem_path.clone(), e);
    let image = File::open(&mem_path).map_err(err)?;
    let found = image.metadata().map_err(err)?.len();
    if found != ram_size {
        return Err(SnapshotError::RamSize {
            found: ram_size,
            expected: found,
        });
    }
    memory::read_image(&image, ram_size, ram).map_err(err)
}

/// Fuzz entry point: decodes `data` as a `state` file. Never panics.
pub fn fuzz_snapshot(data: &[u8]) {
    let host = HostInfo::current();
    if let Ok((_, body)) = format::decode_state(data, &host) {
        let _ = VmSnapshot::from_body(body);
    }
    // Also exercise the body decoder on raw input, past the checksums.
    let _ = VmSnapshot::from_body(data);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A VM state with recognisable values.
    pub(crate) fn sample_snapshot() -> VmSnapshot {
        let regs = hypervisor::x86_64::StandardRegisters {
            rip: 0x1234,
            ..Default::default()
        };
        let vcpu = hypervisor::VcpuState {
            cpuid: Vec::new(),
            mp_state: Default::default(),
            regs,
            sregs: Default::default(),
            fpu: Default::default(),
            xsave: None,
            xcrs: None,
            lapic: Default::default(),
            msrs: Vec::new(),
            events: Default::default(),
        };
        let vm = hypervisor::VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        };
        VmSnapshot {
            config: serde_json::json!({"cpus": 1, "memory": 1048576}),
            vcpus: vec![vcpu],
            vm,
            devices: vec![("serial".into(), serde_json::json!({"lcr": 3}))],
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_then_load_round_trips_state_and_memory() {
        let d = dir("roundtrip");
        let ram = crate::memory::create_memfd("t", 1 << 20).unwrap();
        ram.write_all_at(b"guest data", 8192).unwrap();
        let report = save(&d, &sample_snapshot(), &ram, 1 << 20).unwrap();
        assert_eq!(report.memory.data_bytes, 4096);
        let loaded = load(&d).unwrap();
        assert_eq!(loaded.ram_size, 1 << 20);
        assert_eq!(loaded.snapshot.vcpus[0].regs.rip, 0x1234);
        assert_eq!(loaded.snapshot.devices[0].0, "serial");
        let back = crate::memory::create_memfd("t2", 1 << 20).unwrap();
        restore_memory(&d, &back, 1 << 20).unwrap();
        let mut buf = [0u8; 10];
        back.read_exact_at(&mut buf, 8192).unwrap();
        assert_eq!(&buf, b"guest data");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[cfg(test)]
mod load_tests {
    use super::tests::sample_snapshot;
    use super::*;

    fn saved(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-snapl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let ram = crate::memory::create_memfd("t", 1 << 20).unwrap();
        save(&d, &sample_snapshot(), &ram, 1 << 20).unwrap();
        d
    }

    #[test]
    fn corrupt_state_is_refused_naming_the_file() {
        let d = saved("corrupt");
        let path = d.join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(&d).unwrap_err();
        assert!(matches!(
            err,
            SnapshotError::Format(_, format::FormatError::BodyChecksum)
        ));
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncated_memory_file_is_refused() {
        let d = saved("trunc");
        let mem = File::options()
            .write(true)
            .open(d.join(MEMORY_FILE))
            .unwrap();
        mem.set_len(4096).unwrap();
        let err = load(&d).unwrap_err();
        assert!(
            matches!(err, SnapshotError::MemorySize { found: 4096, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_state_file_names_it() {
        let d = saved("missing");
        std::fs::remove_file(d.join(STATE_FILE)).unwrap();
        let err = load(&d).unwrap_err();
        assert!(err.to_string().contains("state"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn restore_into_ram_of_another_size_is_refused() {
        let d = saved("size");
        let ram = crate::memory::create_memfd("t", 2 << 20).unwrap();
        assert!(matches!(
            restore_memory(&d, &ram, 2 << 20),
            Err(SnapshotError::RamSize { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fuzz_entry_survives_garbage_and_valid_prefixes() {
        let d = saved("fuzz");
        let bytes = std::fs::read(d.join(STATE_FILE)).unwrap();
        for cut in [0, 7, 8, 63, 64, 65, bytes.len() - 1, bytes.len()] {
            fuzz_snapshot(&bytes[..cut]);
        }
        fuzz_snapshot(b"\xff\x00garbage{");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
