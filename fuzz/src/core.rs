//! Drives one beacon node connection (`Downstream`), the exchanges its requests start and the
//! process-wide memory budget (`core::budget`) with a random sequence of events on a fake
//! clock, the way the event loop does, and checks after every event that each bound holds:
//! answers owed at most `MAX_PIPELINE`, unparsed bytes at most one read, a refused body not
//! buffered, the budget's count equal to the bodies still held, and a deadline whenever the
//! connection owes work that no exchange deadline covers.
//!
//! Layout: the `Schedule` (control byte, piece sizes, stream) gives the request bytes, and
//! bits 6–7 of the control byte pick the memory budget (none, 64 KiB, 1 KiB, 0); the input's
//! first 16 bytes, read again one per event in turn, pick the events (read the next piece,
//! answer the oldest exchange, let the client take some bytes, advance the clock).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sync_proxy::core::budget::{self, Meter};
use sync_proxy::downstream::{
    Downstream, Flushed, Outgoing, Slot, Timeouts, MAX_PIPELINE, MAX_QUEUED_BYTES, WRITE_SLICES,
};
use sync_proxy::core::exchange::{Exchange, ExchangeRef, Exchanges, Inbound};
use sync_proxy::http::{Refusal, RequestEvent};
use sync_proxy::policy::Class;

use crate::schedule::Schedule;

const TIMEOUTS: Timeouts = Timeouts {
    read: Duration::from_millis(300),
    idle: Duration::from_millis(900),
    write: Duration::from_millis(200),
};
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// A client that takes at most `room` more bytes, then would block: what the shell does for a
/// connection (`shell::BnSockets::flush`), written to nowhere.
struct Sink {
    room: usize,
}

impl Sink {
    /// Offers the connection's ready bytes until the client takes no more or nothing is left.
    fn flush(&mut self, down: &mut Downstream, now: Instant) {
        loop {
            let ready: usize = down.to_write().take(WRITE_SLICES).map(<[u8]>::len).sum();
            let n = ready.min(self.room);
            self.room -= n;
            match down.wrote(n, now) {
                Flushed::Blocked if n > 0 => continue,
                _ => return,
            }
        }
    }
}

struct Model {
    down: Downstream,
    /// The socket the shell would lend the connection to flush.
    sink: Sink,
    exchanges: Exchanges,
    waiting: Vec<ExchangeRef>,
    meter: Meter,
    budget: usize,
    now: Instant,
    largest_piece: usize,
}

impl Model {
    /// Parses `input` as the event loop's `feed` does, stopping (and stashing the rest) once
    /// the pipeline is full.
    fn feed(&mut self, input: &[u8]) {
        let mut pos = 0;
        while pos < input.len() && !self.down.no_more_requests {
            if self.down.backpressured() {
                self.down.stash(&input[pos..]);
                break;
            }
            let step = self.down.reader.advance(&input[pos..]);
            pos += step.consumed;
            match step.event {
                Some(Ok(RequestEvent::Head)) => self.on_head(),
                Some(Ok(RequestEvent::Continue)) => self.down.push(Slot::Ready(Outgoing::continue_100())),
                Some(Ok(RequestEvent::Request(req))) => {
                    let charge = Some(self.meter.charge(req.body.capacity()));
                    let inbound = Inbound {
                        head: req.head,
                        body: req.body,
                        client: String::new(),
                        method: None,
                        payload: None,
                        class: Class::NonEngine,
                        id: None,
                        timeout: REQUEST_TIMEOUT,
                        received: self.now,
                        pool: None,
                        charge,
                    };
                    let r = self.exchanges.insert(Exchange::new(Rc::new(inbound), None, 1, self.now));
                    self.waiting.push(r);
                    self.down.push(Slot::Waiting(r));
                }
                Some(Err(e)) => self.down.answer_early(e.status(), Vec::new(), 1),
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        self.down.after_read(self.now);
        // As the event loop does after every read and every answer filled in.
        self.sink.flush(&mut self.down, self.now);
    }

    fn on_head(&mut self) {
        let held = self.meter.held() + self.down.held_bytes();
        let Some(head) = self.down.reader.held_head() else { return };
        let (keep_alive, minor) = (head.keep_alive, head.minor);
        if budget::admits(held, self.budget) {
            if self.down.reader.accept_body(sync_proxy::http::RESERVE_AHEAD) {
                self.down.push(Slot::Ready(Outgoing::continue_100()));
            }
            return;
        }
        match self.down.reader.refuse_body() {
            Refusal::Discard => self.down.push(Slot::Ready(budget::busy_answer(keep_alive, minor))),
            Refusal::Close => self.down.close_after(budget::busy_answer(false, minor)),
        }
        assert!(
            self.down.reader.held_bytes() <= crate::schedule::MAX_HEAD * 2,
            "a refused body is not buffered"
        );
    }

    /// The oldest exchange is answered (`size` bytes) or, past its deadline, fails with a 502.
    fn answer(&mut self, size: usize) {
        if self.waiting.is_empty() {
            return;
        }
        let r = self.waiting.remove(0);
        self.exchanges.remove(r);
        if self.down.fill(r, Outgoing::json(200, vec![b' '; size], true, 1)) {
            self.sink.flush(&mut self.down, self.now);
        }
    }

    fn timeouts(&mut self) {
        while let Some(&r) = self.waiting.first() {
            match self.exchanges.get(r) {
                Some(e) if e.deadline <= self.now => self.answer(0),
                _ => break,
            }
        }
        let _ = self.down.on_timeout(self.now, &TIMEOUTS);
    }

    fn check(&self) {
        let down = &self.down;
        assert!(down.answers_owed() <= MAX_PIPELINE, "{} answers owed", down.answers_owed());
        assert!(down.pending_bytes() <= self.largest_piece, "more than one read unparsed");
        assert!(down.queued_bytes() <= MAX_QUEUED_BYTES + 2 * 0x10000 + 4096, "queued bytes");
        let bodies: usize = self
            .waiting
            .iter()
            .filter_map(|&r| self.exchanges.get(r))
            .map(|e| e.inbound.body.capacity())
            .sum();
        assert_eq!(self.meter.held(), bodies, "the budget counts exactly the bodies held");
        if !self.waiting.is_empty() {
            assert!(self.exchanges.next_deadline().is_some(), "an exchange without a deadline");
        }
        if !down.dead && down.waiting().next().is_none() {
            assert!(down.deadline(&TIMEOUTS).is_some(), "a live connection without a deadline");
        }
    }
}

/// Runs one input: see the module documentation.
pub fn run(data: &[u8]) {
    let input = Schedule::new(data);
    let pieces = input.pieces();
    let events: Vec<u8> = data.iter().take(16).copied().collect();
    let now = Instant::now();
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let mut down = Downstream::new(1, peer, input.limits, now);
    down.reader.hold_heads();
    let budget = [usize::MAX, 1 << 16, 1024, 0][usize::from(data.first().copied().unwrap_or(0) >> 6)];
    let largest_piece = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut model = Model {
        down,
        sink: Sink { room: 0 },
        exchanges: Exchanges::default(),
        waiting: Vec::new(),
        meter: Meter::default(),
        budget,
        now,
        largest_piece,
    };
    let mut next_piece = 0;
    for (i, &event) in events.iter().cycle().take(4 * pieces.len() + 16).enumerate() {
        if model.down.dead {
            break;
        }
        match event % 5 {
            0 | 1 => {
                if model.down.has_pending() {
                    if !model.down.backpressured() {
                        let pending = model.down.take_pending();
                        model.feed(&pending);
                    }
                } else if let Some(piece) = pieces.get(next_piece) {
                    next_piece += 1;
                    model.feed(piece);
                }
            }
            2 => model.answer(usize::from(event) * 97 + i),
            3 => {
                model.sink.room = usize::from(event) * 31;
                model.sink.flush(&mut model.down, model.now);
            }
            _ => {
                model.now += Duration::from_millis(u64::from(event));
                model.timeouts();
            }
        }
        model.check();
    }
    drop(model.down);
    model.waiting.clear();
    let refs = model.exchanges.refs();
    for r in refs {
        model.exchanges.remove(r);
    }
    assert_eq!(model.meter.held(), 0, "every body's bytes are given back");
}
