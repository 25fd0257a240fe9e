// SPDX-License-Identifier: Apache-2.0
//! The sending side: pre-copy, auto-converge, stop-and-copy, commit.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::frame::{FrameReader, FrameWriter, Hello, Kind, Message, MAX_CHUNK_PAGES, PAGE_SIZE};
use super::page_pipe::{PageFrame, PagePipe};
use super::progress::{MigrationProgress, MigrationReport, MigrationState};
use super::ram::gather_pages;
use super::url::{MigrationUrl, Stream};
use super::{MigrationError, MigrationSource, SendOptions};
use crate::snapshot::memory::data_ranges;

/// First throttle step of auto-converge, then the increment and the cap.
const THROTTLE_INITIAL: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;
/// Link rate assumed until one is measured.
const DEFAULT_RATE: u64 = 256 << 20;
/// How long to wait for the destination's answer to the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes that block this long mean the destination is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs of set bits in a dirty bitmap, at most `max` pages each.
pub(crate) struct DirtyRuns<'a> {
    bitmap: &'a [u64],
    pages: u64,
    next: u64,
    max: u32,
}

impl<'a> DirtyRuns<'a> {
    pub(crate) fn new(bitmap: &'a [u64], pages: u64, max: u32) -> Self {
        DirtyRuns {
            bitmap,
            pages: pages.min(bitmap.len() as u64 * 64),
            next: 0,
            max,
        }
    }

    fn is_set(&self, page: u64) -> bool {
        self.bitmap[(page / 64) as usize] & (1 << (page % 64)) != 0
    }
}

impl Iterator for DirtyRuns<'_> {
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        // Skip clear bits a word at a time.
        while self.next < self.pages {
            let word = self.bitmap[(self.next / 64) as usize] >> (self.next % 64);
            if word == 0 {
                self.next = (self.next / 64 + 1) * 64;
                continue;
            }
            self.next += u64::from(word.trailing_zeros());
            break;
        }
        if self.next >= self.pages {
            return None;
        }
        let first = self.next;
        let mut n = 0u32;
        while self.next < self.pages && n < self.max && self.is_set(self.next) {
            self.next += 1;
            n += 1;
        }
        Some((first, n))
    }
}

/// Auto-converge: the throttle for the next iteration, when the guest
/// dirtied more than half of what the link carried in the same time (from
/// the second iteration on): 20%, then 10 points more each time, at most 99%.
fn next_throttle(current: u8, iteration: u32, dirty_rate: u64, link_rate: u64) -> Option<u8> {
    if iteration == 0 || dirty_rate <= link_rate / 2 || current >= THROTTLE_MAX {
        return None;
    }
    Some(if current == 0 {
        THROTTLE_INITIAL
    } else {
        current.saturating_add(THROTTLE_STEP).min(THROTTLE_MAX)
    })
}

/// Keeps the sending rate at or under a limit: after each write, waits
/// until the bytes written so far are due at that rate.
#[derive(Debug)]
struct Pacer {
    bytes_per_sec: u64,
    since: Instant,
    bytes: u64,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec,
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// How long to wait after `n` more bytes, at `now` (zero when
    /// unlimited or not ahead of the rate).
    fn after(&mut self, n: u64, now: Instant) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let elapsed = now.saturating_duration_since(self.since);
        let ahead = due.saturating_sub(elapsed);
        if ahead.is_zero() && elapsed > Duration::from_secs(1) {
            // Behind (or idle) for a while: start a new window rather than
            // letting a burst catch up on time that was not used.
            self.since = now;
            self.bytes = 0;
        }
        ahead
    }
}

/// Iterations after which a dirty set that fits the target is sent even if
/// it still shrinks.
const MAX_SHRINKING_ITERATIONS: u32 = 30;

/// Whether to pause the guest and copy the rest now. Only when the rest
/// fits the downtime target; but while the dirty set still shrinks to under
/// half per iteration, one more pre-copy pass (guest running) costs less
/// than sending it paused, so go on until it stops shrinking or is down to
/// a tenth of the target (1 ms at least).
fn stop_now(expected_ms: u64, target_ms: u64, prev_dirty: u64, dirty: u64, iteration: u32) -> bool {
    if expected_ms > target_ms {
        return false;
    }
    let small = expected_ms <= (target_ms / 10).max(1);
    let shrinking = dirty < prev_dirty / 2;
    small || !shrinking || iteration >= MAX_SHRINKING_ITERATIONS
}

fn count_pages(bitmap: &[u64]) -> u64 {
    bitmap.iter().map(|w| u64::from(w.count_ones())).sum()
}

struct Sender<'a> {
    source: &'a dyn MigrationSource,
    opts: &'a SendOptions,
    progress: &'a MigrationProgress,
    writer: FrameWriter<Stream>,
    reader: FrameReader<Stream>,
    start: Instant,
    deadline: Instant,
    ram_pages: u64,
    /// Frame buffers, kept from one pass to the next.
    buffers: Vec<Vec<u8>>,
    report: MigrationReport,
    paused: bool,
    dirty_log: bool,
    throttle: u8,
    pacer: Pacer,
}

impl Sender<'_> {
    fn check(&self) -> Result<(), MigrationError> {
        if self.progress.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        if Instant::now() > self.deadline {
            return Err(MigrationError::Timeout(self.opts.timeout_s));
        }
        Ok(())
    }

    /// A write failed: the destination may have said why before closing.
    fn send_error(&mut self, e: std::io::Error) -> MigrationError {
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(500)));
        if let Ok(Message::Abort(why)) = self.reader.next_message() {
            return MigrationError::Rejected(why);
        }
        MigrationError::Send(e)
    }

    fn wait_ack(&mut self, timeout: Duration) -> Result<(), MigrationError> {
        self.writer.flush().map_err(|e| self.send_error(e))?;
        let t = timeout.max(Duration::from_millis(1));
        let _ = self.reader.get_ref().set_read_timeout(Some(t));
        match self.reader.next_message() {
            Ok(Message::Ack) => Ok(()),
            Ok(Message::Abort(why)) => Err(MigrationError::Rejected(why)),
            Ok(other) => Err(MigrationError::Unexpected {
                expected: "an acknowledgement",
                got: format!("{other:?}").chars().take(80).collect(),
            }),
            Err(super::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(MigrationError::NoAnswer(t.as_secs()))
            }
            Err(super::FrameError::Closed) => Err(MigrationError::DestinationClosed),
            Err(e) => Err(e.into()),
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn hello(&mut self) -> Result<(), MigrationError> {
        let hello = Hello {
            ram_size: self.source.ram_size(),
            page_size: PAGE_SIZE as u32,
            local: self.opts.local,
            config: self.source.config(),
        };
        let payload = serde_json::to_vec(&hello).map_err(super::FrameError::Hello)?;
        if self.opts.local {
            let frame = self.writer.encode(Kind::Hello, &[&payload]);
            let unix =
                self.writer.get_ref().as_unix().ok_or_else(|| {
                    MigrationError::LocalNeedsUnix(self.opts.destination_url.clone())
                })?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.source.ram_fd());
            let sent = unix
                .send_with_fd(&frame[..], fd)
                .map_err(|e| MigrationError::Send(std::io::Error::from_raw_os_error(e.errno())))?;
            let mut rest = unix;
            rest.write_all(&frame[sent..])
                .map_err(|e| self.send_error(e))?;
        } else {
            self.writer
                .send(Kind::Hello, &[&payload])
                .map_err(|e| self.send_error(e))?;
        }
        self.wait_ack(HELLO_TIMEOUT.min(self.remaining()))
    }

    /// Sends the pages set in `bitmap`; returns the bytes written.
    fn send_pages(&mut self, bitmap: &[u64]) -> Result<u64, MigrationError> {
        let before = self.writer.bytes;
        let mut runs = DirtyRuns::new(bitmap, self.ram_pages, MAX_CHUNK_PAGES).peekable();
        if runs.peek().is_none() {
            return Ok(0);
        }
        // Frames go out from a thread of their own while the next ones are
        // gathered; nothing else is written until it is done.
        self.writer.flush().map_err(|e| self.send_error(e))?;
        let stream = self
            .writer
            .get_ref()
            .try_clone()
            .map_err(MigrationError::Send)?;
        let buffers = std::mem::take(&mut self.buffers);
        let pipe = PagePipe::start(stream, buffers).map_err(MigrationError::Thread)?;
        let fed = self.feed(&pipe, runs, before);
        let (written, buffers) = pipe.finish();
        self.buffers = buffers;
        match (fed, written) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(self.send_error(e)),
            (Ok(true), Ok(())) => Ok(self.writer.bytes - before),
            (Ok(false), Ok(())) => Err(MigrationError::Send(std::io::Error::other(
                "the page writer stopped",
            ))),
        }
    }

    /// Gathers the pages of `runs` into frames for `pipe`; `Ok(false)`:
    /// the pipe stopped (its error comes from `finish`).
    fn feed(
        &mut self,
        pipe: &PagePipe,
        runs: impl Iterator<Item = (u64, u32)>,
        before: u64,
    ) -> Result<bool, MigrationError> {
        let started = Instant::now();
        let ram = self.source.ram();
        for (first, n) in runs {
            self.check()?;
            let Some(mut data) = pipe.buffer() else {
                return Ok(false);
            };
            let mut zero_map = [0u8; (MAX_CHUNK_PAGES / 8) as usize];
            let map_len = (n as usize).div_ceil(8);
            let kept = gather_pages(&ram, first, n as usize, &mut data, &mut zero_map)
                .map_err(|e| MigrationError::Vm("read its RAM", e.into()))?;
            let data_pages = (kept / PAGE_SIZE) as u64;
            self.report.pages_data += data_pages;
            self.report.pages_zero += u64::from(n) - data_pages;
            let frame_start = self.writer.bytes;
            let (header, meta) =
                self.writer
                    .encode_pages(first, n, &zero_map[..map_len], &data[..kept]);
            let frame = PageFrame {
                header,
                meta,
                zero_map,
                map_len,
                data,
                data_len: kept,
            };
            if pipe.submit(frame).is_err() {
                return Ok(false);
            }
            self.progress.set_bytes_sent(self.writer.bytes);
            let wait = self
                .pacer
                .after(self.writer.bytes - frame_start, Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait.min(self.remaining()));
            }
            let took = started.elapsed();
            if took >= Duration::from_millis(50) {
                let sent = self.writer.bytes - before;
                self.progress
                    .set_rate((sent as f64 / took.as_secs_f64()) as u64);
            }
        }
        Ok(true)
    }

    /// The pages of the first pass: all of RAM but the holes of the memfd
    /// (never-touched pages are zero, and so is the destination's fresh RAM;
    /// a page written after this look is in the dirty log).
    fn first_pass_pages(&self, words: usize) -> Vec<u64> {
        let mut bitmap = vec![0u64; words];
        let page = PAGE_SIZE as u64;
        for (start, end) in data_ranges(self.source.ram_fd(), self.ram_pages * page) {
            for p in start / page..end.div_ceil(page).min(self.ram_pages) {
                bitmap[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
        bitmap
    }

    fn pause(&mut self) -> Result<Instant, MigrationError> {
        self.source
            .pause()
            .map_err(|e| MigrationError::Vm("pause", e))?;
        self.paused = true;
        Ok(Instant::now())
    }

    /// Sends the state, commits, waits for the acknowledgement and writes
    /// `go`: once that is written, the destination may run the VM.
    fn commit(&mut self, paused_at: Instant) -> Result<(), MigrationError> {
        self.progress.set_state(MigrationState::StopAndCopy);
        let state = self
            .source
            .save_state()
            .map_err(|e| MigrationError::Vm("save its state", e))?;
        let before = self.writer.bytes;
        self.writer
            .send(Kind::State, &[&state])
            .map_err(|e| self.send_error(e))?;
        self.report.bytes_state = self.writer.bytes - before;
        self.writer
            .send(Kind::Commit, &[])
            .map_err(|e| self.send_error(e))?;
        self.progress.set_state(MigrationState::Committing);
        self.wait_ack(self.remaining())?;
        // The destination holds the restored VM, not running, until `go`.
        // A write that fails cannot have delivered a whole `go` frame; and
        // nothing may follow it (an abort would push the rest of a `go`
        // still buffered here out after it), so the stream is shut at once.
        if let Err(e) = self
            .writer
            .send(Kind::Go, &[])
            .and_then(|()| self.writer.flush())
        {
            self.writer.get_ref().shutdown();
            return Err(MigrationError::Go(e));
        }
        let downtime = paused_at.elapsed();
        self.report.downtime_ms = downtime.as_millis() as u64;
        self.report.downtime_us = downtime.as_micros() as u64;
        Ok(())
    }

    fn run_local(&mut self) -> Result<(), MigrationError> {
        self.report.local = true;
        let paused_at = self.pause()?;
        self.commit(paused_at)
    }

    fn run_precopy(&mut self) -> Result<(), MigrationError> {
        self.source
            .start_dirty_log()
            .map_err(|e| MigrationError::Vm("start dirty logging", e))?;
        self.dirty_log = true;
        self.progress.set_state(MigrationState::PreCopy);
        let words = self.ram_pages.div_ceil(64) as usize;
        let mut bitmap = self.first_pass_pages(words);
        let mut rate = 0u64;
        let mut iteration = 0u32;
        let mut prev_dirty = u64::MAX;
        loop {
            self.progress.set_iteration(iteration);
            let t0 = Instant::now();
            let sent = self.send_pages(&bitmap)?;
            self.writer
                .send_iteration_end(iteration, count_pages(&bitmap))
                .map_err(|e| self.send_error(e))?;
            self.report.bytes_precopy += sent;
            let took = t0.elapsed().max(Duration::from_micros(1));
            if sent >= 4 << 20 || took >= Duration::from_millis(20) {
                rate = (sent as f64 / took.as_secs_f64()) as u64;
            }
            let link = if rate == 0 { DEFAULT_RATE } else { rate.max(1) };
            bitmap = self
                .source
                .take_dirty_bitmap()
                .map_err(|e| MigrationError::Vm("read the dirty log", e))?;
            bitmap.resize(words, 0);
            let dirty_bytes = count_pages(&bitmap) * PAGE_SIZE as u64;
            let dirty_rate = (dirty_bytes as f64 / took.as_secs_f64()) as u64;
            // Rounded up: a non-empty dirty set never "fits" a zero target.
            let expected_ms = dirty_bytes.saturating_mul(1000).div_ceil(link);
            self.progress.set_rates(rate, dirty_rate);
            self.progress.set_remaining(dirty_bytes, expected_ms);
            if stop_now(
                expected_ms,
                self.opts.downtime_ms,
                prev_dirty,
                dirty_bytes,
                iteration,
            ) {
                break;
            }
            prev_dirty = dirty_bytes;
            self.check()?;
            if let Some(t) = next_throttle(self.throttle, iteration, dirty_rate, link) {
                self.throttle = t;
                self.report.throttle_max = t;
                self.progress.set_throttle(t);
                self.source.throttle(t);
                log::info!("migration: auto-converge throttles the guest to {t}%");
            }
            iteration += 1;
        }
        self.report.iterations = iteration;
        let paused_at = self.pause()?;
        self.progress.set_state(MigrationState::StopAndCopy);
        let mut last = self
            .source
            .take_dirty_bitmap()
            .map_err(|e| MigrationError::Vm("read the dirty log", e))?;
        last.resize(words, 0);
        for (w, b) in last.iter_mut().zip(&bitmap) {
            *w |= b;
        }
        self.report.bytes_stop_and_copy = self.send_pages(&last)?;
        self.commit(paused_at)
    }

    fn run(&mut self) -> Result<(), MigrationError> {
        self.hello()?;
        if self.opts.local {
            self.run_local()
        } else {
            self.run_precopy()
        }
    }

    /// Puts the source back the way it was before the migration.
    fn roll_back(&mut self) {
        if self.throttle != 0 {
            self.source.throttle(0);
        }
        if self.dirty_log {
            self.source.stop_dirty_log();
        }
        if self.paused {
            if let Err(e) = self.source.resume() {
                log::error!("migration failed and the VM cannot resume: {e}");
            }
        }
    }
}

/// Migrates the VM behind `source` to `opts.destination_url`, updating
/// `progress` as it goes.
///
/// `Ok`: the destination committed and `go` was written (the destination
/// runs the VM, or, had `go` got lost on the way, holds it paused for the
/// operator); the source is left paused and must stop. `Err`: the source
/// runs on (it was resumed if it had been paused); the error says why the
/// migration failed.
pub fn send(
    source: &dyn MigrationSource,
    opts: &SendOptions,
    progress: &MigrationProgress,
) -> Result<MigrationReport, MigrationError> {
    if !progress.try_begin(source.ram_size()) {
        return Err(MigrationError::Busy);
    }
    send_claimed(source, opts, progress)
}

/// [`send`] once `progress` is claimed.
fn send_claimed(
    source: &dyn MigrationSource,
    opts: &SendOptions,
    progress: &MigrationProgress,
) -> Result<MigrationReport, MigrationError> {
    let result = send_inner(source, opts, progress);
    match &result {
        Ok(report) => progress.complete(report.clone()),
        Err(e) => progress.fail(
            super::error_chain(e),
            matches!(e, MigrationError::Cancelled),
        ),
    }
    result
}

fn send_inner(
    source: &dyn MigrationSource,
    opts: &SendOptions,
    progress: &MigrationProgress,
) -> Result<MigrationReport, MigrationError> {
    let start = Instant::now();
    let url = MigrationUrl::parse(&opts.destination_url)?;
    if opts.local && !url.is_unix() {
        return Err(MigrationError::LocalNeedsUnix(opts.destination_url.clone()));
    }
    let stream = url.connect()?;
    stream.tune();
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let read_half = stream.try_clone().map_err(MigrationError::Send)?;
    let ram_pages = source.ram_size() / PAGE_SIZE as u64;
    let mut s = Sender {
        source,
        opts,
        progress,
        writer: FrameWriter::new(stream),
        reader: FrameReader::new(read_half),
        start,
        deadline: start + Duration::from_secs(opts.timeout_s),
        ram_pages,
        buffers: Vec::new(),
        report: MigrationReport::default(),
        paused: false,
        dirty_log: false,
        throttle: 0,
        pacer: Pacer::new(opts.max_bandwidth),
    };
    match s.run() {
        Ok(()) => {
            if s.dirty_log {
                source.stop_dirty_log();
            }
            s.report.bytes_total = s.writer.bytes;
            s.report.total_ms = s.start.elapsed().as_millis() as u64;
            progress.set_bytes_sent(s.writer.bytes);
            Ok(s.report)
        }
        Err(e) => {
            // Tell the destination, if it still listens, then roll back.
            if !matches!(e, MigrationError::Go(_)) {
                let reason = super::error_chain(&e);
                let _ = s.writer.send(Kind::Abort, &[reason.as_bytes()]);
                let _ = s.writer.flush();
            }
            s.writer.get_ref().shutdown();
            s.roll_back();
            Err(e)
        }
    }
}

/// Runs [`send`] on a new thread and calls `done` with its result there.
/// Fails at once with [`MigrationError::Busy`] when `progress` belongs to a
/// running migration, so a second request cannot race the first.
pub fn spawn_send<F>(
    source: Arc<dyn MigrationSource + Send + Sync>,
    opts: SendOptions,
    progress: Arc<MigrationProgress>,
    done: F,
) -> Result<std::thread::JoinHandle<()>, MigrationError>
where
    F: FnOnce(Result<MigrationReport, MigrationError>) + Send + 'static,
{
    if !progress.try_begin(source.ram_size()) {
        return Err(MigrationError::Busy);
    }
    let p = progress.clone();
    std::thread::Builder::new()
        .name("migration-send".into())
        .spawn(move || done(send_claimed(source.as_ref(), &opts, &p)))
        .map_err(|e| {
            progress.fail("cannot start the migration thread".into(), false);
            MigrationError::Thread(e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_runs_split_at_clear_bits_and_at_the_cap() {
        // Pages 1,2,3 and 64..=69 set; cap of 4 pages per run.
        let bitmap = [0b1110u64, 0b11_1111];
        let runs: Vec<_> = DirtyRuns::new(&bitmap, 128, 4).collect();
        assert_eq!(runs, vec![(1, 3), (64, 4), (68, 2)]);
    }

    #[test]
    fn dirty_runs_stop_at_the_ram_end() {
        let bitmap = [!0u64];
        let runs: Vec<_> = DirtyRuns::new(&bitmap, 10, 256).collect();
        assert_eq!(runs, vec![(0, 10)]);
    }

    #[test]
    fn throttle_starts_at_20_and_climbs_to_99() {
        let mut t = 0;
        let mut steps = Vec::new();
        while let Some(next) = next_throttle(t, 1, 900, 1000) {
            steps.push(next);
            t = next;
        }
        assert_eq!(steps, vec![20, 30, 40, 50, 60, 70, 80, 90, 99]);
    }

    #[test]
    fn no_throttle_when_the_link_keeps_up_or_in_the_first_pass() {
        assert_eq!(next_throttle(0, 1, 500, 1000), None);
        assert_eq!(next_throttle(0, 0, 5000, 1000), None);
        assert_eq!(next_throttle(40, 3, 400, 1000), None);
    }

    #[test]
    fn stop_and_copy_waits_while_the_dirty_set_halves() {
        let mib = 1 << 20;
        // Over the target: never.
        assert!(!stop_now(120, 100, u64::MAX, 100 * mib, 0));
        // Fits, but the first pass left 77 MiB (90 ms): one more pass.
        assert!(!stop_now(90, 100, u64::MAX, 77 * mib, 0));
        // 77 MiB -> 12 MiB (15 ms): still halving, over a tenth of 100 ms.
        assert!(!stop_now(15, 100, 77 * mib, 12 * mib, 1));
        // 12 MiB -> 1 MiB (2 ms): small enough.
        assert!(stop_now(2, 100, 12 * mib, mib, 2));
        // Not shrinking any more (a guest rewriting the same pages).
        assert!(stop_now(40, 100, 16 * mib, 16 * mib, 3));
        // A zero target stops only with nothing left.
        assert!(stop_now(0, 0, mib, 0, 1));
        assert!(!stop_now(1, 0, mib, 4096, 1));
        // The cap.
        assert!(stop_now(50, 100, 100 * mib, mib, MAX_SHRINKING_ITERATIONS));
    }

    #[test]
    fn pacer_waits_until_the_bytes_are_due() {
        let mut p = Pacer::new(1 << 20);
        let t0 = p.since;
        // 512 KiB at 1 MiB/s are due half a second after the start.
        let ms = |n| Duration::from_millis(n);
        assert_eq!(p.after(512 << 10, t0 + ms(100)), ms(400));
        // On time: no wait.
        assert_eq!(p.after(0, t0 + ms(600)), Duration::ZERO);
        // Idle for seconds: the next burst is paced afresh, not let through.
        assert_eq!(p.after(0, t0 + ms(5000)), Duration::ZERO);
        assert_eq!(p.after(256 << 10, t0 + ms(5000)), ms(250));
        assert_eq!(Pacer::new(0).after(1 << 30, t0), Duration::ZERO);
    }

    #[test]
    fn empty_bitmap_has_no_runs() {
        assert_eq!(DirtyRuns::new(&[0, 0], 128, 256).count(), 0);
    }
}
