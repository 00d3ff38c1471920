//! Self-tests of the toolkit in `util`: the mock EL and the BN client against each other,
//! and the launcher against `/bin/sh` scripts. No proxy is involved, so a failure here is a
//! bug in the toolkit, not in the proxy.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{
    default_reply, fcu, new_payload, reply_status, rpc_body, rpc_body_with_id, run_bin_expect_exit, sample,
    sequence, wait_until, Bn, Framing, KeyOrder, Launch, MockEl, Proxy, ReadError, Reply, TIMEOUT, ZERO_HASH,
};

const SHORT: Duration = Duration::from_millis(50);

fn post_once(el: &MockEl, body: &[u8]) -> crate::util::HttpResponse {
    Bn::connect(el.addr()).post(body)
}

fn chain_id(id: u64) -> Vec<u8> {
    rpc_body(id, "eth_chainId", json!([]))
}

// --- default replies -------------------------------------------------------------------

#[test]
fn default_reply_echoes_ids_of_every_json_type() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    let ids = [
        json!(0),
        json!(1),
        json!(u64::MAX),
        json!(-7),
        json!(1.5),
        json!("abc"),
        json!(""),
        json!(null),
        json!(true),
        json!([1, "x"]),
        json!({ "a": { "b": [] } }),
    ];
    for (i, id) in ids.iter().enumerate() {
        let order = [KeyOrder::Lodestar, KeyOrder::Lighthouse][i % 2];
        let response = bn.post(&rpc_body_with_id(id, "eth_chainId", json!([]), order));
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["id"], *id, "answer to {}", response.text());
    }
    let seen: Vec<Value> = el.received().into_iter().filter_map(|r| r.rpc_id).collect();
    assert_eq!(seen, ids);
}

#[test]
fn default_reply_echoes_the_id_byte_for_byte() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    let cases = [
        (r#"{"jsonrpc":"2.0","method":"eth_chainId","params":[],"id": 1.0e0 }"#, "1.0e0"),
        (r#"{"id":"a\"}b","jsonrpc":"2.0","method":"eth_chainId"}"#, r#""a\"}b""#),
        (r#"{"jsonrpc":"2.0","method":"eth_chainId","params":[{"id":5}]}"#, "null"),
    ];
    for (body, raw_id) in cases {
        let text = bn.post(body.as_bytes()).text();
        let expected = format!(r#""id":{raw_id},"#);
        assert!(text.contains(&expected), "{text} should contain {expected}");
    }
    let received = el.received();
    assert_eq!(received[0].rpc_id_raw.as_deref(), Some("1.0e0"));
    assert_eq!(received[2].rpc_id, None, "a nested id is not the request's id");
}

#[test]
fn default_results_match_the_method() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());

    let result = bn.post(&new_payload(1, 100)).json()["result"].clone();
    assert_eq!(result["status"], "VALID");
    assert_eq!(result["latestValidHash"], ZERO_HASH);
    assert_eq!(result["validationError"], Value::Null);

    let result = bn.post(&fcu(2, Some(100))).json()["result"].clone();
    assert_eq!(result["payloadStatus"]["status"], "VALID");
    assert_eq!(result["payloadId"], Value::Null);

    let get_payload = rpc_body(3, "engine_getPayloadV4", json!(["0x0000000000000001"]));
    let result = bn.post(&get_payload).json()["result"].clone();
    assert!(result["executionPayload"].is_object(), "{result}");

    let capabilities = json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3"]);
    let exchange = rpc_body(4, "engine_exchangeCapabilities", json!([capabilities]));
    assert_eq!(bn.post(&exchange).json()["result"], capabilities);

    let version = rpc_body(5, "engine_getClientVersionV1", json!([{}]));
    let result = bn.post(&version).json()["result"].clone();
    assert_eq!(result[0]["code"], "MK");
    assert_eq!(result.as_array().map(Vec::len), Some(1));

    assert_eq!(bn.post(&chain_id(6)).json()["result"], "0x1");
    assert_eq!(ZERO_HASH.len(), 2 + 64);
}

#[test]
fn reply_status_sets_the_payload_status() {
    let el = MockEl::with(|r| reply_status(r, "SYNCING"));
    let mut bn = Bn::connect(el.addr());
    let result = bn.post(&new_payload(1, 100)).json()["result"].clone();
    assert_eq!(result["status"], "SYNCING");
    assert_eq!(result["latestValidHash"], Value::Null);
    let result = bn.post(&fcu(2, None)).json()["result"].clone();
    assert_eq!(result["payloadStatus"]["status"], "SYNCING");
    assert_eq!(bn.post(&chain_id(3)).json()["result"], "0x1");
}

#[test]
fn invalid_json_is_recorded_and_answered_with_an_error() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    let answer = bn.post(b"not json {").json();
    assert_eq!(answer["error"]["code"], -32700);
    assert_eq!(answer["id"], Value::Null);
    let answer = bn.post(br#"{"jsonrpc":"2.0","id":9}"#).json();
    assert_eq!(answer["error"]["code"], -32600);
    assert_eq!(answer["id"], 9);

    let received = el.received();
    assert!(!received[0].valid_json);
    assert_eq!(received[0].body, b"not json {");
    assert_eq!((received[0].rpc_method.as_deref(), &received[0].rpc_id), (None, &None));
    assert!(received[1].valid_json);
    assert_eq!(el.methods(), ["", ""]);
}

// --- framing and connections -----------------------------------------------------------

#[test]
fn chunked_answers_are_dechunked_by_the_client() {
    let body = format!("\"{}\"", "x".repeat(10_000));
    let answer = body.clone();
    let el = MockEl::with(move |_| Reply::json(answer.clone()).framed(Framing::Chunked));
    let mut bn = Bn::connect(el.addr());
    for id in 1..=2 {
        let response = bn.post(&chain_id(id));
        assert_eq!(response.header("Transfer-Encoding"), Some("chunked"));
        assert_eq!(response.header("content-length"), None);
        assert_eq!(response.text(), body);
    }
    assert_eq!(el.connections(), 1, "chunked answers keep the connection");
}

#[test]
fn close_delimited_answers_end_with_the_connection() {
    let el = MockEl::with(|r| default_reply(r).framed(Framing::CloseDelimited));
    let mut bn = Bn::connect(el.addr());
    let response = bn.post(&chain_id(7));
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.json()["id"], 7);
    assert!(bn.is_closed_within(TIMEOUT));
}

#[test]
fn keep_alive_reuses_one_connection() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    for id in 1..=5 {
        assert_eq!(bn.post(&chain_id(id)).json()["id"], id);
    }
    assert_eq!(el.connections(), 1);
    assert!(el.received().iter().all(|r| r.conn == 0));
    assert_eq!(el.methods(), vec!["eth_chainId"; 5]);
}

#[test]
fn each_connection_gets_its_own_ordinal() {
    let el = MockEl::start();
    let mut clients: Vec<Bn> = (0..3).map(|_| Bn::connect(el.addr())).collect();
    for (id, bn) in clients.iter_mut().enumerate() {
        bn.post(&chain_id(id as u64));
    }
    let mut conns: Vec<usize> = el.received().iter().map(|r| r.conn).collect();
    conns.sort_unstable();
    assert_eq!(conns, [0, 1, 2]);
    assert_eq!(el.connections(), 3);
    assert_eq!(el.open_connections(), 3);
}

#[test]
fn connection_close_is_honoured() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    let response = bn.post_with(&[("Connection", "close")], &chain_id(1));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(bn.is_closed_within(TIMEOUT));
    el.wait_open_connections(0, TIMEOUT);
    assert_eq!(el.received()[0].header("CONNECTION"), Some("close"));
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let el = MockEl::start();
    let body = chain_id(1);
    let head = format!("POST / HTTP/1.0\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut bn = Bn::connect(el.addr());
    bn.send_raw(&[head.as_bytes(), &body].concat());
    assert_eq!(bn.read_response().json()["id"], 1);
    assert!(bn.is_closed_within(TIMEOUT));

    let head = format!("POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut bn = Bn::connect(el.addr());
    for _ in 0..2 {
        bn.send_raw(&[head.as_bytes(), &body].concat());
        let response = bn.read_response();
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    assert_eq!(el.received()[0].method_line, "POST / HTTP/1.0");
}

#[test]
fn chunked_requests_are_recorded_dechunked() {
    let el = MockEl::start();
    let body = rpc_body(1, "eth_call", json!(["y".repeat(5000)]));
    let response = Bn::connect(el.addr()).post_with(&[("Transfer-Encoding", "chunked")], &body);
    assert_eq!(response.json()["id"], 1);
    let received = &el.received()[0];
    assert_eq!(received.body, body);
    assert_eq!(received.header("content-length"), None);
    assert_eq!(received.header("transfer-encoding"), Some("chunked"));
}

#[test]
fn large_bodies_cross_both_ways() {
    let big = json!("z".repeat(1 << 20));
    let answer = big.clone();
    let el = MockEl::with(move |r| crate::util::rpc_result(r, answer.clone()).framed(Framing::Chunked));
    let body = rpc_body(1, "eth_call", json!([big]));
    let response = post_once(&el, &body);
    assert_eq!(response.json()["result"], big);
    assert_eq!(el.received()[0].body.len(), body.len());
}

#[test]
fn unparsable_requests_get_400_and_an_error() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    bn.send_raw(b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(bn.read_response().status, 400);
    assert!(bn.is_closed_within(TIMEOUT));
    assert!(el.received().is_empty());
    assert!(el.errors()[0].contains("unparsable request"), "{:?}", el.errors());
}

#[test]
fn open_connections_follow_the_client() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    bn.post(&chain_id(1));
    assert_eq!(el.open_connections(), 1);
    drop(bn);
    el.wait_open_connections(0, TIMEOUT);
    assert_eq!(el.connections(), 1);
    assert!(el.errors().is_empty());
}

// --- scripted replies --------------------------------------------------------------------

#[test]
fn delay_postpones_the_answer_but_not_the_record() {
    let delay = Duration::from_millis(300);
    let el = MockEl::with(move |r| default_reply(r).delayed(delay));
    let mut bn = Bn::connect(el.addr());
    let sent = Instant::now();
    bn.send_post(&[], &chain_id(1));
    el.wait_requests(1, TIMEOUT);
    assert!(bn.read_response_timeout(SHORT).is_none(), "answered before the delay");
    assert_eq!(bn.read_response().json()["id"], 1);
    assert!(sent.elapsed() >= delay);
}

#[test]
fn pipelined_requests_are_recorded_while_an_answer_is_delayed() {
    let el = MockEl::with(sequence([Reply::json("{\"first\":1}").delayed(TIMEOUT)]));
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    bn.send_post(&[], &chain_id(2));
    let received = el.wait_requests(2, TIMEOUT);
    assert_eq!(received[1].rpc_id, Some(json!(2)));
    assert!(bn.read_response_timeout(SHORT).is_none());
}

#[test]
fn hang_never_answers_until_stop() {
    let mut el = MockEl::with(|_| Reply::Hang);
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    bn.send_post(&[], &chain_id(2));
    el.wait_requests(2, TIMEOUT);
    assert!(bn.read_response_timeout(SHORT).is_none());
    assert!(!bn.is_closed_within(SHORT));
    let stopping = Instant::now();
    el.stop();
    assert!(stopping.elapsed() < Duration::from_secs(1), "stop waited for the hang");
    assert!(bn.is_closed_within(TIMEOUT));
}

#[test]
fn close_answers_nothing() {
    let el = MockEl::with(|_| Reply::Close);
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { partial, .. }) => assert!(partial.is_empty()),
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(el.received().len(), 1);
}

#[test]
fn garbage_is_written_as_is_then_closed() {
    let el = MockEl::with(|_| Reply::Garbage(b"SSH-2.0-nope\r\n\r\n".to_vec()));
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Invalid(_)) => {}
        other => panic!("expected garbage, got {other:?}"),
    }
    assert!(bn.is_closed_within(TIMEOUT));
}

#[test]
fn interim_responses_are_skipped_unless_asked_for() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let el = MockEl::with(|_| Reply::Garbage(raw.to_vec()));

    let response = Bn::connect(el.addr()).post(&chain_id(1));
    assert_eq!((response.status, response.text().as_str()), (200, "{}"));

    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(2));
    assert_eq!(bn.read_response_allow_interim().status, 100);
    assert_eq!(bn.read_response_allow_interim().status, 200);
}

#[test]
fn trickle_writes_one_byte_at_a_time() {
    let gap = Duration::from_millis(1);
    let el = MockEl::with(move |r| default_reply(r).trickled(gap));
    let mut bn = Bn::connect(el.addr());
    let sent = Instant::now();
    bn.send_post(&[], &chain_id(1));
    assert!(bn.read_response_timeout(Duration::from_millis(20)).is_none());
    let response = bn.read_response();
    assert_eq!(response.json()["id"], 1);
    // About 100 bytes of head and 40 of body, each after a 1 ms gap.
    assert!(sent.elapsed() >= Duration::from_millis(100), "{:?}", sent.elapsed());
    assert_eq!(bn.post(&chain_id(2)).json()["id"], 2, "still keep-alive");
}

#[test]
fn reset_truncates_the_answer() {
    let el = MockEl::with(|_| Reply::Reset);
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { partial, .. }) => {
            assert!(partial.starts_with(b"HTTP/1.1 200 OK\r\n"), "{partial:?}");
        }
        other => panic!("expected a truncated answer, got {other:?}"),
    }
}

#[test]
fn close_idle_answers_then_closes_without_warning() {
    let el = MockEl::with(|r| default_reply(r).then_close());
    let mut bn = Bn::connect(el.addr());
    let response = bn.post(&chain_id(1));
    assert_eq!(response.json()["id"], 1);
    assert_eq!(response.header("connection"), None);
    assert!(bn.is_closed_within(TIMEOUT));
}

#[test]
fn sequence_gives_scripted_replies_then_defaults() {
    let el = MockEl::with(sequence([Reply::http(503, "busy"), Reply::Close]));
    assert_eq!(post_once(&el, &chain_id(1)).status, 503);
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(2));
    assert!(bn.is_closed_within(TIMEOUT));
    assert_eq!(post_once(&el, &chain_id(3)).json()["id"], 3);
}

#[test]
fn set_behaviour_applies_to_later_requests() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    assert_eq!(bn.post(&chain_id(1)).status, 200);
    el.set_behaviour(|_| Reply::http(401, "no"));
    let response = bn.post(&chain_id(2));
    assert_eq!((response.status, response.text().as_str()), (401, "no"));
}

#[test]
fn a_panicking_behaviour_is_an_error_not_a_hang() {
    let el = MockEl::with(|_| panic!("behaviour bug (expected by this test)"));
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    assert!(bn.is_closed_within(TIMEOUT));
    assert!(el.errors()[0].contains("behaviour panicked"), "{:?}", el.errors());
}

// --- stop and restart ----------------------------------------------------------------------

#[test]
fn stop_closes_connections_and_restart_listens_again() {
    let mut el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    bn.post(&chain_id(1));
    el.stop();
    assert!(!el.is_running());
    assert!(bn.is_closed_within(TIMEOUT));
    assert!(Bn::try_connect(el.addr()).is_err(), "a stopped mock refuses connections");

    el.restart();
    assert_eq!(post_once(&el, &chain_id(2)).json()["id"], 2);
    let received = el.received();
    let conns: Vec<usize> = received.iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 1], "records and ordinals survive a restart");
}

#[test]
fn start_on_binds_the_same_port_afresh() {
    let el = MockEl::start();
    let addr = el.addr();
    post_once(&el, &chain_id(1));
    drop(el);
    let el = MockEl::start_on(addr, |r| reply_status(r, "SYNCING"));
    assert_eq!(el.addr(), addr);
    assert_eq!(el.url(), format!("127.0.0.1:{}", addr.port()));
    let answer = post_once(&el, &new_payload(2, 7)).json();
    assert_eq!(answer["result"]["status"], "SYNCING");
    assert_eq!(el.received().len(), 1);
}

#[test]
#[should_panic(expected = "timed out after 50ms waiting for at least 1 requests")]
fn wait_requests_panics_when_nothing_arrives() {
    let el = MockEl::start();
    el.wait_requests(1, SHORT);
}

// --- request helpers -------------------------------------------------------------------

#[test]
fn received_helpers_read_auth_and_timestamps() {
    let el = MockEl::start();
    let mut bn = Bn::connect(el.addr());
    bn.post_with(&[("Authorization", "Bearer abc.def.ghi")], &new_payload(1, 0x65f0_a1b2));
    bn.post(&fcu(2, Some(42)));
    bn.post(&fcu(3, None));
    let received = el.received();
    assert_eq!(received[0].bearer(), Some("abc.def.ghi"));
    assert_eq!(received[1].bearer(), None);
    assert!(received[0].is("engine_newPayload") && received[1].is("engine_forkchoiceUpdated"));
    let timestamps: Vec<Option<u64>> = received.iter().map(|r| r.rpc_timestamp()).collect();
    assert_eq!(timestamps, [Some(0x65f0_a1b2), Some(42), None]);
    assert_eq!(received[0].json()["params"][0]["timestamp"], "0x65f0a1b2");
    assert!(received[0].at <= received[1].at);
}

#[test]
fn samples_load_from_the_fixtures_folder() {
    let fcu: Value = serde_json::from_slice(&sample("fcu.json")).expect("fcu.json is JSON");
    assert_eq!(fcu["method"], "engine_forkchoiceUpdatedV3");
    let payload: Value = serde_json::from_slice(&sample("newpayload-1k.json")).expect("newpayload is JSON");
    assert_eq!(payload["method"], "engine_newPayloadV3");
}

// --- launcher ------------------------------------------------------------------------------

/// A stand-in for the proxy: announces an address on stderr, then waits to be signalled.
fn fake_server(listening_line: &str) -> Launch {
    let script =
        format!("echo '{listening_line}' >&2; echo on-stdout; echo 'second line' >&2; exec sleep 30");
    Launch::bin("/bin/sh").args(&["-c", &script])
}

#[test]
fn launcher_reads_the_address_and_follows_the_logs() {
    let line = "2026-01-01T00:00:00Z INFO  [sync_proxy] listening on 127.0.0.1:4567";
    let mut proxy = fake_server(line).start();
    assert_eq!(proxy.addr().to_string(), "127.0.0.1:4567");
    assert_eq!(proxy.wait_log("second", TIMEOUT), "second line");
    assert_eq!(proxy.logs()[0], line);
    wait_until("stdout is collected", TIMEOUT, || proxy.stdout() == ["on-stdout"]);

    let mark = proxy.log_mark();
    assert_eq!(mark, 2);
    proxy.terminate();
    let status = proxy.wait_exit(TIMEOUT).expect("sh exits on SIGTERM");
    assert_eq!(status.signal(), Some(15));
    assert_eq!(proxy.log_mark(), mark);
}

#[test]
fn launcher_reads_the_address_from_json_logs() {
    let line = r#"{"level":"INFO","msg":"listening on 127.0.0.1:4568","target":"x"}"#;
    let proxy = fake_server(line).start();
    assert_eq!(proxy.addr().port(), 4568);
}

#[test]
fn launcher_passes_environment_explicitly() {
    let script = "echo \"listening on 127.0.0.1:1 level=$LOG_LEVEL\" >&2; exec sleep 30";
    let proxy = Launch::bin("/bin/sh").args(&["-c", script]).env("LOG_LEVEL", "debug").start();
    assert!(proxy.logs()[0].ends_with("level=debug"), "{:?}", proxy.logs());
}

#[test]
#[should_panic(expected = "did not announce")]
fn launcher_panics_when_the_binary_exits_before_listening() {
    Proxy::start_bin("/bin/sh", &["-c", "echo 'bad flag' >&2; exit 2"]);
}

#[test]
#[should_panic(expected = "no stderr line containing \"never\"")]
fn wait_log_panics_when_the_line_never_comes() {
    let proxy = fake_server("listening on 127.0.0.1:4569").start();
    proxy.wait_log("never", SHORT);
}

#[test]
fn run_to_exit_returns_status_and_output() {
    let (status, stdout, stderr) = run_bin_expect_exit("/bin/sh", &["-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(status.code(), Some(3));
    assert_eq!((stdout.as_str(), stderr.as_str()), ("out\n", "err\n"));
}

#[test]
fn reset_with_unread_bytes_sends_rst() {
    let el = MockEl::with(sequence([Reply::Reset.delayed(Duration::from_millis(100))]));
    let mut bn = Bn::connect(el.addr());
    bn.send_post(&[], &chain_id(1));
    el.wait_requests(1, TIMEOUT);
    // The mock stopped reading at the reset request, so these bytes stay unread.
    bn.send_post(&[], &chain_id(2));
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { reset: true, .. }) => {}
        other => panic!("expected an RST, got {other:?}"),
    }
    assert_eq!(el.received().len(), 1);
}
