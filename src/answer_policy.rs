//! `--answer-policy primary|safe`: what a beacon node is told about a newPayload or
//! forkchoiceUpdated, given what each execution client (EL) said.
//!
//! `primary` (the default, as the Go proxy) is `policy::choose`'s first-in-list-order rule and is
//! not repeated here. `safe` gathers the answers of the ELs that are up and tells the beacon node
//! SYNCING when they disagree on validity, so that one faulty EL can neither make the beacon node
//! import an invalid block nor reject a valid one. This module decides from standings, statuses
//! and instants passed in; it knows no sockets, no clock, no exchange slab and no JSON beyond
//! the SYNCING bodies it writes.
//!
//! The rule of `safe`, in full:
//! - Decisive answers are VALID, INVALID and INVALID_BLOCK_HASH: they settle the payload.
//!   SYNCING and ACCEPTED say "not known yet", a JSON-RPC error or an unknown status says
//!   nothing about the payload; none of these is decisive.
//! - Answers are gathered until every EL that is up has answered (or failed), or until
//!   `--answer-wait` after the first decisive answer. While nothing decisive has come, the wait
//!   runs from the first answer of any kind, so an EL that hangs after another said SYNCING
//!   does not hold the beacon node until the call's own timeout either. The longest a beacon
//!   node can wait is therefore twice the wait after the first answer, never the slowest EL.
//! - At that point: VALID from one EL and INVALID or INVALID_BLOCK_HASH from another → SYNCING
//!   with the request's id, and a `Disagreement` naming both sides (for the warning and the
//!   metric). The beacon node then imports optimistically and does not attest: a liveness
//!   cost, never a safety one.
//! - Decisive answers that agree (all VALID, or all INVALID/INVALID_BLOCK_HASH) → the first
//!   such EL in list order is relayed as it came, whatever the non-decisive ones said.
//! - No decisive answer → the first EL in list order that answered with a status is relayed
//!   (SYNCING, ACCEPTED or an unknown status), else the first that answered at all (a JSON-RPC
//!   error). Nobody answered → `NoAnswer` (the caller's usual 502/timeout answer).
//! - Deterministic: the result depends only on which answers are in when the decision is made,
//!   never on their arrival order; ties go to list order.

use std::time::{Duration, Instant};

use crate::policy::{self, Class};

/// `--answer-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerPolicy {
    /// The primary's answer as soon as it is decided; fallback in list order (`policy::choose`).
    #[default]
    Primary,
    /// Gather and compare (this module's `decide`), for newPayload and forkchoiceUpdated.
    Safe,
}

impl AnswerPolicy {
    /// Whether `decide` makes the answer of a call of this class. Other calls are answered by
    /// `policy::choose` under both policies.
    pub fn gathers(self, class: Class) -> bool {
        self == AnswerPolicy::Safe && matches!(class, Class::NewPayload | Class::ForkchoiceUpdated)
    }
}

/// What an EL's answer to newPayload or forkchoiceUpdated says of the payload
/// (`result.status`, or `result.payloadStatus.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Valid,
    Invalid,
    InvalidBlockHash,
    Syncing,
    Accepted,
    /// A status string the Engine API does not define.
    Unknown,
    /// A JSON-RPC error, or an answer without a status.
    Error,
}

impl Status {
    /// From the status `rpc::scan_response` found (None: an error answer or no status).
    pub fn of(status: Option<&str>) -> Status {
        match status {
            None => Status::Error,
            Some("VALID") => Status::Valid,
            Some("INVALID") => Status::Invalid,
            Some("INVALID_BLOCK_HASH") => Status::InvalidBlockHash,
            Some("SYNCING") => Status::Syncing,
            Some("ACCEPTED") => Status::Accepted,
            Some(_) => Status::Unknown,
        }
    }

    /// VALID, INVALID or INVALID_BLOCK_HASH: the EL has settled the payload.
    pub fn is_decisive(self) -> bool {
        matches!(self, Status::Valid | Status::Invalid | Status::InvalidBlockHash)
    }

    /// INVALID or INVALID_BLOCK_HASH.
    pub fn is_invalid(self) -> bool {
        matches!(self, Status::Invalid | Status::InvalidBlockHash)
    }

    pub fn label(self) -> &'static str {
        match self {
            Status::Valid => "VALID",
            Status::Invalid => "INVALID",
            Status::InvalidBlockHash => "INVALID_BLOCK_HASH",
            Status::Syncing => "SYNCING",
            Status::Accepted => "ACCEPTED",
            Status::Unknown => "unknown",
            Status::Error => "error",
        }
    }
}

/// Where one EL that is up stands, in `--builders` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Pending,
    /// No answer will come (connection failed, timed out, down).
    Failed,
    Answered(Status),
}

/// What the beacon node gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Relay this EL's answer as it came.
    Relay(usize),
    /// The ELs disagree on validity: answer SYNCING (`syncing_body`) and report this.
    Syncing(Disagreement),
    /// Nobody answered.
    NoAnswer,
}

/// The two sides of a validity split, in list order, for the warning and the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    pub valid: Vec<usize>,
    /// INVALID or INVALID_BLOCK_HASH.
    pub invalid: Vec<usize>,
}

/// The decision, or how long to keep gathering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep gathering; decide again when an answer arrives or at `until` (None: no answer yet,
    /// so only the call's own timeout bounds the wait).
    Wait {
        until: Option<Instant>,
    },
    Answer(Outcome),
}

/// When the gathering of one exchange began to count: the caller keeps one per exchange and
/// calls `on_answer` for each answer as it arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    first_answer: Option<Instant>,
    first_decisive: Option<Instant>,
}

impl Clock {
    pub fn on_answer(&mut self, status: Status, now: Instant) {
        self.first_answer.get_or_insert(now);
        if status.is_decisive() {
            self.first_decisive.get_or_insert(now);
        }
    }

    /// Until when answers are gathered: `wait` after the first decisive answer, or after the
    /// first answer while none is decisive.
    pub fn deadline(&self, wait: Duration) -> Option<Instant> {
        self.first_decisive.or(self.first_answer).map(|at| at + wait)
    }
}

/// Decides the beacon node's answer under `safe` (see the module's header for the rule).
pub fn decide(standings: &[Standing], clock: &Clock, wait: Duration, now: Instant) -> Decision {
    let until = clock.deadline(wait);
    let all_in = !standings.contains(&Standing::Pending);
    if !all_in && !until.is_some_and(|until| now >= until) {
        return Decision::Wait { until };
    }
    Decision::Answer(outcome(standings))
}

/// The outcome from the answers that are in; pending ones count as not answered.
fn outcome(standings: &[Standing]) -> Outcome {
    let with = |keep: fn(Status) -> bool| -> Vec<usize> {
        (0..standings.len()).filter(|&i| matches!(standings[i], Standing::Answered(s) if keep(s))).collect()
    };
    let valid = with(|s| s == Status::Valid);
    let invalid = with(Status::is_invalid);
    match (valid.first(), invalid.first()) {
        (Some(_), Some(_)) => return Outcome::Syncing(Disagreement { valid, invalid }),
        (Some(&first), None) | (None, Some(&first)) => return Outcome::Relay(first),
        (None, None) => {}
    }
    let with_status = with(|s| s != Status::Error);
    let answered = with(|_| true);
    with_status.first().or(answered.first()).map_or(Outcome::NoAnswer, |&i| Outcome::Relay(i))
}

/// The SYNCING result of a newPayload (the forkchoiceUpdated one is `policy::SYNCING_FCU_RESULT`).
const SYNCING_PAYLOAD_RESULT: &[u8] =
    br#"{"status":"SYNCING","latestValidHash":null,"validationError":null}"#;

/// The SYNCING answer for a disagreement, with the request's raw id. For forkchoiceUpdated the
/// payloadId is null: a proposal asked for in the same call is lost, the price of not letting
/// one EL decide validity alone.
pub fn syncing_body(class: Class, id: Option<&[u8]>) -> Vec<u8> {
    let result = match class {
        Class::ForkchoiceUpdated => policy::SYNCING_FCU_RESULT,
        _ => SYNCING_PAYLOAD_RESULT,
    };
    policy::result_body(id, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Standing::{Answered, Failed, Pending};
    use Status::*;

    const WAIT: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `arrivals` (EL, status, ms after t0) in order and returns the first decision that
    /// is an answer, with the instant it was made: decisions are asked for at every arrival and
    /// at every deadline, as the event loop would.
    fn run(els: usize, arrivals: &[(usize, Status, u64)], t0: Instant) -> (Outcome, Instant) {
        let mut standings = vec![Pending; els];
        let mut clock = Clock::default();
        let mut events: Vec<(usize, Status, u64)> = arrivals.to_vec();
        events.sort_by_key(|&(_, _, at)| at);
        let mut next = events.into_iter().peekable();
        let mut now = t0;
        loop {
            match decide(&standings, &clock, WAIT, now) {
                Decision::Answer(outcome) => return (outcome, now),
                Decision::Wait { until } => {
                    let arrival = next.peek().map(|&(_, _, at)| t0 + ms(at));
                    now = match (arrival, until) {
                        (Some(a), Some(u)) if u < a => u,
                        (Some(a), _) => a,
                        (None, Some(u)) => u,
                        (None, None) => panic!("would wait for ever: {standings:?}"),
                    };
                    while next.peek().is_some_and(|&(_, _, at)| t0 + ms(at) <= now) {
                        let (el, status, _) = next.next().expect("peeked");
                        standings[el] = Answered(status);
                        clock.on_answer(status, now);
                    }
                }
            }
        }
    }

    #[test]
    fn statuses_by_name() {
        let cases = [
            (Some("VALID"), Valid),
            (Some("INVALID"), Invalid),
            (Some("INVALID_BLOCK_HASH"), InvalidBlockHash),
            (Some("SYNCING"), Syncing),
            (Some("ACCEPTED"), Accepted),
            (Some("valid"), Unknown),
            (None, Error),
        ];
        for (text, status) in cases {
            assert_eq!(Status::of(text), status, "{text:?}");
        }
        assert!(Valid.is_decisive() && Invalid.is_decisive() && InvalidBlockHash.is_decisive());
        assert!(!Syncing.is_decisive() && !Accepted.is_decisive() && !Error.is_decisive());
    }

    #[test]
    fn which_calls_the_safe_policy_gathers() {
        assert!(AnswerPolicy::Safe.gathers(Class::NewPayload));
        assert!(AnswerPolicy::Safe.gathers(Class::ForkchoiceUpdated));
        assert!(!AnswerPolicy::Safe.gathers(Class::GetPayload));
        assert!(!AnswerPolicy::Primary.gathers(Class::NewPayload));
    }

    #[test]
    fn a_valid_invalid_split_is_syncing_naming_both_sides() {
        let t0 = Instant::now();
        let (outcome, _) = run(3, &[(0, Valid, 10), (1, InvalidBlockHash, 20), (2, Invalid, 30)], t0);
        assert_eq!(outcome, Outcome::Syncing(Disagreement { valid: vec![0], invalid: vec![1, 2] }));
    }

    #[test]
    fn agreeing_decisive_answers_relay_the_first_in_list_order() {
        let t0 = Instant::now();
        // The primary said SYNCING; the others agree on VALID: the first VALID one is relayed.
        let (outcome, at) = run(3, &[(0, Syncing, 5), (2, Valid, 10), (1, Valid, 30)], t0);
        assert_eq!((outcome, at), (Outcome::Relay(1), t0 + ms(30)), "answered once all were in");
        let (outcome, _) = run(2, &[(0, Invalid, 5), (1, InvalidBlockHash, 6)], t0);
        assert_eq!(outcome, Outcome::Relay(0), "both reject the payload");
    }

    #[test]
    fn only_non_decisive_answers_relay_the_first_status_in_list_order() {
        let t0 = Instant::now();
        let (outcome, _) = run(3, &[(2, Syncing, 1), (1, Accepted, 2), (0, Error, 3)], t0);
        assert_eq!(outcome, Outcome::Relay(1), "a status beats the primary's JSON-RPC error");
        let (outcome, _) = run(2, &[(1, Error, 1), (0, Error, 2)], t0);
        assert_eq!(outcome, Outcome::Relay(0), "errors only: the first in list order");
        let standings = [Failed, Failed];
        assert_eq!(decide(&standings, &Clock::default(), WAIT, t0), Decision::Answer(Outcome::NoAnswer));
    }

    #[test]
    fn a_dead_el_never_delays_beyond_the_wait_after_the_first_decisive_answer() {
        let t0 = Instant::now();
        // EL 2 never answers: the decision comes exactly WAIT after the first VALID.
        let (outcome, at) = run(3, &[(1, Valid, 100), (0, Valid, 300)], t0);
        assert_eq!((outcome, at), (Outcome::Relay(0), t0 + ms(1100)));
        // An INVALID that arrives within the wait still turns the answer into SYNCING ...
        let (outcome, _) = run(3, &[(0, Valid, 100), (1, Invalid, 1099)], t0);
        assert!(matches!(outcome, Outcome::Syncing(_)), "{outcome:?}");
        // ... one that arrives after it is too late.
        let (outcome, at) = run(3, &[(0, Valid, 100), (1, Invalid, 1101)], t0);
        assert_eq!((outcome, at), (Outcome::Relay(0), t0 + ms(1100)));
    }

    #[test]
    fn without_a_decisive_answer_the_wait_runs_from_the_first_answer() {
        let t0 = Instant::now();
        let (outcome, at) = run(2, &[(1, Syncing, 50)], t0);
        assert_eq!((outcome, at), (Outcome::Relay(1), t0 + ms(1050)));
        // A decisive answer inside that wait restarts it from itself.
        let (outcome, at) = run(3, &[(1, Syncing, 50), (2, Valid, 900)], t0);
        assert_eq!((outcome, at), (Outcome::Relay(2), t0 + ms(1900)));
        // No answer at all: only the call's timeout bounds the wait.
        assert_eq!(decide(&[Pending, Pending], &Clock::default(), WAIT, t0), Decision::Wait { until: None });
    }

    #[test]
    fn a_failed_el_counts_as_in() {
        let t0 = Instant::now();
        let mut clock = Clock::default();
        clock.on_answer(Valid, t0);
        assert_eq!(decide(&[Answered(Valid), Failed], &clock, WAIT, t0), Decision::Answer(Outcome::Relay(0)));
        assert_eq!(
            decide(&[Answered(Valid), Pending], &clock, WAIT, t0),
            Decision::Wait { until: Some(t0 + WAIT) }
        );
    }

    /// Every arrival order of the same answers (all within the wait) gives the same outcome.
    #[test]
    fn the_outcome_does_not_depend_on_arrival_order() {
        let sets: &[&[Status]] = &[
            &[Valid, Invalid, Syncing],
            &[Valid, Valid, Syncing, Accepted],
            &[Syncing, Accepted, Error],
            &[InvalidBlockHash, Invalid, Syncing, Valid],
            &[Error, Invalid, Syncing, Syncing],
            &[Error, Error, Unknown],
            &[Valid, Valid, Valid, InvalidBlockHash],
        ];
        let t0 = Instant::now();
        for statuses in sets {
            let els = statuses.len();
            let mut expected = None;
            for order in permutations(els) {
                // The k-th arrival comes at 10·k ms, well inside the wait.
                let arrivals: Vec<(usize, Status, u64)> =
                    order.iter().enumerate().map(|(k, &el)| (el, statuses[el], 10 * k as u64 + 1)).collect();
                let (outcome, _) = run(els, &arrivals, t0);
                match &expected {
                    None => expected = Some(outcome),
                    Some(first) => assert_eq!(&outcome, first, "{statuses:?} arriving as {order:?}"),
                }
            }
        }
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for rest in permutations(n - 1) {
            for at in 0..=rest.len() {
                let mut p = rest.clone();
                p.insert(at, n - 1);
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn syncing_bodies_keep_the_id() {
        let np: serde_json::Value =
            serde_json::from_slice(&syncing_body(Class::NewPayload, Some(b"\"a\""))).expect("JSON");
        assert_eq!(np["id"], "a");
        assert_eq!(np["result"]["status"], "SYNCING");
        let fcu: serde_json::Value =
            serde_json::from_slice(&syncing_body(Class::ForkchoiceUpdated, Some(b"7"))).expect("JSON");
        assert_eq!(fcu["id"], 7);
        assert_eq!(fcu["result"]["payloadStatus"]["status"], "SYNCING");
        assert!(fcu["result"]["payloadId"].is_null());
    }
}
