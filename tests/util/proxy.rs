//! `Proxy`: runs one of the crate's binaries as a child process for a test, and
//! `run_proxy_expect_exit` for command lines that should make it exit.
//!
//! Contract with the binary: once it listens, it writes a line containing
//! `listening on 127.0.0.1:PORT` (the bound port) to stderr. Reader threads collect stderr
//! and stdout line by line so the pipes never fill and tests can wait for log lines. The
//! child gets no stdin and none of the environment variables the proxy reads (so a
//! developer's shell cannot change a test); `Launch::env` sets them explicitly.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::client::Bn;
use super::lock;

/// The proxy binary Cargo built for this test run.
pub const SYNC_PROXY: &str = env!("CARGO_BIN_EXE_sync-proxy");

/// The proxy's own listening line, which ends in the bound address.
const LISTENING: &str = "listening on ";

/// How long a binary may take to start listening, or to exit when expected to.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait, after the child exited, for its last output lines.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How many stderr lines a failing test shows.
const LINES_SHOWN_ON_FAILURE: usize = 200;

/// Variables the proxy reads (flashbots/sync-proxy's and the logger's), removed from the
/// child's environment unless set with `Launch::env`.
const PROXY_ENV: [&str; 8] = [
    "PROXY_LISTEN_ADDR",
    "BUILDER_TIMEOUT_MS",
    "BEACON_EXPIRY_MS",
    "LOG_LEVEL",
    "LOG_JSON",
    "RUST_LOG",
    "MIRROR_MODE",
    "METRICS_ADDR",
];

/// How to start a binary: path, arguments, environment, and the stderr text announcing
/// that it listens (immediately followed by the address).
#[derive(Clone, Debug)]
pub struct Launch {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready_marker: String,
}

/// A binary that ran to its end.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running binary; dropping it kills and reaps it (and prints its stderr if the test is
/// failing).
pub struct Proxy {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Lines>,
    stdout: Arc<Lines>,
    exit: Option<ExitStatus>,
}

/// Lines of one output stream, appended by a reader thread.
struct Lines {
    state: Mutex<LinesState>,
    changed: Condvar,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Launch {
    /// The proxy on an ephemeral port: `sync-proxy --addr 127.0.0.1:0`.
    pub fn proxy() -> Launch {
        Launch::bin(SYNC_PROXY).args(&["--addr", "127.0.0.1:0"])
    }

    /// Any binary, with no arguments yet.
    pub fn bin(path: impl AsRef<Path>) -> Launch {
        Launch {
            bin: path.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            ready_marker: LISTENING.to_string(),
        }
    }

    pub fn arg(mut self, arg: &str) -> Launch {
        self.args.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The stderr text that announces the listening address (default `listening on `).
    pub fn ready_marker(mut self, marker: &str) -> Launch {
        self.ready_marker = marker.to_string();
        self
    }

    /// Spawns the binary and waits (10 s at most) for its listening line.
    #[track_caller]
    pub fn start(self) -> Proxy {
        let (child, stdout, stderr) = self.spawn();
        let ready = stderr.wait_line(0, STARTUP_TIMEOUT, |l| l.contains(&self.ready_marker));
        let mut proxy =
            Proxy { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), stderr, stdout, exit: None };
        match ready {
            Ok(line) => proxy.addr = address_after(&line, &self.ready_marker),
            Err(_) => {
                // Dropping `proxy` while panicking prints its stderr.
                let status = proxy.kill();
                panic!(
                    "{} did not announce {:?} within {STARTUP_TIMEOUT:?} ({status})",
                    self.bin.display(),
                    self.ready_marker,
                );
            }
        }
        proxy
    }

    /// Runs the binary to its end; panics (after killing it) if it outlives `timeout`.
    #[track_caller]
    pub fn run_to_exit(self, timeout: Duration) -> Exited {
        let (mut child, stdout, stderr) = self.spawn();
        let Some(status) = poll_exit(&mut child, timeout) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {:?} still running after {timeout:?}; stderr:\n{}",
                self.bin.display(),
                self.args,
                stderr.snapshot().join("\n")
            );
        };
        stdout.wait_closed(DRAIN_TIMEOUT);
        stderr.wait_closed(DRAIN_TIMEOUT);
        Exited { status, stdout: stdout.text(), stderr: stderr.text() }
    }

    #[track_caller]
    fn spawn(&self) -> (Child, Arc<Lines>, Arc<Lines>) {
        let mut command = Command::new(&self.bin);
        command.args(&self.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for name in PROXY_ENV {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => panic!("cannot run {}: {e}", self.bin.display()),
        };
        let pid = child.id();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr = child.stderr.take().expect("child stderr is piped");
        let stdout = Lines::collect(stdout, format!("child-{pid}-stdout"));
        let stderr = Lines::collect(stderr, format!("child-{pid}-stderr"));
        (child, stdout, stderr)
    }
}

impl Proxy {
    /// Starts the proxy: `sync-proxy --addr 127.0.0.1:0 ARGS…`.
    #[track_caller]
    pub fn start(args: &[&str]) -> Proxy {
        Launch::proxy().args(args).start()
    }

    /// Starts another binary of the crate with exactly `args` (no `--addr` added), and
    /// waits for its listening line.
    #[track_caller]
    pub fn start_bin(bin: impl AsRef<Path>, args: &[&str]) -> Proxy {
        Launch::bin(bin).args(args).start()
    }

    /// The address it announced.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new BN connection to it.
    #[track_caller]
    pub fn bn(&self) -> Bn {
        Bn::connect(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Every stdout line so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// How many stderr lines there are now; `wait_log_from(mark, …)` looks only after them.
    pub fn log_mark(&self) -> usize {
        lock(&self.stderr.state).lines.len()
    }

    /// Waits for a stderr line containing `text`, earlier lines included, and returns it.
    #[track_caller]
    pub fn wait_log(&self, text: &str, timeout: Duration) -> String {
        self.wait_log_from(0, text, timeout)
    }

    /// Waits for a stderr line containing `text` after the first `mark` lines.
    #[track_caller]
    pub fn wait_log_from(&self, mark: usize, text: &str, timeout: Duration) -> String {
        match self.stderr.wait_line(mark, timeout, |l| l.contains(text)) {
            Ok(line) => line,
            Err(lines) => panic!(
                "no stderr line containing {text:?} within {timeout:?} (after line {mark}); \
                 stderr:\n{}",
                lines.join("\n")
            ),
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`…) with `kill -s`.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args(["-s", name, &pid]).status().expect("run kill");
        assert!(status.success(), "kill -s {name} {pid} failed: {status}");
    }

    /// Sends SIGTERM.
    #[track_caller]
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit; `None` if it still runs after `timeout`. Once it has
    /// exited, its last output lines are collected before this returns.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = poll_exit(&mut self.child, timeout);
            if self.exit.is_some() {
                self.stderr.wait_closed(DRAIN_TIMEOUT);
                self.stdout.wait_closed(DRAIN_TIMEOUT);
            }
        }
        self.exit
    }

    /// Kills the process (SIGKILL) unless it has exited, reaps it, and describes the end.
    fn kill(&mut self) -> String {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.exit.map_or("not reaped".to_string(), |s| s.to_string())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            let lines = self.logs();
            let shown = &lines[lines.len().saturating_sub(LINES_SHOWN_ON_FAILURE)..];
            eprintln!(
                "--- stderr of pid {} ({} lines, last {} shown) ---\n{}",
                self.pid(),
                lines.len(),
                shown.len(),
                shown.join("\n")
            );
        }
    }
}

/// Runs the proxy with exactly `args` (no `--addr` added) and expects it to exit within
/// 10 s; returns its status, stdout and stderr. For command-line error tests.
#[track_caller]
pub fn run_proxy_expect_exit(args: &[&str]) -> (ExitStatus, String, String) {
    run_bin_expect_exit(SYNC_PROXY, args)
}

/// `run_proxy_expect_exit` for any binary.
#[track_caller]
pub fn run_bin_expect_exit(bin: impl AsRef<Path>, args: &[&str]) -> (ExitStatus, String, String) {
    let exited = Launch::bin(bin).args(args).run_to_exit(STARTUP_TIMEOUT);
    (exited.status, exited.stdout, exited.stderr)
}

/// Polls the child every few milliseconds until it exits or `timeout` passes.
fn poll_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll child status") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Parses the address that follows `marker` in `line` (stopping at the first character
/// that cannot be part of it, such as a quote or comma in JSON logs).
#[track_caller]
fn address_after(line: &str, marker: &str) -> SocketAddr {
    let start = line.find(marker).expect("the line contains the marker") + marker.len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    match rest[..end].parse() {
        Ok(addr) => addr,
        Err(e) => panic!("cannot parse an address after {marker:?} in {line:?}: {e}"),
    }
}

impl Lines {
    /// Starts a thread that appends each line of `source` until it closes.
    fn collect(source: impl Read + Send + 'static, name: String) -> Arc<Lines> {
        let lines = Arc::new(Lines { state: Mutex::new(LinesState::default()), changed: Condvar::new() });
        let sink = Arc::clone(&lines);
        thread::Builder::new().name(name).spawn(move || sink.read_all(source)).expect("spawn output reader");
        lines
    }

    fn read_all(&self, source: impl Read) {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']).to_string();
                    lock(&self.state).lines.push(text);
                    self.changed.notify_all();
                }
            }
        }
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    fn snapshot(&self) -> Vec<String> {
        lock(&self.state).lines.clone()
    }

    fn text(&self) -> String {
        let mut text = self.snapshot().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }

    /// The first line after the first `from` that satisfies `wanted`; `Err` with every
    /// line when the stream closes or `timeout` passes first.
    fn wait_line(
        &self,
        from: usize,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        let mut checked = from;
        loop {
            if let Some(line) = state.lines.iter().skip(checked).find(|l| wanted(l)) {
                return Ok(line.clone());
            }
            checked = checked.max(state.lines.len());
            let now = Instant::now();
            if state.closed || now >= deadline {
                return Err(state.lines.clone());
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the stream has closed; returns whether it did within `timeout`.
    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}
