// SPDX-License-Identifier: Apache-2.0
//! A man in the middle of a migration that knows the frame layout
//! (docs/migration.md, "The stream"): it forwards the stream both ways
//! frame by frame and breaks it at a chosen frame, for the fault tests.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Frame kinds of the migration stream.
pub const HELLO: u8 = 1;
pub const ACK: u8 = 2;
pub const PAGES: u8 = 3;
pub const STATE: u8 = 5;
pub const COMMIT: u8 = 6;
pub const GO: u8 = 8;

/// What the proxy does to the stream at its trigger frame.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// SIGKILL the destination; the frame is not forwarded.
    KillDestination,
    /// Shut both connections down; the frame is not forwarded.
    Cut,
    /// Flip a payload byte, then forward.
    Corrupt,
    /// Rewrite the header's stream version to 1 (the version before `go`;
    /// header checksum recomputed, so only the version is wrong), then
    /// forward.
    Version,
}

/// Where the proxy applies its fault: the `nth` frame of `kind` from the
/// source, or (`from_destination`) from the destination.
#[derive(Clone, Copy, Debug)]
pub struct Trigger {
    pub kind: u8,
    pub nth: u32,
    pub fault: Fault,
    pub from_destination: bool,
}

impl Trigger {
    /// At the `nth` frame of `kind` from the source.
    pub fn source(kind: u8, nth: u32, fault: Fault) -> Self {
        Trigger {
            kind,
            nth,
            fault,
            from_destination: false,
        }
    }

    /// The destination's commit acknowledgement is cut off on its way back
    /// (the first acknowledges the hello, the second the commit).
    pub fn ack_lost() -> Self {
        Trigger {
            kind: ACK,
            nth: 2,
            fault: Fault::Cut,
            from_destination: true,
        }
    }
}

/// CRC-32C, bitwise (the frame header checksum; 20 bytes, speed is moot).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Forwards frames (24-byte header, then the payload of the length it
/// gives) from `from` to `to`, applying `trigger` (`None`: forward
/// everything). Returns the kinds it forwarded.
fn pump(
    from: &mut UnixStream,
    to: &mut UnixStream,
    trigger: Option<Trigger>,
    destination_pid: u32,
) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut count = 0;
    loop {
        let mut h = [0u8; 24];
        if from.read_exact(&mut h).is_err() {
            break;
        }
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let mut payload = vec![0u8; len];
        if from.read_exact(&mut payload).is_err() {
            break;
        }
        if let Some(t) = trigger.filter(|t| t.kind == h[6]) {
            count += 1;
            if count == t.nth {
                match t.fault {
                    Fault::KillDestination => {
                        // SAFETY: kill(2) on the pid of the test's own child.
                        unsafe { libc::kill(destination_pid as i32, libc::SIGKILL) };
                        break;
                    }
                    Fault::Cut => {
                        // Both ways at once, like a pulled cable.
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        break;
                    }
                    Fault::Corrupt => payload[len / 2] ^= 0x20,
                    Fault::Version => {
                        h[4..6].copy_from_slice(&1u16.to_le_bytes());
                        let crc = crc32c(&h[..20]);
                        h[20..24].copy_from_slice(&crc.to_le_bytes());
                    }
                }
            }
        }
        seen.push(h[6]);
        if to.write_all(&h).is_err() || to.write_all(&payload).is_err() {
            break;
        }
    }
    seen
}

/// Listens at `dir/proxy.sock` for one source, connects it to the
/// destination listening at `destination` (process `destination_pid`) and
/// applies `trigger`. Returns the address for the source and a thread
/// yielding the kinds it forwarded from the source.
pub fn frame_proxy(
    dir: &Path,
    destination: PathBuf,
    destination_pid: u32,
    trigger: Trigger,
) -> io::Result<(String, JoinHandle<Vec<u8>>)> {
    let path = dir.join("proxy.sock");
    let listener = UnixListener::bind(&path)?;
    let (forward, back) = if trigger.from_destination {
        (None, Some(trigger))
    } else {
        (Some(trigger), None)
    };
    let t = std::thread::spawn(move || {
        let connect = || -> io::Result<_> {
            let (from_source, _) = listener.accept()?;
            let to_dest = UnixStream::connect(&destination)?;
            let back_from = to_dest.try_clone()?;
            let back_to = from_source.try_clone()?;
            Ok((from_source, to_dest, back_from, back_to))
        };
        let Ok((mut from_source, mut to_dest, mut back_from, mut back_to)) = connect() else {
            return Vec::new();
        };
        let back = std::thread::spawn(move || {
            pump(&mut back_from, &mut back_to, back, destination_pid);
            let _ = back_to.shutdown(Shutdown::Both);
        });
        let seen = pump(&mut from_source, &mut to_dest, forward, destination_pid);
        // The destination may still be answering (an abort with its
        // reason): let that through before closing the source's side.
        let _ = to_dest.shutdown(Shutdown::Write);
        let _ = back.join();
        let _ = from_source.shutdown(Shutdown::Both);
        seen
    });
    Ok((format!("unix:{}", path.display()), t))
}
