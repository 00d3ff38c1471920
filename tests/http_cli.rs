//! The proxy's HTTP front and its command line (issue 2, "Listening and HTTP" and "Command line
//! and logs"), driven over 127.0.0.1 against recording mock execution clients:
//!
//! - Listens on `--addr`; `PROXY_LISTEN_ADDR` is used when the flag is absent, and the flag wins.
//! - HTTP/1.1 and HTTP/1.0 (1.0 is answered with a 1.0 status line and closed unless it asked for
//!   keep-alive); keep-alive; pipelined requests answered in order; Content-Length and chunked
//!   request bodies (the EL gets the de-chunked body with a Content-Length); `Expect:
//!   100-continue`.
//! - `GET` on any path → 200 (health probe); `HEAD` → 200.
//! - Limits: oversized head → 431; body over `--max-body-bytes` → 413; malformed HTTP → 400 and
//!   close; malformed JSON → 400 with JSON-RPC error -32700 and id null; other methods → 405;
//!   nothing of these is forwarded. Idle connections close after `--idle-timeout`, trickling ones
//!   after `--read-timeout`; `--max-connections` bounds open connections.
//! - No input stops the process serving others: after each bad input a fresh connection is served.
//! - Command line: Go's flags as `-flag` and `--flag`, values after a space or `=`; `LOG_LEVEL`,
//!   `LOG_JSON`; `--help`, `--version`; no or bad builders, bad address, unknown flag → one line on
//!   stderr and exit code 2.
//! - Logs: `-json` makes every line one JSON object with `level` and `msg`; the start-up summary
//!   names the ELs and the auth mode; per-request lines only at debug.
//! - SIGTERM: stop accepting, deliver what is queued, exit 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{
    default_reply, new_payload, post_request, rpc_body, run_proxy_expect_exit, Bn, HttpResponse, Launch,
    MockEl, Proxy, ReadError, Reply, TempFile, SYNC_PROXY, TIMEOUT,
};

/// Long enough that something that should happen at once would have happened.
const SHORT: Duration = Duration::from_millis(200);

/// A 64-hex-digit JWT secret for the start-up summary test.
const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn call(id: u64) -> Vec<u8> {
    rpc_body(id, "eth_blockNumber", json!([]))
}

/// The proxy in front of `els` (the first is the primary), with extra flags.
#[track_caller]
fn start(els: &[&MockEl], extra: &[&str]) -> Proxy {
    let builders = els.iter().map(|el| el.url()).collect::<Vec<_>>().join(",");
    Launch::proxy().args(&["--builders", &builders]).args(extra).start()
}

/// A normal request on a fresh connection is answered with the primary's answer.
#[track_caller]
fn assert_still_serving(proxy: &Proxy) {
    let response = proxy.bn().post(&call(4242));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["id"], 4242, "{}", response.text());
}

/// The proxy is still serving, and the EL has received only the probes that proved it (a
/// request forwarded by mistake would have reached it before the last probe).
#[track_caller]
fn assert_nothing_forwarded(proxy: &Proxy, el: &MockEl) {
    assert_still_serving(proxy);
    let others: Vec<_> = el.received().into_iter().filter(|r| r.rpc_id != Some(json!(4242))).collect();
    assert!(others.is_empty(), "the EL got more than the probe requests: {others:?}");
}

/// A JSON-RPC body of exactly `len` bytes.
fn body_of_len(id: u64, len: usize) -> Vec<u8> {
    let bare = rpc_body(id, "eth_call", json!([""]));
    let body = rpc_body(id, "eth_call", json!(["x".repeat(len - bare.len())]));
    assert_eq!(body.len(), len);
    body
}

/// Reads one raw answer (head as text, body by Content-Length) from a plain socket.
#[track_caller]
fn read_raw_answer(stream: &mut TcpStream) -> (String, Vec<u8>) {
    stream.set_read_timeout(Some(TIMEOUT)).expect("set read timeout");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!("no whole head (got {:?}): {other:?}", String::from_utf8_lossy(&buf)),
        }
    }
    let head = String::from_utf8(buf).expect("head is text");
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .map_or(0, |v| v.parse::<usize>().expect("numeric Content-Length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the body");
    (head, body)
}

/// Whether the peer closes `stream` within `timeout` (EOF or reset on read).
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("set read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

// --- listening ---------------------------------------------------------------------------------

#[test]
fn proxy_listen_addr_is_used_without_the_addr_flag() {
    let el = MockEl::start();
    let proxy = Launch::bin(SYNC_PROXY)
        .args(&["-builders", &el.url()])
        .env("PROXY_LISTEN_ADDR", "127.0.0.1:0")
        .start();
    assert_eq!(proxy.addr().ip().to_string(), "127.0.0.1");
    assert_ne!(proxy.addr().port(), 0);
    assert_still_serving(&proxy);
}

#[test]
fn the_addr_flag_overrides_proxy_listen_addr() {
    let el = MockEl::start();
    // The environment's value could not even be parsed; the flag wins, so it is never looked at.
    let proxy = Launch::proxy().args(&["--builders", &el.url()]).env("PROXY_LISTEN_ADDR", "nonsense").start();
    assert_still_serving(&proxy);
}

#[test]
fn a_bad_proxy_listen_addr_names_the_variable_and_exits_2() {
    let el = MockEl::start();
    let exited = Launch::bin(SYNC_PROXY)
        .args(&["--builders", &el.url()])
        .env("PROXY_LISTEN_ADDR", "nonsense")
        .run_to_exit(TIMEOUT);
    assert_eq!(exited.status.code(), Some(2), "{}", exited.stderr);
    assert_eq!(exited.stderr.lines().count(), 1, "{}", exited.stderr);
    assert!(exited.stderr.contains("PROXY_LISTEN_ADDR"), "{}", exited.stderr);
}

// --- HTTP/1.1 and HTTP/1.0 ---------------------------------------------------------------------

#[test]
fn http10_is_answered_with_an_http10_status_line_and_closed() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let body = call(7);
    let mut stream = TcpStream::connect(proxy.addr()).expect("connect");
    let request = format!(
        "POST / HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(&[request.as_bytes(), &body].concat()).expect("send");
    let (head, answer) = read_raw_answer(&mut stream);
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    assert_eq!(answer, br#"{"jsonrpc":"2.0","id":7,"result":"0x1"}"#);
    assert!(closed_within(&mut stream, TIMEOUT), "an HTTP/1.0 connection stays open");
}

#[test]
fn http10_keep_alive_keeps_the_connection_open() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let mut stream = TcpStream::connect(proxy.addr()).expect("connect");
    for id in [1, 2, 3] {
        let body = call(id);
        let request = format!(
            "POST / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(&[request.as_bytes(), &body].concat()).expect("send");
        let (head, answer) = read_raw_answer(&mut stream);
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        let answer: Value = serde_json::from_slice(&answer).expect("JSON answer");
        assert_eq!(answer["id"], id);
    }
    // The positive signal that it was kept: a fourth request is answered on it.
    let body = call(4);
    let request = format!("POST / HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    stream
        .write_all(&[request.as_bytes(), &body].concat())
        .expect("closed although keep-alive was asked for");
    let (head, answer) = read_raw_answer(&mut stream);
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "closed although keep-alive was asked for: {head}");
    let answer: Value = serde_json::from_slice(&answer).expect("JSON answer");
    assert_eq!(answer["id"], 4);
    assert_eq!(el.received().len(), 4);
}

#[test]
fn http11_keep_alive_carries_several_requests_on_one_connection() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    for id in 1..=5 {
        let response = bn.post(&new_payload(id, 100 + id));
        assert_eq!(response.status, 200);
        assert!(response.header("connection").is_none(), "{:?}", response.headers);
        assert_eq!(response.json()["id"], id);
        assert_eq!(response.json()["result"]["status"], "VALID");
    }
    // The positive signal that it was kept: a sixth request is answered on it.
    assert_eq!(bn.post(&new_payload(6, 106)).json()["id"], 6, "closed after five requests");
    assert_eq!(el.received().len(), 6);
}

#[test]
fn connection_close_is_honoured_after_the_answer() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    let response = bn.post_with(&[("Connection", "close")], &call(3));
    assert_eq!(response.json()["id"], 3);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(bn.is_closed_within(TIMEOUT));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // The first request's answer comes last from the EL; the proxy must hold the others back.
    let el = MockEl::with(|r| {
        let reply = default_reply(r);
        if r.rpc_id == Some(json!(1)) {
            reply.delayed(Duration::from_millis(300))
        } else {
            reply
        }
    });
    let proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    let host = proxy.addr().to_string();
    let all: Vec<u8> = (1..=5).flat_map(|id| post_request(&host, &[], &call(id))).collect();
    bn.send_raw(&all);
    let ids: Vec<Value> = (0..5).map(|_| bn.read_response().json()["id"].clone()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5].map(|i| json!(i)));
    let mut received: Vec<u64> =
        el.received().iter().map(|r| r.rpc_id.as_ref().and_then(Value::as_u64).unwrap_or(0)).collect();
    received.sort_unstable();
    assert_eq!(received, [1, 2, 3, 4, 5]);
}

#[test]
fn content_length_body_reaches_the_el_byte_for_byte() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let body = new_payload(1, 100);
    assert_eq!(proxy.bn().post(&body).json()["id"], 1);
    let received = el.wait_requests(1, TIMEOUT);
    assert_eq!(received[0].body, body);
    assert_eq!(received[0].header("content-length"), Some(body.len().to_string().as_str()));
}

#[test]
fn chunked_body_reaches_the_el_de_chunked_with_a_content_length() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let body = new_payload(1, 100);
    assert!(body.len() > 1024, "the body must span several 1024-byte chunks");
    let response = proxy.bn().post_with(&[("Transfer-Encoding", "chunked")], &body);
    assert_eq!(response.json()["id"], 1);
    let received = el.wait_requests(1, TIMEOUT);
    assert_eq!(received[0].body, body);
    assert_eq!(received[0].header("content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(received[0].header("transfer-encoding"), None);
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    let body = call(9);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    bn.send_raw(head.as_bytes());
    let mut interim = [0u8; 25];
    let mut stream = bn.stream();
    stream.set_read_timeout(Some(TIMEOUT)).expect("set read timeout");
    stream.read_exact(&mut interim).expect("read the interim answer");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(el.received().is_empty());
    bn.send_raw(&body);
    let response = bn.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["id"], 9);
    let received = el.wait_requests(1, TIMEOUT);
    assert_eq!(received[0].body, body);
    assert_eq!(received[0].header("expect"), None, "Expect was answered here, not forwarded");
}

// --- GET and HEAD ------------------------------------------------------------------------------

#[test]
fn get_on_any_path_is_a_200_health_probe() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    for path in ["/", "/health", "/eth/v1/node/health?x=1", "/anything/at/all"] {
        bn.send_raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let response = bn.read_response();
        assert_eq!(response.status, 200, "GET {path}");
        assert!(response.body.is_empty(), "GET {path}: {}", response.text());
    }
    assert_nothing_forwarded(&proxy, &el);
}

#[test]
fn head_is_a_200_health_probe() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    bn.send_raw(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = bn.read_response();
    assert_eq!(response.status, 200);
    assert!(response.body.is_empty());
    // The connection stays usable: nothing was written after the head.
    assert_eq!(bn.post(&call(2)).json()["id"], 2);
}

// --- limits ------------------------------------------------------------------------------------

#[track_caller]
fn assert_error_and_close(bn: &mut Bn, status: u16) -> HttpResponse {
    let response = match bn.try_read_response(TIMEOUT) {
        Ok(response) => response,
        Err(e) => panic!("expected {status}, got {e:?}"),
    };
    assert_eq!(response.status, status, "{}", response.text());
    assert!(bn.is_closed_within(TIMEOUT), "the connection stays open after {status}");
    response
}

#[test]
fn an_oversized_head_gets_431_and_nothing_is_forwarded() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);

    // One header line that takes the head past 64 KiB; the request ends just past the limit, so
    // the proxy has read every byte when it answers.
    let mut bn = proxy.bn();
    let start = "POST / HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    let head = format!("{start}{}", "a".repeat(64 * 1024 + 1 - start.len()));
    bn.send_raw(head.as_bytes());
    assert_error_and_close(&mut bn, 431);
    assert_still_serving(&proxy);

    // A head within 64 KiB but with more header lines than the proxy takes.
    let mut bn = proxy.bn();
    let lines: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    bn.send_raw(format!("POST / HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: 0\r\n\r\n").as_bytes());
    assert_error_and_close(&mut bn, 431);

    assert_nothing_forwarded(&proxy, &el);
}

#[test]
fn a_body_over_max_body_bytes_gets_413_and_nothing_is_forwarded() {
    let el = MockEl::start();
    let proxy = start(&[&el], &["--max-body-bytes", "1000"]);

    let mut bn = proxy.bn();
    bn.send_post(&[], &body_of_len(1, 1001));
    assert_error_and_close(&mut bn, 413);
    assert_still_serving(&proxy);

    let mut bn = proxy.bn();
    bn.send_post(&[("Transfer-Encoding", "chunked")], &body_of_len(2, 1001));
    assert_error_and_close(&mut bn, 413);
    assert_nothing_forwarded(&proxy, &el);

    // The limit itself is allowed, in both framings.
    el.clear();
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&body_of_len(3, 1000)).json()["id"], 3);
    assert_eq!(bn.post_with(&[("Transfer-Encoding", "chunked")], &body_of_len(4, 1000)).json()["id"], 4);
    assert_eq!(el.received().len(), 2);
}

#[test]
fn malformed_http_gets_400_and_the_connection_is_closed() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let cases: [&[u8]; 5] = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost x\r\n\r\n",
    ];
    for case in cases {
        let mut bn = proxy.bn();
        bn.send_raw(case);
        let response = assert_error_and_close(&mut bn, 400);
        assert_eq!(response.header("connection"), Some("close"), "{:?}", String::from_utf8_lossy(case));
        assert_still_serving(&proxy);
    }
    el.clear();
    assert_nothing_forwarded(&proxy, &el);
}

#[test]
fn malformed_json_gets_400_with_a_parse_error_and_nothing_is_forwarded() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let cases: [&[u8]; 4] = [
        br#"{"jsonrpc":"2.0","id":1,"method":"engine_newPayloadV3","params":["#,
        b"not json at all",
        br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"} trailing"#,
        b"",
    ];
    let mut bn = proxy.bn();
    for case in cases {
        let response = bn.post(case);
        let shown = String::from_utf8_lossy(case);
        assert_eq!(response.status, 400, "{shown}: {}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"));
        let answer = response.json();
        assert_eq!(answer["jsonrpc"], "2.0", "{shown}");
        assert_eq!(answer["id"], Value::Null, "{shown}");
        assert!(answer.as_object().is_some_and(|o| o.contains_key("id")), "{shown}: id must be present");
        assert_eq!(answer["error"]["code"], -32700, "{shown}");
        assert!(answer["error"]["message"].is_string(), "{shown}");
    }
    assert_nothing_forwarded(&proxy, &el);
}

#[test]
fn methods_other_than_post_get_and_head_get_405() {
    let el = MockEl::start();
    let proxy = start(&[&el], &[]);
    let body = call(1);
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let mut bn = proxy.bn();
        let request = format!("{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        bn.send_raw(&[request.as_bytes(), &body].concat());
        assert_eq!(bn.read_response().status, 405, "{method}");
    }
    assert_nothing_forwarded(&proxy, &el);
}

// --- timeouts and the connection bound ----------------------------------------------------------

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let el = MockEl::start();
    let proxy = start(&[&el], &["--idle-timeout", "400"]);

    let mut silent = proxy.bn();
    let mut served = proxy.bn();
    assert_eq!(served.post(&call(1)).json()["id"], 1);
    let answered = Instant::now();
    assert!(!silent.is_closed_within(Duration::from_millis(100)), "closed long before the idle timeout");
    assert!(silent.is_closed_within(TIMEOUT), "a silent connection stays open");
    assert!(served.is_closed_within(TIMEOUT), "an idle kept-alive connection stays open");
    assert!(answered.elapsed() >= Duration::from_millis(300), "closed after {:?}", answered.elapsed());
    assert_still_serving(&proxy);
}

#[test]
fn a_trickling_request_is_closed_after_the_read_timeout() {
    let el = MockEl::start();
    let proxy = start(&[&el], &["--read-timeout", "400", "--idle-timeout", "60000"]);

    // A head that never ends, one header line every 50 ms.
    let mut bn = proxy.bn();
    let started = Instant::now();
    bn.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\n");
    let mut closed = false;
    while !closed && started.elapsed() < TIMEOUT {
        closed = bn.try_send_raw(b"X-Slow: y\r\n").is_err() || bn.is_closed_within(Duration::from_millis(50));
    }
    assert!(closed, "a trickling head was not cut off");
    assert!(started.elapsed() >= Duration::from_millis(300), "cut off after {:?}", started.elapsed());

    // A whole head, then a body that trickles.
    let mut bn = proxy.bn();
    let started = Instant::now();
    bn.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{");
    let mut closed = false;
    while !closed && started.elapsed() < TIMEOUT {
        closed = bn.try_send_raw(b" ").is_err() || bn.is_closed_within(Duration::from_millis(50));
    }
    assert!(closed, "a trickling body was not cut off");
    assert!(started.elapsed() >= Duration::from_millis(300), "cut off after {:?}", started.elapsed());

    assert_nothing_forwarded(&proxy, &el);
}

#[test]
fn max_connections_holds_back_the_next_connection_until_one_closes() {
    let el = MockEl::start();
    let proxy = start(&[&el], &["--max-connections", "4"]);
    let mut open: Vec<Bn> = (0..4).map(|_| proxy.bn()).collect();
    for (id, bn) in (1..).zip(open.iter_mut()) {
        assert_eq!(bn.post(&call(id)).json()["id"], id);
    }
    let mut fifth = proxy.bn();
    fifth.send_post(&[], &call(5));
    proxy.wait_log("4 connections open: not accepting", TIMEOUT);
    assert!(fifth.read_response_timeout(SHORT).is_none(), "a fifth connection was served");
    assert_eq!(el.received().len(), 4);

    drop(open.remove(0));
    let response = fifth.read_response();
    assert_eq!(response.json()["id"], 5);
    // The other three are still served.
    for (id, bn) in (6..).zip(open.iter_mut()) {
        assert_eq!(bn.post(&call(id)).json()["id"], id);
    }
}

// --- command line ------------------------------------------------------------------------------

#[test]
fn go_flags_work_with_one_dash_and_a_separate_value() {
    // The primary never answers; -request-timeout 300 (not newPayload's 8 s) makes the proxy
    // fall back to the secondary. -loglevel debug shows per-request lines, -json makes them JSON.
    let primary = MockEl::with(|_| Reply::Hang);
    let secondary = MockEl::start();
    let builders = format!("{},{}", primary.url(), secondary.url());
    let proxy = Launch::bin(SYNC_PROXY)
        .args(&["-addr", "127.0.0.1:0", "-builders", &builders, "-request-timeout", "300"])
        .args(&["-loglevel", "debug", "-json"])
        .start();
    let mut bn = proxy.bn();
    bn.set_timeout(Duration::from_secs(3));
    let sent = Instant::now();
    let response = bn.post(&new_payload(1, 100));
    assert_eq!(response.json()["result"]["status"], "VALID");
    assert!(sent.elapsed() >= Duration::from_millis(250), "answered after {:?}", sent.elapsed());
    let line = proxy.wait_log("engine_newPayloadV3 id 1", TIMEOUT);
    let line: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(line["level"], "debug");
}

#[test]
fn go_flags_work_with_one_or_two_dashes_and_equals() {
    // -mirror-mode acknowledges at once although the primary hangs; -proxies gets a copy.
    let primary = MockEl::with(|_| Reply::Hang);
    let peer = MockEl::start();
    let proxy = Launch::bin(SYNC_PROXY)
        .args(&["--addr=127.0.0.1:0", &format!("-builders={}", primary.url())])
        .args(&[&format!("--proxies={}", peer.url()), "-proxy-request-timeout=300"])
        .args(&["--mirror-mode", "-loglevel=info", "--json=false"])
        .start();
    let mut bn = proxy.bn();
    bn.set_timeout(Duration::from_secs(1));
    let response = bn.post(&new_payload(1, 100));
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["id"], 1);
    assert_eq!(response.json()["result"]["status"], "SYNCING");
    let body = new_payload(1, 100);
    assert_eq!(peer.wait_requests(1, TIMEOUT)[0].body, body);
    assert_eq!(primary.wait_requests(1, TIMEOUT)[0].body, body);
    assert!(!proxy.logs().iter().any(|l| l.starts_with('{')), "--json=false still logs JSON");
}

#[test]
fn log_level_and_log_json_come_from_the_environment() {
    let el = MockEl::start();
    let proxy = Launch::proxy()
        .args(&["--builders", &el.url()])
        .env("LOG_LEVEL", "debug")
        .env("LOG_JSON", "1")
        .start();
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    let line = proxy.wait_log("engine_newPayloadV3 id 1", TIMEOUT);
    let line: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(line["level"], "debug");
}

#[test]
fn flags_override_log_level_and_log_json() {
    let el = MockEl::start();
    // LOG_LEVEL=error would hide the listening line; the flag brings it back.
    let mut proxy = Launch::proxy()
        .args(&["--builders", &el.url(), "-loglevel", "info", "-json=false"])
        .env("LOG_LEVEL", "error")
        .env("LOG_JSON", "1")
        .start();
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
    proxy.terminate();
    assert!(proxy.wait_exit(TIMEOUT).is_some_and(|s| s.success()));
    let logs = proxy.logs();
    assert!(logs.iter().all(|l| !l.starts_with('{')), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("engine_newPayloadV3 id 1")), "debug line at info: {logs:#?}");
}

#[test]
fn help_exits_0_and_lists_every_flag() {
    for arg in ["--help", "-help", "-h"] {
        let (status, stdout, stderr) = run_proxy_expect_exit(&[arg]);
        assert_eq!(status.code(), Some(0), "{arg}: {stderr}");
        for flag in [
            "addr",
            "builders",
            "proxies",
            "request-timeout",
            "proxy-request-timeout",
            "loglevel",
            "json",
            "mirror-mode",
            "max-body-bytes",
            "max-connections",
            "idle-timeout",
            "read-timeout",
            "jwt-secret",
            "builder-jwt-secrets",
            "jwt-client-id",
            "metrics-addr",
        ] {
            assert!(stdout.contains(&format!("--{flag}")), "{arg}: --{flag} missing from:\n{stdout}");
        }
        for var in ["PROXY_LISTEN_ADDR", "BUILDER_TIMEOUT_MS", "LOG_LEVEL", "LOG_JSON"] {
            assert!(stdout.contains(var), "{arg}: {var} missing from:\n{stdout}");
        }
    }
}

#[test]
fn version_exits_0_and_prints_the_version() {
    for arg in ["--version", "-version"] {
        let (status, stdout, _) = run_proxy_expect_exit(&[arg]);
        assert_eq!(status.code(), Some(0));
        assert_eq!(stdout, format!("sync-proxy {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn command_line_errors_print_one_line_and_exit_2() {
    let cases: [(&[&str], &str); 11] = [
        (&[], "builders"),
        (&["--addr", "127.0.0.1:0"], "builders"),
        (&["--builders", " , "], "builders"),
        // A build with TLS takes https:// and checks --builder-ca; one without refuses https://.
        (
            &["--builders", "https://127.0.0.1:8551", "--builder-ca", "/nonexistent/ca.pem"],
            if cfg!(feature = "tls") { "cannot read --builder-ca file" } else { "https is not supported" },
        ),
        (&["--builders", "127.0.0.1:notaport"], "notaport"),
        (&["--builders", "ftp://127.0.0.1:8551"], "ftp://127.0.0.1:8551"),
        (&["--builders", "127.0.0.1:8551", "--addr", "nonsense"], "nonsense"),
        (&["--builders", "127.0.0.1:8551", "-addr", "127.0.0.1:99999"], "127.0.0.1:99999"),
        (&["--builders", "127.0.0.1:8551", "--bogus"], "bogus"),
        (&["--builders", "127.0.0.1:8551", "-bogus=1"], "bogus"),
        (&["--builders"], "builders"),
    ];
    for (args, mentions) in cases {
        let (status, stdout, stderr) = run_proxy_expect_exit(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: not one line:\n{stderr}");
        assert!(stderr.contains(mentions), "{args:?}: {stderr:?} does not mention {mentions:?}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

// --- logs --------------------------------------------------------------------------------------

#[test]
fn json_logs_are_one_object_per_line_with_level_and_msg() {
    let el = MockEl::start();
    let mut down = MockEl::start();
    down.stop();
    let builders = format!("{},{}", el.url(), down.url());
    let proxy = Launch::proxy().args(&["-builders", &builders, "-json", "-loglevel", "debug"]).start();
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&new_payload(1, 100)).status, 200);
    proxy.wait_log("is down", TIMEOUT);
    assert_eq!(bn.post(b"{oops").status, 400);
    proxy.wait_log("invalid JSON", TIMEOUT);
    let logs = proxy.logs();
    assert!(logs.len() >= 4, "{logs:#?}");
    let mut levels = Vec::new();
    for line in &logs {
        let value: Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(e) => panic!("not a JSON line ({e}): {line}"),
        };
        let level = value["level"].as_str().unwrap_or_else(|| panic!("no string level: {line}"));
        assert!(["error", "warn", "info", "debug", "trace"].contains(&level), "{line}");
        assert!(value["msg"].is_string(), "no string msg: {line}");
        levels.push(level.to_string());
    }
    for level in ["warn", "info", "debug"] {
        assert!(levels.iter().any(|l| l == level), "no {level} line in {logs:#?}");
    }
}

#[test]
fn the_start_up_summary_names_the_els_and_the_auth_mode() {
    let (a, b) = (MockEl::start(), MockEl::start());
    let proxy = start(&[&a, &b], &[]);
    let line = proxy.wait_log("execution clients", TIMEOUT);
    // The ELs are named as written in --builders, as every other log line names them.
    let (url_a, url_b) = (format!("{}, ", a.url()), format!("{};", b.url()));
    let (at_a, at_b) = (line.find(&url_a), line.find(&url_b));
    assert!(at_a.is_some() && at_b.is_some() && at_a < at_b, "{line}");
    assert!(line.contains("primary"), "{line}");
    assert!(line.contains("no inbound JWT check"), "{line}");
    assert!(line.contains("passed through"), "{line}");

    let secret = TempFile::new(SECRET_HEX);
    let proxy = start(&[&a], &["--jwt-secret", secret.arg()]);
    let line = proxy.wait_log("execution clients", TIMEOUT);
    assert!(line.contains("inbound JWT checked"), "{line}");
    assert!(!line.contains(SECRET_HEX), "{line}");
}

#[test]
fn per_request_lines_appear_only_at_debug() {
    let el = MockEl::start();
    let mut proxy = start(&[&el], &[]);
    let mut bn = proxy.bn();
    for id in 1..=3 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).status, 200);
    }
    proxy.terminate();
    assert!(proxy.wait_exit(TIMEOUT).is_some_and(|s| s.success()));
    let logs = proxy.logs();
    // Start-up (listening line and summary), the followed beacon node, stopping, stopped.
    assert!(logs.len() <= 6, "more lines than expected at info: {logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("engine_newPayloadV3")), "{logs:#?}");
}

// --- SIGTERM -----------------------------------------------------------------------------------

#[test]
fn sigterm_delivers_the_queued_backlog_then_exits_0() {
    let primary = MockEl::start();
    let slow = MockEl::with(|r| default_reply(r).delayed(Duration::from_millis(250)));
    let mut proxy = start(&[&primary, &slow], &[]);
    let mut bn = proxy.bn();
    for id in 1..=5 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).json()["id"], id);
    }
    let delivered_before = slow.received().len();
    assert!(delivered_before < 5, "the slow EL already had everything");
    proxy.terminate();
    let status = proxy.wait_exit(TIMEOUT).expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    let ids: Vec<Option<Value>> = slow.received().into_iter().map(|r| r.rpc_id).collect();
    assert_eq!(ids, (1..=5).map(|i| Some(json!(i))).collect::<Vec<_>>());
    assert!(proxy.logs().iter().any(|l| l.contains("stopped")));
    assert!(!proxy.logs().iter().any(|l| l.contains("undelivered")));
}

#[test]
fn regression_reap_resumed_accepting_during_the_sigterm_drain() {
    let primary = MockEl::start();
    let slow = MockEl::with(|r| default_reply(r).delayed(Duration::from_millis(300)));
    let mut proxy = start(&[&primary, &slow], &[]);
    let mut bn = proxy.bn();
    for id in 1..=3 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).json()["id"], id);
    }
    proxy.terminate();
    proxy.wait_log("stopping", TIMEOUT);
    // The drain takes about 900 ms; a connection made meanwhile must not be served. (The kernel
    // may still complete its handshake: the listening socket stays open until exit.)
    if let Ok(mut late) = Bn::try_connect(proxy.addr()) {
        if late.try_send_raw(&post_request("x", &[], &call(99))).is_ok() {
            match late.try_read_response(SHORT) {
                Err(ReadError::Timeout { .. } | ReadError::Closed { .. } | ReadError::Io(_)) => {}
                other => panic!("a connection made after SIGTERM was served: {other:?}"),
            }
        }
    }
    let status = proxy.wait_exit(TIMEOUT).expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(slow.received().len(), 3);
    assert!(!primary.received().iter().any(|r| r.rpc_id == Some(json!(99))));
}

#[test]
fn sigterm_on_an_idle_proxy_exits_0_at_once() {
    let el = MockEl::start();
    let mut proxy = start(&[&el], &[]);
    assert_still_serving(&proxy);
    let signalled = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(TIMEOUT).expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(1), "took {:?}", signalled.elapsed());
}
