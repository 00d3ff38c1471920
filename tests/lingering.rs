//! Error answers reach the client (issue 18): an answer the proxy writes before it has read the
//! whole request (413 from `Content-Length`, 431 for an over-long head, 400 on bad framing, 401
//! at the head with `--jwt-secret`) is followed by a lingering close, so bytes the client is still
//! sending never turn the close into a reset that destroys the answer.
//!
//! - Oversized bodies, over-long heads and token-less bodies whose bytes are still being written
//!   when the proxy answers get the exact status and JSON-RPC error, every time (each case runs
//!   many times on fresh connections), then a clean close.
//! - With `--jwt-secret`, a POST without a valid token is answered at its head: before its body
//!   has been sent, with no `100 Continue`; a small body is discarded and the connection kept.
//! - `Expect: 100-continue` with an oversized or unauthorized request gets the error and no 100.
//! - Lingering is bounded: a client that trickles bytes for ever, or floods them, is closed
//!   within the time and byte bounds, and a lingering connection counts against
//!   `--max-connections`.

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sync_proxy::jwt::{self, Secret};

use crate::util::{rpc_body, Bn, HttpResponse, MockEl, Proxy, ReadError, TempFile, TIMEOUT};

/// How many fresh connections each racing case is tried on.
const TRIES: usize = 30;
/// `--max-body-bytes` for the oversized cases.
const MAX_BODY: usize = 1 << 20;
/// The declared (and sent) body of an oversized request: twice the limit.
const OVERSIZED: usize = 2 << 20;
/// The proxy's lingering bounds (`LINGER_TIME`, `LINGER_BYTES` in `src/downstream.rs`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
/// Scheduling slack on a busy two-core machine, added to bounds the proxy must meet.
const SLACK: Duration = Duration::from_millis(1500);
const SECRET_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

// --- helpers -------------------------------------------------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn valid_bearer() -> String {
    let secret = Secret::from_hex(SECRET_HEX).expect("valid secret");
    format!("Bearer {}", jwt::mint(&secret, unix_now(), None))
}

/// A JSON-RPC body of exactly `len` bytes.
fn body_of_len(id: u64, len: usize) -> Vec<u8> {
    let bare = rpc_body(id, "eth_call", json!([""]));
    let body = rpc_body(id, "eth_call", json!(["x".repeat(len - bare.len())]));
    assert_eq!(body.len(), len);
    body
}

/// A POST head announcing `len` body bytes, with extra header lines (each ending in CRLF).
fn post_head(len: usize, extra: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n")
        .into_bytes()
}

/// Writes `first`, then (once `go` says so, or at once without it) `rest`, on a clone of the
/// BN's socket; returns how many bytes went out before the proxy closed (`Err`) or all of them.
fn writer(
    bn: &Bn,
    first: Vec<u8>,
    go: Option<mpsc::Receiver<()>>,
    rest: Vec<u8>,
) -> thread::JoinHandle<Result<usize, usize>> {
    let mut stream = bn.stream().try_clone().expect("clone the BN stream");
    thread::spawn(move || {
        let mut sent = 0;
        for (i, part) in [first, rest].iter().enumerate() {
            if i == 1 {
                if let Some(go) = go.as_ref() {
                    // The test says go once it has the answer, or gives up (drop).
                    let _ = go.recv();
                }
            }
            for piece in part.chunks(64 * 1024) {
                match stream.write_all(piece) {
                    Ok(()) => sent += piece.len(),
                    Err(_) => return Err(sent),
                }
            }
        }
        Ok(sent)
    })
}

/// The answer is `status` with a JSON-RPC error `code` (id null), and the connection ends with
/// a clean close after it, not a reset.
#[track_caller]
fn assert_error_answer(
    response: Result<HttpResponse, ReadError>,
    status: u16,
    code: i64,
    what: &str,
) -> Value {
    let response = match response {
        Ok(response) => response,
        Err(e) => panic!("{what}: expected {status}, got {e:?}"),
    };
    assert_eq!(response.status, status, "{what}: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"), "{what}");
    let body = response.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert_eq!((body["error"]["code"].as_i64(), &body["id"]), (Some(code), &Value::Null), "{what}: {body}");
    body
}

/// After the answer the proxy has shut its side: the next read is an end of stream, not a reset.
#[track_caller]
fn assert_clean_close(bn: &mut Bn, what: &str) {
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { partial, reset: false }) if partial.is_empty() => {}
        other => panic!("{what}: expected a clean close after the answer, got {other:?}"),
    }
}

/// A normal request on a fresh connection is still answered.
#[track_caller]
fn assert_serves(proxy: &Proxy, headers: &[(&str, &str)]) {
    let response = proxy.bn().post_with(headers, &rpc_body(4242, "eth_blockNumber", json!([])));
    assert_eq!(response.status, 200, "{}", response.text());
}

// --- 413 and 431 while the client is still sending -------------------------------------------------

#[test]
fn regression_an_oversized_body_gets_its_413_not_a_reset() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--max-body-bytes", &MAX_BODY.to_string()]);
    let (head, body) = (post_head(OVERSIZED, ""), body_of_len(1, OVERSIZED));
    let total = head.len() + body.len();
    for i in 0..TRIES {
        let mut bn = proxy.bn();
        let sending = writer(&bn, head.clone(), None, body.clone());
        let what = format!("try {i}");
        let body = assert_error_answer(bn.try_read_response(TIMEOUT), 413, -32600, &what);
        assert_eq!(body["error"]["message"], "body too large", "{what}");
        assert_clean_close(&mut bn, &what);
        // The lingering close reads (and drops) more than the body, so all of it went out.
        assert_eq!(sending.join().expect("writer thread"), Ok(total), "{what}");
    }
    assert_serves(&proxy, &[]);
    // After the probe: a body forwarded by mistake would have reached the EL before it.
    assert!(el.received().iter().all(|r| r.rpc_id == Some(json!(4242))), "an oversized body reached the EL");
}

#[test]
fn regression_an_over_long_head_gets_its_431_not_a_reset() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    // 256 KiB of header lines, four times the 64 KiB head limit, then a body.
    let line = format!("X-Pad: {}\r\n", "a".repeat(1014));
    let lines = line.repeat(256);
    for i in 0..TRIES {
        let mut bn = proxy.bn();
        let rest = [lines.as_bytes(), b"Content-Length: 2\r\n\r\n{}"].concat();
        let sending = writer(&bn, b"POST / HTTP/1.1\r\nHost: proxy\r\n".to_vec(), None, rest);
        let what = format!("try {i}");
        assert_error_answer(bn.try_read_response(TIMEOUT), 431, -32600, &what);
        assert_clean_close(&mut bn, &what);
        assert!(sending.join().expect("writer thread").is_ok(), "{what}: the proxy reset the sender");
    }
    assert_serves(&proxy, &[]);
    // After the probe: a body forwarded by mistake would have reached the EL before it.
    assert!(el.received().iter().all(|r| r.rpc_id == Some(json!(4242))), "a rejected head reached the EL");
}

#[test]
fn regression_bad_framing_with_a_body_in_flight_gets_its_400_not_a_reset() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    // A chunk size that is not hex, followed by a megabyte the client is still sending.
    let head = b"POST / HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
    for i in 0..TRIES {
        let mut bn = proxy.bn();
        let sending = writer(&bn, head.clone(), None, vec![b'x'; 1 << 20]);
        let what = format!("try {i}");
        assert_error_answer(bn.try_read_response(TIMEOUT), 400, -32600, &what);
        assert_clean_close(&mut bn, &what);
        assert!(sending.join().expect("writer thread").is_ok(), "{what}: the proxy reset the sender");
    }
    assert_serves(&proxy, &[]);
    // After the probe: a body forwarded by mistake would have reached the EL before it.
    assert!(el.received().iter().all(|r| r.rpc_id == Some(json!(4242))));
}

// --- 401 at the head --------------------------------------------------------------------------------

#[test]
fn regression_an_unauthorized_body_is_answered_401_at_its_head() {
    let el = MockEl::start();
    let secret = TempFile::new(SECRET_HEX);
    let proxy = Proxy::start(&["--builders", &el.url(), "--jwt-secret", secret.arg()]);
    let cases = [("no token", ""), ("a garbage token", "Authorization: Bearer not-a-token\r\n")];
    let body = body_of_len(1, OVERSIZED);
    for i in 0..TRIES {
        let (case, header) = cases[i % cases.len()];
        let what = format!("try {i}, {case}");
        let mut bn = proxy.bn();
        // The head and a quarter of the body go out; the rest only once the answer is in, so the
        // answer cannot depend on the body having been read.
        let (go, wait) = mpsc::channel();
        let first = [post_head(OVERSIZED, header), body[..OVERSIZED / 4].to_vec()].concat();
        let sending = writer(&bn, first, Some(wait), body[OVERSIZED / 4..].to_vec());
        let response = bn.try_read_response(TIMEOUT);
        let _ = go.send(());
        let answer = assert_error_answer(response, 401, -32000, &what);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("unauthorized: "), "{what}: {answer}");
        assert_clean_close(&mut bn, &what);
        let total = OVERSIZED + post_head(OVERSIZED, header).len();
        assert_eq!(sending.join().expect("writer thread"), Ok(total), "{what}");
    }
    assert_serves(&proxy, &[("Authorization", &valid_bearer())]);
    // After the probe: a body forwarded by mistake would have reached the EL before it.
    assert!(
        el.received().iter().all(|r| r.rpc_id == Some(json!(4242))),
        "an unauthorized body reached the EL"
    );
}

#[test]
fn a_small_unauthorized_body_is_discarded_and_the_connection_kept() {
    let el = MockEl::start();
    let secret = TempFile::new(SECRET_HEX);
    let proxy = Proxy::start(&["--builders", &el.url(), "--jwt-secret", secret.arg()]);
    let mut bn = proxy.bn();
    // The head alone: the 401 comes before any body byte was sent.
    let body = body_of_len(7, 4096);
    bn.send_raw(&post_head(body.len(), ""));
    let answer = assert_error_answer(bn.try_read_response(TIMEOUT), 401, -32000, "head only");
    assert_eq!(answer["error"]["message"], "unauthorized: missing bearer token");
    // The body still arrives and is skipped; the next request on the connection is served.
    bn.send_raw(&body);
    let response =
        bn.post_with(&[("Authorization", &valid_bearer())], &rpc_body(8, "eth_chainId", json!([])));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["id"], 8);
    let received = el.wait_requests(1, TIMEOUT);
    assert_eq!(received.len(), 1, "only the authorized call reaches the EL: {received:?}");
    assert_eq!(received[0].rpc_id, Some(json!(8)));
}

// --- Expect: 100-continue -----------------------------------------------------------------------

#[test]
fn expect_100_continue_gets_the_error_and_no_100() {
    let el = MockEl::start();
    let secret = TempFile::new(SECRET_HEX);
    let max = MAX_BODY.to_string();
    let proxy =
        Proxy::start(&["--builders", &el.url(), "--jwt-secret", secret.arg(), "--max-body-bytes", &max]);
    let bearer = valid_bearer();
    let authorized = format!("Authorization: {bearer}\r\nExpect: 100-continue\r\n");
    let cases = [
        ("oversized", post_head(OVERSIZED, &authorized), 413, -32600),
        ("unauthorized", post_head(1000, "Expect: 100-continue\r\n"), 401, -32000),
    ];
    for i in 0..TRIES {
        let (case, head, status, code) = &cases[i % cases.len()];
        let what = format!("try {i}, {case}");
        let mut bn = proxy.bn();
        bn.send_raw(head);
        // The first thing back is the final answer, not an interim 100.
        let first = bn.read_response_allow_interim();
        assert_error_answer(Ok(first), *status, *code, &what);
        assert_clean_close(&mut bn, &what);
    }
    // An authorized request within the limit still gets its 100, then the answer.
    let mut bn = proxy.bn();
    let body = body_of_len(9, 1000);
    bn.send_raw(&post_head(body.len(), &authorized));
    assert_eq!(bn.read_response_allow_interim().status, 100);
    bn.send_raw(&body);
    let response = bn.read_response();
    assert_eq!((response.status, &response.json()["id"]), (200, &json!(9)), "{}", response.text());
    assert_eq!(el.wait_requests(1, TIMEOUT).len(), 1);
}

// --- bounds -------------------------------------------------------------------------------------

#[test]
fn a_slow_sender_is_closed_within_the_linger_time() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--max-body-bytes", &MAX_BODY.to_string()]);
    let mut bn = proxy.bn();
    bn.send_raw(&post_head(OVERSIZED, ""));
    assert_error_answer(bn.try_read_response(TIMEOUT), 413, -32600, "slow sender");
    let answered = Instant::now();
    // A byte every 20 ms, for ever: only the proxy's close (a reset once it stopped reading)
    // ends the writes.
    let mut stream: TcpStream = bn.stream().try_clone().expect("clone the BN stream");
    let give_up = LINGER_TIME + SLACK + TIMEOUT;
    let closed = thread::spawn(move || {
        while answered.elapsed() < give_up {
            if stream.write_all(b"x").is_err() {
                return Some(answered.elapsed());
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    });
    let closed = closed.join().expect("writer thread");
    let Some(after) = closed else { panic!("a trickling sender was kept for {give_up:?}") };
    assert!(after <= LINGER_TIME + SLACK, "closed {after:?} after the answer; the bound is {LINGER_TIME:?}");
    // It lingered (read what came) rather than closing at once; the answer reached us some time
    // after the lingering began, hence the margin.
    assert!(after >= LINGER_TIME / 4, "closed {after:?} after the answer: it did not linger");
    assert_serves(&proxy, &[]);
}

#[test]
fn a_flooding_sender_is_closed_after_the_linger_bytes() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--max-body-bytes", &MAX_BODY.to_string()]);
    let mut bn = proxy.bn();
    // Declares 64 MiB and sends it as fast as it can: far more than the proxy discards.
    let declared = 64 << 20;
    let sending = writer(&bn, post_head(declared, ""), None, vec![b'x'; declared]);
    assert_error_answer(bn.try_read_response(TIMEOUT), 413, -32600, "flooding sender");
    let sent = sending.join().expect("writer thread");
    // What got out is the discarded budget plus what the two sockets' buffers held.
    let Err(sent) = sent else { panic!("the proxy took all {declared} bytes") };
    assert!(sent >= LINGER_BYTES, "closed after {sent} bytes, before the {LINGER_BYTES}-byte budget");
    assert!(sent < declared / 2, "{sent} bytes went out before the close");
    assert_serves(&proxy, &[]);
}

#[test]
fn lingering_connections_count_against_max_connections() {
    let el = MockEl::start();
    let max_body = MAX_BODY.to_string();
    let proxy =
        Proxy::start(&["--builders", &el.url(), "--max-body-bytes", &max_body, "--max-connections", "1"]);
    // The one connection allowed gets a 413 and lingers; its client keeps it open.
    let mut lingering = proxy.bn();
    lingering.send_raw(&post_head(OVERSIZED, ""));
    assert_error_answer(lingering.try_read_response(TIMEOUT), 413, -32600, "first connection");
    let answered = Instant::now();
    // The next connection waits in the kernel's queue until the lingering one is closed.
    let mut next = proxy.bn();
    let response = next.post(&rpc_body(1, "eth_blockNumber", json!([])));
    let waited = answered.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        waited <= LINGER_TIME + SLACK,
        "served {waited:?} after the 413; the linger bound is {LINGER_TIME:?}"
    );
    assert!(
        waited >= LINGER_TIME / 4,
        "served {waited:?} after the 413: the lingering connection was not counted"
    );
    drop(lingering);
}
