//! The beacon node side of the event loop's work, once bytes are read: parsing them into
//! requests (`feed`), refusing or answering what needs no execution client (bad requests, 401
//! at the head, admin GETs), and turning each call into an exchange with
//! a job per execution client (`on_request`, `send`).
//!
//! It reads no socket: the bytes come from `event_loop`'s reads, and answers are queued on the
//! connection for `event_loop` to write. The decisions are asked of `core::intake`, `policy`
//! and `rpc`.

use std::rc::Rc;
use std::time::Instant;

use super::{unix_now, Proxy};
use crate::core::budget;
use crate::core::exchange::{Exchange, ExchangeRef, Inbound, Reply};
use crate::core::intake::{self, Route, METRICS_ONLY_404};
use crate::downstream::{Outgoing, Slot};
use crate::http::{self, HttpError, Refusal, Request, RequestEvent};
use crate::metrics::{RequestOutcome, Snapshot};
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

    /// The request could not be read: it is answered at once, and the connection lingers and
    /// closes (the client may still be sending the rest).
    pub(super) fn on_bad_request(&mut self, slot: usize, error: HttpError) {
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
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

    pub(super) fn on_request(&mut self, slot: usize, req: Request, now: Instant) {
        let Some(down) = self.downs.get_mut(slot).and_then(Option::as_mut) else { return };
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
        let charge = Some(self.meter.charge(req.body.capacity()));
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
            charge,
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
        let snapshot = Snapshot {
            open_connections: self.listener.open(),
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
