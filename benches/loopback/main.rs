//! The load benchmark: a beacon node (BN) client sends newPayload (or getPayload) calls over
//! keep-alive connections on 127.0.0.1 to (a) the release `sync-proxy` binary in front of fast mock ELs,
//! (b) nginx with `mirror` in front of the same kind of mock ELs (answer from the first,
//! mirror to the others, as in the Go project's README), (c) one mock EL directly — the
//! floor — and (d) a minimal blocking forwarder, the least any fan-out proxy costs here, and
//! (e) a cut-through forwarder that streams each request to the first EL as it arrives and
//! validates nothing; in the getPayload scenarios also (f) a splicing forwarder that relays the
//! first EL's answer EL socket → pipe → BN socket with `splice(2)` (Linux), the least a relaying
//! proxy costs for a large answer; in the late and down scenarios also (g) a second proxy whose
//! ELs are all fast. All are measured in the same run, interleaved per repetition, and each
//! figure is the median over the repetitions. The `seq-*` scenarios send back to back (throughput-bound:
//! every copy of the previous call competes with the next); the `paced-*` ones leave 30 ms
//! (5 ms at 1 KiB) after each answer, so each call meets an idle proxy, as a block does every
//! 12 s. The `seq-*-8` and `seq-*-16` scenarios and `paced-1k-16` measure the fan-out width
//! against the 2-EL scenario of the same size in the same run (CPU per call per added EL); the
//! `paced-getpayload-*` ones make the answer the large body (a getPayloadV5 answer with 21 or
//! 48 blobs from every EL; with 1 EL, no secondary's answer arrives while the primary's is
//! relayed). Peak RSS is `VmHWM` from `/proc/PID/status`, CPU time the sum of
//! `/proc/PID/task/*/schedstat`.
//!
//! `cargo bench --bench loopback` (or `benches/load.sh`, which installs nginx when it is
//! missing). Environment: `LOOPBACK_REPS` (default 3), `LOOPBACK_ONLY` (run the scenarios
//! whose key contains this text, or any item of a comma-separated list), `LOOPBACK_NGINX=0` (skip nginx), `NGINX` (its binary),
//! `LOOPBACK_OUT` (also write the tables to this file), `SYNC_PROXY_BIN` (another build of the
//! proxy, say one with symbols for `perf`), `LOOPBACK_PROBE=1` (poll the proxy's backlog),
//! `LOOPBACK_METRICS=1` (print its per-EL metrics after each scenario).
//!
//! The mock ELs, the forwarder and the BN client are threads of this process; the proxy and
//! nginx are child processes, started per scenario so that each peak RSS belongs to one
//! scenario. This file holds the scenarios and the run; `mock` the ELs and the forwarder,
//! `client` the BN, `wire` the HTTP framing they share, `procs` the child processes and what is
//! read from them, `report` the tables.

mod client;
#[path = "../common/mod.rs"]
mod common;
mod mock;
mod procs;
mod report;
mod wire;

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use client::{run_load, Run};
use mock::{closed_port, spawn_cut_through, spawn_forwarder, spawn_mock_el, Secondary};
use procs::{
    count_lines, cpu_ns, dropped_calls, find_nginx, probe_backlog, start_nginx, start_proxy, Backlog, Started,
};
use report::{fan_out, mib, nginx_version, source_version, table, us};
use wire::request_wire;

/// One run of a target never lasts longer than this (nginx waits for a slow mirror).
const RUN_CAP: Duration = Duration::from_secs(5);
/// How long a child process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after each answer in the paced scenarios: long enough for every EL to have its
/// copy before the next call, as between blocks (one every 12 s) in real life.
const PACED_GAP: Duration = Duration::from_millis(30);
/// The same for 1 KiB calls, whose copies to 16 ELs are done well within it: enough to see
/// whether the BN's p50 grows with the number of secondaries when their copies do not overlap
/// the next call (primary first), short enough for 400 calls per run.
const PACED_SMALL_GAP: Duration = Duration::from_millis(5);

// ------------------------------------------------------------------------------- scenarios

/// What the BN asks in a scenario.
#[derive(Clone, Copy, PartialEq)]
enum Call {
    /// `engine_newPayloadV3` bodies of the scenario's size; the ELs answer `VALID`.
    NewPayload,
    /// `engine_getPayloadV5`; every EL answers a payload of 128 KiB with this many blobs
    /// (21: ~5.9 MB of JSON, 48: ~13 MB), so the large body is the answer.
    GetPayload { blobs: usize },
}

struct Scenario {
    key: &'static str,
    title: &'static str,
    /// The newPayload body's size (`Call::NewPayload`); only a label for `Call::GetPayload`.
    size: &'static str,
    call: Call,
    els: usize,
    conns: usize,
    requests: usize,
    warmup: usize,
    secondary: Secondary,
    /// How long the BN waits after each answer before its next call (zero: back to back).
    gap: Duration,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "seq-1k-2",
        title: "1 BN sequential, 1 KiB, 2 ELs",
        size: "1k",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 2000,
        warmup: 50,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1k-4",
        title: "1 BN sequential, 1 KiB, 4 ELs",
        size: "1k",
        call: Call::NewPayload,
        els: 4,
        conns: 1,
        requests: 2000,
        warmup: 50,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1k-8",
        title: "1 BN sequential, 1 KiB, 8 ELs",
        size: "1k",
        call: Call::NewPayload,
        els: 8,
        conns: 1,
        requests: 2000,
        warmup: 50,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1k-16",
        title: "1 BN sequential, 1 KiB, 16 ELs",
        size: "1k",
        call: Call::NewPayload,
        els: 16,
        conns: 1,
        requests: 2000,
        warmup: 50,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1m-2",
        title: "1 BN sequential, 1 MiB, 2 ELs",
        size: "1m",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 200,
        warmup: 5,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1m-4",
        title: "1 BN sequential, 1 MiB, 4 ELs",
        size: "1m",
        call: Call::NewPayload,
        els: 4,
        conns: 1,
        requests: 200,
        warmup: 5,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1m-8",
        title: "1 BN sequential, 1 MiB, 8 ELs",
        size: "1m",
        call: Call::NewPayload,
        els: 8,
        conns: 1,
        requests: 200,
        warmup: 5,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-1m-16",
        title: "1 BN sequential, 1 MiB, 16 ELs",
        size: "1m",
        call: Call::NewPayload,
        els: 16,
        conns: 1,
        requests: 200,
        warmup: 5,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-8m-2",
        title: "1 BN sequential, 8 MiB, 2 ELs",
        size: "8m",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 50,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "seq-8m-4",
        title: "1 BN sequential, 8 MiB, 4 ELs",
        size: "8m",
        call: Call::NewPayload,
        els: 4,
        conns: 1,
        requests: 50,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "conc16-1k-2",
        title: "16 BN connections, 1 KiB, 2 ELs",
        size: "1k",
        call: Call::NewPayload,
        els: 2,
        conns: 16,
        requests: 8000,
        warmup: 20,
        secondary: Secondary::Fast,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "late-1k-2",
        title: "1 BN sequential, 1 KiB, 2 ELs, secondary 50 ms late",
        size: "1k",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 2000,
        warmup: 50,
        secondary: Secondary::Late(Duration::from_millis(50)),
        gap: Duration::ZERO,
    },
    Scenario {
        key: "down-1k-2",
        title: "1 BN sequential, 1 KiB, 2 ELs, secondary down",
        size: "1k",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 2000,
        warmup: 50,
        secondary: Secondary::Down,
        gap: Duration::ZERO,
    },
    Scenario {
        key: "paced-1k-2",
        title: "1 BN, 1 KiB, 2 ELs, 5 ms between calls",
        size: "1k",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 400,
        warmup: 20,
        secondary: Secondary::Fast,
        gap: PACED_SMALL_GAP,
    },
    Scenario {
        key: "paced-1k-16",
        title: "1 BN, 1 KiB, 16 ELs, 5 ms between calls",
        size: "1k",
        call: Call::NewPayload,
        els: 16,
        conns: 1,
        requests: 400,
        warmup: 20,
        secondary: Secondary::Fast,
        gap: PACED_SMALL_GAP,
    },
    Scenario {
        key: "paced-8m-2",
        title: "1 BN, 8 MiB, 2 ELs, 30 ms between calls",
        size: "8m",
        call: Call::NewPayload,
        els: 2,
        conns: 1,
        requests: 40,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: PACED_GAP,
    },
    Scenario {
        key: "paced-8m-4",
        title: "1 BN, 8 MiB, 4 ELs, 30 ms between calls",
        size: "8m",
        call: Call::NewPayload,
        els: 4,
        conns: 1,
        requests: 40,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: PACED_GAP,
    },
    Scenario {
        key: "paced-getpayload-21b-2",
        title: "1 BN, getPayloadV5 answer with 21 blobs (~5.9 MB), 2 ELs, 30 ms between calls",
        size: "128k",
        call: Call::GetPayload { blobs: 21 },
        els: 2,
        conns: 1,
        requests: 40,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: PACED_GAP,
    },
    Scenario {
        key: "paced-getpayload-48b-2",
        title: "1 BN, getPayloadV5 answer with 48 blobs (~13 MB), 2 ELs, 30 ms between calls",
        size: "128k",
        call: Call::GetPayload { blobs: 48 },
        els: 2,
        conns: 1,
        requests: 40,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: PACED_GAP,
    },
    Scenario {
        key: "paced-getpayload-48b-1",
        title: "1 BN, getPayloadV5 answer with 48 blobs (~13 MB), 1 EL, 30 ms between calls",
        size: "128k",
        call: Call::GetPayload { blobs: 48 },
        els: 1,
        conns: 1,
        requests: 40,
        warmup: 2,
        secondary: Secondary::Fast,
        gap: PACED_GAP,
    },
];

/// Medians over the repetitions of one target in one scenario.
#[derive(Default)]
struct Row {
    rps: f64,
    p50: f64,
    p99: f64,
    requests: usize,
    errors: usize,
    peak_kib: Option<u64>,
    idle_kib: Option<u64>,
    after_kib: Option<u64>,
    complaints: usize,
    /// Ordered calls the proxy dropped because an EL's backlog was full.
    dropped: Option<u64>,
    /// With `LOOPBACK_PROBE=1`: the largest backlog the proxy had (all ELs together).
    backlog: Option<Backlog>,
    /// CPU time of the measured process per request (warm-up calls included), microseconds.
    cpu_us: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn summarize(runs: &[Run]) -> Row {
    Row {
        rps: median(runs.iter().map(Run::rps).collect()),
        p50: median(runs.iter().map(|r| r.percentile(50.0)).collect()),
        p99: median(runs.iter().map(|r| r.percentile(99.0)).collect()),
        requests: runs.iter().map(|r| r.requests).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
        ..Row::default()
    }
}

/// The targets of one scenario, in the order of the table.
const PROXY: usize = 0;
const NGINX: usize = 1;
const DIRECT: usize = 2;
/// For the late and down scenarios: the proxy again, with every EL fast, in the same run.
const BASELINE: usize = 3;
/// The minimal forwarder of this file: what any fan-out proxy costs at least.
const FORWARDER: usize = 4;
/// The same, streaming each request to the first EL as it arrives (cut-through).
const CUT_THROUGH: usize = 5;
/// For getPayload scenarios: the minimal forwarder relaying the answer with `splice(2)`.
const SPLICING: usize = 6;
const TARGETS: usize = 7;
const TARGET_NAMES: [&str; TARGETS] = [
    "sync-proxy",
    "nginx mirror",
    "direct to one EL (floor)",
    "sync-proxy, all ELs fast",
    "minimal forwarder (reference)",
    "cut-through forwarder (reference)",
    "splicing forwarder (reference)",
];

/// The BN's request body and the answer body every mock EL gives, for a scenario. None when the
/// newPayload size does not parse.
fn bodies(s: &Scenario) -> Option<(Vec<u8>, Vec<u8>)> {
    match s.call {
        Call::NewPayload => Some((common::new_payload(s.size)?, common::VALID_ANSWER.to_vec())),
        Call::GetPayload { blobs } => {
            Some((common::GET_PAYLOAD_V5.to_vec(), common::get_payload_v5_answer(blobs)))
        }
    }
}

/// What a scenario's tables say it sends and answers.
fn describe(s: &Scenario, request: &[u8], answer: &[u8]) -> String {
    match s.call {
        Call::NewPayload => format!("{} B newPayload bodies", request.len()),
        Call::GetPayload { blobs } => {
            format!("{} B getPayloadV5 requests, {} B answers ({blobs} blobs)", request.len(), answer.len())
        }
    }
}

fn spawn_els(count: usize, secondary: Secondary, answer: &[u8]) -> Vec<SocketAddr> {
    (0..count)
        .map(|i| match (i, secondary) {
            (0, _) | (_, Secondary::Fast) => spawn_mock_el(Duration::ZERO, answer),
            (_, Secondary::Late(delay)) => spawn_mock_el(delay, answer),
            (_, Secondary::Down) => closed_port(),
        })
        .collect()
}

fn run_scenario(
    s: &Scenario,
    (body, answer): (&[u8], &[u8]),
    proxy_bin: &Path,
    nginx: Option<&Path>,
    reps: usize,
    scratch: &Path,
) -> [Option<Row>; TARGETS] {
    let wire = Arc::new(request_wire(body));
    let els = spawn_els(s.els, s.secondary, answer);
    let proxy = start_proxy(proxy_bin, &els, &scratch.join(format!("proxy-{}.log", s.key)));
    let nginx = nginx.and_then(|bin| start_nginx(bin, &scratch.join(format!("nginx-{}", s.key)), &els));
    let baseline = (s.secondary != Secondary::Fast).then(|| {
        start_proxy(
            proxy_bin,
            &spawn_els(s.els, Secondary::Fast, answer),
            &scratch.join(format!("baseline-{}.log", s.key)),
        )
    });
    let mut targets: Vec<(usize, SocketAddr, Option<u32>)> =
        vec![(PROXY, proxy.addr, Some(proxy.measured_pid)), (DIRECT, els[0], None)];
    if let Some(n) = &nginx {
        targets.push((NGINX, n.addr, Some(n.measured_pid)));
    }
    if let Some(b) = &baseline {
        targets.push((BASELINE, b.addr, Some(b.measured_pid)));
    }
    if s.secondary == Secondary::Fast {
        targets.push((FORWARDER, spawn_forwarder(els.clone()), None));
        targets.push((CUT_THROUGH, spawn_cut_through(els.clone()), None));
        #[cfg(target_os = "linux")]
        if matches!(s.call, Call::GetPayload { .. }) {
            targets.push((SPLICING, mock::spawn_splicing(els.clone()), None));
        }
    }
    let mut runs: [Vec<Run>; TARGETS] = Default::default();
    let mut cpu: [(u64, usize); TARGETS] = Default::default();
    let probing = std::env::var("LOOPBACK_PROBE").is_ok_and(|v| v == "1");
    let mut backlog: Option<Backlog> = None;
    for rep in 0..reps {
        // Rotate who goes first, so no target always runs on a machine warmed by another.
        for k in 0..targets.len() {
            let (which, addr, pid) = targets[(k + rep) % targets.len()];
            let before = pid.and_then(cpu_ns);
            let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let probe = (probing && which == PROXY).then(|| probe_backlog(addr, busy.clone()));
            let run = run_load(addr, s.conns, s.requests, s.warmup, s.gap, &wire);
            busy.store(false, Ordering::Relaxed);
            if let Some(seen) = probe.and_then(|p| p.join().ok()) {
                let most = backlog.get_or_insert_with(Backlog::default);
                most.calls = most.calls.max(seen.calls);
                most.bytes = most.bytes.max(seen.bytes);
            }
            if let (Some(before), Some(after)) = (before, pid.and_then(cpu_ns)) {
                cpu[which].0 += after.saturating_sub(before);
                cpu[which].1 += run.requests + s.warmup * s.conns;
            }
            runs[which].push(run);
        }
    }
    let mut rows: [Option<Row>; TARGETS] = Default::default();
    let mut finish = |which: usize, started: Option<Started>, complaints: usize| {
        if runs[which].is_empty() {
            return;
        }
        let mut row = summarize(&runs[which]);
        let (ns, calls) = cpu[which];
        row.cpu_us = (calls > 0).then(|| ns as f64 / 1000.0 / calls as f64);
        if let Some(p) = started {
            row.peak_kib = p.peak_rss_kib();
            row.idle_kib = p.idle_rss_kib;
            row.after_kib = p.rss_kib();
            row.complaints = complaints.max(p.complaints.load(Ordering::Relaxed));
            if which == PROXY || which == BASELINE {
                row.dropped = dropped_calls(p.addr);
            }
            p.stop();
        }
        rows[which] = Some(row);
    };
    finish(PROXY, Some(proxy), 0);
    let nginx_errors =
        nginx.as_ref().map_or(0, |_| count_lines(&scratch.join(format!("nginx-{}/error.log", s.key))));
    finish(NGINX, nginx, nginx_errors);
    finish(DIRECT, None, 0);
    finish(BASELINE, baseline, 0);
    finish(FORWARDER, None, 0);
    finish(CUT_THROUGH, None, 0);
    finish(SPLICING, None, 0);
    if let Some(row) = rows[PROXY].as_mut() {
        row.backlog = backlog;
    }
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument, if any, selects scenarios too.
    let only = std::env::var("LOOPBACK_ONLY")
        .ok()
        .or_else(|| std::env::args().skip(1).find(|a| !a.starts_with('-')));
    let reps: usize = std::env::var("LOOPBACK_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let proxy_bin = std::env::var_os("SYNC_PROXY_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sync-proxy")), PathBuf::from);
    let scratch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-loopback");
    let _ = std::fs::create_dir_all(&scratch);
    let nginx = find_nginx();
    let t0 = Instant::now();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "## Load benchmark (`cargo bench --bench loopback`)\n\nproxy: {} ({} bytes, {}); nginx: {}; {} CPUs\n",
        proxy_bin.display(),
        std::fs::metadata(&proxy_bin).map_or(0, |m| m.len()),
        source_version(),
        nginx
            .as_ref()
            .map_or("not installed (run benches/load.sh to install it)".to_string(), |p| nginx_version(p)),
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{report}");
    let mut summary = String::from(
        "| scenario | proxy req/s | proxy p50 | proxy p99 | proxy peak RSS | proxy CPU/call | nginx req/s | nginx p50 | nginx p99 | nginx peak RSS | direct req/s | direct p50 | direct p99 | proxy−direct p50 | proxy/direct p50 | proxy/nginx req/s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut done: Vec<(&Scenario, [Option<Row>; TARGETS])> = Vec::new();
    // A comma-separated list selects the scenarios whose key contains any of its items.
    let wanted = |key: &str| only.as_deref().map_or(true, |o| o.split(',').any(|o| key.contains(o.trim())));
    for s in SCENARIOS.iter().filter(|s| wanted(s.key)) {
        let Some((body, answer)) = bodies(s) else {
            println!("### {}: no {} body; skipped\n", s.title, s.size);
            continue;
        };
        let rows = run_scenario(s, (&body, &answer), &proxy_bin, nginx.as_deref(), reps, &scratch);
        let text = table(s, &describe(s, &body, &answer), reps, &rows);
        print!("{text}");
        let _ = io::stdout().flush();
        report.push_str(&text);
        let cell = |which: usize, f: &dyn Fn(&Row) -> String| rows[which].as_ref().map_or("—".to_string(), f);
        let ratio = |a: usize, b: usize, f: &dyn Fn(&Row, &Row) -> String| match (&rows[a], &rows[b]) {
            (Some(x), Some(y)) => f(x, y),
            _ => "—".to_string(),
        };
        let _ = writeln!(
            summary,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.key,
            cell(PROXY, &|r| format!("{:.0}", r.rps)),
            cell(PROXY, &|r| us(r.p50)),
            cell(PROXY, &|r| us(r.p99)),
            cell(PROXY, &|r| mib(r.peak_kib)),
            cell(PROXY, &|r| r.cpu_us.map_or("—".to_string(), us)),
            cell(NGINX, &|r| format!("{:.0}", r.rps)),
            cell(NGINX, &|r| us(r.p50)),
            cell(NGINX, &|r| us(r.p99)),
            cell(NGINX, &|r| mib(r.peak_kib)),
            cell(DIRECT, &|r| format!("{:.0}", r.rps)),
            cell(DIRECT, &|r| us(r.p50)),
            cell(DIRECT, &|r| us(r.p99)),
            ratio(PROXY, DIRECT, &|p, d| format!("+{}", us(p.p50 - d.p50))),
            ratio(PROXY, DIRECT, &|p, d| format!("{:.2}×", p.p50 / d.p50)),
            ratio(PROXY, NGINX, &|p, n| format!("{:.2}×", p.rps / n.rps)),
        );
        done.push((s, rows));
    }
    let width = fan_out(&done);
    let tail = format!("### Summary\n\n{summary}\n{width}Total time: {:.0} s\n", t0.elapsed().as_secs_f64());
    print!("{tail}");
    report.push_str(&tail);
    if let Ok(path) = std::env::var("LOOPBACK_OUT") {
        if let Err(e) = std::fs::write(&path, &report) {
            eprintln!("cannot write {path}: {e}");
        }
    }
}
