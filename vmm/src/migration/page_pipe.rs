// SPDX-License-Identifier: Apache-2.0
//! The sender's page pipe: a thread that writes page frames to the socket
//! while the sending thread gathers, tests and checksums the next ones.

use std::io::IoSlice;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use super::frame::{write_all_vectored, HEADER_LEN, MAX_CHUNK_PAGES, PAGES_META, PAGE_SIZE};
use super::url::Stream;

/// Frame buffers in flight (1 MiB each): one being filled, the others
/// queued or being written.
const BUFFERS: usize = 3;
const MAP_MAX: usize = (MAX_CHUNK_PAGES / 8) as usize;

/// An encoded `Pages` frame: header, metadata and bitmap, and the data at
/// the start of `data`.
pub(crate) struct PageFrame {
    pub header: [u8; HEADER_LEN],
    pub meta: [u8; PAGES_META],
    pub zero_map: [u8; MAP_MAX],
    pub map_len: usize,
    pub data: Vec<u8>,
    pub data_len: usize,
}

/// The writer thread and the buffers it hands back.
#[derive(Debug)]
pub(crate) struct PagePipe {
    frames: Option<SyncSender<PageFrame>>,
    free: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl PagePipe {
    /// Starts writing to `stream` (a clone of the sender's stream, whose
    /// own buffered bytes were flushed first), with the buffers of an
    /// earlier pipe (more are made as needed): the stop-and-copy pass then
    /// allocates nothing.
    pub(crate) fn start(stream: Stream, mut buffers: Vec<Vec<u8>>) -> std::io::Result<Self> {
        let (frames, rx) = sync_channel::<PageFrame>(BUFFERS - 1);
        let (free_tx, free) = channel();
        buffers.resize_with(BUFFERS, || vec![0u8; MAX_CHUNK_PAGES as usize * PAGE_SIZE]);
        for b in buffers {
            let _ = free_tx.send(b);
        }
        let thread = std::thread::Builder::new()
            .name("migration-pages".into())
            .spawn(move || write_frames(stream, &rx, &free_tx))?;
        Ok(PagePipe {
            frames: Some(frames),
            free,
            thread: Some(thread),
        })
    }

    /// A 1 MiB buffer to gather pages into (waits while all are in flight).
    /// `None`: the writer stopped; [`PagePipe::finish`] says why.
    pub(crate) fn buffer(&self) -> Option<Vec<u8>> {
        self.free.recv().ok()
    }

    /// Queues a frame. `Err`: the writer stopped; `finish` says why.
    pub(crate) fn submit(&self, frame: PageFrame) -> Result<(), ()> {
        match &self.frames {
            Some(f) => f.send(frame).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Waits until every queued frame is written; gives the buffers back.
    pub(crate) fn finish(mut self) -> (std::io::Result<()>, Vec<Vec<u8>>) {
        let written = self.stop();
        (written, self.free.try_iter().collect())
    }

    fn stop(&mut self) -> std::io::Result<()> {
        self.frames = None;
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(std::io::Error::other("the page writer panicked")),
        }
    }
}

impl Drop for PagePipe {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_frames(
    mut stream: Stream,
    frames: &Receiver<PageFrame>,
    free: &Sender<Vec<u8>>,
) -> std::io::Result<()> {
    for f in frames {
        let map = f.zero_map.get(..f.map_len).unwrap_or(&[]);
        let data = f.data.get(..f.data_len).unwrap_or(&[]);
        let mut slices = [
            IoSlice::new(&f.header),
            IoSlice::new(&f.meta),
            IoSlice::new(map),
            IoSlice::new(data),
        ];
        write_all_vectored(&mut stream, &mut slices)?;
        let _ = free.send(f.data);
    }
    Ok(())
}
