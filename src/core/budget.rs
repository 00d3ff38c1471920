//! The process-wide memory budget (`--memory-budget-bytes`): one sum of the bytes held in
//! request bodies (read whole, or being read), answers queued for beacon nodes and execution
//! clients' answers being read. While it is reached, a new request with a body is answered 503
//! with a JSON-RPC error and `Retry-After` at its head, and its body is not read; requests
//! already read are still delivered to every execution client, and GETs (`/metrics`, probes)
//! are still answered.
//!
//! `Meter` counts the bodies read whole: each one's `Charge` lives as long as the shared
//! request and gives its bytes back when the last reference goes. The rest is summed from the
//! connections by the event loop when a head asks. This file knows no sockets or clocks.

use std::cell::Cell;
use std::rc::Rc;

use crate::downstream::Outgoing;
use crate::http;
use crate::policy;

/// What a refused request is told to wait before trying again, in seconds.
pub const RETRY_AFTER_SECS: &[u8] = b"1";

/// The bytes of request bodies read whole and still held (by an exchange, a job on a
/// connection, or a backlog), shared by every request's `Charge`.
#[derive(Clone, Debug, Default)]
pub struct Meter(Rc<Cell<usize>>);

impl Meter {
    /// Counts `bytes` until the returned charge is dropped.
    pub fn charge(&self, bytes: usize) -> Charge {
        self.0.set(self.0.get().saturating_add(bytes));
        Charge { meter: self.clone(), bytes }
    }

    pub fn held(&self) -> usize {
        self.0.get()
    }
}

/// Bytes counted by a `Meter` while this lives.
#[derive(Debug)]
pub struct Charge {
    meter: Meter,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let cell = &self.meter.0;
        cell.set(cell.get().saturating_sub(self.bytes));
    }
}

/// Whether a new request body may be read while `held` bytes are held under `budget`. A body
/// admitted just below the budget may take the sum past it by at most one body
/// (`--max-body-bytes`); the next one is refused until bytes are given back.
pub fn admits(held: usize, budget: usize) -> bool {
    held < budget
}

/// The answer to a request refused because the budget is reached: 503, a JSON-RPC error, and
/// `Retry-After`.
pub fn busy_answer(keep_alive: bool, minor: u8) -> Outgoing {
    let body = policy::error_body(None, -32000, "server busy: memory budget reached; retry later");
    let mut out = Outgoing::default();
    out.body = body;
    let extra: [(&[u8], &[u8]); 1] = [(b"Retry-After", RETRY_AFTER_SECS)];
    http::write_response_head_with(
        &mut out.head,
        503,
        Some(b"application/json"),
        out.body.len(),
        keep_alive,
        minor,
        &extra,
    );
    out.close = !keep_alive;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_counted_while_they_live() {
        let meter = Meter::default();
        let a = meter.charge(100);
        let b = meter.charge(50);
        assert_eq!(meter.held(), 150);
        drop(a);
        assert_eq!(meter.held(), 50);
        drop(b);
        assert_eq!(meter.held(), 0);
    }

    #[test]
    fn a_full_budget_refuses_new_bodies_until_bytes_are_given_back() {
        let budget = 1000;
        let meter = Meter::default();
        assert!(admits(meter.held(), budget));
        let first = meter.charge(999);
        assert!(admits(meter.held(), budget), "below the budget: one more body may come");
        let second = meter.charge(500);
        assert!(!admits(meter.held(), budget));
        drop(first);
        assert!(admits(meter.held(), budget));
        drop(second);
    }

    #[test]
    fn the_busy_answer_is_a_503_json_rpc_error_with_retry_after() {
        let out = busy_answer(true, 1);
        let head = String::from_utf8(out.head.clone()).expect("ascii head");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("Retry-After: 1\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", out.body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_slice(&out.body).expect("json");
        assert_eq!(body["error"]["code"], -32000);
        assert!(!out.close);
        assert!(busy_answer(false, 1).close);
    }
}
