//! Composing the beacon node's answer once an exchange is decided: an execution client's
//! answer relayed as it came, the combined answer of several, or the proxy's own 502 when none
//! answered.
//!
//! It knows the exchange's answers and the choice `policy::choose` made; it knows no sockets,
//! connections or clocks. Execution clients are named through `name` (for the log only).

use crate::answer_policy;
use crate::core::exchange::Exchange;
use crate::downstream::Outgoing;
use crate::http;
use crate::metrics::{Metrics, RequestOutcome};
use crate::policy::{self, Choice, Combined};
use crate::rpc;

/// The answer the beacon node gets for decided exchange `e`, by `choice`. The exchange's
/// answers are consumed (the relayed one is moved, not copied) and cleared.
pub fn answer(
    e: &mut Exchange,
    choice: &Choice,
    name: &dyn Fn(usize) -> String,
    metrics: &mut Metrics,
) -> Outgoing {
    let (keep_alive, minor) = (e.inbound.head.keep_alive, e.inbound.head.minor);
    let answer = match choice {
        Choice::Relay(i) => relayed(e.answers.get_mut(*i).and_then(Option::take), keep_alive, minor),
        Choice::Combine(who) => combined_answer(e, who, name, metrics),
        Choice::NoAnswer => None,
        Choice::Syncing(split) => Some(split_answer(e, split, name, metrics)),
    };
    for a in e.answers.iter_mut() {
        *a = None;
    }
    answer.unwrap_or_else(|| {
        // Decided here, not by looking at the bytes written: an execution client's own 502 is
        // an answer, relayed as such.
        let id = e.inbound.id.as_deref();
        metrics.request(e.inbound.class, RequestOutcome::Failed);
        log::warn!(
            "{} id {}: no execution client answered",
            e.inbound.method.as_deref().unwrap_or("call"),
            String::from_utf8_lossy(id.unwrap_or(b"null"))
        );
        let body = policy::error_body(id, -32603, "no execution client answered");
        Outgoing::json(502, body, keep_alive, minor)
    })
}

/// `--answer-policy safe`: the clients split on validity, so the beacon node is told SYNCING
/// (it imports optimistically and does not attest: a liveness cost, never a safety one).
fn split_answer(
    e: &Exchange,
    split: &answer_policy::Disagreement,
    name: &dyn Fn(usize) -> String,
    metrics: &mut Metrics,
) -> Outgoing {
    let names = |els: &[usize]| els.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", ");
    let id = e.inbound.id.as_deref();
    metrics.safe_syncing();
    log::warn!(
        "execution clients split on {} id {}: VALID from {}, INVALID from {}; answering SYNCING \
         (--answer-policy safe)",
        e.inbound.method.as_deref().unwrap_or("call"),
        String::from_utf8_lossy(id.unwrap_or(b"null")),
        names(&split.valid),
        names(&split.invalid)
    );
    let body = answer_policy::syncing_body(e.inbound.class, id);
    Outgoing::json(200, body, e.inbound.head.keep_alive, e.inbound.head.minor)
}

/// An execution client's answer relayed to the beacon node as it came: status, `Content-Type`
/// and body.
fn relayed(resp: Option<http::Response>, keep_alive: bool, minor: u8) -> Option<Outgoing> {
    resp.map(|resp| {
        let ct = resp.head.header("content-type").map(<[u8]>::to_vec);
        Outgoing::answer(resp.head.status, ct.as_deref(), resp.body, keep_alive, minor)
    })
}

/// The answer to a call whose answer is combined, from the clients that answered (`who`, in
/// list order): their results combined, or, when none answered with a result (each answered a
/// JSON-RPC error, say), the first one's answer as it came. Each JSON-RPC error is counted for
/// its client: it answered, and the call did not fail.
fn combined_answer(
    e: &mut Exchange,
    who: &[usize],
    name: &dyn Fn(usize) -> String,
    metrics: &mut Metrics,
) -> Option<Outgoing> {
    let (keep_alive, minor) = (e.inbound.head.keep_alive, e.inbound.head.minor);
    let mut results: Vec<(usize, Option<&[u8]>)> = Vec::with_capacity(who.len());
    let mut errors = Vec::new();
    for &i in who {
        let Some(resp) = e.answers.get(i).and_then(Option::as_ref) else { continue };
        let scan = rpc::scan_response(&resp.body).ok();
        if let Some(code) = scan.as_ref().and_then(|s| s.error_code) {
            metrics.rpc_error(i);
            errors.push(format!("{} answered error {code}", name(i)));
        }
        let result = scan.and_then(|s| s.result).and_then(|range| resp.body.get(range));
        results.push((i, result));
    }
    let method = e.inbound.method.as_deref().unwrap_or("call");
    let id = String::from_utf8_lossy(e.inbound.id.as_deref().unwrap_or(b"null"));
    match policy::combine_answers(e.combine, e.inbound.id.as_deref(), &results)? {
        Combined::Body { body, from, left_out } => {
            if !left_out.is_empty() {
                let names = |who: &[usize]| who.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", ");
                log::debug!(
                    "{method} id {id}: combined the results of {}; left out {} ({})",
                    names(&from),
                    names(&left_out),
                    if errors.is_empty() { "no usable result".to_string() } else { errors.join(", ") }
                );
            }
            Some(Outgoing::json(200, body, keep_alive, minor))
        }
        Combined::Relay(i) => {
            log::debug!(
                "{method} id {id}: no execution client answered with a result ({}); relaying {}'s answer",
                if errors.is_empty() { "no usable result".to_string() } else { errors.join(", ") },
                name(i)
            );
            relayed(e.answers.get_mut(i).and_then(Option::take), keep_alive, minor)
        }
    }
}
