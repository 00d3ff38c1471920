//! Reading pauses while the memory budget is reached (issue 11): a beacon node connection
//! whose request was refused with 503 for the budget is not read again until the budget
//! clears, so its next request waits in TCP instead of being refused in a loop, and is then
//! read and answered normally. Other connections are still read (GETs are answered).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth_metrics::get;
use crate::util::{default_reply, rpc_body, wait_until, Launch, MockEl, TIMEOUT};

/// Below one large request.
const BUDGET: &str = "200000";
/// Longest the primary holds its answer for the test to release it.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

#[test]
fn regression_a_refused_connection_was_read_and_refused_again_while_the_budget_stayed_reached() {
    let released = Arc::new(AtomicBool::new(false));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (hold, count) = (Arc::clone(&released), Arc::clone(&arrived));
    let primary = MockEl::with(move |request| {
        if request.is("engine_getPayloadBodiesByHash") {
            count.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + HOLD_AT_MOST;
            while !hold.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        default_reply(request)
    });
    let other = MockEl::start();
    let builders = format!("{},{}", primary.url(), other.url());
    let proxy = Launch::proxy()
        .args(&[
            "--builders",
            &builders,
            "--memory-budget-bytes",
            BUDGET,
            "--max-body-bytes",
            "1000000",
            "--loglevel",
            "debug",
        ])
        .start();

    // A large call is held by the primary: the budget is reached.
    let large =
        rpc_body(1, "engine_getPayloadBodiesByHashV1", json!([["0x".to_string() + &"ab".repeat(150_000)]]));
    let mut first = proxy.bn();
    first.send_post(&[], &large);
    wait_until("the primary has the large call", TIMEOUT, || arrived.load(Ordering::SeqCst) == 1);

    // A second connection's call is refused at its head, and its reading pauses.
    let mut second = proxy.bn();
    let small = rpc_body(2, "engine_exchangeCapabilities", json!([[]]));
    let mark = proxy.log_mark();
    assert_eq!(second.post(&small).status, 503);
    proxy.wait_log_from(mark, "waits for the memory budget", TIMEOUT);
    // Its next call waits unread (on a loop that reads it, it would be refused at once).
    second.send_post(&[], &small);
    // Other connections are still read.
    assert_eq!(get(proxy.addr(), "/healthz").status, 200);

    // Once the large call is answered, the waiting call is read and answered, not refused.
    released.store(true, Ordering::SeqCst);
    assert_eq!(first.read_response().status, 200);
    let answer = second.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    proxy.wait_log("below --memory-budget-bytes again", TIMEOUT);
}
