//! Authentication (issue 3) and metrics/status (issue 6), driven over 127.0.0.1 against
//! recording mock execution clients:
//!
//! - `--jwt-secret`: a missing, expired, future, forged, `alg: none`, other-alg or garbage token
//!   gets 401 with a JSON-RPC error body and reaches no EL; a valid token passes; GET probes need
//!   no token; a bad secret file exits 2 without showing its content.
//! - `--builder-jwt-secrets`: each EL gets a token signed with its own secret (and not the
//!   other's), fresh when sent, with `id` from `--jwt-client-id`; an EL without an entry gets the
//!   BN's `Authorization` unchanged; a key that matches no builder exits 2. Calls that waited in
//!   an EL's backlog carry a token minted when they were sent, not when they arrived.
//! - `jwt-tokens-service`: nginx's `auth_request` shape (`GET /tokens/` over HTTP/1.0) gets 200
//!   with one `Authorization-<name>: Bearer <token>` per entry; other paths 404; `-client-id`;
//!   an invalid config exits 2.
//! - `GET /metrics`: Prometheus text format (checked by a parser here on every scrape); requests
//!   by family and outcome; EL up/down, errors by kind, backlog gauges, last status,
//!   disagreements, latency histogram, bytes, open connections — moving with traffic and faults.
//! - `GET /status`: one JSON document (version, uptime, best BN, BNs seen, every EL's role,
//!   state, last status, latency, backlog) whose states move with faults.
//! - `--metrics-addr` serves `/metrics` and `/status`; a POST there is 404 and forwards nothing.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sync_proxy::jwt::{self, Secret};

use crate::util::{
    default_reply, fcu, new_payload, reply_status, rpc_body, run_bin_expect_exit, run_proxy_expect_exit, Bn,
    Launch, MockEl, Proxy, Received, Reply, TempFile, TIMEOUT,
};

const TOKENS_SERVICE: &str = env!("CARGO_BIN_EXE_jwt-tokens-service");

/// How far a minted token's `iat` may be from the test's clock when the EL gets it.
const FRESH_SECS: u64 = 5;

// --- helpers -------------------------------------------------------------------------------------

/// A distinct 64-hex-digit secret per `n`.
fn secret_hex(n: u8) -> String {
    format!("{:02x}", n.wrapping_mul(37).wrapping_add(0x5a)).repeat(32)
}

fn secret(n: u8) -> Secret {
    Secret::from_hex(&secret_hex(n)).expect("valid secret")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The decoded JSON of a token's part `index` (0 header, 1 claims).
#[track_caller]
fn token_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap_or_else(|| panic!("token has no part {index}: {token}"));
    let bytes = URL_SAFE_NO_PAD.decode(part).unwrap_or_else(|e| panic!("part {index} not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("part {index} not JSON: {e}"))
}

/// The Bearer token an EL received, with exactly one `Authorization` header.
#[track_caller]
fn received_token(request: &Received) -> String {
    let count = request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("authorization")).count();
    assert_eq!(count, 1, "Authorization headers: {:?}", request.headers);
    request.bearer().expect("a Bearer token").to_string()
}

/// Whether `token` verifies with `secret` and an `iat` within `FRESH_SECS` of now.
fn fresh_with(secret: &Secret, token: &str) -> Result<(), jwt::JwtError> {
    jwt::verify(secret, token.as_bytes(), unix_now(), FRESH_SECS)
}

#[track_caller]
fn start(els: &[&MockEl], extra: &[&str]) -> Proxy {
    let builders = els.iter().map(|el| el.url()).collect::<Vec<_>>().join(",");
    Launch::proxy().args(&["--builders", &builders]).args(extra).start()
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

/// `GET path` on a fresh connection that closes after the answer.
#[track_caller]
pub(crate) fn get(addr: SocketAddr, path: &str) -> crate::util::HttpResponse {
    let mut bn = Bn::connect(addr);
    bn.send_raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    bn.read_response()
}

// --- a Prometheus text-format parser -------------------------------------------------------------

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// One scrape, checked against the text exposition format while parsed.
#[derive(Debug)]
pub(crate) struct Exposition {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

impl Exposition {
    /// The value of the sample with exactly these labels (in any order), if present.
    pub(crate) fn try_get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(&str, &str)> = labels.to_vec();
        wanted.sort_unstable();
        self.samples
            .iter()
            .find(|s| {
                let mut have: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                have.sort_unstable();
                s.name == name && have == wanted
            })
            .map(|s| s.value)
    }

    #[track_caller]
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// The sum over every sample of `name` whose labels include `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| filter.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|s| s.value)
            .sum()
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => text.parse().ok(),
        _ => None,
    }
}

/// Parses `name{label="value",…} value [timestamp]`.
fn parse_sample_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches(' ');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let label = rest[..eq].trim_end_matches(' ');
            if !is_label_name(label) {
                return Err(format!("bad label name {label:?}"));
            }
            if labels.iter().any(|(l, _)| l == label) {
                return Err(format!("label {label} twice"));
            }
            rest =
                rest[eq + 1..].trim_start_matches(' ').strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling backslash")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("bad escape \\{other}")),
                    },
                    (_, '\n') => return Err("newline in a label value".into()),
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_string(), value));
            rest = rest[end + 1..].trim_start_matches(' ');
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by commas".into());
            }
        }
    }
    if !rest.starts_with(' ') {
        return Err("no blank before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("value {value:?} is not a float"))?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// The family a sample belongs to, given the declared types.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| kinds.contains(&t.as_str())) {
                return Some(base.to_string());
            }
        }
    }
    None
}

/// Parses a whole exposition, panicking with the offending line on any violation: HELP and TYPE
/// at most once per family and TYPE before its samples; families not interleaved; valid names,
/// quoted and escaped label values, float values; no duplicate series; counters named `_total`
/// and never negative; histogram buckets in increasing `le` order, cumulative, with
/// `le="+Inf"` equal to `_count`, and a `_sum`.
#[track_caller]
fn parse_exposition(text: &str) -> Exposition {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut seen_series: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "the exposition must end with a newline");
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("metrics line {}: {why}: {line:?}\n{text}", n + 1) };
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start_matches(' ').splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let name = parts.next().unwrap_or_else(|| fail("no metric name"));
            if !is_metric_name(name) {
                fail("bad metric name");
            }
            let text_part = parts.next().unwrap_or_default();
            if keyword == "HELP" {
                if !helps.insert(name.to_string()) {
                    fail("second HELP for the family");
                }
                let mut chars = text_part.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                        fail("bad escape in HELP");
                    }
                }
            } else {
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&text_part) {
                    fail("unknown type");
                }
                if types.insert(name.to_string(), text_part.to_string()).is_some() {
                    fail("second TYPE for the family");
                }
                if samples.iter().any(|s| family_of(&s.name, &types).as_deref() == Some(name)) {
                    fail("TYPE after samples of its family");
                }
                if text_part == "counter" && !name.ends_with("_total") {
                    fail("counter not named _total");
                }
            }
            continue;
        }
        let sample = parse_sample_line(line).unwrap_or_else(|why| fail(&why));
        let family =
            family_of(&sample.name, &types).unwrap_or_else(|| fail("sample without a TYPE before it"));
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                fail("family continued after another family");
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished.insert(previous);
            }
        }
        let kind = types[&family].as_str();
        let mut sorted = sample.labels.clone();
        sorted.sort();
        if !seen_series.insert(format!("{}{sorted:?}", sample.name)) {
            fail("duplicate series");
        }
        let has_le = sample.labels.iter().any(|(k, _)| k == "le");
        let is_bucket = kind == "histogram" && sample.name.ends_with("_bucket");
        if has_le != is_bucket {
            fail("le label on a sample that is not a histogram bucket, or a bucket without le");
        }
        if kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            fail("negative counter");
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types, text);
    Exposition { samples, types }
}

#[track_caller]
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>, text: &str) {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Series: the labels other than le.
        let mut series: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
        for s in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let le = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or_default();
            let le = parse_value(le).unwrap_or_else(|| panic!("bad le {le:?} in {s:?}"));
            let mut key: Labels = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            key.sort();
            match series.iter_mut().find(|(k, _)| *k == key) {
                Some((_, buckets)) => buckets.push((le, s.value)),
                None => series.push((key, vec![(le, s.value)])),
            }
        }
        for (key, buckets) in &series {
            for pair in buckets.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{family}{key:?}: le not increasing: {buckets:?}\n{text}");
                assert!(pair[0].1 <= pair[1].1, "{family}{key:?}: buckets not cumulative: {buckets:?}");
            }
            let (last_le, last_count) = *buckets.last().expect("at least one bucket");
            assert_eq!(last_le, f64::INFINITY, "{family}{key:?}: no le=\"+Inf\" bucket");
            let find = |suffix: &str| {
                samples.iter().find(|s| {
                    let mut labels = s.labels.clone();
                    labels.sort();
                    s.name == format!("{family}{suffix}") && labels == *key
                })
            };
            let count = find("_count").unwrap_or_else(|| panic!("{family}{key:?}: no _count"));
            assert_eq!(count.value, last_count, "{family}{key:?}: +Inf bucket != _count");
            assert!(find("_sum").is_some(), "{family}{key:?}: no _sum");
        }
    }
}

/// Scrapes `/metrics` on a fresh connection and parses it.
#[track_caller]
pub(crate) fn scrape(addr: SocketAddr) -> Exposition {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    parse_exposition(&response.text())
}

/// Scrapes until `condition` holds (every scrape is parsed and checked); returns that scrape.
#[track_caller]
pub(crate) fn scrape_until(
    addr: SocketAddr,
    what: &str,
    condition: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = scrape(addr);
        if condition(&metrics) {
            return metrics;
        }
        if Instant::now() >= deadline {
            let text = get(addr, "/metrics").text();
            panic!("timed out after {TIMEOUT:?} waiting until {what}; last scrape:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET /status`, parsed.
#[track_caller]
pub(crate) fn status(addr: SocketAddr) -> Value {
    let response = get(addr, "/status");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    response.json()
}

/// The `/status` entry of the EL called `name`.
#[track_caller]
pub(crate) fn el_status(doc: &Value, name: &str) -> Value {
    let els = doc["execution_clients"].as_array().unwrap_or_else(|| panic!("no execution_clients: {doc}"));
    els.iter().find(|e| e["name"] == name).cloned().unwrap_or_else(|| panic!("no EL {name} in {doc}"))
}

#[track_caller]
fn status_until(addr: SocketAddr, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let doc = status(addr);
        if condition(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting until {what}; last: {doc}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// --- inbound JWT ---------------------------------------------------------------------------------

#[test]
fn tokens_that_fail_verification_get_401_and_reach_no_el() {
    let (a, b) = (MockEl::start(), MockEl::start());
    let file = TempFile::new(&format!("0x{}\n", secret_hex(1)));
    let proxy = start(&[&a, &b], &["--jwt-secret", file.arg()]);
    let (ours, other) = (secret(1), secret(2));
    let now = unix_now();
    let valid = jwt::mint(&ours, now, None);
    let claims = b64(format!(r#"{{"iat":{now}}}"#).as_bytes());
    let signature_of_valid = valid.rsplit('.').next().expect("three parts");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("expired iat", Some(bearer(&jwt::mint(&ours, now - 120, None)))),
        ("future iat", Some(bearer(&jwt::mint(&ours, now + 120, None)))),
        ("another secret", Some(bearer(&jwt::mint(&other, now, None)))),
        ("alg none", Some(bearer(&format!("{}.{claims}.", b64(br#"{"alg":"none","typ":"JWT"}"#))))),
        (
            "alg HS512",
            Some(bearer(&format!(
                "{}.{claims}.{signature_of_valid}",
                b64(br#"{"alg":"HS512","typ":"JWT"}"#)
            ))),
        ),
        (
            "changed claims",
            Some(bearer(&format!(
                "{}.{}.{signature_of_valid}",
                valid.split('.').next().expect("header"),
                b64(format!(r#"{{"iat":{},"id":"x"}}"#, now).as_bytes())
            ))),
        ),
        ("garbage", Some("Bearer not-a-token".to_string())),
        ("empty bearer", Some("Bearer ".to_string())),
        ("not bearer", Some(format!("Basic {valid}"))),
    ];
    let mut bn = proxy.bn();
    for (id, (case, authorization)) in (1..).zip(&cases) {
        let headers: Vec<(&str, &str)> =
            authorization.as_deref().map(|v| ("Authorization", v)).into_iter().collect();
        let response = bn.post_with(&headers, &new_payload(id, 100 + id));
        assert_eq!(response.status, 401, "{case}: {}", response.text());
        let body = response.json();
        assert_eq!(body["jsonrpc"], "2.0", "{case}");
        assert!(body["error"]["code"].is_i64(), "{case}: {body}");
        assert!(body["error"]["message"].is_string(), "{case}: {body}");
        assert!(!response.text().contains(&secret_hex(1)), "{case}: the secret in the answer");
    }
    // A valid token passes, unchanged, to every EL; nothing before it reached any EL.
    let response = bn.post_with(&[("Authorization", &bearer(&valid))], &new_payload(99, 999));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["result"]["status"], "VALID");
    for el in [&a, &b] {
        let received = el.wait_requests(1, TIMEOUT);
        assert_eq!(received.len(), 1, "{:?}", received);
        assert_eq!(received[0].rpc_id, Some(json!(99)));
        assert_eq!(received_token(&received[0]), valid);
    }
    assert!(!proxy.logs().iter().any(|l| l.contains(&secret_hex(1))), "the secret in the logs");
}

#[test]
fn get_probes_need_no_token() {
    let el = MockEl::start();
    let file = TempFile::new(&secret_hex(1));
    let proxy = start(&[&el], &["--jwt-secret", file.arg()]);
    for path in ["/", "/health", "/metrics", "/status"] {
        assert_eq!(get(proxy.addr(), path).status, 200, "GET {path}");
    }
    assert!(el.received().is_empty());
}

#[test]
fn bad_jwt_secret_files_exit_2_without_showing_the_secret() {
    let el = MockEl::start();
    let short = "c0ffee".repeat(10) + "c0f"; // 63 hex digits
    let not_hex = "c0ffee".repeat(10) + "c0fg";
    let long = "c0ffee".repeat(11);
    for content in [short.as_str(), not_hex.as_str(), long.as_str(), "", "0x"] {
        let file = TempFile::new(content);
        let (status, _, stderr) =
            run_proxy_expect_exit(&["--builders", &el.url(), "--jwt-secret", file.arg()]);
        assert_eq!(status.code(), Some(2), "{content:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{content:?}: {stderr}");
        assert!(stderr.contains("jwt-secret"), "{content:?}: {stderr}");
        assert!(!stderr.contains("c0ffee"), "{content:?}: the file's content in {stderr:?}");
    }
    let (status, _, stderr) =
        run_proxy_expect_exit(&["--builders", &el.url(), "--jwt-secret", "/nonexistent/jwt.hex"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/jwt.hex"), "{stderr}");
}

// --- outbound JWT --------------------------------------------------------------------------------

#[test]
fn each_el_gets_a_token_signed_with_its_own_secret() {
    let (a, b, c) = (MockEl::start(), MockEl::start(), MockEl::start());
    let map = json!({ a.url(): secret_hex(1), b.http_url(): format!("0x{}", secret_hex(2)) });
    let file = TempFile::new(&map.to_string());
    let proxy = start(&[&a, &b, &c], &["--builder-jwt-secrets", file.arg(), "--jwt-client-id", "proxy-7"]);
    let from_bn = "Bearer the-beacon-nodes-own-token";
    let response = proxy.bn().post_with(&[("Authorization", from_bn)], &new_payload(1, 100));
    assert_eq!(response.status, 200);

    let token_a = received_token(&a.wait_requests(1, TIMEOUT)[0]);
    let token_b = received_token(&b.wait_requests(1, TIMEOUT)[0]);
    assert_eq!(fresh_with(&secret(1), &token_a), Ok(()), "A's token with A's secret");
    assert_eq!(fresh_with(&secret(2), &token_b), Ok(()), "B's token with B's secret");
    assert_eq!(fresh_with(&secret(2), &token_a), Err(jwt::JwtError::BadSignature));
    assert_eq!(fresh_with(&secret(1), &token_b), Err(jwt::JwtError::BadSignature));
    for token in [&token_a, &token_b] {
        assert_eq!(token_part(token, 0), json!({"alg": "HS256", "typ": "JWT"}));
        let claims = token_part(token, 1);
        assert_eq!(claims["id"], "proxy-7", "{claims}");
        let iat = claims["iat"].as_u64().expect("integer iat");
        assert!(iat.abs_diff(unix_now()) <= FRESH_SECS, "iat {iat} is not fresh");
    }
    // No entry: the beacon node's header, unchanged.
    let received_c = c.wait_requests(1, TIMEOUT);
    assert_eq!(received_c[0].header("authorization"), Some(from_bn));
    assert!(!proxy.logs().iter().any(|l| l.contains(&secret_hex(1)) || l.contains(&secret_hex(2))));
}

#[test]
fn without_a_client_id_the_minted_token_has_only_iat() {
    let el = MockEl::start();
    let file = TempFile::new(&json!({ el.url(): secret_hex(3) }).to_string());
    let proxy = start(&[&el], &["--builder-jwt-secrets", file.arg()]);
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let token = received_token(&el.wait_requests(1, TIMEOUT)[0]);
    assert_eq!(fresh_with(&secret(3), &token), Ok(()));
    let claims = token_part(&token, 1);
    assert_eq!(claims.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()), Some(vec!["iat".into()]));
}

#[test]
fn builder_secret_files_that_do_not_fit_exit_2() {
    let el = MockEl::start();
    let cases = [
        (json!({ "127.0.0.1:1": secret_hex(1) }).to_string(), "matches no builder"),
        (json!({ el.url(): "c0ffee".repeat(10) }).to_string(), "builder-jwt-secrets"),
        ("not json c0ffee".to_string(), "builder-jwt-secrets"),
    ];
    for (content, mentions) in cases {
        let file = TempFile::new(&content);
        let (status, _, stderr) =
            run_proxy_expect_exit(&["--builders", &el.url(), "--builder-jwt-secrets", file.arg()]);
        assert_eq!(status.code(), Some(2), "{content}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{content}: {stderr}");
        assert!(stderr.contains(mentions), "{content}: {stderr}");
        assert!(!stderr.contains("c0ffee") && !stderr.contains(&secret_hex(1)), "secret shown: {stderr}");
    }
}

#[test]
fn a_call_that_waited_in_the_backlog_carries_a_token_minted_when_it_was_sent() {
    // Tokens are re-minted once 5 s old, so this test has to let 5 s pass: the secondary holds
    // call 1 for 5.2 s, call 2 waits behind it in that EL's ordered backlog, and must then go out
    // with a token minted when it was sent, not the one cached when it arrived.
    let primary = MockEl::start();
    let secondary = MockEl::with(|r| {
        let reply = default_reply(r);
        if r.rpc_id == Some(json!(1)) {
            reply.delayed(Duration::from_millis(5200))
        } else {
            reply
        }
    });
    let map = json!({ primary.url(): secret_hex(4), secondary.url(): secret_hex(5) });
    let file = TempFile::new(&map.to_string());
    let proxy = start(&[&primary, &secondary], &["--builder-jwt-secrets", file.arg()]);
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&new_payload(1, 100)).json()["id"], 1);
    assert_eq!(bn.post(&new_payload(2, 101)).json()["id"], 2);
    let first = secondary.wait_requests(1, TIMEOUT);
    let iat_first = token_part(&received_token(&first[0]), 1)["iat"].as_u64().expect("iat");
    let both = secondary.wait_requests(2, Duration::from_secs(8));
    let token = received_token(&both[1]);
    assert_eq!(both[1].rpc_id, Some(json!(2)));
    assert_eq!(fresh_with(&secret(5), &token), Ok(()), "the replayed call's token is stale or wrong");
    let iat = token_part(&token, 1)["iat"].as_u64().expect("iat");
    assert!(iat >= iat_first + 5, "re-used the token of its arrival: iat {iat}, first {iat_first}");
}

// --- jwt-tokens-service --------------------------------------------------------------------------

/// nginx's `auth_request` subrequest: HTTP/1.0, the original URI in a header, no body.
fn auth_request(addr: SocketAddr, path: &str) -> (String, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the tokens service");
    stream.set_read_timeout(Some(TIMEOUT)).expect("set read timeout");
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost:1337\r\nX-Original-URI: /engine\r\n\
         X-Real-IP: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the service closes after answering HTTP/1.0");
    let text = String::from_utf8(answer).expect("text answer");
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no whole head: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
            (name.to_string(), value.trim().to_string())
        })
        .collect();
    (status_line, headers)
}

#[test]
fn tokens_service_answers_nginx_auth_request_with_one_header_per_entry() {
    let config =
        TempFile::new(&json!({ "el1": secret_hex(6), "el_2": format!("0x{}", secret_hex(7)) }).to_string());
    let service = Launch::bin(TOKENS_SERVICE)
        .args(&["-addr", "127.0.0.1:0", "-config", config.arg(), "-client-id", "nginx-1"])
        .start();
    let (status_line, headers) = auth_request(service.addr(), "/tokens/");
    assert_eq!(status_line, "HTTP/1.0 200 OK");
    let authorization: Vec<&(String, String)> =
        headers.iter().filter(|(n, _)| n.to_ascii_lowercase().starts_with("authorization-")).collect();
    assert_eq!(authorization.len(), 2, "{headers:?}");
    for (name, n) in [("Authorization-el1", 6), ("Authorization-el_2", 7)] {
        let value = headers.iter().find(|(h, _)| h == name).map(|(_, v)| v.as_str());
        let token =
            value.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_else(|| panic!("{name}: {headers:?}"));
        assert_eq!(fresh_with(&secret(n), token), Ok(()), "{name}");
        assert_eq!(fresh_with(&secret(if n == 6 { 7 } else { 6 }), token), Err(jwt::JwtError::BadSignature));
        assert_eq!(token_part(token, 1)["id"], "nginx-1");
    }
    let length =
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.as_str());
    assert_eq!(length, Some("0"));

    for path in ["/", "/tokens", "/token/", "/other"] {
        let (status_line, _) = auth_request(service.addr(), path);
        assert!(status_line.starts_with("HTTP/1.0 404"), "{path}: {status_line}");
    }
    // A POST to the right path is not nginx's request either.
    let mut bn = Bn::connect(service.addr());
    bn.send_raw(b"POST /tokens/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(bn.read_response().status, 404);
    // Keep-alive works for callers that ask for it.
    let mut bn = Bn::connect(service.addr());
    for _ in 0..2 {
        bn.send_raw(b"GET /tokens/ HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = bn.read_response();
        assert_eq!(response.status, 200);
        assert!(response.header("authorization-el1").is_some_and(|v| v.starts_with("Bearer ")));
    }
    assert!(!service.logs().iter().any(|l| l.contains(&secret_hex(6))));
}

#[test]
fn tokens_service_rejects_an_invalid_config_with_exit_2() {
    let cases = [
        "not json c0ffee".to_string(),
        "{}".to_string(),
        json!({ "el1": "c0ffee".repeat(10) }).to_string(),
        json!({ "el 1": "c0ffee".repeat(10) + "c0ffee00" }).to_string(),
        json!({ "el1": 5 }).to_string(),
    ];
    for content in cases {
        let file = TempFile::new(&content);
        let (status, _, stderr) =
            run_bin_expect_exit(TOKENS_SERVICE, &["-addr", "127.0.0.1:0", "-config", file.arg()]);
        assert_eq!(status.code(), Some(2), "{content}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{content}: {stderr}");
        assert!(!stderr.contains("c0ffee"), "{content}: secret shown in {stderr:?}");
    }
    let (status, _, stderr) =
        run_bin_expect_exit(TOKENS_SERVICE, &["-addr", "127.0.0.1:0", "-config", "/nonexistent/config.json"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
}

// --- metrics -------------------------------------------------------------------------------------

#[test]
fn requests_are_counted_as_forwarded_filtered_and_rejected() {
    let el = MockEl::start();
    let file = TempFile::new(&secret_hex(8));
    let proxy = start(&[&el], &["--jwt-secret", file.arg()]);
    let addr = proxy.addr();
    let token = bearer(&jwt::mint(&secret(8), unix_now(), None));
    let total = |m: &Exposition, method: &str, outcome: &str| {
        m.get("sync_proxy_requests_total", &[("method", method), ("outcome", outcome)])
    };
    let before = scrape(addr);
    assert_eq!(before.sum("sync_proxy_requests_total", &[]), 0.0);

    let mut best = proxy.bn();
    let mut other = proxy.bn();
    let best_headers = [("Authorization", token.as_str()), ("X-Forwarded-For", "10.0.0.1")];
    let other_headers = [("Authorization", token.as_str()), ("X-Forwarded-For", "10.0.0.2")];
    assert_eq!(best.post_with(&best_headers, &new_payload(1, 100)).status, 200);
    let m = scrape(addr);
    assert_eq!(total(&m, "newPayload", "forwarded"), 1.0);
    assert_eq!(m.sum("sync_proxy_requests_total", &[]), 1.0);

    let filtered = other.post_with(&other_headers, &fcu(2, None));
    assert_eq!(filtered.json()["result"]["payloadStatus"]["status"], "SYNCING");
    assert_eq!(best.post_with(&best_headers, &fcu(3, None)).status, 200);
    let m = scrape(addr);
    assert_eq!(total(&m, "forkchoiceUpdated", "filtered"), 1.0);
    assert_eq!(total(&m, "forkchoiceUpdated", "forwarded"), 1.0);

    assert_eq!(other.post(&new_payload(4, 101)).status, 401);
    assert_eq!(other.post_with(&other_headers, b"{not json").status, 400);
    let m = scrape(addr);
    assert_eq!(m.sum("sync_proxy_requests_total", &[("outcome", "rejected")]), 2.0);
    assert_eq!(m.sum("sync_proxy_requests_total", &[("outcome", "forwarded")]), 2.0);
    assert_eq!(m.sum("sync_proxy_requests_total", &[("outcome", "failed")]), 0.0);
    assert_eq!(el.received().len(), 2);
}

#[test]
fn a_request_no_el_answers_is_counted_as_failed() {
    let mut el = MockEl::start();
    el.stop();
    let proxy = start(&[&el], &[]);
    assert_eq!(proxy.bn().post(&rpc_body(1, "eth_blockNumber", json!([]))).status, 502);
    let m = scrape(proxy.addr());
    assert_eq!(m.get("sync_proxy_requests_total", &[("method", "nonEngine"), ("outcome", "failed")]), 1.0);
}

#[test]
fn el_up_backlog_and_status_follow_an_el_that_stops_and_comes_back() {
    let primary = MockEl::start();
    let mut secondary = MockEl::start();
    let proxy = start(&[&primary, &secondary], &[]);
    let addr = proxy.addr();
    let (p, s) = (primary.url(), secondary.url());
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&new_payload(1, 100)).status, 200);
    secondary.wait_requests(1, TIMEOUT);
    let m = scrape_until(addr, "both ELs are up", |m| {
        m.get("sync_proxy_el_up", &[("el", &p)]) == 1.0 && m.get("sync_proxy_el_up", &[("el", &s)]) == 1.0
    });
    assert_eq!(m.get("sync_proxy_el_backlog_requests", &[("el", &s)]), 0.0);
    assert_eq!(el_status(&status(addr), &s)["state"], "up");

    secondary.stop();
    let bodies = [new_payload(2, 101), new_payload(3, 102), new_payload(4, 103)];
    for body in &bodies {
        assert_eq!(bn.post(body).json()["result"]["status"], "VALID");
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let m = scrape_until(addr, "the secondary is down with 3 calls in its backlog", |m| {
        m.get("sync_proxy_el_up", &[("el", &s)]) == 0.0
            && m.get("sync_proxy_el_backlog_requests", &[("el", &s)]) == 3.0
    });
    assert_eq!(m.get("sync_proxy_el_backlog_bytes", &[("el", &s)]), bytes as f64);
    assert!(m.get("sync_proxy_el_errors_total", &[("el", &s), ("kind", "refused")]) >= 1.0);
    assert_eq!(m.get("sync_proxy_el_up", &[("el", &p)]), 1.0);
    assert_eq!(m.get("sync_proxy_el_backlog_requests", &[("el", &p)]), 0.0);
    let doc = status_until(addr, "the secondary is down in /status", |d| {
        el_status(d, &s)["state"] == "down" && el_status(d, &s)["backlog_requests"] == 3
    });
    assert_eq!(el_status(&doc, &s)["backlog_bytes"], bytes);
    assert_eq!(el_status(&doc, &p)["state"], "up");

    secondary.restart();
    secondary.wait_requests(4, TIMEOUT);
    let m = scrape_until(addr, "the secondary is back up with an empty backlog", |m| {
        m.get("sync_proxy_el_up", &[("el", &s)]) == 1.0
            && m.get("sync_proxy_el_backlog_requests", &[("el", &s)]) == 0.0
    });
    assert_eq!(m.get("sync_proxy_el_backlog_bytes", &[("el", &s)]), 0.0);
    assert_eq!(m.get("sync_proxy_el_dropped_total", &[("el", &s)]), 0.0);
    let doc = status_until(addr, "the secondary is up in /status", |d| el_status(d, &s)["state"] == "up");
    assert_eq!(el_status(&doc, &s)["backlog_requests"], 0);
}

#[test]
fn a_hung_el_counts_timeouts() {
    let primary = MockEl::start();
    let hung = MockEl::with(|_| Reply::Hang);
    let proxy = start(&[&primary, &hung], &["--request-timeout", "200"]);
    let h = hung.url();
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let m = scrape(proxy.addr());
    assert_eq!(m.get("sync_proxy_el_errors_total", &[("el", &h), ("kind", "timeout")]), 0.0, "too early");
    let m = scrape_until(proxy.addr(), "a timeout is counted", |m| {
        m.get("sync_proxy_el_errors_total", &[("el", &h), ("kind", "timeout")]) == 1.0
    });
    assert_eq!(m.get("sync_proxy_el_errors_total", &[("el", &primary.url()), ("kind", "timeout")]), 0.0);
    assert_eq!(m.get("sync_proxy_el_answer_seconds_count", &[("el", &h)]), 0.0);
    assert_eq!(m.get("sync_proxy_el_answer_seconds_count", &[("el", &primary.url())]), 1.0);
}

#[test]
fn disagreements_and_last_statuses_are_counted() {
    let valid = MockEl::start();
    let syncing = MockEl::with(|r| reply_status(r, "SYNCING"));
    let proxy = start(&[&valid, &syncing], &[]);
    let (v, s) = (valid.url(), syncing.url());
    let mut bn = proxy.bn();
    assert_eq!(scrape(proxy.addr()).get("sync_proxy_status_disagreements_total", &[]), 0.0);
    assert_eq!(bn.post(&new_payload(1, 100)).json()["result"]["status"], "VALID");
    let m = scrape_until(proxy.addr(), "one disagreement", |m| {
        m.get("sync_proxy_status_disagreements_total", &[]) == 1.0
    });
    assert_eq!(m.get("sync_proxy_el_last_status", &[("el", &v), ("status", "VALID")]), 1.0);
    assert_eq!(m.get("sync_proxy_el_last_status", &[("el", &s), ("status", "SYNCING")]), 1.0);
    assert_eq!(m.sum("sync_proxy_el_last_status", &[("el", &s)]), 1.0, "one status at a time");
    let warning = proxy.wait_log("disagree", TIMEOUT);
    assert!(warning.contains(&v) && warning.contains(&s) && warning.contains("SYNCING"), "{warning}");
    // Agreement does not count.
    syncing.set_behaviour(default_reply);
    assert_eq!(bn.post(&new_payload(2, 101)).status, 200);
    let m = scrape_until(proxy.addr(), "the secondary reports VALID", |m| {
        m.get("sync_proxy_el_last_status", &[("el", &s), ("status", "VALID")]) == 1.0
    });
    assert_eq!(m.get("sync_proxy_status_disagreements_total", &[]), 1.0);
}

#[test]
fn bytes_open_connections_and_latency_are_counted() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let addr = proxy.addr();
    let body = new_payload(1, 100);
    let request = crate::util::post_request(&addr.to_string(), &[], &body);
    let mut held: Vec<Bn> = (0..3).map(|_| proxy.bn()).collect();
    held[0].send_raw(&request);
    assert_eq!(held[0].read_response().status, 200);
    for bn in &mut held[1..] {
        bn.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(bn.read_response().status, 200);
    }
    let probe = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".len();
    let scrape_request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".len();

    let m = scrape(addr);
    assert_eq!(
        m.get("sync_proxy_received_bytes_total", &[]),
        (request.len() + 2 * probe + scrape_request) as f64
    );
    let sent = m.get("sync_proxy_sent_bytes_total", &[]);
    assert!(sent > 0.0);
    assert_eq!(m.get("sync_proxy_open_connections", &[]), 4.0, "three held and the scrape");
    assert_eq!(m.get("sync_proxy_el_answer_seconds_count", &[("el", &el.url())]), 1.0);
    let latency = m.get("sync_proxy_el_answer_seconds_sum", &[("el", &el.url())]);
    assert!(latency > 0.0 && latency < 1.0, "{latency}");
    let uptime = m.get("sync_proxy_uptime_seconds", &[]);
    assert!((0.0..60.0).contains(&uptime), "{uptime}");

    let again = scrape(addr);
    assert!(again.get("sync_proxy_sent_bytes_total", &[]) > sent, "the first scrape's answer is not counted");
    drop(held.drain(..2));
    scrape_until(addr, "two connections closed", |m| m.get("sync_proxy_open_connections", &[]) == 2.0);
}

#[test]
fn every_family_is_declared_with_help_and_type() {
    let (a, b) = (MockEl::start(), MockEl::start());
    let proxy = start(&[&a, &b], &[]);
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let m = scrape(proxy.addr());
    let expected = [
        ("sync_proxy_requests_total", "counter"),
        ("sync_proxy_el_up", "gauge"),
        ("sync_proxy_el_answer_seconds", "histogram"),
        ("sync_proxy_el_errors_total", "counter"),
        ("sync_proxy_el_dropped_total", "counter"),
        ("sync_proxy_el_backlog_requests", "gauge"),
        ("sync_proxy_el_backlog_bytes", "gauge"),
        ("sync_proxy_el_last_status", "gauge"),
        ("sync_proxy_best_beacon_switches_total", "counter"),
        ("sync_proxy_best_beacon_timestamp_seconds", "gauge"),
        ("sync_proxy_status_disagreements_total", "counter"),
        ("sync_proxy_received_bytes_total", "counter"),
        ("sync_proxy_sent_bytes_total", "counter"),
        ("sync_proxy_open_connections", "gauge"),
        ("sync_proxy_uptime_seconds", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    for kind in ["refused", "reset", "timeout", "bad_answer", "down"] {
        assert_eq!(m.get("sync_proxy_el_errors_total", &[("el", &a.url()), ("kind", kind)]), 0.0, "{kind}");
    }
    assert_eq!(m.get("sync_proxy_best_beacon_timestamp_seconds", &[]), 100.0);
    assert_eq!(m.get("sync_proxy_best_beacon_switches_total", &[]), 1.0);
}

// --- status --------------------------------------------------------------------------------------

#[test]
fn status_is_one_json_document_about_beacons_and_els() {
    let primary = MockEl::start();
    let secondary = MockEl::start();
    let proxy = start(&[&primary, &secondary], &[]);
    let addr = proxy.addr();
    let doc = status(addr);
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["uptime_seconds"].as_f64().is_some_and(|u| (0.0..60.0).contains(&u)), "{doc}");
    assert_eq!(doc["best_beacon"], Value::Null, "{doc}");
    assert_eq!(doc["beacons"], json!([]));

    let mut bn = proxy.bn();
    let first = [("X-Forwarded-For", "10.0.0.1")];
    let second = [("X-Forwarded-For", "10.0.0.2, 192.168.0.9")];
    assert_eq!(bn.post_with(&first, &new_payload(1, 100)).status, 200);
    assert_eq!(bn.post_with(&second, &new_payload(2, 90)).status, 200);
    secondary.wait_requests(2, TIMEOUT);
    let doc =
        status_until(addr, "both ELs answered", |d| el_status(d, &secondary.url())["last_status"] == "VALID");
    assert_eq!(doc["best_beacon"], json!({"id": "10.0.0.1", "last_timestamp": 100}));
    let beacons = doc["beacons"].as_array().expect("beacons array");
    let ids: HashSet<&str> = beacons.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, HashSet::from(["10.0.0.1", "10.0.0.2"]));
    let two = beacons.iter().find(|b| b["id"] == "10.0.0.2").expect("the second BN");
    assert_eq!(two["last_timestamp"], 90);
    for (el, role) in [(&primary, "primary"), (&secondary, "secondary")] {
        let entry = el_status(&doc, &el.url());
        assert_eq!(entry["role"], role, "{entry}");
        assert_eq!(entry["state"], "up", "{entry}");
        assert_eq!(entry["last_status"], "VALID", "{entry}");
        assert!(entry["last_latency_seconds"].as_f64().is_some_and(|l| l > 0.0 && l < 1.0), "{entry}");
        assert_eq!(entry["backlog_requests"], 0, "{entry}");
        assert_eq!(entry["backlog_bytes"], 0, "{entry}");
    }

    // A later timestamp from the second BN makes it the best.
    assert_eq!(bn.post_with(&second, &new_payload(3, 200)).status, 200);
    let doc = status(addr);
    assert_eq!(doc["best_beacon"], json!({"id": "10.0.0.2", "last_timestamp": 200}));
    let m = scrape(addr);
    assert_eq!(m.get("sync_proxy_best_beacon_switches_total", &[]), 2.0);
    assert_eq!(m.get("sync_proxy_best_beacon_timestamp_seconds", &[]), 200.0);
}

// --- --metrics-addr ------------------------------------------------------------------------------

#[test]
fn metrics_addr_serves_metrics_and_status_but_no_posts() {
    let el = MockEl::start();
    let port = free_port();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = start(&[&el], &["--metrics-addr", &metrics_addr.to_string()]);
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);

    let m = scrape(metrics_addr);
    assert_eq!(
        m.get("sync_proxy_requests_total", &[("method", "newPayload"), ("outcome", "forwarded")]),
        1.0
    );
    assert_eq!(status(metrics_addr)["best_beacon"]["last_timestamp"], 100);

    let mut bn = Bn::connect(metrics_addr);
    let response = bn.post(&new_payload(2, 101));
    assert_eq!(response.status, 404, "{}", response.text());
    let response = bn.post_with(&[("Transfer-Encoding", "chunked")], &fcu(3, None));
    assert_eq!(response.status, 404, "{}", response.text());
    // A later call on the main listener is the positive signal: a POST forwarded from the
    // metrics listener would have reached the EL before it.
    assert_eq!(proxy.bn().post(&rpc_body(4, "eth_chainId", json!([]))).status, 200);
    let got = el.wait_requests(2, TIMEOUT);
    let ids: Vec<_> = got.iter().map(|r| r.json()["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(4)], "a POST to --metrics-addr was forwarded");
    // The main listener still serves both.
    assert_eq!(
        scrape(proxy.addr())
            .get("sync_proxy_requests_total", &[("method", "newPayload"), ("outcome", "forwarded")]),
        1.0
    );
    assert_eq!(status(proxy.addr())["version"], env!("CARGO_PKG_VERSION"));
}

// --- the parser itself ---------------------------------------------------------------------------

#[test]
fn the_exposition_parser_accepts_valid_text_and_rejects_violations() {
    let valid = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\n\
                 # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    let parsed = parse_exposition(valid);
    assert_eq!(parsed.get("a_total", &[("x", "q\"\\\n"), ("y", "")]), 3.0);
    assert_eq!(parsed.get("h_count", &[]), 2.0);
    let invalid = [
        "a 1\n",
        "# TYPE a gauge\na{x=\"1} 1\n",
        "# TYPE a gauge\na{x=1} 1\n",
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\na 1\na 2\n",
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"y\"} 1\n",
        "# TYPE c counter\nc 1\n",
        "# TYPE c_total counter\nc_total -1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE a gauge\na 1",
    ];
    for text in invalid {
        let result = std::panic::catch_unwind(|| parse_exposition(text));
        assert!(result.is_err(), "accepted invalid exposition {text:?}");
    }
}
