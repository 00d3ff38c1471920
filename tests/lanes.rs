//! The ordered lane never starves (issue 11): newPayload and forkchoiceUpdated reach an EL while
//! every other connection to it carries a slow call. They used to share the proxy's eight
//! connections per EL with every other call, so eight `getPayloadBodiesByRange` calls (the
//! spec allows them 10 s) held a newPayload back until one of them was answered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{
    default_reply, fcu, new_payload, rpc_body, wait_until, Bn, Launch, MockEl, Received, TIMEOUT,
};

/// Connections the proxy keeps to one EL (`upstream::MAX_CONNS`).
const CONNECTIONS: usize = 8;
/// Longest a held getPayloadBodies answer waits for the test to release it.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

fn bodies_calls(received: &[Received]) -> usize {
    received.iter().filter(|r| r.is("engine_getPayloadBodies")).count()
}

#[test]
fn regression_eight_slow_get_payload_bodies_calls_held_new_payload_back() {
    // The EL holds every getPayloadBodies answer until the test releases them (counting
    // them as they arrive: the mock records a request once its behaviour returns); the other
    // calls are answered at once.
    let released = Arc::new(AtomicBool::new(false));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (hold, count) = (Arc::clone(&released), Arc::clone(&arrived));
    let el = MockEl::with(move |request| {
        if request.is("engine_getPayloadBodies") {
            count.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + HOLD_AT_MOST;
            while !hold.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        default_reply(request)
    });
    let proxy = Launch::proxy().args(&["--builders", &el.url()]).start();

    // As many slow calls as the proxy has connections to the EL, each from its own BN
    // connection so none waits behind another on the BN side.
    let body = rpc_body(1, "engine_getPayloadBodiesByRangeV1", json!(["0x1", "0x20"]));
    let mut slow: Vec<Bn> = (0..CONNECTIONS).map(|_| proxy.bn()).collect();
    for bn in slow.iter_mut() {
        bn.send_post(&[], &body);
    }
    // All but the reserved connection carry one now.
    wait_until("the slow calls are on every other connection", TIMEOUT, || {
        arrived.load(Ordering::SeqCst) >= CONNECTIONS - 1
    });

    // While they are held, the ordered calls get through and are answered.
    let mut bn = proxy.bn();
    let answer = bn.post(&new_payload(2, 1_000));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["result"]["status"], "VALID");
    let answer = bn.post(&fcu(3, None));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!released.load(Ordering::SeqCst), "answered while every slow call was still held");
    let received = el.received();
    assert!(received.iter().any(|r| r.is("engine_newPayload")), "the EL received the newPayload");
    assert_eq!(bodies_calls(&received), 0, "no slow call was answered yet");

    // Released, every slow call is answered too (the last one on a connection another freed).
    released.store(true, Ordering::SeqCst);
    for bn in slow.iter_mut() {
        let answer = bn.read_response();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(bodies_calls(&el.received()), CONNECTIONS);
}
