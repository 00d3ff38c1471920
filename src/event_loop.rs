//! The proxy on the shell's poll loop (`shell::poll_loop`, a `Service`): it owns the `Poll`,
//! connects to execution clients, dispatches their readiness to their connections, turns the
//! beacon nodes' requests into exchanges and answers, and fires the deadlines of exchanges
//! and execution clients. The loop itself (the poll and its timeout, the clock, accepting,
//! reading beacon node connections with the per-wakeup cap and revisit list, flushing them,
//! their deadlines, reaping them after the batch) is `poll_loop`'s, shared with
//! `jwt-tokens-service`; what is the proxy's is said in `impl Service for Proxy`: what bytes
//! mean (`requests::feed`), the memory budget's pause of reading (`may_read`,
//! `resume_budget_paused`), the metrics, the helper thread's and execution clients' tokens,
//! and the stop with its drain.
//!
//! Every connection is registered once for READABLE | WRITABLE, edge-triggered, and never
//! re-registered: an edge fires only when the socket's state changes (new bytes, or room after
//! a write hit `WouldBlock`), so write interest costs nothing while there is nothing to write,
//! and the event loop saves a `epoll_ctl` call per answer.
//!
//! One helper thread (`resolve`) does what the loop must not wait for (looking execution
//! clients' names up again, reading files for a SIGHUP reload) and wakes the loop through a
//! `mio::Waker`; `live_config` applies its results. No thread touches a request.
//!
//! The sockets themselves are the shell's (`shell::BnSide` for the beacon nodes' listeners and
//! connections, `shell::ElSockets`): the connection state machines own none and see none. An
//! execution client connection is asked what to write, the shell writes that, and the
//! connection is told what moved (`up_write`) and handed what the shell read (`up_read`).
//! What happens to the bytes read is in `requests` (beacon node side: requests become
//! exchanges) and `answers` (execution client side: outcomes become the beacon node's
//! answer); `live_config` applies lookups and reloads. The pure decisions are in `core`.
//!
//! It knows no HTTP syntax, JSON fields or JWT encoding: those are asked of `http`, `rpc`,
//! `policy` and `jwt`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Poll, Token};

use crate::beacons::{self, BestBeacon};
use crate::config::{Config, Endpoint};
use crate::core::budget::{self, Meter};
use crate::core::exchange::{ExchangeRef, Exchanges};
use crate::downstream::{Downstream, Expired, Timeouts};
use crate::http::Limits;
use crate::metrics::Metrics;
use crate::pool::{BodyPool, SharedPool, SPARE_KEEP};
use crate::resolve::{SystemLookup, Worker};
use crate::shell::poll_loop::{self, BnSide, Service};
use crate::shell::ElSockets;
use crate::tls::{self, Handshake};
use crate::upstream::{ConnState, Failure, Outcome, Upstream, MAX_CONNS};

mod answers;
mod cut;
mod live_config;
mod piped;
mod requests;

const LISTENER: Token = Token(0);
const METRICS_LISTENER: Token = Token(1);
/// The helper thread (name lookups, reloads) has finished something: see `resolve`.
const WORKER: Token = Token(2);
/// Upstream connection tokens: `UP_BASE + upstream * MAX_CONNS + slot`, below the beacon
/// node connections' (`shell::bn_sockets::BASE`), which `poll_loop` dispatches itself.
const UP_BASE: usize = 16;

/// Most connections open at once on `--metrics-addr`: a few scrapers and an operator's curl.
/// They are never counted against `--max-connections`, so `/metrics` answers exactly when
/// the beacon node side is saturated.
pub const METRICS_MAX_CONNECTIONS: usize = 8;
/// Largest request head read from a beacon node, and largest answer head from a client.
const MAX_HEAD: usize = 64 * 1024;
const SCRATCH: usize = 64 * 1024;
/// A relayed answer's bytes are written to the beacon node once this many have gathered (or
/// the execution client's socket has no more for now): one write per read of `SCRATCH` bytes
/// cost a system call and a wake-up of the beacon node each, ten times the context switches
/// of writing the stored answer whole.
const RELAY_WRITE: usize = 256 * 1024;

pub use crate::shell::Stopper;

pub struct Proxy {
    poll: Poll,
    /// The beacon node connections, with the beacon nodes' listener (`LISTENER`,
    /// `--max-connections`) and `--metrics-addr`'s (`METRICS_LISTENER`, which serves only
    /// `/metrics` and `/status`, with its own cap `METRICS_MAX_CONNECTIONS`).
    bn: BnSide,
    metrics: Metrics,
    cfg: Config,
    ups: Vec<Upstream>,
    /// The sockets of `ups`' connections (the connections own none).
    el_sockets: ElSockets,
    /// How many of `ups` are `--builders` (the rest are `--proxies` peers).
    builders: usize,
    exchanges: Exchanges,
    best: BestBeacon<ExchangeRef>,
    payloads: crate::payload_choice::PayloadMap,
    /// Execution clients' answers are read into this.
    scratch: Vec<u8>,
    /// Set once a stop was requested: accepting never resumes.
    stopping: bool,
    /// How long a stop waits for what is queued (`run`'s `drain`), and until when it does.
    drain: Duration,
    stop_deadline: Option<Instant>,
    /// One spare large-body buffer (see `pool`), freed after a while without large bodies.
    pool: SharedPool,
    /// Some execution client connection's request is held (`up_write`): a beacon node's
    /// answer written whole looks at them again.
    holding: bool,
    /// The request bodies read whole and still held, for `--memory-budget-bytes`…
    meter: Meter,
    /// …and whether the budget was reached at the last head (said once per episode).
    budget_reached: bool,
    /// Beacon node connections (slot, serial) whose reading waits for the budget to clear
    /// (`Downstream::waits_for_budget`).
    budget_paused: Vec<(usize, u64)>,
    /// The helper thread for name lookups and reloads (None without execution clients).
    worker: Option<Worker>,
    /// A reload is being read on the helper thread; another SIGHUP meanwhile asks again after it.
    reload_in_flight: bool,
    reload_again: bool,
    /// The TLS settings of `https://` execution clients, made at start-up when one is listed,
    /// or at the first reload that adds one.
    tls: Option<tls::Settings>,
    /// The large request body being read and scanned as it arrives, and streamed to the
    /// primary once its method allows (`core::cut`).
    cut: Option<crate::core::cut::Cut>,
    /// The beacon node connection a relayed answer's bytes were appended to since its last
    /// write, and how many (`answers::relay_bytes`): written once `RELAY_WRITE` have gathered
    /// or the execution client's socket has no more for now, not after every read.
    relay_unflushed: Option<(usize, usize)>,
    /// The relayed answer moving from its client's socket to its beacon node's through a pipe
    /// (`piped`), and whether pipes work here (false once the kernel turned out to have none).
    piped: Option<piped::Piped>,
    pipe_supported: bool,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Proxy {
    /// Binds the listener; nothing is accepted until `run`.
    pub fn bind(cfg: Config) -> io::Result<Proxy> {
        let poll = Poll::new()?;
        let timeouts = Timeouts { read: cfg.read_timeout, idle: cfg.idle_timeout, write: cfg.write_timeout };
        let mut bn = BnSide::new(&poll, timeouts, SCRATCH)?;
        bn.listen(LISTENER, cfg.listen, cfg.max_connections, "", log::Level::Warn)?;
        if let Some(addr) = cfg.metrics_addr {
            bn.listen(METRICS_LISTENER, addr, METRICS_MAX_CONNECTIONS, "metrics ", log::Level::Debug)?;
        }
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
            bn,
            metrics,
            builders: cfg.builders.len(),
            best: BestBeacon::new(cfg.beacon_expiry, beacons::MAX_AHEAD_SECS, cfg.beacon_switch),
            payloads: crate::payload_choice::PayloadMap::new(),
            cfg,
            el_sockets: ElSockets::with_clients(ups.len()),
            ups,
            exchanges: Exchanges::default(),
            scratch: vec![0; SCRATCH],
            pool: BodyPool::shared(),
            holding: false,
            meter: Meter::default(),
            budget_reached: false,
            budget_paused: Vec::new(),
            stopping: false,
            drain: Duration::ZERO,
            stop_deadline: None,
            worker,
            reload_in_flight: false,
            reload_again: false,
            tls,
            cut: None,
            relay_unflushed: None,
            piped: None,
            pipe_supported: cfg!(target_os = "linux"),
        })
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.bn.local_addr(LISTENER)
    }

    /// Serves until `stopper` asks to stop, then delivers what is queued for up to
    /// `drain` and returns.
    pub fn run(&mut self, stopper: &dyn Stopper, drain: Duration) -> io::Result<()> {
        self.drain = drain;
        poll_loop::run(self, stopper)
    }

    /// Reads again the connections that waited for the memory budget, once it has cleared
    /// (answers went out, bodies were delivered). Checked after every pass while one waits,
    /// since a head that would notice it will not come from a connection that is not read.
    fn resume_budget_paused(&mut self) {
        if self.budget_paused.is_empty() {
            return;
        }
        if self.budget_reached {
            if !budget::admits(self.memory_held(), self.cfg.memory_budget_bytes) {
                return;
            }
            self.budget_reached = false;
            log::info!("memory budget: below --memory-budget-bytes again; reading new requests");
        }
        for (slot, serial) in std::mem::take(&mut self.budget_paused) {
            if let Some(down) = self.bn.get_mut(slot).filter(|d| d.serial == serial) {
                down.budget_refused = false;
                self.bn.revisit(slot);
            }
        }
    }

    /// Writes what connection `slot` has ready (the answers and requests paths call it once
    /// they queued something).
    fn down_flush(&mut self, slot: usize, now: Instant) {
        poll_loop::flush(self, slot, now);
    }

    fn up_token(up: usize, slot: usize) -> Token {
        Token(UP_BASE + up * MAX_CONNS + slot)
    }

    /// Pumps every client, after each pass: the wall clock (for the tokens' `iat`) is read
    /// once for all of them, not once per client.
    fn pump_all(&mut self, now: Instant) {
        let unix = unix_now();
        for up in 0..self.ups.len() {
            self.pump_at(up, now, unix);
        }
    }

    /// Hands queued jobs to connections and registers new connections.
    fn pump(&mut self, up: usize, now: Instant) {
        self.pump_at(up, now, unix_now());
    }

    /// `pump` with the wall clock (seconds since the epoch) read by the caller.
    fn pump_at(&mut self, up: usize, now: Instant, unix_now: u64) {
        let dispatch = self.ups[up].dispatch(now, unix_now);
        // A socket that cannot be registered (or a TLS session that cannot start) would never
        // see an event: that connection failed, like a refused connect (after the rest of
        // this pump).
        let mut unregistered = Vec::new();
        for slot in dispatch.opened {
            let token = Self::up_token(up, slot);
            let upstream = &mut self.ups[up];
            let Some(conn) = upstream.conns[slot].as_mut() else { continue };
            conn.use_pool(self.pool.clone());
            let addr = conn.addr;
            let tls = upstream.tls.as_ref().map(|s| (s, upstream.endpoint.server_name()));
            if let Err(e) = self.el_sockets.connect(self.poll.registry(), up, slot, addr, token, tls) {
                log::debug!("{}: cannot connect or register a connection: {e}", upstream.endpoint.name);
                unregistered.push((slot, e));
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
            self.connect_failed_because(up, slot, &format!("cannot connect: {e}"), now);
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
            // Over TLS the connection is made only once the handshake is done.
            match self.el_sockets.finish_connect(up, slot) {
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
        if self.ups[up].conns[slot].as_ref().is_some_and(|c| c.streaming) {
            self.cut_write(now);
        }
        let Some(conn) = self.ups[up].conns[slot].as_ref() else { return };
        if readable || conn.dead {
            self.up_read(up, slot, now);
        }
    }

    /// Reads what arrived for connection `slot` of client `up` and hands the plaintext to the
    /// connection, until the socket has no more, the connection has an outcome, or it is dead
    /// (bytes nobody asked for). A read error (or TLS error, or a missing socket) is a reset.
    fn up_read(&mut self, up: usize, slot: usize, now: Instant) {
        let outcome = self.up_read_all(up, slot, now);
        // What was relayed and not written yet goes out now, before anything else happens.
        if let Some((to, _)) = self.relay_unflushed.take() {
            self.down_flush(to, now);
        }
        if let Some(outcome) = outcome {
            self.on_outcome(up, outcome, now);
        }
    }

    /// `up_read`'s reading: None when the socket has no more for now.
    fn up_read_all(&mut self, up: usize, slot: usize, now: Instant) -> Option<Outcome> {
        let outcome = loop {
            if let Some(outcome) = self.pipe_read(up, slot, now) {
                if outcome.is_some() || self.piped.is_some() {
                    return outcome;
                }
                // The piping ended without an outcome (its beacon node went away): read on.
            }
            let conn = self.ups[up].conns[slot].as_mut()?;
            let read = self.el_sockets.read(up, slot, &mut self.scratch);
            // Whether the request is out is asked before an answer is taken: reading may
            // have sent the last TLS records.
            conn.transport_sent(0, self.el_sockets.holds_unsent(up, slot), now);
            match read {
                Ok(0) => break conn.on_eof(now),
                Ok(n) => match self.answer_bytes(up, slot, n, now) {
                    Outcome::Pending if self.ups[up].conns[slot].as_ref().is_some_and(|c| !c.dead) => {}
                    outcome => break outcome,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break conn.fail(Failure::Reset),
            }
        };
        Some(outcome)
    }

    /// Hands the `n` bytes just read into `scratch` to connection `slot` of client `up`. An
    /// answer that may be relayed as it arrives is offered at its head (`Outcome::Head`,
    /// `answers::offer_relay`), and the body of one being relayed goes on to its beacon node
    /// (`answers::relay_bytes`) instead of into the connection; its last byte answers the job.
    fn answer_bytes(&mut self, up: usize, slot: usize, n: usize, now: Instant) -> Outcome {
        let mut at = 0;
        loop {
            let Some(conn) = self.ups[up].conns[slot].as_mut() else { return Outcome::Pending };
            match conn.on_bytes(&self.scratch[at..n], now) {
                Outcome::Head { consumed } => {
                    at += consumed;
                    self.offer_relay(up, slot, now);
                }
                Outcome::Relayed { body, last } => {
                    self.relay_bytes(up, slot, at..at + body, now);
                    at += body;
                    if !last {
                        return Outcome::Pending;
                    }
                    let Some(conn) = self.ups[up].conns[slot].as_mut() else { return Outcome::Pending };
                    return conn.end_relay(at < n, now);
                }
                outcome => return outcome,
            }
        }
    }

    /// Bytes held in request bodies, queued answers and answers being read, for the
    /// process-wide budget (`core::budget`): the connections are summed when a head asks.
    fn memory_held(&self) -> usize {
        let downs: usize = self.bn.iter().map(Downstream::held_bytes).sum();
        let els: usize = self.ups.iter().flat_map(|u| u.conns.iter().flatten()).map(|c| c.held_bytes()).sum();
        self.meter.held() + downs + els
    }

    /// The earliest deadline beyond the beacon node connections' (`BnSide` has those).
    fn next_deadline(&self) -> Option<Instant> {
        let ups = self.ups.iter().filter_map(Upstream::next_deadline);
        ups.chain(self.exchanges.next_deadline())
            .chain(self.pool.borrow().deadline())
            .chain(if self.stopping { None } else { self.next_lookup() })
            .min()
    }

    fn on_timeouts(&mut self, now: Instant) {
        let freed = self.pool.borrow_mut().tick(now);
        if let Some(freed) = freed {
            log::debug!(
                "freed the spare body buffer ({freed} bytes) after {SPARE_KEEP:?} without large bodies"
            );
        }
        // The list of exchanges is only gathered (an allocation) when one is actually due.
        let due = self.exchanges.next_deadline().is_some_and(|d| d <= now);
        for r in if due { self.exchanges.refs() } else { Vec::new() } {
            if self.exchanges.get_mut(r).is_some_and(|e| e.on_timeout(now)) {
                self.decide(r, now);
            }
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

    /// Drops dead execution client connections after the event batch (`poll_loop` reaps the
    /// beacon node connections).
    fn reap(&mut self) {
        for (i, up) in self.ups.iter_mut().enumerate() {
            for (slot, conn) in up.conns.iter_mut().enumerate() {
                if conn.as_ref().is_some_and(|c| c.dead && c.job.is_none()) {
                    if let Some(c) = conn.take() {
                        self.el_sockets.close(self.poll.registry(), i, slot, c.abort);
                    }
                }
            }
        }
    }
}

impl Service for Proxy {
    fn poll(&mut self) -> &mut Poll {
        &mut self.poll
    }

    fn bn(&mut self) -> &mut BnSide {
        &mut self.bn
    }

    /// A stop request closes the beacon nodes' listener (`--metrics-addr` still answers) and
    /// ends the loop once nothing is queued or owed, or after `drain`.
    fn before_poll(&mut self, stopper: &dyn Stopper, now: Instant) -> bool {
        if self.stop_deadline.is_none() && stopper.stop_requested() {
            log::info!("stopping: no new connections; delivering what is queued (up to {:?})", self.drain);
            self.bn.stop_listening(LISTENER);
            self.stopping = true;
            self.stop_deadline = Some(now + self.drain);
        }
        if stopper.take_reload() && !self.stopping {
            self.request_reload();
        }
        if !self.stopping {
            self.ask_lookups(now);
        }
        if let Some(deadline) = self.stop_deadline {
            let queued: usize = self.ups.iter().map(Upstream::queued).sum();
            let owed = self.bn.iter().any(Downstream::owes_answers);
            if (queued == 0 && !owed) || now >= deadline {
                if queued > 0 {
                    log::warn!("stopping with {queued} calls undelivered");
                }
                return false;
            }
        }
        true
    }

    fn new_connection(&mut self, listener: Token, serial: u64, peer: SocketAddr, now: Instant) -> Downstream {
        let limits = Limits { max_head: MAX_HEAD, max_body: self.cfg.max_body_bytes };
        let mut down = Downstream::new(serial, peer, limits, now);
        // Tokens and the memory budget are checked at the head, before any body is buffered
        // (`on_head`).
        down.reader.hold_heads();
        down.reader.use_pool(self.pool.clone());
        down.metrics_only = listener == METRICS_LISTENER;
        down
    }

    fn on_bytes(&mut self, slot: usize, input: &[u8], now: Instant) {
        self.feed(slot, input, now);
    }

    fn on_body_read(&mut self, slot: usize, n: usize, now: Instant) {
        self.feed_in_place(slot, n, now);
    }

    /// Between requests, a connection refused for the memory budget waits for it to clear;
    /// `resume_budget_paused` revisits it then (an edge-triggered poll will not say again
    /// that bytes are waiting).
    fn may_read(&mut self, slot: usize) -> bool {
        let Some(down) = self.bn.get_mut(slot) else { return false };
        if !(self.budget_reached && down.waits_for_budget()) {
            return true;
        }
        if !self.budget_paused.iter().any(|&(s, _)| s == slot) {
            log::debug!("reading from {} waits for the memory budget", down.peer);
            self.budget_paused.push((slot, down.serial));
        }
        false
    }

    fn on_read(&mut self, n: usize) {
        self.metrics.bytes_in += n as u64;
    }

    fn on_flushed(&mut self, slot: usize, written: u64, now: Instant) {
        self.metrics.bytes_out += written;
        let drained = self.bn.get_mut(slot).is_some_and(|down| down.queued_bytes() == 0);
        if self.holding && written > 0 && drained {
            // A large answer may have gone out whole: the copies held for it may go.
            self.release_held(now);
        }
        self.pipe_flushed(slot, now);
    }

    fn on_other_event(&mut self, token: Token, readable: bool, writable: bool, now: Instant) {
        match token.0 {
            t if t == WORKER.0 => self.on_worker_done(now),
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

    fn other_deadline(&mut self) -> Option<Instant> {
        self.next_deadline()
    }

    fn on_other_timeouts(&mut self, now: Instant) {
        self.on_timeouts(now);
        self.pump_all(now);
    }

    fn on_expired(&mut self, expired: Expired) {
        self.metrics.connection_closed(expired);
    }

    /// The exchanges a closed connection waited for forget it.
    fn on_closed(&mut self, slot: usize, down: Downstream) {
        self.cut_end(slot);
        for r in down.waiting() {
            if let Some(e) = self.exchanges.get_mut(r) {
                e.reply = None;
            }
        }
    }

    fn after_pass(&mut self, now: Instant) {
        self.pipe_check(now);
        self.reap();
        self.resume_budget_paused();
    }
}
