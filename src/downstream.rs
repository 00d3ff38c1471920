//! One beacon node connection: the request reader, the answers owed in request order, and
//! the connection's deadlines. It owns no socket and writes nothing itself: the shell
//! (`shell::BnSockets`) reads bytes and hands them in, asks what is ready to go out
//! (`to_write`: the ready answers' heads and bodies, for one vectored write), tells it what
//! the socket took (`wrote`, `write_failed`), and shuts down or closes the socket when this
//! state machine says so (`Flushed::Linger`, `dead`). It knows no JSON, no execution clients.
//!
//! An answer written before its request was read whole (413 decided from `Content-Length`, 431,
//! 400 on bad framing, 401 at the head) ends with a lingering close, as nginx's
//! `lingering_close`: closing a socket with unread bytes makes the kernel send a reset, which
//! destroys the answer before the client reads it. So once such an answer is written the event
//! loop shuts down the write side (the client sees the answer, then the end), and the
//! connection reads and drops what the client still sends, for at most `LINGER_TIME` and
//! `LINGER_BYTES`, before it is closed. It stays a connection meanwhile, counted against
//! `--max-connections`, so lingering cannot be used to hold more connections open.
//!
//! What a connection may hold is bounded, and each bound has an answer: at most
//! `MAX_PIPELINE` answers or `MAX_QUEUED_BYTES` of ready answers are queued before the
//! connection stops being read (and the rest of the read that filled it waits, unparsed, in
//! `pending`: at most one read); and a client that takes no byte of what it is owed for
//! `--write-timeout` is closed (`Expired::Write`), so clients that stop reading cannot hold
//! the connection cap, and the beacon nodes with it, for longer than that.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::exchange::ExchangeRef;
use crate::http::{self, Limits, RequestReader};
use crate::pool::{self, SharedPool};

/// Most requests one connection may have in flight; beyond that the proxy stops reading from
/// it until answers have gone out (pipelining backpressure).
pub const MAX_PIPELINE: usize = 32;
/// Most bytes of ready answers queued for one connection before it stops being read: a few
/// large answers (`/metrics`, payload bodies) fill it before `MAX_PIPELINE` does. One answer
/// may cross it; the ones still being waited for are bounded by `MAX_PIPELINE` and the
/// answer cap (`--max-body-bytes`).
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
/// Longest a lingering close reads and drops what the client still sends (nginx:
/// `lingering_time`, whose 30 s suits browsers uploading files; a beacon node's request is sent
/// at loopback or LAN speed, and a connection held longer only holds the budget).
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes a lingering close reads and drops: four of the 1 MiB bodies a typical 413 cuts
/// off. A client still sending after that is closed (with a reset) regardless.
pub const LINGER_BYTES: u64 = 4 << 20;

/// An answer owed to the beacon node, in the order its requests arrived.
#[derive(Debug)]
pub enum Slot {
    /// Waiting for the execution clients.
    Waiting(ExchangeRef),
    /// Ready to be written.
    Ready(Outgoing),
    /// An execution client's answer relayed as it arrives (`core::relay`): the proxy's own
    /// head, then the body as far as it has arrived, `len` bytes once whole.
    Streaming {
        exchange: ExchangeRef,
        out: Outgoing,
        len: usize,
        /// Bytes of the body that go from the execution client's socket to this one through a
        /// pipe (`stream_piped`), after all of `out`: counted here, never in `out.body`.
        piped: usize,
    },
}

/// What became of a streaming answer whose execution client failed (`Downstream::stream_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// None of it had been written: the slot waits for the exchange again, which may fall
    /// back to the next execution client.
    Waiting,
    /// Part of it was written: the connection writes what arrived and then closes (the
    /// beacon node sees a body shorter than its `Content-Length`).
    Truncated,
    /// No streaming slot for that exchange (the connection is not the one, or it is gone).
    Gone,
}

/// Bytes to write: a head, a body, and whether the connection ends after them.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub close: bool,
    /// Where a large body's buffer goes once the answer is written or dropped (`recycled_by`).
    pub pool: Option<SharedPool>,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool::recycle(&pool, std::mem::take(&mut self.body));
        }
    }
}

impl Outgoing {
    /// Gives the body's buffer to `pool` when the answer is done with, so that the next large
    /// answer or body is read into the same memory (see `pool`).
    pub fn recycled_by(mut self, pool: &SharedPool) -> Self {
        self.pool = Some(pool.clone());
        self
    }

    /// A complete answer with the proxy's own head. A status that has no body (1xx, 204, 304:
    /// `http::status_has_body`) is written without one, whatever `body` holds, so an answer
    /// relayed from an execution client never desynchronises the beacon node's connection.
    pub fn answer(
        status: u16,
        content_type: Option<&[u8]>,
        mut body: Vec<u8>,
        keep_alive: bool,
        minor: u8,
    ) -> Self {
        if !http::status_has_body(status) {
            body = Vec::new();
        }
        let len = body.len();
        Outgoing::streaming(status, content_type, body, len, keep_alive, minor)
    }

    /// The head of an answer whose body of `len` bytes is relayed as it arrives into `body` (an
    /// empty buffer, reserved for them), as `answer` (which calls it with the whole body) writes
    /// it: byte for byte the same head for the same status, `Content-Type`, length and
    /// keep-alive.
    pub fn streaming(
        status: u16,
        content_type: Option<&[u8]>,
        body: Vec<u8>,
        len: usize,
        keep_alive: bool,
        minor: u8,
    ) -> Self {
        let mut head = Vec::with_capacity(128);
        http::write_response_head(&mut head, status, content_type, len, keep_alive, minor);
        Outgoing { head, body, close: !keep_alive, pool: None }
    }

    /// The same answer without its body, as a `HEAD` request is answered: the head still says
    /// the length a `GET` would have carried (RFC 9110 §9.3.2).
    pub fn without_body(mut self) -> Self {
        self.body = Vec::new();
        self
    }

    /// Bytes this answer puts on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>, keep_alive: bool, minor: u8) -> Self {
        Outgoing::answer(status, Some(b"application/json"), body, keep_alive, minor)
    }

    /// `100 Continue`, which precedes the real answer.
    pub fn continue_100() -> Self {
        Outgoing {
            head: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            body: Vec::new(),
            close: false,
            pool: None,
        }
    }
}

/// The lingering close of a connection whose answer has been written and whose write side is
/// shut: what the client still sends is read and dropped until it closes, `LINGER_BYTES` have
/// been dropped, or `LINGER_TIME` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    until: Instant,
    left: u64,
}

impl Linger {
    pub fn start(now: Instant) -> Linger {
        Linger { until: now + LINGER_TIME, left: LINGER_BYTES }
    }

    pub fn deadline(&self) -> Instant {
        self.until
    }

    /// Counts `n` bytes read and dropped; false once the byte budget is spent.
    pub fn discarded(&mut self, n: usize) -> bool {
        self.left = self.left.saturating_sub(n as u64);
        self.left > 0
    }
}

/// The connection deadlines the command line sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `--read-timeout`: a request must arrive whole within this of its first byte.
    pub read: Duration,
    /// `--idle-timeout`: a connection with nothing in flight lasts this long.
    pub idle: Duration,
    /// `--write-timeout`: a client owed answers must take at least one byte within this.
    pub write: Duration,
}

/// Which deadline closed a connection (`Downstream::on_timeout`), for the log line and the
/// `sync_proxy_connections_closed_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request did not arrive whole within `--read-timeout` of its first byte.
    Read,
    /// Nothing happened for `--idle-timeout`.
    Idle,
    /// The client took no byte of the answers it is owed for `--write-timeout`.
    Write,
    /// A lingering close reached `LINGER_TIME`.
    Linger,
}

impl Expired {
    /// Every variant, in the order metrics are kept.
    pub const ALL: [Expired; 4] = [Expired::Read, Expired::Idle, Expired::Write, Expired::Linger];

    pub fn label(self) -> &'static str {
        match self {
            Expired::Read => "request not read whole within --read-timeout",
            Expired::Idle => "idle for --idle-timeout",
            Expired::Write => "took no byte of its answers for --write-timeout",
            Expired::Linger => "still sending when its lingering close timed out",
        }
    }

    /// The `reason` label of `sync_proxy_connections_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Expired::Read => "read_timeout",
            Expired::Idle => "idle_timeout",
            Expired::Write => "write_timeout",
            Expired::Linger => "linger_timeout",
        }
    }
}

/// One beacon node connection.
pub struct Downstream {
    /// Unique for the life of the process, so an answer never reaches a later connection that
    /// reused this one's slot.
    pub serial: u64,
    pub peer: SocketAddr,
    pub reader: RequestReader,
    out: VecDeque<Slot>,
    /// Bytes of the ready answers in `out` (`MAX_QUEUED_BYTES`).
    queued_bytes: usize,
    /// Bytes of the front slot already written.
    written: usize,
    /// Since when ready answers have waited for a client that takes none of their bytes (the
    /// last write that moved a byte, or the first that moved none); `None` while nothing
    /// ready is blocked.
    stalled_since: Option<Instant>,
    /// The unparsed rest of a read that filled the pipeline: parsed before anything more is
    /// read, once answers have gone out. At most one read's worth.
    pending: Vec<u8>,
    /// No more requests will be read: the peer closed its side, or an answer ends the connection.
    pub no_more_requests: bool,
    /// Set once the connection must be dropped; the event loop reaps it after the event batch.
    pub dead: bool,
    /// The peer has closed its side (a read gave end of stream).
    peer_closed: bool,
    /// The closing answer was written before its request was read whole: linger after it.
    linger_after_close: bool,
    /// Reading and dropping until the connection is closed (see the module's doc).
    linger: Option<Linger>,
    last_activity: Instant,
    request_started: Option<Instant>,
    /// Bytes written to this connection so far.
    pub sent: u64,
    /// Accepted on `--metrics-addr`: only `/metrics` and `/status` are served.
    pub metrics_only: bool,
    /// Its last request was refused because the memory budget was reached (see
    /// `waits_for_budget`).
    pub budget_refused: bool,
}

/// Most slices (`Downstream::to_write`) one vectored write takes: a head and a body each for
/// eight pipelined answers, far under any system's `IOV_MAX`.
pub const WRITE_SLICES: usize = 16;

/// What a write left (`Downstream::wrote`).
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything ready was written (answers may still be owed).
    Drained,
    /// Ready bytes remain: write again, or, if the socket took nothing, wait for WRITABLE.
    Blocked,
    /// An early answer has been written whole and the connection now lingers: the event loop
    /// shuts down the write side and reads (and drops) what is already waiting.
    Linger,
}

impl Downstream {
    pub fn new(serial: u64, peer: SocketAddr, limits: Limits, now: Instant) -> Self {
        Downstream {
            serial,
            peer,
            reader: RequestReader::new(limits),
            out: VecDeque::new(),
            queued_bytes: 0,
            written: 0,
            stalled_since: None,
            pending: Vec::new(),
            no_more_requests: false,
            dead: false,
            peer_closed: false,
            linger_after_close: false,
            linger: None,
            last_activity: now,
            request_started: None,
            sent: 0,
            metrics_only: false,
            budget_refused: false,
        }
    }

    /// Whether reading (and parsing) must pause until answers have gone out.
    pub fn backpressured(&self) -> bool {
        self.out.len() >= MAX_PIPELINE || self.queued_bytes >= MAX_QUEUED_BYTES
    }

    /// Keeps the unparsed rest of a read that filled the pipeline (see `pending`).
    pub fn stash(&mut self, rest: &[u8]) {
        self.pending.extend_from_slice(rest);
    }

    /// Whether bytes already read wait to be parsed; nothing more is read until they are.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hands over the bytes waiting to be parsed.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Bytes of ready answers queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes this connection holds (see `core::budget`): the request being read, the unparsed
    /// rest of a read, and the answers queued for it.
    pub fn held_bytes(&self) -> usize {
        self.reader.held_bytes() + self.pending.capacity() + self.queued_bytes
    }

    /// Answers owed, ready or waited for (at most `MAX_PIPELINE`).
    pub fn answers_owed(&self) -> usize {
        self.out.len()
    }

    /// Bytes read but not parsed yet (at most one read).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
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
        if let Slot::Ready(out) = &slot {
            self.queued_bytes += out.len();
        }
        self.out.push_back(slot);
    }

    /// Queues a JSON answer given before its request was read whole: it is the connection's
    /// last (its head says `Connection: close`), and the connection lingers after it (see the
    /// module's doc).
    pub fn answer_early(&mut self, status: u16, body: Vec<u8>, minor: u8) {
        self.close_after(Outgoing::json(status, body, false, minor));
    }

    /// Queues `answer` (made with `keep_alive` false) as the connection's last, with a
    /// lingering close after it, as `answer_early` does.
    pub fn close_after(&mut self, answer: Outgoing) {
        self.push(Slot::Ready(answer));
        self.no_more_requests = true;
        self.linger_after_close = true;
    }

    /// Whether reading this connection waits while the memory budget is reached: its last
    /// request was refused for the budget, so its next one would only be refused too, and
    /// the client is better slowed down by TCP than answered 503 in a loop. Only between
    /// requests: a request partly read (or a refused body being dropped) is read on, so that
    /// what it is owed is never held up, and a lingering close goes on dropping bytes. The
    /// event loop reads it again once the budget clears.
    pub fn waits_for_budget(&self) -> bool {
        self.budget_refused && !self.reader.in_progress() && !self.lingering() && !self.dead
    }

    /// Whether the connection is in its lingering close: reads are dropped, not parsed.
    pub fn lingering(&self) -> bool {
        self.linger.is_some()
    }

    /// Notes `n` bytes read and dropped while lingering; the connection is done once the byte
    /// budget is spent.
    pub fn discarded(&mut self, n: usize) {
        if let Some(linger) = self.linger.as_mut() {
            if !linger.discarded(n) {
                self.dead = true;
            }
        }
    }

    /// The peer closed its side: answers it is owed are still written (a half-closed client
    /// may still read); a half-read request is dropped, and a lingering close is complete.
    pub fn on_eof(&mut self) {
        self.peer_closed = true;
        self.no_more_requests = true;
        if !self.owes_answers() || self.lingering() {
            self.dead = true;
        }
    }

    /// Fills the slot waiting for `exchange` with its answer. False when no slot waits for it.
    pub fn fill(&mut self, exchange: ExchangeRef, answer: Outgoing) -> bool {
        for slot in self.out.iter_mut() {
            if matches!(slot, Slot::Waiting(e) if *e == exchange) {
                self.queued_bytes += answer.len();
                *slot = Slot::Ready(answer);
                return true;
            }
        }
        false
    }

    /// Turns the slot waiting for `exchange` into a streaming one: `out` is the answer's head
    /// with an empty body buffer, and `len` bytes of body will be appended (`stream_append`).
    /// The whole answer counts as queued from now on, as a stored one would (`queued_bytes`,
    /// `held_bytes`). False when no slot waits for it.
    pub fn stream(&mut self, exchange: ExchangeRef, out: Outgoing, len: usize) -> bool {
        for slot in self.out.iter_mut() {
            if matches!(slot, Slot::Waiting(e) if *e == exchange) {
                self.queued_bytes += out.head.len() + len;
                *slot = Slot::Streaming { exchange, out, len, piped: 0 };
                return true;
            }
        }
        false
    }

    /// Appends body bytes to `exchange`'s streaming answer, never past its length. False when
    /// no slot streams it (the connection is another, or the bytes are not wanted).
    pub fn stream_append(&mut self, exchange: ExchangeRef, bytes: &[u8]) -> bool {
        for slot in self.out.iter_mut() {
            if let Slot::Streaming { exchange: e, out, len, piped } = slot {
                if *e == exchange {
                    let room = len.saturating_sub(out.body.len() + *piped);
                    out.body.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    return true;
                }
            }
        }
        false
    }

    /// How many bytes of `exchange`'s streaming answer are still to arrive, when they may go
    /// to the socket straight from the execution client's (through a pipe, `stream_piped`):
    /// it is the first answer owed, everything of it that arrived is written, and the
    /// connection is open. None otherwise (the bytes are appended and written as usual).
    pub fn pipe_ready(&self, exchange: ExchangeRef) -> Option<usize> {
        if self.dead || self.lingering() {
            return None;
        }
        match self.out.front() {
            Some(Slot::Streaming { exchange: e, out, len, piped }) if *e == exchange => {
                let arrived = out.body.len() + piped;
                (self.written == out.head.len() + arrived && arrived < *len).then(|| len - arrived)
            }
            _ => None,
        }
    }

    /// `n` more bytes of `exchange`'s streaming answer are in the pipe to this connection's
    /// socket (never past its length); the shell writes them there and reports them
    /// (`wrote`). False when no slot streams it.
    pub fn stream_piped(&mut self, exchange: ExchangeRef, n: usize) -> bool {
        for slot in self.out.iter_mut() {
            if let Slot::Streaming { exchange: e, out, len, piped } = slot {
                if *e == exchange {
                    *piped += n.min(len.saturating_sub(out.body.len() + *piped));
                    return true;
                }
            }
        }
        false
    }

    /// The execution client of `exchange`'s streaming answer failed before its end. While no
    /// byte of it has been written, the slot waits for the exchange again; otherwise what
    /// arrived is written and the connection ends after it.
    pub fn stream_failed(&mut self, exchange: ExchangeRef) -> StreamEnd {
        let Some(i) =
            self.out.iter().position(|s| matches!(s, Slot::Streaming { exchange: e, .. } if *e == exchange))
        else {
            return StreamEnd::Gone;
        };
        let started = i == 0 && self.written > 0;
        let Some(Slot::Streaming { out, len, piped, .. }) = self.out.get_mut(i) else {
            return StreamEnd::Gone;
        };
        if !started {
            self.queued_bytes = self.queued_bytes.saturating_sub(out.head.len() + *len);
            self.out[i] = Slot::Waiting(exchange);
            return StreamEnd::Waiting;
        }
        let arrived = out.body.len() + *piped;
        self.queued_bytes = self.queued_bytes.saturating_sub(len.saturating_sub(arrived));
        *len = arrived;
        out.close = true;
        self.no_more_requests = true;
        StreamEnd::Truncated
    }

    /// The exchanges this connection still waits for (so they can forget it when it dies).
    pub fn waiting(&self) -> impl Iterator<Item = ExchangeRef> + '_ {
        self.out.iter().filter_map(|s| match s {
            Slot::Waiting(e) => Some(*e),
            Slot::Ready(_) | Slot::Streaming { .. } => None,
        })
    }

    /// The bytes ready to go out, in order, for one vectored write: the unwritten part of
    /// each ready answer's head and body (empty ones skipped), up to the first answer still
    /// waited for and never past the connection's last answer. A streaming answer offers what
    /// of its body has arrived, and nothing after it goes before it is whole. Nothing while
    /// lingering (the write side is shut). The shell takes at most `WRITE_SLICES` of them per
    /// write.
    pub fn to_write(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let lingering = self.lingering();
        let mut skip = self.written;
        // Set after the connection's last answer, or a streaming one not whole yet.
        let mut last = false;
        self.out
            .iter()
            .map_while(move |slot| {
                if last || lingering {
                    return None;
                }
                let (out, partial) = match slot {
                    Slot::Ready(out) => (out, false),
                    // Bytes coming through a pipe are written by whoever drains it
                    // (`stream_piped`): nothing behind them goes first.
                    Slot::Streaming { out, len, piped, .. } => {
                        (out, out.body.len() + piped < *len || *piped > 0)
                    }
                    Slot::Waiting(_) => return None,
                };
                // A partial body ends this write: the answers behind it wait for it.
                last = out.close || partial;
                let head_skip = skip.min(out.head.len());
                let body_skip = (skip - head_skip).min(out.body.len());
                skip = 0;
                Some([&out.head[head_skip..], &out.body[body_skip..]])
            })
            .flatten()
            .filter(|part| !part.is_empty())
    }

    /// The shell wrote `n` bytes of `to_write` (0: the socket took nothing, `WouldBlock`, or
    /// there was nothing to write). Written answers leave the queue; the write deadline runs
    /// from the last byte the client took while ready bytes remain; the last answer ends the
    /// connection, or starts its lingering close (`Flushed::Linger`: the shell shuts the
    /// write side down).
    pub fn wrote(&mut self, n: usize, now: Instant) -> Flushed {
        if self.lingering() {
            // Everything was written and the write side is shut.
            return Flushed::Drained;
        }
        self.sent += n as u64;
        let mut left = n;
        loop {
            // The answer's length, the part of it that can be written now, and whether it is
            // the connection's last.
            let (len, ready, close) = match self.out.front() {
                Some(Slot::Ready(out)) => (out.len(), out.len(), out.close),
                Some(Slot::Streaming { out, len, piped, .. }) => {
                    (out.head.len() + len, out.len() + piped, out.close)
                }
                _ => break,
            };
            let take = left.min(ready - self.written);
            self.written += take;
            left -= take;
            if self.written < ready {
                // The write deadline runs from the last byte the client took; a write that
                // moved nothing does not restart it.
                if n > 0 || self.stalled_since.is_none() {
                    self.stalled_since = Some(now);
                }
                return Flushed::Blocked;
            }
            if self.written < len {
                // All that arrived of a streaming answer is written: the rest waits for its
                // execution client, not for this one, so no write deadline runs.
                self.stalled_since = None;
                return Flushed::Drained;
            }
            self.queued_bytes = self.queued_bytes.saturating_sub(len);
            self.out.pop_front();
            self.written = 0;
            self.stalled_since = None;
            self.last_activity = now;
            if close {
                self.no_more_requests = true;
                self.out.clear();
                self.queued_bytes = 0;
                if self.linger_after_close && !self.peer_closed {
                    self.linger = Some(Linger::start(now));
                    return Flushed::Linger;
                }
                self.dead = true;
                return Flushed::Drained;
            }
        }
        if self.no_more_requests && self.out.is_empty() {
            self.dead = true;
        }
        Flushed::Drained
    }

    /// The socket failed on a write: the connection is over.
    pub fn write_failed(&mut self) {
        self.dead = true;
    }

    /// When this connection must next be looked at: a request must arrive whole within
    /// `--read-timeout` of its first byte, a client owed ready answers must take a byte of
    /// them within `--write-timeout`, an idle connection lasts `--idle-timeout`, and a
    /// lingering close `LINGER_TIME`. Answers still being waited for are bounded by their
    /// exchanges' own deadlines.
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        self.due(timeouts).map(|(at, _)| at)
    }

    /// The earliest deadline, and which it is.
    fn due(&self, timeouts: &Timeouts) -> Option<(Instant, Expired)> {
        if let Some(linger) = self.linger.as_ref() {
            return Some((linger.deadline(), Expired::Linger));
        }
        let read = self.request_started.map(|t| (t + timeouts.read, Expired::Read));
        let write = self.stalled_since.map(|t| (t + timeouts.write, Expired::Write));
        let idle = (self.out.is_empty() && read.is_none())
            .then(|| (self.last_activity + timeouts.idle, Expired::Idle));
        [write, read, idle].into_iter().flatten().min_by_key(|(at, _)| *at)
    }

    /// Closes the connection if its deadline has passed, and says which one did.
    pub fn on_timeout(&mut self, now: Instant, timeouts: &Timeouts) -> Option<Expired> {
        let (at, expired) = self.due(timeouts)?;
        if at > now || self.dead {
            return None;
        }
        self.dead = true;
        Some(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(60);
    const WRITE: Duration = Duration::from_secs(10);
    const T: Timeouts = Timeouts { read: READ, idle: IDLE, write: WRITE };

    /// A connection and a client that takes at most `room` more bytes of what it is owed.
    struct Tested {
        down: Downstream,
        written: Vec<u8>,
        room: usize,
    }

    impl std::ops::Deref for Tested {
        type Target = Downstream;
        fn deref(&self) -> &Downstream {
            &self.down
        }
    }

    impl std::ops::DerefMut for Tested {
        fn deref_mut(&mut self) -> &mut Downstream {
            &mut self.down
        }
    }

    impl Tested {
        /// What the shell's flush does, with the client's `room` for a socket: write the
        /// slices `to_write` offers (at most `WRITE_SLICES`) until the client takes no more or
        /// nothing is left, telling the connection each time.
        fn flush(&mut self, now: Instant) -> Flushed {
            loop {
                let ready: Vec<u8> = self.down.to_write().take(WRITE_SLICES).flatten().copied().collect();
                let n = ready.len().min(self.room);
                self.written.extend_from_slice(&ready[..n]);
                self.room -= n;
                match self.down.wrote(n, now) {
                    Flushed::Blocked if n > 0 => continue,
                    flushed => return flushed,
                }
            }
        }
    }

    fn connection(room: usize, now: Instant) -> Tested {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let down = Downstream::new(1, peer, Limits::default(), now);
        Tested { down, written: Vec::new(), room }
    }

    /// A connection whose 413 was answered early (half a head had arrived) and written at `t0`.
    fn lingering(t0: Instant) -> Tested {
        let mut down = connection(usize::MAX, t0);
        down.reader.advance(b"POST / HTTP/1.1\r\n");
        down.after_read(t0);
        down.answer_early(413, b"{}".to_vec(), 1);
        assert_eq!(down.flush(t0), Flushed::Linger);
        down
    }

    #[test]
    fn an_early_answer_is_written_whole_then_the_connection_lingers_until_its_deadline() {
        let t0 = Instant::now();
        let mut down = lingering(t0);
        let written = String::from_utf8_lossy(&down.written).into_owned();
        assert!(written.starts_with("HTTP/1.1 413 "), "{written}");
        assert!(written.contains("Connection: close\r\n"), "an early answer always closes: {written}");
        assert!(down.lingering() && !down.dead && down.no_more_requests);
        // The linger deadline replaces the read deadline of the half-read request.
        assert_eq!(down.deadline(&T), Some(t0 + LINGER_TIME));
        // Flushing again (a WRITABLE edge after the shutdown) changes nothing.
        assert_eq!(down.flush(t0 + Duration::from_millis(1)), Flushed::Drained);
        assert!(!down.dead);
        assert_eq!(down.on_timeout(t0 + LINGER_TIME - Duration::from_micros(1), &T), None);
        assert!(!down.dead);
        assert_eq!(down.on_timeout(t0 + LINGER_TIME, &T), Some(Expired::Linger));
        assert!(down.dead);
    }

    #[test]
    fn lingering_ends_when_the_byte_budget_is_spent() {
        let t0 = Instant::now();
        let mut down = lingering(t0);
        down.discarded(usize::try_from(LINGER_BYTES).expect("fits") - 1);
        assert!(!down.dead);
        down.discarded(1);
        assert!(down.dead);
    }

    #[test]
    fn lingering_ends_when_the_client_closes() {
        let mut down = lingering(Instant::now());
        down.on_eof();
        assert!(down.dead);
    }

    #[test]
    fn a_blocked_early_answer_lingers_only_once_written_whole() {
        let t0 = Instant::now();
        let mut down = connection(5, t0);
        down.answer_early(431, b"{}".to_vec(), 1);
        assert_eq!(down.flush(t0), Flushed::Blocked);
        assert!(!down.lingering() && !down.dead);
        let t1 = t0 + Duration::from_millis(300);
        down.room = usize::MAX;
        assert_eq!(down.flush(t1), Flushed::Linger);
        // The lingering time counts from the end of the answer, not from the request.
        assert_eq!(down.deadline(&T), Some(t1 + LINGER_TIME));
    }

    #[test]
    fn a_closing_answer_to_a_whole_request_closes_without_lingering() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        down.push(Slot::Ready(Outgoing::json(200, b"{}".to_vec(), false, 1)));
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(down.dead && !down.lingering());
    }

    #[test]
    fn a_client_that_closed_first_is_not_lingered_for() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        down.answer_early(400, b"{}".to_vec(), 1);
        down.on_eof();
        assert!(!down.dead, "the answer is still owed to a half-closed client");
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(down.dead && !down.lingering());
    }

    /// A reference to a live exchange, for slots that wait for one.
    fn exchange_ref(exchanges: &mut crate::core::exchange::Exchanges) -> ExchangeRef {
        use crate::core::exchange::{Exchange, Inbound};
        let now = Instant::now();
        let inbound = Inbound::for_test(crate::policy::Class::NonEngine, None, now);
        exchanges.insert(Exchange::new(std::rc::Rc::new(inbound), None, 1, now))
    }

    /// A ready `GET` answer of `len` body bytes.
    fn ready(len: usize) -> Slot {
        Slot::Ready(Outgoing::answer(200, None, vec![b'x'; len], true, 1))
    }

    #[test]
    fn regression_a_client_that_stops_reading_is_closed_after_the_write_timeout() {
        // `deadline` was None while answers were owed: a client that sent requests and read
        // nothing kept its connection (and a share of --max-connections) for ever.
        let t0 = Instant::now();
        let mut down = connection(100, t0);
        down.push(ready(1000));
        assert_eq!(down.flush(t0), Flushed::Blocked);
        assert_eq!(down.deadline(&T), Some(t0 + WRITE), "the write deadline replaces the idle one");
        // Taking a byte restarts the wait; a flush that moves nothing does not.
        let t1 = t0 + Duration::from_secs(4);
        down.room = 1;
        assert_eq!(down.flush(t1), Flushed::Blocked);
        assert_eq!(down.flush(t1 + Duration::from_secs(1)), Flushed::Blocked);
        assert_eq!(down.deadline(&T), Some(t1 + WRITE));
        assert_eq!(down.on_timeout(t1 + WRITE - Duration::from_micros(1), &T), None);
        assert!(!down.dead);
        assert_eq!(down.on_timeout(t1 + WRITE, &T), Some(Expired::Write));
        assert!(down.dead);
        assert_eq!(Expired::Write.reason(), "write_timeout");
    }

    #[test]
    fn the_write_deadline_runs_only_while_ready_answers_are_blocked() {
        let t0 = Instant::now();
        let exchange = exchange_ref(&mut Default::default());
        let mut down = connection(usize::MAX, t0);
        // Waiting for an exchange is not the client's doing: its own deadline bounds that.
        down.push(Slot::Waiting(exchange));
        down.push(ready(10));
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.deadline(&T), None);
        // Once everything is written the connection is idle again.
        let mut down = connection(50, t0);
        down.push(ready(100));
        assert_eq!(down.flush(t0), Flushed::Blocked);
        let t1 = t0 + Duration::from_secs(3);
        down.room = usize::MAX;
        assert_eq!(down.flush(t1), Flushed::Drained);
        assert_eq!(down.deadline(&T), Some(t1 + IDLE));
        // A request arriving meanwhile keeps its own read deadline; the earlier one wins.
        let mut down = connection(0, t0);
        down.push(ready(10));
        assert_eq!(down.flush(t0), Flushed::Blocked);
        down.reader.advance(b"POST / HTTP/1.1\r\n");
        down.after_read(t0 + Duration::from_secs(8));
        assert_eq!(down.deadline(&T), Some(t0 + WRITE));
        assert_eq!(down.on_timeout(t0 + WRITE, &T), Some(Expired::Write));
    }

    #[test]
    fn regression_the_pipeline_is_bounded_in_answers_and_bytes() {
        // Only the count was bounded, and only between reads.
        let t0 = Instant::now();
        let mut down = connection(0, t0);
        for _ in 0..MAX_PIPELINE - 1 {
            down.push(ready(10));
        }
        assert!(!down.backpressured());
        down.push(ready(10));
        assert!(down.backpressured(), "{MAX_PIPELINE} answers");
        let exchange = exchange_ref(&mut Default::default());
        let mut down = connection(0, t0);
        down.push(ready(MAX_QUEUED_BYTES / 2));
        assert!(!down.backpressured());
        down.push(Slot::Waiting(exchange));
        assert!(!down.backpressured(), "an answer still awaited holds no bytes here");
        assert!(down.fill(exchange, Outgoing::answer(200, None, vec![0; MAX_QUEUED_BYTES / 2], true, 1)));
        assert!(down.backpressured(), "{} bytes queued", down.queued_bytes());
        // Writing them lifts it, byte count and all.
        down.room = usize::MAX;
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(!down.backpressured());
        assert_eq!(down.queued_bytes(), 0);
    }

    #[test]
    fn ready_answers_are_offered_in_order_up_to_the_first_still_awaited() {
        let t0 = Instant::now();
        let exchange = exchange_ref(&mut Default::default());
        let mut down = connection(0, t0);
        down.push(ready(3));
        down.push(Slot::Waiting(exchange));
        down.push(ready(4));
        let first = Outgoing::answer(200, None, b"xxx".to_vec(), true, 1);
        let offered: Vec<&[u8]> = down.to_write().collect();
        assert_eq!(offered, [&first.head[..], b"xxx"], "nothing past the awaited answer");
        // A short write: the rest is offered from where it stopped, within the head…
        assert_eq!(down.wrote(5, t0), Flushed::Blocked);
        let offered: Vec<&[u8]> = down.to_write().collect();
        assert_eq!(offered, [&first.head[5..], b"xxx"]);
        // …and within the body.
        assert_eq!(down.wrote(first.head.len() - 5 + 1, t0), Flushed::Blocked);
        assert_eq!(down.to_write().collect::<Vec<_>>(), [b"xx"]);
        assert_eq!(down.sent, first.head.len() as u64 + 1);
        assert_eq!(down.wrote(2, t0), Flushed::Drained);
        assert_eq!(down.to_write().count(), 0);
        assert!(down.owes_answers() && !down.dead);
    }

    #[test]
    fn pipelined_answers_go_out_in_bounded_vectored_writes() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        for _ in 0..MAX_PIPELINE {
            down.push(ready(10));
        }
        assert_eq!(down.to_write().count(), 2 * MAX_PIPELINE, "a head and a body per answer");
        let one = Outgoing::answer(200, None, vec![b'x'; 10], true, 1).len();
        // The shell writes WRITE_SLICES at a time; each write moves whole answers out.
        let offered: usize = down.to_write().take(WRITE_SLICES).map(<[u8]>::len).sum();
        assert_eq!(offered, one * WRITE_SLICES / 2);
        assert_eq!(down.wrote(offered, t0), Flushed::Blocked, "more is ready");
        assert_eq!(down.answers_owed(), MAX_PIPELINE - WRITE_SLICES / 2);
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.written.len(), one * (MAX_PIPELINE - WRITE_SLICES / 2));
        assert!(!down.owes_answers() && down.queued_bytes() == 0);
    }

    #[test]
    fn answers_without_a_body_are_offered_as_their_head_alone() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        let no_content = Outgoing::answer(204, None, b"{}".to_vec(), true, 1);
        let to_head = Outgoing::answer(200, None, b"12345".to_vec(), true, 1).without_body();
        let heads = [no_content.head.clone(), to_head.head.clone()];
        down.push(Slot::Ready(no_content));
        down.push(Slot::Ready(to_head));
        let offered: Vec<&[u8]> = down.to_write().collect();
        assert_eq!(offered, [&heads[0][..], &heads[1][..]], "no empty body slices, no body bytes");
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.written, [&heads[0][..], &heads[1][..]].concat());
    }

    #[test]
    fn nothing_is_offered_past_the_answer_that_ends_the_connection() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        let last = Outgoing::json(200, b"{}".to_vec(), false, 1);
        let len = last.len();
        down.push(Slot::Ready(last));
        down.push(ready(10));
        assert_eq!(down.to_write().map(<[u8]>::len).sum::<usize>(), len);
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(down.dead && down.written.len() == len && down.queued_bytes() == 0);
    }

    #[test]
    fn a_failed_write_ends_the_connection() {
        let mut down = connection(0, Instant::now());
        down.push(ready(10));
        down.write_failed();
        assert!(down.dead);
    }

    #[test]
    fn the_rest_of_a_read_that_filled_the_pipeline_waits_unparsed() {
        let mut down = connection(0, Instant::now());
        assert!(!down.has_pending());
        down.stash(b"GET / HTTP/1.1\r\n");
        down.stash(b"Host: x\r\n\r\n");
        assert!(down.has_pending());
        assert_eq!(down.take_pending(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!down.has_pending());
    }

    #[test]
    fn regression_answers_without_a_body_carry_none() {
        // An EL's 204 was relayed with its Content-Length (and any body it had).
        for status in [204, 304] {
            let out = Outgoing::answer(status, Some(b"application/json"), b"{}".to_vec(), true, 1);
            let head = String::from_utf8_lossy(&out.head).into_owned();
            assert!(out.body.is_empty() && !head.contains("Content-Length"), "{status}: {head}");
        }
        // A HEAD answer keeps the length a GET would carry, and no body.
        let out = Outgoing::answer(200, None, b"12345".to_vec(), true, 1).without_body();
        assert!(String::from_utf8_lossy(&out.head).contains("Content-Length: 5\r\n"));
        assert!(out.body.is_empty());
    }

    #[test]
    fn reading_waits_for_the_budget_only_between_requests_of_a_refused_connection() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        assert!(!down.waits_for_budget(), "a connection never refused is read");
        down.budget_refused = true;
        assert!(down.waits_for_budget(), "between requests, a refused connection waits");
        down.reader.advance(b"POST / HTTP/1.1\r\nHost: x\r\n");
        assert!(!down.waits_for_budget(), "a request partly read is read on");
        let mut lingering = lingering(t0);
        lingering.budget_refused = true;
        assert!(!lingering.waits_for_budget(), "a lingering close goes on dropping bytes");
        let mut dead = connection(usize::MAX, t0);
        dead.budget_refused = true;
        dead.dead = true;
        assert!(!dead.waits_for_budget());
    }

    #[test]
    fn read_and_idle_deadlines_say_which_expired() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        assert_eq!(down.deadline(&T), Some(t0 + IDLE));
        let t1 = t0 + Duration::from_secs(1);
        down.reader.advance(b"POST / HTTP/1.1\r\n");
        down.after_read(t1);
        assert_eq!(down.deadline(&T), Some(t1 + READ));
        assert_eq!(down.on_timeout(t1 + READ, &T), Some(Expired::Read));
        let mut idle = connection(usize::MAX, t0);
        assert_eq!(idle.on_timeout(t0 + IDLE - Duration::from_micros(1), &T), None);
        assert_eq!(idle.on_timeout(t0 + IDLE, &T), Some(Expired::Idle));
        // A dead connection is not reported twice.
        assert_eq!(idle.on_timeout(t0 + IDLE * 2, &T), None);
    }

    #[test]
    fn a_written_answer_gives_its_buffer_to_the_pool() {
        let t0 = Instant::now();
        let pool = crate::pool::BodyPool::shared();
        let mut down = connection(usize::MAX, t0);
        let body = vec![b'x'; crate::pool::MIN_POOLED];
        let address = body.as_ptr();
        down.push(Slot::Ready(Outgoing::answer(200, None, body, true, 1).recycled_by(&pool)));
        assert_eq!(pool.borrow().spare_bytes(), 0, "not while it is queued");
        assert_eq!(down.flush(t0), Flushed::Drained);
        let spare = pool.borrow_mut().take(crate::pool::MIN_POOLED).expect("the answer's buffer");
        assert_eq!(spare.as_ptr(), address);
    }

    /// A streaming answer of `len` body bytes, and the head a stored answer of that length has.
    fn streaming(len: usize) -> (Outgoing, Vec<u8>) {
        let out = Outgoing::streaming(200, Some(b"application/json"), Vec::with_capacity(len), len, true, 1);
        let stored = Outgoing::json(200, vec![b'.'; len], true, 1);
        (out, stored.head.clone())
    }

    /// A connection whose two calls (a, then b) wait for their answers.
    fn two_waiting(t0: Instant) -> (Tested, ExchangeRef, ExchangeRef) {
        let mut exchanges = crate::core::exchange::Exchanges::default();
        let (a, b) = (exchange_ref(&mut exchanges), exchange_ref(&mut exchanges));
        let mut down = connection(usize::MAX, t0);
        down.push(Slot::Waiting(a));
        down.push(Slot::Waiting(b));
        (down, a, b)
    }

    /// A connection owed a streaming answer of 10 body bytes (a) and, behind it, a ready one:
    /// the streaming answer's head and the ready answer's bytes.
    fn streaming_then_ready(t0: Instant) -> (Tested, ExchangeRef, Vec<u8>, Vec<u8>) {
        let (mut down, a, b) = two_waiting(t0);
        let next = Outgoing::json(200, b"{}".to_vec(), true, 1);
        let next_bytes = [next.head.clone(), next.body.clone()].concat();
        assert!(down.fill(b, next));
        let (out, head) = streaming(10);
        assert_eq!(out.head, head, "byte for byte the head of the same answer stored");
        assert!(down.stream(a, out, 10));
        (down, a, head, next_bytes)
    }

    #[test]
    fn a_streaming_answer_offers_what_arrived_and_the_next_answer_waits_behind_it_on_a_fake_clock() {
        let t0 = Instant::now();
        let (mut down, a, head, next_bytes) = streaming_then_ready(t0);
        assert_eq!(down.queued_bytes(), head.len() + 10 + next_bytes.len(), "charged whole from the start");
        assert_eq!(down.waiting().count(), 0);
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.written, head, "the head goes at once; the answer behind waits");
        assert!(down.stream_append(a, b"01234"));
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(down.flush(t1), Flushed::Drained);
        assert_eq!(down.written, [&head[..], b"01234"].concat());
        assert_eq!(down.deadline(&T), None, "waiting for the execution client runs no write deadline");
        assert!(down.stream_append(a, b"56789 and never past its length"));
        assert_eq!(down.flush(t1), Flushed::Drained);
        assert_eq!(down.written, [&head[..], b"0123456789", &next_bytes[..]].concat());
        assert_eq!((down.queued_bytes(), down.owes_answers()), (0, false));
    }

    #[test]
    fn piped_bytes_go_only_once_all_that_arrived_is_written_and_nothing_behind_them_goes_first() {
        let t0 = Instant::now();
        let (mut down, a, head, next_bytes) = streaming_then_ready(t0);
        assert_eq!(down.pipe_ready(a), None, "its head is not written yet");
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.pipe_ready(a), Some(10));
        assert!(down.stream_append(a, b"012"));
        assert_eq!(down.pipe_ready(a), None, "appended bytes are not written yet");
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.pipe_ready(a), Some(7));
        // Seven bytes go into the pipe: the shell writes them, not `to_write`.
        assert!(down.stream_piped(a, 7 + 5), "never past its length");
        assert_eq!(down.pipe_ready(a), None, "all of it has arrived");
        assert_eq!(down.to_write().count(), 0, "the answer behind waits for the pipe");
        assert_eq!(down.flush(t0), Flushed::Blocked, "what the pipe holds is owed");
        assert_eq!(down.deadline(&T), Some(t0 + WRITE), "and its write deadline runs");
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(down.wrote(4, t1), Flushed::Blocked);
        assert_eq!(down.deadline(&T), Some(t1 + WRITE), "each byte taken restarts it");
        down.wrote(3, t1);
        assert_eq!(down.flush(t1), Flushed::Drained);
        assert_eq!(down.written, [&head[..], b"012", &next_bytes[..]].concat());
        assert_eq!((down.queued_bytes(), down.owes_answers()), (0, false));
    }

    #[test]
    fn a_piped_answer_cut_off_ends_the_connection_after_what_reached_the_pipe() {
        let t0 = Instant::now();
        let (mut down, a, _) = two_waiting(t0);
        let (out, head) = streaming(10);
        assert!(down.stream(a, out, 10));
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(down.stream_piped(a, 4));
        assert_eq!(down.stream_failed(a), StreamEnd::Truncated);
        assert_eq!(down.queued_bytes(), head.len() + 4, "only what reached the pipe is owed");
        assert_eq!(down.wrote(4, t0), Flushed::Drained);
        assert!(down.dead, "the beacon node sees the answer end short, then the connection");
    }

    #[test]
    fn a_client_that_takes_nothing_of_a_streaming_answer_meets_the_write_timeout_on_a_fake_clock() {
        let t0 = Instant::now();
        let mut exchanges = crate::core::exchange::Exchanges::default();
        let a = exchange_ref(&mut exchanges);
        let (out, head) = streaming(10);
        let mut down = connection(head.len() + 2, t0);
        down.push(Slot::Waiting(a));
        assert!(down.stream(a, out, 10));
        assert!(down.stream_append(a, b"01234"));
        assert_eq!(down.flush(t0), Flushed::Blocked);
        assert_eq!(down.deadline(&T), Some(t0 + WRITE));
        assert_eq!(down.on_timeout(t0 + WRITE, &T), Some(Expired::Write));
    }

    #[test]
    fn a_streaming_answer_cut_off_waits_again_while_unwritten_else_ends_the_connection_after_what_arrived() {
        let t0 = Instant::now();
        // Behind an answer still waited for, no byte of it went out: it may be answered again.
        let (mut down, a, b) = two_waiting(t0);
        let (out, _) = streaming(10);
        assert!(down.stream(b, out, 10));
        assert!(down.stream_append(b, b"0123"));
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(down.written.is_empty());
        assert_eq!(down.stream_failed(b), StreamEnd::Waiting);
        assert_eq!(down.waiting().collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(down.queued_bytes(), 0);
        assert_eq!(down.stream_failed(b), StreamEnd::Gone, "no longer streaming");
        // Part of it went out: the rest of what arrived is written, then the connection ends.
        let mut down = connection(usize::MAX, t0);
        down.push(Slot::Waiting(a));
        down.push(Slot::Waiting(b));
        let (out, head) = streaming(10);
        assert!(down.stream(a, out, 10));
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert!(down.stream_append(a, b"012"));
        assert_eq!(down.stream_failed(a), StreamEnd::Truncated);
        assert_eq!(down.flush(t0), Flushed::Drained);
        assert_eq!(down.written, [&head[..], b"012"].concat(), "a body shorter than its Content-Length");
        assert!(down.dead && down.no_more_requests);
    }
}
