//! One beacon node connection: the request reader, the answers owed in request order, and
//! the connection's deadlines. The event loop moves bytes in and out; this file decides what
//! those bytes mean for the connection. It knows no JSON, no execution clients.
//!
//! An answer written before its request was read whole (413 decided from `Content-Length`, 431,
//! 400 on bad framing, 401 at the head) ends with a lingering close, as nginx's
//! `lingering_close`: closing a socket with unread bytes makes the kernel send a reset, which
//! destroys the answer before the client reads it. So once such an answer is written the event
//! loop shuts down the write side (the client sees the answer, then the end), and the
//! connection reads and drops what the client still sends, for at most `LINGER_TIME` and
//! `LINGER_BYTES`, before it is closed. It stays a connection meanwhile, counted against
//! `--max-connections`, so lingering cannot be used to hold more connections open.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::exchange::ExchangeRef;
use crate::http::{self, Limits, RequestReader};

/// Most requests one connection may have in flight; beyond that the proxy stops reading from
/// it until answers have gone out (pipelining backpressure).
pub const MAX_PIPELINE: usize = 32;
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

/// Which deadline closed a connection (`Downstream::on_timeout`), for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request did not arrive whole within `--read-timeout` of its first byte.
    Read,
    /// Nothing happened for `--idle-timeout`.
    Idle,
    /// A lingering close reached `LINGER_TIME`.
    Linger,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Read => "request not read whole within --read-timeout",
            Expired::Idle => "idle for --idle-timeout",
            Expired::Linger => "still sending when its lingering close timed out",
        }
    }
}

/// One beacon node connection; `S` is its socket (a plain writer in unit tests).
pub struct Downstream<S = mio::net::TcpStream> {
    pub stream: S,
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
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything ready was written (answers may still be owed).
    Drained,
    /// The socket is full; wait for WRITABLE.
    Blocked,
    /// An early answer has been written whole and the connection now lingers: the event loop
    /// shuts down the write side and reads (and drops) what is already waiting.
    Linger,
}

impl<S: io::Write> Downstream<S> {
    pub fn new(stream: S, serial: u64, peer: SocketAddr, limits: Limits, now: Instant) -> Self {
        Downstream {
            stream,
            serial,
            peer,
            reader: RequestReader::new(limits),
            out: VecDeque::new(),
            written: 0,
            no_more_requests: false,
            dead: false,
            peer_closed: false,
            linger_after_close: false,
            linger: None,
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

    /// Queues a JSON answer given before its request was read whole: it is the connection's
    /// last (its head says `Connection: close`), and the connection lingers after it (see the
    /// module's doc).
    pub fn answer_early(&mut self, status: u16, body: Vec<u8>, minor: u8) {
        self.out.push_back(Slot::Ready(Outgoing::json(status, body, false, minor)));
        self.no_more_requests = true;
        self.linger_after_close = true;
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
        if self.lingering() {
            // Everything was written and the write side is shut.
            return Ok(Flushed::Drained);
        }
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
                self.out.clear();
                if self.linger_after_close && !self.peer_closed {
                    self.linger = Some(Linger::start(now));
                    return Ok(Flushed::Linger);
                }
                self.dead = true;
                return Ok(Flushed::Drained);
            }
        }
        if self.no_more_requests && self.out.is_empty() {
            self.dead = true;
        }
        Ok(Flushed::Drained)
    }

    /// When this connection must next be looked at: a request must arrive whole within
    /// `read_timeout` of its first byte, an idle connection lasts `idle_timeout`, and a
    /// lingering close `LINGER_TIME`.
    pub fn deadline(&self, read_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        if let Some(linger) = self.linger.as_ref() {
            return Some(linger.deadline());
        }
        if let Some(started) = self.request_started {
            return Some(started + read_timeout);
        }
        if self.out.is_empty() {
            return Some(self.last_activity + idle_timeout);
        }
        // Answers are owed: the exchanges' own deadlines bound the wait.
        None
    }

    /// Closes the connection if its deadline has passed, and says which one did.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Expired> {
        let due = self.deadline(read_timeout, idle_timeout).is_some_and(|d| d <= now);
        if !due || self.dead {
            return None;
        }
        self.dead = true;
        Some(if self.lingering() {
            Expired::Linger
        } else if self.request_started.is_some() {
            Expired::Read
        } else {
            Expired::Idle
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(60);

    /// A socket that takes at most `room` more bytes, then would block.
    #[derive(Default)]
    struct Sink {
        written: Vec<u8>,
        room: usize,
    }

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.written.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn connection(room: usize, now: Instant) -> Downstream<Sink> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        Downstream::new(Sink { written: Vec::new(), room }, 1, peer, Limits::default(), now)
    }

    /// A connection whose 413 was answered early (half a head had arrived) and written at `t0`.
    fn lingering(t0: Instant) -> Downstream<Sink> {
        let mut down = connection(usize::MAX, t0);
        down.reader.advance(b"POST / HTTP/1.1\r\n");
        down.after_read(t0);
        down.answer_early(413, b"{}".to_vec(), 1);
        assert_eq!(down.flush(t0).expect("sink"), Flushed::Linger);
        down
    }

    #[test]
    fn an_early_answer_is_written_whole_then_the_connection_lingers_until_its_deadline() {
        let t0 = Instant::now();
        let mut down = lingering(t0);
        let written = String::from_utf8_lossy(&down.stream.written).into_owned();
        assert!(written.starts_with("HTTP/1.1 413 "), "{written}");
        assert!(written.contains("Connection: close\r\n"), "an early answer always closes: {written}");
        assert!(down.lingering() && !down.dead && down.no_more_requests);
        // The linger deadline replaces the read deadline of the half-read request.
        assert_eq!(down.deadline(READ, IDLE), Some(t0 + LINGER_TIME));
        // Flushing again (a WRITABLE edge after the shutdown) changes nothing.
        assert_eq!(down.flush(t0 + Duration::from_millis(1)).expect("sink"), Flushed::Drained);
        assert!(!down.dead);
        assert_eq!(down.on_timeout(t0 + LINGER_TIME - Duration::from_micros(1), READ, IDLE), None);
        assert!(!down.dead);
        assert_eq!(down.on_timeout(t0 + LINGER_TIME, READ, IDLE), Some(Expired::Linger));
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
        assert_eq!(down.flush(t0).expect("sink"), Flushed::Blocked);
        assert!(!down.lingering() && !down.dead);
        let t1 = t0 + Duration::from_millis(300);
        down.stream.room = usize::MAX;
        assert_eq!(down.flush(t1).expect("sink"), Flushed::Linger);
        // The lingering time counts from the end of the answer, not from the request.
        assert_eq!(down.deadline(READ, IDLE), Some(t1 + LINGER_TIME));
    }

    #[test]
    fn a_closing_answer_to_a_whole_request_closes_without_lingering() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        down.push(Slot::Ready(Outgoing::json(200, b"{}".to_vec(), false, 1)));
        assert_eq!(down.flush(t0).expect("sink"), Flushed::Drained);
        assert!(down.dead && !down.lingering());
    }

    #[test]
    fn a_client_that_closed_first_is_not_lingered_for() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        down.answer_early(400, b"{}".to_vec(), 1);
        down.on_eof();
        assert!(!down.dead, "the answer is still owed to a half-closed client");
        assert_eq!(down.flush(t0).expect("sink"), Flushed::Drained);
        assert!(down.dead && !down.lingering());
    }

    #[test]
    fn read_and_idle_deadlines_say_which_expired() {
        let t0 = Instant::now();
        let mut down = connection(usize::MAX, t0);
        assert_eq!(down.deadline(READ, IDLE), Some(t0 + IDLE));
        let t1 = t0 + Duration::from_secs(1);
        down.reader.advance(b"POST / HTTP/1.1\r\n");
        down.after_read(t1);
        assert_eq!(down.deadline(READ, IDLE), Some(t1 + READ));
        assert_eq!(down.on_timeout(t1 + READ, READ, IDLE), Some(Expired::Read));
        let mut idle = connection(usize::MAX, t0);
        assert_eq!(idle.on_timeout(t0 + IDLE - Duration::from_micros(1), READ, IDLE), None);
        assert_eq!(idle.on_timeout(t0 + IDLE, READ, IDLE), Some(Expired::Idle));
        // A dead connection is not reported twice.
        assert_eq!(idle.on_timeout(t0 + IDLE * 2, READ, IDLE), None);
    }
}
