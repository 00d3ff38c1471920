//! The execution client side of the event loop's work, above the sockets: when a job's request
//! may be written (the primary-first hold), what a connection's outcome means for its
//! client and its exchange (answered, failed, retried, requeued), and when the beacon node's
//! answer is decided and delivered, or relayed to it as it arrives (`offer_relay`,
//! `relay_bytes`, `relay_broke`).
//!
//! It reads no socket and registers none: `event_loop` does the I/O and reports outcomes
//! here. The decisions are asked of `core::hold`, `core::compose`, `policy` and `upstream`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Proxy;
use crate::answer_policy::Status;
use crate::beacons::Confirmed;
use crate::core::exchange::{AnswerOut, Exchange, ExchangeRef, Pick, Relay, Reply};
use crate::core::{compose, hold, relay};
use crate::downstream::{Outgoing, StreamEnd};
use crate::http;
use crate::metrics::RequestOutcome;
use crate::payload_choice;
use crate::policy::Choice;
use crate::policy::{Class, Standing};
use crate::pool;
use crate::rpc;
use crate::upstream::{AfterFailure, Failure, Job, Outcome, Upstream, MAX_CONNS};

impl Proxy {
    pub(super) fn standing(&mut self, r: ExchangeRef, target: usize, standing: Standing, now: Instant) {
        let Some(e) = self.exchanges.get_mut(r) else { return };
        if let Some(next) = e.settle(target, standing, self.builders) {
            let inbound = e.inbound.clone();
            self.send(next, r, next, &inbound, now);
        }
        self.decide(r, now);
    }

    /// Answers the beacon node as soon as the answer is decided.
    pub(super) fn decide(&mut self, r: ExchangeRef, now: Instant) {
        let Some(e) = self.exchanges.get_mut(r) else { return };
        if let Some(choice) = e.decide(now) {
            if let (Some(Pick::Build { ids, given }), Choice::Relay(i)) = (e.pick.as_mut(), &choice) {
                // The beacon node gets EL i's payloadId: every EL's own id is remembered under it.
                *given = ids.get(*i).copied().flatten();
                if let Some(given) = *given {
                    for (el, id) in ids.iter().enumerate() {
                        if let Some(id) = *id {
                            self.payloads.remember(given, el, id, now);
                        }
                    }
                }
            }
            if let Some(report) = e.picked.take() {
                let ups = &self.ups;
                let name = |i: usize| ups.get(i).map_or("?", Upstream::name).to_string();
                let gain = report.gain.map_or(0.0, |g| g.as_eth_f64());
                self.metrics.payload_picked(report.el, gain);
                let over = match (report.gain, report.primary_value) {
                    (Some(gain), Some(_)) => format!(", +{gain} over the payload the beacon node's id named"),
                    (None, Some(_)) => String::new(),
                    _ => ", the only one in time with a value".to_string(),
                };
                log::info!("payload built by {}, value {}{over}", name(report.el), report.value);
            }
            // A relayed answer was (or is being) written as it came: nothing more to deliver.
            e.relay = None;
            let reply = e.reply.take();
            let ups = &self.ups;
            let name = |i: usize| ups.get(i).map_or("?", Upstream::name).to_string();
            let answer = compose::answer(e, &choice, &name, &mut self.metrics).recycled_by(&self.pool);
            let large = e.large_answer_from_primary();
            if let Some(reply) = reply {
                let out = self.deliver(reply, r, answer, now);
                if let (true, Some(out)) = (large, out) {
                    if let Some(e) = self.exchanges.get_mut(r) {
                        e.answer_out = Some(out);
                    }
                }
            }
        }
        if self.exchanges.get(r).is_some_and(Exchange::finished) {
            // No EL answered it: its timestamp, if it was a candidate, proves nothing.
            if self.exchanges.remove(r).is_some_and(|e| e.candidate) {
                self.best.forget(&r);
            }
        }
    }

    /// Queues `answer` for the beacon node and writes what it can; returns, while the answer
    /// is not written whole, where it went (see `AnswerOut`).
    pub(super) fn deliver(
        &mut self,
        reply: Reply,
        r: ExchangeRef,
        answer: Outgoing,
        now: Instant,
    ) -> Option<AnswerOut> {
        let down = self.bn.get_mut(reply.slot)?;
        if down.serial != reply.serial || down.dead || !down.fill(r, answer) {
            return None;
        }
        // Written whole once the connection has written everything queued now (at most the
        // part of an earlier answer already written more: then the hold ends by its bound).
        let out_by = down.sent + down.queued_bytes() as u64;
        let out = AnswerOut { slot: reply.slot, serial: reply.serial, out_by, since: now };
        self.down_flush(reply.slot, now);
        (!self.answer_written(&out)).then_some(out)
    }

    /// Whether the beacon node's answer `out` is written whole (or can no longer be).
    fn answer_written(&self, out: &AnswerOut) -> bool {
        self.bn
            .get(out.slot)
            .filter(|down| down.serial == out.serial && !down.dead)
            .map_or(true, |down| down.sent >= out.out_by)
    }

    /// Until when connection `slot` of client `up` should wait so that the primary gets its
    /// request first (see `core::hold`).
    pub(super) fn held_for_primary(&self, up: usize, slot: usize, now: Instant) -> Option<Instant> {
        if up == 0 {
            return None;
        }
        let job = self.ups[up].conns[slot].as_ref().and_then(|c| c.job.as_ref())?;
        let primary = self.ups[0]
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.dead && c.job.as_ref().is_some_and(|j| Rc::ptr_eq(&j.inbound, &job.inbound)))
            // A primary relaying its answer has answered: the hold is then the BN's answer's
            // (`answer_out`), however long the relay's bytes wait for the BN (a piped one
            // waits for it, so the connection's progress says nothing about the primary).
            .filter(|c| c.relay_left().is_none())
            .map(|c| c.last_progress);
        let e = job.exchange.and_then(|r| self.exchanges.get(r));
        let large_answer = e.is_some_and(Exchange::large_answer_from_primary);
        let answer_out_since = e
            .and_then(|e| e.answer_out.as_ref())
            .filter(|out| !self.answer_written(out))
            .map(|out| out.since);
        let call = hold::Call {
            received: job.inbound.received,
            body_len: job.inbound.body.len(),
            large_answer,
            answer_out_since,
            timeout: job.timeout,
        };
        hold::hold_until(&call, primary, now)
    }

    /// Writes what connection `slot` of client `up` has to send, unless it waits for the primary.
    pub(super) fn up_write(&mut self, up: usize, slot: usize, now: Instant) {
        if let Some(until) = self.held_for_primary(up, slot, now) {
            if let Some(conn) = self.ups[up].conns[slot].as_mut() {
                conn.hold_until = Some(until);
            }
            // Looked at again when a beacon node's answer has been written (`Service::on_flushed`).
            self.holding = true;
            return;
        }
        let Some(conn) = self.ups[up].conns[slot].as_mut() else { return };
        conn.hold_until = None;
        if conn.job.is_none() || conn.request_sent() {
            return;
        }
        let (head, body) = conn.to_write();
        match self.el_sockets.write(up, slot, head, body) {
            Ok(wrote) => {
                conn.wrote(wrote.taken, now);
                conn.transport_sent(wrote.sent, wrote.holds_more, now);
            }
            Err(_) => {
                let outcome = conn.fail(Failure::Reset);
                self.on_outcome(up, outcome, now);
            }
        }
    }

    /// The primary has answered (or failed), or a beacon node's answer has been written: the
    /// requests held back for it go out now (the others are held again).
    pub(super) fn release_held(&mut self, now: Instant) {
        self.holding = false;
        for up in 1..self.ups.len() {
            for slot in 0..MAX_CONNS {
                if self.ups[up].conns[slot].as_ref().is_some_and(|c| c.hold_until.is_some() && !c.dead) {
                    self.up_write(up, slot, now);
                }
            }
        }
    }

    pub(super) fn connect_failed(&mut self, up: usize, slot: usize, now: Instant) {
        self.connect_failed_because(up, slot, "cannot connect", now);
    }

    /// A connection could not be made (`why`, for the log: refused, or a TLS handshake that
    /// failed, as on a certificate the client's name or the trusted roots do not match).
    pub(super) fn connect_failed_because(&mut self, up: usize, slot: usize, why: &str, now: Instant) {
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
    pub(super) fn fail_queued(&mut self, up: usize, now: Instant) {
        if self.ups[up].is_peer {
            return;
        }
        for (r, target) in self.ups[up].queued_exchanges() {
            self.standing(r, target, Standing::Failed, now);
        }
    }

    pub(super) fn on_outcome(&mut self, up: usize, outcome: Outcome, now: Instant) {
        let ended = matches!(outcome, Outcome::Answered(..) | Outcome::Failed(..) | Outcome::Retry(_));
        match outcome {
            // A relay's steps are taken where the bytes are read (`event_loop::answer_bytes`).
            Outcome::Pending | Outcome::Head { .. } | Outcome::Relayed { .. } => {}
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

    pub(super) fn log_up(&mut self, up: usize) {
        log::info!("{} is up", self.ups[up].name());
        self.metrics.set_up(up, true);
    }

    /// A call failed on a connection of client `up`. An ordered call that timed out or lost
    /// its connection waits again at the front of the backlog; its beacon node is answered by
    /// the next client, as for any failure. A client that stops answering is reported once,
    /// like one that refuses connections, and what is queued for it is answered elsewhere.
    pub(super) fn after_failure(&mut self, up: usize, job: Job, failure: Failure, now: Instant) {
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

    pub(super) fn job_answered(&mut self, up: usize, job: Job, resp: http::Response, now: Instant) {
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
            self.note_valid_payload(up, job.inbound.payload);
        }
        self.note_http_status(up, &resp);
        let Some(r) = job.exchange else { return };
        let name = self.ups[up].name().to_string();
        let Some(e) = self.exchanges.get_mut(r) else { return };
        e.live_jobs = e.live_jobs.saturating_sub(1);
        let mine = status.clone();
        let mine_status = Status::of(status.as_deref());
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
        e.on_answer(mine_status, now);
        self.note_pick(r, job.target, &resp, now);
        let Some(e) = self.exchanges.get_mut(r) else { return };
        if std::mem::take(&mut e.candidate) {
            self.confirm_beacon(r, job.target, mine_status, now);
        }
        let Some(e) = self.exchanges.get_mut(r) else { return };
        match e.answers.get_mut(job.target).filter(|_| !e.decided) {
            Some(slot) => *slot = Some(resp),
            // Too late to matter: its buffer may serve the next large answer.
            None => pool::recycle(&self.pool, resp.body),
        }
        self.standing(r, job.target, Standing::Answered, now);
    }

    /// `--payload-choice best-value`: EL `target`'s own payloadId for a build, or its getPayload
    /// answer, noted on exchange `r`.
    fn note_pick(&mut self, r: ExchangeRef, target: usize, resp: &http::Response, now: Instant) {
        let Some(e) = self.exchanges.get_mut(r) else { return };
        match e.pick.as_mut() {
            Some(Pick::Build { ids, given }) => {
                let scan = rpc::scan_response(&resp.body).ok();
                let result = scan.and_then(|s| s.result).and_then(|range| resp.body.get(range));
                let id = result.and_then(payload_choice::payload_id_of_fcu_result);
                if let (Some(slot), Some(id)) = (ids.get_mut(target), id) {
                    *slot = Some(id);
                    if let Some(given) = *given {
                        self.payloads.remember(given, target, id, now);
                    }
                }
            }
            Some(Pick::Fetch { got, .. }) => {
                if let Some(slot) = got.get_mut(target) {
                    *slot = payload_choice::answer_of(&resp.body);
                }
            }
            None => {}
        }
    }

    /// The first EL answer to a call that may make its BN the best (`beacons::BestBeacon`):
    /// applied before the BN is answered, so that its next forkchoiceUpdated already finds it
    /// the best. A failed call is no answer: the next EL's answer decides, and an exchange that
    /// ends with none forgets its candidate (`decide`).
    pub(super) fn confirm_beacon(&mut self, r: ExchangeRef, target: usize, status: Status, now: Instant) {
        let el = self.ups.get(target).map_or("?", |u| u.name()).to_string();
        match self.best.confirm(&r, status, now) {
            Confirmed::Switched(switch) => {
                self.metrics.best_switched();
                match switch.from {
                    None => log::info!("following beacon node {} ({el} confirmed it)", switch.to),
                    Some(from) => log::info!(
                        "switching beacon node {from} -> {} (timestamp {}): {el} answered {}",
                        switch.to,
                        switch.timestamp,
                        status.label()
                    ),
                }
            }
            Confirmed::Refused { beacon, timestamp, status } => {
                self.metrics.candidate_refused();
                log::info!(
                    "beacon node {beacon} stays behind: {el} answered {} to its payload with timestamp \
                     {timestamp}",
                    status.label()
                );
            }
            Confirmed::Advanced { .. } | Confirmed::Stale | Confirmed::Unknown => {}
        }
    }

    /// Execution client `up` called a payload VALID: it moves its head in the sync view (the
    /// block as the request's one scan read it: an 8 MiB body is not scanned again for each
    /// client's answer), and falling behind or catching up is said once.
    pub(super) fn note_valid_payload(&mut self, up: usize, payload: Option<rpc::PayloadHead>) {
        if !self.metrics.sync.tracks(up) {
            return;
        }
        let Some(head) = payload else { return };
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
    pub(super) fn note_http_status(&mut self, up: usize, resp: &http::Response) {
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

    pub(super) fn job_failed(&mut self, up: usize, job: Job, failure: Failure, now: Instant) {
        self.relay_broke(up, &job, now);
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
}

/// Relaying an execution client's answer to the beacon node as it arrives (`core::relay`).
impl Proxy {
    /// The head of an answer that may be relayed was read on connection `slot` of client `up`:
    /// when `core::relay` says so, the beacon node's waiting slot becomes a streaming one, with
    /// the proxy's own head and the buffer reserved for the answer's body, and the exchange's
    /// `reply` is taken so that the answer is never delivered twice. Otherwise the answer is
    /// read whole as usual.
    pub(super) fn offer_relay(&mut self, up: usize, slot: usize, now: Instant) {
        let Some(conn) = self.ups[up].conns[slot].as_mut() else { return };
        let Some((r, el)) = conn.job.as_ref().and_then(|j| j.exchange.map(|r| (r, j.target))) else { return };
        let Some(e) = self.exchanges.get(r) else { return };
        let Some((head, len)) = conn.offered_head() else { return };
        let Some(reply) = e.reply.filter(|_| relay::relays(e, el, head, len)) else { return };
        let Some(down) = self.bn.get_mut(reply.slot).filter(|d| d.serial == reply.serial && !d.dead) else {
            return;
        };
        if !down.waiting().any(|w| w == r) {
            return;
        }
        let Some((head, body, len)) = conn.start_relay() else { return };
        let (keep_alive, minor) = (e.inbound.head.keep_alive, e.inbound.head.minor);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let ct = head.header("content-type");
        let out = Outgoing::streaming(head.status, ct, body, len, keep_alive, minor).recycled_by(&self.pool);
        down.stream(r, out, len);
        // Written whole once the connection has written everything queued now, the whole
        // relayed answer included (`queued_bytes` counts it at its length).
        let out_by = down.sent + down.queued_bytes() as u64;
        let Some(e) = self.exchanges.get_mut(r) else { return };
        e.reply = None;
        e.relay = Some(Relay { to: reply, el });
        e.answer_out = Some(AnswerOut { slot: reply.slot, serial: reply.serial, out_by, since: now });
        log::debug!("{}: relaying its answer ({len} bytes) as it arrives", self.ups[up].name());
        self.down_flush(reply.slot, now);
    }

    /// `range` of `scratch` is body of the answer relayed from connection `slot` of client `up`:
    /// appended to the beacon node's streaming answer, written once `RELAY_WRITE` bytes have
    /// gathered (`up_read` writes the rest when the socket has no more for now). Bytes whose beacon
    /// node has gone are dropped (the connection reads on to the answer's end, keeping its
    /// framing).
    pub(super) fn relay_bytes(
        &mut self,
        up: usize,
        slot: usize,
        range: std::ops::Range<usize>,
        now: Instant,
    ) {
        let to = self.ups[up].conns[slot]
            .as_ref()
            .and_then(|c| c.job.as_ref())
            .and_then(|j| j.exchange.map(|r| (r, j.target)))
            .and_then(|(r, el)| Some((r, self.exchanges.get(r)?.relay.filter(|relay| relay.el == el)?.to)));
        let Some((r, to)) = to else { return };
        let Some(down) = self.bn.get_mut(to.slot).filter(|d| d.serial == to.serial && !d.dead) else {
            return;
        };
        let bytes = self.scratch.get(range).unwrap_or_default();
        let appended = bytes.len();
        if !down.stream_append(r, bytes) {
            return;
        }
        let gathered = match self.relay_unflushed {
            Some((slot, n)) if slot == to.slot => n + appended,
            Some((other, _)) => {
                self.down_flush(other, now);
                appended
            }
            None => appended,
        };
        self.relay_unflushed = Some((to.slot, gathered));
        if gathered >= super::RELAY_WRITE {
            self.relay_unflushed = None;
            self.down_flush(to.slot, now);
        }
    }

    /// Client `up` failed `job` while relaying its answer: while no byte of it reached the
    /// beacon node, its slot waits again and the exchange goes on as if nothing had been
    /// relayed (falling back to the next client, as today). Otherwise the beacon node gets what
    /// was written and its connection closes (its answer is shorter than its `Content-Length`
    /// said): counted, logged at warn, and the exchange is decided (nobody else answers it).
    fn relay_broke(&mut self, up: usize, job: &Job, now: Instant) {
        let Some(r) = job.exchange else { return };
        let Some(e) = self.exchanges.get_mut(r) else { return };
        let Some(relay) = e.relay.filter(|relay| relay.el == job.target) else { return };
        e.relay = None;
        let end = self
            .bn
            .get_mut(relay.to.slot)
            .filter(|d| d.serial == relay.to.serial && !d.dead)
            .map_or(StreamEnd::Gone, |d| d.stream_failed(r));
        let Some(e) = self.exchanges.get_mut(r) else { return };
        match end {
            StreamEnd::Waiting => {
                e.reply = Some(relay.to);
                e.answer_out = None;
                log::debug!(
                    "{}: failed before any of its relayed answer was written; the call goes on as usual",
                    self.ups[up].name()
                );
            }
            StreamEnd::Truncated => {
                e.decided = true;
                let class = e.inbound.class;
                let method = e.inbound.method.clone();
                self.metrics.relay_cut();
                self.metrics.request(class, RequestOutcome::Failed);
                log::warn!(
                    "{}: its answer to {} broke off while being relayed; the beacon node's connection \
                     closes after the part written",
                    self.ups[up].name(),
                    method.as_deref().unwrap_or("call")
                );
                self.down_flush(relay.to.slot, now);
            }
            // Its beacon node has gone: nobody is owed an answer any more.
            StreamEnd::Gone => e.decided = true,
        }
    }
}
