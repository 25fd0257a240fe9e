// SPDX-License-Identifier: Apache-2.0
//! End-to-end test helpers: the test guest image, the `shoal` binary,
//! [`GuestProcess`], a VMM child whose serial output is read line by line,
//! and [`frame_proxy`], a migration man in the middle that breaks the
//! stream at a chosen frame.
//!
//! Owns the harness only; the tests themselves are one file per feature
//! area next to this one. Depends on no Shoal crate: the tests drive the
//! real `shoal` binary, as a user would.
//!
//! ```no_run
//! use std::time::Duration;
//! use shoal_tests::GuestProcess;
//!
//! let mut vm = GuestProcess::boot_test_guest("scenario=boot", &["--cpus", "2"]).unwrap();
//! vm.wait_for_line("SHOAL-TG done", Duration::from_secs(30)).unwrap();
//! assert!(vm.error_lines().is_empty(), "{}", vm.output());
//! ```

pub mod frame_proxy;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Prefix of every line the test guest prints.
pub const GUEST_PREFIX: &str = "SHOAL-TG ";
/// Prefix of the test guest's error lines.
pub const GUEST_ERROR: &str = "SHOAL-TG error";
/// Line the test guest prints when its scenario has finished.
pub const GUEST_DONE: &str = "SHOAL-TG done";

/// Errors of the end-to-end harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The `shoal` binary could not be built or found.
    #[error("cannot provide the shoal binary: {0}")]
    ShoalBinary(String),
    /// The child process could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No line with the marker arrived in time.
    #[error("no line containing {marker:?} within {timeout:?}; output so far:\n{output}")]
    Timeout {
        /// What was waited for.
        marker: String,
        /// How long.
        timeout: Duration,
        /// Everything the child printed.
        output: String,
    },
    /// The child closed its output before the marker arrived.
    #[error("output ended before a line containing {marker:?} ({status}); output:\n{output}")]
    Ended {
        /// What was waited for.
        marker: String,
        /// The exit status, if the child was reaped.
        status: String,
        /// Everything the child printed.
        output: String,
    },
    /// The child did not exit in time.
    #[error("the child did not exit within {0:?}")]
    ExitTimeout(Duration),
    /// Waiting for the child failed.
    #[error("cannot wait for the child")]
    Wait(#[source] std::io::Error),
}

/// Path of the test guest image (a PVH ELF), built by this crate's build
/// script from `tests/guest`.
pub fn test_guest_path() -> PathBuf {
    PathBuf::from(env!("SHOAL_TEST_GUEST"))
}

/// Path of the same image without its PVH note: a loader enters it at the
/// ELF entry point with the Linux 64-bit boot protocol (zero page in `rsi`).
/// The guest prints `SHOAL-TG entry linux64` instead of `entry pvh`.
pub fn test_guest_linux64_path() -> PathBuf {
    PathBuf::from(env!("SHOAL_TEST_GUEST_LINUX64"))
}

/// Root of the workspace (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where and how to build `shoal` so it lands next to the running test:
/// (target dir, profile, target triple if the layout has one).
fn build_layout() -> Option<(PathBuf, String, Option<String>)> {
    // A test executable lives in <target>[/<triple>]/<profile>/deps/, and
    // cargo marks every target dir with a CACHEDIR.TAG file.
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let profile = profile_dir.file_name()?.to_str()?.to_string();
    let above = profile_dir.parent()?;
    if above.join("CACHEDIR.TAG").is_file() {
        return Some((above.to_path_buf(), profile, None));
    }
    let triple = above.file_name()?.to_str()?.to_string();
    let target_dir = above.parent()?;
    target_dir
        .join("CACHEDIR.TAG")
        .is_file()
        .then(|| (target_dir.to_path_buf(), profile, Some(triple)))
}

fn build_shoal() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let (target_dir, profile, triple) =
        build_layout().ok_or("cannot tell the target dir from the test executable's path")?;
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "shoal", "--bin", "shoal"])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    if let Some(triple) = &triple {
        command.args(["--target", triple]);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo build -p shoal: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p shoal failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut dir = target_dir;
    if let Some(triple) = triple {
        dir.push(triple);
    }
    let binary = dir.join(profile).join("shoal");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("no shoal binary at {}", binary.display()))
    }
}

/// Path of the `shoal` binary: `$SHOAL_BIN` if set, else built once per
/// test process with `cargo build -p shoal` into the target dir and profile
/// of the running test (a no-op when it is up to date).
pub fn shoal_binary() -> Result<PathBuf, HarnessError> {
    static SHOAL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SHOAL
        .get_or_init(build_shoal)
        .clone()
        .map_err(HarnessError::ShoalBinary)
}

/// `shoal api --socket <socket> <args>`: (success, stdout, stderr).
pub fn shoal_api(socket: &Path, args: &[&str]) -> Result<(bool, String, String), HarnessError> {
    let out = Command::new(shoal_binary()?)
        .arg("api")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: "shoal api".into(),
            source,
        })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// What the reader thread sends: a line, or the end of the output.
#[derive(Debug)]
enum Event {
    Line(String),
    Eof,
}

/// A child process (a VMM running a guest) whose stdout is the guest's
/// serial console. The child is killed when this is dropped.
#[derive(Debug)]
pub struct GuestProcess {
    child: Child,
    program: String,
    events: Receiver<Event>,
    /// Every line received so far, `\r` stripped.
    lines: Vec<String>,
    /// Index into `lines` of the first line not yet matched by
    /// [`GuestProcess::wait_for_line`].
    cursor: usize,
    eof: bool,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn spawn_stdout_reader(stdout: ChildStdout) -> (Receiver<Event>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(Event::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof);
    });
    (rx, handle)
}

impl GuestProcess {
    /// Starts `command` with stdout (the serial console) and stderr piped.
    pub fn spawn(mut command: Command) -> Result<Self, HarnessError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: program.clone(),
                source,
            })?;
        let mut readers = Vec::new();
        let (events, stdout_reader) = match child.stdout.take() {
            Some(stdout) => spawn_stdout_reader(stdout),
            None => {
                let (tx, rx) = mpsc::channel();
                let _ = tx.send(Event::Eof);
                (rx, thread::spawn(|| {}))
            }
        };
        readers.push(stdout_reader);
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            readers.push(thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut text) = sink.lock() {
                        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
            }));
        }
        Ok(GuestProcess {
            child,
            program,
            events,
            lines: Vec::new(),
            cursor: 0,
            eof: false,
            stderr,
            readers,
        })
    }

    /// Starts `shoal <args>`.
    pub fn shoal<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<Self, HarnessError> {
        let mut command = Command::new(shoal_binary()?);
        command.args(args);
        Self::spawn(command)
    }

    /// Starts `shoal run --kernel <test guest> --cmdline <cmdline>
    /// --no-reboot <extra...>` with serial output on stdout.
    pub fn boot_test_guest(cmdline: &str, extra: &[&str]) -> Result<Self, HarnessError> {
        Self::boot_image(&test_guest_path(), cmdline, extra)
    }

    /// [`GuestProcess::boot_test_guest`] with another kernel image, e.g.
    /// [`test_guest_linux64_path`].
    pub fn boot_image(guest: &Path, cmdline: &str, extra: &[&str]) -> Result<Self, HarnessError> {
        let mut command = Command::new(shoal_binary()?);
        command
            .arg("run")
            .arg("--kernel")
            .arg(guest)
            .args(["--cmdline", cmdline, "--serial", "stdout", "--no-reboot"])
            .args(extra);
        Self::spawn(command)
    }

    /// Takes one event from the reader, waiting at most until `deadline`.
    /// Returns false on timeout.
    fn receive(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(Event::Line(line)) => self.lines.push(line),
            Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => self.eof = true,
            Err(RecvTimeoutError::Timeout) => return false,
        }
        true
    }

    /// Waits for the next line containing `marker` (after the line the
    /// previous call matched) and returns it. Fails on timeout or when the
    /// output ends first, with everything printed so far in the error.
    pub fn wait_for_line(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(offset) = self.lines[self.cursor..]
                .iter()
                .position(|l| l.contains(marker))
            {
                let index = self.cursor + offset;
                self.cursor = index + 1;
                return Ok(self.lines[index].clone());
            }
            if self.eof {
                let status = match self.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "still running".to_string(),
                };
                return Err(HarnessError::Ended {
                    marker: marker.to_string(),
                    status,
                    output: self.output(),
                });
            }
            if !self.receive(deadline) {
                return Err(HarnessError::Timeout {
                    marker: marker.to_string(),
                    timeout,
                    output: self.output(),
                });
            }
        }
    }

    /// Reads output until it ends, then reaps the child. Fails if that takes
    /// longer than `timeout` (the child is left running; drop kills it).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            if !self.receive(deadline) {
                return Err(HarnessError::ExitTimeout(timeout));
            }
        }
        // The output is closed; the process is exiting. Poll its status
        // until the deadline rather than block forever on a wedged child.
        loop {
            if let Some(status) = self.child.try_wait().map_err(HarnessError::Wait)? {
                // Let the stderr reader take the last bytes before anyone
                // reads `stderr()` (bounded: a grandchild may hold the pipe).
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::ExitTimeout(timeout));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every line received so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The test guest's lines received so far (those starting with
    /// [`GUEST_PREFIX`], found anywhere in the line).
    pub fn guest_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.find(GUEST_PREFIX).map(|at| &l[at..]))
            .collect()
    }

    /// The guest's `SHOAL-TG error ...` lines received so far.
    pub fn error_lines(&self) -> Vec<&str> {
        self.guest_lines()
            .into_iter()
            .filter(|l| l.starts_with(GUEST_ERROR))
            .collect()
    }

    /// Stdout so far, then stderr so far: for assertion messages.
    pub fn output(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "--- {} stdout ---", self.program);
        for line in &self.lines {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "--- {} stderr ---", self.program);
        if let Ok(stderr) = self.stderr.lock() {
            text.push_str(&stderr);
        }
        text
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        self.kill();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> GuestProcess {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        GuestProcess::spawn(command).unwrap()
    }

    #[test]
    fn test_guest_image_exists() {
        assert!(
            test_guest_path().is_file(),
            "{}",
            test_guest_path().display()
        );
    }

    #[test]
    fn wait_for_line_finds_markers_in_order() {
        let mut p =
            sh("echo 'SHOAL-TG cpu 0 up'; echo 'SHOAL-TG cpu 1 up\r'; echo 'SHOAL-TG done'");
        let first = p.wait_for_line("cpu", Duration::from_secs(10)).unwrap();
        let second = p.wait_for_line("cpu", Duration::from_secs(10)).unwrap();
        assert_eq!(first, "SHOAL-TG cpu 0 up");
        assert_eq!(second, "SHOAL-TG cpu 1 up");
        p.wait_for_line(GUEST_DONE, Duration::from_secs(10))
            .unwrap();
        assert!(p.wait_for_exit(Duration::from_secs(10)).unwrap().success());
    }

    #[test]
    fn wait_for_line_reports_end_of_output() {
        let mut p = sh("echo hello; echo oops >&2");
        let err = p
            .wait_for_line("never", Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, HarnessError::Ended { .. }), "{err}");
        p.wait_for_exit(Duration::from_secs(10)).unwrap();
        assert!(p.output().contains("hello"));
        assert!(p.stderr().contains("oops"));
    }

    #[test]
    fn wait_for_line_times_out_on_a_silent_child() {
        let mut p = sh("exec sleep 30");
        let err = p
            .wait_for_line("x", Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
    }

    #[test]
    fn error_lines_are_picked_out_with_a_console_prefix() {
        let mut p = sh("echo 'SHOAL-TG cpu 0 up'; echo 'x SHOAL-TG error cpu 1 did not start'");
        p.wait_for_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(p.error_lines(), vec!["SHOAL-TG error cpu 1 did not start"]);
        assert_eq!(p.guest_lines().len(), 2);
    }

    #[test]
    fn dropping_kills_the_child() {
        let p = sh("exec sleep 30");
        let pid = p.pid();
        drop(p);
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "pid {pid} still exists");
    }
}
