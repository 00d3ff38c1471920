//! Relayed answers moved through a kernel pipe (issue 15): once everything of a relayed
//! answer that arrived is written to the beacon node, the rest goes from the plain-TCP
//! execution client's socket to the beacon node's with splice(2), never copied into the
//! proxy, and never more than the answer's bytes (the connection stays in step).
//! `sync_proxy_relayed_piped_bytes_total` says it happened.

use serde_json::json;

use crate::relay::{answer_of_len, gated_el, get_payload, wait_partial};
use crate::routing::{metric, start_proxy};
use crate::util::{rpc_body, wait_until, MockEl, ReadError, Reply, TIMEOUT};

const PIPED: &str = "sync_proxy_relayed_piped_bytes_total";
const CUT: &str = "sync_proxy_relayed_answers_cut_total";

#[test]
fn a_large_answer_is_piped_byte_for_byte_and_its_el_connection_carries_the_next_call() {
    let body = answer_of_len(6 << 20);
    let reply = body.clone();
    let el = MockEl::with(move |_| Reply::json(reply.clone()));
    let proxy = start_proxy(&[&el], &["--loglevel", "debug"]);
    for call in 1..=2 {
        let response = proxy.bn().post(&get_payload());
        assert_eq!(response.status, 200);
        assert!(response.body == body, "call {call}: the piped body differs from the EL's");
        assert_eq!(response.header("content-length"), Some(body.len().to_string().as_str()));
    }
    let piped = metric(&proxy, PIPED);
    assert!(piped > 0, "nothing went through a pipe");
    assert!(piped < 2 * body.len() as u64, "more piped ({piped}) than the two answers");
    assert_eq!(el.connections(), 1, "exactly the answer was taken: the connection was reused");
    assert_eq!(metric(&proxy, CUT), 0);
}

#[test]
fn an_el_that_breaks_off_while_piped_closes_the_bn_connection_after_what_arrived() {
    let body = answer_of_len(4 << 20);
    let (el, gate) = gated_el(&body, 2 << 20);
    let proxy = start_proxy(&[&el], &["--loglevel", "debug"]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &get_payload());
    wait_partial(&mut bn, 1 << 20);
    wait_until("part of the answer went through the pipe", TIMEOUT, || metric(&proxy, PIPED) > 0);
    gate.break_off();
    match bn.try_read_response(TIMEOUT) {
        Err(ReadError::Closed { partial, .. }) => {
            assert!(partial.len() < body.len(), "the answer must be cut short");
            let at = partial.windows(4).position(|w| w == b"\r\n\r\n").expect("the head") + 4;
            assert!(partial[at..] == body[..partial.len() - at], "what arrived is the EL's, in order");
        }
        other => panic!("expected the connection to close mid-answer, got {other:?}"),
    }
    proxy.wait_log("broke off while being relayed", TIMEOUT);
    assert_eq!(metric(&proxy, CUT), 1);
    // The proxy serves on, piping again.
    el.set_behaviour(|_| Reply::json(answer_of_len(1 << 20)));
    let response = proxy.bn().post(&get_payload());
    assert_eq!((response.status, response.body.len()), (200, 1 << 20));
}

#[test]
fn a_bn_that_stops_reading_a_piped_answer_meets_the_write_timeout_and_the_el_stays_in_step() {
    // More than loopback's socket buffers and the pipe hold: the proxy cannot write it all.
    let body = answer_of_len(48 << 20);
    let reply = body.clone();
    let el = MockEl::with(move |request| match request.rpc_method.as_deref() {
        Some("eth_chainId") => Reply::json(r#"{"jsonrpc":"2.0","id":2,"result":"0x1"}"#),
        _ => Reply::json(reply.clone()),
    });
    let args = ["--write-timeout", "300", "--request-timeout", "20000", "--loglevel", "debug"];
    let proxy = start_proxy(&[&el], &args);
    let mut hog = proxy.bn();
    hog.send_post(&[], &get_payload());
    wait_until("the answer is being piped", TIMEOUT, || metric(&proxy, PIPED) > 0);
    proxy.wait_log("took no byte of its answers for --write-timeout", TIMEOUT);
    // The rest of the answer is read and dropped; the same connection carries the next call.
    let answered = format!("sync_proxy_el_answer_seconds_count{{el=\"{}\"}}", el.url());
    wait_until("the EL's answer was taken to its end", TIMEOUT, || metric(&proxy, &answered) == 1);
    let response = proxy.bn().post(&rpc_body(2, "eth_chainId", json!([])));
    assert_eq!((response.status, response.json()["result"].clone()), (200, json!("0x1")));
    assert_eq!(el.connections(), 1, "the EL connection kept its framing");
    drop(hog);
}
