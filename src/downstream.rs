//! One beacon node connection: the request reader, the answers owed in request order, and
//! the connection's deadlines. The event loop moves bytes in and out; this file decides what
//! those bytes mean for the connection. It knows no JSON, no execution clients.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::exchange::ExchangeRef;
use crate::http::{self, Limits, RequestReader};

/// Most requests one connection may have in flight; beyond that the proxy stops reading from
/// it until answers have gone out (pipelining backpressure).
pub const MAX_PIPELINE: usize = 32;

/// An answer owed to the beacon node, in the order its requests arrived.
#[derive(Debug)]
pub enum Slot {
    /// Waiting for the execution clients.
    Waiting(ExchangeRef),
    /// Ready to be written.
    Ready(Outgoing),
}

/// Bytes to write: a head, a body, and whether the connection ends after them.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub close: bool,
}

impl Outgoing {
    /// A complete answer with the proxy's own head.
    pub fn answer(
        status: u16,
        content_type: Option<&[u8]>,
        body: Vec<u8>,
        keep_alive: bool,
        minor: u8,
    ) -> Self {
        let mut head = Vec::with_capacity(128);
        http::write_response_head(&mut head, status, content_type, body.len(), keep_alive, minor);
        Outgoing { head, body, close: !keep_alive }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>, keep_alive: bool, minor: u8) -> Self {
        Outgoing::answer(status, Some(b"application/json"), body, keep_alive, minor)
    }

    /// `100 Continue`, which precedes the real answer.
    pub fn continue_100() -> Self {
        Outgoing { head: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), body: Vec::new(), close: false }
    }
}

pub struct Downstream {
    pub stream: mio::net::TcpStream,
    /// Unique for the life of the process, so an answer never reaches a later connection that
    /// reused this one's slot.
    pub serial: u64,
    pub peer: SocketAddr,
    pub reader: RequestReader,
    out: VecDeque<Slot>,
    /// Bytes of the front slot already written.
    written: usize,
    /// No more requests will be read: the peer closed its side, or an answer ends the connection.
    pub no_more_requests: bool,
    /// Set once the connection must be dropped; the event loop reaps it after the event batch.
    pub dead: bool,
    last_activity: Instant,
    request_started: Option<Instant>,
    /// Bytes written to this connection so far.
    pub sent: u64,
    /// Accepted on `--metrics-addr`: only `/metrics` and `/status` are served.
    pub metrics_only: bool,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything ready was written (answers may still be owed).
    Drained,
    /// The socket is full; wait for WRITABLE.
    Blocked,
}

impl Downstream {
    pub fn new(
        stream: mio::net::TcpStream,
        serial: u64,
        peer: SocketAddr,
        limits: Limits,
        now: Instant,
    ) -> Self {
        Downstream {
            stream,
            serial,
            peer,
            reader: RequestReader::new(limits),
            out: VecDeque::new(),
            written: 0,
            no_more_requests: false,
            dead: false,
            last_activity: now,
            request_started: None,
            sent: 0,
            metrics_only: false,
        }
    }

    /// Whether reading must pause until answers have gone out.
    pub fn backpressured(&self) -> bool {
        self.out.len() >= MAX_PIPELINE
    }

    pub fn owes_answers(&self) -> bool {
        !self.out.is_empty()
    }

    /// Notes bytes read and fed to the reader: a request's deadline starts with its first
    /// byte and ends when it has been read whole.
    pub fn after_read(&mut self, now: Instant) {
        self.last_activity = now;
        if self.reader.in_progress() {
            self.request_started.get_or_insert(now);
        } else {
            self.request_started = None;
        }
    }

    pub fn push(&mut self, slot: Slot) {
        self.out.push_back(slot);
    }

    /// Fills the slot waiting for `exchange` with its answer. False when no slot waits for it.
    pub fn fill(&mut self, exchange: ExchangeRef, answer: Outgoing) -> bool {
        for slot in self.out.iter_mut() {
            if matches!(slot, Slot::Waiting(e) if *e == exchange) {
                *slot = Slot::Ready(answer);
                return true;
            }
        }
        false
    }

    /// The exchanges this connection still waits for (so they can forget it when it dies).
    pub fn waiting(&self) -> impl Iterator<Item = ExchangeRef> + '_ {
        self.out.iter().filter_map(|s| match s {
            Slot::Waiting(e) => Some(*e),
            Slot::Ready(_) => None,
        })
    }

    /// Writes ready answers, in order, until one is still waiting or the socket is full.
    pub fn flush(&mut self, now: Instant) -> io::Result<Flushed> {
        while let Some(Slot::Ready(out)) = self.out.front() {
            let (moved, done) =
                http::write_head_body(&mut self.stream, &out.head, &out.body, &mut self.written)?;
            self.sent += moved as u64;
            if !done {
                return Ok(Flushed::Blocked);
            }
            let close = out.close;
            self.out.pop_front();
            self.written = 0;
            self.last_activity = now;
            if close {
                self.no_more_requests = true;
                self.dead = true;
                self.out.clear();
                return Ok(Flushed::Drained);
            }
        }
        if self.no_more_requests && self.out.is_empty() {
            self.dead = true;
        }
        Ok(Flushed::Drained)
    }

    /// When this connection must next be looked at: a request must arrive whole within
    /// `read_timeout` of its first byte, and an idle connection lasts `idle_timeout`.
    pub fn deadline(&self, read_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        if let Some(started) = self.request_started {
            return Some(started + read_timeout);
        }
        if self.out.is_empty() {
            return Some(self.last_activity + idle_timeout);
        }
        // Answers are owed: the exchanges' own deadlines bound the wait.
        None
    }
}
