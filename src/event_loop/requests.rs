//! The beacon node side of the event loop's work, once bytes are read: parsing them into
//! requests (`feed`), refusing or answering what needs no execution client (bad requests, 401
//! at the head, admin GETs), and turning each call into an exchange with
//! a job per execution client (`on_request`, `send`). A large newPayload body is handed to
//! `cut` as it arrives, so that it can stream to the primary.
//!
//! It reads no socket: the bytes come from `event_loop`'s reads, and answers are queued on the
//! connection for `event_loop` to write. The decisions are asked of `core::intake`, `policy`
//! and `rpc`.

use std::rc::Rc;
use std::time::Instant;

use super::{unix_now, Proxy, LISTENER};
use crate::answer_policy::Clock;
use crate::beacons::{self, Batch, Candidate};
use crate::core::budget;
use crate::core::exchange::{Exchange, ExchangeRef, Gather, Inbound, Pick, Reply};
use crate::core::intake::{self, Route, METRICS_ONLY_404};
use crate::downstream::{Outgoing, Slot};
use crate::http::{self, HttpError, Refusal, Request, RequestEvent};
use crate::metrics::{RequestOutcome, Snapshot};
use crate::payload_choice::{self, Got, PayloadChoice, PayloadId};
use crate::policy::{self, Class, Standing};
use crate::probes;
use crate::rpc;
use crate::upstream::{Failure, Job};

/// A full backlog is reported at most this often.
const DROP_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Proxy {
    /// Parses `input`, read from connection `slot`, into requests and handles them, until the
    /// connection's pipeline is full: the rest then waits in the connection, unparsed, until
    /// answers have gone out (real backpressure, even within one read).
    pub(super) fn feed(&mut self, slot: usize, input: &[u8], now: Instant) {
        let mut pos = 0;
        while pos < input.len() {
            let Some(down) = self.bn.get_mut(slot) else { return };
            if down.no_more_requests {
                break;
            }
            if down.backpressured() {
                down.stash(&input[pos..]);
                break;
            }
            let step = down.reader.advance(&input[pos..]);
            pos += step.consumed;
            if step.event.is_none() && step.consumed == 0 {
                break;
            }
            self.on_step(slot, step.event, now);
        }
        if let Some(down) = self.bn.get_mut(slot) {
            down.after_read(now);
        }
    }

    /// `n` bytes were read straight into the body connection `slot` reads in place
    /// (`http::RequestReader::room`): handled as `feed` handles bytes that were copied there.
    pub(super) fn feed_in_place(&mut self, slot: usize, n: usize, now: Instant) {
        let Some(down) = self.bn.get_mut(slot) else { return };
        let step = down.reader.filled(n);
        self.on_step(slot, step.event, now);
        if let Some(down) = self.bn.get_mut(slot) {
            down.after_read(now);
        }
    }

    /// What one step of reading connection `slot`'s requests said: a head to decide on, a
    /// `100 Continue` owed, a whole request, a bad one, or (None) more of a body.
    fn on_step(&mut self, slot: usize, event: Option<Result<RequestEvent, HttpError>>, now: Instant) {
        match event {
            Some(Ok(RequestEvent::Head)) => self.on_head(slot),
            Some(Ok(RequestEvent::Continue)) => {
                if let Some(down) = self.bn.get_mut(slot) {
                    down.push(Slot::Ready(Outgoing::continue_100()));
                }
            }
            Some(Ok(RequestEvent::Request(req))) => self.on_request(slot, req, now),
            Some(Err(e)) => self.on_bad_request(slot, e),
            None => {
                if self.cut.is_some() {
                    self.cut_progress(slot, now);
                }
            }
        }
    }

    /// The request could not be read: it is answered at once, and the connection lingers and
    /// closes (the client may still be sending the rest).
    pub(super) fn on_bad_request(&mut self, slot: usize, error: HttpError) {
        self.cut_end(slot);
        let Some(down) = self.bn.get_mut(slot) else { return };
        log::debug!("bad request from {}: {error}", down.peer);
        self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
        let body = policy::error_body(None, -32600, &error.to_string());
        down.answer_early(error.status(), body, 1);
    }

    /// A request's head has been read and its body not yet: with `--jwt-secret`, a POST
    /// without a valid token is answered 401 now, with no `100 Continue` and nothing of its body
    /// kept; while the memory budget is reached, any request is answered 503 the same way (see
    /// `core::budget`). A short refused body is then dropped as it arrives and the connection
    /// kept, anything else ends the connection with a lingering close. Other requests go on to
    /// their body.
    pub(super) fn on_head(&mut self, slot: usize) {
        let held = self.memory_held();
        let admitted = budget::admits(held, self.cfg.memory_budget_bytes);
        if admitted == self.budget_reached {
            self.budget_reached = !admitted;
            if admitted {
                log::info!("memory budget: below --memory-budget-bytes again; reading new requests");
            } else {
                log::warn!(
                    "memory budget reached ({held} bytes held, --memory-budget-bytes {}): new requests get 503 \
                     until answers have gone out",
                    self.cfg.memory_budget_bytes
                );
            }
        }
        // Room reserved ahead of its bytes, process-wide, within the budget (see `http`).
        let ahead: usize = self.bn.iter().map(|d| d.reader.reserved_ahead()).sum();
        let reserve =
            http::RESERVE_AHEAD.saturating_sub(ahead).min(self.cfg.memory_budget_bytes.saturating_sub(held));
        let keys = self.cfg.beacon_keys();
        let Some(down) = self.bn.get_mut(slot) else { return };
        let Some(head) = down.reader.held_head() else { return };
        let verdict = match keys.required() && head.method == "POST" && !down.metrics_only {
            true => intake::authenticate(head, down.peer.ip(), &keys, unix_now()).map(drop),
            false => Ok(()),
        };
        let Err(why) = verdict else {
            if !admitted {
                let (keep_alive, minor) = (head.keep_alive, head.minor);
                log::debug!("refused a request from {}: memory budget reached", down.peer);
                down.budget_refused = true;
                self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
                match down.reader.refuse_body() {
                    Refusal::Discard => down.push(Slot::Ready(budget::busy_answer(keep_alive, minor))),
                    Refusal::Close => down.close_after(budget::busy_answer(false, minor)),
                }
                return;
            }
            if down.reader.accept_body(reserve) {
                down.push(Slot::Ready(Outgoing::continue_100()));
            }
            self.cut_begin(slot);
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

    /// A request was read whole. One whose body streamed to the primary as it arrived
    /// (`cut`) takes its scan from there, and its primary copy goes on that connection; when
    /// the request goes anywhere else (refused, not JSON, answered here), the streamed part is
    /// aborted, so the primary never gets it whole.
    pub(super) fn on_request(&mut self, slot: usize, req: Request, now: Instant) {
        let cut = self.cut_take(slot);
        let streamed = cut.as_ref().and_then(|c| c.conn);
        let attached = self.call(slot, req, cut, streamed, now);
        if let (Some(conn), false, Some(primary)) = (streamed, attached, self.ups.first_mut()) {
            primary.abort_stream(conn);
        }
    }

    /// Handles a request read whole; true when its primary copy went on connection `streamed`.
    fn call(
        &mut self,
        slot: usize,
        req: Request,
        cut: Option<crate::core::cut::Cut>,
        streamed: Option<usize>,
        now: Instant,
    ) -> bool {
        let Some(down) = self.bn.get_mut(slot) else { return false };
        let keep_alive = req.head.keep_alive;
        let minor = req.head.minor;
        if !keep_alive {
            down.no_more_requests = true;
        }
        let answer =
            |status: u16, body: Vec<u8>| Slot::Ready(Outgoing::json(status, body, keep_alive, minor));
        let metrics_only = down.metrics_only;
        match intake::route(&req.head.method, metrics_only) {
            Route::Admin => {
                let answer = self.get_answer(&req.head, metrics_only, now);
                if let Some(down) = self.bn.get_mut(slot) {
                    down.push(Slot::Ready(answer));
                }
                return false;
            }
            Route::NotHere => {
                let body = METRICS_ONLY_404.to_vec();
                down.push(Slot::Ready(Outgoing::answer(404, Some(b"text/plain"), body, keep_alive, minor)));
                return false;
            }
            Route::Call => {}
            Route::NotAllowed => {
                let body = policy::error_body(None, -32600, "only POST carries JSON-RPC");
                down.push(answer(405, body));
                return false;
            }
        }
        // A request with a body had its token checked at the head (`on_head`); this check is
        // the one for bodiless requests, and stays as the last word for all of them. It also
        // names the sender (`beacons`).
        let identity =
            match intake::authenticate(&req.head, down.peer.ip(), &self.cfg.beacon_keys(), unix_now()) {
                Ok(auth) => auth.identity,
                Err(why) => {
                    log::warn!("rejected a request from {}: {why}", down.peer);
                    self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
                    down.push(answer(401, policy::error_body(None, -32000, &format!("unauthorized: {why}"))));
                    return false;
                }
            };
        let scanned = match cut {
            Some(cut) if !cut.failed => cut.finish(&req.body),
            _ => rpc::scan_request(&req.body),
        };
        let scan = match scanned {
            Ok(scan) => scan,
            Err(e) => {
                log::debug!("invalid JSON from {}: {e}", down.peer);
                self.metrics.request(Class::NonEngine, RequestOutcome::Rejected);
                down.push(answer(400, policy::error_body(None, -32700, &format!("parse error: {e}"))));
                return false;
            }
        };
        let class = if scan.shape == rpc::Shape::Object {
            Class::of(scan.method.as_deref())
        } else {
            Class::NonEngine
        };
        // An Engine API call inside a batch would escape the best-BN filter, the ordering and
        // the fan-out: such a batch is refused whole (see `beacons::check_batch`).
        if scan.shape == rpc::Shape::Array {
            if let Batch::Refuse(body) = beacons::check_batch(&req.body) {
                log::warn!("refused a batch with engine_* calls from beacon node {identity}");
                self.metrics.request(Class::NonEngine, RequestOutcome::Refused);
                down.push(answer(200, body));
                return false;
            }
        }
        let id = scan.id.as_ref().and_then(|r| req.body.get(r.clone())).map(<[u8]>::to_vec);
        let client = down.peer.ip().to_string();
        let beacon = identity.name.as_str();
        let key = self.exchanges.next_ref();
        let verdict = self.best.observe(key, beacon, class, scan.timestamp, now, unix_now());
        let mut plausible = scan.timestamp;
        if let Candidate::Implausible { timestamp, limit } = verdict.candidate {
            plausible = None;
            self.metrics.implausible_timestamp();
            log::warn!(
                "beacon node {identity} ({}) sent {} with timestamp {timestamp}, more than {} s ahead of \
                 the clock (limit {limit}): it does not count for the best beacon node (is a clock wrong?)",
                identity.source.label(),
                class.label(),
                beacons::MAX_AHEAD_SECS
            );
        }
        self.metrics.beacon_seen(beacon, identity.source.label(), plausible, now);
        if let (Class::NewPayload, Some(ts)) = (class, plausible) {
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
            return false;
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
        let charge = Some(self.meter.charge(req.body.capacity()));
        let inbound = Rc::new(Inbound {
            head: req.head,
            body: req.body,
            client,
            method: scan.method,
            payload: scan.payload,
            class,
            id,
            timeout,
            received: now,
            pool: Some(self.pool.clone()),
            charge,
        });
        let reply = (!mirror).then_some(Reply { slot, serial });
        let mut exchange = Exchange::new(inbound.clone(), reply, self.builders, now);
        exchange.candidate = verdict.candidate == Candidate::Pending;
        if self.cfg.answer_policy.gathers(class) && !mirror {
            exchange.gather = Some(Gather { wait: self.cfg.answer_wait, clock: Clock::default() });
        }
        let best_value = self.cfg.payload_choice == PayloadChoice::BestValue && !mirror;
        if best_value && class == Class::ForkchoiceUpdated && scan.timestamp.is_some() {
            exchange.pick = Some(Pick::Build { ids: vec![None; self.builders], given: None });
        }
        let fetch =
            if best_value && class == Class::GetPayload { self.fetch_targets(&inbound, now) } else { None };
        if let Some((targets, holder)) = &fetch {
            let got = targets.iter().map(|t| if t.is_some() { Got::Pending } else { Got::Failed }).collect();
            exchange.pick = Some(Pick::Fetch { got, holder: *holder, sent_at: now });
            for (standing, target) in exchange.standings.iter_mut().zip(targets) {
                if target.is_none() {
                    *standing = Standing::Failed;
                }
            }
        }
        let r = self.exchanges.insert(exchange);
        debug_assert_eq!(r, key, "the best-BN candidate is keyed by this exchange");
        if let (Some(down), false) = (self.bn.get_mut(slot), mirror) {
            down.push(Slot::Waiting(r));
        }
        if class.is_ordered() {
            self.cut_yield(slot);
        }
        let mut attached = false;
        if class.is_fanned_out() {
            if let Some((targets, holder)) = fetch {
                // Every EL with a build of its own is asked at once, with its own id.
                for (el, id) in targets.iter().enumerate() {
                    let Some(id) = *id else { continue };
                    match payload_choice::rewrite_get_payload(&inbound.body, id).filter(|_| el != holder) {
                        Some(body) => {
                            let own = Rc::new(Inbound {
                                head: inbound.head.clone(),
                                body,
                                client: inbound.client.clone(),
                                method: inbound.method.clone(),
                                payload: None,
                                class,
                                id: inbound.id.clone(),
                                timeout,
                                received: now,
                                pool: None,
                                charge: None,
                            });
                            self.send(el, r, el, &own, now);
                        }
                        None => self.send(el, r, el, &inbound, now),
                    }
                }
            } else {
                for target in 0..self.builders {
                    if let (0, Some(conn)) = (target, streamed) {
                        if self.cut_attach(conn, r, &inbound, now) {
                            attached = true;
                            continue;
                        }
                    }
                    self.send(target, r, target, &inbound, now);
                }
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
        attached
    }

    /// `--payload-choice best-value`: which ELs to ask for a getPayload, each with its own id,
    /// and the one whose id the beacon node holds; None when only that one (or none) has a
    /// build for it, and the call is routed as under `primary`.
    fn fetch_targets(&mut self, inbound: &Inbound, now: Instant) -> Option<(Vec<Option<PayloadId>>, usize)> {
        let given = payload_choice::payload_id_of_request(&inbound.body)?;
        let targets = self.payloads.targets(given, self.builders, now);
        let holder = targets.iter().position(|t| *t == Some(given))?;
        (targets.iter().flatten().count() > 1).then_some((targets, holder))
    }

    /// Answers a GET or HEAD: `/metrics`, `/status`, `/healthz`, `/readyz`, or (any other path)
    /// the health probe the Go proxy answers with an empty 200. A HEAD gets the same head
    /// (its `Content-Length` that of the GET's body, as RFC 9110 allows) and no body.
    pub(super) fn get_answer(
        &mut self,
        head: &http::RequestHead,
        metrics_only: bool,
        now: Instant,
    ) -> Outgoing {
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
    pub(super) fn admin_answer(&mut self, path: &str, now: Instant) -> (u16, &'static [u8], Vec<u8>) {
        const JSON: &[u8] = b"application/json";
        self.metrics.candidates_dropped = self.best.dropped();
        self.metrics.payload_mappings_dropped = self.payloads.dropped();
        let snapshot = Snapshot {
            open_connections: self.bn.open(LISTENER),
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
    pub(super) fn send(
        &mut self,
        up: usize,
        r: ExchangeRef,
        target: usize,
        inbound: &Rc<Inbound>,
        now: Instant,
    ) {
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

    pub(super) fn enqueue(&mut self, up: usize, job: Job, now: Instant) {
        let dropped = self.ups[up].enqueue(job);
        self.dropped(up, dropped, now);
        self.pump(up, now);
    }

    /// Puts a job back at the front of its client's queue (after a failed connect, or for its
    /// one retry); what no longer fits the backlog is dropped as usual.
    pub(super) fn requeue(&mut self, up: usize, job: Job, now: Instant) {
        let dropped = self.ups[up].requeue_front(job);
        self.dropped(up, dropped, now);
    }

    /// Calls dropped from a full backlog fail for their beacon nodes; the operator hears of it
    /// at once and then at most once a minute, with the count, however long the outage.
    pub(super) fn dropped(&mut self, up: usize, dropped: Vec<Job>, now: Instant) {
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
}
