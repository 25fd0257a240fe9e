// SPDX-License-Identifier: Apache-2.0
//! vCPU threads: run a vCPU, hand its port and MMIO exits to the devices,
//! report power-off, reset and failures to the control loop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hypervisor::{Vcpu, VmExit};

use crate::VmEvent;

/// Handles the exits that reach userspace. Implemented by the device manager.
pub trait ExitHandler: Send + Sync {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// This thread's vCPU `immediate_exit` byte, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    let flag = IMMEDIATE_EXIT.with(|f| f.get());
    if !flag.is_null() {
        // SAFETY: the pointer is this thread's vCPU kvm_run page, mapped for
        // as long as the vCPU thread runs (it is cleared before the vCPU drops).
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a handler that only touches a thread-local
        // and does a volatile byte store, both async-signal-safe. No SA_RESTART,
        // so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// A vCPU shared between its thread (which holds the lock while the guest
/// runs) and the control loop (which takes it while the vCPU is parked).
pub type SharedVcpu = Arc<Mutex<Box<dyn Vcpu>>>;

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    id: u32,
    vcpu: SharedVcpu,
    handle: Option<JoinHandle<()>>,
    pthread: libc::pthread_t,
}

#[derive(Debug, Default)]
struct Parking {
    paused: bool,
    parked: usize,
}

/// Run state shared by the vCPUs of a VM: stop and pause requests.
#[derive(Debug, Default)]
pub struct RunState {
    stop: AtomicBool,
    pause: AtomicBool,
    parking: Mutex<Parking>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RunState {
    /// A run state whose vCPUs park before they first run (see
    /// [`resume_all`]).
    pub fn paused() -> Self {
        let run = RunState::default();
        lock(&run.parking).paused = true;
        run.pause.store(true, Ordering::Release);
        run
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Parks the calling vCPU thread while a pause is requested.
    fn park_if_paused(&self) {
        if !self.pause.load(Ordering::Acquire) {
            return;
        }
        let mut p = lock(&self.parking);
        p.parked += 1;
        self.changed.notify_all();
        while p.paused && !self.should_stop() {
            p = self.changed.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        p.parked -= 1;
        self.changed.notify_all();
    }
}

impl VcpuThread {
    /// Starts vCPU `id` on a new thread.
    pub fn spawn(
        id: u32,
        vcpu: Box<dyn Vcpu>,
        handler: Arc<dyn ExitHandler>,
        run: Arc<RunState>,
        events: Sender<VmEvent>,
    ) -> std::io::Result<Self> {
        install_kick_handler();
        let vcpu: SharedVcpu = Arc::new(Mutex::new(vcpu));
        let shared = vcpu.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let flag = lock(&shared).immediate_exit_flag();
                IMMEDIATE_EXIT.with(|f| f.set(flag));
                let event = run_loop(id, &shared, handler.as_ref(), &run);
                IMMEDIATE_EXIT.with(|f| f.set(std::ptr::null_mut()));
                if let Some(event) = event {
                    let _ = events.send(event);
                }
            })?;
        let pthread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle);
        Ok(VcpuThread {
            id,
            vcpu,
            handle: Some(handle),
            pthread,
        })
    }

    /// The vCPU index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The vCPU; lock it only while the VM is paused, or it waits for the
    /// guest's next exit.
    pub fn vcpu(&self) -> &SharedVcpu {
        &self.vcpu
    }

    fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Interrupts `KVM_RUN` so the thread sees the stop or pause flag.
    pub fn kick(&self) {
        if self.is_running() {
            // SAFETY: the thread is alive (its handle is not finished and not
            // joined), so its pthread_t is valid.
            unsafe { libc::pthread_kill(self.pthread, kick_signal()) };
        }
    }

    /// Waits for the thread to end.
    pub fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Parks every vCPU outside `KVM_RUN`; returns once all are parked (or have
/// ended). Their state can then be read and written.
pub fn pause_all(run: &RunState, threads: &[VcpuThread]) {
    lock(&run.parking).paused = true;
    run.pause.store(true, Ordering::Release);
    let live = || threads.iter().filter(|t| t.is_running()).count();
    loop {
        for t in threads {
            t.kick();
        }
        let p = lock(&run.parking);
        if p.parked >= live() {
            return;
        }
        // Kicks repeat: one can land just before a vCPU enters KVM_RUN.
        let _ = run
            .changed
            .wait_timeout(p, Duration::from_millis(1))
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Lets parked vCPUs run again.
pub fn resume_all(run: &RunState) {
    let mut p = lock(&run.parking);
    p.paused = false;
    run.pause.store(false, Ordering::Release);
    run.changed.notify_all();
}

/// Stops all vCPUs of a VM and waits for their threads.
pub fn stop_all(run: &RunState, threads: &mut [VcpuThread]) {
    run.stop.store(true, Ordering::Release);
    {
        let _p = lock(&run.parking);
        run.changed.notify_all();
    }
    for t in threads.iter_mut() {
        // A vCPU can re-enter KVM_RUN between the store and the kick only
        // before it reads the flag; kicks go on until it has left.
        while t.is_running() {
            t.kick();
            std::thread::sleep(Duration::from_micros(200));
        }
        t.join();
    }
}

fn run_loop(
    id: u32,
    vcpu: &SharedVcpu,
    handler: &dyn ExitHandler,
    run: &RunState,
) -> Option<VmEvent> {
    loop {
        run.park_if_paused();
        if run.should_stop() {
            return None;
        }
        let mut guard = lock(vcpu);
        if let Some(event) = run_once(id, guard.as_mut(), handler) {
            return Some(event);
        }
    }
}

/// Runs the vCPU until one exit is handled; returns an event when the VM
/// cannot go on.
fn run_once(id: u32, vcpu: &mut dyn Vcpu, handler: &dyn ExitHandler) -> Option<VmEvent> {
    match vcpu.run() {
        Ok(VmExit::IoIn(port, data)) => handler.pio_read(port, data),
        Ok(VmExit::IoOut(port, data)) => handler.pio_write(port, data),
        Ok(VmExit::MmioRead(addr, data)) => handler.mmio_read(addr, data),
        Ok(VmExit::MmioWrite(addr, data)) => handler.mmio_write(addr, data),
        Ok(VmExit::Interrupted) => {
            // SAFETY: the flag points at this vCPU's kvm_run page.
            IMMEDIATE_EXIT.with(|f| unsafe { std::ptr::write_volatile(f.get(), 0) });
        }
        Ok(VmExit::EmulatedInt3) => {
            if let Err(e) = vcpu.inject_breakpoint() {
                return Some(VmEvent::Failed(format!("vCPU {id}: int3: {e}")));
            }
        }
        Ok(VmExit::Hlt) => {
            return Some(VmEvent::Failed(format!(
                "vCPU {id} halted with interrupts disabled"
            )))
        }
        Ok(VmExit::Shutdown) | Ok(VmExit::Reset) => return Some(VmEvent::Reset),
        Ok(VmExit::PowerOff) => return Some(VmEvent::PowerOff),
        Ok(VmExit::Failed(why)) => {
            let rip = vcpu.regs().map(|r| r.rip).unwrap_or_default();
            return Some(VmEvent::Failed(format!("vCPU {id} at rip {rip:#x}: {why}")));
        }
        Ok(VmExit::Other(reason)) => {
            return Some(VmEvent::Failed(format!(
                "vCPU {id}: unhandled KVM exit reason {reason}"
            )))
        }
        Err(e) => return Some(VmEvent::Failed(format!("vCPU {id}: {e}"))),
    }
    None
}
