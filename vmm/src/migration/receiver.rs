// SPDX-License-Identifier: Apache-2.0
//! The receiving side: check every frame, fill RAM, restore, commit.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::frame::{decode, FrameReader, FrameWriter, Kind, Message, Pages, HEADER_LEN, PAGE_SIZE};
use super::progress::{MigrationProgress, MigrationReport};
use super::ram_writer::{Op, RamWriter};
use super::url::Stream;
use super::{MigrationError, MigrationTarget};

/// A silent sender for this long means it is gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What the receiver got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveReport {
    pub bytes: u64,
    pub pages_data: u64,
    pub pages_zero: u64,
    /// Iteration markers seen (the first full pass counts).
    pub iterations: u32,
    pub local: bool,
    /// The VM was restored and the commit acknowledged, but the source's
    /// `go` did not arrive (why): the VM was not started. The source may
    /// have exited (its `go` got lost) or run on (it never read the
    /// acknowledgement); the caller keeps the VM paused, since it may be
    /// the only copy of the guest now, and leaves the choice to the operator.
    pub unconfirmed: Option<String>,
}

/// Reads the first frame header with recvmsg, so a file descriptor sent
/// with it (same-host migration) is not lost.
fn read_first_header(stream: &mut Stream) -> Result<(Vec<u8>, Option<OwnedFd>), MigrationError> {
    let mut head = vec![0u8; HEADER_LEN];
    let mut got = 0;
    let mut fd = None;
    match stream.as_unix() {
        Some(unix) => {
            while got < HEADER_LEN {
                let (n, file) = unix.recv_with_fd(&mut head[got..]).map_err(|e| {
                    MigrationError::Frame(super::FrameError::Io(std::io::Error::from_raw_os_error(
                        e.errno(),
                    )))
                })?;
                if let Some(f) = file {
                    fd = Some(OwnedFd::from(f));
                }
                if n == 0 {
                    return Err(super::FrameError::Closed.into());
                }
                got += n;
            }
        }
        None => stream
            .read_exact(&mut head)
            .map_err(super::FrameError::from)?,
    }
    Ok((head, fd))
}

/// Receives one VM over `stream` into `target`; the target is started
/// when the source's `go` follows the commit acknowledgement. On error, the
/// source is told why (best effort) and nothing was started; `Ok` with
/// [`ReceiveReport::unconfirmed`] set: restored, not started, no `go`.
pub fn receive(
    stream: Stream,
    target: &mut dyn MigrationTarget,
) -> Result<ReceiveReport, MigrationError> {
    receive_with_progress(stream, target, &MigrationProgress::default())
}

/// [`receive`], telling `progress` how it goes (the destination's
/// `vm.migration-status`): `receiving` once the hello is accepted, with the
/// bytes and iterations so far, then `received` (started), `unconfirmed`
/// (restored, no `go`) or `failed`.
pub fn receive_with_progress(
    mut stream: Stream,
    target: &mut dyn MigrationTarget,
    progress: &MigrationProgress,
) -> Result<ReceiveReport, MigrationError> {
    stream.tune();
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let (head, fd) = read_first_header(&mut stream)?;
    let write_half = stream.try_clone().map_err(MigrationError::Send)?;
    let reader = FrameReader::with_prefix(stream, head);
    let writer = FrameWriter::new(write_half);
    receive_frames_with(reader, writer, fd, target, progress)
}

/// The receiver state machine over any byte stream (also the fuzz entry).
pub(crate) fn receive_frames<R: Read, W: Write>(
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    fd: Option<OwnedFd>,
    target: &mut dyn MigrationTarget,
) -> Result<ReceiveReport, MigrationError> {
    receive_frames_with(reader, writer, fd, target, &MigrationProgress::default())
}

fn receive_frames_with<R: Read, W: Write>(
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    fd: Option<OwnedFd>,
    target: &mut dyn MigrationTarget,
    progress: &MigrationProgress,
) -> Result<ReceiveReport, MigrationError> {
    let mut r = Receiver {
        target,
        report: ReceiveReport::default(),
        ram_size: 0,
        state_seen: false,
        progress,
    };
    match r.run(&mut reader, &mut writer, fd) {
        Ok(()) => {
            r.report.bytes = reader.bytes;
            progress.received(
                MigrationReport {
                    bytes_total: r.report.bytes,
                    pages_data: r.report.pages_data,
                    pages_zero: r.report.pages_zero,
                    iterations: r.report.iterations,
                    local: r.report.local,
                    ..MigrationReport::default()
                },
                r.report.unconfirmed.clone(),
            );
            Ok(r.report)
        }
        Err(e) => {
            let why = super::error_chain(&e);
            if !matches!(e, MigrationError::Aborted(_)) {
                let _ = writer.send(Kind::Abort, &[why.as_bytes()]);
                let _ = writer.flush();
            }
            progress.fail(why, false);
            Err(e)
        }
    }
}

struct Receiver<'a> {
    target: &'a mut dyn MigrationTarget,
    report: ReceiveReport,
    ram_size: u64,
    state_seen: bool,
    progress: &'a MigrationProgress,
}

fn unexpected(expected: &'static str, got: &Message<'_>) -> MigrationError {
    let got = match got {
        Message::Hello(_) => "a hello",
        Message::Ack => "an acknowledgement",
        Message::Pages(_) => "pages",
        Message::IterationEnd { .. } => "an iteration end",
        Message::State(_) => "the VM state",
        Message::Commit => "a commit",
        Message::Abort(_) => "an abort",
        Message::Go => "a go",
    };
    MigrationError::Unexpected {
        expected,
        got: got.to_string(),
    }
}

/// Why the VM waits for the operator: `e` came instead of `go`.
fn no_go(e: &MigrationError) -> String {
    format!(
        "the source did not confirm the commit ({})",
        super::error_chain(e)
    )
}

impl Receiver<'_> {
    fn run<R: Read, W: Write>(
        &mut self,
        reader: &mut FrameReader<R>,
        writer: &mut FrameWriter<W>,
        fd: Option<OwnedFd>,
    ) -> Result<(), MigrationError> {
        let hello = match reader.next_message()? {
            Message::Hello(h) => h,
            Message::Abort(why) => return Err(MigrationError::Aborted(why)),
            other => return Err(unexpected("a hello", &other)),
        };
        if hello.page_size as usize != PAGE_SIZE {
            return Err(MigrationError::PageSize(hello.page_size));
        }
        if hello.ram_size == 0 || hello.ram_size % PAGE_SIZE as u64 != 0 {
            return Err(MigrationError::RamSize(hello.ram_size));
        }
        self.ram_size = hello.ram_size;
        self.progress.set_receiving(hello.ram_size);
        self.target
            .prepare(&hello)
            .map_err(|e| MigrationError::Vm("be created", e))?;
        if hello.local {
            let fd = fd.ok_or(MigrationError::NoRamFd)?;
            // A shorter file would fault the guest past its end.
            let file = std::fs::File::from(fd);
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < hello.ram_size {
                return Err(MigrationError::RamFdTooSmall {
                    len,
                    ram_size: hello.ram_size,
                });
            }
            let fd = OwnedFd::from(file);
            self.target
                .adopt_ram_fd(fd, hello.ram_size)
                .map_err(|e| MigrationError::Vm("take over the RAM", e))?;
            self.report.local = true;
        }
        writer.send(Kind::Ack, &[]).map_err(MigrationError::Send)?;
        writer.flush().map_err(MigrationError::Send)?;

        let state = self.receive_ram(reader, hello.local)?;
        self.target
            .restore_state(&state)
            .map_err(|e| MigrationError::Vm("restore its state", e))?;
        writer.send(Kind::Ack, &[]).map_err(MigrationError::Send)?;
        writer.flush().map_err(MigrationError::Send)?;
        // From here the source may have stopped for good: only `go` lets
        // this side run the VM, only an abort lets it drop the VM.
        match reader.next_message() {
            Ok(Message::Go) => self
                .target
                .start()
                .map_err(|e| MigrationError::Vm("start", e)),
            Ok(Message::Abort(why)) => Err(MigrationError::Aborted(why)),
            Ok(other) => {
                self.report.unconfirmed = Some(no_go(&unexpected("go", &other)));
                Ok(())
            }
            Err(e) => {
                self.report.unconfirmed = Some(no_go(&MigrationError::Frame(e)));
                Ok(())
            }
        }
    }

    /// Reads pages (into RAM), iteration ends and the state until the
    /// commit; returns the state once all RAM is written.
    fn receive_ram<R: Read>(
        &mut self,
        reader: &mut FrameReader<R>,
        local: bool,
    ) -> Result<Vec<u8>, MigrationError> {
        // Pages go to a writer thread when the target has a RAM file.
        let mut ram_writer = match self.target.ram_file() {
            Some(file) if !local => Some(RamWriter::start(file)?),
            _ => None,
        };
        let mut state = Vec::new();
        // Until the first iteration ends, every page arrives once and the
        // target's RAM is fresh: zero pages need no write.
        let mut first_pass = !local;
        let mut own_buf = Vec::new();
        loop {
            let mut buf = match &ram_writer {
                Some(w) => w.buffer(),
                None => std::mem::take(&mut own_buf),
            };
            let kind = reader.next_frame_into(&mut buf)?;
            self.progress.set_bytes_received(reader.bytes);
            let ops = match decode(kind, &buf)? {
                Message::Pages(p) if !local => Some(self.page_ops(&p, first_pass)?),
                Message::IterationEnd { .. } => {
                    self.report.iterations += 1;
                    self.progress.set_iteration(self.report.iterations);
                    first_pass = false;
                    None
                }
                Message::State(s) => {
                    state.clear();
                    state.extend_from_slice(s);
                    self.state_seen = true;
                    None
                }
                Message::Commit => {
                    if !self.state_seen {
                        return Err(MigrationError::CommitWithoutState);
                    }
                    if let Some(w) = ram_writer.take() {
                        w.finish()?;
                    }
                    return Ok(state);
                }
                Message::Abort(why) => return Err(MigrationError::Aborted(why)),
                other => return Err(unexpected("pages, state or commit", &other)),
            };
            match (&mut ram_writer, ops) {
                (Some(w), Some(ops)) => w.submit(buf, ops)?,
                (Some(w), None) => w.recycle(buf),
                (None, Some(ops)) => {
                    self.apply_with_hooks(&buf, &ops)?;
                    own_buf = buf;
                }
                (None, None) => own_buf = buf,
            }
        }
    }

    /// What a pages frame changes in RAM, after checking its range.
    fn page_ops(&mut self, p: &Pages<'_>, fresh_ram: bool) -> Result<Vec<Op>, MigrationError> {
        let end = p.first_page.saturating_add(u64::from(p.count));
        if end.saturating_mul(PAGE_SIZE as u64) > self.ram_size {
            return Err(MigrationError::PageOutOfRange {
                first: p.first_page,
                end,
                ram_size: self.ram_size,
            });
        }
        let mut ops = Vec::new();
        for (first, n, data) in p.runs() {
            let offset = first * PAGE_SIZE as u64;
            let n = u64::from(n);
            match data {
                Some(range) => {
                    self.report.pages_data += n;
                    ops.push(Op::Write { offset, range });
                }
                None => {
                    self.report.pages_zero += n;
                    if !fresh_ram {
                        ops.push(Op::Zero {
                            offset,
                            len: n * PAGE_SIZE as u64,
                        });
                    }
                }
            }
        }
        Ok(ops)
    }

    /// Applies `ops` through the target's hooks (a target without a file).
    fn apply_with_hooks(&mut self, buf: &[u8], ops: &[Op]) -> Result<(), MigrationError> {
        for op in ops {
            let res = match op {
                Op::Write { offset, range } => match buf.get(range.clone()) {
                    Some(data) => self.target.write_ram(*offset, data),
                    None => Err("page range outside the frame".into()),
                },
                Op::Zero { offset, len } => self.target.zero_ram(*offset, *len),
            };
            res.map_err(|e| MigrationError::Vm("write its RAM", e))?;
        }
        Ok(())
    }
}

/// A target that keeps nothing, for the fuzzer: RAM up to 64 MiB accepted.
struct NullTarget;

impl MigrationTarget for NullTarget {
    fn prepare(&mut self, hello: &super::Hello) -> Result<(), super::HookError> {
        if hello.ram_size > 64 << 20 {
            return Err("RAM too large for the fuzzer".into());
        }
        Ok(())
    }
    fn write_ram(&mut self, _: u64, _: &[u8]) -> Result<(), super::HookError> {
        Ok(())
    }
    fn zero_ram(&mut self, _: u64, _: u64) -> Result<(), super::HookError> {
        Ok(())
    }
    fn ram_file(&self) -> Option<std::fs::File> {
        None
    }
    fn adopt_ram_fd(&mut self, _: OwnedFd, _: u64) -> Result<(), super::HookError> {
        Ok(())
    }
    fn restore_state(&mut self, _: &[u8]) -> Result<(), super::HookError> {
        Ok(())
    }
    fn start(&mut self) -> Result<(), super::HookError> {
        Ok(())
    }
}

/// Fuzz entry point: runs the receiver over `data` as the incoming stream.
/// Never panics.
pub fn fuzz_stream(data: &[u8]) {
    let reader = FrameReader::new(data);
    let writer = FrameWriter::new(std::io::sink());
    let fd = if data.first().is_some_and(|b| b & 1 == 1) {
        // A stand-in for a passed descriptor: /dev/null.
        std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
    } else {
        None
    };
    let _ = receive_frames(reader, writer, fd, &mut NullTarget);
}
