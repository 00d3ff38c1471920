//! The proxy's owner of `mio::Poll`: accepts beacon node connections, connects to execution
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
//! This file drives the I/O: the poll, the per-wakeup read caps and revisit list, reaping,
//! the clock, and which connection is asked what. The sockets themselves are the shell's
//! (`shell::Listener`, `shell::BnSockets`, `shell::ElSockets`): the connection state machines
//! own none and are lent one for a single read or write. What happens to the bytes read is in `requests` (beacon node side: requests
//! become exchanges) and `answers` (execution client side: outcomes become the beacon node's
//! answer); `live_config` applies lookups and reloads. The pure decisions are in `core`.
//!
//! It knows no HTTP syntax, JSON fields or JWT encoding: those are asked of `http`, `rpc`,
//! `policy` and `jwt`.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Poll, Token};

use crate::beacons::{self, BestBeacon};
use crate::config::{Config, Endpoint};
use crate::core::budget::{self, Meter};
use crate::core::exchange::{ExchangeRef, Exchanges};
use crate::downstream::{Downstream, Timeouts};
use crate::http::Limits;
use crate::metrics::Metrics;
use crate::pool::{BodyPool, SharedPool, SPARE_KEEP};
use crate::resolve::{SystemLookup, Worker};
use crate::shell::bn_sockets::{self, BnSockets, ReadStep};
use crate::shell::{ElSockets, Listener};
use crate::tls::{self, Handshake};
use crate::upstream::{ConnState, Failure, Upstream, MAX_CONNS};

mod answers;
mod cut;
mod live_config;
mod requests;

const LISTENER: Token = Token(0);
const METRICS_LISTENER: Token = Token(1);
/// The helper thread (name lookups, reloads) has finished something: see `resolve`.
const WORKER: Token = Token(2);
/// Upstream connection tokens: `UP_BASE + upstream * MAX_CONNS + slot`.
const UP_BASE: usize = 16;
/// Beacon node connection tokens: see `shell::bn_sockets`.
const DOWN_BASE: usize = bn_sockets::BASE;

/// Most connections open at once on `--metrics-addr`: a few scrapers and an operator's curl.
/// They are never counted against `--max-connections`, so `/metrics` answers exactly when
/// the beacon node side is saturated.
pub const METRICS_MAX_CONNECTIONS: usize = 8;
/// Largest request head read from a beacon node, and largest answer head from a client.
const MAX_HEAD: usize = 64 * 1024;
/// Reads per connection per wakeup before others get their turn.
const READS_PER_WAKEUP: usize = 16;
const SCRATCH: usize = 64 * 1024;

pub use crate::shell::Stopper;

pub struct Proxy {
    poll: Poll,
    /// The beacon nodes' listener (`--max-connections`)…
    listener: Listener,
    /// …and `--metrics-addr`'s, which serves only `/metrics` and `/status`, with its own cap
    /// (`METRICS_MAX_CONNECTIONS`).
    metrics_listener: Option<Listener>,
    metrics: Metrics,
    cfg: Config,
    downs: Vec<Option<Downstream>>,
    /// The sockets of `downs` (the connections own none).
    bn_sockets: BnSockets,
    free_downs: Vec<usize>,
    next_serial: u64,
    ups: Vec<Upstream>,
    /// The sockets of `ups`' connections (the connections own none).
    el_sockets: ElSockets,
    /// How many of `ups` are `--builders` (the rest are `--proxies` peers).
    builders: usize,
    exchanges: Exchanges,
    best: BestBeacon<ExchangeRef>,
    payloads: crate::payload_choice::PayloadMap,
    scratch: Vec<u8>,
    /// Downstream slots with more to read after their per-wakeup share.
    again: Vec<usize>,
    /// Set once a stop was requested: accepting never resumes.
    stopping: bool,
    /// One spare large-body buffer (see `pool`), freed after a while without large bodies.
    pool: SharedPool,
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
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Proxy {
    /// Binds the listener; nothing is accepted until `run`.
    pub fn bind(cfg: Config) -> io::Result<Proxy> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        let listener =
            Listener::bind(registry, cfg.listen, LISTENER, cfg.max_connections, "", log::Level::Warn)?;
        let metrics_listener = match cfg.metrics_addr {
            Some(addr) => Some(Listener::bind(
                registry,
                addr,
                METRICS_LISTENER,
                METRICS_MAX_CONNECTIONS,
                "metrics ",
                log::Level::Debug,
            )?),
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
            best: BestBeacon::new(cfg.beacon_expiry, beacons::MAX_AHEAD_SECS, cfg.beacon_switch),
            payloads: crate::payload_choice::PayloadMap::new(),
            cfg,
            downs: Vec::new(),
            bn_sockets: BnSockets::default(),
            free_downs: Vec::new(),
            next_serial: 0,
            el_sockets: ElSockets::with_clients(ups.len()),
            ups,
            exchanges: Exchanges::default(),
            scratch: vec![0; SCRATCH],
            pool: BodyPool::shared(),
            meter: Meter::default(),
            budget_reached: false,
            budget_paused: Vec::new(),
            again: Vec::new(),
            stopping: false,
            worker,
            reload_in_flight: false,
            reload_again: false,
            tls,
            cut: None,
        })
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
                self.listener.stop(self.poll.registry());
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
            // The clock is read once after each poll: everything in this pass sees the same now.
            self.on_timeouts(now);
            self.pump_all(now);
            self.reap(now);
            self.resume_budget_paused();
        }
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
            if let Some(down) =
                self.downs.get_mut(slot).and_then(Option::as_mut).filter(|d| d.serial == serial)
            {
                down.budget_refused = false;
                self.again.push(slot);
            }
        }
    }

    fn on_event(&mut self, token: Token, readable: bool, writable: bool, now: Instant) {
        match token.0 {
            0 => self.accept(now),
            1 => self.accept_metrics(now),
            2 => self.on_worker_done(now),
            t if t >= DOWN_BASE => {
                // A stale event (the connection it was for is gone) names no slot.
                let Some(slot) = self.bn_sockets.slot_of(token) else { return };
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

    fn accept(&mut self, now: Instant) {
        while let Some((stream, peer)) = self.listener.accept(now) {
            if self.adopt(stream, peer, false, now).is_some() {
                self.listener.opened();
            }
        }
    }

    /// Connections on `--metrics-addr`: few and short, with their own cap
    /// (`METRICS_MAX_CONNECTIONS`), never counted against `--max-connections`.
    fn accept_metrics(&mut self, now: Instant) {
        while let Some((stream, peer)) = self.metrics_listener.as_mut().and_then(|l| l.accept(now)) {
            if self.adopt(stream, peer, true, now).is_some() {
                if let Some(l) = self.metrics_listener.as_mut() {
                    l.opened();
                }
            }
        }
    }

    /// Accepts again on a listener whose pause ended or that fell below 90 % of its cap (an
    /// edge-triggered listener would not say again that connections are waiting).
    fn resume_listeners(&mut self, now: Instant) {
        if self.listener.resume(now) {
            self.accept(now);
        }
        if self.metrics_listener.as_mut().is_some_and(|l| l.resume(now)) {
            self.accept_metrics(now);
        }
    }

    /// Registers an accepted connection and gives it a slot.
    fn adopt(
        &mut self,
        stream: mio::net::TcpStream,
        peer: std::net::SocketAddr,
        metrics_only: bool,
        now: Instant,
    ) -> Option<usize> {
        let slot = self.free_downs.pop().unwrap_or_else(|| {
            self.downs.push(None);
            self.downs.len() - 1
        });
        self.next_serial += 1;
        if let Err(e) = self.bn_sockets.adopt(self.poll.registry(), slot, self.next_serial, stream) {
            log::warn!("cannot register a connection from {peer}: {e}");
            self.free_downs.push(slot);
            return None;
        }
        let limits = Limits { max_head: MAX_HEAD, max_body: self.cfg.max_body_bytes };
        let mut down = Downstream::new(self.next_serial, peer, limits, now);
        // Tokens and the memory budget are checked at the head, before any body is buffered
        // (`on_head`).
        down.reader.hold_heads();
        down.reader.use_pool(self.pool.clone());
        down.metrics_only = metrics_only;
        self.downs[slot] = Some(down);
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
            if self.budget_reached && down.waits_for_budget() {
                // Revisited by `resume_budget_paused` once the budget clears: an
                // edge-triggered poll will not say again that bytes are waiting.
                if !self.budget_paused.iter().any(|&(s, _)| s == slot) {
                    log::debug!("reading from {} waits for the memory budget", down.peer);
                    self.budget_paused.push((slot, down.serial));
                }
                return;
            }
            let n = match self.bn_sockets.read(slot, &mut self.scratch) {
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

    /// A connection in its lingering close: what the client still sends is read and dropped
    /// (within the per-wakeup cap) until it closes or a bound is reached.
    fn down_discard(&mut self, slot: usize) {
        for _ in 0..READS_PER_WAKEUP {
            let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
            if down.dead {
                return;
            }
            match self.bn_sockets.read(slot, &mut self.scratch) {
                ReadStep::Bytes(n) => {
                    self.metrics.bytes_in += n as u64;
                    down.discarded(n);
                    if down.dead {
                        log::debug!(
                            "closing connection from {}: sent more than its lingering close drops",
                            down.peer
                        );
                    }
                }
                ReadStep::End => {
                    down.on_eof();
                    return;
                }
                ReadStep::Blocked => return,
                ReadStep::Failed => {
                    down.dead = true;
                    return;
                }
            }
        }
        self.again.push(slot);
    }

    fn down_flush(&mut self, slot: usize, now: Instant) {
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
        let step = self.bn_sockets.flush(slot, down, now);
        self.metrics.bytes_out += step.moved;
        if step.revisit {
            self.again.push(slot);
        }
    }

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
            let Some(addr) = self.ups[up].conns[slot].as_ref().map(|c| c.addr) else { continue };
            if let Err(e) = self.el_sockets.connect(self.poll.registry(), up, slot, addr, token) {
                log::debug!("{name}: cannot connect or register a connection: {e}");
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
            match self.el_sockets.finish_connect(up, slot, conn) {
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
        let Some(conn) = self.ups[up].conns[slot].as_mut() else { return };
        if readable || conn.dead {
            let outcome = self.el_sockets.read(up, slot, conn, &mut self.scratch, now);
            self.on_outcome(up, outcome, now);
        }
    }

    /// Bytes held in request bodies, queued answers and answers being read, for the
    /// process-wide budget (`core::budget`): the connections are summed when a head asks.
    fn memory_held(&self) -> usize {
        let downs: usize = self.downs.iter().flatten().map(Downstream::held_bytes).sum();
        let els: usize = self.ups.iter().flat_map(|u| u.conns.iter().flatten()).map(|c| c.held_bytes()).sum();
        self.meter.held() + downs + els
    }

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
            .chain(self.listener.deadline())
            .chain(self.metrics_listener.as_ref().and_then(Listener::deadline))
            .chain(self.pool.borrow().deadline())
            .chain(if self.stopping { None } else { self.next_lookup() })
            .min()
    }

    fn on_timeouts(&mut self, now: Instant) {
        self.resume_listeners(now);
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

    /// Drops dead connections after the event batch, and resumes accepting below 90 % of a cap.
    fn reap(&mut self, now: Instant) {
        for slot in 0..self.downs.len() {
            if !self.downs[slot].as_ref().is_some_and(|d| d.dead) {
                continue;
            }
            self.cut_end(slot);
            if let Some(down) = self.downs[slot].take() {
                for r in down.waiting().collect::<Vec<_>>() {
                    if let Some(e) = self.exchanges.get_mut(r) {
                        e.reply = None;
                    }
                }
                self.bn_sockets.close(self.poll.registry(), slot);
                self.free_downs.push(slot);
                match self.metrics_listener.as_mut() {
                    Some(l) if down.metrics_only => l.closed(),
                    _ => self.listener.closed(),
                }
            }
        }
        for (i, up) in self.ups.iter_mut().enumerate() {
            for (slot, conn) in up.conns.iter_mut().enumerate() {
                if conn.as_ref().is_some_and(|c| c.dead && c.job.is_none()) {
                    if let Some(c) = conn.take() {
                        self.el_sockets.close(self.poll.registry(), i, slot, c.abort);
                    }
                }
            }
        }
        self.resume_listeners(now);
    }
}
