//! Routing (issue 2, "## Routing"): the real proxy between beacon-node clients and recording
//! mock ELs on 127.0.0.1. Each group below proves one bullet:
//!
//! - every `engine_*` call reaches every EL in `--builders` byte for byte (with and without
//!   `http://`);
//! - the BN gets the primary's answer (status, body, Content-Type); a failed primary (refused,
//!   reset, timeout, not HTTP) falls back to the next EL in list order; none answered → 502
//!   with a JSON-RPC error carrying the request's id;
//! - the BN is answered as soon as its answer is decided: a slow or hung secondary does not
//!   delay it, and late answers are still read and compared;
//! - newPayload/fcU reach each EL in arrival order, one at a time, however slow it is; other
//!   calls do not queue behind them; the backlog is bounded (oldest dropped with a warning) and
//!   kept for an EL that is down, which gets it in order when it is back;
//! - `engine_getClientVersionV1` concatenates, `engine_exchangeCapabilities` intersects;
//! - `--mirror-mode` acknowledges at once (also nginx's HTTP/1.0 `Connection: close`), then
//!   forwards;
//! - a request read whole reaches every EL even when its BN has gone;
//! - non-engine calls and batches go to the primary only, with fallback;
//! - the best beacon node (X-Forwarded-For or peer IP; a larger payload timestamp an EL accepted
//!   takes over; fcU from others answered SYNCING and not forwarded, newPayload from all forwarded);
//! - `--proxies` peers get every forwarded call, fire-and-forget, bounded by
//!   `--proxy-request-timeout`;
//! - per-method timeouts, `--request-timeout`, `BUILDER_TIMEOUT_MS`;
//! - forwarded headers (hop-by-hop and Accept-Encoding dropped, X-Forwarded-For appended, Host
//!   rewritten, Authorization kept); EL answers of every framing relayed;
//! - EL connections kept alive; a dead EL's down/up changes logged once each;
//! - disagreeing statuses warned once per request, naming both ELs and statuses.
//!
//! Tests named after a bug (regression_…) guard fixes for bugs found here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{
    default_reply, encode_chunked, fcu, new_payload, post_request, reply_status, rpc_body, rpc_body_with_id,
    rpc_result, sample, sequence, wait_until, Bn, Framing, HttpResponse, KeyOrder, Launch, MockEl, Proxy,
    Received, Reply, TIMEOUT,
};

/// An answer that is "at once" must come well within this; the slow thing it must not wait
/// for takes at least twice as long.
const PROMPT: Duration = Duration::from_secs(1);

// ------------------------------------------------------------------------------- helpers

/// Something `--builders` can name.
pub(crate) trait El {
    /// `127.0.0.1:PORT`.
    fn url(&self) -> String;
}

impl El for MockEl {
    fn url(&self) -> String {
        MockEl::url(self)
    }
}

/// An EL that is down for good: nothing listens on its port, so connecting is refused. The
/// port is the local end of a live loopback connection, so no other test can bind it meanwhile
/// (a stopped `MockEl`'s port could be handed to a new listener).
pub(crate) struct DeadEl {
    addr: SocketAddr,
    _holds_the_port: (TcpStream, TcpStream),
}

impl DeadEl {
    pub(crate) fn new() -> DeadEl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
        let client = TcpStream::connect(listener.local_addr().expect("listener address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let addr = client.local_addr().expect("client address");
        DeadEl { addr, _holds_the_port: (client, server) }
    }
}

impl El for DeadEl {
    fn url(&self) -> String {
        self.addr.to_string()
    }
}

/// An EL whose host does not answer: a listener whose accept queue the test has filled, so
/// the kernel drops further SYNs and a connection attempt hangs (as to a powered-off machine)
/// instead of being refused.
struct UnansweringEl {
    listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl UnansweringEl {
    fn new() -> UnansweringEl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
        let addr = listener.local_addr().expect("listener address");
        let mut queued = Vec::new();
        // std listens with a backlog of 128: about 129 connections fill the queue.
        while queued.len() < 4096 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => queued.push(stream),
                Err(_) => return UnansweringEl { listener, _queued: queued },
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("listener address")
    }
}

impl El for UnansweringEl {
    fn url(&self) -> String {
        self.addr().to_string()
    }
}

/// `--builders` for these ELs, each as `127.0.0.1:PORT`.
fn builders(els: &[&dyn El]) -> String {
    els.iter().map(|el| el.url()).collect::<Vec<_>>().join(",")
}

/// The proxy in front of `els` (the first is the primary), with extra flags.
#[track_caller]
pub(crate) fn start_proxy(els: &[&dyn El], flags: &[&str]) -> Proxy {
    let builders = builders(els);
    Proxy::start(&[&["--builders", builders.as_str()][..], flags].concat())
}

/// A mock EL that is down until the test restarts it.
fn stopped_el() -> MockEl {
    let mut el = MockEl::start();
    el.stop();
    el
}

fn get_payload(id: u64) -> Vec<u8> {
    rpc_body(id, "engine_getPayloadV4", json!(["0x0000000000000001"]))
}

fn block_number(id: u64) -> Vec<u8> {
    rpc_body(id, "eth_blockNumber", json!([]))
}

/// A behaviour answering every call with `{"jsonrpc":"2.0","id":<id>,"result":"<tag>"}`, so
/// the BN's answer says which EL it came from.
fn tagged(tag: &'static str) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    move |request| rpc_result(request, json!(tag))
}

/// The exact body `tagged(tag)` answers to a request whose raw id is `raw_id`.
fn tagged_body(raw_id: &str, tag: &str) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{raw_id},"result":"{tag}"}}"#).into_bytes()
}

/// Whether a request is one of the calls that must stay in order.
fn is_ordered(request: &Received) -> bool {
    request.is("engine_newPayload") || request.is("engine_forkchoiceUpdated")
}

/// The ids of recorded requests, as numbers (`u64::MAX` for a missing or other id).
fn ids(received: &[Received]) -> Vec<u64> {
    received.iter().map(|r| r.rpc_id.as_ref().and_then(Value::as_u64).unwrap_or(u64::MAX)).collect()
}

/// Posts `body` and returns the answer with how long it took.
#[track_caller]
fn timed_post(bn: &mut Bn, body: &[u8]) -> (HttpResponse, Duration) {
    let sent = Instant::now();
    let response = bn.post(body);
    (response, sent.elapsed())
}

/// Compares bodies without printing 128 KiB on failure.
#[track_caller]
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let at =
            actual.iter().zip(expected).position(|(a, e)| a != e).unwrap_or(actual.len().min(expected.len()));
        let shown = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(20)..(at + 40).min(b.len())]).into_owned()
        };
        panic!(
            "{what}: {} bytes, expected {}; first difference at byte {at}: {:?} vs expected {:?}",
            actual.len(),
            expected.len(),
            shown(actual),
            shown(expected)
        );
    }
}

/// How many stderr lines contain `text`.
pub(crate) fn count_logs(proxy: &Proxy, text: &str) -> usize {
    proxy.logs().iter().filter(|line| line.contains(text)).count()
}

/// With `--loglevel debug` the proxy logs each request as it reads it, so once this request's
/// line is seen, every line the proxy wrote before reading it has been collected too: counts
/// of log lines taken afterwards are final for everything that happened before the call.
#[track_caller]
pub(crate) fn log_barrier(proxy: &Proxy, id: u64) {
    let mut bn = proxy.bn();
    bn.send_post(&[], &rpc_body(id, "eth_chainId", json!([])));
    proxy.wait_log(&format!("eth_chainId id {id} from"), TIMEOUT);
}

/// The value of the metric series `series` (name and labels) on the proxy's `GET /metrics`,
/// 0 while it is absent.
#[track_caller]
pub(crate) fn metric(proxy: &Proxy, series: &str) -> u64 {
    let mut bn = proxy.bn();
    bn.send_raw(b"GET /metrics HTTP/1.1\r\nHost: proxy\r\n\r\n");
    let text = bn.read_response().text();
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The answer a fcU from a beacon node that is not the best gets, with `id`.
fn filtered_fcu_answer(id: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "payloadStatus": { "status": "SYNCING", "latestValidHash": null, "validationError": null },
            "payloadId": null,
        },
    })
}

// ------------------------------------------------- engine calls reach every EL byte for byte

#[test]
fn engine_call_reaches_every_el_byte_for_byte() {
    let (a, b, c) = (MockEl::start(), MockEl::start(), MockEl::start());
    // Builders without a scheme and with http://.
    let builders = format!("{},{},{}", a.url(), b.http_url(), c.url());
    let proxy = Proxy::start(&["--builders", &builders]);

    let fcu_params =
        serde_json::from_slice::<Value>(&sample("fcu.json")).expect("fcu.json is JSON")["params"].clone();
    // Odd but valid JSON: spaces, a string id with an escape, a trailing newline.
    let odd = concat!(
        r#"{ "jsonrpc" : "2.0", "method":"engine_getPayloadV4","#,
        "\n",
        r#" "params":["0x01"], "id" : "g\"1" }"#,
        "\n"
    );
    let bodies = [
        sample("newpayload-128k.json"),
        rpc_body_with_id(&json!(77), "engine_forkchoiceUpdatedV3", fcu_params, KeyOrder::Lighthouse),
        odd.as_bytes().to_vec(),
    ];
    let mut bn = proxy.bn();
    for body in &bodies {
        assert_eq!(bn.post(body).status, 200);
    }
    for el in [&a, &b, &c] {
        let received = el.wait_requests(bodies.len(), TIMEOUT);
        assert_eq!(received.len(), bodies.len(), "EL {} got {:?}", el.url(), el.methods());
        for body in &bodies {
            let got = received.iter().find(|r| r.body.len() == body.len()).map_or(&[][..], |r| &r.body[..]);
            assert_same_bytes(got, body, &format!("body received by {}", el.url()));
        }
    }
}

// ------------------------------------------------------------ the BN gets the primary's answer

#[test]
fn bn_gets_the_primary_answer_status_body_and_content_type() {
    let body = br#"{"jsonrpc":"2.0","id":1,"result":{"status":"VALID","note":"from the primary"}}"#;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let chunked = [head.as_bytes(), &encode_chunked(body, 17)].concat();
    let error =
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\n\
                 internal hiccup\n";
    // The primary answers after the secondary, which must not matter.
    let primary = MockEl::with(sequence([
        Reply::Garbage(chunked).delayed(Duration::from_millis(50)),
        Reply::Garbage(error.as_bytes().to_vec()).delayed(Duration::from_millis(50)),
    ]));
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();

    let response = bn.post(&new_payload(1, 100));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json; charset=utf-8"));
    assert_same_bytes(&response.body, body, "answer relayed from a chunked primary answer");

    let response = bn.post(&get_payload(2));
    assert_eq!(response.status, 500);
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.text(), "internal hiccup\n");
}

// ----------------------------------------------------------------------------------- fallback

/// ELs: a primary that fails as `failure` says, a second EL that is not listening, a third that
/// answers after 100 ms and a fourth that answers at once. The BN must get the third's answer
/// (the next in list order that answered), for an ordered and an unordered call.
#[track_caller]
fn assert_falls_back_in_list_order(failure: Reply, flags: &[&str]) {
    let primary = MockEl::with(move |_| failure.clone());
    let second = DeadEl::new();
    let third = MockEl::with(|r| rpc_result(r, json!("third")).delayed(Duration::from_millis(100)));
    let fourth = MockEl::with(tagged("fourth"));
    let proxy = start_proxy(&[&primary, &second, &third, &fourth], flags);
    let mut bn = proxy.bn();
    for (id, body) in [(1, new_payload(1, 100)), (2, get_payload(2))] {
        let response = bn.post(&body);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_same_bytes(&response.body, &tagged_body(&id.to_string(), "third"), "fallback answer");
    }
    // The primary was asked the ordered call. A primary that timed out or broke the connection
    // gets it again after a backoff, and counts as not answering: the unordered call then
    // falls back at once, without asking it (issue 17).
    let asked = ids(&primary.received());
    assert_eq!(asked.first(), Some(&1), "the primary was asked the ordered call: {asked:?}");
    assert!(asked.iter().all(|id| [1, 2].contains(id)), "{asked:?}");
}

#[test]
fn refused_primary_falls_back_to_the_next_el_in_list_order() {
    let (primary, second) = (DeadEl::new(), DeadEl::new());
    let third = MockEl::with(|r| rpc_result(r, json!("third")).delayed(Duration::from_millis(100)));
    let fourth = MockEl::with(tagged("fourth"));
    let proxy = start_proxy(&[&primary, &second, &third, &fourth], &[]);
    let mut bn = proxy.bn();
    for (id, body) in [(1, new_payload(1, 100)), (2, get_payload(2)), (3, new_payload(3, 101))] {
        let response = bn.post(&body);
        assert_same_bytes(&response.body, &tagged_body(&id.to_string(), "third"), "fallback answer");
    }
}

#[test]
fn reset_primary_falls_back_to_the_next_el_in_list_order() {
    assert_falls_back_in_list_order(Reply::Reset, &[]);
}

#[test]
fn timed_out_primary_falls_back_to_the_next_el_in_list_order() {
    assert_falls_back_in_list_order(Reply::Hang, &["--request-timeout", "300"]);
}

#[test]
fn non_http_primary_falls_back_to_the_next_el_in_list_order() {
    assert_falls_back_in_list_order(Reply::Garbage(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()), &[]);
}

#[test]
fn regression_calls_queued_before_the_primary_is_found_down_fall_back_at_once() {
    let primary = DeadEl::new();
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    // Two ordered calls in one write: both are read before the connection attempt is refused.
    let host = proxy.addr().to_string();
    let both = [post_request(&host, &[], &new_payload(1, 101)), post_request(&host, &[], &fcu(2, Some(101)))];
    let mut bn = proxy.bn();
    let sent = Instant::now();
    bn.send_raw(&both.concat());
    for id in 1..=2 {
        let response = bn.read_response();
        assert_same_bytes(&response.body, &tagged_body(&id.to_string(), "secondary"), "fallback answer");
        let took = sent.elapsed();
        assert!(took < PROMPT, "id {id} answered after {took:?}");
    }
}

#[test]
fn regression_unanswering_primary_falls_back_when_its_connection_attempt_fails() {
    let primary = UnansweringEl::new();
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    // Both calls wait for the primary's first connection attempt, which gives up after 2 s;
    // each then deserves the secondary's answer, not only at its own timeout (8 s).
    let mut bns = [proxy.bn(), proxy.bn()];
    let sent = Instant::now();
    bns[0].send_post(&[], &new_payload(1, 101));
    secondary.wait_requests(1, TIMEOUT);
    bns[1].send_post(&[], &fcu(2, Some(101)));
    secondary.wait_requests(2, TIMEOUT);
    for (id, bn) in (1..).zip(bns.iter_mut()) {
        let response = bn.read_response();
        assert_same_bytes(&response.body, &tagged_body(&id.to_string(), "secondary"), "fallback answer");
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(4), "id {id} answered after {took:?}");
    }
}

#[test]
fn no_el_answering_gives_502_with_the_request_id() {
    let (a, b) = (DeadEl::new(), DeadEl::new());
    let proxy = start_proxy(&[&a, &b], &[]);
    let mut bn = proxy.bn();
    let cases = [
        (json!(42), rpc_body(42, "engine_newPayloadV3", json!([{ "timestamp": "0x1" }, [], null]))),
        (
            json!("req-7"),
            rpc_body_with_id(&json!("req-7"), "engine_getPayloadV4", json!(["0x01"]), KeyOrder::Lighthouse),
        ),
        (
            json!("np-\"x\""),
            rpc_body_with_id(&json!("np-\"x\""), "engine_newPayloadV3", json!([{}]), KeyOrder::Lodestar),
        ),
        (json!(9), block_number(9)),
    ];
    for (id, body) in cases {
        let response = bn.post(&body);
        assert_eq!(response.status, 502, "{}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"));
        let answer = response.json();
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["id"], id, "{}", response.text());
        assert!(answer["error"]["code"].is_i64(), "{}", response.text());
        assert!(answer["error"]["message"].is_string(), "{}", response.text());
        assert!(answer.get("result").is_none());
    }
}

// ---------------------------------------------------------- answered as soon as it is decided

#[test]
fn hung_secondary_does_not_delay_the_bn() {
    let primary = MockEl::start();
    let secondary = MockEl::with(|_| Reply::Hang);
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    // newPayload and fcU would wait 8 s for the secondary if the proxy waited for it.
    for body in [new_payload(1, 100), fcu(2, Some(100)), new_payload(3, 101)] {
        let (response, took) = timed_post(&mut bn, &body);
        assert_eq!(response.status, 200);
        assert!(took < PROMPT, "answered after {took:?}");
    }
    secondary.wait_requests(1, TIMEOUT);
}

#[test]
fn delayed_secondary_does_not_delay_the_bn() {
    let primary = MockEl::start();
    let secondary = MockEl::with(|r| default_reply(r).delayed(Duration::from_secs(2)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    for body in [new_payload(1, 100), get_payload(2)] {
        let (response, took) = timed_post(&mut bn, &body);
        assert_eq!(response.json()["id"], serde_json::from_slice::<Value>(&body).unwrap()["id"]);
        assert!(took < PROMPT, "answered after {took:?} (the secondary takes 2 s)");
    }
}

#[test]
fn late_disagreeing_answer_is_read_and_warned_once() {
    let late = Duration::from_secs(1);
    let primary = MockEl::start();
    // Only the first call gets the late, disagreeing answer.
    let secondary = MockEl::with(move |r| match r.rpc_id == Some(json!(1)) {
        true => reply_status(r, "SYNCING").delayed(late),
        false => default_reply(r),
    });
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    let mut bn = proxy.bn();

    let (response, took) = timed_post(&mut bn, &new_payload(1, 100));
    assert_eq!(response.json()["result"]["status"], "VALID");
    assert!(took < late / 2, "answered after {took:?}, not well before the late secondary ({late:?})");

    let warning = proxy.wait_log("disagree", TIMEOUT);
    for part in [
        "engine_newPayloadV3".to_string(),
        format!("{} says VALID", primary.url()),
        format!("{} says SYNCING", secondary.url()),
    ] {
        assert!(warning.contains(&part), "{warning:?} should contain {part:?}");
    }
    // The secondary gets call 2 only after its answer to call 1 was read and compared.
    bn.post(&new_payload(2, 101));
    secondary.wait_requests(2, TIMEOUT);
    log_barrier(&proxy, 900);
    assert_eq!(count_logs(&proxy, "disagree"), 1, "{:#?}", proxy.logs());
}

// --------------------------------------------------------------------------- order per EL

#[test]
fn ordered_calls_reach_a_slow_el_in_order_one_at_a_time() {
    let delay = Duration::from_millis(50);
    let primary = MockEl::start();
    let slow = MockEl::with(move |r| default_reply(r).delayed(delay));
    let proxy = start_proxy(&[&primary, &slow], &[]);

    // Twenty newPayload/fcU, pipelined on one connection as fast as they can be written.
    let sent: Vec<u64> = (1..=20).collect();
    let mut bn = proxy.bn();
    for &id in &sent {
        let body = if id % 2 == 1 { new_payload(id, 1000 + id) } else { fcu(id, Some(1000 + id)) };
        bn.send_post(&[], &body);
    }
    for &id in &sent {
        assert_eq!(bn.read_response().json()["id"], id, "answers come in request order");
    }

    assert_eq!(ids(&primary.wait_requests(sent.len(), TIMEOUT)), sent);
    let received = slow.wait_requests(sent.len(), TIMEOUT);
    assert_eq!(ids(&received), sent, "the slow EL's order");
    for pair in received.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= delay,
            "id {} arrived {gap:?} after id {}, before that one was answered ({delay:?})",
            ids(&pair[1..])[0],
            ids(&pair[..1])[0]
        );
    }
}

#[test]
fn other_calls_do_not_queue_behind_ordered_ones() {
    let delay = Duration::from_millis(300);
    let primary = MockEl::start();
    let slow =
        MockEl::with(move |r| if is_ordered(r) { default_reply(r).delayed(delay) } else { default_reply(r) });
    let proxy = start_proxy(&[&primary, &slow], &[]);

    // Eight ordered calls: 2.4 s of queue at the slow EL.
    let mut bn = proxy.bn();
    for id in 1..=8 {
        bn.send_post(&[], &new_payload(id, 1000 + id));
    }
    slow.wait_requests(1, TIMEOUT);
    let sent = Instant::now();
    let (response, _) = timed_post(&mut proxy.bn(), &get_payload(100));
    assert_eq!(response.json()["id"], 100);
    let received =
        slow.wait_for("the getPayload", TIMEOUT, |all| all.iter().any(|r| r.is("engine_getPayload")));
    let get = received.iter().find(|r| r.is("engine_getPayload")).expect("found");
    let waited = get.at.duration_since(sent);
    assert!(waited < PROMPT, "getPayload reached the slow EL {waited:?} after it was sent");
    let ordered_before = received.iter().take_while(|r| !r.is("engine_getPayload")).count();
    assert!(ordered_before < 8, "getPayload waited for all {ordered_before} ordered calls");
}

// ----------------------------------------------------------------------------- backlog

/// With a secondary that is down and a backlog bound (`flags`) that holds three of the calls
/// sent here, five calls drop the oldest two (one warning, both counted), and the EL gets the
/// newest three, in order, when it is back.
#[track_caller]
fn assert_backlog_keeps_the_newest_three(flags: &[&str]) {
    let primary = MockEl::start();
    let mut secondary = stopped_el();
    let proxy = start_proxy(&[&primary, &secondary], flags);
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&new_payload(1, 101)).status, 200);
    // Once the proxy knows the EL is down, every later call waits in its backlog.
    proxy.wait_log(&format!("{} is down", secondary.url()), TIMEOUT);
    for id in 2..=5 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).status, 200);
    }
    let full = format!("{}: backlog full", secondary.url());
    let warning = proxy.wait_log(&full, TIMEOUT);
    assert!(warning.contains("dropped the oldest engine_newPayloadV3"), "{warning:?}");
    let dropped = format!("sync_proxy_el_dropped_total{{el=\"{}\"}}", secondary.url());
    wait_until("two drops counted", TIMEOUT, || metric(&proxy, &dropped) == 2);

    secondary.restart();
    let received = secondary.wait_requests(3, TIMEOUT);
    assert_eq!(ids(&received), [3, 4, 5], "the newest three, in order");
    // A later call arrives after the backlog: nothing else was kept.
    bn.post(&new_payload(6, 106));
    assert_eq!(ids(&secondary.wait_requests(4, TIMEOUT)), [3, 4, 5, 6]);
    assert_eq!(count_logs(&proxy, &full), 1, "a full backlog is reported once a minute, not per call");
}

#[test]
fn backlog_over_its_count_drops_the_oldest_with_a_warning() {
    assert_backlog_keeps_the_newest_three(&["--backlog-requests", "3"]);
}

#[test]
fn backlog_over_its_bytes_drops_the_oldest_with_a_warning() {
    let size = new_payload(1, 101).len();
    assert!((2..=6).all(|id| new_payload(id, 100 + id).len() == size), "the calls are the same size");
    assert_backlog_keeps_the_newest_three(&["--backlog-bytes", &(3 * size).to_string()]);
}

#[test]
fn regression_backlog_bound_holds_while_a_connection_attempt_hangs() {
    let primary = MockEl::start();
    let unanswering = UnansweringEl::new();
    let addr = unanswering.addr();
    let proxy = start_proxy(&[&primary, &unanswering], &["--backlog-requests", "3"]);
    let mut bn = proxy.bn();
    // Call 1 waits on the connection attempt; calls 2-5 overflow the backlog.
    for id in 1..=5 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).status, 200);
    }
    // The attempt gives up after its connect timeout (2 s) and call 1 goes back to the front of
    // the backlog: the EL, once it answers, must still get only the newest three.
    proxy.wait_log(&format!("{addr} is down"), TIMEOUT);
    drop(unanswering);
    let secondary = MockEl::start_on(addr, default_reply);
    let received =
        secondary.wait_for("call 5", TIMEOUT, |all| all.iter().any(|r| r.rpc_id == Some(json!(5))));
    assert_eq!(ids(&received), [3, 4, 5], "the newest three calls, in order");
    let dropped = format!("sync_proxy_el_dropped_total{{el=\"{addr}\"}}");
    assert_eq!(metric(&proxy, &dropped), 2, "calls 1 and 2 dropped");
}

#[test]
fn restarting_el_gets_its_backlog_in_order_once() {
    let primary = MockEl::start();
    let mut secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    bn.post(&new_payload(1, 101));
    secondary.wait_requests(1, TIMEOUT);
    // Stop only once the proxy has the secondary's answer: a call in flight when it stops is
    // sent again when it is back (issue 17), and would reach it twice.
    let answered = format!("sync_proxy_el_answer_seconds_count{{el=\"{}\"}}", secondary.url());
    wait_until("the proxy has the secondary's answer", TIMEOUT, || metric(&proxy, &answered) == 1);

    secondary.stop();
    let sent: Vec<u64> = (2..=11).collect();
    for &id in &sent {
        let body = if id % 3 == 0 { fcu(id, Some(100 + id)) } else { new_payload(id, 100 + id) };
        assert_eq!(bn.post(&body).status, 200, "the primary answers while the secondary is down");
    }
    secondary.restart();
    let received = secondary.wait_requests(1 + sent.len(), TIMEOUT);
    assert_eq!(ids(&received[1..]), sent, "the backlog, in order");
    // Anything sent twice would arrive before this later call.
    bn.post(&new_payload(12, 112));
    let received = secondary.wait_requests(2 + sent.len(), TIMEOUT);
    let all: Vec<u64> = (1..=12).collect();
    assert_eq!(ids(&received), all, "each call exactly once");
}

// -------------------------------------------------------------------------- combined answers

#[test]
fn client_version_concatenates_answers_primary_first() {
    let version = |code: &str| {
        let name = code.to_lowercase();
        json!({ "code": code, "name": name, "version": "1.2", "commit": "0x0badf00d" })
    };
    let (ge, nm, rh) = (version("GE"), version("NM"), version("RH"));
    let primary_result = json!([ge.clone()]);
    let second_result = json!([nm.clone(), rh.clone()]);
    // The primary answers last: the order is the list's, not the answers'.
    let primary =
        MockEl::with(move |r| rpc_result(r, primary_result.clone()).delayed(Duration::from_millis(100)));
    let second = MockEl::with(move |r| rpc_result(r, second_result.clone()));
    let third = DeadEl::new();
    let proxy = start_proxy(&[&primary, &second, &third], &[]);
    let ours = json!([{ "code": "SP", "name": "sync-proxy", "version": "0.1.0", "commit": "0x00000000" }]);
    let request = rpc_body_with_id(&json!("cv"), "engine_getClientVersionV1", ours, KeyOrder::Lighthouse);
    let response = proxy.bn().post(&request);
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), json!({ "jsonrpc": "2.0", "id": "cv", "result": [ge, nm, rh] }));
}

#[test]
fn exchange_capabilities_intersects_the_answering_els() {
    let primary_caps = json!([
        "engine_newPayloadV3",
        "engine_newPayloadV4",
        "engine_forkchoiceUpdatedV3",
        "engine_getPayloadV4"
    ]);
    let second_caps = json!([
        "engine_getPayloadV4",
        "engine_getPayloadV5",
        "engine_forkchoiceUpdatedV3",
        "engine_newPayloadV3"
    ]);
    let primary = MockEl::with(move |r| rpc_result(r, primary_caps.clone()));
    let second = MockEl::with(move |r| rpc_result(r, second_caps.clone()).delayed(Duration::from_millis(50)));
    let down = DeadEl::new();
    let proxy = start_proxy(&[&primary, &second, &down], &[]);
    let asked = json!([[
        "engine_newPayloadV3",
        "engine_newPayloadV4",
        "engine_forkchoiceUpdatedV3",
        "engine_getPayloadV4"
    ]]);
    let response = proxy.bn().post(&rpc_body(5, "engine_exchangeCapabilities", asked));
    assert_eq!(response.status, 200);
    let expected = json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3", "engine_getPayloadV4"]);
    assert_eq!(response.json(), json!({ "jsonrpc": "2.0", "id": 5, "result": expected }));
}

#[test]
fn exchange_capabilities_leaves_out_an_el_that_does_not_answer_in_time() {
    let caps = json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3"]);
    let primary = MockEl::with(|_| Reply::Hang);
    let second = MockEl::with(move |r| rpc_result(r, caps.clone()));
    let proxy = start_proxy(&[&primary, &second], &["--request-timeout", "300"]);
    let asked = json!([["engine_newPayloadV3", "engine_forkchoiceUpdatedV3", "engine_getPayloadV4"]]);
    let (response, took) = timed_post(&mut proxy.bn(), &rpc_body(6, "engine_exchangeCapabilities", asked));
    let expected = json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3"]);
    assert_eq!(response.json(), json!({ "jsonrpc": "2.0", "id": 6, "result": expected }));
    assert!(took >= Duration::from_millis(250) && took < PROMPT, "answered after {took:?}");
}

// ------------------------------------------------------------------------------ mirror mode

#[test]
fn mirror_mode_acknowledges_at_once_then_forwards() {
    let primary = MockEl::with(|_| Reply::Hang);
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &["--mirror-mode"]);
    let mut bn = proxy.bn();
    let bodies = [new_payload(1, 100), get_payload(2), fcu(3, Some(100))];
    for (id, body) in (1..).zip(&bodies) {
        let (response, took) = timed_post(&mut bn, body);
        assert_eq!(response.status, 200);
        assert!(took < PROMPT, "acknowledged after {took:?}");
        let answer = response.json();
        assert_eq!((&answer["jsonrpc"], &answer["id"]), (&json!("2.0"), &json!(id)), "{answer}");
        assert!(answer.get("result").is_some() && answer.get("error").is_none(), "{answer}");
    }
    // The hung primary has the fcU queued behind its hung newPayload; the secondary has all.
    for (el, n) in [(&primary, 2), (&secondary, 3)] {
        let received = el.wait_requests(n, TIMEOUT);
        for body in &bodies[..n] {
            let got = received.iter().find(|r| r.body.len() == body.len()).map_or(&[][..], |r| &r.body[..]);
            assert_same_bytes(got, body, &format!("mirrored body at {}", el.url()));
        }
    }
}

#[test]
fn mirror_mode_answers_an_nginx_http10_subrequest_and_closes() {
    let primary = MockEl::with(|r| default_reply(r).delayed(Duration::from_secs(2)));
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &["--mirror-mode"]);
    let body = new_payload(7, 100);
    // What nginx's `mirror` + `proxy_pass` sends: HTTP/1.0 and Connection: close.
    let head = format!(
        "POST / HTTP/1.0\r\nX-Real-IP: 10.0.0.9\r\nHost: 127.0.0.1:8552\r\nX-Forwarded-For: 10.0.0.9\r\n\
         Connection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n",
        body.len()
    );
    let mut bn = proxy.bn();
    let sent = Instant::now();
    bn.send_raw(&[head.as_bytes(), &body].concat());
    let response = bn.read_response();
    assert!(sent.elapsed() < PROMPT, "acknowledged after {:?}", sent.elapsed());
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["id"], 7);
    assert!(bn.is_closed_within(TIMEOUT), "the proxy closes the connection after its answer");
    for el in [&primary, &secondary] {
        assert_same_bytes(&el.wait_requests(1, TIMEOUT)[0].body, &body, "mirrored body");
    }
}

// ------------------------------------------------------------------ the BN may leave early

#[test]
fn request_read_whole_reaches_every_el_after_the_bn_disconnects() {
    let slow = |r: &Received| default_reply(r).delayed(Duration::from_millis(200));
    let (primary, secondary) = (MockEl::with(slow), MockEl::with(slow));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let bodies = [new_payload(1, 100), get_payload(2), fcu(3, Some(100))];
    let mut bn = proxy.bn();
    for body in &bodies {
        bn.send_post(&[], body);
    }
    drop(bn);
    for el in [&primary, &secondary] {
        let received = el.wait_for("all three calls", TIMEOUT, |all| all.len() >= bodies.len());
        for body in &bodies {
            assert!(
                received.iter().any(|r| r.body == *body),
                "{} lacks a body: {:?}",
                el.url(),
                el.methods()
            );
        }
    }
    // The proxy still serves.
    assert_eq!(proxy.bn().post(&new_payload(4, 101)).json()["id"], 4);
}

// ---------------------------------------------------------------- non-engine calls and batches

#[test]
fn non_engine_calls_and_batches_go_to_the_primary_only() {
    let primary = MockEl::with(|r| match r.rpc_method {
        Some(_) => rpc_result(r, json!("0x1234")),
        None => Reply::json(
            r#"[{"jsonrpc":"2.0","id":1,"result":"0x1"},{"jsonrpc":"2.0","id":2,"result":"0x2"}]"#,
        ),
    });
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();

    let response = bn.post(&block_number(5));
    assert_same_bytes(
        &response.body,
        br#"{"jsonrpc":"2.0","id":5,"result":"0x1234"}"#,
        "eth_blockNumber answer",
    );
    let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]},
                     {"jsonrpc":"2.0","id":2,"method":"eth_syncing","params":[]}]"#;
    let response = bn.post(batch);
    assert_eq!(response.status, 200);
    assert_eq!(response.json().as_array().map(Vec::len), Some(2), "{}", response.text());

    assert_same_bytes(&primary.wait_requests(2, TIMEOUT)[1].body, batch, "batch at the primary");
    // An engine call afterwards reaches the secondary; nothing before it did.
    bn.post(&get_payload(6));
    let received = secondary.wait_requests(1, TIMEOUT);
    assert_eq!(secondary.methods(), ["engine_getPayloadV4"], "{received:?}");
}

#[test]
fn non_engine_calls_fall_back_when_the_primary_is_down() {
    let primary = DeadEl::new();
    let second = MockEl::with(tagged("second"));
    let third = MockEl::with(tagged("third"));
    let proxy = start_proxy(&[&primary, &second, &third], &[]);
    let mut bn = proxy.bn();
    assert_same_bytes(&bn.post(&block_number(5)).body, &tagged_body("5", "second"), "eth_blockNumber");
    let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}]"#;
    let response = bn.post(batch);
    assert_same_bytes(&response.body, &tagged_body("null", "second"), "batch answered by the second EL");
    assert_same_bytes(&second.wait_requests(2, TIMEOUT)[1].body, batch, "batch at the second EL");
    assert!(third.received().is_empty(), "the third EL got {:?}", third.methods());
}

// ----------------------------------------------------------------------------- best beacon node

/// Posts `body` as the BN at X-Forwarded-For `xff` (none: its peer IP, 127.0.0.1).
#[track_caller]
fn post_as(proxy: &Proxy, xff: Option<&str>, body: &[u8]) -> HttpResponse {
    let headers: Vec<(&str, &str)> = xff.map(|x| ("X-Forwarded-For", x)).into_iter().collect();
    proxy.bn().post_with(&headers, body)
}

#[test]
fn first_beacon_node_is_followed_and_others_fcu_answered_syncing() {
    let (primary, secondary) = (MockEl::start(), MockEl::start());
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let (a, b) = (Some("10.0.0.1"), Some("10.0.0.2"));

    assert_eq!(post_as(&proxy, a, &fcu(1, Some(100))).json()["result"]["payloadStatus"]["status"], "VALID");
    proxy.wait_log("following beacon node 10.0.0.1", TIMEOUT);

    // B is behind: its fcU is answered by the proxy, with its own id, and not forwarded.
    let response = post_as(&proxy, b, &fcu(2, Some(90)));
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), filtered_fcu_answer(json!(2)));
    let string_id = rpc_body_with_id(
        &json!("b-3"),
        "engine_forkchoiceUpdatedV3",
        json!([{}, null]),
        KeyOrder::Lighthouse,
    );
    assert_eq!(post_as(&proxy, b, &string_id).json(), filtered_fcu_answer(json!("b-3")));
    // B's newPayload is forwarded.
    assert_eq!(post_as(&proxy, b, &new_payload(4, 95)).json()["result"]["status"], "VALID");

    for el in [&primary, &secondary] {
        assert_eq!(ids(&el.wait_requests(2, TIMEOUT)), [1, 4], "{} got {:?}", el.url(), el.methods());
    }
}

#[test]
fn beacon_node_with_a_larger_timestamp_becomes_the_best() {
    let (primary, secondary) = (MockEl::start(), MockEl::start());
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let (a, b) = (Some("10.0.0.1"), Some("10.0.0.2"));

    post_as(&proxy, a, &fcu(1, Some(100)));
    // A newPayload's params[0].timestamp takes over...
    post_as(&proxy, b, &new_payload(2, 101));
    proxy.wait_log("switching beacon node 10.0.0.1 -> 10.0.0.2 (timestamp 101)", TIMEOUT);
    assert_eq!(
        post_as(&proxy, a, &fcu(3, Some(101))).json(),
        filtered_fcu_answer(json!(3)),
        "equal is not larger"
    );
    assert_eq!(post_as(&proxy, b, &fcu(4, None)).json()["result"]["payloadStatus"]["status"], "VALID");
    // A fcU from a BN that is not the best never switches (it reaches no EL, so no EL can
    // confirm its timestamp); A's next payload does.
    assert_eq!(post_as(&proxy, a, &fcu(7, Some(103))).json(), filtered_fcu_answer(json!(7)));
    assert_eq!(post_as(&proxy, a, &new_payload(5, 102)).json()["result"]["status"], "VALID");
    proxy.wait_log("switching beacon node 10.0.0.2 -> 10.0.0.1 (timestamp 102)", TIMEOUT);
    assert_eq!(post_as(&proxy, b, &fcu(6, None)).json(), filtered_fcu_answer(json!(6)));

    for el in [&primary, &secondary] {
        assert_eq!(ids(&el.wait_requests(4, TIMEOUT)), [1, 2, 4, 5], "{} got {:?}", el.url(), el.methods());
    }
}

#[test]
fn beacon_identity_is_the_first_forwarded_for_address_else_the_peer_ip() {
    let primary = MockEl::start();
    let proxy = start_proxy(&[&primary], &[]);

    // No X-Forwarded-For: the peer IP, 127.0.0.1, is the first seen.
    post_as(&proxy, None, &fcu(1, Some(100)));
    proxy.wait_log("following beacon node 127.0.0.1", TIMEOUT);
    // The first address names the BN, not the last hop.
    let relayed = Some("10.0.0.1, 127.0.0.1");
    assert_eq!(post_as(&proxy, relayed, &fcu(2, Some(50))).json(), filtered_fcu_answer(json!(2)));
    // A header naming 127.0.0.1 first is the same BN as the bare peer.
    assert_eq!(post_as(&proxy, Some("127.0.0.1, 10.9.9.9"), &fcu(3, None)).status, 200);
    post_as(&proxy, relayed, &new_payload(4, 150));
    proxy.wait_log("switching beacon node 127.0.0.1 -> 10.0.0.1 (timestamp 150)", TIMEOUT);
    post_as(&proxy, Some(" 10.0.0.1 "), &fcu(5, None));
    assert_eq!(post_as(&proxy, None, &fcu(6, None)).json(), filtered_fcu_answer(json!(6)));

    assert_eq!(ids(&primary.wait_requests(4, TIMEOUT)), [1, 3, 4, 5], "{:?}", primary.methods());
}

// ------------------------------------------------------------------------------ peer proxies

#[test]
fn peer_proxies_receive_every_forwarded_call() {
    let (primary, peer) = (MockEl::start(), MockEl::start());
    let builders = primary.url();
    let proxy = Proxy::start(&["--builders", &builders, "--proxies", &peer.http_url()]);
    let mut bn = proxy.bn();
    let bodies = [new_payload(1, 100), fcu(2, Some(100)), get_payload(3), sample("newpayload-128k.json")];
    for body in &bodies {
        assert_eq!(bn.post(body).status, 200);
    }
    let received = peer.wait_requests(bodies.len(), TIMEOUT);
    for body in &bodies {
        assert!(received.iter().any(|r| r.body == *body), "the peer lacks a body: {:?}", peer.methods());
    }
    let ordered: Vec<u64> = ids(&received.iter().filter(|r| is_ordered(r)).cloned().collect::<Vec<_>>());
    assert_eq!(ordered, [1, 2, 1], "ordered calls reach the peer in order");
}

#[test]
fn hung_peer_proxy_does_not_delay_the_bn() {
    let (primary, peer) = (MockEl::start(), MockEl::with(|_| Reply::Hang));
    let proxy = Proxy::start(&["--builders", &primary.url(), "--proxies", &peer.url()]);
    let mut bn = proxy.bn();
    for body in [new_payload(1, 100), fcu(2, Some(100)), get_payload(3)] {
        let (response, took) = timed_post(&mut bn, &body);
        assert_eq!(response.status, 200);
        assert!(took < PROMPT, "answered after {took:?}");
    }
    peer.wait_requests(1, TIMEOUT);
}

#[test]
fn proxy_request_timeout_bounds_a_hung_peer() {
    let primary = MockEl::start();
    let peer = MockEl::with(sequence([Reply::Hang]));
    let flags = ["--builders", &primary.url(), "--proxies", &peer.url(), "--proxy-request-timeout", "200"];
    let proxy = Proxy::start(&flags);
    let mut bn = proxy.bn();
    bn.post(&new_payload(1, 100));
    bn.post(&new_payload(2, 101));
    // The second ordered call goes out once the first timed out: after 200 ms, not 2 s.
    let received = peer.wait_requests(2, TIMEOUT);
    let gap = received[1].at.duration_since(received[0].at);
    assert_eq!(ids(&received), [1, 2]);
    assert!(gap >= Duration::from_millis(150) && gap < Duration::from_millis(1500), "gap {gap:?}");
}

// ------------------------------------------------------------------------------ timeouts

#[test]
fn get_payload_to_a_hung_primary_falls_back_after_about_one_second() {
    let primary = MockEl::with(|_| Reply::Hang);
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    // A newPayload has 8 s: still unanswered when getPayload (1 s) has fallen back.
    let mut slow_bn = proxy.bn();
    slow_bn.send_post(&[], &new_payload(1, 100));
    let (response, took) = timed_post(&mut proxy.bn(), &get_payload(2));
    assert_same_bytes(&response.body, &tagged_body("2", "secondary"), "getPayload fallback");
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(3), "fell back after {took:?}");
    assert!(slow_bn.read_response_timeout(Duration::from_millis(50)).is_none(), "newPayload timed out early");
}

#[test]
fn request_timeout_flag_sets_one_timeout_for_every_method() {
    for (id, body) in [(1, new_payload(1, 100)), (2, fcu(2, Some(100))), (3, get_payload(3))] {
        // A proxy each: once the primary timed out it counts as not answering, and later
        // calls fall back at once instead of after their timeout.
        let primary = MockEl::with(|_| Reply::Hang);
        let secondary = MockEl::with(tagged("secondary"));
        let proxy = start_proxy(&[&primary, &secondary], &["--request-timeout", "200"]);
        let (response, took) = timed_post(&mut proxy.bn(), &body);
        assert_same_bytes(&response.body, &tagged_body(&id.to_string(), "secondary"), "fallback");
        assert!(took >= Duration::from_millis(150) && took < PROMPT, "id {id} fell back after {took:?}");
    }
}

#[test]
fn builder_timeout_env_sets_the_timeout() {
    let primary = MockEl::with(|_| Reply::Hang);
    let secondary = MockEl::with(tagged("secondary"));
    let builders = builders(&[&primary, &secondary]);
    let proxy = Launch::proxy().args(&["--builders", &builders]).env("BUILDER_TIMEOUT_MS", "200").start();
    let (response, took) = timed_post(&mut proxy.bn(), &new_payload(1, 100));
    assert_same_bytes(&response.body, &tagged_body("1", "secondary"), "fallback");
    assert!(took >= Duration::from_millis(150) && took < PROMPT, "fell back after {took:?}");
}

// ------------------------------------------------------------------ headers and framing

#[test]
fn forwarded_requests_keep_only_end_to_end_headers() {
    let (a, b) = (MockEl::start(), MockEl::start());
    let proxy = Proxy::start(&["--builders", &format!("{},{}", a.url(), b.http_url())]);
    let body = new_payload(1, 100);
    let headers = [
        ("Host", "proxy.example:8550"),
        ("Connection", "keep-alive, X-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("X-Hop", "named in Connection"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Transfer-Encoding", "chunked"),
        ("Accept-Encoding", "gzip, br"),
        ("X-Forwarded-For", "10.1.1.1, 10.2.2.2"),
        ("Authorization", "Bearer abc.def.ghi"),
        ("User-Agent", "Lighthouse/v5.3.0"),
        ("X-Custom", "kept"),
    ];
    assert_eq!(proxy.bn().post_with(&headers, &body).status, 200);
    for el in [&a, &b] {
        let request = &el.wait_requests(1, TIMEOUT)[0];
        assert_same_bytes(&request.body, &body, "forwarded body");
        let mut got: Vec<(String, String)> =
            request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
        got.sort();
        let length = body.len().to_string();
        let mut expected: Vec<(String, String)> = [
            ("authorization", "Bearer abc.def.ghi"),
            ("content-length", length.as_str()),
            ("content-type", "application/json"),
            ("host", el.url().as_str()),
            ("user-agent", "Lighthouse/v5.3.0"),
            ("x-custom", "kept"),
            ("x-forwarded-for", "10.1.1.1, 10.2.2.2, 127.0.0.1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        expected.sort();
        assert_eq!(got, expected, "headers at {}", el.url());
        assert_eq!(request.method_line, "POST / HTTP/1.1");
    }
}

/// The headers an EL received from a BN that sent `headers` with a newPayload.
fn forwarded_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let el = MockEl::start();
    let proxy = start_proxy(&[&el], &[]);
    assert_eq!(proxy.bn().post_with(headers, &new_payload(1, 100)).status, 200);
    el.wait_requests(1, TIMEOUT)[0].headers.clone()
}

#[test]
fn regression_headers_named_in_any_connection_header_line_are_not_forwarded() {
    let headers = [("Connection", "keep-alive"), ("Connection", "X-Hop"), ("X-Hop", "one hop only")];
    let forwarded = forwarded_headers(&headers);
    assert!(!forwarded.iter().any(|(name, _)| name.eq_ignore_ascii_case("x-hop")), "{forwarded:?}");
}

#[test]
fn regression_every_x_forwarded_for_line_is_kept_before_the_bn() {
    let headers = [("X-Forwarded-For", "10.1.1.1"), ("X-Forwarded-For", "10.2.2.2")];
    let forwarded = forwarded_headers(&headers);
    let xff: Vec<&str> = forwarded
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(xff.join(", "), "10.1.1.1, 10.2.2.2, 127.0.0.1", "{forwarded:?}");
}

#[test]
fn el_answers_of_every_framing_are_relayed() {
    let big = json!("f".repeat(10_000));
    let answers: Vec<(Framing, Vec<u8>)> =
        [Framing::ContentLength, Framing::Chunked, Framing::CloseDelimited]
            .into_iter()
            .enumerate()
            .map(|(i, framing)| {
                (framing, format!(r#"{{"jsonrpc":"2.0","id":{i},"result":{big}}}"#).into_bytes())
            })
            .collect();
    let replies = answers.iter().map(|(framing, body)| Reply::json(body.clone()).framed(*framing));
    let primary = MockEl::with(sequence(replies.collect::<Vec<_>>()));
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    for (i, (framing, body)) in answers.iter().enumerate() {
        let response = bn.post(&get_payload(i as u64));
        assert_eq!(response.status, 200, "{framing:?}");
        assert_eq!(response.header("content-type"), Some("application/json"), "{framing:?}");
        assert_same_bytes(&response.body, body, &format!("{framing:?} answer"));
    }
}

// ------------------------------------------------------------------------ EL connections

#[test]
fn el_connections_are_kept_alive_and_reused() {
    let (primary, secondary) = (MockEl::start(), MockEl::start());
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    for id in 1..=10 {
        let body = if id % 2 == 0 { get_payload(id) } else { new_payload(id, 100 + id) };
        assert_eq!(bn.post(&body).json()["id"], id);
    }
    primary.wait_requests(10, TIMEOUT);
    assert_eq!(primary.connections(), 1, "sequential calls share one connection to the primary");
}

#[test]
fn el_closing_a_kept_alive_connection_is_not_a_failure() {
    // The primary closes each connection right after answering, without saying so.
    let primary = MockEl::with(|r| default_reply(r).then_close());
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    for id in 1..=10 {
        let body = if id % 2 == 0 { get_payload(id) } else { new_payload(id, 100 + id) };
        let answer = bn.post(&body).json();
        assert_eq!(answer["id"], id);
        assert_ne!(answer["result"], "secondary", "id {id} fell back: {answer}");
    }
    let all: Vec<u64> = (1..=10).collect();
    assert_eq!(ids(&primary.received()), all, "each call reached the primary once");
}

#[test]
fn dead_el_is_logged_down_once_and_up_once() {
    let primary = MockEl::start();
    let mut secondary = stopped_el();
    // Once back, the secondary is slow to answer getPayload, so concurrent ones need several
    // connections (each a chance to log "is up" again).
    secondary.set_behaviour(|r| match r.is("engine_getPayload") {
        true => default_reply(r).delayed(Duration::from_millis(100)),
        false => default_reply(r),
    });
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    let mut bn = proxy.bn();
    for id in 1..=15 {
        let body = if id % 2 == 0 { get_payload(id) } else { new_payload(id, 100 + id) };
        assert_eq!(bn.post(&body).status, 200);
    }
    // The backlog keeps the proxy retrying, with backoff (100, 200, 400 ms…).
    let refused = format!(r#"sync_proxy_el_errors_total{{el="{}",kind="refused"}}"#, secondary.url());
    wait_until("four refused connection attempts", TIMEOUT, || metric(&proxy, &refused) >= 4);
    log_barrier(&proxy, 900);
    let (down, up) = (format!("{} is down", secondary.url()), format!("{} is up", secondary.url()));
    assert_eq!(count_logs(&proxy, &down), 1, "{:#?}", proxy.logs());
    assert_eq!(count_logs(&proxy, &up), 0);

    secondary.restart();
    proxy.wait_log(&up, TIMEOUT);
    assert_eq!(ids(&secondary.wait_requests(8, TIMEOUT)), [1, 3, 5, 7, 9, 11, 13, 15], "the backlog");
    let mut bns: Vec<Bn> = (0..3).map(|_| proxy.bn()).collect();
    for (id, bn) in (20..).zip(bns.iter_mut()) {
        bn.send_post(&[], &get_payload(id));
    }
    secondary.wait_requests(11, TIMEOUT);
    assert!(secondary.connections() >= 3, "{} connections", secondary.connections());
    log_barrier(&proxy, 901);
    assert_eq!((count_logs(&proxy, &down), count_logs(&proxy, &up)), (1, 1), "{:#?}", proxy.logs());
}

// ------------------------------------------------------------------------------ disagreement

#[test]
fn disagreeing_statuses_warn_once_per_request() {
    let primary = MockEl::start();
    let secondary = MockEl::with(|r| reply_status(r, "INVALID"));
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    let mut bn = proxy.bn();
    for id in 1..=3 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).json()["result"]["status"], "VALID");
    }
    // The fourth is sent to the secondary once its answer to the third was compared.
    secondary.wait_requests(3, TIMEOUT);
    secondary.set_behaviour(default_reply);
    bn.post(&new_payload(4, 104));
    secondary.wait_requests(4, TIMEOUT);
    log_barrier(&proxy, 900);
    let warnings: Vec<String> = proxy.logs().into_iter().filter(|l| l.contains("disagree")).collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for (id, warning) in (1..).zip(&warnings) {
        for part in [
            format!("engine_newPayloadV3 id {id}:"),
            format!("{} says VALID", primary.url()),
            format!("{} says INVALID", secondary.url()),
        ] {
            assert!(warning.contains(&part), "{warning:?} should contain {part:?}");
        }
    }
}

// ------------------------------------------------------------- large requests: primary first

/// An EL that accepts connections and never reads from them: the proxy's writes to it stall
/// once the socket buffers are full.
struct NonReadingEl {
    addr: SocketAddr,
    _held: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl NonReadingEl {
    fn new() -> NonReadingEl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
        let addr = listener.local_addr().expect("listener address");
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(stream);
            }
        });
        NonReadingEl { addr, _held: held }
    }
}

impl El for NonReadingEl {
    fn url(&self) -> String {
        self.addr.to_string()
    }
}

/// A newPayload body of about `size` bytes (a padded but valid request).
fn large_payload(id: u64, size: usize) -> Vec<u8> {
    let pad = "ab".repeat(size / 2);
    rpc_body(id, "engine_newPayloadV3", json!([{"timestamp": "0x10", "extraData": pad}, [], "0x00"]))
}

/// A primary that takes its request slowly but steadily (128 KiB every 10 ms), then answers
/// `{"result":"primary"}` with id 1.
fn slow_reading_primary() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    let addr = listener.local_addr().expect("listener address");
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let Ok(n) = std::io::Read::read(&mut stream, &mut buf) else { return };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= head_end + 4 + length {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let body = tagged_body("1", "primary");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = std::io::Write::write_all(&mut stream, &[head.as_bytes(), &body].concat());
        std::thread::sleep(Duration::from_secs(1));
    });
    addr
}

struct At(SocketAddr);

impl El for At {
    fn url(&self) -> String {
        self.0.to_string()
    }
}

#[test]
fn others_wait_while_the_primary_takes_a_large_request() {
    let primary = At(slow_reading_primary());
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    let body = large_payload(1, 16 << 20);
    bn.send_post(&[], &body);
    // The proxy has (nearly) all of the request once the beacon node's write returns.
    let sent = Instant::now();
    let response = bn.read_response();
    assert_eq!(response.body, tagged_body("1", "primary"));
    let answered = sent.elapsed();
    let got = secondary.wait_requests(1, TIMEOUT)[0].at - sent;
    // The primary needs about 640 ms to take 16 MiB; the secondary's copy only goes out once
    // the primary's is written (its socket buffer then holds the rest), not alongside it.
    assert!(
        got >= Duration::from_millis(200),
        "the secondary had the call after {got:?} (answer after {answered:?})"
    );
}

#[test]
fn others_get_a_large_request_once_the_primary_has_answered_it() {
    // The primary takes its copy at once and answers 120 ms later (as a real EL executing
    // the block would): a copy written meanwhile would delay the relay of that answer.
    let primary =
        MockEl::with(|r| rpc_result(r, json!({"status": "VALID"})).delayed(Duration::from_millis(120)));
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &large_payload(1, 1 << 20));
    let response = bn.read_response();
    assert_eq!(response.status, 200);
    let got = secondary.wait_requests(1, TIMEOUT)[0].at;
    let primary_got = primary.wait_requests(1, TIMEOUT)[0].at;
    // The mock writes its answer 120 ms after it has the call, so the answer went out no
    // earlier than that (a causal bound: a time the test thread takes after reading the
    // answer is late by its own scheduling delay).
    let answered = primary_got + Duration::from_millis(120);
    assert!(got >= answered, "the secondary had it before the answer went out");
    assert!(
        got - primary_got >= Duration::from_millis(100),
        "only {:?} after the primary",
        got - primary_got
    );
}

#[test]
fn a_slow_primary_holds_the_others_back_at_most_20_ms_for_a_small_request() {
    let primary =
        MockEl::with(|r| rpc_result(r, json!({"status": "VALID"})).delayed(Duration::from_millis(400)));
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    // Causal bounds only (timestamps of two mock threads are each late by their own
    // scheduling delay, so the gap between them is not a measure of the hold): the proxy
    // cannot read the request before it is sent, and holds the secondary's copy for 20 ms
    // after reading it, so the secondary has it at least 20 ms after the send…
    let sent = Instant::now();
    bn.send_post(&[], &new_payload(1, 100));
    let got = secondary.wait_requests(1, TIMEOUT)[0].at;
    primary.wait_requests(1, TIMEOUT);
    let held = got.saturating_duration_since(sent);
    assert!(held >= Duration::from_millis(20), "the secondary had it only {held:?} after the send");
    // …and before the primary's answer, which the mock sends 400 ms after it has the call:
    // the hold did not wait for the slow primary.
    assert_eq!(bn.read_response().status, 200);
    let answered = primary.received()[0].at + Duration::from_millis(400);
    assert!(got < answered, "the secondary waited for a primary answering in 400 ms");
}

#[test]
fn a_primary_that_does_not_answer_a_large_request_holds_the_others_back_only_briefly() {
    // The primary takes the whole request and never answers: the others get it after
    // about 200 ms without progress, long before the call's timeout.
    let primary = MockEl::with(|r| rpc_result(r, json!({"status": "VALID"})).delayed(Duration::from_secs(8)));
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &["--request-timeout", "20000"]);
    let mut bn = proxy.bn();
    let sent = Instant::now();
    bn.send_post(&[], &large_payload(1, 1 << 20));
    let got = secondary.wait_requests(1, Duration::from_secs(15))[0].at - sent;
    assert!(got >= Duration::from_millis(150), "the secondary got the call after only {got:?}");
    assert!(got < Duration::from_secs(3), "the secondary got the call only after {got:?}");
}

#[test]
fn a_primary_that_stops_reading_holds_the_others_back_only_briefly() {
    let primary = NonReadingEl::new();
    let secondary = MockEl::with(tagged("secondary"));
    let proxy = start_proxy(&[&primary, &secondary], &["--request-timeout", "20000"]);
    let mut bn = proxy.bn();
    let sent = Instant::now();
    bn.send_post(&[], &large_payload(1, 16 << 20));
    secondary.wait_requests(1, Duration::from_secs(15));
    // Held until the primary's call failed, the secondary would wait its 20 s timeout; the
    // hold ends after 0.5 s at most (the rest is reading and parsing 16 MiB in debug builds).
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "the secondary got the call only after {took:?}");
}

#[test]
fn regression_an_el_answering_502_was_counted_as_no_answer() {
    let body = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"upstream busy"}}"#.to_vec();
    let reply = body.clone();
    let primary = MockEl::with(move |_| Reply::http(502, reply.clone()));
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    let response = proxy.bn().post(&new_payload(1, 101));
    assert_eq!((response.status, response.body), (502, body), "the primary's own 502 is relayed");
    log_barrier(&proxy, 2);
    assert_eq!(count_logs(&proxy, "no execution client answered"), 0);
    assert_eq!(metric(&proxy, r#"sync_proxy_requests_total{method="newPayload",outcome="failed"}"#), 0);
}
