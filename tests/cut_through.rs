//! Cut-through requests (issue 15): a large newPayload body goes to the primary EL as it
//! arrives from the beacon node, with its last byte held until the whole body has validated.
//! The mock ELs count bytes as they arrive, so a test can see the primary receive a body the
//! beacon node has only half sent, and a reset of a streamed request that must never arrive
//! whole.

use crate::payload::{Fork, NewPayload};
use serde_json::json;

use crate::util::{
    default_reply, fcu, new_payload, post_request, rpc_body, Bn, Launch, MockEl, Proxy, Reply, TIMEOUT,
};

/// A body well above `core::cut::MIN_BODY`, so that it streams.
const SIZE: usize = 1 << 20;

struct Setup {
    primary: MockEl,
    secondary: MockEl,
    proxy: Proxy,
}

/// Two ELs behind the proxy, each with a kept-alive connection from a first newPayload.
fn setup() -> Setup {
    let Setup { primary, secondary, proxy } = two_els(Launch::proxy());
    let answer = proxy.bn().post(&new_payload(1, 1_700_000_000));
    assert_eq!(answer.status, 200, "{}", answer.text());
    primary.wait_requests(1, TIMEOUT);
    secondary.wait_requests(1, TIMEOUT);
    Setup { primary, secondary, proxy }
}

/// A large newPayload with `id`, as the bytes of a whole HTTP request, and where its body starts.
fn large_request(proxy: &Proxy, id: u64, corrupt: Option<usize>) -> (Vec<u8>, Vec<u8>, usize) {
    let mut body = NewPayload::new(Fork::Deneb, SIZE).seed(id).id(id).slot(id).body();
    if let Some(at) = corrupt {
        // A control character is invalid anywhere in JSON, inside a string or not.
        body[at] = 0x01;
    }
    let bytes = post_request(&proxy.addr().to_string(), &[], &body);
    let head = bytes.len() - body.len();
    (bytes, body, head)
}

fn has_id(primary: &MockEl, id: u64) -> bool {
    primary.received().iter().any(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(id))
}

#[test]
fn the_primary_gets_a_new_payload_body_before_the_beacon_node_sent_all_of_it() {
    let s = setup();
    let (bytes, body, head) = large_request(&s.proxy, 2, None);
    let half = head + body.len() / 2;
    let before = s.primary.bytes_read();
    let mut bn = s.proxy.bn();
    bn.send_raw(&bytes[..half]);
    // Most of the half sent reaches the primary while the beacon node still holds the rest.
    s.primary.wait_bytes(before + body.len() / 4, TIMEOUT);
    assert!(!has_id(&s.primary, 2), "the primary cannot have the whole request yet");
    bn.send_raw(&bytes[half..]);
    let answer = bn.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    for el in [&s.primary, &s.secondary] {
        let got = el.wait_for("the large newPayload", TIMEOUT, |r| r.len() >= 2);
        assert_eq!(got[1].body, body, "the body arrives byte for byte");
    }
}

#[test]
fn a_malformed_streamed_body_resets_the_primary_reaches_no_one_and_the_next_call_goes_through() {
    let s = setup();
    let (bytes, body, head) = large_request(&s.proxy, 2, Some(SIZE * 3 / 4));
    let half = head + body.len() / 2;
    let before = s.primary.bytes_read();
    let mut bn = s.proxy.bn();
    bn.send_raw(&bytes[..half]);
    s.primary.wait_bytes(before + body.len() / 4, TIMEOUT);
    bn.send_raw(&bytes[half..]);
    let answer = bn.read_response();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("parse error"), "{}", answer.text());
    s.primary.wait_resets(1, TIMEOUT);
    // The next call reaches both ELs: the primary is not down and its ordered lane moved on.
    let answer = bn.post(&new_payload(3, 1_700_000_012));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("VALID"), "{}", answer.text());
    for el in [&s.primary, &s.secondary] {
        el.wait_for("the next newPayload", TIMEOUT, |r| {
            r.iter().any(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(3))
        });
        assert!(!has_id(el, 2), "no EL got the malformed request whole");
    }
    assert_eq!(s.secondary.received().len(), 2, "the secondary got nothing of it");
}

#[test]
fn a_beacon_node_that_leaves_mid_body_has_the_streamed_part_reset_at_the_primary() {
    let s = setup();
    let (bytes, body, head) = large_request(&s.proxy, 2, None);
    let half = head + body.len() / 2;
    let before = s.primary.bytes_read();
    let mut bn: Bn = s.proxy.bn();
    bn.send_raw(&bytes[..half]);
    s.primary.wait_bytes(before + body.len() / 4, TIMEOUT);
    drop(bn);
    s.primary.wait_resets(1, TIMEOUT);
    let answer = s.proxy.bn().post(&new_payload(3, 1_700_000_012));
    assert_eq!(answer.status, 200, "{}", answer.text());
    for el in [&s.primary, &s.secondary] {
        el.wait_for("the next newPayload", TIMEOUT, |r| {
            r.iter().any(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(3))
        });
        assert!(!has_id(el, 2), "no EL got the abandoned request");
    }
}

#[test]
fn an_ordered_call_whole_before_a_streaming_one_goes_first_at_every_el() {
    let s = setup();
    let (bytes, body, head) = large_request(&s.proxy, 2, None);
    let half = head + body.len() / 2;
    let before = s.primary.bytes_read();
    let mut streaming = s.proxy.bn();
    streaming.send_raw(&bytes[..half]);
    s.primary.wait_bytes(before + body.len() / 4, TIMEOUT);
    // Another connection's forkchoiceUpdated is whole first: it is the first of the two
    // everywhere, so the primary's partial newPayload is reset to let it pass.
    let answer = s.proxy.bn().post(&fcu(10, None));
    assert_eq!(answer.status, 200, "{}", answer.text());
    s.primary.wait_resets(1, TIMEOUT);
    streaming.send_raw(&bytes[half..]);
    let answer = streaming.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    for el in [&s.primary, &s.secondary] {
        let got = el.wait_for("both calls", TIMEOUT, |r| r.len() >= 3);
        let ids: Vec<Option<u64>> = got.iter().map(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64())).collect();
        assert_eq!(ids, [Some(1), Some(10), Some(2)], "the same order at every EL");
        assert_eq!(got[2].body, body);
    }
}

/// Two ELs behind a proxy started by `launch`, which has not yet connected to either.
fn two_els(launch: Launch) -> Setup {
    let primary = MockEl::start();
    let secondary = MockEl::start();
    let builders = format!("{},{}", primary.url(), secondary.url());
    let proxy = launch.args(&["--builders", &builders]).start();
    Setup { primary, secondary, proxy }
}

/// Two ELs behind a fresh proxy that has not yet connected to either.
fn fresh() -> Setup {
    two_els(Launch::proxy())
}

/// Sends the first half of `bytes` (a request whose body starts at `head`), waits until the
/// primary has a quarter of the body while the beacon node still holds the rest, then sends
/// the rest and checks that both ELs get the body byte for byte.
fn streams_before_the_body_is_whole(s: &Setup, bn: &mut Bn, bytes: &[u8], body: &[u8], head: usize, id: u64) {
    let half = head + body.len() / 2;
    let before = s.primary.bytes_read();
    bn.send_raw(&bytes[..half]);
    s.primary.wait_bytes(before + body.len() / 4, TIMEOUT);
    assert!(!has_id(&s.primary, id), "the primary cannot have the whole request yet");
    bn.send_raw(&bytes[half..]);
    let answer = bn.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("VALID"), "{}", answer.text());
    for el in [&s.primary, &s.secondary] {
        let got = el.wait_for("the large newPayload", TIMEOUT, |r| {
            r.iter().any(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(id))
        });
        let got = got.iter().find(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(id));
        assert_eq!(got.map(|r| &r.body[..]), Some(body), "the body arrives byte for byte");
    }
}

#[test]
fn the_first_call_on_a_fresh_proxy_streams_on_a_connection_opened_for_it() {
    let s = fresh();
    let (bytes, body, head) = large_request(&s.proxy, 2, None);
    let mut bn = s.proxy.bn();
    streams_before_the_body_is_whole(&s, &mut bn, &bytes, &body, head, 2);
    assert_eq!(s.primary.connections(), 1, "one connection, opened for the stream and kept");
}

#[test]
fn a_call_arriving_while_the_primarys_idle_connection_is_busy_streams_on_a_new_one() {
    let s = setup();
    // The primary's only kept-alive connection takes a getPayload that it does not answer yet.
    s.primary.set_behaviour(|r| if r.is("engine_getPayload") { Reply::Hang } else { default_reply(r) });
    let mut getter = s.proxy.bn();
    getter.send_post(&[], &rpc_body(5, "engine_getPayloadV4", json!(["0x0000000000000001"])));
    s.primary.wait_for("the getPayload", TIMEOUT, |r| r.iter().any(|r| r.is("engine_getPayload")));
    assert_eq!(s.primary.connections(), 1);
    let (bytes, body, head) = large_request(&s.proxy, 2, None);
    let mut bn = s.proxy.bn();
    streams_before_the_body_is_whole(&s, &mut bn, &bytes, &body, head, 2);
    assert_eq!(s.primary.connections(), 2, "the stream had a connection of its own");
}

#[test]
fn a_primary_that_refuses_the_streams_connection_gets_the_call_the_usual_way() {
    let mut s = fresh();
    s.primary.stop();
    let (bytes, body, head) = large_request(&s.proxy, 2, None);
    let half = head + body.len() / 2;
    let mut bn = s.proxy.bn();
    bn.send_raw(&bytes[..half]);
    // The stream's connection is tried (and refused) before the body is whole.
    s.proxy.wait_log("is down", TIMEOUT);
    bn.send_raw(&bytes[half..]);
    let answer = bn.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("VALID"), "the secondary answers: {}", answer.text());
    // The call waits in the primary's backlog and reaches it whole once it is back.
    s.primary.restart();
    let got = s.primary.wait_for("the backlog", TIMEOUT, |r| !r.is_empty());
    assert_eq!(got[0].body, body, "the body arrives byte for byte");
    assert_eq!(s.secondary.received().len(), 1, "the secondary got it once");
}

/// Large newPayloads one after another on a proxy logging at debug level: the first is read
/// through the read buffer, and once its buffer is free again each next one is read straight
/// into it (`http::RequestReader::room`).
fn setup_in_place() -> Setup {
    two_els(Launch::proxy().env("LOG_LEVEL", "debug"))
}

/// Sends large newPayload `id` whole and waits for both ELs to have it and for a small call
/// after it to reach the secondary: the secondary answered it, so its buffer is free again.
fn large_then_small(s: &Setup, bn: &mut Bn, id: u64) -> Vec<u8> {
    let (bytes, body, _) = large_request(&s.proxy, id, None);
    bn.send_raw(&bytes);
    let answer = bn.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = bn.post(&new_payload(id + 100, 1_700_000_000 + id));
    assert_eq!(answer.status, 200, "{}", answer.text());
    s.secondary.wait_for("the small call after it", TIMEOUT, |r| {
        r.iter().any(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(id + 100))
    });
    body
}

#[test]
fn a_large_body_read_in_place_reaches_every_el_byte_for_byte() {
    let s = setup_in_place();
    let mut bn = s.proxy.bn();
    let first = large_then_small(&s, &mut bn, 1);
    let mark = s.proxy.log_mark();
    let second = large_then_small(&s, &mut bn, 2);
    s.proxy.wait_log_from(mark, "in place", TIMEOUT);
    for el in [&s.primary, &s.secondary] {
        let got = el.wait_requests(4, TIMEOUT);
        assert_eq!(got[0].body, first, "the first, read through the read buffer");
        assert_eq!(got[2].body, second, "the second, read in place over the first's bytes");
    }
}

#[test]
fn a_malformed_body_read_in_place_resets_the_primary_and_reaches_no_one() {
    let s = setup_in_place();
    let mut bn = s.proxy.bn();
    large_then_small(&s, &mut bn, 1);
    let mark = s.proxy.log_mark();
    let (bytes, body, head) = large_request(&s.proxy, 2, Some(SIZE * 3 / 4));
    let half = head + body.len() / 2;
    let before = s.primary.bytes_read();
    bn.send_raw(&bytes[..half]);
    s.proxy.wait_log_from(mark, "in place", TIMEOUT);
    s.primary.wait_bytes(before + body.len() / 4, TIMEOUT);
    bn.send_raw(&bytes[half..]);
    let answer = bn.read_response();
    assert_eq!(answer.status, 400, "{}", answer.text());
    s.primary.wait_resets(1, TIMEOUT);
    let answer = bn.post(&new_payload(3, 1_700_000_012));
    assert_eq!(answer.status, 200, "{}", answer.text());
    for el in [&s.primary, &s.secondary] {
        el.wait_for("the next newPayload", TIMEOUT, |r| {
            r.iter().any(|r| r.rpc_id.as_ref().and_then(|v| v.as_u64()) == Some(3))
        });
        assert!(!has_id(el, 2), "no EL got the malformed request whole");
    }
}
