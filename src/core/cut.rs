//! Cut-through of one request: a large `engine_newPayload*` body goes to the primary execution
//! client as it arrives from the beacon node, while it is validated as it arrives, and its
//! last bytes are held back until the whole body has validated, so the client never sees a
//! complete request that turns out not to be JSON.
//!
//! This file owns the decision for one body in progress: whether streaming may start (the
//! method is known and is one forwarded whatever its body says), how much of the body may be
//! written so far, and what to do when the scan fails (abort what was streamed). It knows no
//! sockets and no connections: the event loop feeds it the body's bytes as the reader holds
//! them, starts and writes the primary's connection, and aborts it when told to.

use crate::policy::Class;
use crate::rpc::{self, RequestScan, ScanError};

/// Bytes of the body held back until the whole body has validated: the client cannot see a
/// complete request before that.
pub const HELD_TAIL: usize = 1;

/// Bodies smaller than this are read whole as before: their copy takes a few microseconds,
/// less than starting a stream.
pub const MIN_BODY: usize = 64 * 1024;

/// One body being read from beacon node connection `bn` (its `serial` tells a later
/// connection in the same slot apart), scanned as it arrives.
#[derive(Debug)]
pub struct Cut {
    pub bn: usize,
    pub serial: u64,
    /// The body's length from `Content-Length`.
    pub declared: usize,
    scan: RequestScan,
    /// The primary's connection carrying the body, once streaming has started.
    pub conn: Option<usize>,
    /// The body is not JSON: nothing more is scanned or streamed.
    pub failed: bool,
}

/// What the event loop does after the body grew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing yet (the method is not known, or the scan failed before streaming started).
    Wait,
    /// The method is known and is streamed: start the primary's connection if one is free.
    Start,
    /// Write the body to the primary's connection up to `writable`.
    Write,
    /// The body is not JSON: abort the primary's connection before it gets the whole body.
    Abort,
    /// The method is not one to stream: the body is read whole as before.
    Drop,
}

impl Cut {
    /// A candidate for cut-through: a body of `declared` bytes framed by `Content-Length`;
    /// None when it is too small to gain anything.
    pub fn new(bn: usize, serial: u64, declared: u64) -> Option<Cut> {
        let declared = usize::try_from(declared).ok().filter(|&d| d >= MIN_BODY)?;
        Some(Cut { bn, serial, declared, scan: RequestScan::new(), conn: None, failed: false })
    }

    /// The body so far (all of it, a prefix of the whole) was read: scans what is new.
    pub fn on_body(&mut self, body: &[u8]) -> Next {
        if self.failed {
            return Next::Wait;
        }
        if self.scan.feed(body).is_err() {
            self.failed = true;
            return if self.conn.is_some() { Next::Abort } else { Next::Wait };
        }
        match (self.conn, self.scan.method()) {
            (Some(_), _) => Next::Write,
            (None, None) => Next::Wait,
            (None, Some(method)) if streams(method) => Next::Start,
            (None, Some(_)) => Next::Drop,
        }
    }

    /// The method, once read (provisional until the body is whole: see `RequestScan`).
    pub fn method(&self) -> Option<&str> {
        self.scan.method()
    }

    /// How much of the body may be written when `received` bytes of it are in: all but the
    /// held tail, until the body is whole and valid (then the request goes out whole the
    /// usual way and this cap no longer applies).
    pub fn writable(&self, received: usize) -> usize {
        if self.failed {
            return 0;
        }
        received.min(self.declared.saturating_sub(HELD_TAIL))
    }

    /// The verdict on the whole body, from the scan that followed it (no second pass): the
    /// same as `rpc::scan_request(body)`.
    pub fn finish(self, body: &[u8]) -> Result<rpc::Request, ScanError> {
        self.scan.finish(body)
    }
}

/// Whether a call with `method` may stream: one forwarded to every client whatever its body
/// says, and in order, so that nothing about it is decided from the rest of the body.
fn streams(method: &str) -> bool {
    Class::of(Some(method)) == Class::NewPayload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(method: &str, len: usize) -> Vec<u8> {
        let head = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[{{"transactions":[""#);
        let tail = r#""]}]}"#;
        let mut body = head.into_bytes();
        body.resize(len - tail.len(), b'a');
        body.extend_from_slice(tail.as_bytes());
        body
    }

    #[test]
    fn small_bodies_are_not_cut() {
        assert!(Cut::new(0, 1, MIN_BODY as u64 - 1).is_none());
        assert!(Cut::new(0, 1, MIN_BODY as u64).is_some());
    }

    #[test]
    fn a_new_payload_starts_once_its_method_is_read_and_holds_its_tail() {
        let body = body("engine_newPayloadV4", 200_000);
        let mut cut = Cut::new(3, 7, body.len() as u64).unwrap();
        assert_eq!(cut.on_body(&body[..20]), Next::Wait, "the method is not read yet");
        assert_eq!(cut.on_body(&body[..60]), Next::Start);
        cut.conn = Some(2);
        assert_eq!(cut.on_body(&body[..100_000]), Next::Write);
        assert_eq!(cut.writable(100_000), 100_000);
        assert_eq!(cut.on_body(&body), Next::Write);
        assert_eq!(cut.writable(body.len()), body.len() - HELD_TAIL, "the tail waits for the verdict");
        assert_eq!(cut.finish(&body), rpc::scan_request(&body));
    }

    #[test]
    fn other_methods_are_dropped_to_the_whole_body_path() {
        let body = body("engine_forkchoiceUpdatedV3", 100_000);
        let mut cut = Cut::new(0, 1, body.len() as u64).unwrap();
        assert_eq!(cut.on_body(&body[..80]), Next::Drop);
    }

    #[test]
    fn a_malformed_body_aborts_what_was_streamed_and_writes_nothing_more() {
        let mut body = body("engine_newPayloadV3", 100_000);
        body[50_000] = b'"';
        let mut cut = Cut::new(0, 1, body.len() as u64).unwrap();
        assert_eq!(cut.on_body(&body[..49_000]), Next::Start);
        cut.conn = Some(0);
        assert_eq!(cut.on_body(&body[..60_000]), Next::Abort);
        assert_eq!(cut.writable(60_000), 0);
        assert_eq!(cut.on_body(&body), Next::Wait, "abort is said once");
        assert!(cut.failed);
    }

    #[test]
    fn a_body_malformed_before_streaming_started_needs_no_abort() {
        let mut cut = Cut::new(0, 1, 100_000).unwrap();
        assert_eq!(cut.on_body(b"{\"method\":x"), Next::Wait);
        assert!(cut.failed);
    }
}
