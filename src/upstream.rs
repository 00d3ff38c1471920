//! One execution client (or one `--proxies` peer): its health, its ordered backlog, the calls
//! waiting for a connection, and its connections.
//!
//! State-changing calls (`newPayload`, `forkchoiceUpdated`) wait in a bounded backlog and go
//! out one at a time, in arrival order, on whichever connection is free; other calls go out at
//! once on any free connection but the last: that one is the ordered lane's, so slow calls
//! never keep an ordered call waiting for a connection. A client that cannot be reached keeps its backlog and is retried
//! with capped exponential backoff, so it catches up in order as soon as it is back.
//!
//! An ordered call that times out, or whose connection breaks, is never dropped for that
//! reason: it goes back to the front of the backlog (`after_failure`) and the client counts as
//! not answering, so it is retried after the backoff, not at once. Its connection is aborted
//! (`SO_LINGER` 0, so closing it sends RST and the kernel discards the unsent request) before
//! any later call can go out: a request stuck in a partitioned network must not reach the
//! client later, behind newer calls.
//!
//! A connection (`Conn`) is a state machine that takes bytes and `now` and says what to do:
//! `to_write` offers the rest of its request (the head it built, then the shared body,
//! borrowed, never copied), `wrote` and `transport_sent` learn what moved, `on_bytes` and
//! `on_eof` take the client's plaintext and the end of its stream and return an `Outcome`.
//!
//! This file knows no JSON and no beacon nodes, and no socket, `io::Read`/`Write` or TLS
//! session: `shell::ElSockets` connects, registers and closes the sockets (with RST when a
//! connection asks to be aborted) and keeps each `https://` connection's TLS session beside its
//! socket; the event loop moves bytes between the two. The TLS handshake still counts as
//! connecting (`Connecting`, under the connect deadline), and a request is out only once the
//! session holds none of its records (`transport_sent`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::Endpoint;
use crate::core::exchange::{ExchangeRef, Inbound};
use crate::http::{self, Limits, Response, ResponseReader};
use crate::jwt::TokenCache;
use crate::resolve::Refresh;
use crate::tls;

/// Most connections kept to one execution client; other calls use at most all but one.
pub const MAX_CONNS: usize = 8;
/// Calls that need no order may wait this many for a free connection before the oldest fails.
const MAX_WAITING: usize = 256;
/// An idle kept-alive connection is closed after this long, before the client closes it.
const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A call that waited longer than this in a backlog gets a freshly minted token (see
/// `Upstream::replay_token`); the beacon node's own is then at least this old.
const REPLAY_REMINT_AFTER: Duration = Duration::from_secs(30);
/// Beyond this, a beacon node's token replayed from a backlog is about to be refused.
const STALE_TOKEN_AFTER: Duration = Duration::from_secs(55);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One call for one client.
#[derive(Debug)]
pub struct Job {
    pub inbound: Rc<Inbound>,
    /// The exchange that wants the answer (None for `--proxies` peers and filtered traffic).
    pub exchange: Option<ExchangeRef>,
    /// This client's index among the exchange's targets.
    pub target: usize,
    pub timeout: Duration,
    /// Whether this job already got its one retry after a kept-alive connection closed under it.
    pub retried: bool,
    /// When its request was last handed to a connection (for the answer latency).
    pub sent_at: Option<Instant>,
}

impl Job {
    /// State-changing calls wait in the backlog and go out one at a time, in order.
    pub fn ordered(&self) -> bool {
        self.inbound.class.is_ordered()
    }
}

/// Why a job ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made.
    Refused,
    /// The connection broke before the answer was whole.
    Reset,
    /// The answer did not arrive within the call's timeout.
    Timeout,
    /// What arrived was not an HTTP answer.
    BadAnswer,
    /// The client is down and the call is not one that waits in the backlog.
    Down,
    /// The backlog was full and this, its oldest call, was dropped.
    Dropped,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::BadAnswer => "bad_answer",
            Failure::Down => "down",
            Failure::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Never tried yet.
    Unknown,
    Up,
    /// Unreachable; the next attempt is at `retry_at`.
    Down {
        retry_at: Instant,
        failures: u32,
        /// Calls went unanswered during this outage (not only refused connects): a client that
        /// accepts connections but does not answer is only up again once it answers.
        silent: bool,
    },
}

/// What became of a call that failed on a connection (see `Upstream::after_failure`).
#[derive(Debug)]
pub enum AfterFailure {
    /// The call waits again at the front of the backlog. `dropped` is what no longer fits the
    /// backlog's bounds (oldest first, possibly this very call).
    Requeued { dropped: Vec<Job>, went_silent: Option<bool> },
    /// The call is over for this client.
    Failed { job: Job, went_silent: Option<bool> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Idle,
    Busy,
}

pub struct Conn {
    /// Where the shell connects this connection's socket.
    pub addr: SocketAddr,
    pub state: ConnState,
    pub job: Option<Job>,
    out: Vec<u8>,
    /// How many bytes of the request (head, then body) the shell has taken (`wrote`).
    written: usize,
    /// The shell's transport (a TLS session) still holds bytes of the request that have not
    /// reached the socket (`transport_sent`): the request is not out until they have.
    unsent: bool,
    reader: ResponseReader,
    /// Answers read whole on this connection; a reused one may have been closed by the client.
    served: u32,
    pub deadline: Instant,
    pub sent_at: Instant,
    pub dead: bool,
    /// Writing waits until then (or until the primary has its copy): see `event_loop`.
    pub hold_until: Option<Instant>,
    /// When a write last moved bytes (a primary that stops taking them no longer holds others).
    pub last_progress: Instant,
    /// Closing must send RST and discard what the kernel has not delivered (see `abort`).
    pub abort: bool,
    /// The request's head is out and its body is still arriving from the beacon node: the
    /// event loop lends the body as it grows (`to_write_lent`) until the request is whole and
    /// its job `attach`ed (`core::cut`).
    pub streaming: bool,
    /// The length of the streaming request's body (its `Content-Length`).
    streamed_len: usize,
    /// The answer being relayed as it arrives (`start_relay`): its head, and how many bytes of
    /// its body are still to come. Its body is handed out (`Outcome::Relayed`), never stored.
    relay: Option<(http::ResponseHead, u64)>,
    /// Whether the current answer's head was already offered for relaying (`Outcome::Head`).
    relay_offered: bool,
    /// The streaming request's timeout: its deadline once a connection opened for it is made.
    stream_timeout: Duration,
}

/// What became of the job on a connection after I/O.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to report yet.
    Pending,
    Answered(Job, Response),
    Failed(Job, Failure),
    /// The connection closed under a job before any byte of an answer: send it again, once.
    Retry(Job),
    /// The first `consumed` bytes of the input ended the head of an answer that may be relayed
    /// as it arrives (`core::relay::head_qualifies`): the caller starts the relay
    /// (`start_relay`) or not, then hands in the rest of the input.
    Head {
        consumed: usize,
    },
    /// The first `body` bytes of the input are body of the answer being relayed, for the
    /// caller to pass on; `last` when they end it (then `end_relay`).
    Relayed {
        body: usize,
        last: bool,
    },
}

impl Conn {
    fn new(addr: SocketAddr, answer_limits: Limits, now: Instant) -> Self {
        Conn {
            addr,
            state: ConnState::Connecting,
            job: None,
            out: Vec::new(),
            written: 0,
            unsent: false,
            reader: ResponseReader::new(answer_limits),
            served: 0,
            deadline: now + CONNECT_TIMEOUT,
            sent_at: now,
            dead: false,
            hold_until: None,
            last_progress: now,
            abort: false,
            streaming: false,
            streamed_len: 0,
            relay: None,
            relay_offered: false,
            stream_timeout: Duration::ZERO,
        }
    }

    fn body(&self) -> &[u8] {
        self.job.as_ref().map_or(&[][..], |j| &j.inbound.body)
    }

    /// What the request still has to write: the rest of its head, then the rest of the shared
    /// body, borrowed from the job (never copied: one body serves every client's copy). The
    /// shell writes both with one vectored write, or feeds them to the TLS session, and says
    /// how much it took with `wrote`.
    pub fn to_write(&self) -> (&[u8], &[u8]) {
        self.to_write_lent(self.body())
    }

    /// What a streaming request still has to write, `lent` being the part of its body that
    /// may go out so far (a prefix of the body, which stays in the beacon node's reader): the
    /// rest of the head, then what of `lent` has not gone out. Told with `wrote` as usual.
    pub fn to_write_lent<'a>(&'a self, lent: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let head = self.out.get(self.written..).unwrap_or_default();
        let from = self.written.saturating_sub(self.out.len()).min(lent.len());
        (head, &lent[from..])
    }

    /// The shell took `n` more bytes of `to_write` (into the socket or the TLS session).
    pub fn wrote(&mut self, n: usize, now: Instant) {
        let body = if self.streaming { self.streamed_len } else { self.body().len() };
        self.written = (self.written + n).min(self.out.len() + body);
        if n > 0 {
            self.last_progress = now;
        }
    }

    /// The shell's TLS session sent `sent` bytes of records it had encrypted earlier, and
    /// `holds_more` says whether some still wait for room in the socket. Records reaching
    /// the socket are progress (`last_progress`), and the request is out only when none wait.
    pub fn transport_sent(&mut self, sent: usize, holds_more: bool, now: Instant) {
        self.unsent = holds_more;
        if sent > 0 {
            self.last_progress = now;
        }
    }

    /// Ends the connection; its job is retried once when that is safe, else it failed.
    pub fn fail(&mut self, failure: Failure) -> Outcome {
        self.dead = true;
        match self.job.take() {
            None => Outcome::Pending,
            Some(job) => {
                self.abort();
                let reused = self.served > 0;
                let untouched = !self.reader.started() && self.relay.is_none();
                if reused && untouched && !job.retried && failure == Failure::Reset {
                    Outcome::Retry(Job { retried: true, ..job })
                } else {
                    Outcome::Failed(job, failure)
                }
            }
        }
    }

    /// Plaintext the client sent (the shell read it, and decrypted it over TLS). An answer
    /// read whole ends the job; bytes nobody asked for, or more bytes after a whole answer,
    /// mean the connection is out of step with the client and is never used again. After
    /// `Pending` on a connection that is not `dead`, the caller reads on.
    ///
    /// An answer's head that may be relayed is reported (`Outcome::Head`) before any of its
    /// body is read; once relaying, body bytes are reported (`Outcome::Relayed`), not stored.
    pub fn on_bytes(&mut self, mut input: &[u8], now: Instant) -> Outcome {
        if self.job.is_none() {
            // Bytes nobody asked for: the connection cannot be trusted any more.
            self.dead = true;
            return Outcome::Pending;
        }
        if self.relay.is_some() {
            return self.relay_taken(input.len());
        }
        let whole = input.len();
        while !input.is_empty() {
            let step = self.reader.advance(input);
            input = &input[step.consumed..];
            if step.event.is_none()
                && !self.relay_offered
                && self.job.as_ref().is_some_and(|j| j.exchange.is_some())
            {
                let head = self.reader.head_before_body();
                if head.is_some_and(|(head, len)| crate::core::relay::head_qualifies(head, len)) {
                    self.relay_offered = true;
                    return Outcome::Head { consumed: whole - input.len() };
                }
            }
            match step.event {
                Some(Ok(resp)) => {
                    if !input.is_empty() {
                        // Extra bytes after a whole answer: never reuse this connection.
                        self.dead = true;
                    }
                    return self.complete(resp, now);
                }
                Some(Err(_)) => return self.fail(Failure::BadAnswer),
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        Outcome::Pending
    }

    /// The client closed its side (over TLS: close_notify, or the socket's end). An idle
    /// connection is simply dead; under a job, an answer that runs to the end is whole, and
    /// any other is a reset (retried once on a reused connection, see `fail`).
    pub fn on_eof(&mut self, now: Instant) -> Outcome {
        if self.job.is_none() {
            self.dead = true;
            return Outcome::Pending;
        }
        match self.reader.finish() {
            Ok(resp) => self.complete(resp, now),
            Err(_) => self.fail(Failure::Reset),
        }
    }

    /// The head of the answer just offered (`Outcome::Head`), with its body's length.
    pub fn offered_head(&self) -> Option<(&http::ResponseHead, Option<u64>)> {
        self.reader.head_before_body().filter(|_| self.relay_offered && self.relay.is_none())
    }

    /// Relays the answer just offered (`Outcome::Head`): returns its head, the buffer reserved
    /// for its body (empty; the beacon node's answer is filled into it, so the bytes are still
    /// copied once) and its length. From now on its body is handed out as it arrives.
    pub fn start_relay(&mut self) -> Option<(http::ResponseHead, Vec<u8>, u64)> {
        if !self.relay_offered || self.relay.is_some() {
            return None;
        }
        let (head, body, len) = self.reader.take_for_relay()?;
        self.relay = Some((head.clone(), len));
        Some((head, body, len))
    }

    /// Bytes of the relayed answer's body still to come (None when no answer is relayed):
    /// what may be taken from the socket without reading past the answer's end.
    pub fn relay_left(&self) -> Option<u64> {
        self.relay.as_ref().map(|(_, left)| *left)
    }

    /// `n` bytes arrived (read, or moved on uncopied) while relaying: those that are the
    /// relayed answer's body, and whether they end it (then `end_relay`).
    pub fn relay_taken(&mut self, n: usize) -> Outcome {
        let Some((_, left)) = self.relay.as_mut() else { return Outcome::Pending };
        let body = n.min(usize::try_from(*left).unwrap_or(usize::MAX));
        *left -= body as u64;
        Outcome::Relayed { body, last: *left == 0 }
    }

    /// The relayed answer's last byte was handed out (`Outcome::Relayed` with `last`): the
    /// job is answered, as by a stored answer without its body. `more` says bytes followed it
    /// in the same read (the connection is then out of step, as after a stored answer).
    pub fn end_relay(&mut self, more: bool, now: Instant) -> Outcome {
        match self.relay.take() {
            Some((head, 0)) => {
                if more {
                    self.dead = true;
                }
                self.complete(Response { head, body: Vec::new() }, now)
            }
            Some(unfinished) => {
                self.relay = Some(unfinished);
                Outcome::Pending
            }
            None => Outcome::Pending,
        }
    }

    fn complete(&mut self, resp: Response, now: Instant) -> Outcome {
        if !self.request_sent() {
            // An answer before the whole request went out (say, 413): the connection is no
            // longer in step with the client and must not carry another request.
            self.dead = true;
        }
        self.served += 1;
        self.reader = self.reader.next();
        self.relay_offered = false;
        self.out.clear();
        self.written = 0;
        self.state = ConnState::Idle;
        self.deadline = now + IDLE_CLOSE;
        if !resp.head.keep_alive {
            self.dead = true;
        }
        match self.job.take() {
            Some(job) => Outcome::Answered(job, resp),
            None => Outcome::Pending,
        }
    }

    /// The connection's deadline passed: a connect or an answer took too long, or it idled.
    pub fn on_timeout(&mut self) -> Outcome {
        match self.state {
            ConnState::Connecting => self.fail(Failure::Refused),
            ConnState::Busy => {
                self.dead = true;
                match self.job.take() {
                    Some(job) => {
                        self.abort();
                        Outcome::Failed(job, Failure::Timeout)
                    }
                    None => Outcome::Pending,
                }
            }
            ConnState::Idle => {
                self.dead = true;
                Outcome::Pending
            }
        }
    }

    /// Makes closing this connection send RST and discard what the kernel has not delivered:
    /// a request abandoned here must never reach the client later, after the calls that
    /// follow it on another connection. The shell closes the socket that way (`SO_LINGER` 0)
    /// when it reaps the dead connection at the end of this loop pass; the retry waits for the
    /// backoff (`after_failure`), so it always goes out after that.
    fn abort(&mut self) {
        self.abort = true;
    }

    /// A failed connect: the job goes back to its client for later.
    pub fn take_job(&mut self) -> Option<Job> {
        self.dead = true;
        self.job.take()
    }

    /// Takes large answers' buffers from `pool` (see `pool`).
    pub fn use_pool(&mut self, pool: crate::pool::SharedPool) {
        self.reader.use_pool(pool);
    }

    /// Bytes held for the answer being read (see `core::budget`).
    pub fn held_bytes(&self) -> usize {
        self.reader.held_bytes()
    }

    /// Whether the request was written out whole (over TLS: encrypted and in the socket).
    pub fn request_sent(&self) -> bool {
        self.written >= self.out.len() + self.body().len() && !self.unsent
    }
}

/// Everything about one execution client or peer proxy.
pub struct Upstream {
    pub endpoint: Endpoint,
    /// `--proxies` peers are fire-and-forget: their answers are read and dropped.
    pub is_peer: bool,
    pub token: Option<TokenCache>,
    /// For a client without its own secret when `--jwt-secret` is known: a call replayed from
    /// the backlog long after it arrived would carry the beacon node's stale token (clients
    /// reject an `iat` over 60 s old), so it gets one minted with that shared secret instead.
    pub replay_token: Option<TokenCache>,
    pub health: Health,
    backlog: VecDeque<Job>,
    backlog_bytes: usize,
    waiting: VecDeque<Job>,
    pub conns: Vec<Option<Conn>>,
    /// Whether an ordered job is on a connection now.
    ordered_busy: bool,
    /// Which resolved address the next connection tries.
    next_addr: usize,
    max_backlog: usize,
    max_backlog_bytes: usize,
    /// The HTTP status of the last answer, so a change to or from an error is logged once.
    pub last_http_status: u16,
    /// Backlog drops not yet reported, and when they were last reported (warnings about a full
    /// backlog are at most one a minute, with the count).
    pub unreported_drops: u64,
    pub last_drop_report: Option<Instant>,
    /// Whether a call older than the clients' 60 s `iat` window was replayed with the beacon
    /// node's token during the current down episode (warned once per episode: see
    /// `stale_token_warning`).
    warned_stale_token: bool,
    /// When its host name is looked up again (None for an IP literal): see `resolve`.
    pub refresh: Option<Refresh>,
    /// For an `https://` client: the TLS settings the shell starts each new connection's
    /// session from (the session lives beside the socket, in `shell::ElSockets`).
    pub tls: Option<tls::Settings>,
    /// The caps on this client's answers (`--max-body-bytes`): a larger or endless answer is
    /// this client's failure, and the call falls back to the next one.
    pub answer_limits: Limits,
    /// A connection `start_stream` opened, for the next `dispatch` to report in `opened` (the
    /// event loop connects what a dispatch opened, one way for every connection).
    stream_opened: Option<usize>,
}

/// What `dispatch` wants the event loop to do.
#[derive(Debug, Default)]
pub struct Dispatch {
    /// New connections for the shell to connect and register (indices into `conns`).
    pub opened: Vec<usize>,
    /// Jobs that cannot be served: the client is down and they do not wait.
    pub failed: Vec<(Job, Failure)>,
}

impl Upstream {
    pub fn new(
        endpoint: Endpoint,
        is_peer: bool,
        token: Option<TokenCache>,
        max_backlog: usize,
        max_bytes: usize,
    ) -> Self {
        Upstream {
            endpoint,
            is_peer,
            token,
            replay_token: None,
            health: Health::Unknown,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            waiting: VecDeque::new(),
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            ordered_busy: false,
            next_addr: 0,
            max_backlog,
            max_backlog_bytes: max_bytes,
            last_http_status: 0,
            unreported_drops: 0,
            last_drop_report: None,
            warned_stale_token: false,
            refresh: None,
            tls: None,
            answer_limits: Limits::default(),
            stream_opened: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    pub fn backlog_bytes(&self) -> usize {
        self.backlog_bytes
    }

    /// The client's state in words, for `/status`.
    pub fn state(&self) -> &'static str {
        match self.health {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down { .. } => "down",
        }
    }

    pub fn is_down(&self) -> bool {
        matches!(self.health, Health::Down { .. })
    }

    /// Queues a job. Ordered jobs wait in the bounded backlog (the oldest is dropped on
    /// overflow and returned); others wait for a connection.
    pub fn enqueue(&mut self, job: Job) -> Vec<Job> {
        if job.ordered() {
            self.backlog_bytes += job.inbound.body.len();
            self.backlog.push_back(job);
        } else {
            self.waiting.push_back(job);
        }
        self.enforce_bounds()
    }

    /// Puts a job back where it came from, at the front, after a failed connect or for its
    /// retry. The backlog's bounds still hold: what no longer fits is returned, oldest first
    /// (which may be this very job).
    pub fn requeue_front(&mut self, job: Job) -> Vec<Job> {
        if job.ordered() {
            self.ordered_busy = false;
            self.backlog_bytes += job.inbound.body.len();
            self.backlog.push_front(job);
        } else {
            self.waiting.push_front(job);
        }
        self.enforce_bounds()
    }

    /// Drops the oldest queued jobs beyond the bounds (the newest ordered job always stays).
    fn enforce_bounds(&mut self) -> Vec<Job> {
        let mut dropped = Vec::new();
        while self.backlog.len() > self.max_backlog.max(1)
            || (self.backlog_bytes > self.max_backlog_bytes && self.backlog.len() > 1)
        {
            match self.backlog.pop_front() {
                Some(old) => {
                    self.backlog_bytes -= old.inbound.body.len();
                    dropped.push(old);
                }
                None => break,
            }
        }
        while self.waiting.len() > MAX_WAITING {
            if let Some(old) = self.waiting.pop_front() {
                dropped.push(old);
            }
        }
        dropped
    }

    /// The exchanges waiting on this client's queued jobs, with this client's place in each.
    pub fn queued_exchanges(&self) -> Vec<(ExchangeRef, usize)> {
        self.backlog
            .iter()
            .chain(self.waiting.iter())
            .filter_map(|j| j.exchange.map(|r| (r, j.target)))
            .collect()
    }

    /// Notes that the ordered job on a connection ended (answered or failed).
    pub fn job_ended(&mut self, job: &Job) {
        if job.ordered() {
            self.ordered_busy = false;
        }
    }

    /// The client answered. True when this is news (it was not up).
    pub fn mark_up(&mut self) -> bool {
        let news = self.health != Health::Up;
        self.health = Health::Up;
        news
    }

    /// A connection to the client succeeded: it is up, unless calls went unanswered during
    /// this outage; then only an answer says so. True when this is news.
    pub fn mark_connected(&mut self) -> bool {
        match self.health {
            Health::Down { silent: true, .. } => false,
            _ => self.mark_up(),
        }
    }

    /// A connection attempt failed. True when this is news (it was not already down).
    pub fn mark_down(&mut self, now: Instant) -> bool {
        self.went_down(now, false)
    }

    /// A call got no answer (or its connection broke under it). True when this is news.
    pub fn mark_silent(&mut self, now: Instant) -> bool {
        self.went_down(now, true)
    }

    fn went_down(&mut self, now: Instant, silent_now: bool) -> bool {
        let (news, failures, silent) = match self.health {
            Health::Down { failures, silent, .. } => (false, failures.saturating_add(1), silent),
            _ => (true, 0, false),
        };
        if news {
            // A new down episode: its stale tokens are worth one warning of their own. Every
            // failed reconnect of the same episode (one each 2 s) must not repeat it.
            self.warned_stale_token = false;
        }
        let delay = BACKOFF_FIRST.saturating_mul(1u32 << failures.min(10)).min(BACKOFF_MAX);
        self.health = Health::Down { retry_at: now + delay, failures, silent: silent || silent_now };
        self.next_addr = self.next_addr.wrapping_add(1);
        news
    }

    /// Decides what becomes of a call that failed on a connection. An ordered call that timed
    /// out or lost its connection goes back to the front of the backlog: dropping it would
    /// make the client skip a block. Any timeout, and a broken connection under an ordered
    /// call, count as the client not answering (`went_silent` says whether that is news), so
    /// the retry waits for the backoff instead of looping hot, and the beacon node is answered
    /// by the next client meanwhile. Bad answers and dropped calls are not retried.
    /// `--proxies` peers stay fire-and-forget: a peer slower than `--proxy-request-timeout`
    /// still got the call, and re-sending it would only pile up copies.
    pub fn after_failure(&mut self, job: Job, failure: Failure, now: Instant) -> AfterFailure {
        if self.is_peer {
            self.job_ended(&job);
            return AfterFailure::Failed { job, went_silent: None };
        }
        let requeue = job.ordered() && matches!(failure, Failure::Timeout | Failure::Reset);
        let went_silent = (requeue || failure == Failure::Timeout).then(|| self.mark_silent(now));
        if requeue {
            AfterFailure::Requeued { dropped: self.requeue_front(job), went_silent }
        } else {
            self.job_ended(&job);
            AfterFailure::Failed { job, went_silent }
        }
    }

    /// The moment a down client should be tried again, if it has work.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.health {
            Health::Down { retry_at, .. } if !self.backlog.is_empty() || !self.waiting.is_empty() => {
                Some(retry_at)
            }
            _ => None,
        }
    }

    fn can_connect(&self, now: Instant) -> bool {
        match self.health {
            Health::Down { retry_at, .. } => {
                now >= retry_at && !self.conns.iter().flatten().any(|c| c.state == ConnState::Connecting)
            }
            _ => true,
        }
    }

    /// Hands queued jobs to free connections, opening new ones as needed and allowed.
    pub fn dispatch(&mut self, now: Instant, unix_now: u64) -> Dispatch {
        let mut result = Dispatch::default();
        result.opened.extend(self.stream_opened.take());
        if let Health::Down { retry_at, silent, .. } = self.health {
            // A client that stopped answering is probed with its ordered calls alone; other
            // calls would only wait out their timeout there (a getPayload for a proposal).
            let probing = silent && (self.ordered_busy || !self.backlog.is_empty());
            if now < retry_at || probing {
                // Calls that do not wait for the client fail now, so the beacon node is
                // answered by the next client at once instead of at its timeout.
                result.failed.extend(self.waiting.drain(..).map(|j| (j, Failure::Down)));
            }
            if now < retry_at {
                return result;
            }
        }
        loop {
            // A streaming request is an ordered call on its way: the next waits for it.
            let want_ordered = !self.ordered_busy && !self.backlog.is_empty() && self.streaming().is_none();
            // Other calls never take the last connection: the ordered lane keeps one for
            // itself, so a newPayload never waits behind slow calls (eight 10 s
            // getPayloadBodiesByRange, say) for a free connection.
            let want_other = !self.waiting.is_empty() && self.other_calls_out() < MAX_CONNS - 1;
            if !want_ordered && !want_other {
                break;
            }
            let Some(slot) = self.free_conn(now, &mut result) else { break };
            let job = if want_ordered {
                self.ordered_busy = true;
                match self.backlog.pop_front() {
                    Some(job) => {
                        self.backlog_bytes -= job.inbound.body.len();
                        job
                    }
                    None => break,
                }
            } else {
                match self.waiting.pop_front() {
                    Some(job) => job,
                    None => break,
                }
            };
            self.start(slot, job, now, unix_now);
        }
        result
    }

    /// How many connections carry a call that is not ordered.
    fn other_calls_out(&self) -> usize {
        self.conns.iter().flatten().filter(|c| c.job.as_ref().is_some_and(|j| !j.ordered())).count()
    }

    /// An idle connection, or a new one if allowed; None when none can be had now.
    fn free_conn(&mut self, now: Instant, result: &mut Dispatch) -> Option<usize> {
        if let Some(i) = self.conns.iter().position(|c| {
            c.as_ref().is_some_and(|c| c.state == ConnState::Idle && c.job.is_none() && !c.dead)
        }) {
            return Some(i);
        }
        if !self.can_connect(now) {
            return None;
        }
        // While the client's state is unknown or down, one attempt at a time.
        let connecting = self.conns.iter().flatten().any(|c| c.state == ConnState::Connecting);
        if self.health != Health::Up && connecting {
            return None;
        }
        let slot = self.conns.iter().position(Option::is_none)?;
        let addrs = &self.endpoint.addrs;
        let addr: SocketAddr = *addrs.get(self.next_addr % addrs.len().max(1))?;
        // The shell connects the socket and starts its TLS session (`Dispatch::opened`); a
        // connect or session that fails at once comes back as `connect_failed`, like a refused
        // connect.
        self.conns[slot] = Some(Conn::new(addr, self.answer_limits, now));
        result.opened.push(slot);
        Some(slot)
    }

    /// Puts a job on a connection: the head is written now, with a fresh token, so that calls
    /// replayed from the backlog long after they arrived still carry a valid `iat`.
    fn start(&mut self, slot: usize, job: Job, now: Instant, unix_now: u64) {
        let authorization = self.authorization(job.inbound.received, now, unix_now);
        let Some(conn) = self.conns[slot].as_mut() else { return };
        conn.out.clear();
        let fwd = http::Forward {
            path: &self.endpoint.path,
            host: &self.endpoint.host,
            authorization: authorization.as_deref(),
            client: &job.inbound.client,
            content_length: job.inbound.body.len(),
        };
        http::write_forward_head(&mut conn.out, &job.inbound.head, &fwd);
        conn.written = 0;
        conn.sent_at = now;
        if conn.state != ConnState::Connecting {
            conn.state = ConnState::Busy;
            conn.deadline = now + job.timeout;
        }
        conn.job = Some(Job { sent_at: Some(now), ..job });
    }

    /// Starts a request whose body is still arriving (cut-through, see `core::cut`) and returns
    /// its connection: an idle kept-alive one, or else one opened for it as `dispatch` opens
    /// them (within `MAX_CONNS`, one attempt at a time while the client is not known to be up;
    /// the next `dispatch` reports it for the event loop to connect). Its head goes out once
    /// it is connected, its body as the event loop lends it. Only when the ordered lane is
    /// free and nothing ordered waits (the request is ordered and must not pass one), and the
    /// client is not down, speaks plain HTTP and is not a peer; None otherwise, and the
    /// request takes the usual path (or starts at a later read, once the lane is free).
    /// While it streams, no other ordered call is dispatched; `timeout` is the call's.
    pub fn start_stream(
        &mut self,
        head: &http::RequestHead,
        client: &str,
        declared: usize,
        timeout: Duration,
        now: Instant,
        unix_now: u64,
    ) -> Option<usize> {
        if self.ordered_busy || !self.backlog.is_empty() || self.streaming().is_some() {
            return None;
        }
        if self.is_down() || self.tls.is_some() || self.is_peer || self.stream_opened.is_some() {
            return None;
        }
        let mut opened = Dispatch::default();
        let slot = self.free_conn(now, &mut opened)?;
        self.stream_opened = opened.opened.pop();
        let authorization = self.authorization(now, now, unix_now);
        let conn = self.conns[slot].as_mut()?;
        conn.out.clear();
        let fwd = http::Forward {
            path: &self.endpoint.path,
            host: &self.endpoint.host,
            authorization: authorization.as_deref(),
            client,
            content_length: declared,
        };
        http::write_forward_head(&mut conn.out, head, &fwd);
        conn.written = 0;
        conn.sent_at = now;
        if conn.state != ConnState::Connecting {
            conn.state = ConnState::Busy;
            conn.deadline = now + timeout;
        }
        conn.streaming = true;
        conn.streamed_len = declared;
        conn.stream_timeout = timeout;
        Some(slot)
    }

    /// The live connection carrying a streaming request, if any.
    pub fn streaming(&self) -> Option<usize> {
        self.conns.iter().position(|c| c.as_ref().is_some_and(|c| c.streaming && !c.dead))
    }

    /// The streaming request on connection `slot` is whole and valid: its job takes over the
    /// connection, with what was written so far, and holds the ordered lane as a dispatched
    /// ordered call does. The job comes back when the connection is gone (it then takes the
    /// usual path).
    pub fn attach(&mut self, slot: usize, job: Job) -> Result<(), Job> {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut).filter(|c| c.streaming && !c.dead)
        else {
            return Err(job);
        };
        conn.streaming = false;
        self.ordered_busy |= job.ordered();
        conn.job = Some(Job { sent_at: Some(conn.sent_at), ..job });
        Ok(())
    }

    /// The streaming request on connection `slot` is abandoned (its body was not JSON, or its
    /// beacon node left): the connection is aborted so that the client never gets the rest,
    /// and it is reaped like any dead one. The client is not at fault: it is not marked down,
    /// and its ordered lane moves on.
    pub fn abort_stream(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut).filter(|c| c.streaming) {
            conn.streaming = false;
            conn.dead = true;
            conn.abort();
        }
    }

    /// The token for a call that arrived at `received`: the client's own, or for a call that
    /// waited long in the backlog one minted with the shared secret, or None (the beacon node's
    /// own is forwarded).
    fn authorization(&mut self, received: Instant, now: Instant, unix_now: u64) -> Option<Vec<u8>> {
        let waited = now.saturating_duration_since(received);
        match (self.token.as_mut(), self.replay_token.as_mut()) {
            (Some(own), _) => Some(own.header_value(unix_now).as_bytes().to_vec()),
            (None, Some(shared)) if waited > REPLAY_REMINT_AFTER => {
                Some(shared.header_value(unix_now).as_bytes().to_vec())
            }
            (None, None) => {
                if let Some(waited) = self.stale_token_warning(waited) {
                    log::warn!(
                        "{}: replaying calls that waited {} s with the beacon node's own token; execution \
                         clients reject an iat over 60 s old: give the proxy --jwt-secret (or \
                         --builder-jwt-secrets) so it can mint fresh tokens",
                        self.endpoint.name,
                        waited.as_secs()
                    );
                }
                None
            }
            _ => None,
        }
    }

    /// A call that waited `waited` goes out with the beacon node's own token (no secret to mint
    /// one): Some(waited) when that deserves the warning now. The token is then about to be
    /// refused; that is said once per down episode (`mark_down` starts a new one), however many
    /// reconnect attempts and replays the episode takes.
    fn stale_token_warning(&mut self, waited: Duration) -> Option<Duration> {
        if waited <= STALE_TOKEN_AFTER || self.warned_stale_token {
            return None;
        }
        self.warned_stale_token = true;
        Some(waited)
    }

    /// Connection `slot` could not be made (refused, a failed TLS handshake) or its socket
    /// could not be registered with the event loop: the connection ends (dead, reaped after
    /// the event batch), its job is handed back to be failed or queued again, and the client
    /// counts as down until the backoff ends. Every way a connection fails ends here, so none
    /// can keep a job (and with it the ordered lane) on a dead connection. `news` is true when
    /// the client was not already down.
    pub fn connect_failed(&mut self, slot: usize, now: Instant) -> (Option<Job>, bool) {
        let job = self.conns.get_mut(slot).and_then(Option::as_mut).and_then(Conn::take_job);
        (job, self.mark_down(now))
    }

    /// A connect finished: the job's clock starts now.
    pub fn connected(&mut self, slot: usize, now: Instant) {
        if let Some(conn) = self.conns[slot].as_mut() {
            match conn.job.as_mut() {
                Some(job) => {
                    conn.state = ConnState::Busy;
                    conn.deadline = now + job.timeout;
                    job.sent_at = Some(now);
                }
                // A stream's connection: its clock starts now, as a dispatched call's does.
                None if conn.streaming => {
                    conn.state = ConnState::Busy;
                    conn.deadline = now + conn.stream_timeout;
                    conn.sent_at = now;
                }
                None => {
                    conn.state = ConnState::Idle;
                    conn.deadline = now + IDLE_CLOSE;
                }
            }
        }
    }

    /// Its name now resolves to `addrs`: new connections go there. Idle kept-alive
    /// connections (to the old address) are closed; calls on busy ones finish there. A client
    /// that was down is tried again at once, so its backlog goes to the new address in order.
    pub fn set_addrs(&mut self, addrs: Vec<SocketAddr>, now: Instant) {
        self.endpoint.addrs = addrs;
        self.next_addr = 0;
        for conn in self.conns.iter_mut().flatten() {
            if conn.state == ConnState::Idle && conn.job.is_none() {
                conn.dead = true;
            }
        }
        if let Health::Down { failures, silent, .. } = self.health {
            self.health = Health::Down { retry_at: now, failures, silent };
        }
    }

    /// Takes every job it holds, in flight or queued (the client is being removed); its
    /// connections are marked dead for reaping.
    pub fn take_all_jobs(&mut self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for conn in self.conns.iter_mut().flatten() {
            conn.dead = true;
            jobs.extend(conn.job.take());
        }
        jobs.extend(self.backlog.drain(..));
        jobs.extend(self.waiting.drain(..));
        self.backlog_bytes = 0;
        self.ordered_busy = false;
        jobs
    }

    /// Every queued job, for a final report when the process stops.
    pub fn queued(&self) -> usize {
        self.backlog.len()
            + self.waiting.len()
            + self.conns.iter().flatten().filter(|c| c.job.is_some()).count()
    }

    /// The earliest moment this client needs attention.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.dead)
            .map(|c| c.hold_until.map_or(c.deadline, |h| h.min(c.deadline)))
            .min();
        match (conns, self.retry_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Class;

    fn upstream(max: usize, max_bytes: usize) -> Upstream {
        let endpoint = Endpoint {
            name: "el".into(),
            url: "http://127.0.0.1:1/".into(),
            host: "127.0.0.1:1".into(),
            path: "/".into(),
            addrs: vec!["127.0.0.1:1".parse().expect("address")],
        };
        Upstream::new(endpoint, false, None, max, max_bytes)
    }

    fn job(id: u8, len: usize, ordered: bool) -> Job {
        let class = if ordered { Class::NewPayload } else { Class::GetPayload };
        let mut inbound = Inbound::for_test(class, None, Instant::now());
        inbound.body = vec![id; len];
        inbound.id = Some(vec![b'0' + id]);
        inbound.timeout = Duration::from_secs(1);
        Job {
            inbound: Rc::new(inbound),
            exchange: None,
            target: 0,
            timeout: Duration::from_secs(1),
            retried: false,
            sent_at: None,
        }
    }

    fn ids(jobs: &[Job]) -> Vec<u8> {
        jobs.iter().map(|j| j.inbound.body[0]).collect()
    }

    #[test]
    fn backlog_drops_the_oldest_beyond_its_count() {
        let mut up = upstream(3, 1 << 20);
        let mut dropped = Vec::new();
        for id in 1..=5 {
            dropped.extend(up.enqueue(job(id, 10, true)));
        }
        assert_eq!(ids(&dropped), vec![1, 2]);
        assert_eq!((up.backlog_len(), up.backlog_bytes()), (3, 30));
        let kept: Vec<u8> = up.backlog.iter().map(|j| j.inbound.body[0]).collect();
        assert_eq!(kept, vec![3, 4, 5]);
    }

    #[test]
    fn backlog_drops_the_oldest_beyond_its_bytes_but_keeps_the_newest() {
        let mut up = upstream(100, 25);
        let mut dropped = Vec::new();
        for id in 1..=3 {
            dropped.extend(up.enqueue(job(id, 10, true)));
        }
        assert_eq!(ids(&dropped), vec![1]);
        // One body larger than the whole bound still waits alone rather than vanish.
        let dropped = up.enqueue(job(9, 100, true));
        assert_eq!(ids(&dropped), vec![2, 3]);
        assert_eq!(up.backlog_len(), 1);
    }

    #[test]
    fn a_requeued_job_goes_back_to_the_front() {
        let mut up = upstream(10, 1 << 20);
        up.enqueue(job(1, 1, true));
        up.enqueue(job(2, 1, true));
        let first = up.backlog.pop_front().expect("queued");
        up.backlog_bytes -= 1;
        assert!(up.requeue_front(first).is_empty());
        let order: Vec<u8> = up.backlog.iter().map(|j| j.inbound.body[0]).collect();
        assert_eq!(order, vec![1, 2]);
        assert_eq!(up.backlog_bytes(), 2);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_down_is_news_once() {
        let mut up = upstream(10, 1 << 20);
        let now = Instant::now();
        assert!(up.mark_down(now), "the first failure is news");
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert!(!up.mark_down(now), "later failures are not");
            if let Health::Down { retry_at, .. } = up.health {
                delays.push(retry_at - now);
            }
        }
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(delays[1], Duration::from_millis(400));
        assert_eq!(*delays.last().expect("delays"), BACKOFF_MAX);
        assert!(up.mark_up());
        assert!(!up.mark_up());
    }

    /// The backlog's calls, front first.
    fn backlog(up: &Upstream) -> Vec<u8> {
        up.backlog.iter().map(|j| j.inbound.body[0]).collect()
    }

    /// Takes the backlog's front call as `dispatch` would hand it to a connection.
    fn take_front(up: &mut Upstream) -> Job {
        let job = up.backlog.pop_front().expect("queued");
        up.backlog_bytes -= job.inbound.body.len();
        up.ordered_busy = true;
        job
    }

    #[test]
    fn regression_a_timed_out_ordered_call_is_requeued_at_the_front_and_retried_after_the_backoff() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        up.mark_up();
        for id in 1..=3 {
            up.enqueue(job(id, 1, true));
        }
        let first = take_front(&mut up);
        let AfterFailure::Requeued { dropped, went_silent } = up.after_failure(first, Failure::Timeout, t0)
        else {
            panic!("a timed-out ordered call must not be dropped");
        };
        assert!(dropped.is_empty());
        assert_eq!(went_silent, Some(true), "not answering is news the first time");
        assert_eq!(backlog(&up), vec![1, 2, 3], "back at the front, before the newer calls");
        assert_eq!(up.backlog_bytes(), 3);
        assert!(!up.ordered_busy, "the ordered slot is free for the retry");

        // No hot loop: nothing goes out before the backoff, then the same call goes first.
        assert_eq!(up.retry_at(), Some(t0 + BACKOFF_FIRST));
        let early = up.dispatch(t0 + BACKOFF_FIRST - Duration::from_millis(1), 0);
        assert!(early.opened.is_empty() && early.failed.is_empty());
        assert_eq!(backlog(&up), vec![1, 2, 3]);

        // A broken connection under the retry: requeued again, the backoff doubles, no news.
        let again = take_front(&mut up);
        let t1 = t0 + BACKOFF_FIRST;
        let AfterFailure::Requeued { went_silent, .. } = up.after_failure(again, Failure::Reset, t1) else {
            panic!("an ordered call whose connection broke must not be dropped");
        };
        assert_eq!(went_silent, Some(false), "reported once per outage");
        assert_eq!(up.retry_at(), Some(t1 + 2 * BACKOFF_FIRST));
        assert_eq!(backlog(&up), vec![1, 2, 3]);

        // Connecting is not answering: it stays down until an answer arrives.
        assert!(!up.mark_connected());
        assert!(up.is_down());
        assert!(up.mark_up(), "an answer is news");
        assert!(!up.mark_connected());
    }

    #[test]
    fn a_requeued_call_counts_against_the_backlog_bound_and_the_oldest_is_dropped() {
        let mut up = upstream(2, 1 << 20);
        let now = Instant::now();
        up.enqueue(job(1, 1, true));
        let first = take_front(&mut up);
        up.enqueue(job(2, 1, true));
        up.enqueue(job(3, 1, true));
        let AfterFailure::Requeued { dropped, .. } = up.after_failure(first, Failure::Timeout, now) else {
            panic!("requeued");
        };
        assert_eq!(ids(&dropped), vec![1], "the requeued call is the oldest");
        assert_eq!(backlog(&up), vec![2, 3]);
        assert_eq!(up.backlog_bytes(), 2);
    }

    #[test]
    fn only_ordered_calls_that_timed_out_or_lost_their_connection_are_requeued() {
        let now = Instant::now();
        let cases = [
            (true, Failure::Timeout, true, Some(true)),
            (true, Failure::Reset, true, Some(true)),
            (true, Failure::BadAnswer, false, None),
            (false, Failure::Timeout, false, Some(true)),
            (false, Failure::Reset, false, None),
            (false, Failure::BadAnswer, false, None),
        ];
        for (ordered, failure, requeued, silent) in cases {
            let mut up = upstream(10, 1 << 20);
            up.mark_up();
            let after = up.after_failure(job(1, 1, ordered), failure, now);
            let (was_requeued, went_silent) = match after {
                AfterFailure::Requeued { went_silent, .. } => (true, went_silent),
                AfterFailure::Failed { went_silent, .. } => (false, went_silent),
            };
            assert_eq!((was_requeued, went_silent), (requeued, silent), "ordered {ordered}, {failure:?}");
            assert_eq!(up.is_down(), silent.is_some(), "ordered {ordered}, {failure:?}");
            assert_eq!(up.backlog_len(), usize::from(requeued));
        }
    }

    #[test]
    fn other_calls_fail_at_once_while_an_ordered_call_probes_a_client_that_stopped_answering() {
        let mut up = upstream(10, 1 << 20);
        let now = Instant::now();
        up.mark_up();
        up.enqueue(job(1, 1, true));
        let probe = take_front(&mut up);
        up.after_failure(probe, Failure::Timeout, now);
        let probe = take_front(&mut up);
        up.enqueue(job(2, 1, false));
        // The backoff is over and the ordered call is out again: the other call does not wait.
        let dispatch = up.dispatch(now + BACKOFF_MAX, 0);
        assert!(dispatch.opened.is_empty());
        assert_eq!(dispatch.failed.len(), 1);
        assert_eq!(dispatch.failed[0].1, Failure::Down);
        assert_eq!(backlog(&up), Vec::<u8>::new(), "the probe is out, nothing else ordered waits");
        drop(probe);
    }

    #[test]
    fn a_peer_proxy_stays_fire_and_forget() {
        let mut up = upstream(10, 1 << 20);
        up.is_peer = true;
        let after = up.after_failure(job(1, 1, true), Failure::Timeout, Instant::now());
        assert!(matches!(after, AfterFailure::Failed { went_silent: None, .. }));
        assert!(!up.is_down());
    }

    #[test]
    fn a_refused_outage_ends_at_the_first_connect() {
        let mut up = upstream(10, 1 << 20);
        assert!(up.mark_down(Instant::now()));
        assert!(up.mark_connected());
        assert!(!up.is_down());
    }

    #[test]
    fn calls_that_do_not_wait_fail_at_once_while_down() {
        let mut up = upstream(10, 1 << 20);
        let now = Instant::now();
        up.mark_down(now);
        up.enqueue(job(1, 1, true));
        up.enqueue(job(2, 1, false));
        let dispatch = up.dispatch(now, 0);
        assert!(dispatch.opened.is_empty());
        assert_eq!(dispatch.failed.len(), 1);
        assert_eq!(dispatch.failed[0].1, Failure::Down);
        assert_eq!(up.backlog_len(), 1, "the ordered call keeps waiting");
    }

    #[test]
    fn regression_the_stale_token_warning_repeated_on_every_reconnect_of_a_dead_el() {
        // A fake clock: a call arrives at t0 for a client that is down; every 2 s a reconnect
        // puts it on a connection (where the warning is decided) and the connect fails.
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut warned_at = Vec::new();
        for secs in (0..=180).step_by(2) {
            if up.stale_token_warning(at(secs) - t0).is_some() {
                warned_at.push(secs);
            }
            up.mark_down(at(secs));
        }
        assert_eq!(warned_at, vec![56], "once, at the first attempt past {STALE_TOKEN_AFTER:?}");
        // Back up: the rest of the backlog goes out, as stale as it is, without a new warning.
        assert!(up.mark_up());
        assert_eq!(up.stale_token_warning(at(182) - t0), None, "the same episode");
        // Down again later: a new episode, warned once more.
        assert!(up.mark_down(at(300)));
        assert_eq!(up.stale_token_warning(Duration::from_secs(10)), None, "not stale yet");
        assert_eq!(up.stale_token_warning(Duration::from_secs(60)), Some(Duration::from_secs(60)));
        assert!(!up.mark_down(at(302)));
        assert_eq!(up.stale_token_warning(Duration::from_secs(62)), None);
    }

    #[test]
    fn a_new_address_retries_a_down_client_at_once_and_keeps_its_backlog() {
        let mut up = upstream(10, 1 << 20);
        let now = Instant::now();
        up.mark_down(now);
        up.mark_down(now);
        up.enqueue(job(1, 1, true));
        up.enqueue(job(2, 1, true));
        assert!(up.retry_at().is_some_and(|t| t > now));
        let moved: SocketAddr = "127.0.0.1:2".parse().expect("address");
        up.set_addrs(vec![moved], now);
        assert_eq!(up.retry_at(), Some(now), "tried again at once");
        assert_eq!(up.endpoint.addrs, vec![moved]);
        let order: Vec<u8> = up.backlog.iter().map(|j| j.inbound.body[0]).collect();
        assert_eq!(order, vec![1, 2], "the backlog is kept, in order");
    }

    #[test]
    fn regression_a_connection_that_could_not_be_registered_wedged_the_ordered_lane() {
        // The shell fails to connect or register the socket of the connection `dispatch`
        // opened, which it reports as this connection's failure. No socket is needed here:
        // the connection state machine owns none.
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        up.enqueue(job(1, 1, true));
        up.enqueue(job(2, 1, true));
        let dispatch = up.dispatch(t0, 0);
        assert_eq!(dispatch.opened, vec![0]);
        let (failed, news) = up.connect_failed(0, t0);
        let failed = failed.expect("the job comes back");
        assert!(news, "the client is down now");
        assert_eq!(failed.inbound.body[0], 1);
        assert!(up.requeue_front(failed).is_empty());
        assert!(up.conns[0].as_ref().is_some_and(|c| c.dead && c.job.is_none()), "reapable");
        assert_eq!(backlog(&up), vec![1, 2], "in order, at the front");
        up.conns[0] = None;
        // No attempt before the backoff ends; then the lane moves again, oldest first.
        assert!(up.dispatch(t0, 0).opened.is_empty());
        let dispatch = up.dispatch(t0 + BACKOFF_MAX, 0);
        assert_eq!(dispatch.opened.len(), 1);
        let slot = dispatch.opened[0];
        let sent = up.conns[slot].as_ref().and_then(|c| c.job.as_ref()).map(|j| j.inbound.body[0]);
        assert_eq!(sent, Some(1));
        assert_eq!(backlog(&up), vec![2]);
    }

    /// A client that is up with one idle kept-alive connection, as after a first answer.
    fn up_with_idle_conn(t0: Instant) -> Upstream {
        let mut up = upstream(10, 1 << 20);
        up.mark_up();
        let mut conn = Conn::new(up.endpoint.addrs[0], up.answer_limits, t0);
        conn.state = ConnState::Idle;
        up.conns[0] = Some(conn);
        up
    }

    fn stream(up: &mut Upstream, now: Instant) -> Option<usize> {
        let head = job(0, 0, true).inbound.head.clone();
        up.start_stream(&head, "127.0.0.1", 1 << 20, Duration::from_secs(8), now, 0)
    }

    /// What a streaming connection may send now, all taken as a socket with room would.
    fn written(conn: &mut Conn, lent: &[u8], now: Instant) -> Vec<u8> {
        let (head, body) = conn.to_write_lent(lent);
        let sent = [head, body].concat();
        conn.wrote(sent.len(), now);
        sent
    }

    #[test]
    fn a_stream_writes_its_head_and_the_lent_body_under_the_calls_deadline() {
        let t0 = Instant::now();
        let mut up = up_with_idle_conn(t0);
        let slot = stream(&mut up, t0 + Duration::from_millis(3)).expect("an idle connection streams");
        let conn = up.conns[slot].as_mut().unwrap();
        assert!(conn.streaming && conn.state == ConnState::Busy);
        assert_eq!(conn.deadline, t0 + Duration::from_millis(3) + Duration::from_secs(8));
        let first = written(conn, b"{\"a\"", t0 + Duration::from_millis(4));
        let text = String::from_utf8_lossy(&first);
        assert!(text.to_ascii_lowercase().contains("content-length: 1048576\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"a\""), "{text}");
        assert_eq!(conn.last_progress, t0 + Duration::from_millis(4));
        // Only what is new goes out next time.
        assert_eq!(written(conn, b"{\"a\":1", t0 + Duration::from_millis(5)), b":1");
        // Nothing ordered is dispatched while the stream holds the lane.
        up.enqueue(job(1, 10, true));
        assert!(up.dispatch(t0 + Duration::from_millis(6), 0).opened.is_empty());
        assert!(up.conns.iter().flatten().all(|c| c.job.is_none()), "the fcU waits behind the stream");
    }

    #[test]
    fn a_stream_starts_only_on_a_free_lane_of_a_plain_client_that_is_up() {
        let t0 = Instant::now();
        let mut up = up_with_idle_conn(t0);
        up.enqueue(job(1, 10, true));
        assert_eq!(stream(&mut up, t0), None, "an ordered call waits in the backlog: it goes first");
        let mut up = up_with_idle_conn(t0);
        up.mark_down(t0);
        assert_eq!(stream(&mut up, t0), None, "a client that is down");
        let mut up = up_with_idle_conn(t0);
        assert!(stream(&mut up, t0).is_some());
        assert_eq!(stream(&mut up, t0), None, "one stream at a time");
    }

    #[test]
    fn a_first_stream_opens_a_connection_and_its_clock_starts_once_connected() {
        let t0 = Instant::now();
        let mut up = upstream(10, 1 << 20);
        assert_eq!(up.state(), "unknown", "a fresh proxy has not reached the client yet");
        let slot = stream(&mut up, t0).expect("a connection is opened for the first call");
        assert_eq!(up.streaming(), Some(slot));
        let conn = up.conns[slot].as_mut().unwrap();
        assert_eq!(conn.state, ConnState::Connecting);
        assert_eq!(conn.deadline, t0 + CONNECT_TIMEOUT, "the connect deadline holds until it is made");
        // The event loop connects what the next dispatch reports, as for any new connection.
        assert_eq!(up.dispatch(t0, 0).opened, vec![slot]);
        assert!(up.dispatch(t0, 0).opened.is_empty(), "reported once");
        let connected = t0 + Duration::from_millis(2);
        up.connected(slot, connected);
        let conn = up.conns[slot].as_mut().unwrap();
        assert!(conn.streaming && conn.job.is_none());
        assert_eq!(conn.state, ConnState::Busy, "a stream's connection is never idle");
        assert_eq!(conn.deadline, connected + Duration::from_secs(8), "the call's own timeout");
        let first = written(conn, b"{", connected);
        assert!(first.starts_with(b"POST ") && first.ends_with(b"\r\n\r\n{"));
        assert!(up.attach(slot, job(7, 1 << 20, true)).is_ok());
        let sent_at = up.conns[slot].as_ref().and_then(|c| c.job.as_ref()?.sent_at);
        assert_eq!(sent_at, Some(connected), "latency counts from the connect, as for a dispatched call");
    }

    #[test]
    fn a_stream_whose_connection_is_not_made_frees_the_lane_and_the_client_is_down() {
        let t0 = Instant::now();
        let mut up = upstream(10, 1 << 20);
        let slot = stream(&mut up, t0).unwrap();
        up.dispatch(t0, 0);
        let (job, news) = up.connect_failed(slot, t0 + Duration::from_millis(1));
        assert!(job.is_none() && news, "no job was on it yet; the client is down");
        assert_eq!(up.streaming(), None, "the lane is free for the call's usual path");
        up.conns[slot] = None;
        assert_eq!(stream(&mut up, t0 + Duration::from_millis(2)), None, "a client that is down");
    }

    #[test]
    fn a_stream_opens_a_connection_beside_busy_ones_within_the_bound() {
        let t0 = Instant::now();
        let mut up = up_with_idle_conn(t0);
        // The only idle connection takes a getPayload: the stream gets a connection of its own.
        up.enqueue(job(1, 10, false));
        assert!(up.dispatch(t0, 0).opened.is_empty());
        let slot = stream(&mut up, t0).expect("a new connection");
        assert_ne!(slot, 0);
        assert_eq!(up.dispatch(t0, 0).opened, vec![slot]);
        // While the client is not known to be up, one connection attempt at a time.
        let mut up = upstream(10, 1 << 20);
        up.enqueue(job(1, 10, false));
        assert_eq!(up.dispatch(t0, 0).opened.len(), 1);
        assert_eq!(stream(&mut up, t0), None, "it waits for the attempt under way");
        // No slot left: nothing beyond `MAX_CONNS` is opened.
        let mut up = upstream(10, 1 << 20);
        up.mark_up();
        for slot in 0..MAX_CONNS {
            let mut conn = Conn::new(up.endpoint.addrs[0], up.answer_limits, t0);
            conn.state = ConnState::Busy;
            up.conns[slot] = Some(conn);
        }
        assert_eq!(stream(&mut up, t0), None, "every connection is taken");
    }

    #[test]
    fn an_attached_job_keeps_what_was_streamed_and_holds_the_lane_until_it_ends() {
        let t0 = Instant::now();
        let mut up = up_with_idle_conn(t0);
        let slot = stream(&mut up, t0).unwrap();
        let conn = up.conns[slot].as_mut().unwrap();
        written(conn, &[], t0);
        let whole = job(7, 1 << 20, true);
        let body = whole.inbound.body.clone();
        written(conn, &body[..1000], t0);
        assert!(up.attach(slot, whole).is_ok());
        let conn = up.conns[slot].as_mut().unwrap();
        assert!(!conn.streaming);
        assert_eq!(
            conn.job.as_ref().and_then(|j| j.sent_at),
            Some(t0),
            "latency counts from the stream's start"
        );
        let (head, rest) = conn.to_write();
        assert!(head.is_empty(), "no second head");
        assert_eq!(rest, &body[1000..], "the rest of the body");
        conn.wrote(rest.len(), t0);
        assert!(conn.request_sent());
        assert!(up.ordered_busy, "the attached newPayload holds the ordered lane like any other");
    }

    #[test]
    fn a_stream_whose_body_stops_coming_ends_at_the_calls_deadline() {
        let t0 = Instant::now();
        let mut up = up_with_idle_conn(t0);
        let slot = stream(&mut up, t0).unwrap();
        let deadline = up.next_deadline().expect("the stream has a deadline");
        assert_eq!(deadline, t0 + Duration::from_secs(8));
        let conn = up.conns[slot].as_mut().unwrap();
        assert!(matches!(conn.on_timeout(), Outcome::Pending), "no job failed: none was attached yet");
        assert!(conn.dead && conn.job.is_none(), "reaped");
        assert_eq!(up.streaming(), None, "the lane is free again");
    }

    #[test]
    fn an_aborted_stream_is_reset_and_frees_the_lane_without_marking_the_client_down() {
        let t0 = Instant::now();
        let mut up = up_with_idle_conn(t0);
        let slot = stream(&mut up, t0).unwrap();
        up.enqueue(job(1, 10, true));
        up.abort_stream(slot);
        let conn = up.conns[slot].as_ref().unwrap();
        assert!(conn.dead && conn.abort && conn.job.is_none(), "reaped with RST");
        assert!(up.attach(slot, job(2, 10, true)).is_err(), "nothing attaches to it");
        assert_eq!(up.state(), "up");
        up.conns[slot] = None;
        let dispatch = up.dispatch(t0, 0);
        assert_eq!(dispatch.opened.len(), 1, "the lane moves on");
        assert_eq!(backlog(&up), Vec::<u8>::new());
    }

    #[test]
    fn other_calls_leave_one_connection_to_the_ordered_lane() {
        let mut up = upstream(10, 1 << 20);
        up.mark_up();
        let now = Instant::now();
        for id in 1..=MAX_CONNS as u8 {
            up.enqueue(job(id, 1, false));
        }
        let dispatch = up.dispatch(now, 0);
        assert_eq!(dispatch.opened.len(), MAX_CONNS - 1, "one connection stays free");
        assert_eq!(up.waiting.len(), 1);
        up.enqueue(job(9, 1, true));
        let dispatch = up.dispatch(now, 0);
        assert_eq!(dispatch.opened.len(), 1);
        let ordered = up.conns[dispatch.opened[0]].as_ref().and_then(|c| c.job.as_ref()).map(|j| j.ordered());
        assert_eq!(ordered, Some(true), "the ordered call took the reserved connection");
        assert_eq!(up.waiting.len(), 1, "the eighth other call still waits");
    }

    /// A client that is up with one connection carrying `job`, its connect done at `now`: the
    /// connection state machine alone, fed bytes and `now` directly (no socket).
    fn busy_with(up: &mut Upstream, job: Job, now: Instant) -> usize {
        up.mark_up();
        up.enqueue(job);
        let dispatch = up.dispatch(now, 0);
        let slot = match dispatch.opened.first() {
            Some(&slot) => {
                up.connected(slot, now);
                slot
            }
            // An idle kept-alive connection took it.
            None => up.conns.iter().position(|c| c.as_ref().is_some_and(|c| c.job.is_some())).expect("busy"),
        };
        assert_eq!(up.conns[slot].as_ref().map(|c| c.state), Some(ConnState::Busy));
        slot
    }

    fn conn(up: &mut Upstream, slot: usize) -> &mut Conn {
        up.conns[slot].as_mut().expect("connection")
    }

    /// Lets the shell take the whole request, as a socket with room would.
    fn send_all(conn: &mut Conn, now: Instant) {
        let (head, body) = conn.to_write();
        let n = head.len() + body.len();
        conn.wrote(n, now);
        assert!(conn.request_sent());
    }

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    fn answered(outcome: Outcome) -> (Job, Response) {
        match outcome {
            Outcome::Answered(job, resp) => (job, resp),
            other => panic!("not answered: {other:?}"),
        }
    }

    #[test]
    fn an_answer_ends_the_job_and_leaves_the_connection_for_the_next_call() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        let (job, resp) = answered(c.on_bytes(ANSWER, t0));
        assert_eq!((job.inbound.body[0], resp.body.as_slice()), (1, &b"hello"[..]));
        assert!(!c.dead && c.job.is_none());
        assert_eq!((c.state, c.deadline), (ConnState::Idle, t0 + IDLE_CLOSE));
        assert_eq!(c.to_write(), (&[][..], &[][..]), "nothing more to write");
    }

    #[test]
    fn an_answer_split_at_every_byte_reads_the_same() {
        let t0 = Instant::now();
        let fresh = || {
            let mut up = upstream(10, 1 << 20);
            let slot = busy_with(&mut up, job(1, 10, false), t0);
            send_all(conn(&mut up, slot), t0);
            (up, slot)
        };
        for split in 1..ANSWER.len() {
            let (mut up, slot) = fresh();
            let c = conn(&mut up, slot);
            let (first, rest) = ANSWER.split_at(split);
            assert!(matches!(c.on_bytes(first, t0), Outcome::Pending), "split at {split}");
            let (_, resp) = answered(c.on_bytes(rest, t0));
            assert_eq!(resp.body, b"hello", "split at {split}");
            assert!(!c.dead, "split at {split}");
        }
        // One byte at a time.
        let (mut up, slot) = fresh();
        let c = conn(&mut up, slot);
        let (last, all_but) = ANSWER.split_last().expect("bytes");
        for byte in all_but {
            assert!(matches!(c.on_bytes(std::slice::from_ref(byte), t0), Outcome::Pending));
        }
        assert_eq!(answered(c.on_bytes(&[*last], t0)).1.body, b"hello");
        assert!(!c.dead);
    }

    #[test]
    fn extra_bytes_after_a_whole_answer_retire_the_connection() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        let input = [ANSWER, b"HTTP/1.1 200 OK\r\n"].concat();
        let (_, resp) = answered(c.on_bytes(&input, t0));
        assert_eq!(resp.body, b"hello", "the answer itself is good");
        assert!(c.dead, "the connection is out of step with the client");
    }

    #[test]
    fn bytes_nobody_asked_for_retire_an_idle_connection() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        answered(c.on_bytes(ANSWER, t0));
        assert!(matches!(c.on_bytes(b"H", t0), Outcome::Pending));
        assert!(c.dead);
    }

    #[test]
    fn the_end_of_the_stream_before_a_whole_answer_is_a_reset_and_after_it_ends_the_connection() {
        let t0 = Instant::now();
        // Nothing at all, or part of a Content-Length answer, then the end: a reset.
        for sent in [&b""[..], &ANSWER[..ANSWER.len() - 1]] {
            let mut up = upstream(10, 1 << 20);
            let slot = busy_with(&mut up, job(1, 10, false), t0);
            let c = conn(&mut up, slot);
            send_all(c, t0);
            assert!(matches!(c.on_bytes(sent, t0), Outcome::Pending));
            match c.on_eof(t0) {
                Outcome::Failed(job, Failure::Reset) => assert_eq!(job.inbound.body[0], 1),
                other => panic!("after {} bytes: {other:?}", sent.len()),
            }
            assert!(c.dead && c.abort, "a fresh connection's call is not retried; the socket is reset");
        }
        // An answer that runs to the end of the stream is whole there.
        let mut up = upstream(10, 1 << 20);
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        assert!(matches!(
            c.on_bytes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhel", t0),
            Outcome::Pending
        ));
        assert!(matches!(c.on_bytes(b"lo", t0), Outcome::Pending));
        let (_, resp) = answered(c.on_eof(t0));
        assert_eq!(resp.body, b"hello");
        assert!(c.dead, "a closed connection carries nothing more");
        // After a whole answer, the end just retires the idle connection.
        let mut up = upstream(10, 1 << 20);
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        answered(c.on_bytes(ANSWER, t0));
        assert!(matches!(c.on_eof(t0), Outcome::Pending));
        assert!(c.dead && !c.abort);
    }

    #[test]
    fn a_reused_connection_closed_under_a_call_retries_it_once() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        send_all(conn(&mut up, slot), t0);
        answered(conn(&mut up, slot).on_bytes(ANSWER, t0));
        // The kept-alive connection carries the next call; the client had closed it.
        assert_eq!(busy_with(&mut up, job(2, 10, false), t0), slot, "reused");
        let c = conn(&mut up, slot);
        send_all(c, t0);
        let retry = match c.on_eof(t0) {
            Outcome::Retry(job) => job,
            other => panic!("{other:?}"),
        };
        assert!(retry.retried && c.dead && c.abort);
        assert_eq!(retry.inbound.body[0], 2);
        up.conns[slot] = None;
        // The same call on another reused connection that also closes: no second retry.
        let slot = busy_with(&mut up, job(3, 10, false), t0);
        send_all(conn(&mut up, slot), t0);
        answered(conn(&mut up, slot).on_bytes(ANSWER, t0));
        assert_eq!(busy_with(&mut up, retry, t0), slot);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        assert!(matches!(c.fail(Failure::Reset), Outcome::Failed(_, Failure::Reset)));
        // Part of an answer arrived: the client saw the call, so it is not sent again.
        let mut up = upstream(10, 1 << 20);
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        send_all(conn(&mut up, slot), t0);
        answered(conn(&mut up, slot).on_bytes(ANSWER, t0));
        busy_with(&mut up, job(2, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        assert!(matches!(c.on_bytes(b"HTTP/1.1 2", t0), Outcome::Pending));
        assert!(matches!(c.on_eof(t0), Outcome::Failed(_, Failure::Reset)));
    }

    #[test]
    fn an_answer_over_the_cap_is_a_bad_answer() {
        let mut up = upstream(10, 1 << 20);
        up.answer_limits = Limits { max_head: 1024, max_body: 4 };
        let t0 = Instant::now();
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        assert!(matches!(c.on_bytes(ANSWER, t0), Outcome::Failed(_, Failure::BadAnswer)));
        assert!(c.dead && c.abort);
        // An endless chunked answer fails at the cap, not at its end.
        let mut up = upstream(10, 1 << 20);
        up.answer_limits = Limits { max_head: 1024, max_body: 64 };
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(c.on_bytes(head, t0), Outcome::Pending));
        let mut failed = false;
        for _ in 0..100 {
            match c.on_bytes(b"8\r\n12345678\r\n", t0) {
                Outcome::Pending => assert!(c.held_bytes() <= 64 + 16),
                Outcome::Failed(_, Failure::BadAnswer) => {
                    failed = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(failed, "the cap ends the answer");
    }

    #[test]
    fn writes_take_the_shared_body_without_copying_and_move_last_progress() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let slot = busy_with(&mut up, job(7, 1000, false), t0);
        let c = conn(&mut up, slot);
        let shared = c.job.as_ref().map(|j| j.inbound.body.as_ptr()).expect("job");
        let (head, body) = c.to_write();
        let head_len = head.len();
        assert!(head.starts_with(b"POST / HTTP/1.1\r\n"));
        assert_eq!((body.as_ptr(), body.len()), (shared, 1000), "the job's own body, not a copy");
        // A socket without room takes nothing: no progress.
        c.wrote(0, at(1));
        assert_eq!(c.last_progress, t0);
        // Part of the head, then the rest of it and part of the body.
        c.wrote(3, at(2));
        assert_eq!(c.last_progress, at(2));
        assert_eq!(c.to_write().0.len(), head_len - 3);
        c.wrote(head_len - 3 + 100, at(3));
        let (head, body) = c.to_write();
        assert!(head.is_empty());
        assert_eq!((body.as_ptr(), body.len()), (shared.wrapping_add(100), 900));
        assert!(!c.request_sent());
        c.wrote(900, at(4));
        assert!(c.request_sent());
        assert_eq!(c.last_progress, at(4));
        // Over TLS, records still waiting for the socket keep the request from being out;
        // records reaching the socket are progress too.
        c.transport_sent(0, true, at(5));
        assert!(!c.request_sent());
        assert_eq!(c.last_progress, at(4));
        c.transport_sent(200, false, at(6));
        assert!(c.request_sent());
        assert_eq!(c.last_progress, at(6));
    }

    #[test]
    fn an_answer_before_the_request_is_out_retires_the_connection() {
        let t0 = Instant::now();
        // The body is not all written (a 413, say)…
        let mut up = upstream(10, 1 << 20);
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        c.wrote(5, t0);
        answered(c.on_bytes(ANSWER, t0));
        assert!(c.dead);
        // …or, over TLS, its last records still wait for the socket.
        let mut up = upstream(10, 1 << 20);
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        let c = conn(&mut up, slot);
        send_all(c, t0);
        c.transport_sent(0, true, t0);
        answered(c.on_bytes(ANSWER, t0));
        assert!(c.dead);
    }

    #[test]
    fn a_removed_client_gives_up_every_job() {
        let mut up = upstream(10, 1 << 20);
        up.enqueue(job(1, 3, true));
        up.enqueue(job(2, 1, false));
        assert_eq!(ids(&up.take_all_jobs()), vec![1, 2]);
        assert_eq!((up.queued(), up.backlog_bytes()), (0, 0));
    }

    /// A busy connection whose request went out, for a job that an exchange waits for.
    fn relaying_conn(up: &mut Upstream, t0: Instant, reused: bool) -> usize {
        let mut j = job(1, 10, false);
        j.exchange = Some(crate::core::exchange::Exchanges::default().next_ref());
        let slot = busy_with(up, j, t0);
        let c = conn(up, slot);
        send_all(c, t0);
        if reused {
            c.served = 1;
        }
        slot
    }

    fn answer_head(len: usize) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes()
    }

    const LARGE: usize = crate::core::relay::RELAY_MIN as usize + 7;

    #[test]
    fn a_large_answer_is_offered_at_its_head_and_its_body_handed_out_once_relayed() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = relaying_conn(&mut up, t0, false);
        let c = conn(&mut up, slot);
        let head = answer_head(LARGE);
        let body = vec![b'x'; LARGE];
        let input = [&head[..], &body[..1000]].concat();
        let Outcome::Head { consumed } = c.on_bytes(&input, t0) else { panic!("not offered") };
        assert_eq!(consumed, head.len(), "offered before any body byte is read");
        assert_eq!(c.offered_head().map(|(h, len)| (h.status, len)), Some((200, Some(LARGE as u64))));
        let (h, buffer, len) = c.start_relay().expect("relayed");
        assert_eq!((h.status, buffer.len(), len), (200, 0, LARGE as u64));
        assert!(buffer.capacity() >= LARGE, "the body's buffer is reserved whole, once");
        assert!(c.held_bytes() < 1024, "the connection holds none of the body");
        assert!(matches!(c.on_bytes(&input[consumed..], t0), Outcome::Relayed { body: 1000, last: false }));
        assert_eq!(c.relay_left(), Some((LARGE - 1000) as u64), "what may be taken from the socket");
        // Bytes moved on uncopied (`event_loop::piped`) count as read ones do, never past the end.
        assert!(matches!(c.relay_taken(5), Outcome::Relayed { body: 5, last: false }));
        let rest = &body[1005..];
        assert!(
            matches!(c.relay_taken(rest.len() + 9), Outcome::Relayed { body, last: true } if body == rest.len())
        );
        assert_eq!(c.relay_left(), Some(0));
        let (_, resp) = answered(c.end_relay(false, t0));
        assert_eq!((resp.head.status, resp.body.len()), (200, 0));
        assert!(!c.dead && c.state == ConnState::Idle, "kept alive for the next call");
        // The next answer on the connection is offered again.
        assert!(c.offered_head().is_none());
    }

    #[test]
    fn a_declined_offer_and_answers_that_do_not_qualify_are_read_whole() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = relaying_conn(&mut up, t0, false);
        let c = conn(&mut up, slot);
        let answer = [answer_head(LARGE), vec![b'x'; LARGE]].concat();
        let Outcome::Head { consumed } = c.on_bytes(&answer, t0) else { panic!("not offered") };
        let (_, resp) = answered(c.on_bytes(&answer[consumed..], t0));
        assert_eq!(resp.body.len(), LARGE, "not relayed: stored as before");
        for answer in [
            [answer_head(LARGE - 8), vec![b'x'; LARGE - 8]].concat(),
            [b"HTTP/1.1 500 Oops\r\nContent-Length: 70000\r\n\r\n".to_vec(), vec![b'x'; 70_000]].concat(),
        ] {
            let slot = relaying_conn(&mut up, t0, false);
            let (_, resp) = answered(conn(&mut up, slot).on_bytes(&answer, t0));
            assert!(resp.body.len() >= LARGE - 8);
        }
        // No exchange waits for the answer (a peer's call): never offered.
        let slot = busy_with(&mut up, job(1, 10, false), t0);
        send_all(conn(&mut up, slot), t0);
        let answer = [answer_head(LARGE), vec![b'x'; LARGE]].concat();
        answered(conn(&mut up, slot).on_bytes(&answer, t0));
    }

    #[test]
    fn the_end_of_the_stream_mid_relay_fails_the_call_and_never_retries_it() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = relaying_conn(&mut up, t0, true);
        let c = conn(&mut up, slot);
        let head = answer_head(LARGE);
        assert!(matches!(c.on_bytes(&head, t0), Outcome::Head { .. }));
        c.start_relay().expect("relayed");
        assert!(matches!(c.on_bytes(b"xyz", t0), Outcome::Relayed { body: 3, last: false }));
        assert!(matches!(c.on_eof(t0), Outcome::Failed(_, Failure::Reset)), "part of it was relayed");
        assert!(c.dead && c.abort);
        // A timeout mid-relay fails it too (the exchange leaves its deadline to the connection).
        let slot = relaying_conn(&mut up, t0, false);
        let c = conn(&mut up, slot);
        assert!(matches!(c.on_bytes(&head, t0), Outcome::Head { .. }));
        c.start_relay().expect("relayed");
        assert!(matches!(c.on_timeout(), Outcome::Failed(_, Failure::Timeout)));
    }

    #[test]
    fn bytes_after_a_relayed_answer_retire_the_connection() {
        let mut up = upstream(10, 1 << 20);
        let t0 = Instant::now();
        let slot = relaying_conn(&mut up, t0, false);
        let c = conn(&mut up, slot);
        let input = [answer_head(LARGE), vec![b'x'; LARGE], b"HTTP/1.1".to_vec()].concat();
        let Outcome::Head { consumed } = c.on_bytes(&input, t0) else { panic!("not offered") };
        c.start_relay().expect("relayed");
        let Outcome::Relayed { body, last: true } = c.on_bytes(&input[consumed..], t0) else {
            panic!("not whole")
        };
        assert_eq!(body, LARGE);
        answered(c.end_relay(consumed + body < input.len(), t0));
        assert!(c.dead, "out of step with the client");
    }
}
