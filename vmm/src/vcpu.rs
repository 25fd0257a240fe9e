// SPDX-License-Identifier: Apache-2.0
//! vCPU threads: run a vCPU, hand its port and MMIO exits to the devices,
//! report power-off, reset and failures to the control loop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

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

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    id: u32,
    handle: Option<JoinHandle<()>>,
    pthread: libc::pthread_t,
}

/// Shared stop flag of all vCPUs of a VM.
#[derive(Debug, Default)]
pub struct RunState {
    stop: AtomicBool,
}

impl RunState {
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

impl VcpuThread {
    /// Starts vCPU `id` on a new thread.
    pub fn spawn(
        id: u32,
        mut vcpu: Box<dyn Vcpu>,
        handler: Arc<dyn ExitHandler>,
        run: Arc<RunState>,
        events: Sender<VmEvent>,
    ) -> std::io::Result<Self> {
        install_kick_handler();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                IMMEDIATE_EXIT.with(|f| f.set(vcpu.immediate_exit_flag()));
                let event = run_loop(id, vcpu.as_mut(), handler.as_ref(), &run);
                IMMEDIATE_EXIT.with(|f| f.set(std::ptr::null_mut()));
                if let Some(event) = event {
                    let _ = events.send(event);
                }
            })?;
        let pthread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle);
        Ok(VcpuThread {
            id,
            handle: Some(handle),
            pthread,
        })
    }

    /// The vCPU index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Interrupts `KVM_RUN` so the thread sees the stop flag.
    pub fn kick(&self) {
        if self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
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

/// Stops all vCPUs of a VM and waits for their threads.
pub fn stop_all(run: &RunState, threads: &mut [VcpuThread]) {
    run.stop.store(true, Ordering::Release);
    for t in threads.iter() {
        t.kick();
    }
    for t in threads.iter_mut() {
        // A vCPU can re-enter KVM_RUN between the store and the kick only
        // before it reads the flag; kicks go on until it has left.
        while t.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            t.kick();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        t.join();
    }
}

fn run_loop(
    id: u32,
    vcpu: &mut dyn Vcpu,
    handler: &dyn ExitHandler,
    run: &RunState,
) -> Option<VmEvent> {
    loop {
        if run.should_stop() {
            return None;
        }
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
    }
}
