// SPDX-License-Identifier: Apache-2.0
//! Terminating signals become control-loop events.
//!
//! SIGTERM, SIGINT and SIGHUP are blocked in every thread (threads inherit
//! the mask) and one thread takes them with `sigwait`.

use std::sync::mpsc::Sender;

use crate::VmEvent;

fn terminating_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the terminating signals in this thread (call before spawning
/// threads) and starts the thread that turns them into events.
pub fn forward_terminating_signals(events: Sender<VmEvent>) -> std::io::Result<()> {
    let set = terminating_set();
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is valid and `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0
                && events.send(VmEvent::Signal(sig)).is_err()
            {
                return;
            }
        })?;
    Ok(())
}
