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
//! A pure function of the primary's progress and `now`: it knows no connections or sockets.

use std::time::{Duration, Instant};

/// Requests at least this large are large for the hold.
pub const PRIMARY_FIRST_MIN_BODY: usize = 64 * 1024;
/// The other clients stop waiting for the primary's answer to a large request once the
/// primary has made no progress for this long (taken no byte, or, with the whole request, not
/// answered)…
pub const PRIMARY_STALL: Duration = Duration::from_millis(200);
/// …and at the latest this long after the request arrived (a zero-window primary still takes
/// a few bytes now and then).
pub const PRIMARY_FIRST_MAX: Duration = Duration::from_millis(500);
/// How long the other clients wait for the primary's answer to a smaller request: long enough
/// for a primary that answers at once (the copies then stay off the answer's path; 1 ms was
/// measurably worse on loopback), too short to matter to the others when it takes longer.
pub const PRIMARY_FIRST_SMALL: Duration = Duration::from_millis(20);

/// Until when a secondary's copy of a request waits, or None when it goes out now.
/// `received` and `body_len` describe the request; `primary_progress` has, for each live
/// connection of the primary that carries the same request (normally zero or one), when that
/// connection last made progress. No such connection (the primary answered, failed, or never
/// had the request): no hold.
pub fn hold_until(
    received: Instant,
    body_len: usize,
    primary_progress: impl IntoIterator<Item = Instant>,
    now: Instant,
) -> Option<Instant> {
    let large = body_len >= PRIMARY_FIRST_MIN_BODY;
    primary_progress
        .into_iter()
        .map(|progress| {
            if large {
                (progress.max(received) + PRIMARY_STALL).min(received + PRIMARY_FIRST_MAX)
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

    #[test]
    fn nothing_is_held_without_a_primary_copy_in_flight() {
        let t0 = Instant::now();
        assert_eq!(hold_until(t0, 10, [], t0), None);
        assert_eq!(hold_until(t0, PRIMARY_FIRST_MIN_BODY, [], t0), None);
    }

    #[test]
    fn a_small_request_waits_briefly_for_the_primary() {
        let t0 = Instant::now();
        assert_eq!(hold_until(t0, 100, [t0], t0), Some(t0 + PRIMARY_FIRST_SMALL));
        assert_eq!(hold_until(t0, 100, [t0], t0 + 19 * MS), Some(t0 + PRIMARY_FIRST_SMALL));
        assert_eq!(hold_until(t0, 100, [t0], t0 + PRIMARY_FIRST_SMALL), None);
    }

    #[test]
    fn a_large_request_waits_while_the_primary_makes_progress() {
        let t0 = Instant::now();
        let big = PRIMARY_FIRST_MIN_BODY;
        assert_eq!(hold_until(t0, big, [t0], t0), Some(t0 + PRIMARY_STALL));
        // Progress 150 ms in moves the stall point on.
        assert_eq!(hold_until(t0, big, [t0 + 150 * MS], t0 + 190 * MS), Some(t0 + 350 * MS));
        // No progress for PRIMARY_STALL: the copies go.
        assert_eq!(hold_until(t0, big, [t0 + 150 * MS], t0 + 350 * MS), None);
    }

    #[test]
    fn a_primary_that_keeps_trickling_holds_the_others_at_most_primary_first_max() {
        let t0 = Instant::now();
        let big = PRIMARY_FIRST_MIN_BODY;
        let trickle = t0 + 450 * MS;
        assert_eq!(hold_until(t0, big, [trickle], t0 + 460 * MS), Some(t0 + PRIMARY_FIRST_MAX));
        assert_eq!(hold_until(t0, big, [trickle], t0 + PRIMARY_FIRST_MAX), None);
    }
}
