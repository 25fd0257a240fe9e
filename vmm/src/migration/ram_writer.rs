// SPDX-License-Identifier: Apache-2.0
//! The receiver's RAM writer: a thread that writes page frames into the
//! target's RAM file while the receiving thread reads and checks the next
//! ones, so reading the socket and filling RAM overlap.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use super::MigrationError;

/// Frame buffers in flight between the two threads (each up to 1 MiB).
const BUFFERS: usize = 4;

/// One change to RAM, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Write `buf[range]` at RAM offset `offset`.
    Write { offset: u64, range: Range<usize> },
    /// Make `len` bytes at `offset` zero (a hole in the memfd).
    Zero { offset: u64, len: u64 },
}

struct Job {
    buf: Vec<u8>,
    ops: Vec<Op>,
}

/// Applies `ops` (with data from `buf`) to `file`.
pub(crate) fn apply(file: &File, buf: &[u8], ops: &[Op]) -> std::io::Result<()> {
    for op in ops {
        match op {
            Op::Write { offset, range } => {
                let data = buf
                    .get(range.clone())
                    .ok_or_else(|| std::io::Error::other("page range outside the frame"))?;
                file.write_all_at(data, *offset)?;
            }
            Op::Zero { offset, len } => crate::snapshot::memory::punch_hole(file, *offset, *len)?,
        }
    }
    Ok(())
}

/// The writer thread and the buffers it hands back.
#[derive(Debug)]
pub(crate) struct RamWriter {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RamWriter {
    /// Starts a writer on `file` (the target's RAM, file offset = RAM offset).
    pub(crate) fn start(file: File) -> Result<Self, MigrationError> {
        let (jobs, rx) = sync_channel::<Job>(BUFFERS);
        let (free_tx, free) = channel();
        for _ in 0..BUFFERS {
            let _ = free_tx.send(Vec::new());
        }
        let thread = std::thread::Builder::new()
            .name("migration-ram".into())
            .spawn(move || write_jobs(&file, &rx, &free_tx))
            .map_err(MigrationError::Thread)?;
        Ok(RamWriter {
            jobs: Some(jobs),
            free,
            thread: Some(thread),
        })
    }

    /// A buffer to read the next frame into (waits while all are in flight).
    pub(crate) fn buffer(&self) -> Vec<u8> {
        // A writer that stopped returns none: its error comes with the next
        // submit or finish.
        self.free.recv().unwrap_or_default()
    }

    /// Hands a buffer that carried no pages back.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        if let Some(jobs) = &self.jobs {
            // Zero ops: the writer just returns it.
            let _ = jobs.send(Job {
                buf,
                ops: Vec::new(),
            });
        }
    }

    /// Queues `ops` on the data in `buf`.
    pub(crate) fn submit(&mut self, buf: Vec<u8>, ops: Vec<Op>) -> Result<(), MigrationError> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(Job { buf, ops }).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The writer stopped on an error: report it.
            self.stop().and(Err(MigrationError::Vm(
                "write its RAM",
                "the RAM writer stopped".into(),
            )))
        }
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(MigrationError::Vm("write its RAM", e.into())),
            Some(Err(_)) => Err(MigrationError::Vm(
                "write its RAM",
                "the RAM writer panicked".into(),
            )),
        }
    }

    /// Waits until everything queued is in RAM.
    pub(crate) fn finish(mut self) -> Result<(), MigrationError> {
        self.stop()
    }
}

impl Drop for RamWriter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_jobs(file: &File, jobs: &Receiver<Job>, free: &Sender<Vec<u8>>) -> std::io::Result<()> {
    for job in jobs {
        apply(file, &job.buf, &job.ops)?;
        let _ = free.send(job.buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_writes_and_zeroes_land_in_order() {
        let file = crate::memory::create_memfd("ram-writer", 4 * 4096).unwrap();
        let mut w = RamWriter::start(file.try_clone().unwrap()).unwrap();
        let mut buf = w.buffer();
        buf.extend_from_slice(&[7u8; 8192]);
        w.submit(
            buf,
            vec![Op::Write {
                offset: 4096,
                range: 0..8192,
            }],
        )
        .unwrap();
        // Page 2 zeroed after it was written.
        w.submit(
            w.buffer(),
            vec![Op::Zero {
                offset: 8192,
                len: 4096,
            }],
        )
        .unwrap();
        w.finish().unwrap();
        let mut ram = vec![0u8; 4 * 4096];
        file.read_exact_at(&mut ram, 0).unwrap();
        assert!(ram[..4096].iter().all(|&b| b == 0));
        assert!(ram[4096..8192].iter().all(|&b| b == 7));
        assert!(ram[8192..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_failed_write_is_reported() {
        // A read-only file: the write fails in the writer thread.
        let path = std::env::temp_dir().join(format!("shoal-ramw-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut w = RamWriter::start(file).unwrap();
        let ops = vec![Op::Write {
            offset: 0,
            range: 0..4,
        }];
        // Queued before the writer fails: finish reports it.
        w.submit(vec![1, 2, 3, 4], ops).unwrap();
        let err = w.finish().unwrap_err();
        assert!(
            matches!(err, MigrationError::Vm("write its RAM", _)),
            "{err}"
        );
    }
}
