//! Calls with large answers (issue 15): while the beacon node's answer to a getPayload is still
//! being written, the other execution clients' copies wait (`core::hold`), so their answers, as
//! large, are not read at the same time.
//!
//! Tests named after a bug (regression_…) guard fixes for bugs found here.

use std::time::Duration;

use serde_json::json;

use crate::routing::start_proxy;
use crate::util::{rpc_body, rpc_result, MockEl, Reply, TIMEOUT};

/// Larger than what loopback's socket buffers take (a few MiB each way), so a beacon node that
/// reads nothing keeps the proxy from writing it whole.
const BIG: usize = 32 << 20;

#[test]
fn regression_a_secondarys_get_payload_waits_while_the_bns_large_answer_is_written() {
    // The secondary was asked as soon as the primary had answered, so its answer (13 MB with
    // 48 blobs) was read while the primary's was still being written to the beacon node.
    let answer = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{}"}}"#, "a".repeat(BIG)).into_bytes();
    let primary = MockEl::with(move |_| Reply::json(answer.clone()));
    let secondary = MockEl::with(|request| rpc_result(request, json!("secondary")));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &rpc_body(1, "engine_getPayloadV5", json!(["0x0000000000000001"])));
    let asked = primary.wait_requests(1, TIMEOUT)[0].at;
    // The beacon node reads nothing: its answer cannot be written whole, and the secondary's
    // copy goes only when the hold's bound (500 ms after the answer was queued) has passed.
    let copied = secondary.wait_requests(1, TIMEOUT)[0].at;
    let waited = copied.duration_since(asked);
    assert!(waited >= Duration::from_millis(300), "the secondary was asked {waited:?} after the primary");
    assert!(waited < Duration::from_secs(3), "held {waited:?}: longer than the hold's bound");
    let response = bn.read_response();
    assert_eq!((response.status, response.body.len()), (200, BIG + 36), "the primary's answer, whole");
}
