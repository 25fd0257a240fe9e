// SPDX-License-Identifier: Apache-2.0
//! Migration addresses (`unix:PATH`, `tcp:HOST:PORT`) and the streams they open.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// Errors of parsing a migration address or opening its connection.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("bad migration address {0:?}: use unix:PATH or tcp:HOST:PORT")]
    Scheme(String),
    #[error("bad migration address {0:?}: the unix socket path is empty")]
    EmptyPath(String),
    #[error("bad migration address {0:?}: expected tcp:HOST:PORT with a port number")]
    BadTcp(String),
    #[error("cannot connect to {0}")]
    Connect(String, #[source] io::Error),
    #[error("cannot listen on {0}")]
    Listen(String, #[source] io::Error),
    #[error("cannot accept a connection on {0}")]
    Accept(String, #[source] io::Error),
}

/// Where a migration stream goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUrl {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationUrl::Unix(p) => write!(f, "unix:{}", p.display()),
            MigrationUrl::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            MigrationUrl::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl std::str::FromStr for MigrationUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        MigrationUrl::parse(s)
    }
}

impl MigrationUrl {
    /// Parses `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:PORT` for IPv6).
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(UrlError::EmptyPath(s.to_string()));
            }
            return Ok(MigrationUrl::Unix(PathBuf::from(path)));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(UrlError::Scheme(s.to_string()));
        };
        let bad = || UrlError::BadTcp(s.to_string());
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
            None => host,
        };
        if host.is_empty() || (host.contains(':') && !rest.starts_with('[')) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(MigrationUrl::Tcp {
            host: host.to_string(),
            port,
        })
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, MigrationUrl::Unix(_))
    }

    /// Connects to the receiver.
    pub fn connect(&self) -> Result<Stream, UrlError> {
        let err = |e| UrlError::Connect(self.to_string(), e);
        match self {
            MigrationUrl::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).map_err(err)?)),
            MigrationUrl::Tcp { host, port } => {
                let addrs = (host.as_str(), *port).to_socket_addrs().map_err(err)?;
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                        Ok(s) => {
                            // Frames are written in batches already.
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(err(last))
            }
        }
    }

    /// Starts listening (a unix socket path must not exist yet).
    pub fn listen(&self) -> Result<Listener, UrlError> {
        let err = |e| UrlError::Listen(self.to_string(), e);
        match self {
            MigrationUrl::Unix(p) => Ok(Listener::Unix(
                UnixListener::bind(p).map_err(err)?,
                p.clone(),
            )),
            MigrationUrl::Tcp { host, port } => Ok(Listener::Tcp(
                TcpListener::bind((host.as_str(), *port)).map_err(err)?,
            )),
        }
    }
}

/// A bound migration listener.
#[derive(Debug)]
pub enum Listener {
    /// Removes its socket file when dropped.
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Waits for the sender's connection.
    pub fn accept(&self) -> Result<Stream, UrlError> {
        match self {
            Listener::Unix(l, p) => l
                .accept()
                .map(|(s, _)| Stream::Unix(s))
                .map_err(|e| UrlError::Accept(format!("unix:{}", p.display()), e)),
            Listener::Tcp(l) => l
                .accept()
                .map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                })
                .map_err(|e| UrlError::Accept("tcp".into(), e)),
        }
    }

    /// The TCP port actually bound (for `tcp:HOST:0`).
    pub fn tcp_port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A connected migration stream.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Socket buffers large enough to keep a few 1 MiB frames in flight.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn enlarge_buffers(fd: std::os::fd::RawFd) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        let v = SOCKET_BUFFER;
        // SAFETY: `v` outlives the call and its size is passed; the kernel
        // only reads it. Failure just leaves the default size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Stream {
    /// Sets the socket buffers for bulk transfer.
    pub fn tune(&self) {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Unix(s) => enlarge_buffers(s.as_raw_fd()),
            Stream::Tcp(s) => enlarge_buffers(s.as_raw_fd()),
        }
    }

    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    /// Closes both directions (wakes a thread blocked on it).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// The unix socket, for passing file descriptors.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_url_keeps_the_path() {
        assert_eq!(
            MigrationUrl::parse("unix:/tmp/a b.sock").unwrap(),
            MigrationUrl::Unix("/tmp/a b.sock".into())
        );
    }

    #[test]
    fn tcp_url_parses_host_and_port() {
        assert_eq!(
            MigrationUrl::parse("tcp:127.0.0.1:4444").unwrap(),
            MigrationUrl::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
        assert_eq!(
            MigrationUrl::parse("tcp:[::1]:80").unwrap().to_string(),
            "tcp:[::1]:80"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "http://x",
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:h:99999",
            "tcp:::1:80",
        ] {
            let err = MigrationUrl::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("bad migration address"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn listening_twice_on_one_port_is_a_clear_error() {
        let first = MigrationUrl::parse("tcp:127.0.0.1:0")
            .unwrap()
            .listen()
            .unwrap();
        let port = first.tcp_port().unwrap();
        let url = MigrationUrl::parse(&format!("tcp:127.0.0.1:{port}")).unwrap();
        let err = url.listen().unwrap_err();
        assert!(
            err.to_string().contains("cannot listen on tcp:127.0.0.1:"),
            "{err}"
        );
    }

    #[test]
    fn connecting_to_nobody_fails_naming_the_address() {
        let err = MigrationUrl::parse("unix:/nonexistent/shoal.sock")
            .unwrap()
            .connect()
            .unwrap_err();
        assert!(err.to_string().contains("unix:/nonexistent/shoal.sock"));
    }
}
