//! Trust (issue 13), driven over 127.0.0.1 against recording mock execution clients:
//!
//! - the best beacon node (BN) cannot be hijacked: a timestamp far ahead of the wall clock
//!   never counts, and a larger plausible one counts only once an EL accepted its payload
//!   (with and without `--jwt-secret`); the real BN's forkchoiceUpdated keeps reaching every EL;
//! - a JSON-RPC batch holding an Engine API call is answered -32600 and reaches no EL; other
//!   batches are still forwarded;
//! - two BNs on one IP are told apart by their token's `id` claim and by their path, each
//!   with its own secret from `--beacon-jwt-secrets` (read again on SIGHUP), and `/status`
//!   names both;
//! - `--answer-policy safe`: the same answer over every arrival order of three ELs, SYNCING
//!   with a warning and a metric on a VALID/INVALID split, the first agreeing EL in list order,
//!   an answer within `--answer-wait` when an EL never answers;
//! - `--payload-choice best-value`: each EL asked for its own build, the highest `blockValue`
//!   in time relayed, an EL slower than the deadline and one answering an error left out.
//!
//! Every "reached no EL" is checked after a later call was seen arriving (a positive signal),
//! never after a bare sleep.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sync_proxy::jwt::{self, Secret};

use crate::routing::{metric, start_proxy};
use crate::util::{
    default_reply, fcu, hash, new_payload, post_request, quantity, reply_status, rpc_result, Bn,
    HttpResponse, MockEl, Proxy, Received, Reply, TempFile, TIMEOUT,
};

/// The real BN and the one that tries to take over, by X-Forwarded-For.
const REAL: &str = "10.0.0.1";
const INTRUDER: &str = "10.6.6.6";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A distinct 64-hex-digit secret per `n`.
fn secret_hex(n: u8) -> String {
    format!("{:02x}", n.wrapping_mul(41).wrapping_add(0x13)).repeat(32)
}

fn secret(n: u8) -> Secret {
    Secret::from_hex(&secret_hex(n)).expect("valid secret")
}

/// `Authorization` for a fresh token signed with secret `n`, with an `id` claim or none.
fn bearer(n: u8, id: Option<&str>) -> String {
    format!("Bearer {}", jwt::mint(&secret(n), unix_now(), id))
}

/// Posts `body` as BN `xff`, with `authorization` if given, on a fresh connection.
#[track_caller]
fn post_as(proxy: &Proxy, xff: &str, authorization: Option<&str>, body: &[u8]) -> HttpResponse {
    let mut headers = vec![("X-Forwarded-For", xff)];
    headers.extend(authorization.map(|a| ("Authorization", a)));
    proxy.bn().post_with(&headers, body)
}

/// Posts `body` to `path` on a fresh connection.
#[track_caller]
fn post_to(proxy: &Proxy, path: &str, authorization: &str, body: &[u8]) -> HttpResponse {
    let request = post_request("proxy", &[("Authorization", authorization)], body);
    let request = String::from_utf8(request).expect("ASCII head and JSON body");
    let request = request.replacen("POST / ", &format!("POST {path} "), 1);
    let mut bn: Bn = proxy.bn();
    bn.send_raw(request.as_bytes());
    bn.read_response()
}

/// The payload status in a newPayload or forkchoiceUpdated answer.
fn status_of(response: &HttpResponse) -> Value {
    let doc = response.json();
    match doc["result"].get("payloadStatus") {
        Some(status) => status["status"].clone(),
        None => doc["result"]["status"].clone(),
    }
}

/// What a forkchoiceUpdated from a BN that is not the best gets.
fn filtered(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "payloadStatus": { "status": "SYNCING", "latestValidHash": null, "validationError": null },
            "payloadId": null,
        },
    })
}

/// The JSON-RPC ids an EL received, in order (`u64::MAX` for none).
fn ids(el: &MockEl) -> Vec<u64> {
    el.received().iter().map(|r| r.rpc_id.as_ref().and_then(Value::as_u64).unwrap_or(u64::MAX)).collect()
}

/// Waits until every EL has received a call with id `id`.
#[track_caller]
fn wait_everywhere(els: &[&MockEl], id: u64) {
    for el in els {
        el.wait_for(&format!("call {id}"), TIMEOUT, |rs: &[Received]| {
            rs.iter().any(|r| r.rpc_id == Some(json!(id)))
        });
    }
}

/// A behaviour answering INVALID to a newPayload whose timestamp is `timestamp`, like a
/// healthy EL to everything else.
fn invalid_at(timestamp: u64) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    let needle = format!(r#""timestamp":"{}""#, quantity(timestamp)).into_bytes();
    move |request| {
        let hit = request.body.windows(needle.len()).any(|w| w == needle.as_slice());
        if hit && request.is("engine_newPayload") {
            reply_status(request, "INVALID")
        } else {
            default_reply(request)
        }
    }
}

// --------------------------------------------------------------------------- best beacon node

/// The real BN's newPayload makes it the best; the intruder's far-future timestamp is logged
/// and ignored; the real BN's next fcU reaches every EL, the intruder's none.
#[track_caller]
fn far_future_timestamp_is_ignored(
    proxy: &Proxy,
    els: &[&MockEl],
    real: Option<&str>,
    intruder: Option<&str>,
) {
    let now = unix_now();
    assert_eq!(status_of(&post_as(proxy, REAL, real, &new_payload(1, now - 12))), "VALID");
    assert_eq!(status_of(&post_as(proxy, REAL, real, &fcu(2, None))), "VALID");
    proxy.wait_log(&format!("following beacon node {REAL}"), TIMEOUT);

    let response = post_as(proxy, INTRUDER, intruder, &new_payload(3, u64::MAX));
    assert_eq!(response.status, 200, "{}", response.text());
    proxy.wait_log(
        &format!("beacon node {INTRUDER} (X-Forwarded-For) sent newPayload with timestamp {}", u64::MAX),
        TIMEOUT,
    );

    assert_eq!(
        status_of(&post_as(proxy, REAL, real, &fcu(4, None))),
        "VALID",
        "the real BN is still the best"
    );
    assert_eq!(post_as(proxy, INTRUDER, intruder, &fcu(5, None)).json(), filtered(5));
    assert_eq!(status_of(&post_as(proxy, REAL, real, &fcu(6, None))), "VALID");
    wait_everywhere(els, 6);
    for el in els {
        assert_eq!(ids(el), [1, 2, 3, 4, 6], "{}: {:?}", el.url(), el.methods());
    }
    assert_eq!(metric(proxy, r#"sync_proxy_best_beacon_candidates_ignored_total{reason="implausible"}"#), 1);
}

#[test]
fn hijack_with_a_far_future_timestamp_fails_without_jwt_secret() {
    let (a, b) = (MockEl::start(), MockEl::start());
    let proxy = start_proxy(&[&a, &b], &["--loglevel", "debug"]);
    far_future_timestamp_is_ignored(&proxy, &[&a, &b], None, None);
}

#[test]
fn hijack_with_a_valid_token_fails_too() {
    let now = unix_now();
    let refused_at = now + 5;
    let (a, b) = (MockEl::with(invalid_at(refused_at)), MockEl::with(invalid_at(refused_at)));
    let file = TempFile::new(&secret_hex(1));
    let proxy = start_proxy(&[&a, &b], &["--jwt-secret", file.arg()]);
    let token = bearer(1, None);
    let token = Some(token.as_str());
    far_future_timestamp_is_ignored(&proxy, &[&a, &b], token, token);

    // A plausible timestamp every EL calls INVALID: the intruder stays behind.
    let response = post_as(&proxy, INTRUDER, token, &new_payload(7, refused_at));
    assert_eq!(status_of(&response), "INVALID");
    proxy.wait_log(&format!("beacon node {INTRUDER} stays behind"), TIMEOUT);
    assert_eq!(status_of(&post_as(&proxy, REAL, token, &fcu(8, None))), "VALID");
    assert_eq!(post_as(&proxy, INTRUDER, token, &fcu(9, None)).json(), filtered(9));
    assert_eq!(metric(&proxy, r#"sync_proxy_best_beacon_candidates_ignored_total{reason="refused"}"#), 1);

    // A plausible timestamp an EL calls VALID is a real switch (so the rule can switch at all).
    assert_eq!(status_of(&post_as(&proxy, INTRUDER, token, &new_payload(10, now + 6))), "VALID");
    proxy.wait_log(&format!("switching beacon node {REAL} -> {INTRUDER} (timestamp {})", now + 6), TIMEOUT);
    assert_eq!(post_as(&proxy, REAL, token, &fcu(11, None)).json(), filtered(11));
    assert_eq!(status_of(&post_as(&proxy, INTRUDER, token, &fcu(12, None))), "VALID");
    wait_everywhere(&[&a, &b], 12);
    for el in [&a, &b] {
        assert_eq!(ids(el), [1, 2, 3, 4, 6, 7, 8, 10, 12], "{}: {:?}", el.url(), el.methods());
    }
}

#[test]
fn syncing_does_not_switch_unless_beacon_switch_is_not_invalid() {
    let now = unix_now();
    for (flag, switches) in [("valid", false), ("not-invalid", true)] {
        let syncing = |r: &Received| reply_status(r, "SYNCING");
        let el = MockEl::with(syncing);
        let proxy = start_proxy(&[&el], &["--beacon-switch", flag]);
        post_as(&proxy, REAL, None, &new_payload(1, now - 12));
        proxy.wait_log(&format!("following beacon node {REAL}"), TIMEOUT);
        post_as(&proxy, INTRUDER, None, &new_payload(2, now));
        post_as(&proxy, INTRUDER, None, &fcu(3, None));
        // The best BN's fcU is forwarded either way: once it arrived, the intruder's was
        // forwarded before it or not at all.
        post_as(&proxy, if switches { INTRUDER } else { REAL }, None, &fcu(4, None));
        wait_everywhere(&[&el], 4);
        let expected: &[u64] = if switches { &[1, 2, 3, 4] } else { &[1, 2, 4] };
        assert_eq!(ids(&el), expected, "--beacon-switch {flag}: {:?}", el.methods());
        if !switches {
            let text = format!("beacon node {INTRUDER} stays behind: {} answered SYNCING", el.url());
            proxy.wait_log(&text, TIMEOUT);
        }
    }
}

// ------------------------------------------------------------------------------------ batches

#[test]
fn a_batch_with_an_engine_call_is_refused_and_reaches_no_el() {
    let (a, b) = (MockEl::start(), MockEl::start());
    let proxy = start_proxy(&[&a, &b], &[]);
    post_as(&proxy, REAL, None, &new_payload(1, 100));
    proxy.wait_log(&format!("following beacon node {REAL}"), TIMEOUT);

    let fcu_batch = format!("[{}]", String::from_utf8(fcu(7, None)).expect("JSON"));
    let response = post_as(&proxy, INTRUDER, None, fcu_batch.as_bytes());
    assert_eq!(response.status, 200);
    let answer = response.json();
    assert_eq!(answer[0]["id"], 7, "{answer}");
    assert_eq!(answer[0]["error"]["code"], -32600, "{answer}");
    assert_eq!(answer.as_array().map(Vec::len), Some(1), "{answer}");

    // Mixed: every call gets its error, with its id.
    let mixed = br#"[{"jsonrpc":"2.0","id":"x","method":"eth_chainId","params":[]},
                     {"jsonrpc":"2.0","id":8,"method":"engine_newPayloadV3","params":[{}]}]"#;
    let answer = post_as(&proxy, REAL, None, mixed).json();
    assert_eq!((answer[0]["id"].clone(), answer[0]["error"]["code"].clone()), (json!("x"), json!(-32600)));
    assert_eq!((answer[1]["id"].clone(), answer[1]["error"]["code"].clone()), (json!(8), json!(-32600)));

    // A non-engine batch is still forwarded, to the primary.
    let plain = br#"[{"jsonrpc":"2.0","id":9,"method":"eth_chainId","params":[]}]"#;
    assert_eq!(post_as(&proxy, INTRUDER, None, plain).status, 200);
    a.wait_for("the plain batch", TIMEOUT, |rs: &[Received]| rs.iter().any(|r| r.body == plain));

    // A call after them all reached both ELs: nothing of the refused batches did.
    post_as(&proxy, REAL, None, &fcu(10, None));
    wait_everywhere(&[&a, &b], 10);
    assert_eq!(ids(&a), [1, u64::MAX, 10], "{:?}", a.methods());
    assert_eq!(ids(&b), [1, 10], "{:?}", b.methods());
    assert_eq!(metric(&proxy, r#"sync_proxy_requests_total{method="nonEngine",outcome="refused"}"#), 2);
}

// ------------------------------------------------------------------------------ BN identities

/// `{"bn-a": <secret 1>, "bn-b": <secret 2>}`.
fn beacon_secrets() -> TempFile {
    TempFile::new(&format!(r#"{{"bn-a": "{}", "bn-b": "0x{}"}}"#, secret_hex(1), secret_hex(2)))
}

/// `/status`'s BNs as (id, source) pairs.
fn status_beacons(proxy: &Proxy) -> Vec<(String, String)> {
    let mut bn = proxy.bn();
    bn.send_raw(b"GET /status HTTP/1.1\r\nHost: proxy\r\n\r\n");
    let doc = bn.read_response().json();
    let mut out: Vec<(String, String)> = doc["beacons"]
        .as_array()
        .expect("beacons")
        .iter()
        .map(|b| {
            (b["id"].as_str().unwrap_or("?").to_string(), b["source"].as_str().unwrap_or("?").to_string())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn two_beacon_nodes_on_one_ip_are_told_apart_by_id_claim() {
    let el = MockEl::start();
    let secrets = beacon_secrets();
    let proxy = start_proxy(&[&el], &["--beacon-jwt-secrets", secrets.arg()]);
    let (a, b) = (bearer(1, Some("bn-a")), bearer(2, Some("bn-b")));
    let post = |auth: &str, body: &[u8]| proxy.bn().post_with(&[("Authorization", auth)], body);

    assert_eq!(status_of(&post(&a, &new_payload(1, 100))), "VALID");
    proxy.wait_log("following beacon node bn-a", TIMEOUT);
    assert_eq!(status_of(&post(&b, &new_payload(2, 90))), "VALID");
    // Same IP, another BN: B is not the best, so its fcU is answered here.
    assert_eq!(post(&b, &fcu(3, None)).json(), filtered(3));
    assert_eq!(status_of(&post(&a, &fcu(4, None))), "VALID");

    // A's secret cannot speak for B, nor a token without any id or path (no --jwt-secret).
    let forged = bearer(1, Some("bn-b"));
    let response = post(&forged, &fcu(5, None));
    assert_eq!(response.status, 401, "{}", response.text());
    assert!(response.text().contains("bn-b"), "{}", response.text());
    assert_eq!(post(&bearer(1, None), &fcu(6, None)).status, 401);

    let claim = "id claim".to_string();
    assert_eq!(status_beacons(&proxy), [("bn-a".into(), claim.clone()), ("bn-b".into(), claim)]);
    post(&a, &fcu(7, None));
    el.wait_for("call 7", TIMEOUT, |rs: &[Received]| rs.iter().any(|r| r.rpc_id == Some(json!(7))));
    assert_eq!(ids(&el), [1, 2, 4, 7], "{:?}", el.methods());
}

#[test]
fn two_beacon_nodes_on_one_ip_are_told_apart_by_path() {
    let el = MockEl::start();
    let secrets = beacon_secrets();
    let proxy = start_proxy(&[&el], &["--beacon-jwt-secrets", secrets.arg()]);
    let (a, b) = (bearer(1, None), bearer(2, None));

    assert_eq!(status_of(&post_to(&proxy, "/bn-a", &a, &new_payload(1, 100))), "VALID");
    proxy.wait_log("following beacon node bn-a", TIMEOUT);
    assert_eq!(status_of(&post_to(&proxy, "/bn-b", &b, &new_payload(2, 90))), "VALID");
    assert_eq!(post_to(&proxy, "/bn-b/", &b, &fcu(3, None)).json(), filtered(3));
    // A's secret on B's path is refused.
    assert_eq!(post_to(&proxy, "/bn-b", &a, &fcu(4, None)).status, 401);

    let path = "path".to_string();
    assert_eq!(status_beacons(&proxy), [("bn-a".into(), path.clone()), ("bn-b".into(), path)]);
    post_to(&proxy, "/bn-a", &a, &fcu(5, None));
    el.wait_for("call 5", TIMEOUT, |rs: &[Received]| rs.iter().any(|r| r.rpc_id == Some(json!(5))));
    assert_eq!(ids(&el), [1, 2, 5], "{:?}", el.methods());
}

// ---------------------------------------------------------------------- --answer-policy safe

/// A newPayload answer with `status`, its `latestValidHash` naming EL `tag` (so the BN's
/// answer says whose it is), after `delay_ms`.
fn payload_answer(request: &Received, status: &str, tag: u64, delay_ms: u64) -> Reply {
    let result = json!({ "status": status, "latestValidHash": hash(tag), "validationError": null });
    rpc_result(request, result).delayed(Duration::from_millis(delay_ms))
}

/// Three ELs answering `statuses` (in list order) with each arrival order of their answers:
/// the BN's answer is the same every time.
#[track_caller]
fn same_answer_in_every_order(statuses: [&'static str; 3], expected: impl Fn(u64) -> Value) {
    let els = [MockEl::start(), MockEl::start(), MockEl::start()];
    let refs: Vec<&dyn crate::routing::El> = els.iter().map(|e| e as &dyn crate::routing::El).collect();
    // A wait far longer than the delays: every answer is in, whatever the machine's load.
    let proxy = start_proxy(&refs, &["--answer-policy", "safe", "--answer-wait", "4000"]);
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for (id, order) in (1..).zip(orders) {
        for (i, el) in els.iter().enumerate() {
            let (status, tag, rank) = (statuses[i], u64::from(el.addr().port()), order[i]);
            el.set_behaviour(move |r| payload_answer(r, status, tag, rank * 60));
        }
        let answer = proxy.bn().post(&new_payload(id, 1000 + id)).json();
        assert_eq!(answer, expected(id), "{statuses:?} arriving in order {order:?}");
    }
}

#[test]
fn safe_answers_syncing_on_a_valid_invalid_split_whatever_the_arrival_order() {
    let syncing = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id,
               "result": {"status": "SYNCING", "latestValidHash": null, "validationError": null}})
    };
    same_answer_in_every_order(["VALID", "INVALID", "SYNCING"], syncing);
    same_answer_in_every_order(["SYNCING", "INVALID_BLOCK_HASH", "VALID"], syncing);
}

#[test]
fn safe_split_is_warned_and_counted() {
    let (a, b) = (MockEl::start(), MockEl::start());
    a.set_behaviour(|r| payload_answer(r, "VALID", 1, 0));
    b.set_behaviour(|r| payload_answer(r, "INVALID", 2, 0));
    let proxy = start_proxy(&[&a, &b], &["--answer-policy", "safe"]);
    let answer = proxy.bn().post(&new_payload(7, 100)).json();
    assert_eq!(answer["result"]["status"], "SYNCING", "{answer}");
    assert_eq!(answer["id"], 7);
    let warning =
        format!("split on engine_newPayloadV3 id 7: VALID from {}, INVALID from {}", a.url(), b.url());
    proxy.wait_log(&warning, TIMEOUT);
    assert_eq!(metric(&proxy, "sync_proxy_answer_policy_syncing_total"), 1);
    // A forkchoiceUpdated split gets the fcU SYNCING shape, with a null payloadId.
    a.set_behaviour(|r| reply_status(r, "VALID"));
    b.set_behaviour(|r| reply_status(r, "INVALID"));
    assert_eq!(proxy.bn().post(&fcu(8, Some(100))).json(), filtered(8));
}

#[test]
fn safe_relays_the_first_agreeing_el_in_list_order() {
    let els = [MockEl::start(), MockEl::start(), MockEl::start()];
    let tag = |i: usize| u64::from(els[i].addr().port());
    let expected = |id: u64| {
        let result = json!({ "status": "VALID", "latestValidHash": hash(tag(1)), "validationError": null });
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    };
    // The second EL is the first VALID in list order; the third's VALID comes first.
    let statuses = ["SYNCING", "VALID", "VALID"];
    let refs: Vec<&dyn crate::routing::El> = els.iter().map(|e| e as &dyn crate::routing::El).collect();
    let proxy = start_proxy(&refs, &["--answer-policy", "safe", "--answer-wait", "4000"]);
    for (i, el) in els.iter().enumerate() {
        let (status, tag, delay) = (statuses[i], tag(i), [0, 120, 0][i]);
        el.set_behaviour(move |r| payload_answer(r, status, tag, delay));
    }
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).json(), expected(1));
}

#[test]
fn safe_answers_within_the_wait_when_an_el_never_answers() {
    let (a, b, hung) = (MockEl::start(), MockEl::start(), MockEl::with(|_| Reply::Hang));
    let proxy = start_proxy(&[&a, &b, &hung], &["--answer-policy", "safe", "--answer-wait", "300"]);
    // newPayload's own timeout is 8 s, longer than the BN's read timeout here: an answer at
    // all shows the wait, not the hung EL, ended the gathering.
    let mut bn = proxy.bn();
    bn.set_timeout(TIMEOUT);
    let answer = bn.post(&new_payload(1, 100));
    assert_eq!(answer.json()["result"]["status"], "VALID", "{}", answer.text());
    hung.wait_requests(1, TIMEOUT);
}

// ------------------------------------------------------------------ --payload-choice best-value

/// `0x` and 16 hex digits.
fn payload_id(n: u64) -> String {
    format!("0x{n:016x}")
}

/// An EL that builds under payloadId `n` and whose getPayload answer is `get_payload`'s, after
/// `delay_ms`; its fcU answers are VALID.
fn builder(n: u64, get_payload: fn(&Received, u64) -> Reply) -> MockEl {
    MockEl::with(move |r| {
        if r.is("engine_forkchoiceUpdated") {
            let status = json!({"status": "VALID", "latestValidHash": null, "validationError": null});
            rpc_result(r, json!({"payloadStatus": status, "payloadId": payload_id(n)}))
        } else if r.is("engine_getPayload") {
            get_payload(r, n)
        } else {
            default_reply(r)
        }
    })
}

/// A getPayload answer worth `n` ETH, its block hash naming `n`.
fn worth(request: &Received, n: u64) -> Reply {
    let value = u128::from(n) * 1_000_000_000_000_000_000;
    let result = json!({"executionPayload": {"blockHash": hash(n)}, "blockValue": format!("0x{value:x}"),
                        "shouldOverrideBuilder": false});
    rpc_result(request, result)
}

#[test]
fn best_value_relays_the_highest_block_value_in_time() {
    let primary = builder(1, worth);
    let richer = builder(2, worth);
    // Richest, but slower than getPayload's own timeout (and so than the 400 ms choice).
    let late = builder(5, |r, n| worth(r, n).delayed(Duration::from_secs(3)));
    let failing = builder(4, |r, _| crate::util::rpc_error(r, -38001, "Unknown payload"));
    let proxy = start_proxy(&[&primary, &richer, &late, &failing], &["--payload-choice", "best-value"]);
    let mut bn = proxy.bn();

    let answer = bn.post(&fcu(1, Some(100))).json();
    assert_eq!(answer["result"]["payloadId"], payload_id(1), "the BN holds the primary's id: {answer}");
    // Ordered calls go to each EL one at a time: once a newPayload reached every EL, each
    // one's fcU answer (its own payloadId) is in.
    bn.post(&new_payload(3, 101));
    wait_everywhere(&[&primary, &richer, &late, &failing], 3);
    let get = crate::util::rpc_body(2, "engine_getPayloadV4", json!([payload_id(1)]));
    let answer = bn.post(&get);
    let expected = r#"{"jsonrpc":"2.0","id":2,"result":{"blockValue":"0x1bc16d674ec80000","executionPayload":{"blockHash":"HASH"},"shouldOverrideBuilder":false}}"#
        .replace("HASH", hash(2).trim_matches('"'));
    assert_eq!(answer.json(), serde_json::from_str::<Value>(&expected).expect("JSON"), "{}", answer.text());

    // Each EL was asked for its own build.
    for (el, n) in [(&primary, 1), (&richer, 2), (&late, 5), (&failing, 4)] {
        let asked = el
            .wait_for("getPayload", TIMEOUT, |rs: &[Received]| rs.iter().any(|r| r.is("engine_getPayload")));
        let request = asked.iter().find(|r| r.is("engine_getPayload")).expect("getPayload");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON");
        assert_eq!(
            (body["id"].clone(), body["params"].clone()),
            (json!(2), json!([payload_id(n)])),
            "{}",
            el.url()
        );
    }
    proxy.wait_log(
        &format!(
            "payload built by {}, value 2000000000000000000 wei, +1000000000000000000 wei",
            richer.url()
        ),
        TIMEOUT,
    );
    assert_eq!(metric(&proxy, &format!("sync_proxy_payload_choice_total{{el=\"{}\"}}", richer.url())), 1);
}

#[test]
fn beacon_secrets_are_read_again_on_sighup() {
    let el = MockEl::start();
    let secrets = beacon_secrets();
    let proxy = start_proxy(&[&el], &["--beacon-jwt-secrets", secrets.arg()]);
    let post =
        |auth: &str, id: u64| proxy.bn().post_with(&[("Authorization", auth)], &new_payload(id, 100 + id));
    assert_eq!(post(&bearer(1, Some("bn-a")), 1).status, 200);

    // bn-a's secret rotates to secret 3.
    std::fs::write(secrets.arg(), format!(r#"{{"bn-a": "{}"}}"#, secret_hex(3))).expect("rewrite the file");
    let mark = proxy.log_mark();
    proxy.signal("HUP");
    proxy.wait_log_from(mark, "secrets changed", TIMEOUT);
    assert_eq!(post(&bearer(1, Some("bn-a")), 2).status, 401, "the old secret no longer verifies");
    assert_eq!(post(&bearer(3, Some("bn-a")), 3).status, 200);
    assert_eq!(
        post(&bearer(2, Some("bn-b")), 4).status,
        401,
        "bn-b's entry is gone, and there is no --jwt-secret"
    );
}
