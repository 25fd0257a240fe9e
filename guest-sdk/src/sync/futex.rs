// SPDX-License-Identifier: Apache-2.0
//! Thin wrappers over the Linux futex system call.
//!
//! The SDK uses *shared* futexes (no `FUTEX_PRIVATE_FLAG`): the kernel keys
//! them by the page's backing object, so processes that map the same memfd
//! wait and wake each other on the same region word.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Result of a kernel futex wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelWait {
    /// Woken (or spuriously returned): re-check the word.
    Woken,
    /// The word did not hold the expected value.
    Changed,
    /// The timeout expired.
    TimedOut,
}

/// Sleeps while `*word == expected`, for at most `timeout` (None: forever).
pub(crate) fn wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> io::Result<KernelWait> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: word is a valid, aligned 32-bit atomic for the duration of the
    // call; ts_ptr is null or points to a live timespec; the other arguments
    // are unused by FUTEX_WAIT.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == 0 {
        return Ok(KernelWait::Woken);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(KernelWait::Changed),
        Some(libc::ETIMEDOUT) => Ok(KernelWait::TimedOut),
        Some(libc::EINTR) => Ok(KernelWait::Woken),
        _ => Err(err),
    }
}

/// Wakes up to `n` sleepers on `word`; returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: word is a valid, aligned 32-bit atomic; FUTEX_WAKE only uses
    // the address as a key.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn wait_on_other_value_returns_changed() {
        let w = AtomicU32::new(1);
        assert_eq!(wait(&w, 2, None).unwrap(), KernelWait::Changed);
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(1);
        let r = wait(&w, 1, Some(Duration::from_millis(5))).unwrap();
        assert_eq!(r, KernelWait::TimedOut);
    }

    #[test]
    fn wake_reaches_a_sleeping_thread() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                let _ = wait(&w2, 0, Some(Duration::from_secs(5)));
            }
        });
        std::thread::sleep(Duration::from_millis(10));
        w.store(1, Ordering::Release);
        wake(&w, 1);
        t.join().unwrap();
        assert_eq!(w.load(Ordering::Relaxed), 1);
    }
}
