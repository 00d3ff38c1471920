//! Markdown tables and the lines that compare the targets of a scenario.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::mock::Secondary;
use crate::{
    Call, Row, Scenario, BASELINE, CUT_THROUGH, DIRECT, FORWARDER, NGINX, PROXY, SPLICING, TARGETS,
    TARGET_NAMES,
};

pub fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

pub fn table(s: &Scenario, what: &str, reps: usize, rows: &[Option<Row>; TARGETS]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {} (`{}`)\n", s.title, s.key);
    let _ = writeln!(
        out,
        "{what}, {} connection(s), {} requests per run (5 s cap), median of {reps} runs.\n",
        s.conns, s.requests
    );
    let _ = writeln!(
        out,
        "| target | req/s | p50 | p99 | peak RSS | idle RSS | RSS after | CPU per request | requests | errors | warnings logged | calls dropped |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for which in [PROXY, NGINX, FORWARDER, CUT_THROUGH, SPLICING, DIRECT, BASELINE] {
        let Some(r) = &rows[which] else { continue };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            TARGET_NAMES[which],
            r.rps,
            us(r.p50),
            us(r.p99),
            mib(r.peak_kib),
            mib(r.idle_kib),
            mib(r.after_kib),
            r.cpu_us.map_or("—".to_string(), us),
            r.requests,
            r.errors,
            if which == DIRECT { "—".to_string() } else { r.complaints.to_string() },
            r.dropped.map_or("—".to_string(), |d| d.to_string())
        );
    }
    out.push('\n');
    if let Some(b) = rows[PROXY].as_ref().and_then(|r| r.backlog) {
        let _ = writeln!(
            out,
            "- largest proxy backlog seen (all ELs, polled every 10 ms): {} calls, {}",
            b.calls,
            mib(Some(b.bytes / 1024))
        );
    }
    if let (Some(p), Some(d)) = (&rows[PROXY], &rows[DIRECT]) {
        let _ = writeln!(
            out,
            "- proxy vs direct: p50 {:.2}× (+{}), p99 {:.2}×, req/s {:.2}×",
            p.p50 / d.p50,
            us(p.p50 - d.p50),
            p.p99 / d.p99,
            p.rps / d.rps
        );
    }
    if let (Some(p), Some(n)) = (&rows[PROXY], &rows[NGINX]) {
        let _ = writeln!(
            out,
            "- proxy vs nginx mirror: req/s {:.2}×, p50 {:.2}×, p99 {:.2}×",
            p.rps / n.rps,
            p.p50 / n.p50,
            p.p99 / n.p99
        );
    }
    if let (Some(p), Some(f)) = (&rows[PROXY], &rows[FORWARDER]) {
        let _ = writeln!(
            out,
            "- proxy vs minimal forwarder: p50 {:.2}× ({:+.0} µs), p99 {:.2}×, req/s {:.2}×",
            p.p50 / f.p50,
            p.p50 - f.p50,
            p.p99 / f.p99,
            p.rps / f.rps
        );
    }
    for (which, name) in [
        (FORWARDER, "minimal forwarder"),
        (CUT_THROUGH, "cut-through forwarder"),
        (SPLICING, "splicing forwarder"),
    ] {
        if let (Some(f), Some(d)) = (&rows[which], &rows[DIRECT]) {
            let _ = writeln!(out, "- {name} vs direct: p50 {:.2}× (+{})", f.p50 / d.p50, us(f.p50 - d.p50));
        }
    }
    if let (Some(p), Some(c)) = (&rows[PROXY], &rows[SPLICING]) {
        let _ = writeln!(out, "- proxy vs splicing forwarder: p50 {:.2}×", p.p50 / c.p50);
    }
    if let (Some(n), Some(d)) = (&rows[NGINX], &rows[DIRECT]) {
        let _ = writeln!(out, "- nginx vs direct: p50 {:.2}× (+{})", n.p50 / d.p50, us(n.p50 - d.p50));
    }
    if let (Some(p), Some(b)) = (&rows[PROXY], &rows[BASELINE]) {
        let _ = writeln!(
            out,
            "- proxy with this secondary vs all ELs fast: p50 {:+.1}%, p99 {:+.1}%, req/s {:+.1}%",
            (p.p50 / b.p50 - 1.0) * 100.0,
            (p.p99 / b.p99 - 1.0) * 100.0,
            (p.rps / b.rps - 1.0) * 100.0
        );
    }
    out.push('\n');
    out
}

/// The fan-out width table: each newPayload scenario with more than 2 fast ELs against the 2-EL
/// one of the same body size and pace (`seq-1k-16` against `seq-1k-2`, `paced-1k-16` against
/// `paced-1k-2`) in the same run. "CPU per call per added EL" is the slope of the proxy's CPU per
/// call from 2 ELs to N: (CPU(N) − CPU(2)) / (N − 2). Empty when no such pair ran.
pub fn fan_out(done: &[(&Scenario, [Option<Row>; TARGETS])]) -> String {
    let width_scenario =
        |s: &Scenario| s.call == Call::NewPayload && s.conns == 1 && s.secondary == Secondary::Fast;
    let mut out = String::new();
    for (base, base_rows) in done.iter().filter(|(s, _)| width_scenario(s) && s.els == 2) {
        let (Some(b), Some(bd)) = (&base_rows[PROXY], &base_rows[DIRECT]) else { continue };
        let wider: Vec<_> = done
            .iter()
            .filter(|(s, _)| width_scenario(s) && s.size == base.size && s.gap == base.gap && s.els > 2)
            .filter_map(|(s, rows)| Some((s, rows[PROXY].as_ref()?, rows[DIRECT].as_ref()?)))
            .collect();
        if wider.is_empty() {
            continue;
        }
        if out.is_empty() {
            out.push_str(
                "### Fan-out width (1 BN, against the 2-EL scenario of the same size and pace in this run)\n\n\
                 | scenario | ELs | proxy p50 | proxy p99 | direct p50 | proxy−direct p50 | p50 / 2-EL p50 | added p50 / 2-EL added p50 | proxy CPU/call | CPU/call per added EL |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
        }
        let added_base = b.p50 - bd.p50;
        let _ = writeln!(
            out,
            "| {} | 2 | {} | {} | {} | +{} | 1.00× | 1.00× | {} | — |",
            base.key,
            us(b.p50),
            us(b.p99),
            us(bd.p50),
            us(added_base),
            b.cpu_us.map_or("—".to_string(), us),
        );
        for (s, p, d) in wider {
            let slope = match (p.cpu_us, b.cpu_us) {
                (Some(n), Some(two)) => format!("{:+.1} µs", (n - two) / (s.els - 2) as f64),
                _ => "—".to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | +{} | {:.2}× | {:.2}× | {} | {} |",
                s.key,
                s.els,
                us(p.p50),
                us(p.p99),
                us(d.p50),
                us(p.p50 - d.p50),
                p.p50 / b.p50,
                (p.p50 - d.p50) / added_base,
                p.cpu_us.map_or("—".to_string(), us),
                slope,
            );
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// The commit the proxy was built from, and whether `src/` had changes on top of it.
pub fn source_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "commit unknown".to_string(),
        Some(commit) => match git(&["status", "--porcelain", "--", "src"]) {
            Some(changes) if !changes.is_empty() => format!("commit {commit} with src/ changes"),
            _ => format!("commit {commit}"),
        },
    }
}

pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| bin.display().to_string())
}
