// SPDX-License-Identifier: Apache-2.0
//! Listening UNIX sockets created with restricted permissions.
//!
//! The socket is bound, then chmod/chown-ed, and only then put in listening
//! state, so nobody can connect while the file still has umask permissions.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Listener errors.
#[derive(Debug, Error)]
pub enum ListenerError {
    /// Another server answers on this path.
    #[error("Socket {0} is in use by a running server")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotSocket(PathBuf),
    /// The path does not fit in sockaddr_un.
    #[error("Socket path {0} is too long")]
    PathTooLong(PathBuf),
    /// The unix group does not exist.
    #[error("Unknown unix group {0}")]
    UnknownGroup(String),
    /// A system call failed.
    #[error("Cannot {what} socket {path}")]
    Io {
        /// Operation.
        what: &'static str,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Looks up a unix group id by name.
pub fn group_id(name: &str) -> Result<libc::gid_t, ListenerError> {
    let cname = CString::new(name).map_err(|_| ListenerError::UnknownGroup(name.into()))?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: an all-zero group struct is a valid out-parameter.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf is buf.len() bytes.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(ListenerError::UnknownGroup(name.into()));
    }
    Ok(group.gr_gid)
}

/// Removes a stale socket file at `path`, or fails if a server answers there.
fn clear_stale(path: &Path) -> Result<(), ListenerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenerError::Io {
                what: "inspect",
                path: path.into(),
                source,
            })
        }
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(ListenerError::NotSocket(path.into()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ListenerError::InUse(path.into()));
    }
    std::fs::remove_file(path).map_err(|source| ListenerError::Io {
        what: "remove stale",
        path: path.into(),
        source,
    })
}

/// Creates a non-blocking listening socket at `path`, mode 0600, or 0660 and
/// owned by `group` when given.
pub fn bind(path: &Path, group: Option<libc::gid_t>) -> Result<UnixListener, ListenerError> {
    clear_stale(path)?;
    let io_err = |what: &'static str| {
        let source = io::Error::last_os_error();
        ListenerError::Io {
            what,
            path: path.into(),
            source,
        }
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io_err("create"));
    }
    // SAFETY: socket returned a fresh descriptor we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ListenerError::PathTooLong(path.into()));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io_err("bind"));
    }
    let cpath = CString::new(bytes).map_err(|_| ListenerError::PathTooLong(path.into()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    if let Some(gid) = group {
        // SAFETY: cpath is a valid C string; uid -1 keeps the owner.
        if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } < 0 {
            return Err(io_err("chown"));
        }
    }
    // SAFETY: cpath is a valid C string.
    if unsafe { libc::chmod(cpath.as_ptr(), mode) } < 0 {
        return Err(io_err("chmod"));
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        return Err(io_err("listen"));
    }
    Ok(UnixListener::from(fd))
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shmem-listener-{}-{name}", std::process::id()))
    }

    #[test]
    fn socket_is_created_0600() {
        let path = temp_path("mode");
        let _l = bind(&path, None).unwrap();
        let _guard = SocketFile(path.clone());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn group_socket_is_0660_and_owned_by_the_group() {
        use std::os::unix::fs::MetadataExt;
        let path = temp_path("group");
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let _l = bind(&path, Some(gid)).unwrap();
        let _guard = SocketFile(path.clone());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
    }

    #[test]
    fn live_socket_is_not_replaced() {
        let path = temp_path("live");
        let _l = bind(&path, None).unwrap();
        let _guard = SocketFile(path.clone());
        assert!(matches!(bind(&path, None), Err(ListenerError::InUse(_))));
    }

    #[test]
    fn stale_socket_is_replaced() {
        let path = temp_path("stale");
        drop(bind(&path, None).unwrap());
        let _guard = SocketFile(path.clone());
        assert!(bind(&path, None).is_ok());
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let path = temp_path("file");
        std::fs::write(&path, b"x").unwrap();
        let _guard = SocketFile(path.clone());
        assert!(matches!(
            bind(&path, None),
            Err(ListenerError::NotSocket(_))
        ));
    }

    #[test]
    fn unknown_group_is_reported() {
        assert!(group_id("no-such-group-shoal-test").is_err());
    }
}
