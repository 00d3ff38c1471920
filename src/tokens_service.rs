//! `jwt-tokens-service`: a small program of its own on the shell (`shell::Listener`,
//! `shell::BnSockets`) and the beacon node connection's state machine (`downstream`), which
//! answers `GET /tokens/…` with a fresh token per configured secret. It forwards nothing and
//! shares no state with the proxy's event loop. `answer` knows no sockets; `now` (Unix
//! seconds) is passed in.
//!
//! The bounds are the proxy's: `--max-connections`' default cap with the same hysteresis,
//! requests read through the same capped `RequestReader` (GET and HEAD answered at the head,
//! whatever body nginx's `auth_request` announces), pipelined answers bounded with real
//! backpressure, and the read, idle and write deadlines of a beacon node connection.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Poll, Token};

use crate::config::{Config, TokensServiceConfig};
use crate::downstream::{Downstream, Outgoing, Slot, Timeouts};
use crate::http::{self, Limits, RequestEvent};
use crate::jwt::TokenCache;
use crate::policy;
use crate::shell::bn_sockets::{self, BnSockets, ReadStep};
use crate::shell::Listener;
use crate::shell::Stopper;

const LISTENER: Token = Token(0);
/// Largest request head read; a tokens request has no body worth reading.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// Reads per connection per wakeup before others get their turn.
const READS_PER_WAKEUP: usize = 16;
const SCRATCH: usize = 16 * 1024;
/// A stop request is checked at least this often.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The answer of `jwt-tokens-service`: `GET /tokens/…` gets a fresh token per entry as
/// `Authorization-<name>: Bearer <token>` (what nginx's `auth_request` copies into
/// `$upstream_http_authorization_<name>`); anything else is 404, as in the Go service.
pub fn answer(tokens: &mut [(String, TokenCache)], head: &http::RequestHead, now: u64) -> Outgoing {
    let (keep_alive, minor) = (head.keep_alive, head.minor);
    if !matches!(head.method.as_str(), "GET" | "HEAD") || !head.path.starts_with("/tokens/") {
        return Outgoing::answer(
            404,
            Some(b"text/plain"),
            b"404 page not found\n".to_vec(),
            keep_alive,
            minor,
        );
    }
    let names: Vec<Vec<u8>> =
        tokens.iter().map(|(name, _)| format!("Authorization-{name}").into_bytes()).collect();
    let values: Vec<Vec<u8>> =
        tokens.iter_mut().map(|(_, cache)| cache.header_value(now).as_bytes().to_vec()).collect();
    let extra: Vec<(&[u8], &[u8])> =
        names.iter().zip(&values).map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
    let mut out = Outgoing::default();
    http::write_response_head_with(&mut out.head, 200, None, 0, keep_alive, minor, &extra);
    out.close = !keep_alive;
    out
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The running service: its listener, its connections and their sockets, and the tokens.
pub struct TokensService {
    poll: Poll,
    listener: Listener,
    sockets: BnSockets,
    conns: Vec<Option<Downstream>>,
    free: Vec<usize>,
    next_serial: u64,
    tokens: Vec<(String, TokenCache)>,
    timeouts: Timeouts,
    scratch: Vec<u8>,
    /// Connections with more to read after their per-wakeup share.
    again: Vec<usize>,
}

impl TokensService {
    /// Binds the listener; nothing is accepted until `run`.
    pub fn bind(t: &TokensServiceConfig) -> io::Result<TokensService> {
        // The proxy's defaults for the connection cap and the deadlines.
        let defaults = Config::serving_only(t);
        let poll = Poll::new()?;
        let listener = Listener::bind(
            poll.registry(),
            t.listen,
            LISTENER,
            defaults.max_connections,
            "",
            log::Level::Warn,
        )?;
        let tokens = t
            .entries
            .iter()
            .map(|(name, secret)| (name.clone(), TokenCache::new(secret.clone(), t.client_id.clone())))
            .collect();
        Ok(TokensService {
            poll,
            listener,
            sockets: BnSockets::default(),
            conns: Vec::new(),
            free: Vec::new(),
            next_serial: 0,
            tokens,
            timeouts: Timeouts {
                read: defaults.read_timeout,
                idle: defaults.idle_timeout,
                write: defaults.write_timeout,
            },
            scratch: vec![0; SCRATCH],
            again: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stopper` asks to stop.
    pub fn run(&mut self, stopper: &dyn Stopper) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if stopper.stop_requested() {
                log::info!("stopping");
                return Ok(());
            }
            let now = Instant::now();
            let timeout = if self.again.is_empty() {
                let next = self.next_deadline();
                next.map_or(STOP_CHECK, |d| d.saturating_duration_since(now).min(STOP_CHECK))
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // The clock is read once after each poll: everything in this pass sees the same now.
            let now = Instant::now();
            for event in events.iter() {
                if event.token() == LISTENER {
                    self.accept(now);
                    continue;
                }
                // A stale event (the connection it was for is gone) names no slot.
                let Some(slot) = self.sockets.slot_of(event.token()) else { continue };
                if event.is_writable() {
                    self.flush(slot, now);
                }
                if event.is_readable() {
                    self.readable(slot, now);
                }
            }
            for slot in std::mem::take(&mut self.again) {
                self.readable(slot, now);
            }
            self.on_timeouts(now);
            self.reap(now);
        }
    }

    fn accept(&mut self, now: Instant) {
        while let Some((stream, peer)) = self.listener.accept(now) {
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            self.next_serial += 1;
            if let Err(e) = self.sockets.adopt(self.poll.registry(), slot, self.next_serial, stream) {
                log::warn!("cannot register a connection from {peer}: {e}");
                self.free.push(slot);
                continue;
            }
            let limits = Limits { max_head: MAX_HEAD, max_body: MAX_BODY };
            let mut down = Downstream::new(self.next_serial, peer, limits, now);
            down.reader.answer_get_at_head();
            self.conns[slot] = Some(down);
            self.listener.opened();
        }
    }

    fn readable(&mut self, slot: usize, now: Instant) {
        for _ in 0..READS_PER_WAKEUP {
            let Some(down) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
            if down.dead {
                return;
            }
            let lingering = down.lingering();
            if !lingering && down.has_pending() {
                // The rest of a read that filled the pipeline goes before anything more is read.
                if down.no_more_requests || down.backpressured() {
                    return;
                }
                let pending = down.take_pending();
                self.feed(slot, &pending, now);
                self.flush(slot, now);
                continue;
            }
            if !lingering && (down.no_more_requests || down.backpressured()) {
                return;
            }
            let n = match self.sockets.read(slot, &mut self.scratch) {
                ReadStep::Bytes(n) => n,
                ReadStep::End => {
                    down.on_eof();
                    return;
                }
                ReadStep::Blocked => return,
                ReadStep::Failed => {
                    down.dead = true;
                    return;
                }
            };
            if lingering {
                down.discarded(n);
                continue;
            }
            let scratch = std::mem::take(&mut self.scratch);
            self.feed(slot, &scratch[..n], now);
            self.scratch = scratch;
            self.flush(slot, now);
        }
        // More may be waiting; come back after the others had their turn.
        self.again.push(slot);
    }

    /// Parses `input` into requests and answers each at once, until the pipeline is full.
    fn feed(&mut self, slot: usize, input: &[u8], now: Instant) {
        let Some(down) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        let mut pos = 0;
        while pos < input.len() && !down.no_more_requests {
            if down.backpressured() {
                down.stash(&input[pos..]);
                break;
            }
            let step = down.reader.advance(&input[pos..]);
            pos += step.consumed;
            match step.event {
                Some(Ok(RequestEvent::Continue)) => down.push(Slot::Ready(Outgoing::continue_100())),
                Some(Ok(RequestEvent::Request(req))) => {
                    if !req.head.keep_alive {
                        down.no_more_requests = true;
                    }
                    down.push(Slot::Ready(answer(&mut self.tokens, &req.head, unix_now())));
                }
                // Heads are not held here: there is no token to check and no budget.
                Some(Ok(RequestEvent::Head)) => {}
                Some(Err(e)) => {
                    log::debug!("bad request from {}: {e}", down.peer);
                    let body = policy::error_body(None, -32600, &e.to_string());
                    down.answer_early(e.status(), body, 1);
                }
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        down.after_read(now);
    }

    fn flush(&mut self, slot: usize, now: Instant) {
        let Some(down) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        if self.sockets.flush(slot, down, now).revisit {
            self.again.push(slot);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.iter().flatten().filter_map(|d| d.deadline(&self.timeouts));
        conns.chain(self.listener.deadline()).min()
    }

    fn on_timeouts(&mut self, now: Instant) {
        if self.listener.resume(now) {
            self.accept(now);
        }
        for down in self.conns.iter_mut().flatten() {
            if let Some(expired) = down.on_timeout(now, &self.timeouts) {
                log::debug!("closing connection from {}: {}", down.peer, expired.label());
            }
        }
    }

    /// Drops closed connections after the event batch (so a reused slot never gets its
    /// predecessor's events), and resumes accepting below 90 % of the cap.
    fn reap(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|d| d.dead) {
                self.conns[slot] = None;
                self.sockets.close(self.poll.registry(), slot);
                self.free.push(slot);
                self.listener.closed();
            }
        }
        if self.listener.resume(now) {
            self.accept(now);
        }
    }
}

/// Tokens below this are the listener's; connections' are `bn_sockets::BASE` and above.
const _: () = assert!(LISTENER.0 < bn_sockets::BASE);
