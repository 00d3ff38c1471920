//! Network partitions (issue 17): an EL that stops answering for longer than a call's timeout
//! and then comes back, simulated on loopback by `MockEl::partition` (see `tests/util/mock_el.rs`:
//! bytes read during the partition are held as if in the network, and are delivered late
//! unless the proxy aborted their connection).
//!
//! - every ordered call reaches the EL, in order, none missing, no stale copy after a newer
//!   one (a timed-out call used to be dropped for that EL, and its old copy, retransmitted by
//!   the kernel of a normally closed connection, reached it later, behind newer calls);
//! - the BN is answered by the other EL meanwhile;
//! - the EL is reported "not answering" once, "is up" once when it answers again, and
//!   `sync_proxy_el_up` follows.

use std::net::SocketAddr;

use crate::util::{
    new_payload, wait_until, without_repeats, Bn, LateDelivery, Launch, MockEl, Proxy, Received, TIMEOUT,
};

/// The proxy's `--request-timeout` here: short, so a partition outlasts it quickly.
const REQUEST_TIMEOUT_MS: &str = "300";

/// A proxy in front of a healthy primary and a secondary that the test partitions.
#[track_caller]
fn start(primary: &MockEl, partitioned: &MockEl) -> Proxy {
    let builders = format!("{},{}", primary.url(), partitioned.url());
    Launch::proxy().args(&["--builders", &builders, "--request-timeout", REQUEST_TIMEOUT_MS]).start()
}

/// Sends newPayload `id` and checks that the BN gets a VALID answer (from the primary).
#[track_caller]
fn send(bn: &mut Bn, id: u64) {
    let answer = bn.post(&new_payload(id, 100 + id));
    assert_eq!(answer.status, 200, "newPayload {id}: {}", answer.text());
    assert_eq!(answer.json()["result"]["status"], "VALID", "newPayload {id}");
}

/// The JSON-RPC ids of the newPayload calls an EL received, in arrival order.
fn ids(received: &[Received]) -> Vec<u64> {
    received.iter().filter(|r| r.is("engine_newPayload")).filter_map(|r| r.json()["id"].as_u64()).collect()
}

/// Plays a partition of `partitioned` while the BN sends newPayload 4 to 6: it starts once 1
/// to 3 have arrived, outlasts the proxy's timeout twice, heals; then 7 is sent, and what was
/// stuck in the "network" is delivered late. Returns what the partitioned EL received.
fn partition_during_ordered_calls(proxy: &Proxy, primary: &MockEl, partitioned: &MockEl) -> LateDelivery {
    let mut bn = proxy.bn();
    for id in 1..=3 {
        send(&mut bn, id);
    }
    partitioned.wait_for("newPayload 1 to 3", TIMEOUT, |r| ids(r).len() == 3);

    partitioned.partition();
    send(&mut bn, 4);
    // The proxy gave up on the call in flight: it closed that connection.
    partitioned.wait_cut_closed(1, TIMEOUT);
    send(&mut bn, 5);
    send(&mut bn, 6);
    partitioned.wait_cut_closed(2, TIMEOUT);
    partitioned.heal();

    send(&mut bn, 7);
    partitioned.wait_for("newPayload 7", TIMEOUT, |r| ids(r).contains(&7));
    let late = partitioned.deliver_late(TIMEOUT);
    primary.wait_for("newPayload 1 to 7", TIMEOUT, |r| ids(r).len() == 7);
    assert_eq!(ids(&primary.received()), (1..=7).collect::<Vec<_>>(), "the primary was never cut off");
    late
}

#[test]
fn regression_a_timed_out_ordered_call_reached_the_el_late_behind_newer_calls() {
    let primary = MockEl::start();
    let partitioned = MockEl::start();
    let proxy = start(&primary, &partitioned);
    let late = partition_during_ordered_calls(&proxy, &primary, &partitioned);

    let got = ids(&partitioned.received());
    assert_eq!(
        without_repeats(&got),
        (1..=7).collect::<Vec<_>>(),
        "every ordered call, in order, none missing, no stale copy after a newer one: got {got:?} ({late:?})"
    );
    // Every connection abandoned with a call in flight was aborted, so nothing stuck in the
    // network was delivered later.
    assert_eq!(late.delivered, 0, "{late:?}");
    assert!(late.discarded >= 2, "{late:?}");
}

/// `sync_proxy_el_up` for the EL called `name`, from a fresh scrape.
#[track_caller]
fn el_up(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut bn = Bn::connect(addr);
    bn.send_raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = bn.read_response().text();
    let prefix = format!("sync_proxy_el_up{{el=\"{name}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[test]
fn a_partitioned_el_is_reported_not_answering_once_and_up_once_with_el_up_following() {
    let primary = MockEl::start();
    let partitioned = MockEl::start();
    let proxy = start(&primary, &partitioned);
    let name = partitioned.url();
    let mut bn = proxy.bn();
    send(&mut bn, 1);
    wait_until("the partitioned EL counts as up", TIMEOUT, || el_up(proxy.addr(), &name) == Some(1.0));

    let mark = proxy.log_mark();
    partitioned.partition();
    send(&mut bn, 2);
    let warning = proxy.wait_log_from(mark, &format!("{name} is not answering"), TIMEOUT);
    assert!(warning.contains(&format!("no answer within {REQUEST_TIMEOUT_MS} ms")), "{warning}");
    wait_until("sync_proxy_el_up says it is down", TIMEOUT, || el_up(proxy.addr(), &name) == Some(0.0));
    // Retries go on while it is cut off, each one timing out; it is reported once.
    partitioned.wait_cut_closed(3, TIMEOUT);
    send(&mut bn, 3);

    partitioned.heal();
    proxy.wait_log_from(mark, &format!("{name} is up"), TIMEOUT);
    partitioned.wait_for("newPayload 2 and 3", TIMEOUT, |r| ids(r).contains(&3));
    assert_eq!(el_up(proxy.addr(), &name), Some(1.0));
    let logs: Vec<String> = proxy.logs().split_off(mark);
    let about = |text: &str| logs.iter().filter(|l| l.contains(&format!("{name} {text}"))).count();
    assert_eq!((about("is not answering"), about("is up")), (1, 1), "{logs:#?}");
    let down = logs.iter().position(|l| l.contains("is not answering"));
    let up = logs.iter().position(|l| l.contains(&format!("{name} is up")));
    assert!(down < up, "{logs:#?}");
    assert_eq!(without_repeats(&ids(&partitioned.received())), vec![1, 2, 3]);
}
