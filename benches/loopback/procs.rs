//! The processes under test — the proxy and nginx, started and stopped by pid — and what is
//! read from them: RSS, CPU time, the proxy's `/metrics`.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{Framer, MessageKind};
use crate::START_TIMEOUT;

/// The most the proxy had queued for its ELs at once (calls, bytes), summed over the ELs.
#[derive(Default, Clone, Copy)]
pub struct Backlog {
    pub calls: u64,
    pub bytes: u64,
}

/// One `GET /metrics` on a kept-alive connection: the text of the answer.
pub fn get_metrics(stream: &mut TcpStream, framer: &mut Framer) -> Option<String> {
    let mut answer = Vec::new();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    framer.read_message_status(stream, MessageKind::Response, Some(&mut answer)).ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// The sum of a metric's values over its label sets (`metric` ends with `{`).
pub fn metric_sum(text: &str, metric: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Calls the proxy dropped from full backlogs, read from its `/metrics` once a scenario is over.
/// With `LOOPBACK_METRICS=1`, the proxy's per-EL metrics are printed too.
pub fn dropped_calls(addr: SocketAddr) -> Option<u64> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let text = get_metrics(&mut stream, &mut Framer::new())?;
    if std::env::var("LOOPBACK_METRICS").is_ok_and(|v| v == "1") {
        let shown =
            ["sync_proxy_el_answer_seconds_count", "sync_proxy_el_answer_seconds_sum", "sync_proxy_el_"];
        for line in text.lines().filter(|l| shown.iter().any(|m| l.starts_with(m)) && !l.contains("_bucket"))
        {
            eprintln!("  metrics {addr}: {line}");
        }
    }
    Some(metric_sum(&text, "sync_proxy_el_dropped_total{"))
}

/// With `LOOPBACK_PROBE=1`, polls the proxy's `/metrics` every 10 ms while `busy` holds, and
/// keeps the largest backlog seen. Off by default: it costs the proxy a little CPU.
pub fn probe_backlog(
    addr: SocketAddr,
    busy: Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<Backlog> {
    thread::spawn(move || {
        let mut most = Backlog::default();
        let Ok(mut stream) = TcpStream::connect(addr) else { return most };
        let mut framer = Framer::new();
        while busy.load(Ordering::Relaxed) {
            let Some(text) = get_metrics(&mut stream, &mut framer) else { break };
            most.calls = most.calls.max(metric_sum(&text, "sync_proxy_el_backlog_requests{"));
            most.bytes = most.bytes.max(metric_sum(&text, "sync_proxy_el_backlog_bytes{"));
            thread::sleep(Duration::from_millis(10));
        }
        most
    })
}

// ------------------------------------------------------------------------------- processes

pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Nanoseconds the process has run on a CPU, all its threads together
/// (`/proc/PID/task/*/schedstat`, exact where `utime + stime` counts 10 ms ticks). The proxy
/// and an nginx worker do their work on the main thread; the proxy's other threads (signals,
/// name resolution) are counted too, so the figure is the process's whole cost. A thread that
/// ended during the scenario is not counted (none of them does).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let read = |path: std::path::PathBuf| -> Option<u64> {
        std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for task in tasks.flatten() {
        if let Some(ns) = read(task.path().join("schedstat")) {
            total = Some(total.unwrap_or(0) + ns);
        }
    }
    total
}

/// A child process this benchmark started, stopped with SIGTERM by its own pid.
pub struct Started {
    pub child: Child,
    pub addr: SocketAddr,
    /// The process whose memory counts (nginx: its worker).
    pub measured_pid: u32,
    /// Warnings and errors it logged while running.
    pub complaints: Arc<AtomicUsize>,
    pub idle_rss_kib: Option<u64>,
}

impl Started {
    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_kib(self.measured_pid, "VmHWM:")
    }

    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.measured_pid, "VmRSS:")
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the proxy on an ephemeral port; its log goes to `log` (warnings are also counted).
pub fn start_proxy(bin: &Path, els: &[SocketAddr], log: &Path) -> Started {
    let builders: Vec<String> = els.iter().map(SocketAddr::to_string).collect();
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--builders", &builders.join(",")])
        .env_remove("LOG_LEVEL")
        .env_remove("LOG_JSON")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stderr = child.stderr.take().expect("piped stderr");
    let complaints = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    {
        let complaints = complaints.clone();
        let mut log = std::fs::File::create(log).ok().map(io::BufWriter::new);
        // The pipe is drained for the proxy's whole life, so logging never blocks it.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                } else if line.contains("WARN") || line.contains("ERROR") {
                    complaints.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let addr: SocketAddr = rx
        .recv_timeout(START_TIMEOUT)
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{} did not say where it listens", bin.display()));
    let pid = child.id();
    let idle_rss_kib = status_kib(pid, "VmRSS:");
    Started { child, addr, measured_pid: pid, complaints, idle_rss_kib }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn find_nginx() -> Option<PathBuf> {
    if std::env::var("LOOPBACK_NGINX").is_ok_and(|v| v == "0") {
        return None;
    }
    if let Ok(path) = std::env::var("NGINX") {
        return Some(PathBuf::from(path));
    }
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The config of the Go project's README, with nginx in the proxy's place: answer from the
/// first EL, mirror every request to the others with 100 ms timeouts. Upstream connections
/// are kept alive (HTTP/1.1) and bodies stay in memory, which is nginx at its fastest.
pub fn nginx_config(prefix: &Path, port: u16, els: &[SocketAddr]) -> String {
    let p = prefix.display();
    let mut conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root root;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log error;\nevents {{ worker_connections 1024; }}\nhttp {{\n\
         access_log off;\n\
         client_body_temp_path {p}/client_body;\nproxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\nuwsgi_temp_path {p}/uwsgi;\nscgi_temp_path {p}/scgi;\n\
         client_max_body_size 128m;\nclient_body_buffer_size 16m;\nproxy_request_buffering on;\n\
         keepalive_requests 1000000;\n"
    );
    for (i, el) in els.iter().enumerate() {
        let _ = writeln!(conf, "upstream el{i} {{ server {el}; keepalive 32; keepalive_requests 1000000; }}");
    }
    let _ = writeln!(conf, "server {{\n listen 127.0.0.1:{port};\n server_name _;\n location / {{");
    for i in 1..els.len() {
        let _ = writeln!(conf, "  mirror /mirror_el{i};");
    }
    conf.push_str(
        "  proxy_pass http://el0;\n  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n\
         \x20 proxy_set_header X-Real-IP $remote_addr;\n  proxy_set_header Host $host;\n\
         \x20 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n }\n",
    );
    for i in 1..els.len() {
        let _ = writeln!(
            conf,
            " location = /mirror_el{i} {{\n  internal;\n  proxy_pass http://el{i}$request_uri;\n\
             \x20 proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n\
             \x20 proxy_connect_timeout 100ms;\n  proxy_read_timeout 100ms;\n }}"
        );
    }
    conf.push_str("}\n}\n");
    conf
}

pub fn start_nginx(bin: &Path, prefix: &Path, els: &[SocketAddr]) -> Option<Started> {
    let _ = std::fs::remove_dir_all(prefix);
    std::fs::create_dir_all(prefix).ok()?;
    let port = free_port();
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, nginx_config(prefix, port, els)).ok()?;
    let error_log = prefix.join("error.log");
    let child = Command::new(bin)
        .arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(&error_log)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    let mut started = Started {
        measured_pid: child.id(),
        child,
        addr,
        complaints: Arc::new(AtomicUsize::new(0)),
        idle_rss_kib: None,
    };
    loop {
        if TcpStream::connect(addr).is_ok() {
            break;
        }
        if Instant::now() > deadline || matches!(started.child.try_wait(), Ok(Some(_))) {
            eprintln!("nginx did not start; see {}", error_log.display());
            started.stop();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // The master forks the worker, which is where requests and memory go.
    let master = started.child.id();
    let worker = (0..50).find_map(|_| {
        let found = children_of(master).into_iter().next();
        if found.is_none() {
            thread::sleep(Duration::from_millis(20));
        }
        found
    });
    started.measured_pid = worker.unwrap_or(master);
    started.idle_rss_kib = started.rss_kib();
    Some(started)
}

pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name is in parentheses and may hold spaces: fields follow the last ')'.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

pub fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}
