// SPDX-License-Identifier: Apache-2.0
//! Inside a Linux guest: the ivshmem PCI device (1af4:1110) through sysfs.
//!
//! - BAR2 (`resource2`) is the region, mapped `MAP_SHARED`;
//! - BAR0 (`resource0`) holds the registers: IntrMask 0x0, IntrStatus 0x4,
//!   IVPosition 0x8 (our peer id), Doorbell 0xC (write `peer << 16 | vector`);
//! - interrupts reach userspace through a character device whose `read`
//!   blocks until the next interrupt: `$SHOAL_IRQ_DEV` if set (our guest
//!   driver's node), else the device's uio node (`uio_pci_generic`, INTx,
//!   Shoal's own device). `uio_pci_generic` masks INTx (PCI command bit 10,
//!   interrupt disable) in its handler and has no way to unmask it through
//!   the uio node, so after each interrupt the SDK reads IntrStatus (which
//!   clears the device's level) and clears the bit through the device's
//!   `config` file.
//!
//! One thread per process blocks on that device and bumps a process-local
//! epoch word that waiting threads sleep on (a private futex), so every
//! doorbell wakes every local sleeper and no ring is lost between a
//! waiter's last check and its sleep. Without an interrupt source the SDK
//! falls back to spinning with backoff ([`SleepKind::Poll`]) and says so
//! (log and stderr).

use super::{SleepKind, Transport, TransportError};
use crate::sync::futex;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// PCI vendor id of ivshmem (Red Hat / virtio).
pub const VENDOR: u16 = 0x1af4;
/// PCI device id of ivshmem.
pub const DEVICE: u16 = 0x1110;
/// Environment variable selecting a device by address (`0000:00:04.0`).
pub const PCI_ENV: &str = "SHOAL_PCI";
/// Environment variable naming the interrupt device (our guest driver).
pub const IRQ_ENV: &str = "SHOAL_IRQ_DEV";

const REG_INTR_MASK: usize = 0x0;
const REG_INTR_STATUS: usize = 0x4;
const REG_IV_POSITION: usize = 0x8;
/// PCI command register (config space) and its interrupt-disable bit.
const PCI_COMMAND: u64 = 0x4;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
const REG_DOORBELL: usize = 0xc;
const REGS_LEN: usize = 0x10;

/// A `MAP_SHARED` mapping of a sysfs resource file.
#[derive(Debug)]
struct FileMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is device (or shared) memory touched only through
// bounds-checked volatile accesses; it stays mapped until the last owner
// drops it.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

impl FileMap {
    fn open(path: &Path, min_len: usize) -> Result<Self, TransportError> {
        let io_err = |what: &'static str| move |e: io::Error| TransportError::Io(what, e);
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| TransportError::Io("bad path", io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: cpath is NUL-terminated; open returns a new fd or -1.
        let raw = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io_err("cannot open PCI resource")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = fs::metadata(path)
            .map_err(io_err("cannot stat PCI resource"))?
            .len() as usize;
        if len < min_len {
            return Err(TransportError::Size(len as u64));
        }
        // SAFETY: maps len bytes of the file at a kernel-chosen address; the
        // result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err("cannot map PCI resource")(io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr as *mut u8,
            len,
        })
    }

    fn read32(&self, off: usize) -> u32 {
        if off + 4 > self.len {
            return u32::MAX;
        }
        // SAFETY: in bounds (checked), 4-aligned register offsets of a page
        // aligned mapping; volatile because it is device memory.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u32) }
    }

    fn write32(&self, off: usize, v: u32) {
        if off + 4 <= self.len {
            // SAFETY: as in read32.
            unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u32, v) }
        }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping made in FileMap::open.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Addresses of ivshmem devices under `sysfs` (normally `/sys`).
pub fn find_devices(sysfs: &Path) -> Vec<PathBuf> {
    let hex = |p: PathBuf| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
    };
    let Ok(dir) = fs::read_dir(sysfs.join("bus/pci/devices")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| hex(p.join("vendor")) == Some(VENDOR) && hex(p.join("device")) == Some(DEVICE))
        .collect();
    found.sort();
    found
}

/// Where interrupts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqSource {
    /// Our guest driver's node (or `$SHOAL_IRQ_DEV`): 8-byte reads.
    Driver(PathBuf),
    /// A uio node (`uio_pci_generic`): 4-byte reads; INTx is unmasked
    /// through the device's config space after each one.
    Uio(PathBuf),
}

/// The interrupt source for `dev`: `$SHOAL_IRQ_DEV`, else our driver's
/// misc node (`<dev>/misc/shoal_ivshmemN`), else the uio node.
pub fn irq_source(dev: &Path) -> Option<IrqSource> {
    if let Some(path) = std::env::var_os(IRQ_ENV) {
        return Some(IrqSource::Driver(PathBuf::from(path)));
    }
    let first = |sub: &str, prefix: &str| {
        let mut names: Vec<_> = fs::read_dir(dev.join(sub))
            .ok()?
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with(prefix))
            .collect();
        names.sort();
        names.into_iter().next().map(|n| Path::new("/dev").join(n))
    };
    first("misc", "shoal_ivshmem")
        .map(IrqSource::Driver)
        .or_else(|| first("uio", "uio").map(IrqSource::Uio))
}

#[derive(Debug)]
struct Epoch(AtomicU32, AtomicBool);

impl Epoch {
    fn new() -> Self {
        Epoch(AtomicU32::new(0), AtomicBool::new(false))
    }

    /// The interrupt thread ended: wake every sleeper, and make later
    /// sleeps fail so that waiters poll instead (see `Pci::sleep`).
    fn fail(&self) {
        self.1.store(true, Ordering::Release);
        self.0.fetch_add(1, Ordering::AcqRel);
        futex::wake(&self.0, u32::MAX);
    }

    fn failed(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }
}

/// Clears the interrupt-disable bit in the PCI command register through
/// `config` (sysfs), letting INTx through again.
fn unmask_intx(config: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut word = [0u8; 2];
    config.read_exact_at(&mut word, PCI_COMMAND)?;
    let command = u16::from_le_bytes(word);
    if command & PCI_COMMAND_INTX_DISABLE != 0 {
        let cleared = command & !PCI_COMMAND_INTX_DISABLE;
        config.write_all_at(&cleared.to_le_bytes(), PCI_COMMAND)?;
    }
    Ok(())
}

/// What the interrupt thread does after each interrupt.
enum Ack {
    /// Our driver: nothing (it acknowledges in the kernel).
    None,
    /// uio_pci_generic: read IntrStatus, then unmask INTx.
    Uio {
        regs: Arc<FileMap>,
        config: fs::File,
    },
}

impl Ack {
    fn acknowledge(&self) -> io::Result<()> {
        match self {
            Ack::None => Ok(()),
            Ack::Uio { regs, config } => {
                // Reading IntrStatus clears it, and with it the INTx level;
                // a doorbell arriving after this read raises it again and
                // fires once INTx is unmasked, so none is lost.
                let _ = regs.read32(REG_INTR_STATUS);
                unmask_intx(config)
            }
        }
    }
}

fn spawn_dispatcher(
    source: &IrqSource,
    dev: &Path,
    regs: &Arc<FileMap>,
    epoch: Arc<Epoch>,
) -> Result<(), TransportError> {
    let (path, uio) = match source {
        IrqSource::Driver(p) => (p, false),
        IrqSource::Uio(p) => (p, true),
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| TransportError::Io("cannot open the interrupt device", e))?;
    let ack = if uio {
        let config = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("config"))
            .map_err(|e| TransportError::Io("cannot open the device's PCI config space", e))?;
        let ack = Ack::Uio {
            regs: Arc::clone(regs),
            config,
        };
        // A process before us may have left INTx masked after its last
        // interrupt: start unmasked, with no stale status.
        ack.acknowledge()
            .map_err(|e| TransportError::Io("cannot unmask INTx", e))?;
        ack
    } else {
        Ack::None
    };
    let read_len = if uio { 4 } else { 8 };
    std::thread::Builder::new()
        .name("shoal-irq".into())
        .spawn(move || {
            let fd = file.as_raw_fd();
            loop {
                let mut buf = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a valid 8-byte buffer
                // from an fd the closure owns (through `file`).
                let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, read_len) };
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if n <= 0 {
                    log::error!("shoal: interrupt device failed; waiters poll from now on");
                    epoch.fail();
                    return;
                }
                epoch.0.fetch_add(1, Ordering::AcqRel);
                futex::wake(&epoch.0, u32::MAX);
                if let Err(e) = ack.acknowledge() {
                    log::error!("shoal: cannot unmask INTx ({e}); waiters poll from now on");
                    epoch.fail();
                    return;
                }
            }
        })
        .map_err(|e| TransportError::Io("cannot start the interrupt thread", e))?;
    Ok(())
}

/// Tells the user (log and stderr: the fallback costs CPU time) that
/// waiters will poll.
fn say_polling(why: &str) {
    log::warn!("shoal: {why}: spinning with backoff");
    eprintln!(
        "shoal: {why}: waiting by spinning with backoff \
         (load shoal_ivshmem.ko or uio_pci_generic for interrupts)"
    );
}

/// The PCI transport.
#[derive(Debug)]
pub struct Pci {
    region: FileMap,
    regs: Arc<FileMap>,
    id: u16,
    kind: SleepKind,
    epoch: Arc<Epoch>,
}

// SAFETY: the mappings are device/shared memory accessed only through
// volatile register accesses and atomics.
unsafe impl Send for Pci {}
// SAFETY: as above.
unsafe impl Sync for Pci {}

impl Pci {
    /// Opens the device named by `$SHOAL_PCI`, else the first one found.
    pub fn open_first() -> Result<Self, TransportError> {
        Self::open_at(Path::new("/sys"), std::env::var(PCI_ENV).ok().as_deref())
    }

    /// Opens a device under a sysfs root, finding its interrupt source.
    pub fn open_at(sysfs: &Path, address: Option<&str>) -> Result<Self, TransportError> {
        Self::open_with(sysfs, address, None)
    }

    /// Opens a device with an explicit interrupt source (`None`: look it up;
    /// tests use a fake sysfs and a FIFO as the driver).
    pub fn open_with(
        sysfs: &Path,
        address: Option<&str>,
        irq: Option<IrqSource>,
    ) -> Result<Self, TransportError> {
        let dev = match address {
            Some(a) => sysfs.join("bus/pci/devices").join(a),
            None => find_devices(sysfs)
                .into_iter()
                .next()
                .ok_or(TransportError::NoDevice)?,
        };
        // Memory decoding may be off (QEMU microvm); turning it on is harmless.
        if fs::read_to_string(dev.join("enable")).is_ok_and(|s| s.trim() == "0") {
            let _ = fs::write(dev.join("enable"), "1");
        }
        let regs = Arc::new(FileMap::open(&dev.join("resource0"), REGS_LEN)?);
        let region = FileMap::open(&dev.join("resource2"), 8192)?;
        if region.len % 8 != 0 {
            return Err(TransportError::Size(region.len as u64));
        }
        let position = regs.read32(REG_IV_POSITION);
        let id = u16::try_from(position).map_err(|_| TransportError::NoDevice)?;
        let epoch = Arc::new(Epoch::new());
        let kind = match irq.or_else(|| irq_source(&dev)) {
            Some(source) => match spawn_dispatcher(&source, &dev, &regs, Arc::clone(&epoch)) {
                Ok(()) => {
                    regs.write32(REG_INTR_MASK, u32::MAX);
                    SleepKind::Doorbell
                }
                Err(e) => {
                    say_polling(&e.to_string());
                    SleepKind::Poll
                }
            },
            None => {
                say_polling(&format!("no interrupt driver for {}", dev.display()));
                SleepKind::Poll
            }
        };
        Ok(Self {
            region,
            regs,
            id,
            kind,
            epoch,
        })
    }
}

// SAFETY: `base`/`len` are the BAR2 mapping (`region`, page aligned), owned by
// this transport and unmapped only when it drops.
unsafe impl Transport for Pci {
    fn base(&self) -> *mut u8 {
        self.region.ptr
    }

    fn len(&self) -> usize {
        self.region.len
    }

    fn id(&self) -> u16 {
        self.id
    }

    fn sleep_kind(&self) -> SleepKind {
        self.kind
    }

    fn ring(&self, peer: u16) -> Result<(), TransportError> {
        self.regs.write32(REG_DOORBELL, u32::from(peer) << 16);
        Ok(())
    }

    fn sleep_token(&self) -> u32 {
        self.epoch.0.load(Ordering::Acquire)
    }

    fn sleep(&self, token: u32, timeout: Option<Duration>) -> Result<(), TransportError> {
        match self.kind {
            SleepKind::Doorbell if self.epoch.failed() => {
                // Without interrupts a sleep would never end: the error
                // makes waiters poll (sync::wait).
                return Err(TransportError::Io(
                    "the interrupt thread ended",
                    io::ErrorKind::BrokenPipe.into(),
                ));
            }
            SleepKind::Doorbell => {
                futex::wait(&self.epoch.0, token, timeout)
                    .map_err(|e| TransportError::Io("futex", e))?;
            }
            _ => std::thread::sleep(
                timeout
                    .unwrap_or(Duration::from_millis(1))
                    .min(Duration::from_millis(1)),
            ),
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "pci"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::Shoal;
    use shmem_group::layout::{LayoutParams, PeerState, Region};

    /// A fake sysfs with one ivshmem device whose BARs are plain files.
    fn fake_sysfs(tag: &str, id: u32) -> PathBuf {
        let root = std::env::temp_dir().join(format!("shoal-pci-{}-{tag}", std::process::id()));
        let dev = root.join("bus/pci/devices/0000:00:04.0");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
        fs::write(dev.join("device"), "0x1110\n").unwrap();
        fs::write(dev.join("enable"), "1\n").unwrap();
        let mut regs = vec![0u8; 4096];
        regs[8..12].copy_from_slice(&id.to_le_bytes());
        fs::write(dev.join("resource0"), regs).unwrap();
        fs::write(dev.join("resource2"), vec![0u8; 1 << 20]).unwrap();
        let other = root.join("bus/pci/devices/0000:00:03.0");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("vendor"), "0x8086\n").unwrap();
        fs::write(other.join("device"), "0x1110\n").unwrap();
        // The server's header, as a group server would have written it.
        let map = FileMap::open(&dev.join("resource2"), 8192).unwrap();
        let params = LayoutParams {
            region_size: 1 << 20,
            max_peers: 8,
            vectors: 1,
            name: "pci".into(),
        };
        // SAFETY: the mapping is 1 MiB, page aligned and alive here.
        let region = unsafe { Region::init(map.ptr, map.len, &params) }.unwrap();
        region.set_peer(id as u16, PeerState::Alive, 0, true);
        root
    }

    #[test]
    fn finds_only_ivshmem_devices() {
        let root = fake_sysfs("find", 1);
        let found = find_devices(&root);
        assert_eq!(found.len(), 1);
        assert!(found[0].ends_with("0000:00:04.0"));
        assert!(find_devices(Path::new("/nonexistent")).is_empty());
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn opens_region_reads_id_and_rings_through_bar0() {
        let root = fake_sysfs("open", 3);
        let pci = Pci::open_at(&root, None).unwrap();
        assert_eq!(pci.id(), 3);
        assert_eq!(pci.sleep_kind(), SleepKind::Poll, "no driver: polling");
        pci.ring(5).unwrap();
        assert_eq!(pci.regs.read32(REG_DOORBELL), 5 << 16);
        let shoal = Shoal::open_transport(Box::new(pci)).unwrap();
        let p = shoal.alloc(100).unwrap();
        assert!(shoal.check_heap(&[p.offset()]).unwrap().is_consistent());
        let _ = fs::remove_dir_all(root);
    }

    /// A fake sysfs whose device's interrupts come from a fifo standing in
    /// for the guest driver's event file: (root, device, the fifo's write end).
    fn with_driver_fifo(tag: &str) -> (PathBuf, Pci, fs::File) {
        let root = fake_sysfs(tag, 2);
        let fifo = root.join("irq-fifo");
        let cpath = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
        // Hold the write end open (the device opens the read end).
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || fs::OpenOptions::new().write(true).open(fifo).unwrap()
        });
        let pci = Pci::open_with(&root, None, Some(IrqSource::Driver(fifo))).unwrap();
        (root, pci, writer.join().unwrap())
    }

    #[test]
    fn driver_interrupts_wake_sleepers() {
        let (root, pci, mut writer) = with_driver_fifo("irq");
        assert_eq!(pci.sleep_kind(), SleepKind::Doorbell);
        let token = pci.sleep_token();
        let pci = Arc::new(pci);
        let sleeper = {
            let pci = Arc::clone(&pci);
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                pci.sleep(token, Some(Duration::from_secs(10))).unwrap();
                start.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        std::io::Write::write_all(&mut writer, &1u64.to_ne_bytes()).unwrap();
        let took = sleeper.join().unwrap();
        assert!(
            took < Duration::from_secs(5),
            "woken by the timeout, not the interrupt"
        );
        assert_ne!(pci.sleep_token(), token);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_failed_interrupt_device_wakes_sleepers_and_makes_later_sleeps_fail() {
        let (root, pci, writer) = with_driver_fifo("irq-gone");
        let pci = Arc::new(pci);
        let token = pci.sleep_token();
        let sleeper = {
            let pci = Arc::clone(&pci);
            // No timeout: only the interrupt thread can end this sleep.
            std::thread::spawn(move || pci.sleep(token, None))
        };
        // The device goes away: the interrupt thread reads end-of-file.
        drop(writer);
        // Woken (or, if it slept after the failure, refused): it returns.
        let _ = sleeper.join().unwrap();
        assert_ne!(pci.sleep_token(), token, "the sleeper was not woken");
        assert!(
            pci.sleep(pci.sleep_token(), None).is_err(),
            "a later sleep would block forever"
        );
        let _ = fs::remove_dir_all(root);
    }

    fn command(dev: &Path) -> u16 {
        let config = fs::read(dev.join("config")).unwrap();
        u16::from_le_bytes([config[4], config[5]])
    }

    fn set_command(dev: &Path, value: u16) {
        let mut config = fs::read(dev.join("config")).unwrap();
        config[4..6].copy_from_slice(&value.to_le_bytes());
        fs::write(dev.join("config"), config).unwrap();
    }

    #[test]
    fn uio_interrupts_wake_sleepers_and_unmask_intx_each_time() {
        let root = fake_sysfs("uio", 2);
        let dev = root.join("bus/pci/devices/0000:00:04.0");
        let mut config = vec![0u8; 256];
        // Memory + bus master on, INTx masked (left so by uio_pci_generic).
        config[4..6].copy_from_slice(&0x0406u16.to_le_bytes());
        fs::write(dev.join("config"), config).unwrap();
        let fifo = root.join("uio-fifo");
        let cpath = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || fs::OpenOptions::new().write(true).open(fifo).unwrap()
        });
        let pci = Pci::open_with(&root, None, Some(IrqSource::Uio(fifo))).unwrap();
        let mut writer = writer.join().unwrap();
        assert_eq!(pci.sleep_kind(), SleepKind::Doorbell);
        assert_eq!(command(&dev), 0x0006, "INTx unmasked at start");
        let pci = Arc::new(pci);
        for round in 0..3 {
            // The kernel's handler masks INTx and counts the interrupt.
            set_command(&dev, 0x0406);
            let token = pci.sleep_token();
            let sleeper = {
                let pci = Arc::clone(&pci);
                std::thread::spawn(move || pci.sleep(token, Some(Duration::from_secs(10))))
            };
            std::io::Write::write_all(&mut writer, &(round + 1u32).to_ne_bytes()).unwrap();
            sleeper.join().unwrap().unwrap();
            assert_ne!(
                pci.sleep_token(),
                token,
                "round {round}: woken by the timeout"
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while command(&dev) != 0x0006 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: INTx still masked"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn uio_without_a_config_file_falls_back_to_polling() {
        let root = fake_sysfs("uio-noconfig", 2);
        let fifo = root.join("uio-fifo");
        fs::write(&fifo, b"").unwrap();
        let pci = Pci::open_with(&root, None, Some(IrqSource::Uio(fifo))).unwrap();
        assert_eq!(pci.sleep_kind(), SleepKind::Poll);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn irq_source_prefers_the_driver_over_uio() {
        let root = fake_sysfs("src", 1);
        let dev = root.join("bus/pci/devices/0000:00:04.0");
        assert_eq!(irq_source(&dev), None);
        fs::create_dir_all(dev.join("uio/uio3")).unwrap();
        assert_eq!(irq_source(&dev), Some(IrqSource::Uio("/dev/uio3".into())));
        fs::create_dir_all(dev.join("misc/shoal_ivshmem0")).unwrap();
        assert_eq!(
            irq_source(&dev),
            Some(IrqSource::Driver("/dev/shoal_ivshmem0".into()))
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn missing_device_is_reported() {
        let root = std::env::temp_dir().join(format!("shoal-pci-{}-none", std::process::id()));
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        assert!(matches!(
            Pci::open_at(&root, None),
            Err(TransportError::NoDevice)
        ));
        let _ = fs::remove_dir_all(root);
    }
}
