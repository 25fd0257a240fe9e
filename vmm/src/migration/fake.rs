// SPDX-License-Identifier: Apache-2.0
//! An in-memory VM for tests and benchmarks of migration: RAM in a memfd,
//! a dirty bitmap, and an optional "guest" thread that keeps writing pages.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use super::frame::PAGE_SIZE;
use super::{Hello, HookError, MigrationSource, MigrationTarget, RamView};

/// A fake source VM.
#[derive(Debug)]
pub struct FakeVm {
    ram: File,
    /// `ram`, mapped (what the sender reads).
    map: MmapRegion,
    size: u64,
    dirty: Vec<AtomicU64>,
    logging: AtomicBool,
    paused: AtomicBool,
    /// Held by the guest thread while it writes; `pause` takes it.
    running: Mutex<()>,
    throttle: AtomicU8,
    /// Every dirty bitmap has page 0 set (a guest that never converges).
    never_converge: AtomicBool,
    pauses: AtomicU32,
    resumes: AtomicU32,
    state: Vec<u8>,
}

impl FakeVm {
    /// A VM with `size` bytes of zeroed RAM.
    pub fn new(size: u64) -> std::io::Result<Arc<FakeVm>> {
        let ram = crate::memory::create_memfd("fake-vm", size)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let pages = size / PAGE_SIZE as u64;
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        let map = MmapRegion::from_file(FileOffset::new(ram.try_clone()?, 0), len)
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(FakeVm {
            ram,
            map,
            size,
            dirty: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            logging: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            running: Mutex::new(()),
            throttle: AtomicU8::new(0),
            never_converge: AtomicBool::new(false),
            pauses: AtomicU32::new(0),
            resumes: AtomicU32::new(0),
            state: b"{\"fake\":\"vm state\"}".to_vec(),
        }))
    }

    /// A guest write: changes RAM and marks the pages dirty.
    pub fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.ram.write_all_at(data, offset)?;
        let first = offset / PAGE_SIZE as u64;
        let last = (offset + data.len() as u64).saturating_sub(1) / PAGE_SIZE as u64;
        for page in first..=last {
            self.dirty[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
        Ok(())
    }

    /// Fills every `stride`-th page with a recognisable pattern.
    pub fn fill(&self, stride: u64) -> std::io::Result<()> {
        let mut page = vec![0u8; PAGE_SIZE];
        let mut i = 0;
        while i < self.size / PAGE_SIZE as u64 {
            for (j, b) in page.iter_mut().enumerate() {
                *b = (i as usize * 31 + j) as u8 | 1;
            }
            self.write(i * PAGE_SIZE as u64, &page)?;
            i += stride.max(1);
        }
        Ok(())
    }

    /// All of RAM.
    pub fn ram_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; self.size as usize];
        self.ram.read_exact_at(&mut v, 0)?;
        Ok(v)
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// How often the VM was paused and resumed.
    pub fn pause_resume_counts(&self) -> (u32, u32) {
        (
            self.pauses.load(Ordering::Relaxed),
            self.resumes.load(Ordering::Relaxed),
        )
    }

    /// Makes every dirty bitmap hold at least page 0, so that pre-copy with
    /// a zero downtime target never converges, whatever the scheduling (for
    /// cancel and timeout tests).
    pub fn never_converge(&self) {
        self.never_converge.store(true, Ordering::Relaxed);
    }

    pub fn throttle_percent(&self) -> u8 {
        self.throttle.load(Ordering::Relaxed)
    }

    /// Starts a guest thread rewriting pages `first..first + count` in
    /// turn, at most `pages_per_sec` (None = as fast as it can), slowed by
    /// the throttle. It stops when the returned handle drops.
    pub fn start_dirtier(
        self: &Arc<Self>,
        first: u64,
        count: u64,
        pages_per_sec: Option<u64>,
    ) -> Dirtier {
        let vm = self.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let written = Arc::new(AtomicU64::new(0));
        let written2 = written.clone();
        let thread = std::thread::spawn(move || {
            let mut page = vec![0u8; PAGE_SIZE];
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let batch_start = Instant::now();
                {
                    let _running = vm.running.lock().unwrap_or_else(|e| e.into_inner());
                    if vm.is_paused() {
                        drop(_running);
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    for _ in 0..16 {
                        n += 1;
                        page[..8].copy_from_slice(&n.to_le_bytes());
                        page[PAGE_SIZE - 8..].copy_from_slice(&n.to_le_bytes());
                        let p = first + n % count.max(1);
                        let _ = vm.write(p * PAGE_SIZE as u64, &page);
                    }
                }
                written2.store(n, Ordering::Relaxed);
                // The throttle keeps the guest from running t% of the time.
                let t = vm.throttle_percent().min(99) as u32;
                match pages_per_sec {
                    None => {
                        if t > 0 {
                            std::thread::sleep(batch_start.elapsed() * t / (100 - t));
                        }
                    }
                    Some(rate) => {
                        // 16 pages per batch at `rate`, slowed by the throttle.
                        let batch = Duration::from_secs_f64(16.0 / rate.max(1) as f64);
                        std::thread::sleep(batch * 100 / (100 - t));
                    }
                }
            }
        });
        Dirtier {
            stop,
            written,
            thread: Some(thread),
        }
    }
}

/// A running fake guest writer.
#[derive(Debug)]
pub struct Dirtier {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dirtier {
    /// Pages written so far.
    pub fn pages_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for Dirtier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MigrationSource for FakeVm {
    fn ram_size(&self) -> u64 {
        self.size
    }

    fn ram_fd(&self) -> BorrowedFd<'_> {
        self.ram.as_fd()
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({"memory": self.size, "cpus": 1})
    }

    fn ram(&self) -> RamView<'_> {
        RamView::new(vec![(0, self.map.as_volatile_slice())])
    }

    fn start_dirty_log(&self) -> Result<(), HookError> {
        for w in &self.dirty {
            w.store(0, Ordering::Relaxed);
        }
        self.logging.store(true, Ordering::Release);
        Ok(())
    }

    fn stop_dirty_log(&self) {
        self.logging.store(false, Ordering::Release);
    }

    fn take_dirty_bitmap(&self) -> Result<Vec<u64>, HookError> {
        let mut map: Vec<u64> = self
            .dirty
            .iter()
            .map(|w| w.swap(0, Ordering::AcqRel))
            .collect();
        if self.never_converge.load(Ordering::Relaxed) {
            if let Some(w) = map.first_mut() {
                *w |= 1;
            }
        }
        Ok(map)
    }

    fn pause(&self) -> Result<(), HookError> {
        self.paused.store(true, Ordering::Release);
        // Wait for a write in flight.
        drop(self.running.lock().unwrap_or_else(|e| e.into_inner()));
        self.pauses.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn resume(&self) -> Result<(), HookError> {
        self.paused.store(false, Ordering::Release);
        self.resumes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn throttle(&self, percent: u8) {
        self.throttle.store(percent, Ordering::Relaxed);
    }

    fn save_state(&self) -> Result<Vec<u8>, HookError> {
        Ok(self.state.clone())
    }
}

/// A fake destination VM.
#[derive(Debug, Default)]
pub struct FakeTarget {
    pub ram: Option<File>,
    pub ram_size: u64,
    pub config: Option<serde_json::Value>,
    pub state: Option<Vec<u8>>,
    pub started: bool,
    /// Fail `restore_state` (to test a destination that rejects the state).
    pub fail_restore: bool,
}

impl FakeTarget {
    /// All of RAM.
    pub fn ram_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; self.ram_size as usize];
        if let Some(f) = &self.ram {
            f.read_exact_at(&mut v, 0)?;
        }
        Ok(v)
    }
}

impl MigrationTarget for FakeTarget {
    fn prepare(&mut self, hello: &Hello) -> Result<(), HookError> {
        self.ram_size = hello.ram_size;
        self.config = Some(hello.config.clone());
        if !hello.local {
            self.ram = Some(
                crate::memory::create_memfd("fake-target", hello.ram_size)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(())
    }

    fn write_ram(&mut self, offset: u64, data: &[u8]) -> Result<(), HookError> {
        let ram = self.ram.as_ref().ok_or("no RAM")?;
        Ok(ram.write_all_at(data, offset)?)
    }

    fn zero_ram(&mut self, offset: u64, len: u64) -> Result<(), HookError> {
        let ram = self.ram.as_ref().ok_or("no RAM")?;
        Ok(crate::snapshot::memory::punch_hole(ram, offset, len)?)
    }

    fn ram_file(&self) -> Option<File> {
        self.ram.as_ref().and_then(|f| f.try_clone().ok())
    }

    fn adopt_ram_fd(&mut self, fd: OwnedFd, size: u64) -> Result<(), HookError> {
        self.ram = Some(File::from(fd));
        self.ram_size = size;
        Ok(())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), HookError> {
        if self.fail_restore {
            return Err("the state does not fit this VM".into());
        }
        self.state = Some(state.to_vec());
        Ok(())
    }

    fn start(&mut self) -> Result<(), HookError> {
        self.started = true;
        Ok(())
    }
}
