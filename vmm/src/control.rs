// SPDX-License-Identifier: Apache-2.0
//! The control loop: one thread that owns the VM's lifecycle. Guest
//! power-off and reset, signals, API requests and migration results all
//! arrive here as [`VmEvent`]s and are handled one at a time.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use hypervisor::kvm::KvmHypervisor;

use crate::api::{
    ApiMessage, ApiRequest, ApiResponse, ApiServer, DeviceInfo, GroupInfo, VcpuInfo, VmInfo,
    VmRunState,
};
use crate::boot::{boot, RamSource, Start};
use crate::config::{SerialOutput, VmConfig};
use crate::memory::GuestRam;
use crate::migrate::{IncomingVm, VmSource};
use crate::migration::{self, Listener, MigrationProgress, MigrationState, MigrationUrl};
use crate::shmem::GroupMembership;
use crate::vm::{Error, RunningVm};
use crate::{signals, ExitReason, VmEvent};

/// How long a VM that migrated away still answers migration status.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// How `run` gets its VM.
#[derive(Debug)]
pub enum Launch {
    /// Boot this configuration.
    Boot(VmConfig),
    /// Restore the snapshot in `dir`.
    Restore { dir: PathBuf },
    /// Receive a migrating VM at `url` (`unix:PATH` or `tcp:HOST:PORT`).
    Incoming { url: String },
    /// No VM yet: serve the control API until `vm.restore` or
    /// `vm.receive-migration` creates one (needs `RunOptions::api_socket`).
    Api,
}

/// Options of `run` besides the VM itself.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Serve the control API on this unix socket.
    pub api_socket: Option<PathBuf>,
    /// For restore and incoming migration: where serial output goes (the
    /// saved configuration's choice otherwise).
    pub serial: Option<SerialOutput>,
}

fn restore(
    hyp: &KvmHypervisor,
    dir: &Path,
    serial: &Option<SerialOutput>,
    events: &Sender<VmEvent>,
) -> Result<RunningVm, Error> {
    let loaded = crate::snapshot::load(dir).map_err(|e| Error::State(e.into()))?;
    let mut config = crate::state::saved_config(&loaded.snapshot)?;
    if let Some(serial) = serial {
        config.serial = serial.clone();
    }
    if config.memory != loaded.ram_size {
        return Err(Error::State(
            crate::snapshot::SnapshotError::RamSize {
                found: config.memory,
                expected: loaded.ram_size,
            }
            .into(),
        ));
    }
    let fill = |ram: &GuestRam| {
        crate::snapshot::restore_memory(dir, ram.file(), ram.size())
            .map(|_| ())
            .map_err(|e| Error::State(e.into()))
    };
    let start = Start::Restore {
        state: &loaded.snapshot,
        ram: RamSource::Fill(&fill),
    };
    let vm = boot(hyp, &config, events, start)?;
    log::info!("restored the VM saved in {}", dir.display());
    Ok(vm)
}

fn listen(url: &str) -> Result<Listener, Error> {
    let url = MigrationUrl::parse(url).map_err(|e| Error::Migration(e.into()))?;
    url.listen().map_err(|e| Error::Migration(e.into()))
}

/// A VM ready for the control loop.
pub struct Arrived {
    vm: RunningVm,
    /// An incoming VM kept paused because the source did not confirm the
    /// commit (its `go` did not come): why.
    unconfirmed: Option<String>,
    /// What `vm.migration-status` reports (how an incoming VM arrived).
    migration: Arc<MigrationProgress>,
}

impl Arrived {
    fn running(vm: RunningVm) -> Self {
        Arrived {
            vm,
            unconfirmed: None,
            migration: Arc::default(),
        }
    }
}

/// What the operator does with a VM restored from a migration whose `go`
/// did not come; `api`: this VMM's API socket.
fn unconfirmed_advice(api: &Path) -> String {
    format!(
        "check that the source VMM has exited (its migration-status said completed, or its log says \"migration complete\"), then run the guest here with `shoal api --socket {0} resume --force`; if the source still runs the guest, shut this copy down with `shoal api --socket {0} shutdown`",
        api.display()
    )
}

/// Tells the operator what to do with a VM restored from a migration whose
/// `go` did not come; `api`: this VMM's API socket.
fn log_unconfirmed(why: &str, api: Option<&Path>) {
    match api {
        Some(api) => log::error!(
            "the incoming VM is restored and kept paused: {why}. The source may still run the guest, or it may have exited (its go got lost) and the guest lives only here: {}",
            unconfirmed_advice(api)
        ),
        None => log::error!(
            "the incoming VM is restored and kept paused: {why}. This VMM has no --api-socket, so it cannot be resumed: if the source still runs the VM, stop this VMM; if the source exited, the guest state is only in this paused VM and is lost when it stops (start destinations with --api-socket to be able to resume them)"
        ),
    }
}

/// Receives one VM on `listener`, telling `progress` how it goes.
fn receive(
    hyp: &KvmHypervisor,
    listener: &Listener,
    serial: &Option<SerialOutput>,
    events: &Sender<VmEvent>,
    api: Option<&Path>,
    progress: Arc<MigrationProgress>,
) -> Result<Arrived, Error> {
    let result = receive_into(hyp, listener, serial, events, api, &progress);
    match result {
        Ok((vm, unconfirmed)) => Ok(Arrived {
            vm,
            unconfirmed,
            migration: progress,
        }),
        Err(e) => {
            // The receiver reported its own failures; this is a later one
            // (building the VM) or an earlier one (accepting).
            if progress.state() != MigrationState::Failed {
                progress.fail(migration::error_chain(&e), false);
            }
            Err(e)
        }
    }
}

fn receive_into(
    hyp: &KvmHypervisor,
    listener: &Listener,
    serial: &Option<SerialOutput>,
    events: &Sender<VmEvent>,
    api: Option<&Path>,
    progress: &MigrationProgress,
) -> Result<(RunningVm, Option<String>), Error> {
    log::info!("waiting for an incoming migration");
    let stream = listener.accept().map_err(|e| Error::Migration(e.into()))?;
    let mut target = IncomingVm::new(hyp, events.clone(), serial.clone());
    let report = migration::receive_with_progress(stream, &mut target, progress)
        .map_err(Error::Migration)?;
    log::info!(
        "received the VM: {} bytes, {} pages with data, {} zero pages{}",
        report.bytes,
        report.pages_data,
        report.pages_zero,
        if report.local {
            ", RAM handed over"
        } else {
            ""
        }
    );
    let vm = target
        .into_vm()?
        .ok_or_else(|| Error::Guest("the incoming VM was not restored".into()))?;
    if let Some(why) = &report.unconfirmed {
        log_unconfirmed(why, api);
    }
    Ok((vm, report.unconfirmed))
}

/// The refusal of a forced resume while process `pid` (0: unknown) holds
/// the peer id of `group`; `api`: this VMM's API socket.
fn held_elsewhere(group: &GroupMembership, pid: u32, api: &Path) -> String {
    let holder = match pid {
        0 => "another process".to_string(),
        pid => format!("another process (pid {pid})"),
    };
    format!(
        "not resuming, even with force: the group server at {} says peer {} of group {} is held by {holder}, so the migration source took the membership back and runs the guest; shut this copy down with `shoal api --socket {} shutdown`",
        group.socket,
        group.peer_id,
        group.name,
        api.display()
    )
}

/// A VM received for a VMM started without one, or why receiving failed.
pub struct Received(Box<Result<Arrived, Error>>);

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Ok(_) => f.write_str("Received(Ok(vm))"),
            Err(e) => write!(f, "Received(Err({e}))"),
        }
    }
}

/// How the VMM without a VM ([`Launch::Api`]) ended its wait.
enum Created {
    Vm(Box<Arrived>),
    Exit(ExitReason),
}

/// A receive already under way when the wait starts (`--incoming`): its
/// address and progress. Its failure ends the VMM.
struct Incoming {
    url: String,
    progress: Arc<MigrationProgress>,
}

/// The VMM without a VM: answers the API until `vm.restore` or
/// `vm.receive-migration` creates the VM, or it is told to stop. A restore
/// runs on this thread (the answer says whether it worked); a receive
/// answers 202 once it listens, then runs on a thread of its own so that
/// `vm.info` (`receiving`) and `vm.migration-status` keep answering, and a
/// failed receive leaves the VMM waiting for the next request. With
/// `incoming` (`shoal run --incoming`) the receive runs from the start and
/// its failure is the VMM's.
fn wait_for_vm(
    hyp: &KvmHypervisor,
    options: &RunOptions,
    events: &Sender<VmEvent>,
    rx: &Receiver<VmEvent>,
    incoming: Option<Incoming>,
) -> Result<Created, Error> {
    let serial = &options.serial;
    let exit_on_failure = incoming.is_some();
    let (mut receiving, progress) = match incoming {
        Some(i) => (Some(i.url), i.progress),
        None => (None, Arc::default()),
    };
    let mut last_error: Option<String> = None;
    loop {
        let Ok(event) = rx.recv() else {
            return Err(Error::Guest("control channel closed".into()));
        };
        let (request, reply) = match event {
            VmEvent::Signal(sig) => return Ok(Created::Exit(ExitReason::Signal(sig))),
            VmEvent::Incoming(Received(result)) => match *result {
                Ok(arrived) => return Ok(Created::Vm(Box::new(arrived))),
                Err(e) if exit_on_failure => return Err(e),
                Err(e) => {
                    let why = migration::error_chain(&e);
                    log::error!("receiving a VM failed, waiting for the next request: {why}");
                    receiving = None;
                    last_error = Some(why);
                    continue;
                }
            },
            VmEvent::Api(message) => message,
            _ => continue,
        };
        let busy = |url: &str| ApiResponse::conflict(&format!("already receiving a VM at {url}"));
        let response = match request {
            ApiRequest::VmInfo => ApiResponse::json(&VmInfo {
                config: serde_json::Value::Null,
                state: if receiving.is_some() {
                    VmRunState::Receiving
                } else {
                    VmRunState::NotCreated
                },
                vcpus: Vec::new(),
                devices: Vec::new(),
                groups: Vec::new(),
                error: last_error.clone(),
                paused_reason: None,
            }),
            ApiRequest::VmShutdown => {
                let _ = reply.send(ApiResponse::ok());
                return Ok(Created::Exit(ExitReason::Shutdown));
            }
            ApiRequest::VmRestore { .. } | ApiRequest::ReceiveMigration(_)
                if receiving.is_some() =>
            {
                busy(receiving.as_deref().unwrap_or_default())
            }
            ApiRequest::VmRestore { source } => match restore(hyp, &source, serial, events) {
                Ok(vm) => {
                    let _ = reply.send(ApiResponse::ok());
                    return Ok(Created::Vm(Box::new(Arrived::running(vm))));
                }
                Err(e) => {
                    let why = migration::error_chain(&e);
                    log::error!("restore from {} failed: {why}", source.display());
                    last_error = Some(why.clone());
                    ApiResponse::error(400, &why)
                }
            },
            ApiRequest::MigrationStatus => ApiResponse::json(&progress.status()),
            ApiRequest::MigrationCancel if receiving.is_some() => ApiResponse::conflict(
                "this VMM is receiving a VM: cancel the migration at its source (vm.migration-cancel there), or shut this VMM down",
            ),
            ApiRequest::ReceiveMigration(opts) => match listen(&opts.receiver_url) {
                Ok(listener) => {
                    progress.begin_receive();
                    spawn_receiver(
                        listener,
                        serial.clone(),
                        options.api_socket.clone(),
                        events.clone(),
                        progress.clone(),
                    )?;
                    receiving = Some(opts.receiver_url);
                    last_error = None;
                    ApiResponse::accepted()
                }
                Err(e) => ApiResponse::error(400, &migration::error_chain(&e)),
            },
            _ => ApiResponse::conflict(
                "no VM yet: create one with vm.restore or vm.receive-migration",
            ),
        };
        let _ = reply.send(response);
    }
}

/// Receives a VM on `listener` in a thread of its own; the result comes
/// back to the control loop as [`VmEvent::Incoming`].
fn spawn_receiver(
    listener: Listener,
    serial: Option<SerialOutput>,
    api: Option<PathBuf>,
    events: Sender<VmEvent>,
    progress: Arc<MigrationProgress>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("receive".into())
        .spawn(move || {
            let result = KvmHypervisor::new().map_err(Error::from).and_then(|hyp| {
                receive(&hyp, &listener, &serial, &events, api.as_deref(), progress)
            });
            let _ = events.send(VmEvent::Incoming(Received(Box::new(result))));
        })
        .map_err(Error::Thread)?;
    Ok(())
}

/// Runs a VM until the guest powers off, a signal arrives, the VM migrates
/// away, or something fails. Reboots on guest reset when the configuration
/// says so.
pub fn run(launch: Launch, options: RunOptions) -> Result<ExitReason, Error> {
    let hyp = KvmHypervisor::new()?;
    let (tx, rx) = channel();
    signals::forward_terminating_signals(tx.clone()).map_err(Error::Thread)?;
    let _api = match &options.api_socket {
        Some(path) => Some(start_api(path, tx.clone())?),
        None => None,
    };
    let arrived = match &launch {
        Launch::Boot(config) => Arrived::running(boot(&hyp, config, &tx, Start::Fresh)?),
        Launch::Restore { dir } => Arrived::running(restore(&hyp, dir, &options.serial, &tx)?),
        Launch::Incoming { url } => {
            // Received on a thread of its own while this one answers the
            // API (status, info) and signals.
            let listener = listen(url)?;
            let progress = Arc::new(MigrationProgress::default());
            progress.begin_receive();
            spawn_receiver(
                listener,
                options.serial.clone(),
                options.api_socket.clone(),
                tx.clone(),
                progress.clone(),
            )?;
            let incoming = Incoming {
                url: url.clone(),
                progress,
            };
            match wait_for_vm(&hyp, &options, &tx, &rx, Some(incoming))? {
                Created::Vm(arrived) => *arrived,
                Created::Exit(reason) => {
                    drop(rx);
                    drop(_api);
                    return Ok(reason);
                }
            }
        }
        Launch::Api => match wait_for_vm(&hyp, &options, &tx, &rx, None)? {
            Created::Vm(arrived) => *arrived,
            Created::Exit(reason) => {
                drop(rx);
                drop(_api);
                return Ok(reason);
            }
        },
    };
    let result = Control {
        hyp: &hyp,
        events: tx,
        vm: Arc::new(arrived.vm),
        paused: arrived.unconfirmed.is_some(),
        unconfirmed: arrived.unconfirmed,
        api: options.api_socket.clone(),
        migration: arrived.migration,
        migrating: false,
    }
    .run(&rx);
    // Unanswered API requests wait in `rx`: dropping it first lets the API
    // server answer them (with an error) before it shuts down.
    drop(rx);
    drop(_api);
    result
}

/// Forwards API requests into the control loop's channel.
fn start_api(path: &Path, events: Sender<VmEvent>) -> Result<ApiServer, Error> {
    let (api_tx, api_rx) = channel::<ApiMessage>();
    let server = ApiServer::start(path, api_tx).map_err(Error::Api)?;
    std::thread::Builder::new()
        .name("api-forward".into())
        .spawn(move || {
            while let Ok(msg) = api_rx.recv() {
                if events.send(VmEvent::Api(msg)).is_err() {
                    return;
                }
            }
        })
        .map_err(Error::Thread)?;
    Ok(server)
}

struct Control<'a> {
    hyp: &'a KvmHypervisor,
    events: Sender<VmEvent>,
    vm: Arc<RunningVm>,
    paused: bool,
    /// The VM came from a migration whose source did not confirm the commit
    /// (why): paused, doorbells held, group memberships in standby, until
    /// the operator resumes it here with force (or shuts it down).
    unconfirmed: Option<String>,
    /// This VMM's API socket, for the advice in answers.
    api: Option<PathBuf>,
    migration: Arc<MigrationProgress>,
    migrating: bool,
}

/// What the loop does after an event.
enum Next {
    Continue,
    Exit(Result<ExitReason, Error>),
}

impl Control<'_> {
    fn run(mut self, rx: &Receiver<VmEvent>) -> Result<ExitReason, Error> {
        loop {
            // The sender side lives in `self.events`: recv cannot fail.
            let Ok(event) = rx.recv() else {
                return Err(Error::Guest("control channel closed".into()));
            };
            match self.handle(event, rx) {
                Next::Continue => {}
                Next::Exit(result) => {
                    self.vm.stop();
                    if matches!(result, Ok(ExitReason::Migrated)) {
                        self.linger(rx);
                    }
                    return result;
                }
            }
        }
    }

    /// After the VM migrated away: answer status requests a little longer,
    /// so that the client that started the migration sees the final report.
    fn linger(&self, rx: &Receiver<VmEvent>) {
        let until = std::time::Instant::now() + LINGER;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(VmEvent::Api((ApiRequest::MigrationStatus, reply))) => {
                    let _ = reply.send(ApiResponse::json(&self.migration.status()));
                }
                Ok(VmEvent::Api((_, reply))) => {
                    let _ = reply.send(ApiResponse::conflict(
                        "the VM migrated away and runs at the destination",
                    ));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    fn handle(&mut self, event: VmEvent, rx: &Receiver<VmEvent>) -> Next {
        match event {
            VmEvent::PowerOff => Next::Exit(Ok(ExitReason::PowerOff)),
            VmEvent::Signal(sig) => Next::Exit(Ok(ExitReason::Signal(sig))),
            // Only a VMM without a VM receives one (see `wait_for_vm`).
            VmEvent::Incoming(_) => Next::Continue,
            VmEvent::Failed(why) => Next::Exit(Err(Error::Guest(why))),
            VmEvent::Reset if self.vm.config.reboot && !self.migrating => {
                log::info!("guest reset: rebooting");
                self.vm.stop();
                // Drop events that raced with the reset (e.g. a second vCPU's).
                while let Ok(VmEvent::Reset | VmEvent::PowerOff) = rx.try_recv() {}
                let config = self.vm.config.clone();
                match boot(self.hyp, &config, &self.events, Start::Fresh) {
                    Ok(vm) => {
                        self.vm = Arc::new(vm);
                        self.paused = false;
                        Next::Continue
                    }
                    Err(e) => Next::Exit(Err(e)),
                }
            }
            VmEvent::Reset => Next::Exit(Ok(ExitReason::Reset)),
            VmEvent::Api((request, reply)) => {
                let (response, next) = self.api(request);
                let _ = reply.send(response);
                next
            }
            VmEvent::MigrationDone(result) => {
                self.migrating = false;
                match result {
                    Ok(report) => {
                        log::info!(
                            "migration complete in {} ms, downtime {} ms, {} bytes sent: go sent, the VM runs at the destination",
                            report.total_ms,
                            report.downtime_ms,
                            report.bytes_total
                        );
                        Next::Exit(Ok(ExitReason::Migrated))
                    }
                    Err(why) => {
                        for s in &self.vm.shared {
                            s.end_migration();
                        }
                        log::error!("migration failed, the VM keeps running here: {why}");
                        Next::Continue
                    }
                }
            }
        }
    }

    fn info(&self) -> VmInfo {
        let vcpus = self
            .vm
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|t| VcpuInfo { id: t.id() })
            .collect();
        let mut devices = vec![
            DeviceInfo {
                name: "com1".into(),
                kind: "serial".into(),
                bdf: None,
            },
            DeviceInfo {
                name: "i8042".into(),
                kind: "i8042".into(),
                bdf: None,
            },
            DeviceInfo {
                name: "acpi-pm".into(),
                kind: "acpi".into(),
                bdf: None,
            },
            DeviceInfo {
                name: "host-bridge".into(),
                kind: "pci-root".into(),
                bdf: Some("00:00.0".into()),
            },
        ];
        let mut groups = Vec::new();
        for s in &self.vm.shared {
            devices.push(DeviceInfo {
                name: s.description().to_string(),
                kind: "ivshmem".into(),
                bdf: Some(s.bdf().to_string()),
            });
            if let Some(g) = s.group_info() {
                groups.push(GroupInfo {
                    name: g.name,
                    peer_id: u32::from(g.peer_id),
                    region_size: g.region_size,
                    server: Some(g.socket),
                    doorbells_in_vmm: s.doorbells_in_vmm(),
                });
            }
        }
        VmInfo {
            config: serde_json::to_value(&self.vm.config).unwrap_or_default(),
            state: if self.paused {
                VmRunState::Paused
            } else {
                VmRunState::Running
            },
            vcpus,
            devices,
            groups,
            error: None,
            paused_reason: self.unconfirmed.clone(),
        }
    }

    fn api(&mut self, request: ApiRequest) -> (ApiResponse, Next) {
        let busy = || ApiResponse::conflict("a migration is in progress");
        let response = match request {
            ApiRequest::VmInfo => ApiResponse::json(&self.info()),
            ApiRequest::VmPause if self.migrating => busy(),
            ApiRequest::VmPause => {
                self.vm.pause();
                self.paused = true;
                ApiResponse::ok()
            }
            ApiRequest::VmResume { .. } if self.migrating => busy(),
            ApiRequest::VmResume { force } => self.resume(force),
            ApiRequest::VmShutdown => {
                return (ApiResponse::ok(), Next::Exit(Ok(ExitReason::Shutdown)));
            }
            ApiRequest::VmSnapshot { .. } if self.migrating => busy(),
            ApiRequest::VmSnapshot { destination } => {
                match self.vm.snapshot_to(&destination, true) {
                    Ok(report) => {
                        self.paused = true;
                        ApiResponse::json(&serde_json::json!({
                            "destination": destination,
                            "state_bytes": report.state_bytes,
                            "memory_data_bytes": report.memory.data_bytes,
                        }))
                    }
                    Err(e) => {
                        self.vm.resume_if(!self.paused);
                        ApiResponse::error(500, &migration::error_chain(&e))
                    }
                }
            }
            ApiRequest::VmRestore { .. } | ApiRequest::ReceiveMigration(_) => {
                ApiResponse::conflict(
                    "this VMM already runs a VM: restore or receive in a new `shoal run --api-socket PATH`",
                )
            }
            ApiRequest::SendMigration(_) if self.migrating => busy(),
            ApiRequest::SendMigration(_) if self.unconfirmed.is_some() => ApiResponse::conflict(
                "this VM waits for a decision after an unconfirmed incoming migration: resume it with force or shut it down",
            ),
            ApiRequest::SendMigration(opts) => self.send_migration(opts),
            ApiRequest::MigrationStatus => ApiResponse::json(&self.migration.status()),
            ApiRequest::MigrationCancel => {
                if self.migrating {
                    self.migration.cancel();
                    ApiResponse::accepted()
                } else {
                    ApiResponse::conflict("no migration is in progress")
                }
            }
        };
        (response, Next::Continue)
    }

    /// `vm.resume`. A VM kept paused after an unconfirmed incoming
    /// migration needs `force` (the operator checked that the source is
    /// gone), and is refused even then while a group server says another
    /// process (the source) holds one of its memberships.
    fn resume(&mut self, force: bool) -> ApiResponse {
        if let Some(why) = &self.unconfirmed {
            if !force {
                return ApiResponse::conflict(&format!(
                    "this VM is kept paused after an incoming migration: {why}, so the source may still run the guest; {}",
                    unconfirmed_advice(self.api_socket())
                ));
            }
            if let Some(refusal) = self.membership_held_elsewhere() {
                return ApiResponse::conflict(&refusal);
            }
            log::warn!("resuming the incoming VM by force ({why}): this copy is the guest now");
            self.unconfirmed = None;
            self.vm.go_live();
        }
        self.vm.resume();
        self.paused = false;
        ApiResponse::ok()
    }

    /// Why a forced resume is refused: a group server says another process
    /// holds the peer id of one of this VM's memberships (the source took
    /// it back, so it runs the guest). A server that cannot be asked does
    /// not stop the resume.
    fn membership_held_elsewhere(&self) -> Option<String> {
        for s in &self.vm.shared {
            let Some(group) = s.group_info() else {
                continue;
            };
            match s.peer_held_elsewhere() {
                Ok(Some(pid)) => return Some(held_elsewhere(&group, pid, self.api_socket())),
                Ok(None) => {}
                Err(e) => log::warn!(
                    "{}; resuming on the operator's word",
                    migration::error_chain(&e)
                ),
            }
        }
        None
    }

    /// This VMM's API socket, for advice ("PATH" if it has none).
    fn api_socket(&self) -> &Path {
        self.api.as_deref().unwrap_or(Path::new("PATH"))
    }

    fn send_migration(&mut self, opts: migration::SendOptions) -> ApiResponse {
        if let Err(e) = MigrationUrl::parse(&opts.destination_url) {
            return ApiResponse::error(400, &migration::error_chain(&e));
        }
        let progress = Arc::new(MigrationProgress::default());
        let source = Arc::new(VmSource::new(self.vm.clone()));
        let events = self.events.clone();
        let was_paused = self.paused;
        let vm = self.vm.clone();
        let done = move |result: Result<migration::MigrationReport, migration::MigrationError>| {
            if result.is_err() && was_paused {
                // The sender resumed the VM on failure; it was paused before.
                vm.pause();
            }
            let _ = events.send(VmEvent::MigrationDone(
                result.map_err(|e| migration::error_chain(&e)),
            ));
        };
        for s in &self.vm.shared {
            s.begin_migration();
        }
        match migration::spawn_send(source, opts, progress.clone(), done) {
            Ok(_) => {
                self.migration = progress;
                self.migrating = true;
                ApiResponse::accepted()
            }
            Err(e) => {
                for s in &self.vm.shared {
                    s.end_migration();
                }
                ApiResponse::error(500, &migration::error_chain(&e))
            }
        }
    }
}
