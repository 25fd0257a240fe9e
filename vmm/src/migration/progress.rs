// SPDX-License-Identifier: Apache-2.0
//! Progress of a running migration (read by the API while the sender
//! writes it) and the final report.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// No migration has run.
    None,
    Connecting,
    /// Pre-copy: the guest runs while RAM is copied.
    PreCopy,
    /// The guest is paused; the last dirty pages and the state go.
    StopAndCopy,
    /// Waiting for the destination to restore and acknowledge.
    Committing,
    /// The destination runs; this side must stop.
    Completed,
    /// The migration failed; this side runs on.
    Failed,
    /// Cancelled by request; this side runs on.
    Cancelled,
    /// Receiving side: waiting for the source to connect.
    Listening,
    /// Receiving side: the RAM and the state are arriving.
    Receiving,
    /// Receiving side: the VM runs here.
    Received,
    /// Receiving side: the VM is restored but the source did not confirm
    /// the commit (`error` says why); it stays paused for the operator.
    Unconfirmed,
}

impl MigrationState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => MigrationState::Connecting,
            2 => MigrationState::PreCopy,
            3 => MigrationState::StopAndCopy,
            4 => MigrationState::Committing,
            5 => MigrationState::Completed,
            6 => MigrationState::Failed,
            7 => MigrationState::Cancelled,
            8 => MigrationState::Listening,
            9 => MigrationState::Receiving,
            10 => MigrationState::Received,
            11 => MigrationState::Unconfirmed,
            _ => MigrationState::None,
        }
    }

    /// True while a migration is under way.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            MigrationState::Connecting
                | MigrationState::PreCopy
                | MigrationState::StopAndCopy
                | MigrationState::Committing
                | MigrationState::Listening
                | MigrationState::Receiving
        )
    }
}

/// What a finished migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub total_ms: u64,
    /// From pausing the guest to `go` written after the destination's
    /// commit acknowledgement.
    pub downtime_ms: u64,
    /// Downtime in microseconds, for small values.
    pub downtime_us: u64,
    /// Dirty iterations after the first full pass.
    pub iterations: u32,
    pub bytes_total: u64,
    pub bytes_precopy: u64,
    pub bytes_stop_and_copy: u64,
    pub bytes_state: u64,
    pub pages_data: u64,
    pub pages_zero: u64,
    pub throttle_max: u8,
    /// The RAM was handed over as a file descriptor.
    pub local: bool,
}

/// A snapshot of the progress, as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    pub state: MigrationState,
    pub iteration: u32,
    pub ram_size: u64,
    pub bytes_sent: u64,
    /// Receiving side: the bytes read so far.
    #[serde(default)]
    pub bytes_received: u64,
    /// Link rate measured over the last iteration (bytes/s).
    pub rate_bps: u64,
    /// Rate at which the guest dirtied pages in the last iteration (bytes/s).
    pub dirty_rate_bps: u64,
    pub remaining_bytes: u64,
    pub expected_downtime_ms: u64,
    pub throttle_percent: u8,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<MigrationReport>,
}

/// Live counters of one migration, shared between the sender and readers.
#[derive(Debug)]
pub struct MigrationProgress {
    state: AtomicU8,
    iteration: AtomicU32,
    ram_size: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    rate_bps: AtomicU64,
    dirty_rate_bps: AtomicU64,
    remaining_bytes: AtomicU64,
    expected_downtime_ms: AtomicU64,
    throttle: AtomicU8,
    cancel: AtomicBool,
    started: Mutex<Option<Instant>>,
    finished_ms: AtomicU64,
    error: Mutex<Option<String>>,
    report: Mutex<Option<MigrationReport>>,
}

impl Default for MigrationProgress {
    fn default() -> Self {
        MigrationProgress {
            state: AtomicU8::new(0),
            iteration: AtomicU32::new(0),
            ram_size: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            rate_bps: AtomicU64::new(0),
            dirty_rate_bps: AtomicU64::new(0),
            remaining_bytes: AtomicU64::new(0),
            expected_downtime_ms: AtomicU64::new(0),
            throttle: AtomicU8::new(0),
            cancel: AtomicBool::new(false),
            started: Mutex::new(None),
            finished_ms: AtomicU64::new(0),
            error: Mutex::new(None),
            report: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MigrationProgress {
    /// Asks the running migration to stop (the source then resumes).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> MigrationState {
        MigrationState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Claims this progress for a new migration of `ram_size` bytes and
    /// resets the counters; false when a migration is already running.
    pub(crate) fn try_begin(&self, ram_size: u64) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if MigrationState::from_u8(cur).is_active() {
                return false;
            }
            match self.state.compare_exchange(
                cur,
                MigrationState::Connecting as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.reset(ram_size);
        true
    }

    /// Claims this progress for receiving a VM (listening for the source).
    pub(crate) fn begin_receive(&self) {
        self.set_state(MigrationState::Listening);
        self.reset(0);
    }

    fn reset(&self, ram_size: u64) {
        *lock(&self.started) = Some(Instant::now());
        *lock(&self.error) = None;
        *lock(&self.report) = None;
        self.cancel.store(false, Ordering::Relaxed);
        for c in [
            &self.bytes_sent,
            &self.bytes_received,
            &self.rate_bps,
            &self.dirty_rate_bps,
            &self.expected_downtime_ms,
            &self.finished_ms,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.iteration.store(0, Ordering::Relaxed);
        self.throttle.store(0, Ordering::Relaxed);
        self.ram_size.store(ram_size, Ordering::Relaxed);
        self.remaining_bytes.store(ram_size, Ordering::Relaxed);
    }

    /// Receiving side: the source's hello announced `ram_size` bytes.
    pub(crate) fn set_receiving(&self, ram_size: u64) {
        self.ram_size.store(ram_size, Ordering::Relaxed);
        self.set_state(MigrationState::Receiving);
    }

    pub(crate) fn set_bytes_received(&self, b: u64) {
        self.bytes_received.store(b, Ordering::Relaxed);
    }

    /// Receiving side: the VM is here; `unconfirmed`: why it waits paused.
    pub(crate) fn received(&self, mut report: MigrationReport, unconfirmed: Option<String>) {
        let ms = self.elapsed_ms();
        report.total_ms = ms;
        self.finished_ms.store(ms, Ordering::Relaxed);
        self.remaining_bytes.store(0, Ordering::Relaxed);
        *lock(&self.report) = Some(report);
        let state = if unconfirmed.is_some() {
            MigrationState::Unconfirmed
        } else {
            MigrationState::Received
        };
        *lock(&self.error) = unconfirmed;
        self.set_state(state);
    }

    pub(crate) fn set_state(&self, s: MigrationState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn set_bytes_sent(&self, b: u64) {
        self.bytes_sent.store(b, Ordering::Relaxed);
    }

    pub(crate) fn set_iteration(&self, i: u32) {
        self.iteration.store(i, Ordering::Relaxed);
    }

    pub(crate) fn set_rates(&self, rate: u64, dirty_rate: u64) {
        self.rate_bps.store(rate, Ordering::Relaxed);
        self.dirty_rate_bps.store(dirty_rate, Ordering::Relaxed);
    }

    /// The link rate measured so far in the running iteration.
    pub(crate) fn set_rate(&self, rate: u64) {
        self.rate_bps.store(rate, Ordering::Relaxed);
    }

    pub(crate) fn set_remaining(&self, bytes: u64, downtime_ms: u64) {
        self.remaining_bytes.store(bytes, Ordering::Relaxed);
        self.expected_downtime_ms
            .store(downtime_ms, Ordering::Relaxed);
    }

    pub(crate) fn set_throttle(&self, p: u8) {
        self.throttle.store(p, Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        lock(&self.started).map_or(0, |t| t.elapsed().as_millis() as u64)
    }

    pub(crate) fn complete(&self, report: MigrationReport) {
        self.finished_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        self.remaining_bytes.store(0, Ordering::Relaxed);
        *lock(&self.report) = Some(report);
        self.set_state(MigrationState::Completed);
    }

    pub(crate) fn fail(&self, error: String, cancelled: bool) {
        self.finished_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        *lock(&self.error) = Some(error);
        self.set_state(if cancelled {
            MigrationState::Cancelled
        } else {
            MigrationState::Failed
        });
    }

    /// The current status.
    pub fn status(&self) -> MigrationStatus {
        let state = self.state();
        let elapsed_ms = if state.is_active() {
            self.elapsed_ms()
        } else {
            self.finished_ms.load(Ordering::Relaxed)
        };
        MigrationStatus {
            state,
            iteration: self.iteration.load(Ordering::Relaxed),
            ram_size: self.ram_size.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            rate_bps: self.rate_bps.load(Ordering::Relaxed),
            dirty_rate_bps: self.dirty_rate_bps.load(Ordering::Relaxed),
            remaining_bytes: self.remaining_bytes.load(Ordering::Relaxed),
            expected_downtime_ms: self.expected_downtime_ms.load(Ordering::Relaxed),
            throttle_percent: self.throttle.load(Ordering::Relaxed),
            elapsed_ms,
            error: lock(&self.error).clone(),
            report: lock(&self.report).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_progress_reports_no_migration() {
        let p = MigrationProgress::default();
        let s = p.status();
        assert_eq!(s.state, MigrationState::None);
        assert!(!s.state.is_active());
    }

    #[test]
    fn failure_keeps_the_error_and_begin_clears_it() {
        let p = MigrationProgress::default();
        assert!(p.try_begin(100));
        p.fail("connection closed".into(), false);
        assert_eq!(p.status().state, MigrationState::Failed);
        assert_eq!(p.status().error.as_deref(), Some("connection closed"));
        assert!(p.try_begin(100));
        assert_eq!(p.status().error, None);
        assert_eq!(p.status().state, MigrationState::Connecting);
    }

    #[test]
    fn a_running_migration_cannot_be_claimed_twice() {
        let p = MigrationProgress::default();
        assert!(p.try_begin(1));
        assert!(!p.try_begin(1));
        p.complete(MigrationReport::default());
        assert!(p.try_begin(1));
    }

    #[test]
    fn a_receive_goes_from_listening_to_received_with_its_counters() {
        let p = MigrationProgress::default();
        p.begin_receive();
        assert_eq!(p.status().state, MigrationState::Listening);
        assert!(p.state().is_active());
        p.set_receiving(4096);
        p.set_bytes_received(100);
        p.set_iteration(1);
        let s = p.status();
        assert_eq!(
            (s.state, s.ram_size, s.bytes_received, s.iteration),
            (MigrationState::Receiving, 4096, 100, 1)
        );
        p.received(MigrationReport::default(), Some("no go".into()));
        let s = p.status();
        assert_eq!(s.state, MigrationState::Unconfirmed);
        assert_eq!(s.error.as_deref(), Some("no go"));
        assert!(s.report.is_some());
        assert!(!p.state().is_active());
        // The received VM may migrate on later.
        assert!(p.try_begin(4096));
        assert_eq!(p.status().bytes_received, 0);
    }

    #[test]
    fn status_serializes_with_kebab_case_state() {
        let p = MigrationProgress::default();
        assert!(p.try_begin(1));
        p.set_state(MigrationState::StopAndCopy);
        let json = serde_json::to_value(p.status()).unwrap();
        assert_eq!(json["state"], "stop-and-copy");
        assert!(json.get("error").is_none());
    }
}
