//! The only owner of `mio::Poll`: accepts beacon node connections, connects to execution
//! clients, dispatches readiness to the connection state machines, turns requests into
//! exchanges and answers, and fires deadlines. The poll timeout is the earliest deadline;
//! closed connections are reaped after each event batch so a reused slot never receives its
//! predecessor's events.
//!
//! Every connection is registered once for READABLE | WRITABLE, edge-triggered, and never
//! re-registered: an edge fires only when the socket's state changes (new bytes, or room after
//! a write hit `WouldBlock`), so write interest costs nothing while there is nothing to write,
//! and the event loop saves a `epoll_ctl` call per answer. Reads drain to `WouldBlock`, capped
//! per wakeup (`READS_PER_WAKEUP`), with the connection revisited before the next poll.
//!
//! One helper thread (`resolve`) does what the loop must not wait for (looking execution
//! clients' names up again, reading files for a SIGHUP reload) and wakes the loop through a
//! `mio::Waker`; `live_config` applies its results. No thread touches a request.
//!
//! It knows no HTTP syntax, JSON fields or JWT encoding: those are asked of `http`, `rpc`,
//! `policy` and `jwt`.

use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::config::{Config, Endpoint, TokensServiceConfig};
use crate::core::intake::{self, Route, METRICS_ONLY_404};
use crate::core::{compose, hold};
use crate::downstream::{Downstream, Flushed, Outgoing, Slot, Timeouts};
use crate::exchange::{Exchange, ExchangeRef, Exchanges, Inbound, Reply};
use crate::http::{self, HttpError, Limits, Refusal, Request, RequestEvent};
use crate::jwt::TokenCache;
use crate::metrics::{Metrics, RequestOutcome, Snapshot};
use crate::policy::{self, BestBeacon, Class, Standing};
use crate::pool::{BodyPool, SharedPool, SPARE_KEEP};
use crate::probes;
use crate::resolve::{SystemLookup, Worker};
use crate::rpc;
use crate::tls::{self, Handshake};
use crate::tokens_service;
use crate::upstream::{AfterFailure, ConnState, Failure, Job, Outcome, Upstream, MAX_CONNS};

mod live_config;

const LISTENER: Token = Token(0);
const METRICS_LISTENER: Token = Token(1);
/// The helper thread (name lookups, reloads) has finished something: see `resolve`.
const WORKER: Token = Token(2);
/// Upstream connection tokens: `UP_BASE + upstream * MAX_CONNS + slot`.
const UP_BASE: usize = 16;
/// Downstream connection tokens: `DOWN_BASE + slot`.
const DOWN_BASE: usize = 1 << 24;
/// Most connections open at once on `--metrics-addr`: a few scrapers and an operator's curl.
/// They are never counted against `--max-connections`, so `/metrics` answers exactly when
/// the beacon node side is saturated.
pub const METRICS_MAX_CONNECTIONS: usize = 8;
/// Largest request head read from a beacon node, and largest answer head from a client.
const MAX_HEAD: usize = 64 * 1024;
/// Reads per connection per wakeup before others get their turn.
const READS_PER_WAKEUP: usize = 16;
/// After running out of file descriptors, accepting pauses this long instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const SCRATCH: usize = 64 * 1024;
/// A full backlog is reported at most this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Something the event loop can stop: set from a signal handler's token in `main`.
pub trait Stopper {
    fn stop_requested(&self) -> bool;

    /// True once per reload request (SIGHUP) since the last call.
    fn take_reload(&self) -> bool {
        false
    }
}

pub struct Proxy {
    poll: Poll,
    listener: TcpListener,
    /// `--metrics-addr`: a second listener that serves only `/metrics` and `/status`.
    metrics_listener: Option<TcpListener>,
    metrics: Metrics,
    cfg: Config,
    downs: Vec<Option<Downstream>>,
    free_downs: Vec<usize>,
    /// Beacon node connections open (`--max-connections`)…
    live_downs: usize,
    /// …and connections open on `--metrics-addr` (`METRICS_MAX_CONNECTIONS`), each with its
    /// own accept hysteresis.
    live_metrics: usize,
    metrics_accepting: bool,
    next_serial: u64,
    ups: Vec<Upstream>,
    /// How many of `ups` are `--builders` (the rest are `--proxies` peers).
    builders: usize,
    exchanges: Exchanges,
    best: BestBeacon,
    scratch: Vec<u8>,
    /// Downstream slots with more to read after their per-wakeup share.
    again: Vec<usize>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    /// Set once a stop was requested: accepting never resumes.
    stopping: bool,
    /// Accepting fails (out of file descriptors): said once, not at every retry.
    accept_failing: bool,
    /// `jwt-tokens-service`: the tokens handed out on `GET /tokens/` (nothing is forwarded).
    tokens: Option<Vec<(String, TokenCache)>>,
    /// One spare large-body buffer (see `pool`), freed after a while without large bodies.
    pool: SharedPool,
    /// The helper thread for name lookups and reloads (None without execution clients).
    worker: Option<Worker>,
    /// A reload is being read on the helper thread; another SIGHUP meanwhile asks again after it.
    reload_in_flight: bool,
    reload_again: bool,
    /// The TLS settings of `https://` execution clients, made at start-up when one is listed,
    /// or at the first reload that adds one.
    tls: Option<tls::Settings>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Proxy {
    /// Binds the listener; nothing is accepted until `run`.
    pub fn bind(cfg: Config) -> io::Result<Proxy> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let metrics_listener = match cfg.metrics_addr {
            Some(addr) => {
                let mut l = TcpListener::bind(addr)?;
                poll.registry().register(&mut l, METRICS_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let now = Instant::now();
        let tls = if cfg.builders.iter().chain(&cfg.proxies).any(Endpoint::is_https) {
            Some(tls::start(&cfg.builder_ca).map_err(io::Error::other)?)
        } else {
            if !cfg.builder_ca.is_empty() {
                log::warn!("--builder-ca is given but no builder is https://: it is not used");
            }
            None
        };
        let mut ups = Vec::new();
        for (i, endpoint) in cfg.builders.iter().enumerate() {
            let own = cfg.builder_jwt_secrets.get(i).cloned().flatten();
            ups.push(live_config::builder_upstream(&cfg, endpoint.clone(), own, tls.as_ref(), now));
        }
        for endpoint in &cfg.proxies {
            let mut peer =
                Upstream::new(endpoint.clone(), true, None, cfg.backlog_requests, cfg.backlog_bytes);
            peer.refresh = live_config::refresh_for(endpoint, now);
            peer.tls = tls.clone().filter(|_| endpoint.is_https());
            peer.answer_limits = live_config::answer_limits(&cfg);
            ups.push(peer);
        }
        let worker = if ups.is_empty() {
            None
        } else {
            let waker = Arc::new(mio::Waker::new(poll.registry(), WORKER)?);
            Some(Worker::spawn(Box::new(SystemLookup), waker)?)
        };
        let metrics = Metrics::new(ups.len(), cfg.builders.len(), now);
        Ok(Proxy {
            poll,
            listener,
            metrics_listener,
            metrics,
            builders: cfg.builders.len(),
            best: BestBeacon::new(cfg.beacon_expiry),
            cfg,
            downs: Vec::new(),
            free_downs: Vec::new(),
            live_downs: 0,
            live_metrics: 0,
            metrics_accepting: true,
            next_serial: 0,
            ups,
            exchanges: Exchanges::default(),
            scratch: vec![0; SCRATCH],
            pool: BodyPool::shared(),
            again: Vec::new(),
            accepting: true,
            accept_paused_until: None,
            stopping: false,
            accept_failing: false,
            tokens: None,
            worker,
            reload_in_flight: false,
            reload_again: false,
            tls,
        })
    }

    /// The `jwt-tokens-service` role: the same loop and HTTP code, answering `GET /tokens/`
    /// with one `Authorization-<name>: Bearer <token>` header per configured secret.
    pub fn bind_tokens_service(t: &TokensServiceConfig) -> io::Result<Proxy> {
        let mut proxy = Proxy::bind(Config::serving_only(t))?;
        let caches = t
            .entries
            .iter()
            .map(|(name, secret)| (name.clone(), TokenCache::new(secret.clone(), t.client_id.clone())));
        proxy.tokens = Some(caches.collect());
        Ok(proxy)
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stopper` asks to stop, then delivers what is queued for up to
    /// `drain` and returns.
    pub fn run(&mut self, stopper: &dyn Stopper, drain: Duration) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stop_deadline.is_none() && stopper.stop_requested() {
                log::info!("stopping: no new connections; delivering what is queued (up to {drain:?})");
                let _ = self.poll.registry().deregister(&mut self.listener);
                self.accepting = false;
                self.stopping = true;
                stop_deadline = Some(now + drain);
            }
            if stopper.take_reload() && !self.stopping {
                self.request_reload();
            }
            if !self.stopping {
                self.ask_lookups(now);
            }
            if let Some(deadline) = stop_deadline {
                let queued: usize = self.ups.iter().map(Upstream::queued).sum();
                let owed = self.downs.iter().flatten().any(Downstream::owes_answers);
                if (queued == 0 && !owed) || now >= deadline {
                    if queued > 0 {
                        log::warn!("stopping with {queued} calls undelivered");
                    }
                    return Ok(());
                }
            }
            let timeout = if self.again.is_empty() {
                let next = self.next_deadline();
                let wait = next.map(|d| d.saturating_duration_since(now));
                // A stop request is checked at least every 100 ms.
                Some(wait.map_or(Duration::from_millis(100), |w| w.min(Duration::from_millis(100))))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                self.on_event(event.token(), event.is_readable(), event.is_writable(), now);
            }
            for slot in std::mem::take(&mut self.again) {
                self.down_readable(slot, now);
            }
            self.on_timeouts(Instant::now());
            self.pump_all(Instant::now());
            self.reap();
        }
    }

    fn on_event(&mut self, token: Token, readable: bool, writable: bool, now: Instant) {
        match token.0 {
            0 => self.accept(now),
            1 => self.accept_metrics(now),
            2 => self.on_worker_done(now),
            t if t >= DOWN_BASE => {
                let slot = t - DOWN_BASE;
                if writable {
                    self.down_flush(slot, now);
                }
                if readable {
                    self.down_readable(slot, now);
                }
            }
            t if t >= UP_BASE => {
                let up = (t - UP_BASE) / MAX_CONNS;
                let slot = (t - UP_BASE) % MAX_CONNS;
                if up < self.ups.len() {
                    self.up_event(up, slot, readable, writable, now);
                }
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- beacon node side

    fn accept(&mut self, now: Instant) {
        while self.accepting && !self.stopping && self.accept_paused_until.is_none() {
            if self.live_downs >= self.cfg.max_connections {
                log::warn!("{} connections open: not accepting until some close", self.live_downs);
                self.accepting = false;
                return;
            }
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.accept_failing {
                        log::info!("accepting connections again");
                        self.accept_failing = false;
                    }
                    self.adopt(stream, peer, false, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or similar: the pending connection
                    // stays queued, and retrying at once would spin, so wait a moment.
                    // The first failure of a run is a warning; the retries every 100 ms are not.
                    if self.accept_failing {
                        log::debug!("accept failed again: {e}");
                    } else {
                        log::warn!("accept failed: {e}; retrying every {ACCEPT_PAUSE:?} until it works");
                        self.accept_failing = true;
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Connections on `--metrics-addr`: few and short, with their own cap
    /// (`METRICS_MAX_CONNECTIONS`), never counted against `--max-connections`.
    fn accept_metrics(&mut self, now: Instant) {
        while self.metrics_accepting && self.accept_paused_until.is_none() {
            let Some(listener) = self.metrics_listener.as_ref() else { return };
            if self.live_metrics >= METRICS_MAX_CONNECTIONS {
                log::debug!(
                    "{} metrics connections open: not accepting more until some close",
                    self.live_metrics
                );
                self.metrics_accepting = false;
                return;
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.adopt(stream, peer, true, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // As for the main listener: out of file descriptors, retried after a pause.
                    log::warn!("metrics accept failed: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Registers an accepted connection and gives it a slot.
    fn adopt(
        &mut self,
        mut stream: mio::net::TcpStream,
        peer: std::net::SocketAddr,
        metrics_only: bool,
        now: Instant,
    ) -> Option<usize> {
        let _ = stream.set_nodelay(true);
        let slot = self.free_downs.pop().unwrap_or_else(|| {
            self.downs.push(None);
            self.downs.len() - 1
        });
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(DOWN_BASE + slot), interest) {
            log::warn!("cannot register a connection from {peer}: {e}");
            self.free_downs.push(slot);
            return None;
        }
        let limits = Limits { max_head: MAX_HEAD, max_body: self.cfg.max_body_bytes };
        self.next_serial += 1;
        let mut down = Downstream::new(stream, self.next_serial, peer, limits, now);
        if self.tokens.is_some() {
            down.reader.answer_get_at_head();
        } else if self.cfg.jwt_secret.is_some() {
            // Tokens are checked at the head, before any body is buffered (`on_head`).
            down.reader.hold_heads();
        }
        down.reader.use_pool(self.pool.clone());
        down.metrics_only = metrics_only;
        self.downs[slot] = Some(down);
        if metrics_only {
            self.live_metrics += 1;
        } else {
            self.live_downs += 1;
        }
        Some(slot)
    }

    fn down_readable(&mut self, slot: usize, now: Instant) {
        if self.downs.get(slot).and_then(Option::as_ref).is_some_and(Downstream::lingering) {
            self.down_discard(slot);
            return;
        }
        // The rest of a read that filled the pipeline is parsed before anything more is read.
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
        if down.has_pending() {
            if down.dead || down.no_more_requests || down.backpressured() {
                return;
            }
            let pending = down.take_pending();
            self.feed(slot, &pending, now);
            self.down_flush(slot, now);
        }
        for _ in 0..READS_PER_WAKEUP {
            let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
            if down.dead || down.no_more_requests || down.backpressured() || down.has_pending() {
                return;
            }
            let n = match down.stream.read(&mut self.scratch) {
                Ok(0) => {
                    down.on_eof();
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    down.dead = true;
                    return;
                }
            };
            self.metrics.bytes_in += n as u64;
            // The scratch buffer is lent out while its bytes are parsed (nothing reached from
            // `feed` reads a socket into it), so the parser and the handlers can share `self`.
            let scratch = std::mem::take(&mut self.scratch);
            self.feed(slot, &scratch[..n], now);
            self.scratch = scratch;
            self.down_flush(slot, now);
        }
        // More may be waiting; come back after the others had their turn.
        self.again.push(slot);
    }

    /// Parses `input`, read from connection `slot`, into requests and handles them, until the
    /// connection's pipeline is full: the rest then waits in the connection, unparsed, until
    /// answers have gone out (real backpressure, even within one read).
    fn feed(&mut self, slot: usize, input: &[u8], now: Instant) {
        let mut pos = 0;
        while pos < input.len() {
            let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
            if down.no_more_requests {
                break;
            }
            if down.backpressured() {
                down.stash(&input[pos..]);
                break;
            }
            let step = down.reader.advance(&input[pos..]);
            pos += step.consumed;
            match step.event {
                Some(Ok(RequestEvent::Head)) => self.on_head(slot),
                Some(Ok(RequestEvent::Continue)) => down.push(Slot::Ready(Outgoing::continue_100())),
                Some(Ok(RequestEvent::Request(req))) => self.on_request(slot, req, now),
                Some(Err(e)) => self.on_bad_request(slot, e),
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        if let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) {
            down.after_read(now);
        }
    }

    /// A connection in its lingering close: what the client still sends is read and dropped
    /// (within the per-wakeup cap) until it closes or a bound is reached.
    fn down_discard(&mut self, slot: usize) {
        for _ in 0..READS_PER_WAKEUP {
            let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
            if down.dead {
                return;
            }
            match down.stream.read(&mut self.scratch) {
                Ok(0) => {
                    down.on_eof();
                    return;
                }
                Ok(n) => {
                    self.metrics.bytes_in += n as u64;
                    down.discarded(n);
                    if down.dead {
                        log::debug!(
                            "closing connection from {}: sent more than its lingering close drops",
                            down.peer
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    down.dead = true;
                    return;
                }
            }
        }
        self.again.push(slot);
    }

    /// The request could not be read: it is answered at once, and the connection lingers and
    /// closes (the client may still be sending the rest).
    fn on_bad_request(&mut self, slot: usize, error: HttpError) {
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
        log::debug!("bad request from {}: {error}", down.peer);
        self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
        let body = policy::error_body(None, -32600, &error.to_string());
        down.answer_early(error.status(), body, 1);
    }

    /// A request's head has been read and its body not yet (only with `--jwt-secret`): a POST
    /// without a valid token is answered 401 now, with no `100 Continue` and nothing of its body
    /// kept; a short body is then dropped as it arrives and the connection kept, anything else
    /// ends the connection with a lingering close. Other requests go on to their body.
    fn on_head(&mut self, slot: usize) {
        let secret = self.cfg.jwt_secret.as_ref();
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
        let Some(head) = down.reader.held_head() else { return };
        let verdict = match secret {
            Some(secret) if head.method == "POST" && !down.metrics_only => {
                intake::check_token(secret, head, unix_now())
            }
            _ => Ok(()),
        };
        let Err(why) = verdict else {
            if down.reader.accept_body() {
                down.push(Slot::Ready(Outgoing::continue_100()));
            }
            return;
        };
        let (keep_alive, minor) = (head.keep_alive, head.minor);
        log::warn!("rejected a request from {}: {why}", down.peer);
        self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
        let body = policy::error_body(None, -32000, &format!("unauthorized: {why}"));
        match down.reader.refuse_body() {
            Refusal::Discard => down.push(Slot::Ready(Outgoing::json(401, body, keep_alive, minor))),
            Refusal::Close => down.answer_early(401, body, minor),
        }
    }

    fn on_request(&mut self, slot: usize, req: Request, now: Instant) {
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
        let keep_alive = req.head.keep_alive;
        let minor = req.head.minor;
        if !keep_alive {
            down.no_more_requests = true;
        }
        let answer =
            |status: u16, body: Vec<u8>| Slot::Ready(Outgoing::json(status, body, keep_alive, minor));
        if let Some(tokens) = self.tokens.as_mut() {
            down.push(Slot::Ready(tokens_service::answer(tokens, &req.head, unix_now())));
            return;
        }
        let metrics_only = down.metrics_only;
        match intake::route(&req.head.method, metrics_only) {
            Route::Admin => {
                let answer = self.get_answer(&req.head, metrics_only, now);
                if let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) {
                    down.push(Slot::Ready(answer));
                }
                return;
            }
            Route::NotHere => {
                let body = METRICS_ONLY_404.to_vec();
                down.push(Slot::Ready(Outgoing::answer(404, Some(b"text/plain"), body, keep_alive, minor)));
                return;
            }
            Route::Call => {}
            Route::NotAllowed => {
                let body = policy::error_body(None, -32600, "only POST carries JSON-RPC");
                down.push(answer(405, body));
                return;
            }
        }
        // A request with a body had its token checked at the head (`on_head`); this check is
        // the one for bodiless requests, and stays as the last word for all of them.
        if let Some(secret) = self.cfg.jwt_secret.as_ref() {
            if let Err(why) = intake::check_token(secret, &req.head, unix_now()) {
                log::warn!("rejected a request from {}: {why}", down.peer);
                self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
                down.push(answer(401, policy::error_body(None, -32000, &format!("unauthorized: {why}"))));
                return;
            }
        }
        let scan = match rpc::scan_request(&req.body) {
            Ok(scan) => scan,
            Err(e) => {
                log::debug!("invalid JSON from {}: {e}", down.peer);
                self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
                down.push(answer(400, policy::error_body(None, -32700, &format!("parse error: {e}"))));
                return;
            }
        };
        let class = if scan.shape == rpc::Shape::Object {
            Class::of(scan.method.as_deref())
        } else {
            Class::NonEngine
        };
        let id = scan.id.as_ref().and_then(|r| req.body.get(r.clone())).map(<[u8]>::to_vec);
        let client = down.peer.ip().to_string();
        let beacon = req
            .head
            .header("x-forwarded-for")
            .and_then(http::first_forwarded_for)
            .map_or_else(|| client.clone(), str::to_string);
        let verdict = self.best.observe(&beacon, class, scan.timestamp, now);
        self.metrics.beacon_seen(&beacon, scan.timestamp, now);
        if let (Class::NewPayload, Some(ts)) = (class, scan.timestamp) {
            self.metrics.sync.payload_seen(ts);
        }
        if let Some(switch) = verdict.switched {
            self.metrics.best_switched();
            match switch.from {
                None => log::info!("following beacon node {}", switch.to),
                Some(from) => log::info!(
                    "switching beacon node {from} -> {} (timestamp {})",
                    switch.to,
                    switch.timestamp
                ),
            }
        }
        if !verdict.forward {
            log::debug!("filtered {} from {beacon}: not the best beacon node", class.label());
            self.metrics.request(class, RequestOutcome::Filtered);
            let body = policy::result_body(id.as_deref(), policy::SYNCING_FCU_RESULT);
            down.push(answer(200, body));
            return;
        }
        self.metrics.request(class, RequestOutcome::Forwarded);
        let timeout = policy::timeout_for(scan.method.as_deref(), class, self.cfg.request_timeout);
        let serial = down.serial;
        let mirror = self.cfg.mirror_mode;
        if mirror {
            down.push(answer(200, policy::mirror_ack(class, id.as_deref())));
        }
        log::debug!(
            "{} id {} from {beacon}",
            scan.method.as_deref().unwrap_or("-"),
            String::from_utf8_lossy(id.as_deref().unwrap_or(b"null"))
        );
        let inbound = Rc::new(Inbound {
            head: req.head,
            body: req.body,
            client,
            method: scan.method,
            class,
            id,
            timeout,
            received: now,
            pool: Some(self.pool.clone()),
        });
        let reply = (!mirror).then_some(Reply { slot, serial });
        let r = self.exchanges.insert(Exchange::new(inbound.clone(), reply, self.builders, now));
        if let (Some(down), false) = (self.downs.get_mut(slot).and_then(Option::as_mut), mirror) {
            down.push(Slot::Waiting(r));
        }
        if class.is_fanned_out() {
            for target in 0..self.builders {
                self.send(target, r, target, &inbound, now);
            }
            let peer_timeout = self.cfg.proxy_request_timeout;
            for up in self.builders..self.ups.len() {
                let job = Job {
                    inbound: inbound.clone(),
                    exchange: None,
                    target: 0,
                    timeout: peer_timeout,
                    retried: false,
                    sent_at: None,
                };
                self.enqueue(up, job, now);
            }
        } else {
            self.send(0, r, 0, &inbound, now);
        }
        self.decide(r, now);
    }

    /// Answers a GET or HEAD: `/metrics`, `/status`, `/healthz`, `/readyz`, or (any other path)
    /// the health probe the Go proxy answers with an empty 200. A HEAD gets the same head
    /// (its `Content-Length` that of the GET's body, as RFC 9110 allows) and no body.
    fn get_answer(&mut self, head: &http::RequestHead, metrics_only: bool, now: Instant) -> Outgoing {
        let (keep_alive, minor) = (head.keep_alive, head.minor);
        let path = head.path.split('?').next().unwrap_or_default();
        let (status, content_type, body) = match path {
            "/metrics" | "/status" | "/healthz" | "/readyz" => self.admin_answer(path, now),
            _ if metrics_only => (404, &b"text/plain"[..], METRICS_ONLY_404.to_vec()),
            _ => return Outgoing::answer(200, None, Vec::new(), keep_alive, minor),
        };
        let mut out = Outgoing::answer(status, Some(content_type), body, keep_alive, minor);
        if head.method == "HEAD" {
            out.body.clear();
        }
        out
    }

    /// The status, content type and body of an admin path.
    fn admin_answer(&mut self, path: &str, now: Instant) -> (u16, &'static [u8], Vec<u8>) {
        const JSON: &[u8] = b"application/json";
        let snapshot = Snapshot {
            open_connections: self.live_downs,
            best: self.best.current(),
            els: self
                .ups
                .iter()
                .map(|u| (u.name(), u.is_peer, u.state(), u.backlog_len(), u.backlog_bytes()))
                .collect(),
        };
        match path {
            "/metrics" => {
                let text = self.metrics.render_prometheus(&snapshot, now);
                (200, b"text/plain; version=0.0.4; charset=utf-8", text.as_bytes().to_vec())
            }
            "/status" => (200, JSON, self.metrics.render_status(&snapshot, now).as_bytes().to_vec()),
            "/healthz" => (200, JSON, probes::health_body(self.metrics.uptime(now))),
            _ => {
                let input = probes::ReadyInput {
                    stopping: self.stopping,
                    beacon: snapshot.best.map(|(id, _)| (id, self.metrics.beacon_last_seen(id))),
                    els: self.metrics.el_probes(&snapshot),
                    window: probes::recent_window(self.cfg.beacon_expiry),
                };
                let verdict = probes::readiness(&input, now);
                (if verdict.ready { 200 } else { 503 }, JSON, probes::readiness_body(&verdict))
            }
        }
    }

    /// Queues a job for builder `up` on behalf of exchange `r`.
    fn send(&mut self, up: usize, r: ExchangeRef, target: usize, inbound: &Rc<Inbound>, now: Instant) {
        if let Some(e) = self.exchanges.get_mut(r) {
            e.live_jobs += 1;
        }
        let job = Job {
            inbound: inbound.clone(),
            exchange: Some(r),
            target,
            timeout: inbound.timeout,
            retried: false,
            sent_at: None,
        };
        // A client known to be down cannot answer this in time; its ordered calls still wait
        // in its backlog, but the beacon node is answered by the next client at once.
        if self.ups[up].is_down() && job.ordered() {
            self.standing(r, target, Standing::Failed, now);
        }
        self.enqueue(up, job, now);
    }

    fn enqueue(&mut self, up: usize, job: Job, now: Instant) {
        let dropped = self.ups[up].enqueue(job);
        self.dropped(up, dropped, now);
        self.pump(up, now);
    }

    /// Puts a job back at the front of its client's queue (after a failed connect, or for its
    /// one retry); what no longer fits the backlog is dropped as usual.
    fn requeue(&mut self, up: usize, job: Job, now: Instant) {
        let dropped = self.ups[up].requeue_front(job);
        self.dropped(up, dropped, now);
    }

    /// Calls dropped from a full backlog fail for their beacon nodes; the operator hears of it
    /// at once and then at most once a minute, with the count, however long the outage.
    fn dropped(&mut self, up: usize, dropped: Vec<Job>, now: Instant) {
        for old in dropped {
            let u = &mut self.ups[up];
            u.unreported_drops += 1;
            if !u.last_drop_report.is_some_and(|t| now.saturating_duration_since(t) < DROP_REPORT_EVERY) {
                log::warn!(
                    "{}: backlog full ({} calls, {} bytes): dropped the oldest {} ({} dropped since the last report)",
                    u.name(),
                    u.backlog_len(),
                    u.backlog_bytes(),
                    old.inbound.method.as_deref().unwrap_or("call"),
                    u.unreported_drops
                );
                u.unreported_drops = 0;
                u.last_drop_report = Some(now);
            }
            self.job_failed(up, old, Failure::Dropped, now);
        }
    }

    fn down_flush(&mut self, slot: usize, now: Instant) {
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
        let was_backpressured = down.backpressured();
        let before = down.sent;
        let flushed = down.flush(now);
        self.metrics.bytes_out += down.sent - before;
        match flushed {
            Ok(Flushed::Drained) => {
                if was_backpressured && !down.backpressured() {
                    // Reading stopped at the pipeline limit; bytes may be waiting already,
                    // and an edge-triggered poll will not say so again.
                    self.again.push(slot);
                }
            }
            Ok(Flushed::Blocked) => {}
            Ok(Flushed::Linger) => {
                // The client reads the answer and then the end of the stream; what it still
                // sends is read (now: it may be waiting already, and no new edge would say so)
                // and dropped.
                if down.stream.shutdown(std::net::Shutdown::Write).is_err() {
                    down.dead = true;
                } else {
                    self.again.push(slot);
                }
            }
            Err(_) => down.dead = true,
        }
    }

    // ---------------------------------------------------------------- deciding answers

    fn standing(&mut self, r: ExchangeRef, target: usize, standing: Standing, now: Instant) {
        let Some(e) = self.exchanges.get_mut(r) else { return };
        let mut changed = false;
        if let Some(s) = e.standings.get_mut(target) {
            if *s == Standing::Pending {
                *s = standing;
                changed = true;
            }
        }
        // Only the first failure of a client moves a non-engine call on, so a call that is
        // reported failed twice (found down, then its job failed) is not sent twice.
        if changed && standing == Standing::Failed && !e.inbound.class.is_fanned_out() && !e.decided {
            // Non-engine calls fall back to the next client in list order.
            // After a reload an exchange may know fewer clients than the list has now.
            let next = target + 1;
            if next < self.builders && next < e.standings.len() {
                let inbound = e.inbound.clone();
                self.send(next, r, next, &inbound, now);
            }
        }
        self.decide(r, now);
    }

    /// Answers the beacon node as soon as the answer is decided.
    fn decide(&mut self, r: ExchangeRef, now: Instant) {
        let Some(e) = self.exchanges.get_mut(r) else { return };
        if !e.decided {
            let Some(choice) = policy::choose(e.combine, &e.standings) else { return };
            e.decided = true;
            let reply = e.reply.take();
            let ups = &self.ups;
            let name = |i: usize| ups.get(i).map_or("?", Upstream::name).to_string();
            let answer = compose::answer(e, &choice, &name, &mut self.metrics);
            if let Some(reply) = reply {
                self.deliver(reply, r, answer, now);
            }
        }
        if self.exchanges.get(r).is_some_and(Exchange::finished) {
            self.exchanges.remove(r);
        }
    }

    fn deliver(&mut self, reply: Reply, r: ExchangeRef, answer: Outgoing, now: Instant) {
        let Some(down) = self.downs.get_mut(reply.slot).and_then(Option::as_mut) else { return };
        if down.serial != reply.serial || down.dead {
            return;
        }
        if down.fill(r, answer) {
            self.down_flush(reply.slot, now);
        }
    }

    // ---------------------------------------------------------------- execution client side

    fn up_token(up: usize, slot: usize) -> Token {
        Token(UP_BASE + up * MAX_CONNS + slot)
    }

    fn pump_all(&mut self, now: Instant) {
        for up in 0..self.ups.len() {
            self.pump(up, now);
        }
    }

    /// Hands queued jobs to connections and registers new connections.
    fn pump(&mut self, up: usize, now: Instant) {
        let dispatch = self.ups[up].dispatch(now, unix_now());
        let name = self.ups[up].endpoint.name.clone();
        if let Some(news) = dispatch.went_down {
            self.unreachable(up);
            self.metrics.set_up(up, false);
            self.metrics.failed(up, Failure::Refused);
            if news {
                log::warn!(
                    "{name} is down: cannot connect; calls that must stay in order wait in its backlog"
                );
            }
            self.fail_queued(up, now);
        }
        // A socket that cannot be registered would never see an event: that connection
        // failed, like a refused connect (after the rest of this pump).
        let mut unregistered = Vec::new();
        for slot in dispatch.opened {
            let token = Self::up_token(up, slot);
            if let Some(conn) = self.ups[up].conns[slot].as_mut() {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = self.poll.registry().register(&mut conn.stream, token, interest) {
                    log::debug!("{name}: cannot register a connection: {e}");
                    unregistered.push((slot, e));
                }
            }
        }
        // Jobs handed to idle kept-alive connections are written at once.
        for (job, failure) in dispatch.failed {
            self.job_failed(up, job, failure, now);
        }
        for slot in 0..MAX_CONNS {
            let ready = self.ups[up].conns[slot]
                .as_ref()
                .is_some_and(|c| c.state == ConnState::Busy && c.job.is_some() && !c.request_sent());
            if ready {
                self.up_write(up, slot, now);
            }
        }
        for (slot, e) in unregistered {
            self.connect_failed_because(up, slot, &format!("cannot register a connection: {e}"), now);
        }
    }

    /// Until when connection `slot` of client `up` should wait so that the primary gets its
    /// request first (see `core::hold`).
    fn held_for_primary(&self, up: usize, slot: usize, now: Instant) -> Option<Instant> {
        if up == 0 {
            return None;
        }
        let job = self.ups[up].conns[slot].as_ref().and_then(|c| c.job.as_ref())?;
        let primary = self.ups[0]
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.dead && c.job.as_ref().is_some_and(|j| Rc::ptr_eq(&j.inbound, &job.inbound)))
            .map(|c| c.last_progress);
        hold::hold_until(job.inbound.received, job.inbound.body.len(), primary, now)
    }

    /// Writes what connection `slot` of client `up` has to send, unless it waits for the primary.
    fn up_write(&mut self, up: usize, slot: usize, now: Instant) {
        if let Some(until) = self.held_for_primary(up, slot, now) {
            if let Some(conn) = self.ups[up].conns[slot].as_mut() {
                conn.hold_until = Some(until);
            }
            return;
        }
        let Some(conn) = self.ups[up].conns[slot].as_mut() else { return };
        conn.hold_until = None;
        if conn.job.is_none() || conn.request_sent() {
            return;
        }
        if conn.write().is_err() {
            let outcome = conn.fail(Failure::Reset);
            self.on_outcome(up, outcome, now);
        }
    }

    /// The primary has answered (or failed): the requests held back for it go out now.
    fn release_held(&mut self, now: Instant) {
        for up in 1..self.ups.len() {
            for slot in 0..MAX_CONNS {
                if self.ups[up].conns[slot].as_ref().is_some_and(|c| c.hold_until.is_some() && !c.dead) {
                    self.up_write(up, slot, now);
                }
            }
        }
    }

    fn up_event(&mut self, up: usize, slot: usize, readable: bool, writable: bool, now: Instant) {
        let Some(conn) = self.ups[up].conns[slot].as_mut() else { return };
        if conn.dead {
            return;
        }
        if conn.state == ConnState::Connecting {
            if !writable && !readable {
                return;
            }
            // A non-blocking connect ends with WRITABLE; the error (if any) is in SO_ERROR,
            // and a peer address confirms the connection really is established.
            let failed = match conn.stream.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => match conn.stream.peer_addr() {
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(_) => true,
                },
            };
            if failed {
                self.connect_failed(up, slot, now);
                return;
            }
            // Over TLS the connection is made only once the handshake is done.
            match conn.handshake() {
                Handshake::Done => {}
                Handshake::Pending => return,
                Handshake::Failed(why) => {
                    self.connect_failed_because(up, slot, &why, now);
                    return;
                }
            }
            self.ups[up].connected(slot, now);
            if self.ups[up].mark_connected() {
                self.log_up(up);
            }
        }
        let needs_write =
            self.ups[up].conns[slot].as_ref().is_some_and(|c| c.job.is_some() && !c.request_sent());
        if needs_write {
            self.up_write(up, slot, now);
        }
        let Some(conn) = self.ups[up].conns[slot].as_mut() else { return };
        if readable || conn.dead {
            let outcome = conn.read(&mut self.scratch, now);
            self.on_outcome(up, outcome, now);
        }
    }

    fn connect_failed(&mut self, up: usize, slot: usize, now: Instant) {
        self.connect_failed_because(up, slot, "cannot connect", now);
    }

    /// A connection could not be made (`why`, for the log: refused, or a TLS handshake that
    /// failed, as on a certificate the client's name or the trusted roots do not match).
    fn connect_failed_because(&mut self, up: usize, slot: usize, why: &str, now: Instant) {
        let (job, news) = self.ups[up].connect_failed(slot, now);
        self.metrics.set_up(up, false);
        self.metrics.failed(up, Failure::Refused);
        self.unreachable(up);
        if news {
            log::warn!(
                "{} is down: {why}; calls that must stay in order wait in its backlog",
                self.ups[up].name()
            );
        } else {
            log::debug!("{}: still down: {why}", self.ups[up].name());
        }
        if let Some(job) = job {
            if job.ordered() {
                // Not delivered: it goes back to the front of the backlog for the retry.
                if let Some(r) = job.exchange {
                    self.standing(r, job.target, Standing::Failed, now);
                }
                self.requeue(up, job, now);
            } else {
                self.job_failed(up, job, Failure::Refused, now);
            }
        }
        self.fail_queued(up, now);
        self.pump(up, now);
    }

    /// A client was found down: every call queued for it counts as failed for its beacon node,
    /// which is answered by the next client at once. The calls stay queued for delivery.
    fn fail_queued(&mut self, up: usize, now: Instant) {
        if self.ups[up].is_peer {
            return;
        }
        for (r, target) in self.ups[up].queued_exchanges() {
            self.standing(r, target, Standing::Failed, now);
        }
    }

    fn on_outcome(&mut self, up: usize, outcome: Outcome, now: Instant) {
        let ended = !matches!(outcome, Outcome::Pending);
        match outcome {
            Outcome::Pending => {}
            Outcome::Answered(job, resp) => {
                self.ups[up].job_ended(&job);
                self.job_answered(up, job, resp, now);
                self.pump(up, now);
            }
            Outcome::Failed(job, failure) => {
                self.after_failure(up, job, failure, now);
                self.pump(up, now);
            }
            Outcome::Retry(job) => {
                log::debug!(
                    "{}: kept-alive connection closed under a call; retrying it once",
                    self.ups[up].name()
                );
                self.requeue(up, job, now);
                self.pump(up, now);
            }
        }
        if up == 0 && ended {
            self.release_held(now);
        }
    }

    fn log_up(&mut self, up: usize) {
        log::info!("{} is up", self.ups[up].name());
        self.metrics.set_up(up, true);
    }

    /// A call failed on a connection of client `up`. An ordered call that timed out or lost
    /// its connection waits again at the front of the backlog; its beacon node is answered by
    /// the next client, as for any failure. A client that stops answering is reported once,
    /// like one that refuses connections, and what is queued for it is answered elsewhere.
    fn after_failure(&mut self, up: usize, job: Job, failure: Failure, now: Instant) {
        let timeout = job.timeout;
        let exchange = job.exchange.map(|r| (r, job.target));
        let went_silent = match self.ups[up].after_failure(job, failure, now) {
            AfterFailure::Failed { job, went_silent } => {
                self.job_failed(up, job, failure, now);
                went_silent
            }
            AfterFailure::Requeued { dropped, went_silent } => {
                self.metrics.failed(up, failure);
                log::debug!(
                    "{}: an ordered call failed ({}); it waits at the front of the backlog",
                    self.ups[up].name(),
                    failure.label()
                );
                if let Some((r, target)) = exchange {
                    self.standing(r, target, Standing::Failed, now);
                }
                self.dropped(up, dropped, now);
                went_silent
            }
        };
        let Some(news) = went_silent else { return };
        self.metrics.set_up(up, false);
        if news {
            let why = match failure {
                Failure::Timeout => format!("no answer within {} ms", timeout.as_millis()),
                _ => "the connection broke before the answer".to_string(),
            };
            log::warn!(
                "{} is not answering: {why}; calls that must stay in order wait in its backlog and are sent \
                 again when it answers",
                self.ups[up].name()
            );
        }
        self.fail_queued(up, now);
    }

    fn job_answered(&mut self, up: usize, job: Job, resp: http::Response, now: Instant) {
        if self.ups[up].mark_up() {
            self.log_up(up);
        }
        let latency = job.sent_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let status = if job.inbound.class.is_ordered() {
            rpc::scan_response(&resp.body).ok().and_then(|s| s.status)
        } else {
            None
        };
        // Only a 2xx answer shows the client serves (a 401 for every call is no service).
        let served = (200..300).contains(&resp.head.status).then_some(now);
        self.metrics.answered(up, latency, status.as_deref(), served);
        if status.as_deref() == Some("VALID") && job.inbound.class == Class::NewPayload {
            self.note_valid_payload(up, &job.inbound.body);
        }
        self.note_http_status(up, &resp);
        let Some(r) = job.exchange else { return };
        let name = self.ups[up].name().to_string();
        let Some(e) = self.exchanges.get_mut(r) else { return };
        e.live_jobs = e.live_jobs.saturating_sub(1);
        let mine = status.clone();
        if let Some((other, theirs)) = e.record_status(job.target, status) {
            self.metrics.disagreement();
            let other_name = self.ups.get(other).map_or("?", |u| u.name());
            log::warn!(
                "execution clients disagree on {} id {}: {} says {}, {} says {}",
                job.inbound.method.as_deref().unwrap_or("call"),
                String::from_utf8_lossy(job.inbound.id.as_deref().unwrap_or(b"null")),
                other_name,
                theirs,
                name,
                mine.unwrap_or_default()
            );
        }
        let Some(e) = self.exchanges.get_mut(r) else { return };
        if !e.decided {
            if let Some(slot) = e.answers.get_mut(job.target) {
                *slot = Some(resp);
            }
        }
        self.standing(r, job.target, Standing::Answered, now);
    }

    /// Execution client `up` called a payload VALID: it moves its head in the sync view (the
    /// body is scanned again for the block number and hash, only now), and falling behind or
    /// catching up is said once.
    fn note_valid_payload(&mut self, up: usize, body: &[u8]) {
        if !self.metrics.sync.tracks(up) {
            return;
        }
        let Some(head) = rpc::scan_payload_head(body) else { return };
        for change in self.metrics.sync.valid(up, head) {
            let name = self.ups.get(change.el()).map_or("?", |u| u.name());
            match change {
                crate::sync_view::Change::FellBehind { .. } => log::warn!("{}", change.message(name)),
                crate::sync_view::Change::CaughtUp { .. } => log::info!("{}", change.message(name)),
            }
        }
    }

    /// An execution client that starts answering with an HTTP error (a wrong JWT secret gives
    /// 401) is reported once, and again when it recovers, whether or not it is the primary.
    fn note_http_status(&mut self, up: usize, resp: &http::Response) {
        let u = &mut self.ups[up];
        let status = resp.head.status;
        let was_ok = u.last_http_status == 0 || (200..300).contains(&u.last_http_status);
        let is_ok = (200..300).contains(&status);
        if was_ok && !is_ok {
            let excerpt = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
            let hint = if status == 401 { " (is its JWT secret right, and its clock in sync?)" } else { "" };
            log::warn!("{} answers HTTP {status}{hint}: {}", u.name(), excerpt.trim());
        } else if !was_ok && is_ok {
            log::info!("{} answers HTTP {status} again", u.name());
        }
        u.last_http_status = status;
    }

    fn job_failed(&mut self, up: usize, job: Job, failure: Failure, now: Instant) {
        log::debug!(
            "{}: {} failed: {}",
            self.ups[up].name(),
            job.inbound.method.as_deref().unwrap_or("call"),
            failure.label()
        );
        self.metrics.failed(up, failure);
        let Some(r) = job.exchange else { return };
        if let Some(e) = self.exchanges.get_mut(r) {
            e.live_jobs = e.live_jobs.saturating_sub(1);
        }
        self.standing(r, job.target, Standing::Failed, now);
    }

    // ---------------------------------------------------------------- time

    fn timeouts(&self) -> Timeouts {
        Timeouts { read: self.cfg.read_timeout, idle: self.cfg.idle_timeout, write: self.cfg.write_timeout }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timeouts = self.timeouts();
        let downs = self.downs.iter().flatten().filter_map(|d| d.deadline(&timeouts));
        let ups = self.ups.iter().filter_map(Upstream::next_deadline);
        downs
            .chain(ups)
            .chain(self.exchanges.next_deadline())
            .chain(self.accept_paused_until)
            .chain(self.pool.borrow().deadline())
            .chain(if self.stopping { None } else { self.next_lookup() })
            .min()
    }

    fn on_timeouts(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept(now);
            self.accept_metrics(now);
        }
        let freed = self.pool.borrow_mut().tick(now);
        if let Some(freed) = freed {
            log::debug!(
                "freed the spare body buffer ({freed} bytes) after {SPARE_KEEP:?} without large bodies"
            );
        }
        let timeouts = self.timeouts();
        for down in self.downs.iter_mut().flatten() {
            if let Some(expired) = down.on_timeout(now, &timeouts) {
                log::debug!("closing connection from {}: {}", down.peer, expired.label());
                self.metrics.connection_closed(expired);
            }
        }
        // The list of exchanges is only gathered (an allocation) when one is actually due.
        let due = self.exchanges.next_deadline().is_some_and(|d| d <= now);
        for r in if due { self.exchanges.refs() } else { Vec::new() } {
            let Some(e) = self.exchanges.get_mut(r) else { continue };
            if e.decided || e.deadline > now {
                continue;
            }
            for s in e.standings.iter_mut() {
                if *s == Standing::Pending {
                    *s = Standing::Failed;
                }
            }
            self.decide(r, now);
        }
        for up in 0..self.ups.len() {
            for slot in 0..MAX_CONNS {
                let Some(conn) = self.ups[up].conns[slot].as_mut() else { continue };
                if conn.hold_until.is_some_and(|h| h <= now) && !conn.dead {
                    self.up_write(up, slot, now);
                    continue;
                }
                if conn.dead || conn.deadline > now {
                    continue;
                }
                if conn.state == ConnState::Connecting {
                    self.connect_failed(up, slot, now);
                } else {
                    let outcome = conn.on_timeout();
                    self.on_outcome(up, outcome, now);
                }
            }
        }
    }

    /// Drops dead connections after the event batch, and resumes accepting below 90 % of the cap.
    fn reap(&mut self) {
        for slot in 0..self.downs.len() {
            if !self.downs[slot].as_ref().is_some_and(|d| d.dead) {
                continue;
            }
            if let Some(mut down) = self.downs[slot].take() {
                for r in down.waiting().collect::<Vec<_>>() {
                    if let Some(e) = self.exchanges.get_mut(r) {
                        e.reply = None;
                    }
                }
                let _ = self.poll.registry().deregister(&mut down.stream);
                self.free_downs.push(slot);
                if down.metrics_only {
                    self.live_metrics -= 1;
                } else {
                    self.live_downs -= 1;
                }
            }
        }
        for up in self.ups.iter_mut() {
            for conn in up.conns.iter_mut() {
                if conn.as_ref().is_some_and(|c| c.dead && c.job.is_none()) {
                    if let Some(mut c) = conn.take() {
                        let _ = self.poll.registry().deregister(&mut c.stream);
                    }
                }
            }
        }
        if !self.accepting
            && !self.stopping
            && self.accept_paused_until.is_none()
            && self.live_downs * 10 < self.cfg.max_connections * 9
        {
            self.accepting = true;
            self.accept(Instant::now());
        }
        // The metrics listener is resumed the same way (an edge-triggered listener would not
        // say again that connections are waiting).
        if !self.metrics_accepting && self.live_metrics * 10 < METRICS_MAX_CONNECTIONS * 9 {
            self.metrics_accepting = true;
            self.accept_metrics(Instant::now());
        }
    }
}
