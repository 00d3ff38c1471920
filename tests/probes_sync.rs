//! Issue 14, "Probes that mean something", "Is each EL in sync?" and "Drop-in for the newer Go
//! proxy", driven over 127.0.0.1 against recording mock execution clients:
//!
//! - `MIRROR_MODE` and `METRICS_ADDR` from the environment (as newer flashbots/sync-proxy
//!   releases read them); flags override them; a bad `MIRROR_MODE` exits with 2 naming it.
//! - `GET /healthz` is 200 while the loop runs; `GET /readyz` is 503 until a beacon node is
//!   followed and an execution client is up and answering, 503 again when every client is down
//!   or the beacon node falls silent; both carry a JSON reason, on the listen address and on
//!   `--metrics-addr`; 503 `stopping` after SIGTERM while queued calls drain. `HEAD` gets the
//!   head and no body. Any other `GET` is still Go's 200.
//! - The sync view: each client's newest VALID payload in `/metrics` and `/status`; a client
//!   that keeps answering SYNCING falls behind (logged once) and catches up (logged once).

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth_metrics::{el_status, free_port, get, scrape, scrape_until, status};
use crate::util::{
    default_reply, new_payload, reply_status, wait_until, Bn, Launch, MockEl, Proxy, Reply, TIMEOUT,
};

/// The proxy in front of `els` (the first is the primary), with extra flags.
#[track_caller]
fn start(els: &[&MockEl], extra: &[&str]) -> Proxy {
    Launch::proxy().args(&["--builders", &builders(els)]).args(extra).start()
}

fn builders(els: &[&MockEl]) -> String {
    els.iter().map(|el| el.url()).collect::<Vec<_>>().join(",")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET /readyz`: the status and the parsed body, which must say why.
#[track_caller]
fn readyz(addr: SocketAddr) -> (u16, Value) {
    let response = get(addr, "/readyz");
    assert_eq!(response.header("content-type"), Some("application/json"), "{}", response.text());
    let body = response.json();
    assert_eq!(body["ready"], response.status == 200, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "no reason: {body}");
    (response.status, body)
}

/// Polls `/readyz` until its status is `status` and its reason contains `reason`.
#[track_caller]
fn wait_readyz(addr: SocketAddr, status: u16, reason: &str) -> Value {
    let deadline = Instant::now() + 2 * TIMEOUT;
    loop {
        let (code, body) = readyz(addr);
        if code == status && body["reason"].as_str().is_some_and(|r| r.contains(reason)) {
            return body;
        }
        if Instant::now() >= deadline {
            panic!(
                "/readyz never answered {status} with a reason containing {reason:?}; last: {code} {body}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` and reads everything until the proxy closes the connection (the last
/// request must ask for `Connection: close`).
#[track_caller]
fn exchange_raw(addr: SocketAddr, request: &str) -> String {
    let mut bn = Bn::connect(addr);
    bn.send_raw(request.as_bytes());
    let mut stream = bn.stream();
    stream.set_read_timeout(Some(TIMEOUT)).expect("set read timeout");
    let mut bytes = Vec::new();
    if let Err(e) = stream.read_to_end(&mut bytes) {
        panic!("no close after the answers ({e}); got {:?}", String::from_utf8_lossy(&bytes));
    }
    String::from_utf8(bytes).expect("answers are text")
}

// --- MIRROR_MODE and METRICS_ADDR -----------------------------------------------------------

#[test]
fn mirror_mode_from_the_environment_acknowledges_at_once() {
    for value in ["true", "1", "T"] {
        // The EL never answers: only mirror mode answers the beacon node.
        let el = MockEl::with(|_| Reply::Hang);
        let proxy = Launch::proxy().args(&["--builders", &el.url()]).env("MIRROR_MODE", value).start();
        proxy.wait_log("mirror mode (acknowledge at once)", TIMEOUT);
        let response = proxy.bn().post(&new_payload(1, 100));
        assert_eq!(response.status, 200, "MIRROR_MODE={value}: {}", response.text());
        el.wait_requests(1, TIMEOUT);
    }
}

#[test]
fn mirror_mode_flag_overrides_the_environment() {
    let el = MockEl::start();
    let proxy = Launch::proxy()
        .args(&["--builders", &el.url(), "-mirror-mode=false"])
        .env("MIRROR_MODE", "true")
        .start();
    proxy.wait_log("answering with the primary's answer", TIMEOUT);
    let el_off = MockEl::start();
    let proxy_off = Launch::proxy().args(&["--builders", &el_off.url()]).env("MIRROR_MODE", "false").start();
    proxy_off.wait_log("answering with the primary's answer", TIMEOUT);
}

#[test]
fn bad_mirror_mode_in_the_environment_exits_2_naming_it() {
    let exited =
        Launch::proxy().args(&["--builders", "127.0.0.1:1"]).env("MIRROR_MODE", "yes").run_to_exit(TIMEOUT);
    assert_eq!(exited.status.code(), Some(2), "{}", exited.stderr);
    assert_eq!(exited.stderr.lines().count(), 1, "{}", exited.stderr);
    assert!(exited.stderr.contains("MIRROR_MODE") && exited.stderr.contains("\"yes\""), "{}", exited.stderr);
}

#[test]
fn metrics_addr_from_the_environment_serves_metrics_and_probes() {
    let el = MockEl::start();
    let metrics_addr = loopback(free_port());
    let proxy = Launch::proxy()
        .args(&["--builders", &el.url()])
        .env("METRICS_ADDR", &metrics_addr.to_string())
        .start();
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let m = scrape(metrics_addr);
    assert_eq!(
        m.get("sync_proxy_requests_total", &[("method", "newPayload"), ("outcome", "forwarded")]),
        1.0
    );
    assert_eq!(get(metrics_addr, "/healthz").status, 200);
    wait_readyz(metrics_addr, 200, "following beacon node 127.0.0.1");
    // Still nothing else there: a POST is refused and Go's catch-all GET is not served.
    let response = Bn::connect(metrics_addr).post(&new_payload(2, 101));
    assert_eq!(response.status, 404, "{}", response.text());
    assert!(response.text().contains("/healthz and /readyz"), "{}", response.text());
    assert_eq!(get(metrics_addr, "/").status, 404);
}

#[test]
fn metrics_addr_flag_overrides_the_environment() {
    let el = MockEl::start();
    let metrics_addr = loopback(free_port());
    // The variable names an address that cannot be used; the flag wins, so it is never tried.
    let proxy = Launch::proxy()
        .args(&["--builders", &el.url(), "--metrics-addr", &metrics_addr.to_string()])
        .env("METRICS_ADDR", "nowhere")
        .start();
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    assert_eq!(
        scrape(metrics_addr)
            .get("sync_proxy_requests_total", &[("method", "newPayload"), ("outcome", "forwarded")]),
        1.0
    );
    let exited =
        Launch::proxy().args(&["--builders", &el.url()]).env("METRICS_ADDR", "nowhere").run_to_exit(TIMEOUT);
    assert_eq!(exited.status.code(), Some(2), "{}", exited.stderr);
    assert!(exited.stderr.contains("METRICS_ADDR"), "{}", exited.stderr);
}

// --- /healthz and /readyz --------------------------------------------------------------------

#[test]
fn readyz_follows_the_beacon_node_and_the_execution_clients() {
    let mut el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let health = get(proxy.addr(), "/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["alive"], true);

    let (code, body) = readyz(proxy.addr());
    assert_eq!((code, body["reason"].as_str()), (503, Some("no beacon node followed")), "{body}");
    // Go's probe on any other path is untouched.
    let other = get(proxy.addr(), "/anything");
    assert_eq!((other.status, other.body.len()), (200, 0));

    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let body = wait_readyz(proxy.addr(), 200, "following beacon node 127.0.0.1");
    assert_eq!(body["reason"], "following beacon node 127.0.0.1; 1 of 1 execution clients up and answering");

    // The only EL goes away: once the proxy finds it down, the proxy is not ready.
    el.stop();
    let response = proxy.bn().post(&new_payload(2, 112));
    assert_eq!(response.status, 502, "{}", response.text());
    wait_readyz(proxy.addr(), 503, "no execution client is up");
    assert_eq!(get(proxy.addr(), "/healthz").status, 200, "alive while not ready");

    // Back, and answering: ready again.
    el.restart();
    wait_until("the EL has the replayed payload", TIMEOUT, || {
        el.received().iter().any(|r| r.rpc_timestamp() == Some(112))
    });
    assert_eq!(proxy.bn().post(&new_payload(3, 124)).status, 200);
    wait_readyz(proxy.addr(), 200, "1 of 1 execution clients up and answering");
}

#[test]
fn readyz_does_not_count_an_el_that_answers_only_http_errors() {
    // Up (it accepts connections) but refusing every call, as with a wrong JWT secret.
    let el = MockEl::with(|_| Reply::http(401, r#"{"error":"unauthorized"}"#));
    let proxy = start(&[&el], &[]);
    let response = proxy.bn().post(&new_payload(1, 100));
    assert_eq!(response.status, 401, "{}", response.text());
    proxy.wait_log("answers HTTP 401", TIMEOUT);
    let (code, body) = readyz(proxy.addr());
    assert_eq!(code, 503, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.starts_with("no execution client answered")), "{body}");
}

#[test]
fn readyz_turns_503_when_the_beacon_node_falls_silent() {
    let el = MockEl::start();
    // Recent means twice the beacon expiry: 2 s here (short, as the test waits it out; long
    // enough that the first /readyz right after the call still sees it recent).
    let proxy = start(&[&el], &["--beacon-expiry", "1000"]);
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let (code, body) = readyz(proxy.addr());
    assert_eq!(code, 200, "{body}");
    wait_readyz(proxy.addr(), 503, "beacon node 127.0.0.1 sent nothing in the last 2s");
    assert_eq!(proxy.bn().post(&new_payload(2, 112)).status, 200);
    wait_readyz(proxy.addr(), 200, "following beacon node 127.0.0.1");
}

#[test]
fn readyz_says_stopping_while_queued_calls_drain_after_sigterm() {
    // The EL holds the call, so the proxy has something to deliver while it stops.
    let el = MockEl::with(|_| Reply::Hang);
    let metrics_addr = loopback(free_port());
    let proxy = start(&[&el], &["--metrics-addr", &metrics_addr.to_string()]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &new_payload(1, 100));
    el.wait_requests(1, TIMEOUT);
    proxy.terminate();
    proxy.wait_log("stopping: no new connections", TIMEOUT);
    let (code, body) = readyz(metrics_addr);
    assert_eq!((code, body["reason"].as_str()), (503, Some("stopping")), "{body}");
    assert_eq!(get(metrics_addr, "/healthz").status, 200);
}

#[test]
fn head_probes_get_the_head_and_no_body() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    for path in ["/readyz", "/healthz", "/metrics", "/status"] {
        // A HEAD, then a GET on the same connection: the second answer's status line must
        // follow the first head directly. A body after the HEAD's head would come first.
        let text = exchange_raw(
            proxy.addr(),
            &format!(
                "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ),
        );
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text:?}"));
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 503"), "{path}: {head}");
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{path}: no Content-Length in {head}"));
        assert!(
            length.parse::<usize>().is_ok_and(|n| n > 0),
            "{path}: the GET's length is announced: {head}"
        );
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: bytes after the HEAD's head: {rest:?}");
    }
}

// --- the sync view ---------------------------------------------------------------------------

/// The timestamp of block `n` in these tests (12 s slots).
fn slot(n: u64) -> u64 {
    1_700_000_000 + 12 * n
}

#[test]
fn an_el_answering_syncing_falls_behind_and_catches_up_once() {
    let primary = MockEl::start();
    // The spare validates blocks 1 and 2, answers SYNCING for 3 to 12, and validates again
    // from 13 on. Decided by the payload itself, so the answers cannot race the test.
    let spare = MockEl::with(|r| match r.rpc_timestamp() {
        Some(ts) if r.is("engine_newPayload") && (slot(3)..=slot(12)).contains(&ts) => {
            reply_status(r, "SYNCING")
        }
        _ => default_reply(r),
    });
    let proxy = start(&[&primary, &spare], &[]);
    let (a, b) = (primary.url(), spare.url());
    let post = |n: u64| {
        let response = proxy.bn().post(&new_payload(n, slot(n)));
        assert_eq!(response.status, 200, "{}", response.text());
    };

    for n in 1..=2 {
        post(n);
    }
    let m = scrape_until(proxy.addr(), "both ELs have block 2 as their head", |m| {
        m.try_get("sync_proxy_el_head_block", &[("el", &b)]) == Some(2.0)
            && m.try_get("sync_proxy_el_head_block", &[("el", &a)]) == Some(2.0)
    });
    assert_eq!(m.get("sync_proxy_el_head_timestamp_seconds", &[("el", &b)]), slot(2) as f64);
    assert_eq!(m.get("sync_proxy_el_lag_seconds", &[("el", &b)]), 0.0);
    assert_eq!(m.get("sync_proxy_el_behind", &[("el", &b)]), 0.0);

    // The spare stops validating.
    let mark = proxy.log_mark();
    for n in 3..=11 {
        post(n);
    }
    // Nine blocks behind the primary's block 11 is more than eight: said once.
    let line = proxy.wait_log_from(mark, "blocks behind", TIMEOUT);
    assert!(
        line.contains(&format!("{b} is 9 blocks behind: its newest VALID payload is block 2 (0x")),
        "{line}"
    );
    let m = scrape_until(proxy.addr(), "the primary is at block 11", |m| {
        m.try_get("sync_proxy_el_head_block", &[("el", &a)]) == Some(11.0)
    });
    assert_eq!(m.get("sync_proxy_el_head_block", &[("el", &b)]), 2.0);
    assert_eq!(m.get("sync_proxy_el_lag_blocks", &[("el", &b)]), 9.0);
    assert_eq!(m.get("sync_proxy_el_lag_seconds", &[("el", &b)]), (slot(11) - slot(2)) as f64);
    assert_eq!(m.get("sync_proxy_el_behind", &[("el", &b)]), 1.0);
    assert_eq!(m.get("sync_proxy_el_lag_blocks", &[("el", &a)]), 0.0);
    let doc = status(proxy.addr());
    let spare_status = el_status(&doc, &b);
    assert_eq!(spare_status["head"]["number"], 2, "{spare_status}");
    assert_eq!(spare_status["head"]["timestamp"], slot(2), "{spare_status}");
    assert_eq!(spare_status["head"]["hash"], crate::util::hash(slot(2)), "{spare_status}");
    assert_eq!(spare_status["behind"], true, "{spare_status}");
    assert_eq!(doc["newest_payload_timestamp"], slot(11));
    // The primary still serves: the proxy is ready.
    wait_readyz(proxy.addr(), 200, "2 of 2 execution clients up and answering");

    // One more SYNCING block is not news; then the spare validates again: caught up, said once.
    post(12);
    post(13);
    let line = proxy.wait_log_from(mark, "has caught up", TIMEOUT);
    assert!(line.contains(&format!("{b} has caught up: VALID at block 13, the best is block 13")), "{line}");
    let m = scrape(proxy.addr());
    assert_eq!(m.get("sync_proxy_el_behind", &[("el", &b)]), 0.0);
    assert_eq!(m.get("sync_proxy_el_head_block", &[("el", &b)]), 13.0);
    let behind_lines = proxy.logs()[mark..].iter().filter(|l| l.contains("blocks behind")).count();
    assert_eq!(behind_lines, 1, "{:?}", proxy.logs());
}
