// SPDX-License-Identifier: Apache-2.0
//! The listener thread: one connection, one request at a time.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{self, HttpError, MAX_HEAD};
use super::{ApiError, ApiMessage, ApiResponse};

/// A client has this long to send its whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing the answer may take this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The control loop has this long to answer (a snapshot of a large VM is slow).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Logs at most `BURST` lines per `WINDOW`, then how many were dropped.
struct RateLimitedLog {
    window_start: Instant,
    in_window: u32,
    suppressed: u32,
}

const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);

impl RateLimitedLog {
    fn new() -> Self {
        RateLimitedLog {
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// True when a line may be logged now.
    fn allow(&mut self) -> bool {
        if self.window_start.elapsed() >= WINDOW {
            if self.suppressed > 0 {
                log::warn!("api: {} more bad requests not logged", self.suppressed);
            }
            self.window_start = Instant::now();
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < BURST {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The running API server. Dropping it stops the thread and removes the
/// socket.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `path` and forwards requests to `tx`. A stale socket file
    /// (nobody listening) is replaced; a live one is an error.
    pub fn start(path: &Path, tx: Sender<ApiMessage>) -> Result<ApiServer, ApiError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ApiError::Bind(path.to_path_buf(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(&listener, &tx, &stop2))
            .map_err(ApiError::Thread)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, tx: &Sender<ApiMessage>, stop: &AtomicBool) {
    let mut log = RateLimitedLog::new();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => handle(stream, tx, &mut log),
            Err(e) => {
                if log.allow() {
                    log::warn!("api: accept failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Why reading a request ended without one.
enum ReadError {
    Http(HttpError),
    /// Closed, timed out or failed: nobody to answer.
    Gone,
    Timeout,
}

fn read_request(stream: &mut UnixStream) -> Result<(http::Head, Vec<u8>), ReadError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if let Some(h) = http::parse_head(&buf).map_err(ReadError::Http)? {
            break h;
        }
        let n = read_some(
            stream,
            &mut chunk[..(MAX_HEAD + 1 - buf.len()).min(1024)],
            deadline,
        )?;
        buf.extend_from_slice(&chunk[..n]);
    };
    if head.expect_continue && buf.len() < head.len + head.content_length {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = buf.split_off(head.len.min(buf.len()));
    body.truncate(head.content_length);
    while body.len() < head.content_length {
        let want = (head.content_length - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..want], deadline)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

fn read_some(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::Timeout);
    }
    let _ = stream.set_read_timeout(Some(left));
    match stream.read(buf) {
        Ok(0) => Err(ReadError::Gone),
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(ReadError::Timeout)
        }
        Err(_) => Err(ReadError::Gone),
    }
}

fn handle(mut stream: UnixStream, tx: &Sender<ApiMessage>, log: &mut RateLimitedLog) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let response = match read_request(&mut stream) {
        Ok((head, body)) => match http::route(&head.method, &head.path, &body) {
            Ok(request) => ask(tx, request),
            Err(r) => r,
        },
        Err(ReadError::Http(e)) => {
            if log.allow() {
                log::warn!("api: bad request: {e}");
            }
            ApiResponse::error(e.status(), &e.to_string())
        }
        Err(ReadError::Timeout) => {
            if log.allow() {
                log::warn!("api: a client did not send its request in time");
            }
            ApiResponse::error(408, "request not received in time")
        }
        Err(ReadError::Gone) => return,
    };
    let _ = stream.write_all(&http::encode_response(&response));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn ask(tx: &Sender<ApiMessage>, request: super::ApiRequest) -> ApiResponse {
    let (resp_tx, resp_rx) = channel();
    if tx.send((request, resp_tx)).is_err() {
        return ApiResponse::error(503, "the VM is not running");
    }
    match resp_rx.recv_timeout(ANSWER_TIMEOUT) {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => ApiResponse::error(504, "the VM did not answer in time"),
        Err(RecvTimeoutError::Disconnected) => {
            ApiResponse::error(503, "the VM stopped before answering")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::client;
    use super::super::{ApiRequest, VmInfo, VmRunState};
    use super::*;

    fn sock(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("shoal-api-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A control loop that answers info, pause and snapshot, refuses restore.
    fn fake_loop() -> (Sender<ApiMessage>, JoinHandle<Vec<ApiRequest>>) {
        let (tx, rx) = channel::<ApiMessage>();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (req, answer) in rx {
                let r = match &req {
                    ApiRequest::VmInfo => ApiResponse::json(&VmInfo {
                        config: serde_json::json!({"cpus": 2}),
                        state: VmRunState::Running,
                        vcpus: vec![],
                        devices: vec![],
                        groups: vec![],
                        error: None,
                        paused_reason: None,
                    }),
                    ApiRequest::VmRestore { .. } => ApiResponse::conflict("the VM is running"),
                    _ => ApiResponse::ok(),
                };
                seen.push(req);
                let _ = answer.send(r);
            }
            seen
        });
        (tx, t)
    }

    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn requests_reach_the_control_loop_and_answers_come_back() {
        let path = sock("roundtrip");
        let (tx, lp) = fake_loop();
        let server = ApiServer::start(&path, tx).unwrap();
        let info = client::request(&path, "GET", "vm.info", None).unwrap();
        assert_eq!(info.status, 200);
        assert_eq!(info.body.unwrap()["config"]["cpus"], 2);
        let r = client::request(
            &path,
            "PUT",
            "vm.snapshot",
            Some(&serde_json::json!({"destination": "/tmp/snap"})),
        )
        .unwrap();
        assert_eq!(r.status, 204);
        let r = client::request(
            &path,
            "PUT",
            "vm.restore",
            Some(&serde_json::json!({"source": "/tmp/snap"})),
        )
        .unwrap();
        assert_eq!(r.status, 409);
        drop(server);
        assert!(!path.exists(), "socket must be removed");
        let seen = lp.join().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[1],
            ApiRequest::VmSnapshot {
                destination: "/tmp/snap".into()
            }
        );
    }

    #[test]
    fn malformed_requests_get_400_and_the_server_keeps_serving() {
        let path = sock("malformed");
        let (tx, _lp) = fake_loop();
        let _server = ApiServer::start(&path, tx).unwrap();
        let out = raw(&path, b"\x16\x03\x01 garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let out = raw(
            &path,
            b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        let out = raw(&path, b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    #[test]
    fn body_split_over_several_writes_is_assembled() {
        let path = sock("split");
        let (tx, _lp) = fake_loop();
        let _server = ApiServer::start(&path, tx).unwrap();
        let body = br#"{"destination":"/x"}"#;
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(
            format!(
                "PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&body[..5]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&body[5..]).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    }

    #[test]
    fn a_dead_control_loop_is_503() {
        let path = sock("dead");
        let (tx, rx) = channel::<ApiMessage>();
        drop(rx);
        let _server = ApiServer::start(&path, tx).unwrap();
        let r = client::request(&path, "PUT", "vm.pause", None).unwrap();
        assert_eq!(r.status, 503);
    }

    #[test]
    fn a_live_socket_is_not_taken_over_but_a_stale_one_is() {
        let path = sock("inuse");
        let (tx, _lp) = fake_loop();
        let _server = ApiServer::start(&path, tx.clone()).unwrap();
        assert!(matches!(
            ApiServer::start(&path, tx.clone()),
            Err(ApiError::InUse(_))
        ));

        let stale = sock("stale");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let s = ApiServer::start(&stale, tx).unwrap();
        assert_eq!(s.path(), stale);
    }

    #[test]
    fn log_limiter_allows_a_burst_then_suppresses() {
        let mut l = RateLimitedLog::new();
        let allowed = (0..20).filter(|_| l.allow()).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(l.suppressed, 20 - BURST);
    }
}
