// SPDX-License-Identifier: Apache-2.0
//! Shared-memory devices: the VM's side of a group (`--shmem-group`) or of a
//! plain shared file (`--shmem`).
//!
//! Each is an ivshmem-compatible PCI function (`devices::ivshmem`) whose
//! BAR2 is a KVM memory slot on the region's fd. In a group, doorbells stay
//! in the kernel both ways (`doorbells`, `vectors`); a thread per group
//! (`group_thread`) follows membership changes, delivers doorbells through
//! INTx while the guest has MSI-X off, and reconnects to a restarted server.

mod doorbells;
mod group_thread;
mod vectors;

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use devices::ivshmem::{Ivshmem, IvshmemConfig, REGION_BAR, REGS_BAR};
use devices::pci::{assign_bars, BarRelocator, BarReprogram, PciBdf, PciDevice};
use devices::ratelimit::LogLimiter;
use hypervisor::Vm;
use shmem_group::ext::StatusReport;
use shmem_group::memory::Mapping;
use shmem_group::{Peer, PeerOptions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{GroupConfig, PlainShmemConfig};
use crate::device_manager::DeviceManager;
use crate::interrupts::IrqRouting;
use doorbells::{DoorbellPath, Doorbells};
use group_thread::GroupThread;
use vectors::{IrqLine, Vectors};

/// Errors of shared-memory device set-up.
#[derive(Debug, thiserror::Error)]
pub enum ShmemError {
    #[error("cannot join the group at {0}")]
    Join(PathBuf, #[source] shmem_group::client::ClientError),
    #[error("the group at {0} gave peer id {2} instead of the migrated VM's {1}")]
    Takeover(PathBuf, u16, u16),
    #[error("--shmem-group {0}: vectors={1} but the group server has only {2}")]
    TooManyVectors(PathBuf, u16, u32),
    #[error("cannot open the shared file {0}")]
    File(PathBuf, #[source] std::io::Error),
    #[error("the shared file {0} is {1} bytes, larger than size={2}")]
    FileTooLarge(PathBuf, u64, u64),
    #[error("cannot map the shared region {0}")]
    Map(PathBuf, #[source] shmem_group::memory::MemoryError),
    #[error("cannot build the shared-memory device")]
    Device(#[source] devices::ivshmem::IvshmemError),
    #[error("no room for the shared-memory device's BARs")]
    Bars(#[source] devices::pci::AllocatorError),
    #[error("cannot put the shared-memory device on the PCI bus")]
    Pci(#[source] devices::pci::PciBusError),
    #[error("cannot map the shared region into the guest")]
    Slot(#[source] hypervisor::Error),
    #[error("cannot route the doorbell interrupts")]
    Routing(#[source] crate::interrupts::RoutingError),
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start the group thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot set up doorbells")]
    Doorbells(#[source] std::io::Error),
    #[error("cannot ask the group server at {0} who holds peer {1}")]
    Status(PathBuf, u16, #[source] shmem_group::client::ClientError),
}

/// How long asking a group server for its status may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Follows BAR moves of one device: BAR0 carries the doorbell ioeventfds,
/// BAR2 is a memory slot.
#[derive(Debug)]
struct Relocator {
    vm: Arc<dyn Vm>,
    slot: u32,
    host: u64,
    doorbells: Arc<Mutex<Doorbells>>,
    log: LogLimiter,
}

impl Relocator {
    fn map_region(&self, addr: u64, size: u64) -> hypervisor::Result<()> {
        // SAFETY: `host` is the device's own mapping of the region, which
        // lives as long as the device (and so as long as the VM).
        unsafe {
            self.vm
                .set_memory_region(self.slot, addr, size, self.host, false)
        }
    }
}

impl BarRelocator for Relocator {
    fn relocate(&self, r: &BarReprogram) {
        match r.bar {
            REGS_BAR => self
                .doorbells
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .move_bar0(r.new),
            REGION_BAR => {
                let _ = self.vm.remove_memory_region(self.slot, r.old);
                if r.new != 0 {
                    if let Err(e) = self.map_region(r.new, r.size) {
                        // A guest can move a BAR anywhere, also over RAM: the
                        // region is then unreachable until it moves again.
                        if self.log.allow() {
                            log::warn!("shmem: region left unmapped at {:#x}: {e}", r.new);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// One shared-memory PCI function of a VM.
#[derive(Debug)]
pub struct ShmemDevice {
    bdf: PciBdf,
    group: Option<GroupMembership>,
    /// Token and id that let a migrated VM take this membership over.
    identity: Option<GroupIdentity>,
    migrating: Arc<AtomicBool>,
    /// A migration destination's membership until the VM runs: a lost
    /// server connection (the source taking the membership back) is not
    /// re-established from here.
    standby: Arc<AtomicBool>,
    /// The group server connection (`None` for a plain file).
    server: Option<ServerConnection>,
    changed: Option<Arc<EventFd>>,
    dev: Arc<Mutex<Ivshmem>>,
    relocator: Arc<Relocator>,
    description: String,
    _mapping: Mapping,
    vectors: Option<Arc<Vectors>>,
    thread: Option<GroupThread>,
}

impl ShmemDevice {
    /// Where the device sits on the PCI bus.
    pub fn bdf(&self) -> PciBdf {
        self.bdf
    }

    /// `group <socket>` or `file <path>`, for logs and the API.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The membership's identity, for a migration destination.
    pub fn identity(&self) -> Option<&GroupIdentity> {
        self.identity.as_ref()
    }

    /// The VM starts to migrate: the state table shows `migrating`, and a
    /// dropped server connection (the destination taking over) is not
    /// re-established from here.
    pub fn begin_migration(&self) {
        self.set_migrating(true);
    }

    /// The migration failed: this VM is the member again (it reconnects
    /// with its token if the destination had taken the membership over).
    pub fn end_migration(&self) {
        self.set_migrating(false);
        self.release_doorbells();
    }

    /// The migrated VM runs here (the source's `go` came, or the operator
    /// resumed it): doorbells are delivered, and the membership is kept
    /// (taken back with the token if the connection was lost meanwhile).
    pub fn go_live(&self) {
        self.standby
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(c) = &self.changed {
            let _ = c.write(1);
        }
        self.release_doorbells();
    }

    fn set_migrating(&self, on: bool) {
        self.migrating
            .store(on, std::sync::atomic::Ordering::Release);
        if let Some(c) = &self.changed {
            let _ = c.write(1);
        }
    }

    /// Leaves incoming doorbells in the eventfds (see `Vectors::hold`).
    pub fn hold_doorbells(&self) {
        if let Some(v) = &self.vectors {
            v.hold();
        }
    }

    /// Delivers incoming doorbells again.
    pub fn release_doorbells(&self) {
        if let Some(v) = &self.vectors {
            v.release();
        }
    }

    /// The group this device is a member of (`None` for a plain file).
    pub fn group_info(&self) -> Option<GroupMembership> {
        self.group.clone()
    }

    /// The pid of another process whose connection holds this device's
    /// peer id, as the group server says; `None` when this VMM's own
    /// connection holds it, nobody does, or the device is a plain file.
    ///
    /// A server holds each id through one connection and closes the old
    /// one when another takes the id over: while this VMM's connection is
    /// up the id is ours (no need to ask). Once the server closed it (a
    /// migration source took its membership back, or the server went
    /// away), the server's status tells whether some connection holds the
    /// id now.
    pub fn peer_held_elsewhere(&self) -> Result<Option<u32>, ShmemError> {
        let (Some(server), Some(group)) = (&self.server, &self.group) else {
            return Ok(None);
        };
        if server.up.load(Ordering::Acquire) {
            return Ok(None);
        }
        let status = shmem_group::client::query_status(&server.socket, STATUS_TIMEOUT)
            .map_err(|e| ShmemError::Status(server.socket.clone(), group.peer_id, e))?;
        Ok(connected_holder(&status, group.peer_id))
    }

    /// Doorbell writes that reached the VMM rather than a KVM ioeventfd
    /// (0 while every ring goes to a known peer: the kernel fast path).
    pub fn doorbells_in_vmm(&self) -> u64 {
        self.relocator
            .doorbells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slow_rings()
    }

    /// Name of this device's state in a snapshot.
    pub fn state_name(&self) -> String {
        format!("ivshmem {}", self.bdf)
    }

    /// The guest-visible register state (the region itself belongs to the
    /// group or the file, not to the VM's snapshot).
    pub fn save_state(&self) -> devices::ivshmem::IvshmemState {
        self.dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state()
    }

    /// Restores registers, MSI-X table and BAR placement.
    pub fn restore_state(&self, state: devices::ivshmem::IvshmemState) -> Result<(), ShmemError> {
        let mut dev = self.dev.lock().unwrap_or_else(PoisonError::into_inner);
        let before = dev.bars();
        dev.restore(state).map_err(ShmemError::Device)?;
        let after = dev.bars();
        drop(dev);
        // Follow BARs the restored guest had placed elsewhere.
        for (b, a) in before.iter().zip(&after) {
            if b.addr != a.addr {
                self.relocator.relocate(&BarReprogram {
                    bdf: self.bdf,
                    bar: a.index,
                    old: b.addr,
                    new: a.addr,
                    size: a.size,
                    kind: a.kind,
                    trapped: a.trapped,
                });
            }
        }
        Ok(())
    }
}

/// The pid of the connection that holds peer `id` in `status` (0 if the
/// server could not tell), if one does.
fn connected_holder(status: &StatusReport, id: u16) -> Option<u32> {
    status
        .members
        .iter()
        .find(|m| m.id == id && m.connected)
        .map(|m| m.pid)
}

/// A device's connection to its group server.
#[derive(Debug)]
struct ServerConnection {
    socket: PathBuf,
    /// Whether the connection is up (kept by the group thread).
    up: Arc<AtomicBool>,
}

impl Drop for ShmemDevice {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
            log::info!(
                "shmem: left {}: {} doorbell write(s) reached the VMM, all others went kernel to kernel",
                self.description,
                self.doorbells_in_vmm()
            );
        }
        if let Some(v) = &self.vectors {
            v.unwire_all();
        }
    }
}

/// What a destination needs to take a group membership over.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupIdentity {
    pub token: String,
    pub id: u16,
}

/// A device's membership in a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMembership {
    /// Group name (from the region header).
    pub name: String,
    pub peer_id: u16,
    pub region_size: u64,
    /// The server's socket.
    pub socket: String,
}

/// What the device needs from the VM.
#[derive(Debug)]
pub struct Platform<'a> {
    pub vm: &'a Arc<dyn Vm>,
    pub devices: &'a DeviceManager,
    pub routing: &'a Arc<IrqRouting>,
}

/// A function [`add_device`] put on the bus.
struct Added {
    bdf: PciBdf,
    dev: Arc<Mutex<Ivshmem>>,
    relocator: Arc<Relocator>,
}

/// Builds the PCI function over `mapping`, places its BARs and maps the
/// region into the guest.
fn add_device(
    p: &Platform<'_>,
    cfg: IvshmemConfig,
    mapping: &Mapping,
    doorbells: Arc<Mutex<Doorbells>>,
    vectors: Option<Arc<Vectors>>,
) -> Result<Added, ShmemError> {
    let line = Arc::new(IrqLine {
        vm: p.vm.clone(),
        gsi: AtomicU32::new(0),
    });
    let notifier: Arc<dyn devices::pci::MsixNotifier> = match &vectors {
        Some(v) => v.clone(),
        None => Arc::new(NoVectors),
    };
    let mut dev = Ivshmem::new(
        cfg,
        notifier,
        line.clone(),
        Arc::new(DoorbellPath(doorbells.clone())),
    )
    .map_err(ShmemError::Device)?;
    let bars = {
        let mut alloc = p
            .devices
            .bar_allocator()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assign_bars(&mut dev, &mut alloc).map_err(ShmemError::Bars)?
    };
    let dev = Arc::new(Mutex::new(dev));
    let bdf = p
        .devices
        .pci()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .add_device(dev.clone(), None)
        .map_err(ShmemError::Pci)?;
    // The bus wrote the slot's IOAPIC pin into the interrupt-line register.
    let pin = devices::pci::intx_pin_for_slot(bdf.dev);
    line.gsi
        .store(u32::from(pin), std::sync::atomic::Ordering::Release);

    let relocator = Arc::new(Relocator {
        vm: p.vm.clone(),
        slot: p.devices.allocate_slot(),
        host: mapping.as_ptr() as u64,
        doorbells: doorbells.clone(),
        log: LogLimiter::new(),
    });
    for b in &bars {
        match b.index {
            REGION_BAR => relocator
                .map_region(b.addr, b.size)
                .map_err(ShmemError::Slot)?,
            REGS_BAR => doorbells
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .move_bar0(b.addr),
            _ => {}
        }
    }
    p.devices.add_relocator(bdf, relocator.clone());
    Ok(Added {
        bdf,
        dev,
        relocator,
    })
}

/// MSI-X notifier of a device without vectors (plain mode): never called.
#[derive(Debug)]
struct NoVectors;

impl devices::pci::MsixNotifier for NoVectors {
    fn vector_changed(&self, _vector: u16, _msg: devices::MsiMessage, _masked: bool) {}
    fn send(&self, _msg: devices::MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
}

/// Joins the group of `cfg` and adds its device to the VM. With
/// `takeover` (a migration destination) the membership is taken over from
/// the source and stays in standby until [`ShmemDevice::go_live`].
pub fn attach_group(
    p: &Platform<'_>,
    cfg: &GroupConfig,
    takeover: Option<&GroupIdentity>,
) -> Result<ShmemDevice, ShmemError> {
    let options = PeerOptions {
        token: takeover.map(|t| t.token.clone()),
        id: takeover.map(|t| t.id),
        ..PeerOptions::default()
    };
    let peer = Peer::connect_with(&cfg.socket, options)
        .map_err(|e| ShmemError::Join(cfg.socket.clone(), e))?;
    if let Some(t) = takeover {
        if peer.id() != t.id {
            return Err(ShmemError::Takeover(cfg.socket.clone(), t.id, peer.id()));
        }
    }
    let identity = peer.token().map(|token| GroupIdentity {
        token: token.to_string(),
        id: peer.id(),
    });
    let server_vectors = peer.vectors();
    let vectors = match cfg.vectors {
        Some(n) if u32::from(n) > server_vectors => {
            return Err(ShmemError::TooManyVectors(
                cfg.socket.clone(),
                n,
                server_vectors,
            ))
        }
        Some(n) => n,
        None => u16::try_from(server_vectors).unwrap_or(u16::MAX),
    };
    let mapping = Mapping::new(peer.memfd()).map_err(|e| ShmemError::Map(cfg.socket.clone(), e))?;
    let membership = GroupMembership {
        name: peer.region().map(|r| r.name()).unwrap_or_default(),
        peer_id: peer.id(),
        region_size: mapping.len() as u64,
        socket: cfg.socket.display().to_string(),
    };
    let own: Vec<RawFd> = (0..u32::from(vectors))
        .filter_map(|v| peer.vector_fd(v))
        .collect();

    let mut doorbells = Doorbells::new(p.vm.clone());
    doorbells
        .add_peer(peer.id(), &own)
        .map_err(ShmemError::Doorbells)?;
    for other in peer.peers() {
        let fds: Vec<RawFd> = (0..u32::from(vectors))
            .filter_map(|v| peer.peer_vector_fd(other, v))
            .collect();
        doorbells
            .add_peer(other, &fds)
            .map_err(ShmemError::Doorbells)?;
    }
    let doorbells = Arc::new(Mutex::new(doorbells));
    let changed = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ShmemError::EventFd)?);
    let vector_set = if vectors > 0 {
        Some(Arc::new(
            Vectors::new(p.vm.clone(), p.routing.clone(), &own, changed.clone())
                .map_err(ShmemError::Routing)?,
        ))
    } else {
        None
    };
    let device_cfg = IvshmemConfig {
        region_size: mapping.len() as u64,
        vectors,
        peer_id: peer.id(),
    };
    let Added {
        bdf,
        dev,
        relocator,
    } = add_device(
        p,
        device_cfg,
        &mapping,
        doorbells.clone(),
        vector_set.clone(),
    )?;
    log::info!(
        "shmem: joined group {} as peer {} ({} bytes, {vectors} vectors) at {bdf}",
        cfg.socket.display(),
        peer.id(),
        mapping.len()
    );
    let migrating = Arc::new(AtomicBool::new(false));
    let standby = Arc::new(AtomicBool::new(takeover.is_some()));
    let connected = Arc::new(AtomicBool::new(true));
    let thread = GroupThread::spawn(
        peer,
        group_thread::Shared {
            dev: dev.clone(),
            doorbells,
            changed: changed.clone(),
            vectors,
            held: vector_set.as_ref().map(|v| v.held_flag()),
            migrating: migrating.clone(),
            standby: standby.clone(),
            connected: connected.clone(),
        },
    )
    .map_err(ShmemError::Thread)?;
    Ok(ShmemDevice {
        bdf,
        group: Some(membership),
        identity,
        migrating,
        standby,
        server: Some(ServerConnection {
            socket: cfg.socket.clone(),
            up: connected,
        }),
        changed: Some(changed),
        dev,
        relocator,
        description: format!("group {}", cfg.socket.display()),
        _mapping: mapping,
        vectors: vector_set,
        thread: Some(thread),
    })
}

/// Maps the file of `cfg` and adds an ivshmem-plain device to the VM.
pub fn attach_plain(p: &Platform<'_>, cfg: &PlainShmemConfig) -> Result<ShmemDevice, ShmemError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&cfg.path)
        .map_err(|e| ShmemError::File(cfg.path.clone(), e))?;
    let len = file
        .metadata()
        .map_err(|e| ShmemError::File(cfg.path.clone(), e))?
        .len();
    if len > cfg.size {
        return Err(ShmemError::FileTooLarge(cfg.path.clone(), len, cfg.size));
    }
    if len < cfg.size {
        file.set_len(cfg.size)
            .map_err(|e| ShmemError::File(cfg.path.clone(), e))?;
    }
    let mapping =
        Mapping::new(&file.as_raw_fd()).map_err(|e| ShmemError::Map(cfg.path.clone(), e))?;
    let doorbells = Arc::new(Mutex::new(Doorbells::new(p.vm.clone())));
    let device_cfg = IvshmemConfig {
        region_size: cfg.size,
        vectors: 0,
        peer_id: 0,
    };
    let Added {
        bdf,
        dev,
        relocator,
    } = add_device(p, device_cfg, &mapping, doorbells, None)?;
    Ok(ShmemDevice {
        bdf,
        group: None,
        identity: None,
        migrating: Arc::new(AtomicBool::new(false)),
        standby: Arc::new(AtomicBool::new(false)),
        server: None,
        changed: None,
        dev,
        relocator,
        description: format!("file {}", cfg.path.display()),
        _mapping: mapping,
        vectors: None,
        thread: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmem_group::ext::MemberStatus;

    fn member(id: u16, pid: u32, connected: bool) -> MemberStatus {
        MemberStatus {
            id,
            state: if connected { "alive" } else { "dead" }.into(),
            generation: 1,
            pid,
            extension: true,
            connected,
            doorbells_sent: 0,
            doorbells_received: 0,
        }
    }

    fn status(members: Vec<MemberStatus>) -> StatusReport {
        StatusReport {
            group: "g".into(),
            size: 1 << 20,
            vectors: 1,
            max_peers: 8,
            server_epoch: 1,
            members,
        }
    }

    #[test]
    fn a_connected_member_with_the_id_is_its_holder() {
        let s = status(vec![member(0, 10, true), member(3, 42, true)]);
        assert_eq!(connected_holder(&s, 3), Some(42));
    }

    #[test]
    fn a_dead_or_missing_id_has_no_holder() {
        let s = status(vec![member(0, 10, true), member(3, 42, false)]);
        assert_eq!(connected_holder(&s, 3), None);
        assert_eq!(connected_holder(&s, 5), None);
    }
}
