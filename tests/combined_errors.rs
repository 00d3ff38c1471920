//! Combined answers when execution clients answer JSON-RPC errors (issue 16, part 1).
//!
//! `engine_getClientVersionV1` (concatenated) and `engine_exchangeCapabilities` (intersected)
//! are the calls whose answer the proxy builds from several ELs. An EL that lacks the method
//! answers with a JSON-RPC error — a real EthereumJS 0.10.5 answers HTTP 200
//! `{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"Method not found"}}` to Lodestar's
//! `engine_getClientVersionV1` (tests/fixtures/lodestar-1.22-deneb/getClientVersionV1.json) —
//! and that EL has *answered*: the results of the ELs that returned one are combined; if none
//! did, the first EL in list order that answered is relayed byte for byte (status,
//! Content-Type, body); only when no EL answered at all does the BN get the proxy's 502. The
//! errors are counted per EL (`sync_proxy_el_rpc_errors_total`), the call is not `failed`, and
//! nothing is logged as "no execution client answered".

use serde_json::{json, Value};

use crate::routing::{count_logs, log_barrier, metric, start_proxy, DeadEl, El};
use crate::util::{
    default_reply, rpc_body_with_id, rpc_error, rpc_result, sample, KeyOrder, MockEl, Proxy, Received, Reply,
    TIMEOUT,
};

const CLIENT_VERSION: &str = "engine_getClientVersionV1";
const CAPABILITIES: &str = "engine_exchangeCapabilities";

/// The Content-Type of the EthereumJS-like mock's error answers: with a charset parameter,
/// unlike the other mocks' `application/json`, so a test sees whose head was relayed.
const ETHEREUMJS_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The capabilities every test's beacon node offers.
fn offered() -> Value {
    json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3", "engine_getPayloadV3", "engine_getBlobsV1"])
}

/// Lodestar 1.22's `engine_getClientVersionV1` request as captured (its own version as the
/// parameter), in Lodestar's key order, with `id`.
fn lodestar_client_version(id: u64) -> Vec<u8> {
    let capture: Value = serde_json::from_slice(&sample("lodestar-1.22-deneb/getClientVersionV1.json"))
        .expect("capture is JSON");
    rpc_body_with_id(&json!(id), CLIENT_VERSION, capture["request"]["params"].clone(), KeyOrder::Lodestar)
}

fn exchange_capabilities(id: u64) -> Vec<u8> {
    rpc_body_with_id(&json!(id), CAPABILITIES, json!([offered()]), KeyOrder::Lodestar)
}

/// Whether a request is one of the calls whose answer is combined.
fn is_combined(request: &Received) -> bool {
    request.is(CLIENT_VERSION) || request.is(CAPABILITIES)
}

/// The exact bytes EthereumJS 0.10.5 answers to a method it lacks (the captured error, with
/// the request's raw id).
fn ethereumjs_error_body(request: &Received) -> Vec<u8> {
    let capture: Value = serde_json::from_slice(&sample("lodestar-1.22-deneb/getClientVersionV1.json"))
        .expect("capture is JSON");
    let error = &capture["response"]["error"];
    assert_eq!(error["code"], -32601, "the capture is EthereumJS's Method not found");
    let id = request.rpc_id_raw.as_deref().unwrap_or("null");
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into_bytes()
}

/// An EL like EthereumJS: HTTP 200 with a -32601 error to the combined calls (written with
/// its own Content-Type), a healthy EL's answer to the rest.
fn ethereumjs_lacking_them(request: &Received) -> Reply {
    if !is_combined(request) {
        return default_reply(request);
    }
    let body = ethereumjs_error_body(request);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {ETHEREUMJS_CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    Reply::Garbage([head.into_bytes(), body].concat())
}

/// An EL like geth without the method: its own -32601 wording, Content-Type `application/json`.
fn geth_lacking_them(request: &Received) -> Reply {
    match request.rpc_method.as_deref() {
        Some(method) if is_combined(request) => {
            rpc_error(request, -32601, &format!("the method {method} does not exist/is not available"))
        }
        _ => default_reply(request),
    }
}

/// The exact body `geth_lacking_them` answers to `method` with raw id `id`.
fn geth_error_body(method: &str, id: u64) -> Vec<u8> {
    let message = format!("the method {method} does not exist/is not available");
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{}}}"#, json!({ "code": -32601, "message": message }))
        .into_bytes()
}

/// An EL that supports both calls: its version is `code`, and it supports `supported` of the
/// offered capabilities.
fn answering(code: &'static str, supported: Value) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    move |request| {
        if request.is(CLIENT_VERSION) {
            rpc_result(request, json!([version(code)]))
        } else if request.is(CAPABILITIES) {
            rpc_result(request, supported.clone())
        } else {
            default_reply(request)
        }
    }
}

fn version(code: &str) -> Value {
    json!({ "code": code, "name": code.to_lowercase(), "version": "1.0.0", "commit": "0x0badf00d" })
}

/// `sync_proxy_el_rpc_errors_total` of one EL.
fn rpc_errors(proxy: &Proxy, el: &dyn El) -> u64 {
    metric(proxy, &format!(r#"sync_proxy_el_rpc_errors_total{{el="{}"}}"#, el.url()))
}

/// Calls of a method family answered with the proxy's own 502.
fn failed(proxy: &Proxy, family: &str) -> u64 {
    metric(proxy, &format!(r#"sync_proxy_requests_total{{method="{family}",outcome="failed"}}"#))
}

#[test]
fn regression_every_el_answering_method_not_found_to_a_combined_call_got_a_502() {
    let primary = MockEl::with(ethereumjs_lacking_them);
    let secondary = MockEl::with(geth_lacking_them);
    let proxy = start_proxy(&[&primary, &secondary], &["--loglevel", "debug"]);
    for body in [lodestar_client_version(2), exchange_capabilities(3)] {
        let response = proxy.bn().post(&body);
        let received = primary.received();
        let asked = received.last().expect("the primary got the call");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("content-type"), Some(ETHEREUMJS_CONTENT_TYPE), "the primary's head");
        assert!(response.body == ethereumjs_error_body(asked), "not the primary's body: {}", response.text());
    }
    proxy.wait_log(&format!("relaying {}'s answer", primary.url()), TIMEOUT);
    log_barrier(&proxy, 9);
    assert_eq!(count_logs(&proxy, "no execution client answered with a result"), 2);
    let warned: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("WARN") && (l.contains(CLIENT_VERSION) || l.contains(CAPABILITIES)))
        .collect();
    assert!(warned.is_empty(), "an EL that lacks a method is no warning: {warned:?}");
    for family in ["getClientVersion", "exchangeCapabilities"] {
        assert_eq!(failed(&proxy, family), 0, "{family} did not fail");
    }
    assert_eq!((rpc_errors(&proxy, &primary), rpc_errors(&proxy, &secondary)), (2, 2));
}

#[test]
fn a_primary_answering_method_not_found_is_left_out_of_the_combined_answer() {
    let primary = MockEl::with(ethereumjs_lacking_them);
    let second = MockEl::with(answering("GE", json!(["engine_getPayloadV3", "engine_newPayloadV3"])));
    let third = MockEl::with(answering(
        "NM",
        json!(["engine_newPayloadV3", "engine_getPayloadV3", "engine_getBlobsV1"]),
    ));
    let proxy = start_proxy(&[&primary, &second, &third], &[]);
    let response = proxy.bn().post(&lodestar_client_version(2));
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({ "jsonrpc": "2.0", "id": 2, "result": [version("GE"), version("NM")] })
    );
    let response = proxy.bn().post(&exchange_capabilities(3));
    // The intersection of the ELs that answered with a result, in the second's order.
    let expected = json!(["engine_getPayloadV3", "engine_newPayloadV3"]);
    assert_eq!(response.json(), json!({ "jsonrpc": "2.0", "id": 3, "result": expected }));
    assert_eq!(rpc_errors(&proxy, &primary), 2);
    assert_eq!(rpc_errors(&proxy, &second) + rpc_errors(&proxy, &third), 0);
}

#[test]
fn a_secondary_answering_method_not_found_is_left_out_of_the_combined_answer() {
    let primary = MockEl::with(answering("GE", json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3"])));
    let secondary = MockEl::with(geth_lacking_them);
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let response = proxy.bn().post(&lodestar_client_version(4));
    assert_eq!(response.json(), json!({ "jsonrpc": "2.0", "id": 4, "result": [version("GE")] }));
    let response = proxy.bn().post(&exchange_capabilities(5));
    let expected = json!(["engine_newPayloadV3", "engine_forkchoiceUpdatedV3"]);
    assert_eq!(response.json(), json!({ "jsonrpc": "2.0", "id": 5, "result": expected }));
    assert_eq!((rpc_errors(&proxy, &primary), rpc_errors(&proxy, &secondary)), (0, 2));
}

#[test]
fn regression_a_down_primary_and_a_secondary_answering_method_not_found_got_a_502() {
    let primary = DeadEl::new();
    let secondary = MockEl::with(geth_lacking_them);
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    for (id, body, method) in
        [(6, lodestar_client_version(6), CLIENT_VERSION), (7, exchange_capabilities(7), CAPABILITIES)]
    {
        let response = proxy.bn().post(&body);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert!(
            response.body == geth_error_body(method, id),
            "not the secondary's body: {}",
            response.text()
        );
    }
    assert_eq!(failed(&proxy, "getClientVersion") + failed(&proxy, "exchangeCapabilities"), 0);
    assert_eq!(rpc_errors(&proxy, &secondary), 2);
}

#[test]
fn a_combined_call_no_el_answered_is_still_a_502() {
    let (primary, secondary) = (DeadEl::new(), DeadEl::new());
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    for (id, body, family) in [
        (8, lodestar_client_version(8), "getClientVersion"),
        (9, exchange_capabilities(9), "exchangeCapabilities"),
    ] {
        let response = proxy.bn().post(&body);
        assert_eq!(response.status, 502);
        let expected = json!({
            "jsonrpc": "2.0", "id": id, "error": { "code": -32603, "message": "no execution client answered" }
        });
        assert_eq!(response.json(), expected);
        assert_eq!(failed(&proxy, family), 1);
    }
    proxy.wait_log("no execution client answered", TIMEOUT);
}
