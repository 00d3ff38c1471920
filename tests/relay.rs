//! Answers relayed as they arrive (issue 15): a large 2xx answer framed by its
//! `Content-Length`, from the execution client whose answer the beacon node gets whatever it
//! says, goes on to the beacon node while it is still arriving, under the proxy's own head.
//! Everything else (errors, chunked, small answers) is read whole first, as before.

use serde_json::json;

use crate::routing::{metric, start_proxy};
use crate::util::{rpc_body, wait_until, Framing, Gate, HttpResponse, MockEl, ReadError, Reply, TIMEOUT};

/// `core::relay::RELAY_MIN`: the smallest body relayed as it arrives.
const RELAY_MIN: usize = 64 * 1024;
const CUT: &str = "sync_proxy_relayed_answers_cut_total";
const RELAYING: &str = "relaying its answer";

/// A JSON-RPC answer to id 1 whose body is exactly `len` bytes, not all alike (so that bytes
/// out of order would show).
pub(crate) fn answer_of_len(len: usize) -> Vec<u8> {
    let frame = r#"{"jsonrpc":"2.0","id":1,"result":""}"#.len();
    let result: String = (0..len - frame).map(|i| char::from(b'a' + (i % 23) as u8)).collect();
    format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{result}"}}"#).into_bytes()
}

pub(crate) fn get_payload() -> Vec<u8> {
    rpc_body(1, "engine_getPayloadV5", json!(["0x0000000000000001"]))
}

/// A mock EL that answers `body`, sending its first `at` bytes and then waiting for the gate.
pub(crate) fn gated_el(body: &[u8], at: usize) -> (MockEl, Gate) {
    let (gate, reply) = (Gate::default(), body.to_vec());
    let g = gate.clone();
    (MockEl::with(move |_| Reply::json(reply.clone()).gated(at, &g)), gate)
}

/// Waits until the beacon node has received at least `n` bytes of an answer still incomplete.
#[track_caller]
pub(crate) fn wait_partial(bn: &mut crate::util::Bn, n: usize) -> usize {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match bn.try_read_response(std::time::Duration::from_millis(20)) {
            Err(ReadError::Timeout { buffered }) if buffered >= n => return buffered,
            Err(ReadError::Timeout { .. }) => {}
            other => panic!("expected a partial answer, got {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "the beacon node never got {n} bytes");
    }
}

#[test]
fn a_large_answer_reaches_the_bn_before_the_el_has_sent_all_of_it() {
    let body = answer_of_len(4 << 20);
    let half = body.len() / 2;
    let (primary, gate) = gated_el(&body, half);
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &get_payload());
    // Stored and forwarded, not one byte would arrive before the mock sent the rest.
    let got = wait_partial(&mut bn, half / 2);
    assert!(got < body.len(), "the answer arrived whole before the mock finished it");
    gate.open();
    let response = bn.read_response();
    assert_eq!(response.status, 200);
    assert!(response.body == body, "the relayed body differs from the EL's");
    assert_eq!(metric(&proxy, CUT), 0);
}

#[test]
fn a_primary_that_breaks_off_mid_relay_closes_the_bn_connection_and_is_counted() {
    let body = answer_of_len(1 << 20);
    let (primary, gate) = gated_el(&body, 300 * 1024);
    let secondary = MockEl::start();
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &get_payload());
    wait_partial(&mut bn, 200 * 1024);
    gate.break_off();
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { partial, .. }) => {
            assert!(partial.len() < body.len(), "the answer must be cut short, got {} bytes", partial.len());
            let head = String::from_utf8_lossy(&partial[..200]).to_string();
            assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        }
        other => panic!("expected the connection to close mid-answer, got {other:?}"),
    }
    proxy.wait_log("broke off while being relayed", TIMEOUT);
    assert_eq!(metric(&proxy, CUT), 1);
    // The proxy serves on: the next call is answered whole.
    primary.set_behaviour(|_| Reply::json(answer_of_len(RELAY_MIN * 2)));
    let response = proxy.bn().post(&get_payload());
    assert_eq!((response.status, response.body), (200, answer_of_len(RELAY_MIN * 2)));
}

#[test]
fn a_primary_that_fails_before_its_head_falls_back_to_the_next_el_which_is_relayed() {
    let body = answer_of_len(1 << 20);
    let primary = MockEl::with(|_| Reply::Close);
    let reply = body.clone();
    let secondary = MockEl::with(move |_| Reply::json(reply.clone()));
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    let call = rpc_body(1, "eth_getBlockByNumber", json!(["latest", true]));
    let response = proxy.bn().post(&call);
    assert_eq!(response.status, 200);
    assert!(response.body == body, "the secondary's answer, whole");
    assert_eq!(primary.wait_requests(1, TIMEOUT).len(), 1, "the primary was asked first");
    proxy.wait_log(&format!("{}: {RELAYING}", secondary.url()), TIMEOUT);
    assert_eq!(metric(&proxy, CUT), 0);
}

/// The answer to a getPayload answered with `reply`, through the proxy, and the proxy's log up
/// to a later call's (so that anything the first call logged is in it).
fn through_proxy(reply: Reply) -> (HttpResponse, Vec<String>) {
    let el = MockEl::with(move |request| match request.rpc_method.as_deref() {
        Some("eth_chainId") => Reply::json(r#"{"jsonrpc":"2.0","id":2,"result":"0x1"}"#),
        _ => reply.clone(),
    });
    let proxy = start_proxy(&[&el], &["--loglevel", "debug"]);
    let response = proxy.bn().post(&get_payload());
    assert_eq!(proxy.bn().post(&rpc_body(2, "eth_chainId", json!([]))).status, 200);
    proxy.wait_log("eth_chainId id 2", TIMEOUT);
    (response, proxy.logs())
}

#[test]
fn large_error_chunked_and_small_answers_are_read_whole_as_before() {
    let large = answer_of_len(RELAY_MIN * 4);
    let small = answer_of_len(RELAY_MIN - 1);
    for (what, reply, status, body) in [
        ("a large 500", Reply::http(500, large.clone()), 500, &large),
        ("a large chunked answer", Reply::json(large.clone()).framed(Framing::Chunked), 200, &large),
        ("an answer just below the threshold", Reply::json(small.clone()), 200, &small),
    ] {
        let (response, logs) = through_proxy(reply);
        assert_eq!(response.status, status, "{what}");
        assert!(response.body == *body, "{what}: the EL's body, whole");
        assert_eq!(response.header("content-length"), Some(body.len().to_string().as_str()), "{what}");
        assert!(!logs.iter().any(|l| l.contains(RELAYING)), "{what} was relayed as it arrived");
    }
}

#[test]
fn a_relayed_answer_has_the_head_a_stored_one_has() {
    let (stored, logs) = through_proxy(Reply::json(answer_of_len(RELAY_MIN - 1)));
    assert!(!logs.iter().any(|l| l.contains(RELAYING)));
    let (relayed, logs) = through_proxy(Reply::json(answer_of_len(RELAY_MIN)));
    assert!(logs.iter().any(|l| l.contains(RELAYING)), "an answer of RELAY_MIN bytes is relayed");
    assert!(relayed.body == answer_of_len(RELAY_MIN));
    let without_length = |r: &HttpResponse| -> Vec<(String, String)> {
        r.headers.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("content-length")).cloned().collect()
    };
    assert_eq!(without_length(&relayed), without_length(&stored), "the same head but for its length");
    assert_eq!(relayed.header("content-length"), Some(RELAY_MIN.to_string().as_str()));
    assert_eq!(relayed.headers.len(), stored.headers.len());
}

#[test]
fn a_relay_past_the_calls_timeout_is_cut_by_the_el_connections_deadline() {
    let (primary, gate) = gated_el(&answer_of_len(1 << 20), 200 * 1024);
    let proxy = start_proxy(&[&primary], &["--request-timeout", "1000"]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &get_payload());
    wait_partial(&mut bn, 100 * 1024);
    // The mock never sends the rest: the call's timeout ends the relay, and the BN's connection.
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { partial, .. }) => assert!(partial.len() < 1 << 20),
        other => panic!("expected the connection to close mid-answer, got {other:?}"),
    }
    assert_eq!(metric(&proxy, CUT), 1);
    gate.break_off();
}

#[test]
fn a_bn_that_leaves_mid_relay_leaves_the_el_connection_in_step_for_the_next_call() {
    let (primary, gate) = gated_el(&answer_of_len(1 << 20), 300 * 1024);
    let proxy = start_proxy(&[&primary], &["--loglevel", "debug"]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &get_payload());
    wait_partial(&mut bn, 200 * 1024);
    drop(bn);
    gate.open();
    // The rest is read and dropped on the same connection, which then carries the next call.
    let answered = format!("sync_proxy_el_answer_seconds_count{{el=\"{}\"}}", primary.url());
    wait_until("the primary's relayed answer was read to its end", TIMEOUT, || {
        metric(&proxy, &answered) == 1
    });
    primary.set_behaviour(|_| Reply::json(answer_of_len(RELAY_MIN * 2)));
    let response = proxy.bn().post(&get_payload());
    assert_eq!((response.status, response.body), (200, answer_of_len(RELAY_MIN * 2)));
    assert_eq!(primary.connections(), 1, "the EL connection kept its framing");
    assert_eq!(metric(&proxy, CUT), 0, "nothing broke off on the EL's side");
}
