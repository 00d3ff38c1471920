//! Counters and gauges the operator scrapes, in the Prometheus text exposition format
//! (hand-written: the format is a few lines of text), and the `/status` JSON document,
//! including the sync view (`sync_view`: each execution client's newest VALID payload).
//!
//! Recording is a handful of integer additions into fixed arrays: nothing on the proxy path
//! allocates. Rendering reuses one output buffer. This file knows no sockets and no HTTP.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::downstream::Expired;
use crate::policy::Class;
use crate::probes::ElProbe;
use crate::sync_view::{hash_hex, SyncView};
use crate::upstream::Failure;

/// Request families, in the order of `Class`.
const CLASSES: [Class; 9] = [
    Class::NewPayload,
    Class::ForkchoiceUpdated,
    Class::GetPayload,
    Class::GetPayloadBodies,
    Class::GetBlobs,
    Class::ExchangeCapabilities,
    Class::GetClientVersion,
    Class::OtherEngine,
    Class::NonEngine,
];

/// What became of a request from a beacon node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Sent on to the execution clients.
    Forwarded,
    /// A forkchoiceUpdated from a beacon node that is not the best: answered SYNCING here.
    Filtered,
    /// Refused before forwarding: bad HTTP, bad JSON, failed authentication.
    Rejected,
    /// Forwarded, but no execution client answered (502).
    Failed,
    /// A batch holding Engine API calls: answered -32600 here, forwarded to no one.
    Refused,
}

const OUTCOMES: [(RequestOutcome, &str); 5] = [
    (RequestOutcome::Forwarded, "forwarded"),
    (RequestOutcome::Filtered, "filtered"),
    (RequestOutcome::Rejected, "rejected"),
    (RequestOutcome::Failed, "failed"),
    (RequestOutcome::Refused, "refused"),
];

const FAILURES: [Failure; 6] =
    [Failure::Refused, Failure::Reset, Failure::Timeout, Failure::BadAnswer, Failure::Down, Failure::Dropped];

/// Upper bounds of the answer latency histogram, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Statuses an execution client reports, kept as an index so recording never allocates.
const STATUSES: [&str; 5] = ["VALID", "INVALID", "SYNCING", "ACCEPTED", "INVALID_BLOCK_HASH"];

/// The most beacon nodes remembered for `/status`; older ones are forgotten first.
const MAX_BEACONS: usize = 64;

#[derive(Debug, Default, Clone)]
pub struct ElMetrics {
    pub up: bool,
    buckets: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
    errors: [u64; FAILURES.len()],
    /// Answers carrying a JSON-RPC error to calls whose answers are combined.
    rpc_errors: u64,
    pub last_latency: Option<Duration>,
    last_status: Option<usize>,
    /// When it last answered a call with a 2xx, for `/readyz`.
    pub last_answer: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Beacon {
    id: String,
    /// Where the identity came from (`beacons::Source::label`).
    source: &'static str,
    last_request: Instant,
    last_timestamp: u64,
}

/// Everything counted since start-up.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    requests: [[u64; OUTCOMES.len()]; CLASSES.len()],
    pub els: Vec<ElMetrics>,
    best_switches: u64,
    /// Best-BN candidates ignored: a timestamp too far ahead of the wall clock, an EL answer
    /// that did not make the payload real.
    implausible_timestamps: u64,
    candidates_refused: u64,
    /// Candidates dropped from the best-BN rule's full table (`BestBeacon::dropped`), set
    /// before rendering.
    pub candidates_dropped: u64,
    disagreements: u64,
    /// `--payload-choice best-value`: payloads relayed per EL, and the wei they beat the BN's
    /// own EL's payload by, in ETH.
    payload_picks: Vec<u64>,
    payload_gain_eth: f64,
    /// Build mappings dropped from the full map (`PayloadMap::dropped`), set before rendering.
    pub payload_mappings_dropped: u64,
    /// `--answer-policy safe` answers of SYNCING because the clients split on validity.
    safe_syncing: u64,
    /// Relayed answers cut short by their execution client after part was written.
    relay_cut: u64,
    /// Bytes of relayed answers moved from an execution client's socket to a beacon node's
    /// uncopied (`event_loop::piped`).
    pub piped_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Beacon node connections closed by a deadline, by `Expired::ALL` index.
    closed: [u64; Expired::ALL.len()],
    beacons: Vec<Beacon>,
    /// Each `--builders` client's newest VALID payload and lag.
    pub sync: SyncView,
    out: String,
}

/// Live values the event loop owns, passed in at render time.
pub struct Snapshot<'a> {
    pub open_connections: usize,
    pub best: Option<(&'a str, u64)>,
    /// Per execution client: name, whether it is a `--proxies` peer, its state (unknown, up,
    /// down), backlog count and bytes.
    pub els: Vec<(&'a str, bool, &'static str, usize, usize)>,
}

impl Metrics {
    /// Metrics for `els` execution clients, the first `builders` of which are `--builders`
    /// (the rest are `--proxies` peers, which have no sync view).
    pub fn new(els: usize, builders: usize, now: Instant) -> Self {
        Metrics {
            started: now,
            requests: [[0; OUTCOMES.len()]; CLASSES.len()],
            els: vec![ElMetrics::default(); els],
            best_switches: 0,
            implausible_timestamps: 0,
            candidates_refused: 0,
            candidates_dropped: 0,
            disagreements: 0,
            safe_syncing: 0,
            relay_cut: 0,
            piped_bytes: 0,
            payload_picks: vec![0; els],
            payload_gain_eth: 0.0,
            payload_mappings_dropped: 0,
            bytes_in: 0,
            bytes_out: 0,
            closed: [0; Expired::ALL.len()],
            beacons: Vec::new(),
            sync: SyncView::new(builders.min(els)),
            out: String::new(),
        }
    }

    pub fn request(&mut self, class: Class, outcome: RequestOutcome) {
        let c = CLASSES.iter().position(|&k| k == class).unwrap_or(CLASSES.len() - 1);
        let o = OUTCOMES.iter().position(|&(k, _)| k == outcome).unwrap_or(0);
        self.requests[c][o] += 1;
    }

    pub fn requests(&self, class: Class, outcome: RequestOutcome) -> u64 {
        let c = CLASSES.iter().position(|&k| k == class).unwrap_or(CLASSES.len() - 1);
        let o = OUTCOMES.iter().position(|&(k, _)| k == outcome).unwrap_or(0);
        self.requests[c][o]
    }

    /// Client `el` answered a call after `latency`, with this payload status; `served` is when,
    /// if the answer was a 2xx (for `/readyz`).
    pub fn answered(&mut self, el: usize, latency: Duration, status: Option<&str>, served: Option<Instant>) {
        let Some(m) = self.els.get_mut(el) else { return };
        m.last_answer = served.or(m.last_answer);
        let secs = latency.as_secs_f64();
        for (bucket, bound) in m.buckets.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        m.latency_count += 1;
        m.latency_sum += secs;
        m.last_latency = Some(latency);
        if let Some(status) = status {
            m.last_status = STATUSES.iter().position(|s| *s == status).or(m.last_status);
        }
    }

    pub fn failed(&mut self, el: usize, failure: Failure) {
        let Some(m) = self.els.get_mut(el) else { return };
        if let Some(i) = FAILURES.iter().position(|&f| f == failure) {
            m.errors[i] += 1;
        }
    }

    /// The execution client answered a combined call (getClientVersion, exchangeCapabilities)
    /// with a JSON-RPC error: it answered, so this is neither a failure nor a 502.
    pub fn rpc_error(&mut self, el: usize) {
        if let Some(m) = self.els.get_mut(el) {
            m.rpc_errors += 1;
        }
    }

    pub fn set_up(&mut self, el: usize, up: bool) {
        if let Some(m) = self.els.get_mut(el) {
            m.up = up;
        }
    }

    /// A beacon node connection was closed by one of its deadlines.
    pub fn connection_closed(&mut self, why: Expired) {
        if let Some(i) = Expired::ALL.iter().position(|&e| e == why) {
            self.closed[i] += 1;
        }
    }

    pub fn best_switched(&mut self) {
        self.best_switches += 1;
    }

    /// A request carried a timestamp too far ahead of the wall clock to count.
    pub fn implausible_timestamp(&mut self) {
        self.implausible_timestamps += 1;
    }

    /// An EL's answer did not confirm a BN's larger timestamp.
    pub fn candidate_refused(&mut self) {
        self.candidates_refused += 1;
    }

    /// `--payload-choice best-value` relayed EL `el`'s payload, `gain_eth` more than the BN's own.
    pub fn payload_picked(&mut self, el: usize, gain_eth: f64) {
        if el >= self.payload_picks.len() {
            self.payload_picks.resize(el + 1, 0);
        }
        self.payload_picks[el] += 1;
        self.payload_gain_eth += gain_eth;
    }

    pub fn safe_syncing(&mut self) {
        self.safe_syncing += 1;
    }

    /// An answer relayed as it arrived broke off after part of it was written (`core::relay`).
    pub fn relay_cut(&mut self) {
        self.relay_cut += 1;
    }

    pub fn disagreement(&mut self) {
        self.disagreements += 1;
    }

    /// Notes a request from a beacon node, for `/status`.
    pub fn beacon_seen(&mut self, id: &str, source: &'static str, timestamp: Option<u64>, now: Instant) {
        if let Some(b) = self.beacons.iter_mut().find(|b| b.id == id) {
            b.last_request = now;
            b.source = source;
            if let Some(ts) = timestamp {
                b.last_timestamp = b.last_timestamp.max(ts);
            }
            return;
        }
        if self.beacons.len() >= MAX_BEACONS {
            if let Some(oldest) = (0..self.beacons.len()).min_by_key(|&i| self.beacons[i].last_request) {
                self.beacons.swap_remove(oldest);
            }
        }
        self.beacons.push(Beacon {
            id: id.to_string(),
            source,
            last_request: now,
            last_timestamp: timestamp.unwrap_or(0),
        });
    }

    /// Time since start-up.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// When beacon node `id` last sent a request.
    pub fn beacon_last_seen(&self, id: &str) -> Option<Instant> {
        self.beacons.iter().find(|b| b.id == id).map(|b| b.last_request)
    }

    /// The `--builders` clients as `/readyz` sees them (peers do not make the proxy ready).
    pub fn el_probes(&self, snap: &Snapshot<'_>) -> Vec<ElProbe> {
        snap.els
            .iter()
            .enumerate()
            .filter(|(_, (_, peer, _, _, _))| !peer)
            .map(|(i, (_, _, state, _, _))| ElProbe {
                up: *state == "up",
                last_answer: self.els.get(i).and_then(|m| m.last_answer),
            })
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_prometheus(&mut self, snap: &Snapshot<'_>, now: Instant) -> &str {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        family(
            &mut out,
            "sync_proxy_requests_total",
            "counter",
            "Beacon node requests by method family and outcome.",
        );
        for (c, class) in CLASSES.iter().enumerate() {
            for (o, (_, outcome)) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "sync_proxy_requests_total{{method=\"{}\",outcome=\"{outcome}\"}} {}",
                    class.label(),
                    self.requests[c][o]
                );
            }
        }
        family(
            &mut out,
            "sync_proxy_el_up",
            "gauge",
            "Whether the execution client's last connection attempt succeeded.",
        );
        for (i, (name, _, _, _, _)) in snap.els.iter().enumerate() {
            let up = self.els.get(i).is_some_and(|m| m.up);
            let _ = writeln!(out, "sync_proxy_el_up{{el=\"{}\"}} {}", escape(name), u8::from(up));
        }
        family(
            &mut out,
            "sync_proxy_el_answer_seconds",
            "histogram",
            "Time from sending a call to an execution client to its whole answer.",
        );
        for (i, (name, _, _, _, _)) in snap.els.iter().enumerate() {
            let Some(m) = self.els.get(i) else { continue };
            let name = escape(name);
            for (bound, count) in BUCKETS.iter().zip(m.buckets) {
                let _ = writeln!(
                    out,
                    "sync_proxy_el_answer_seconds_bucket{{el=\"{name}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "sync_proxy_el_answer_seconds_bucket{{el=\"{name}\",le=\"+Inf\"}} {}",
                m.latency_count
            );
            let _ = writeln!(out, "sync_proxy_el_answer_seconds_sum{{el=\"{name}\"}} {}", m.latency_sum);
            let _ = writeln!(out, "sync_proxy_el_answer_seconds_count{{el=\"{name}\"}} {}", m.latency_count);
        }
        family(
            &mut out,
            "sync_proxy_el_errors_total",
            "counter",
            "Calls to an execution client that got no answer, by kind.",
        );
        for (i, (name, _, _, _, _)) in snap.els.iter().enumerate() {
            let Some(m) = self.els.get(i) else { continue };
            for (failure, count) in FAILURES.iter().zip(m.errors) {
                if *failure == Failure::Dropped {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "sync_proxy_el_errors_total{{el=\"{}\",kind=\"{}\"}} {count}",
                    escape(name),
                    failure.label()
                );
            }
        }
        family(
            &mut out,
            "sync_proxy_el_dropped_total",
            "counter",
            "Ordered calls dropped because the backlog was full.",
        );
        for (i, (name, _, _, _, _)) in snap.els.iter().enumerate() {
            let dropped = self.els.get(i).map_or(0, |m| m.errors[FAILURES.len() - 1]);
            let _ = writeln!(out, "sync_proxy_el_dropped_total{{el=\"{}\"}} {dropped}", escape(name));
        }
        family(
            &mut out,
            "sync_proxy_el_rpc_errors_total",
            "counter",
            "JSON-RPC errors the execution client answered to calls whose answers are combined.",
        );
        for (i, (name, _, _, _, _)) in snap.els.iter().enumerate() {
            let errors = self.els.get(i).map_or(0, |m| m.rpc_errors);
            let _ = writeln!(out, "sync_proxy_el_rpc_errors_total{{el=\"{}\"}} {errors}", escape(name));
        }
        family(
            &mut out,
            "sync_proxy_el_backlog_requests",
            "gauge",
            "Ordered calls waiting for the execution client.",
        );
        for (name, _, _, count, _) in &snap.els {
            let _ = writeln!(out, "sync_proxy_el_backlog_requests{{el=\"{}\"}} {count}", escape(name));
        }
        family(
            &mut out,
            "sync_proxy_el_backlog_bytes",
            "gauge",
            "Bytes of ordered calls waiting for the execution client.",
        );
        for (name, _, _, _, bytes) in &snap.els {
            let _ = writeln!(out, "sync_proxy_el_backlog_bytes{{el=\"{}\"}} {bytes}", escape(name));
        }
        family(
            &mut out,
            "sync_proxy_el_last_status",
            "gauge",
            "1 for the payload status the execution client last reported.",
        );
        for (i, (name, _, _, _, _)) in snap.els.iter().enumerate() {
            let last = self.els.get(i).and_then(|m| m.last_status);
            for (s, status) in STATUSES.iter().enumerate() {
                let value = u8::from(last == Some(s));
                let _ = writeln!(
                    out,
                    "sync_proxy_el_last_status{{el=\"{}\",status=\"{status}\"}} {value}",
                    escape(name)
                );
            }
        }
        self.render_sync(&mut out, snap);
        family(
            &mut out,
            "sync_proxy_best_beacon_switches_total",
            "counter",
            "Times another beacon node became the best.",
        );
        let _ = writeln!(out, "sync_proxy_best_beacon_switches_total {}", self.best_switches);
        family(
            &mut out,
            "sync_proxy_best_beacon_candidates_ignored_total",
            "counter",
            "Larger timestamps that did not make their beacon node the best, by reason: too far ahead \
             of the wall clock, refused by the first EL answer, or dropped from the full table.",
        );
        for (reason, n) in [
            ("implausible", self.implausible_timestamps),
            ("refused", self.candidates_refused),
            ("dropped", self.candidates_dropped),
        ] {
            let _ =
                writeln!(out, "sync_proxy_best_beacon_candidates_ignored_total{{reason=\"{reason}\"}} {n}");
        }
        family(
            &mut out,
            "sync_proxy_best_beacon_timestamp_seconds",
            "gauge",
            "Payload timestamp last seen from the best beacon node.",
        );
        let _ =
            writeln!(out, "sync_proxy_best_beacon_timestamp_seconds {}", snap.best.map_or(0, |(_, ts)| ts));
        family(
            &mut out,
            "sync_proxy_status_disagreements_total",
            "counter",
            "Calls on which execution clients reported different statuses.",
        );
        let _ = writeln!(out, "sync_proxy_status_disagreements_total {}", self.disagreements);
        family(
            &mut out,
            "sync_proxy_answer_policy_syncing_total",
            "counter",
            "Calls answered SYNCING under --answer-policy safe because the execution clients split \
             on validity.",
        );
        let _ = writeln!(out, "sync_proxy_answer_policy_syncing_total {}", self.safe_syncing);
        family(
            &mut out,
            "sync_proxy_relayed_answers_cut_total",
            "counter",
            "Answers relayed to a beacon node as they arrived whose execution client failed after \
             part was written: the beacon node's connection was closed after that part.",
        );
        let _ = writeln!(out, "sync_proxy_relayed_answers_cut_total {}", self.relay_cut);
        family(
            &mut out,
            "sync_proxy_relayed_piped_bytes_total",
            "counter",
            "Bytes of answers relayed from a plain-TCP execution client to a beacon node through a \
             kernel pipe (splice), never copied into the proxy.",
        );
        let _ = writeln!(out, "sync_proxy_relayed_piped_bytes_total {}", self.piped_bytes);
        family(
            &mut out,
            "sync_proxy_payload_choice_total",
            "counter",
            "getPayload answers relayed under --payload-choice best-value, by the EL that built the payload.",
        );
        for (i, (name, ..)) in snap.els.iter().enumerate() {
            let n = self.payload_picks.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "sync_proxy_payload_choice_total{{el=\"{}\"}} {n}", escape(name));
        }
        family(
            &mut out,
            "sync_proxy_payload_choice_gain_eth_total",
            "counter",
            "ETH by which the relayed payloads beat the ones the beacon node's payloadId named.",
        );
        let _ = writeln!(out, "sync_proxy_payload_choice_gain_eth_total {}", self.payload_gain_eth);
        family(
            &mut out,
            "sync_proxy_payload_choice_mappings_dropped_total",
            "counter",
            "Payload build mappings dropped because the map was full.",
        );
        let _ = writeln!(
            out,
            "sync_proxy_payload_choice_mappings_dropped_total {}",
            self.payload_mappings_dropped
        );
        family(&mut out, "sync_proxy_received_bytes_total", "counter", "Bytes read from beacon nodes.");
        let _ = writeln!(out, "sync_proxy_received_bytes_total {}", self.bytes_in);
        family(&mut out, "sync_proxy_sent_bytes_total", "counter", "Bytes written to beacon nodes.");
        let _ = writeln!(out, "sync_proxy_sent_bytes_total {}", self.bytes_out);
        family(&mut out, "sync_proxy_open_connections", "gauge", "Beacon node connections open now.");
        let _ = writeln!(out, "sync_proxy_open_connections {}", snap.open_connections);
        family(
            &mut out,
            "sync_proxy_connections_closed_total",
            "counter",
            "Beacon node connections closed by a deadline (read, idle, write, lingering close).",
        );
        for (i, why) in Expired::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "sync_proxy_connections_closed_total{{reason=\"{}\"}} {}",
                why.reason(),
                self.closed[i]
            );
        }
        family(&mut out, "sync_proxy_uptime_seconds", "gauge", "Seconds since start-up.");
        let _ = writeln!(
            out,
            "sync_proxy_uptime_seconds {}",
            now.saturating_duration_since(self.started).as_secs()
        );
        self.out = out;
        &self.out
    }

    /// The sync view's families. A client without a VALID payload yet has no head, head
    /// timestamp or seconds of lag (there is nothing to measure from); peers have none at all.
    fn render_sync(&self, out: &mut String, snap: &Snapshot<'_>) {
        let sync = &self.sync;
        let names: Vec<(usize, String)> =
            (0..snap.els.len()).filter(|&i| sync.tracks(i)).map(|i| (i, escape(snap.els[i].0))).collect();
        let families: [(&str, &str, &SyncValue); 5] = [
            (
                "sync_proxy_el_head_block",
                "Block number of the newest payload the execution client called VALID.",
                &|i| sync.head(i).map(|h| h.number),
            ),
            (
                "sync_proxy_el_head_timestamp_seconds",
                "Timestamp of the newest payload the execution client called VALID.",
                &|i| sync.head(i).map(|h| h.timestamp),
            ),
            (
                "sync_proxy_el_lag_seconds",
                "Newest payload timestamp from a beacon node minus the client's head timestamp.",
                &|i| sync.lag_seconds(i),
            ),
            (
                "sync_proxy_el_lag_blocks",
                "Highest block any execution client called VALID minus this client's.",
                &|i| sync.lag_blocks(i),
            ),
            (
                "sync_proxy_el_behind",
                "1 while the execution client is reported behind (see sync_proxy_el_lag_blocks).",
                &|i| Some(u64::from(sync.is_behind(i))),
            ),
        ];
        for (name, help, value) in families {
            family(out, name, "gauge", help);
            for (i, el) in &names {
                if let Some(v) = value(*i) {
                    let _ = writeln!(out, "{name}{{el=\"{el}\"}} {v}");
                }
            }
        }
    }

    /// The `/status` document: version, uptime, the best beacon node, every beacon node seen,
    /// every execution client.
    pub fn render_status(&mut self, snap: &Snapshot<'_>, now: Instant) -> &str {
        let ago = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        let beacons: Vec<serde_json::Value> = self
            .beacons
            .iter()
            .map(|b| {
                serde_json::json!({
                    "id": b.id,
                    "source": b.source,
                    "last_request_seconds_ago": ago(b.last_request),
                    "last_timestamp": b.last_timestamp,
                })
            })
            .collect();
        let els: Vec<serde_json::Value> = snap
            .els
            .iter()
            .enumerate()
            .map(|(i, (name, peer, state, count, bytes))| {
                let m = self.els.get(i);
                serde_json::json!({
                    "name": name,
                    "role": if *peer { "proxy" } else if i == 0 { "primary" } else { "secondary" },
                    "state": state,
                    "last_status": m.and_then(|m| m.last_status).map(|s| STATUSES[s]),
                    "last_latency_seconds": m.and_then(|m| m.last_latency).map(|d| d.as_secs_f64()),
                    "backlog_requests": count,
                    "backlog_bytes": bytes,
                    "head": self.sync.head(i).map(|h| serde_json::json!({
                        "number": h.number,
                        "hash": hash_hex(&h.hash),
                        "timestamp": h.timestamp,
                    })),
                    "lag_blocks": self.sync.lag_blocks(i),
                    "lag_seconds": self.sync.lag_seconds(i),
                    "behind": self.sync.tracks(i).then(|| self.sync.is_behind(i)),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": ago(self.started),
            "best_beacon": snap.best.map(|(id, ts)| serde_json::json!({"id": id, "last_timestamp": ts})),
            "beacons": beacons,
            "execution_clients": els,
            "open_connections": snap.open_connections,
            "newest_payload_timestamp": self.sync.newest_payload(),
        });
        self.out.clear();
        let _ = write!(self.out, "{doc}");
        &self.out
    }
}

/// One sync-view value of a client, if it has one.
type SyncValue<'a> = dyn Fn(usize) -> Option<u64> + 'a;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot<'static> {
        Snapshot {
            open_connections: 3,
            best: Some(("10.0.0.1", 77)),
            els: vec![("a:1", false, "up", 2, 100), ("b\"2", true, "unknown", 0, 0)],
        }
    }

    #[test]
    fn every_sample_belongs_to_a_declared_family() {
        let now = Instant::now();
        let mut m = Metrics::new(2, 1, now);
        m.request(Class::NewPayload, RequestOutcome::Forwarded);
        m.answered(0, Duration::from_millis(3), Some("VALID"), Some(now));
        m.failed(1, Failure::Timeout);
        m.rpc_error(1);
        m.sync.payload_seen(130);
        m.sync.valid(0, crate::rpc::PayloadHead { number: 9, hash: [1; 32], timestamp: 100 });
        m.connection_closed(Expired::Write);
        let text = m.render_prometheus(&snapshot(), now).to_string();
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap_or_default().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family =
                ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(declared.iter().any(|d| d == name || d == family), "undeclared sample {line}");
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        }
        assert!(text.contains("sync_proxy_requests_total{method=\"newPayload\",outcome=\"forwarded\"} 1"));
        assert!(text.contains("sync_proxy_el_answer_seconds_bucket{el=\"a:1\",le=\"0.005\"} 1"));
        assert!(text.contains("sync_proxy_el_answer_seconds_bucket{el=\"a:1\",le=\"0.001\"} 0"));
        assert!(text.contains("sync_proxy_el_errors_total{el=\"b\\\"2\",kind=\"timeout\"} 1"));
        assert!(text.contains("sync_proxy_el_last_status{el=\"a:1\",status=\"VALID\"} 1"));
        assert!(text.contains("sync_proxy_el_rpc_errors_total{el=\"b\\\"2\"} 1"));
        assert!(text.contains("sync_proxy_el_backlog_bytes{el=\"a:1\"} 100"));
        assert!(text.contains("sync_proxy_el_head_block{el=\"a:1\"} 9\n"));
        assert!(text.contains("sync_proxy_el_head_timestamp_seconds{el=\"a:1\"} 100\n"));
        assert!(text.contains("sync_proxy_el_lag_seconds{el=\"a:1\"} 30\n"));
        assert!(text.contains("sync_proxy_el_lag_blocks{el=\"a:1\"} 0\n"));
        assert!(text.contains("sync_proxy_el_behind{el=\"a:1\"} 0\n"));
        // The peer (b"2) has no sync view at all.
        assert!(!text.contains("sync_proxy_el_behind{el=\"b"), "{text}");
        assert!(text.contains("sync_proxy_connections_closed_total{reason=\"write_timeout\"} 1"));
        assert!(text.contains("sync_proxy_connections_closed_total{reason=\"idle_timeout\"} 0"));
    }

    #[test]
    fn status_is_one_json_document() {
        let now = Instant::now();
        let mut m = Metrics::new(2, 1, now);
        m.beacon_seen("10.0.0.1", "peer address", Some(77), now);
        m.set_up(0, true);
        let doc: serde_json::Value = serde_json::from_str(m.render_status(&snapshot(), now)).expect("JSON");
        assert_eq!(doc["best_beacon"]["id"], "10.0.0.1");
        assert_eq!(doc["beacons"][0]["last_timestamp"], 77);
        assert_eq!(doc["execution_clients"][0]["state"], "up");
        assert_eq!(doc["execution_clients"][1]["role"], "proxy");
        assert_eq!(doc["execution_clients"][0]["head"], serde_json::Value::Null);
        m.sync.valid(0, crate::rpc::PayloadHead { number: 9, hash: [0xab; 32], timestamp: 100 });
        let doc: serde_json::Value = serde_json::from_str(m.render_status(&snapshot(), now)).expect("JSON");
        let head = &doc["execution_clients"][0]["head"];
        assert_eq!((head["number"].as_u64(), head["timestamp"].as_u64()), (Some(9), Some(100)));
        assert_eq!(head["hash"], format!("0x{}", "ab".repeat(32)));
        assert_eq!(doc["execution_clients"][0]["behind"], false);
        assert_eq!(doc["execution_clients"][1]["behind"], serde_json::Value::Null);
    }

    #[test]
    fn remembered_beacons_are_bounded() {
        let now = Instant::now();
        let mut m = Metrics::new(0, 0, now);
        for i in 0..(MAX_BEACONS + 10) {
            m.beacon_seen(
                &format!("10.0.0.{i}"),
                "peer address",
                None,
                now + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(m.beacons.len(), MAX_BEACONS);
    }
}
