// SPDX-License-Identifier: Apache-2.0
//! Small safe wrappers around `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
//!
//! Unlike `vmm_sys_util::sock_ctrl_msg`, received descriptors are close-on-exec
//! (`MSG_CMSG_CLOEXEC`) and come back as [`OwnedFd`], and a truncated control
//! message is an error (the kernel has already closed what did not fit).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Largest number of fds accepted in one `recvmsg`.
pub const MAX_FDS_PER_MSG: usize = 512;

/// Sends `data` with `fds` attached, without blocking and without SIGPIPE.
/// Returns the number of bytes sent (the fds go with the first byte).
pub fn send(sock: &impl AsRawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes, enough for one cmsghdr
        // carrying `fds.len()` descriptors, so CMSG_FIRSTHDR is non-null and
        // CMSG_DATA has room for fd_bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: msg points to valid iovec/control buffers that outlive the call.
    let ret = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// Receives into `buf`, appending received descriptors to `fds`.
/// Returns the number of bytes read (0 = peer closed). With `nonblocking`
/// the call fails with `WouldBlock` instead of waiting.
pub fn recv(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    let fd_bytes = MAX_FDS_PER_MSG * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    let ret = loop {
        // SAFETY: msg points to valid buffers of the stated lengths.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break ret as usize;
    };
    let first_new = fds.len();
    // SAFETY: the kernel filled msg_control with well-formed cmsghdrs; the
    // CMSG_* macros walk them within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    // The kernel just installed this descriptor for us.
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        fds.truncate(first_new);
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    Ok(ret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn fds_travel_with_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new(0).unwrap();
        assert_eq!(send(&a, b"hello", &[efd.as_raw_fd()]).unwrap(), 5);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv(&b, &mut buf, &mut fds, false).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        // The received fd refers to the same eventfd.
        efd.write(3).unwrap();
        let mut counter = [0u8; 8];
        let got = nix_read(&fds[0], &mut counter);
        assert_eq!(got, 8);
        assert_eq!(u64::from_ne_bytes(counter), 3);
    }

    #[test]
    fn nonblocking_recv_on_empty_socket_would_block() {
        let (_a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 4];
        let err = recv(&b, &mut buf, &mut Vec::new(), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn closed_peer_reads_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut buf = [0u8; 4];
        assert_eq!(recv(&b, &mut buf, &mut Vec::new(), false).unwrap(), 0);
    }

    fn nix_read(fd: &OwnedFd, buf: &mut [u8]) -> isize {
        // SAFETY: buf is valid for buf.len() bytes.
        unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        }
    }
}
