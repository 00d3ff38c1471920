//! One request's life after it was read whole: the shared body, which execution clients owe
//! an answer, which answer the beacon node gets, and what the clients said (for comparing).
//!
//! Exchanges live in a slab addressed by `ExchangeRef` (index + generation), so a job or a
//! connection holding a stale reference finds nothing instead of a stranger's exchange.
//! This file knows no sockets.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::answer_policy::{self, Clock, Decision, Outcome, Status};
use crate::core::budget::Charge;
use crate::http::{RequestHead, Response};
use crate::payload_choice::{self, Got, PayloadId, Report};
use crate::policy::{self, Choice, Class, Combine, Standing};
use crate::pool::{self, SharedPool};
use crate::rpc::PayloadHead;

/// A request read whole from a beacon node, shared (never copied) by every upstream write.
#[derive(Debug)]
pub struct Inbound {
    pub head: RequestHead,
    pub body: Vec<u8>,
    /// The beacon node's address, appended to `X-Forwarded-For`.
    pub client: String,
    pub method: Option<String>,
    /// A newPayload's block (number, hash, timestamp), read by the request's one scan.
    pub payload: Option<PayloadHead>,
    pub class: Class,
    /// The raw JSON text of the request's id.
    pub id: Option<Vec<u8>>,
    pub timeout: Duration,
    pub received: Instant,
    /// Where the body's buffer goes when the last reference to the request is gone.
    pub pool: Option<SharedPool>,
    /// The body's bytes in the process-wide memory budget, given back with the request.
    pub charge: Option<Charge>,
}

#[cfg(test)]
impl Inbound {
    /// A `POST /` call of `class` named `method`, with no body and no id, received at `now`:
    /// the tests set the fields they care about.
    pub fn for_test(class: Class, method: Option<&str>, now: Instant) -> Inbound {
        let head = RequestHead {
            method: "POST".into(),
            path: "/".into(),
            minor: 1,
            headers: Vec::new(),
            keep_alive: true,
            expect_continue: false,
        };
        Inbound {
            head,
            body: Vec::new(),
            client: "127.0.0.1".into(),
            method: method.map(String::from),
            payload: None,
            class,
            id: None,
            timeout: Duration::from_secs(8),
            received: now,
            pool: None,
            charge: None,
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool::recycle(&pool, std::mem::take(&mut self.body));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeRef {
    index: u32,
    generation: u32,
}

/// Where the beacon node's answer goes: a connection slot and the connection's serial number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub slot: usize,
    pub serial: u64,
}

#[derive(Debug)]
pub struct Exchange {
    pub inbound: Rc<Inbound>,
    /// None once answered, in mirror mode, or when the beacon node left.
    pub reply: Option<Reply>,
    pub combine: Combine,
    /// Per execution client (builders only), in `--builders` order.
    pub standings: Vec<Standing>,
    pub answers: Vec<Option<Response>>,
    pub statuses: Vec<Option<String>>,
    pub decided: bool,
    pub deadline: Instant,
    /// Jobs still queued or in flight for this exchange; it is freed when none remain.
    pub live_jobs: usize,
    /// Whether a status disagreement was already reported.
    pub warned: bool,
    /// Whether the best-BN rule awaits this exchange's first EL answer (`BestBeacon::confirm`).
    pub candidate: bool,
    /// Set under `--answer-policy safe` for the calls it gathers (`answer_policy`).
    pub gather: Option<Gather>,
    /// Set under `--payload-choice best-value` (`payload_choice`).
    pub pick: Option<Pick>,
    /// The payload chosen for the beacon node, once decided (for the log and the metric).
    pub picked: Option<Report>,
    /// When to decide again although no deadline passed (the end of getPayload's wait for
    /// better payloads); nothing counts as failed then.
    pub wake: Option<Instant>,
    /// The beacon node's answer to a large-answer call, queued and not yet written whole (see
    /// `core::hold`): the other clients' copies wait for it.
    pub answer_out: Option<AnswerOut>,
    /// The answer is being relayed to the beacon node as it arrives (`core::relay`): its
    /// `reply` was taken when the relay started, so the answer is never delivered twice.
    pub relay: Option<Relay>,
}

/// An answer relayed as it arrives: from client `el` (its index among the exchange's
/// clients) to the beacon node connection `to`. Until the body is whole, the call's deadline
/// is the client connection's own (the same timeout, from when the request went out): it
/// fails the relay, and the beacon node's connection is closed after what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    pub to: Reply,
    pub el: usize,
}

/// Where the beacon node's answer went: its connection (slot and serial, as in `Reply`), the
/// count of bytes written to that connection by which it is written whole, and when it was
/// queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerOut {
    pub slot: usize,
    pub serial: u64,
    pub out_by: u64,
    pub since: Instant,
}

/// `--payload-choice best-value`'s state of one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// A forkchoiceUpdated with payload attributes: each EL's own payloadId (in list order) and,
    /// once decided, the one the beacon node was given.
    Build { ids: Vec<Option<PayloadId>>, given: Option<PayloadId> },
    /// A getPayload asked of several ELs, each with its own id: what each answered, the EL
    /// whose id the beacon node holds, and when the calls went out.
    Fetch { got: Vec<Got>, holder: usize, sent_at: Instant },
}

/// How an exchange under `--answer-policy safe` gathers its answers.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    /// `--answer-wait`.
    pub wait: Duration,
    pub clock: Clock,
}

impl Exchange {
    pub fn new(inbound: Rc<Inbound>, reply: Option<Reply>, clients: usize, now: Instant) -> Self {
        let class = inbound.class;
        let deadline = now + inbound.timeout;
        Exchange {
            inbound,
            reply,
            combine: Combine::for_class(class),
            standings: vec![Standing::Pending; clients],
            answers: (0..clients).map(|_| None).collect(),
            statuses: vec![None; clients],
            decided: false,
            deadline,
            live_jobs: 0,
            warned: false,
            candidate: false,
            gather: None,
            pick: None,
            picked: None,
            wake: None,
            answer_out: None,
            relay: None,
        }
    }

    /// Records that client `target` answered or failed; only its first word counts, so a call
    /// reported failed twice (found down, then its job failed) moves on once. Returns the
    /// client a non-engine call falls back to (the next in list order) when this was its first
    /// failure there and a next client exists among the `builders` listed now (after a reload
    /// an exchange may know fewer clients than the list has).
    pub fn settle(&mut self, target: usize, standing: Standing, builders: usize) -> Option<usize> {
        let s = self.standings.get_mut(target)?;
        if *s != Standing::Pending {
            return None;
        }
        *s = standing;
        let falls_back = standing == Standing::Failed && !self.inbound.class.is_fanned_out() && !self.decided;
        let next = target + 1;
        (falls_back && next < builders && next < self.standings.len()).then_some(next)
    }

    /// The choice of the beacon node's answer, once the standings allow it; the exchange is
    /// decided from then on (None ever after).
    ///
    /// Under `--answer-policy safe` the answers are gathered first (`answer_policy::decide`),
    /// and under `--payload-choice best-value` a getPayload asked of several clients waits for
    /// better payloads (`payload_choice::choose`); while either says to wait, `wake` holds the
    /// end of the wait, when `on_timeout` lets the next `decide` answer without the clients
    /// still silent (they are not counted as failed: the call's own deadline is unchanged).
    pub fn decide(&mut self, now: Instant) -> Option<Choice> {
        if self.decided {
            return None;
        }
        if let Some(Pick::Fetch { got, holder, sent_at }) = &self.pick {
            let got: Vec<Got> = got
                .iter()
                .zip(&self.standings)
                .map(|(g, s)| if *g == Got::Pending && *s == Standing::Failed { Got::Failed } else { *g })
                .collect();
            let deadline = payload_choice::DEFAULT_CHOICE_DEADLINE;
            let choice = match payload_choice::choose(&got, *holder, *sent_at, deadline, now) {
                payload_choice::Choice::Wait { until } => {
                    self.wake = Some(until);
                    return None;
                }
                payload_choice::Choice::Relay(report) => {
                    let el = report.el;
                    self.picked = Some(report);
                    Choice::Relay(el)
                }
                payload_choice::Choice::Fallback => policy::choose(self.combine, &self.standings)?,
            };
            self.decided = true;
            return Some(choice);
        }
        let choice = match self.gather {
            None => policy::choose(self.combine, &self.standings)?,
            Some(gather) => match answer_policy::decide(&self.gathered(), &gather.clock, gather.wait, now) {
                Decision::Wait { until } => {
                    self.wake = until;
                    return None;
                }
                Decision::Answer(Outcome::Relay(i)) => Choice::Relay(i),
                Decision::Answer(Outcome::Syncing(split)) => Choice::Syncing(split),
                Decision::Answer(Outcome::NoAnswer) => Choice::NoAnswer,
            },
        };
        self.decided = true;
        Some(choice)
    }

    /// An answer with this status came (for `--answer-policy safe`'s clock).
    pub fn on_answer(&mut self, status: Status, now: Instant) {
        if let Some(gather) = self.gather.as_mut() {
            gather.clock.on_answer(status, now);
        }
    }

    /// The standings as `answer_policy` sees them: an answer with its status.
    fn gathered(&self) -> Vec<answer_policy::Standing> {
        let status = |i: usize| Status::of(self.statuses.get(i).and_then(Option::as_deref));
        (0..self.standings.len())
            .map(|i| match self.standings[i] {
                Standing::Pending => answer_policy::Standing::Pending,
                Standing::Failed => answer_policy::Standing::Failed,
                Standing::Answered => answer_policy::Standing::Answered(status(i)),
            })
            .collect()
    }

    /// Its deadline has passed: every client that has not answered counts as failed. Or its
    /// `wake` has: a wait ended, and nothing counts as failed. True when either happened now
    /// (the exchange is then ready to `decide`). An exchange being relayed is left to its client
    /// connection's deadline (see `Relay`).
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        if self.decided || self.relay.is_some() {
            return false;
        }
        if self.deadline > now {
            let woken = self.wake.is_some_and(|w| w <= now);
            if woken {
                self.wake = None;
            }
            return woken;
        }
        for s in self.standings.iter_mut() {
            if *s == Standing::Pending {
                *s = Standing::Failed;
            }
        }
        true
    }

    /// Whether nothing more can happen to this exchange.
    /// Whether this call's answer is large (`hold::large_answer`) and the beacon node's answer
    /// needs only the primary's: no payload choice among the clients' answers, no gathering.
    pub fn large_answer_from_primary(&self) -> bool {
        crate::core::hold::large_answer(self.inbound.class) && self.pick.is_none() && self.gather.is_none()
    }

    pub fn finished(&self) -> bool {
        self.decided && self.live_jobs == 0
    }

    /// Records a client's status and returns the first disagreement with an earlier one, as
    /// (earlier client, its status), once per exchange.
    pub fn record_status(&mut self, client: usize, status: Option<String>) -> Option<(usize, String)> {
        let status = status?;
        let earlier = self
            .statuses
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.as_ref().filter(|s| **s != status).map(|s| (i, s.clone())));
        if let Some(slot) = self.statuses.get_mut(client) {
            *slot = Some(status);
        }
        if self.warned {
            return None;
        }
        self.warned = earlier.is_some();
        earlier
    }
}

/// A slab of exchanges with generation-checked references.
#[derive(Debug, Default)]
pub struct Exchanges {
    slots: Vec<(u32, Option<Exchange>)>,
    free: Vec<u32>,
    live: usize,
}

impl Exchanges {
    pub fn insert(&mut self, exchange: Exchange) -> ExchangeRef {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(exchange);
            return ExchangeRef { index, generation: slot.0 };
        }
        self.slots.push((0, Some(exchange)));
        ExchangeRef { index: (self.slots.len() - 1) as u32, generation: 0 }
    }

    /// The reference the next `insert` returns (so that a request can be named before its
    /// exchange exists).
    pub fn next_ref(&self) -> ExchangeRef {
        match self.free.last() {
            Some(&index) => {
                let generation = self.slots.get(index as usize).map_or(0, |s| s.0.wrapping_add(1));
                ExchangeRef { index, generation }
            }
            None => ExchangeRef { index: self.slots.len() as u32, generation: 0 },
        }
    }

    pub fn get(&self, r: ExchangeRef) -> Option<&Exchange> {
        match self.slots.get(r.index as usize) {
            Some((generation, Some(e))) if *generation == r.generation => Some(e),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, r: ExchangeRef) -> Option<&mut Exchange> {
        match self.slots.get_mut(r.index as usize) {
            Some((generation, Some(e))) if *generation == r.generation => Some(e),
            _ => None,
        }
    }

    pub fn remove(&mut self, r: ExchangeRef) -> Option<Exchange> {
        match self.slots.get_mut(r.index as usize) {
            Some((generation, slot @ Some(_))) if *generation == r.generation => {
                self.free.push(r.index);
                self.live -= 1;
                slot.take()
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// References to every live exchange.
    pub fn refs(&self) -> Vec<ExchangeRef> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.is_some())
            .map(|(i, (generation, _))| ExchangeRef { index: i as u32, generation: *generation })
            .collect()
    }

    /// The earliest deadline of an exchange still waiting for a decision (one being relayed
    /// waits for its client connection's deadline instead, see `Relay`).
    pub fn next_deadline(&self) -> Option<Instant> {
        let due = |e: &Exchange| e.wake.map_or(e.deadline, |w| w.min(e.deadline));
        let waits = |e: &&Exchange| !e.decided && e.relay.is_none();
        self.slots.iter().filter_map(|(_, e)| e.as_ref()).filter(waits).map(due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_goes_back_to_the_pool_when_the_last_reference_is_gone() {
        let pool = crate::pool::BodyPool::shared();
        let mut inbound = exchange(2).inbound;
        let body = vec![1u8; crate::pool::MIN_POOLED];
        let address = body.as_ptr();
        if let Some(i) = Rc::get_mut(&mut inbound) {
            i.body = body;
            i.pool = Some(pool.clone());
        }
        let job_copy = inbound.clone();
        drop(inbound);
        assert_eq!(pool.borrow().spare_bytes(), 0, "a job still holds the request");
        drop(job_copy);
        let spare = pool.borrow_mut().take(crate::pool::MIN_POOLED).expect("the body's buffer");
        assert_eq!(spare.as_ptr(), address);
    }

    fn exchange(clients: usize) -> Exchange {
        let now = Instant::now();
        let inbound = Inbound::for_test(Class::NewPayload, Some("engine_newPayloadV3"), now);
        Exchange::new(Rc::new(inbound), None, clients, now)
    }

    fn non_engine(clients: usize) -> Exchange {
        let mut e = exchange(clients);
        if let Some(inbound) = Rc::get_mut(&mut e.inbound) {
            inbound.class = Class::NonEngine;
        }
        e.combine = Combine::for_class(Class::NonEngine);
        e
    }

    #[test]
    fn a_non_engine_call_falls_back_once_per_failed_client_in_list_order() {
        let mut e = non_engine(3);
        assert_eq!(e.settle(0, Standing::Failed, 3), Some(1));
        assert_eq!(e.settle(0, Standing::Failed, 3), None, "reported failed twice, sent on once");
        assert_eq!(e.decide(e.inbound.received), None, "the next client has not answered yet");
        assert_eq!(e.settle(1, Standing::Answered, 3), None);
        assert_eq!(e.decide(e.inbound.received), Some(Choice::Relay(1)));
        assert_eq!(e.decide(e.inbound.received), None, "decided once");
        // The last client listed, or fewer listed after a reload: nowhere to fall back to.
        let mut e = non_engine(3);
        assert_eq!(e.settle(2, Standing::Failed, 3), None);
        assert_eq!(e.settle(0, Standing::Failed, 1), None);
    }

    #[test]
    fn a_fanned_out_call_never_falls_back() {
        let mut e = exchange(2);
        assert_eq!(e.settle(0, Standing::Failed, 2), None);
        assert_eq!(e.settle(1, Standing::Answered, 2), None);
        assert_eq!(e.decide(e.inbound.received), Some(Choice::Relay(1)));
    }

    #[test]
    fn the_deadline_fails_every_client_still_pending_on_a_fake_clock() {
        let mut e = exchange(2);
        let t0 = e.deadline - Duration::from_secs(8);
        assert_eq!(e.settle(1, Standing::Answered, 2), None);
        assert!(!e.on_timeout(t0 + Duration::from_millis(7_999)));
        assert_eq!(e.decide(e.inbound.received), None, "the primary may still answer");
        assert!(e.on_timeout(e.deadline));
        assert_eq!(e.standings, vec![Standing::Failed, Standing::Answered]);
        assert_eq!(e.decide(e.inbound.received), Some(Choice::Relay(1)));
        assert!(!e.on_timeout(e.deadline), "a decided exchange has nothing left to time out");
    }

    #[test]
    fn a_relaying_exchange_is_left_to_its_client_connections_deadline_on_a_fake_clock() {
        let mut e = exchange(2);
        e.relay = Some(Relay { to: Reply { slot: 0, serial: 1 }, el: 0 });
        let mut slab = Exchanges::default();
        assert!(
            !e.on_timeout(e.deadline + Duration::from_secs(1)),
            "the relay's deadline is the connection's"
        );
        assert_eq!(e.standings, vec![Standing::Pending; 2], "nobody failed by the exchange's deadline");
        slab.insert(e);
        assert_eq!(slab.next_deadline(), None, "no busy poll past a relaying exchange's deadline");
    }

    #[test]
    fn next_ref_is_what_insert_returns() {
        let mut slab = Exchanges::default();
        let next = slab.next_ref();
        assert_eq!(slab.insert(exchange(1)), next);
        let next = slab.next_ref();
        let b = slab.insert(exchange(1));
        assert_eq!(b, next);
        slab.remove(b);
        let next = slab.next_ref();
        assert_eq!(slab.insert(exchange(1)), next, "a reused slot's next generation");
    }

    #[test]
    fn safe_gathers_until_the_wait_then_answers_without_the_silent_client_on_a_fake_clock() {
        let mut e = exchange(3);
        let t0 = e.inbound.received;
        let wait = Duration::from_millis(1000);
        e.gather = Some(Gather { wait, clock: Clock::default() });
        let answer = |e: &mut Exchange, el: usize, status: &str, at: Instant| {
            e.record_status(el, Some(status.to_string()));
            e.on_answer(Status::of(Some(status)), at);
            e.settle(el, Standing::Answered, 3);
        };
        answer(&mut e, 0, "VALID", t0 + Duration::from_millis(10));
        assert_eq!(e.decide(t0 + Duration::from_millis(10)), None, "the primary alone does not decide");
        let end = t0 + Duration::from_millis(1010);
        assert_eq!(e.wake, Some(end), "gathering ends 1 s after the first decisive answer");
        answer(&mut e, 1, "INVALID", t0 + Duration::from_millis(20));
        assert_eq!(e.decide(t0 + Duration::from_millis(20)), None);
        assert!(!e.on_timeout(end - Duration::from_millis(1)));
        assert!(e.on_timeout(end));
        assert_eq!(e.standings[2], Standing::Pending, "the silent client is not counted as failed");
        let split = answer_policy::Disagreement { valid: vec![0], invalid: vec![1] };
        assert_eq!(e.decide(end), Some(Choice::Syncing(split)));
    }

    #[test]
    fn a_wake_decides_again_without_failing_anyone_on_a_fake_clock() {
        let mut e = exchange(2);
        let t0 = e.inbound.received;
        e.wake = Some(t0 + Duration::from_millis(400));
        let mut slab = Exchanges::default();
        assert!(!e.on_timeout(t0 + Duration::from_millis(399)));
        assert!(e.on_timeout(t0 + Duration::from_millis(400)), "woken");
        assert_eq!(e.standings, vec![Standing::Pending; 2], "a wake fails no one");
        assert_eq!(e.wake, None);
        e.wake = Some(t0 + Duration::from_millis(400));
        slab.insert(e);
        assert_eq!(
            slab.next_deadline(),
            Some(t0 + Duration::from_millis(400)),
            "the wake is the next deadline"
        );
    }

    #[test]
    fn stale_references_find_nothing() {
        let mut slab = Exchanges::default();
        let a = slab.insert(exchange(1));
        assert!(slab.remove(a).is_some());
        let b = slab.insert(exchange(1));
        assert!(slab.get(a).is_none(), "a reused slot must not answer to the old reference");
        assert!(slab.get(b).is_some());
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn disagreement_is_reported_once() {
        let mut e = exchange(3);
        assert_eq!(e.record_status(0, Some("VALID".into())), None);
        assert_eq!(e.record_status(1, Some("SYNCING".into())), Some((0, "VALID".into())));
        assert_eq!(e.record_status(2, Some("INVALID".into())), None);
        let mut e = exchange(2);
        assert_eq!(e.record_status(1, Some("VALID".into())), None);
        assert_eq!(e.record_status(0, Some("VALID".into())), None);
    }
}
