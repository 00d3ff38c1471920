//! The primary-first hold: how long a copy of a request for a secondary execution client
//! waits so that the primary (the first in the list) gets its copy first.
//!
//! Writing N copies at once shares the CPU (and, on loopback, the receivers' TCP work) N ways,
//! which delays the primary's copy, and so the beacon node's answer, about N times; and a copy
//! written while the primary's answer arrives delays that answer by the copy's time. The other
//! clients' answers matter to nobody's latency. So the others wait until the primary has
//! answered, or failed; for a large request at most until the primary has made no progress
//! (taken no byte, or had its whole request and not answered) for `PRIMARY_STALL`, and never
//! longer than `PRIMARY_FIRST_MAX` after the request arrived; for a smaller one at most
//! `PRIMARY_FIRST_SMALL`. A slow or stuck primary holds the others back only briefly.
//!
//! A call with a large answer (getPayload: 13 MB with 48 blobs; getBlobs, getPayloadBodies)
//! whose beacon node answer needs only the primary's is held the same way while the primary
//! has it (but at most a quarter of the call's timeout, so that a hung primary still leaves
//! the others time to answer for it), and then while the beacon node's answer is still being written: the others' answers,
//! as large, would otherwise be read while the primary's is written, sharing the thread and
//! the memory (two 13 MB answers at once). A beacon node that stops reading holds the others
//! at most `PRIMARY_FIRST_MAX` after its answer was queued.
//!
//! A pure function of the primary's progress, the beacon node's answer and `now`: it knows no
//! connections or sockets.

use std::time::{Duration, Instant};

use crate::policy::Class;

/// Requests at least this large are large for the hold.
pub const PRIMARY_FIRST_MIN_BODY: usize = 64 * 1024;
/// The other clients stop waiting for the primary's answer to a large request once the
/// primary has made no progress for this long (taken no byte, or, with the whole request, not
/// answered)…
pub const PRIMARY_STALL: Duration = Duration::from_millis(200);
/// …and at the latest this long after the request arrived (a zero-window primary still takes
/// a few bytes now and then), or after the beacon node's answer to a large-answer call was
/// queued.
pub const PRIMARY_FIRST_MAX: Duration = Duration::from_millis(500);
/// How long the other clients wait for the primary's answer to a smaller request: long enough
/// for a primary that answers at once (the copies then stay off the answer's path; 1 ms was
/// measurably worse on loopback), too short to matter to the others when it takes longer.
pub const PRIMARY_FIRST_SMALL: Duration = Duration::from_millis(20);

/// The calls whose answers are large: megabytes of payload, blobs or block bodies.
pub fn large_answer(class: Class) -> bool {
    matches!(class, Class::GetPayload | Class::GetBlobs | Class::GetPayloadBodies)
}

/// What the hold knows of one call.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub received: Instant,
    pub body_len: usize,
    /// Its answer is large (`large_answer`) and the beacon node's answer needs only the
    /// primary's (no payload choice among the clients' answers, no gathering of verdicts).
    pub large_answer: bool,
    /// Since when the beacon node's answer has been queued, while it is not written whole.
    pub answer_out_since: Option<Instant>,
    /// How long the primary has to answer: a secondary falls back for it after that.
    pub timeout: Duration,
}

/// Until when a secondary's copy of `call` waits, or None when it goes out now.
/// `primary_progress` has, for each live connection of the primary that carries the same
/// request (normally zero or one), when that connection last made progress. No such
/// connection (the primary answered, failed, or never had the request) and no large answer
/// being written to the beacon node: no hold.
pub fn hold_until(
    call: &Call,
    primary_progress: impl IntoIterator<Item = Instant>,
    now: Instant,
) -> Option<Instant> {
    let Call { received, body_len, large_answer, answer_out_since, timeout } = *call;
    let large = body_len >= PRIMARY_FIRST_MIN_BODY || large_answer;
    // A large answer's hold leaves the others three quarters of the timeout to answer in.
    let latest = match body_len >= PRIMARY_FIRST_MIN_BODY {
        true => received + PRIMARY_FIRST_MAX,
        false => received + PRIMARY_FIRST_MAX.min(timeout / 4),
    };
    let mut primary = primary_progress.into_iter().peekable();
    if primary.peek().is_none() {
        return answer_out_since
            .filter(|_| large_answer)
            .map(|since| since + PRIMARY_FIRST_MAX)
            .filter(|&until| until > now);
    }
    primary
        .map(|progress| {
            if large {
                (progress.max(received) + PRIMARY_STALL).min(latest)
            } else {
                received + PRIMARY_FIRST_SMALL
            }
        })
        .find(|&until| until > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn call(received: Instant, body_len: usize) -> Call {
        Call {
            received,
            body_len,
            large_answer: false,
            answer_out_since: None,
            timeout: Duration::from_secs(8),
        }
    }

    fn hold(
        received: Instant,
        body_len: usize,
        primary: impl IntoIterator<Item = Instant>,
        now: Instant,
    ) -> Option<Instant> {
        hold_until(&call(received, body_len), primary, now)
    }

    #[test]
    fn nothing_is_held_without_a_primary_copy_in_flight() {
        let t0 = Instant::now();
        assert_eq!(hold(t0, 10, [], t0), None);
        assert_eq!(hold(t0, PRIMARY_FIRST_MIN_BODY, [], t0), None);
    }

    #[test]
    fn a_small_request_waits_briefly_for_the_primary() {
        let t0 = Instant::now();
        assert_eq!(hold(t0, 100, [t0], t0), Some(t0 + PRIMARY_FIRST_SMALL));
        assert_eq!(hold(t0, 100, [t0], t0 + 19 * MS), Some(t0 + PRIMARY_FIRST_SMALL));
        assert_eq!(hold(t0, 100, [t0], t0 + PRIMARY_FIRST_SMALL), None);
    }

    #[test]
    fn a_large_request_waits_while_the_primary_makes_progress() {
        let t0 = Instant::now();
        let big = PRIMARY_FIRST_MIN_BODY;
        assert_eq!(hold(t0, big, [t0], t0), Some(t0 + PRIMARY_STALL));
        // Progress 150 ms in moves the stall point on.
        assert_eq!(hold(t0, big, [t0 + 150 * MS], t0 + 190 * MS), Some(t0 + 350 * MS));
        // No progress for PRIMARY_STALL: the copies go.
        assert_eq!(hold(t0, big, [t0 + 150 * MS], t0 + 350 * MS), None);
    }

    #[test]
    fn a_primary_that_keeps_trickling_holds_the_others_at_most_primary_first_max() {
        let t0 = Instant::now();
        let big = PRIMARY_FIRST_MIN_BODY;
        let trickle = t0 + 450 * MS;
        assert_eq!(hold(t0, big, [trickle], t0 + 460 * MS), Some(t0 + PRIMARY_FIRST_MAX));
        assert_eq!(hold(t0, big, [trickle], t0 + PRIMARY_FIRST_MAX), None);
    }

    #[test]
    fn a_large_answer_call_waits_for_the_primary_as_a_large_request_does() {
        let t0 = Instant::now();
        let get = Call { large_answer: true, ..call(t0, 100) };
        assert_eq!(
            hold_until(&get, [t0], t0 + 19 * MS),
            Some(t0 + PRIMARY_STALL),
            "not 20 ms as a small call"
        );
        assert_eq!(hold_until(&get, [t0], t0 + PRIMARY_STALL), None, "a primary that stalls lets them go");
        assert_eq!(hold_until(&get, [t0 + 400 * MS], t0 + 450 * MS), Some(t0 + PRIMARY_FIRST_MAX));
    }

    #[test]
    fn regression_a_hung_primary_leaves_the_others_time_to_answer_a_large_answer_call() {
        // With --request-timeout 200 a getPayload's secondary copy waited out the 200 ms stall
        // hold and the call failed instead of falling back.
        let t0 = Instant::now();
        let get = Call { large_answer: true, timeout: 200 * MS, ..call(t0, 100) };
        assert_eq!(hold_until(&get, [t0], t0), Some(t0 + 50 * MS));
        assert_eq!(hold_until(&get, [t0], t0 + 50 * MS), None);
    }

    #[test]
    fn a_large_answer_being_written_to_the_beacon_node_holds_the_others_at_most_primary_first_max() {
        let t0 = Instant::now();
        let queued = t0 + 30 * MS;
        let get = Call { large_answer: true, answer_out_since: Some(queued), ..call(t0, 100) };
        assert_eq!(hold_until(&get, [], queued), Some(queued + PRIMARY_FIRST_MAX));
        assert_eq!(hold_until(&get, [], queued + 499 * MS), Some(queued + PRIMARY_FIRST_MAX));
        assert_eq!(hold_until(&get, [], queued + PRIMARY_FIRST_MAX), None, "a BN that stops reading");
        // Written whole: nothing to wait for.
        assert_eq!(hold_until(&Call { answer_out_since: None, ..get }, [], queued), None);
        // A call whose answer is small (or needs every client's answer) is not held for it.
        assert_eq!(hold_until(&Call { large_answer: false, ..get }, [], queued), None);
    }
}
