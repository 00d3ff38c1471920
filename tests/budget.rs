//! The process-wide memory budget (issue 11, `--memory-budget-bytes`): while the bytes held
//! in request bodies, queued answers and answers being read reach it, a new request is
//! answered 503 with a JSON-RPC error and `Retry-After` at its head (its body is not read),
//! while the request already read still reaches every EL and is answered, and GETs still work.
//! Without the budget, each connection was bounded on its own and the sum only by
//! `--max-connections` × `--max-body-bytes`. A connection refused for the budget is not read
//! again until it clears, so its next request waits in TCP instead of being refused in a loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth_metrics::get;
use crate::util::{default_reply, rpc_body, wait_until, Launch, MockEl, TIMEOUT};

/// The budget here: below one large request.
const BUDGET: &str = "200000";
/// Longest the primary holds its answer for the test to release it.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

/// A primary that holds its answers to `engine_getPayloadBodiesByHash` until `released` (or
/// `HOLD_AT_MOST`), counting their arrivals in `arrived`, beside an EL that answers at once, and
/// a proxy over both with the small budget; the proxy's extra flags are `extra`.
struct Held {
    released: Arc<AtomicBool>,
    arrived: Arc<AtomicUsize>,
    _primary: MockEl,
    other: MockEl,
    proxy: crate::util::Proxy,
}

fn held(extra: &[&str]) -> Held {
    // The mock records a request once its behaviour returns, hence the own count of arrivals.
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
    let mut args =
        vec!["--builders", &builders, "--memory-budget-bytes", BUDGET, "--max-body-bytes", "1000000"];
    args.extend_from_slice(extra);
    let proxy = Launch::proxy().args(&args).start();
    Held { released, arrived, _primary: primary, other, proxy }
}

/// A 300 kB call: more than the whole budget once it is read and held.
fn large_call() -> Vec<u8> {
    rpc_body(1, "engine_getPayloadBodiesByHashV1", json!([["0x".to_string() + &"ab".repeat(150_000)]]))
}

#[test]
fn a_new_request_gets_503_with_retry_after_while_the_memory_budget_is_reached() {
    // Every field is bound: the ELs must live as long as the test.
    let Held { released, arrived, _primary, other, proxy } = held(&[]);

    // A large call (300 kB) is read whole: the budget was not reached when its head came.
    let mut first = proxy.bn();
    first.send_post(&[], &large_call());
    wait_until("the primary has the large call", TIMEOUT, || arrived.load(Ordering::SeqCst) == 1);
    other.wait_for("the other EL has the large call too", TIMEOUT, |r| {
        r.iter().any(|r| r.is("engine_getPayloadBodiesByHash"))
    });

    // Now it is held, and a new call is refused at its head.
    let mut second = proxy.bn();
    let small = rpc_body(2, "engine_getPayloadBodiesByHashV1", json!([[]]));
    let refused = second.post(&small);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], -32000, "{}", refused.text());
    proxy.wait_log("memory budget reached", TIMEOUT);
    // GETs are still answered.
    assert_eq!(get(proxy.addr(), "/healthz").status, 200);

    // The large call is answered once the primary answers, and its bytes are given back: the
    // same connection's next call is read and forwarded.
    released.store(true, Ordering::SeqCst);
    let answer = first.read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let again = second.post(&small);
    assert_eq!(again.status, 200, "{}", again.text());
    proxy.wait_log("below --memory-budget-bytes again", TIMEOUT);
}

#[test]
fn regression_a_refused_connection_was_read_and_refused_again_while_the_budget_stayed_reached() {
    let Held { released, arrived, _primary, other: _other, proxy } = held(&["--loglevel", "debug"]);

    // A large call is held by the primary: the budget is reached.
    let mut first = proxy.bn();
    first.send_post(&[], &large_call());
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
