// SPDX-License-Identifier: Apache-2.0
//! The real VM behind the migration state machines of [`crate::migration`]:
//! [`VmSource`] (a running VM being sent) and [`IncomingVm`] (a VM being
//! received, started only on the source's `go` after the commit).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hypervisor::kvm::KvmHypervisor;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::{build, BuiltVm, Platform, RamSource, Start};
use crate::config::VmConfig;
use crate::memory::create_memfd;
use crate::migration::{Hello, HookError, MigrationSource, MigrationTarget, RamView};
use crate::snapshot::VmSnapshot;
use crate::vm::RunningVm;
use crate::VmEvent;

/// Length of one throttling period.
const THROTTLE_PERIOD: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct Throttle {
    percent: Arc<std::sync::atomic::AtomicU8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often a throttling pause looks whether the throttle ended.
const THROTTLE_STEP: Duration = Duration::from_millis(5);
/// The longest single throttling pause (the guest must still get on).
const THROTTLE_MAX_PAUSE: Duration = Duration::from_secs(2);

/// How long to keep the vCPUs paused after they ran for `ran`, so that
/// they run `100 - percent` % of the time.
fn throttle_pause(ran: Duration, percent: u32) -> Duration {
    let p = percent.min(99);
    (ran * p / (100 - p)).min(THROTTLE_MAX_PAUSE)
}

/// A running VM as a migration source.
#[derive(Debug)]
pub(crate) struct VmSource {
    vm: Arc<RunningVm>,
    throttle: Mutex<Throttle>,
}

impl VmSource {
    pub(crate) fn new(vm: Arc<RunningVm>) -> Self {
        VmSource {
            vm,
            throttle: Mutex::new(Throttle::default()),
        }
    }

    fn stop_throttle(&self) {
        let mut t = self.throttle.lock().unwrap_or_else(PoisonError::into_inner);
        t.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(h) = t.thread.take() {
            let _ = h.join();
        }
        t.percent.store(0, std::sync::atomic::Ordering::Release);
        t.stop.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for VmSource {
    fn drop(&mut self) {
        self.stop_throttle();
    }
}

impl MigrationSource for VmSource {
    fn ram_size(&self) -> u64 {
        self.vm.ram.size()
    }

    fn ram_fd(&self) -> BorrowedFd<'_> {
        self.vm.ram.file().as_fd()
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.vm.config).unwrap_or(serde_json::Value::Null)
    }

    fn ram(&self) -> RamView<'_> {
        let mut regions = Vec::new();
        let mut next = 0u64;
        for region in self.vm.ram.memory().iter() {
            // GuestRam lays the regions out one after the other in its file.
            let offset = region.file_offset().map_or(next, |f| f.start());
            next = offset + region.len();
            if let Ok(mem) = region.as_volatile_slice() {
                regions.push((offset, mem));
            }
        }
        RamView::new(regions)
    }

    fn start_dirty_log(&self) -> Result<(), HookError> {
        self.vm.ram.set_dirty_logging(self.vm.vm.as_ref(), true)?;
        self.vm.ram.take_dirty_bitmap(self.vm.vm.as_ref())?;
        Ok(())
    }

    fn stop_dirty_log(&self) {
        if let Err(e) = self.vm.ram.set_dirty_logging(self.vm.vm.as_ref(), false) {
            log::warn!("migration: cannot stop dirty logging: {e}");
        }
    }

    fn take_dirty_bitmap(&self) -> Result<Vec<u64>, HookError> {
        Ok(self.vm.ram.take_dirty_bitmap(self.vm.vm.as_ref())?)
    }

    fn pause(&self) -> Result<(), HookError> {
        self.stop_throttle();
        self.vm.pause();
        Ok(())
    }

    fn resume(&self) -> Result<(), HookError> {
        for s in &self.vm.shared {
            s.release_doorbells();
        }
        self.vm.resume();
        Ok(())
    }

    fn throttle(&self, percent: u8) {
        let percent = percent.min(99);
        let mut t = self.throttle.lock().unwrap_or_else(PoisonError::into_inner);
        t.percent
            .store(percent, std::sync::atomic::Ordering::Release);
        if percent == 0 || t.thread.is_some() {
            return;
        }
        log::info!("migration: throttling the vCPUs ({percent}%) to converge");
        let vm = self.vm.clone();
        let level = t.percent.clone();
        let stop = t.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("migration-throttle".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                let stopped = || stop.load(Ordering::Acquire);
                while !stopped() {
                    let p = u32::from(level.load(Ordering::Acquire));
                    if p == 0 {
                        std::thread::sleep(THROTTLE_PERIOD);
                        continue;
                    }
                    // The guest runs from the resume until the pause has
                    // stopped every vCPU; on a loaded host sleeps overshoot
                    // and pausing takes a while, so the pause that follows
                    // is sized on the time it really ran.
                    let started = std::time::Instant::now();
                    std::thread::sleep(THROTTLE_PERIOD * (100 - p) / 100);
                    vm.pause();
                    let pause = throttle_pause(started.elapsed(), p);
                    let until = std::time::Instant::now() + pause;
                    while !stopped() && std::time::Instant::now() < until {
                        std::thread::sleep(THROTTLE_STEP.min(pause));
                    }
                    vm.resume();
                }
            });
        match spawned {
            Ok(h) => t.thread = Some(h),
            Err(e) => log::warn!("migration: cannot start throttling: {e}"),
        }
    }

    fn save_state(&self) -> Result<Vec<u8>, HookError> {
        // Doorbells from now on wait in the eventfds for the destination
        // (or for us again, if the migration fails).
        for s in &self.vm.shared {
            s.hold_doorbells();
        }
        let state = self.vm.capture()?;
        Ok(state.to_body()?)
    }
}

/// Where an incoming VM is in its reception.
#[derive(Debug, Default)]
enum Incoming {
    #[default]
    Waiting,
    /// The VM exists and its RAM is arriving.
    Ram {
        config: VmConfig,
        platform: Platform,
    },
    /// Same-host migration: waiting for the RAM memfd.
    AwaitingRam { config: VmConfig },
    /// Built from the received state, not running.
    Built(Box<BuiltVm>),
    /// Started.
    Running(Box<RunningVm>),
}

/// A VM being received.
pub(crate) struct IncomingVm<'a> {
    hyp: &'a KvmHypervisor,
    events: Sender<VmEvent>,
    /// Overrides the sender's serial output (the destination's own choice).
    serial: Option<crate::config::SerialOutput>,
    state: Incoming,
}

impl std::fmt::Debug for IncomingVm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingVm")
            .field("state", &self.state)
            .finish()
    }
}

impl<'a> IncomingVm<'a> {
    pub(crate) fn new(
        hyp: &'a KvmHypervisor,
        events: Sender<VmEvent>,
        serial: Option<crate::config::SerialOutput>,
    ) -> Self {
        IncomingVm {
            hyp,
            events,
            serial,
            state: Incoming::Waiting,
        }
    }

    /// The started VM, once [`MigrationTarget::start`] ran; otherwise the
    /// restored VM with its vCPU threads parked before their first
    /// instruction, its doorbells held and its group memberships in standby
    /// (start it with [`RunningVm::go_live`], then `resume`). `None`: no
    /// state was restored.
    pub(crate) fn into_vm(self) -> Result<Option<RunningVm>, crate::vm::Error> {
        match self.state {
            Incoming::Running(vm) => Ok(Some(*vm)),
            Incoming::Built(built) => built.start_paused(&self.events).map(Some),
            _ => Ok(None),
        }
    }

    fn ram(&self) -> Result<&File, HookError> {
        match &self.state {
            Incoming::Ram { platform, .. } => Ok(platform.ram().file()),
            _ => Err("guest RAM arrived before the VM configuration".into()),
        }
    }
}

impl MigrationTarget for IncomingVm<'_> {
    fn prepare(&mut self, hello: &Hello) -> Result<(), HookError> {
        let mut config: VmConfig = serde_json::from_value(hello.config.clone())?;
        if config.memory != hello.ram_size {
            return Err(format!(
                "the configuration has {} bytes of RAM but {} bytes are announced",
                config.memory, hello.ram_size
            )
            .into());
        }
        if let Some(serial) = &self.serial {
            config.serial = serial.clone();
        }
        if hello.local {
            // The memfd comes with adopt_ram_fd.
            self.state = Incoming::AwaitingRam { config };
            return Ok(());
        }
        let file = create_memfd("shoal-guest-ram", hello.ram_size)?;
        let platform = Platform::create(self.hyp, &config, file)?;
        self.state = Incoming::Ram { config, platform };
        Ok(())
    }

    fn write_ram(&mut self, offset: u64, data: &[u8]) -> Result<(), HookError> {
        self.ram()?.write_all_at(data, offset)?;
        Ok(())
    }

    fn zero_ram(&mut self, offset: u64, len: u64) -> Result<(), HookError> {
        // A hole in the memfd reads as zeros and frees the page.
        crate::snapshot::memory::punch_hole(self.ram()?, offset, len)?;
        Ok(())
    }

    fn ram_file(&self) -> Option<File> {
        self.ram().ok().and_then(|f| f.try_clone().ok())
    }

    fn adopt_ram_fd(&mut self, fd: OwnedFd, size: u64) -> Result<(), HookError> {
        let Incoming::AwaitingRam { config } = std::mem::take(&mut self.state) else {
            return Err("a RAM file arrived unexpectedly".into());
        };
        if config.memory != size {
            return Err(format!(
                "the handed-over RAM is {size} bytes, the configuration says {}",
                config.memory
            )
            .into());
        }
        let platform = Platform::create(self.hyp, &config, File::from(fd))?;
        self.state = Incoming::Ram { config, platform };
        Ok(())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), HookError> {
        let Incoming::Ram { config, platform } = std::mem::take(&mut self.state) else {
            return Err("the VM state arrived before the VM configuration and RAM".into());
        };
        let snapshot = VmSnapshot::from_body(state)?;
        let start = Start::Restore {
            state: &snapshot,
            ram: RamSource::Platform(platform),
        };
        let built = build(self.hyp, &config, &self.events, start)?;
        self.state = Incoming::Built(Box::new(built));
        Ok(())
    }

    fn start(&mut self) -> Result<(), HookError> {
        let Incoming::Built(built) = std::mem::take(&mut self.state) else {
            return Err("start before the VM state was restored".into());
        };
        let running = built.start_paused(&self.events)?;
        running.go_live();
        running.resume();
        self.state = Incoming::Running(Box::new(running));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_pause_keeps_the_ratio_of_the_time_really_run() {
        let ms = Duration::from_millis;
        // 20% throttle after 16 ms of running: 4 ms paused.
        assert_eq!(throttle_pause(ms(16), 20), ms(4));
        // 99% after a slice that overshot to 5 ms: 495 ms paused.
        assert_eq!(throttle_pause(ms(5), 99), ms(495));
        // Capped, and 100% counts as 99%.
        assert_eq!(throttle_pause(ms(100), 100), THROTTLE_MAX_PAUSE);
    }
}
