// SPDX-License-Identifier: Apache-2.0
//! The receiving side: check every frame, fill RAM, restore, commit.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::frame::{FrameReader, FrameWriter, Kind, Message, HEADER_LEN, PAGE_SIZE};
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
/// after the commit acknowledgement went out. On error, the source is told
/// why (best effort) and nothing was started.
pub fn receive(
    mut stream: Stream,
    target: &mut dyn MigrationTarget,
) -> Result<ReceiveReport, MigrationError> {
    stream.tune();
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let (head, fd) = read_first_header(&mut stream)?;
    let write_half = stream.try_clone().map_err(MigrationError::Send)?;
    let reader = FrameReader::with_prefix(stream, head);
    let writer = FrameWriter::new(write_half);
    receive_frames(reader, writer, fd, target)
}

/// The receiver state machine over any byte stream (also the fuzz entry).
pub(crate) fn receive_frames<R: Read, W: Write>(
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    fd: Option<OwnedFd>,
    target: &mut dyn MigrationTarget,
) -> Result<ReceiveReport, MigrationError> {
    let mut r = Receiver {
        target,
        report: ReceiveReport::default(),
        ram_size: 0,
        state_seen: false,
    };
    match r.run(&mut reader, &mut writer, fd) {
        Ok(()) => {
            r.report.bytes = reader.bytes;
            Ok(r.report)
        }
        Err(e) => {
            if !matches!(e, MigrationError::Aborted(_)) {
                let why = super::error_chain(&e);
                let _ = writer.send(Kind::Abort, &[why.as_bytes()]);
                let _ = writer.flush();
            }
            Err(e)
        }
    }
}

struct Receiver<'a> {
    target: &'a mut dyn MigrationTarget,
    report: ReceiveReport,
    ram_size: u64,
    state_seen: bool,
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
    };
    MigrationError::Unexpected {
        expected,
        got: got.to_string(),
    }
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

        let mut state = Vec::new();
        // Until the first iteration ends, every page arrives once and the
        // target's RAM is fresh: zero pages need no write.
        let mut first_pass = !hello.local;
        loop {
            match reader.next_message()? {
                Message::Pages(p) if !hello.local => {
                    let end = p.first_page.saturating_add(u64::from(p.count));
                    if end.saturating_mul(PAGE_SIZE as u64) > self.ram_size {
                        return Err(MigrationError::PageOutOfRange {
                            first: p.first_page,
                            end,
                            ram_size: self.ram_size,
                        });
                    }
                    self.write_pages(&p, first_pass)?;
                }
                Message::IterationEnd { .. } => {
                    self.report.iterations += 1;
                    first_pass = false;
                }
                Message::State(s) => {
                    state.clear();
                    state.extend_from_slice(s);
                    self.state_seen = true;
                }
                Message::Commit => {
                    if !self.state_seen {
                        return Err(MigrationError::CommitWithoutState);
                    }
                    self.target
                        .restore_state(&state)
                        .map_err(|e| MigrationError::Vm("restore its state", e))?;
                    writer.send(Kind::Ack, &[]).map_err(MigrationError::Send)?;
                    writer.flush().map_err(MigrationError::Send)?;
                    self.target
                        .start()
                        .map_err(|e| MigrationError::Vm("start", e))?;
                    return Ok(());
                }
                Message::Abort(why) => return Err(MigrationError::Aborted(why)),
                other => return Err(unexpected("pages, state or commit", &other)),
            }
        }
    }

    fn write_pages(
        &mut self,
        p: &super::frame::Pages<'_>,
        fresh_ram: bool,
    ) -> Result<(), MigrationError> {
        for (first, n, data) in p.runs() {
            let offset = first * PAGE_SIZE as u64;
            let n = u64::from(n);
            match data {
                Some(d) => {
                    self.report.pages_data += n;
                    self.target
                        .write_ram(offset, d)
                        .map_err(|e| MigrationError::Vm("write its RAM", e))?;
                }
                None if fresh_ram => self.report.pages_zero += n,
                None => {
                    self.report.pages_zero += n;
                    self.target
                        .zero_ram(offset, n * PAGE_SIZE as u64)
                        .map_err(|e| MigrationError::Vm("write its RAM", e))?;
                }
            }
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
