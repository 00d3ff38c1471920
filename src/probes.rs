//! The orchestrator's probes: `GET /healthz` (the event loop is alive, so it answers) and
//! `GET /readyz` (the proxy can do its job: it follows a beacon node that spoke recently, and
//! at least one execution client is up and answered a call with a 2xx recently). Both answer a
//! short JSON document saying why. The decision is a pure function of state and `now`.

use std::time::{Duration, Instant};

/// "Recently", for readiness, is this many beacon-node expiries: a beacon node calls every
/// slot, and `--beacon-expiry` (default 12 s) is how long the proxy keeps following a silent
/// one; twice that lets one slot be missed without the probe flapping.
pub const RECENT_EXPIRIES: u32 = 2;

/// How long ago a beacon node's request or an execution client's answer still counts as
/// recent, for a given `--beacon-expiry`.
pub fn recent_window(beacon_expiry: Duration) -> Duration {
    beacon_expiry.saturating_mul(RECENT_EXPIRIES)
}

/// One `--builders` execution client, as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElProbe {
    /// Its last connection attempt succeeded.
    pub up: bool,
    /// When it last answered a call with a 2xx (any call, any verdict: an HTTP error such as
    /// a 401 for a wrong JWT secret does not count).
    pub last_answer: Option<Instant>,
}

/// What readiness is decided from.
#[derive(Debug, Clone)]
pub struct ReadyInput<'a> {
    /// A stop was requested: the proxy is draining.
    pub stopping: bool,
    /// The beacon node followed, and when it last sent a request.
    pub beacon: Option<(&'a str, Option<Instant>)>,
    pub els: Vec<ElProbe>,
    /// See `recent_window`.
    pub window: Duration,
}

/// The verdict, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
}

/// Ready when not stopping, a beacon node is followed and sent something within the window,
/// and at least one execution client is up and answered within the window.
pub fn readiness(input: &ReadyInput<'_>, now: Instant) -> Readiness {
    let not_ready = |reason: String| Readiness { ready: false, reason };
    let window = input.window;
    let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) <= input.window);
    if input.stopping {
        return not_ready("stopping".to_string());
    }
    let Some((beacon, last_request)) = input.beacon else {
        return not_ready("no beacon node followed".to_string());
    };
    if !recent(last_request) {
        return not_ready(format!("beacon node {beacon} sent nothing in the last {window:?}"));
    }
    let up = input.els.iter().filter(|el| el.up).count();
    if up == 0 {
        return not_ready("no execution client is up".to_string());
    }
    let answering = input.els.iter().filter(|el| el.up && recent(el.last_answer)).count();
    if answering == 0 {
        return not_ready(format!("no execution client answered in the last {window:?}"));
    }
    Readiness {
        ready: true,
        reason: format!(
            "following beacon node {beacon}; {answering} of {} execution clients up and answering",
            input.els.len()
        ),
    }
}

/// The `/readyz` body: `{"ready":…,"reason":"…"}`.
pub fn readiness_body(verdict: &Readiness) -> Vec<u8> {
    serde_json::json!({ "ready": verdict.ready, "reason": verdict.reason }).to_string().into_bytes()
}

/// The `/healthz` body: answering at all proves the loop runs.
pub fn health_body(uptime: Duration) -> Vec<u8> {
    serde_json::json!({ "alive": true, "uptime_seconds": uptime.as_secs() }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(24);

    /// (name, stopping, beacon, clients, ready, reason).
    type Case<'a> = (&'a str, bool, Option<(&'a str, Option<Instant>)>, Vec<ElProbe>, bool, &'a str);

    /// A fake clock: `at(s)` is `s` seconds after an arbitrary start.
    fn clock() -> impl Fn(u64) -> Instant {
        let start = Instant::now();
        move |s| start + Duration::from_secs(s)
    }

    #[test]
    fn readiness_table() {
        let at = clock();
        let now = at(100);
        let fresh = Some(at(90));
        let stale = Some(at(100 - 25));
        let up = |last_answer| ElProbe { up: true, last_answer };
        let down = |last_answer| ElProbe { up: false, last_answer };
        let cases: Vec<Case> = vec![
            ("nothing seen yet", false, None, vec![up(fresh)], false, "no beacon node followed"),
            (
                "silent beacon node",
                false,
                Some(("10.0.0.1", stale)),
                vec![up(fresh)],
                false,
                "beacon node 10.0.0.1 sent nothing in the last 24s",
            ),
            (
                "every client down",
                false,
                Some(("bn", fresh)),
                vec![down(fresh), down(None)],
                false,
                "no execution client is up",
            ),
            ("no clients at all", false, Some(("bn", fresh)), vec![], false, "no execution client is up"),
            (
                "up but silent",
                false,
                Some(("bn", fresh)),
                vec![up(stale), up(None)],
                false,
                "no execution client answered in the last 24s",
            ),
            (
                "a down client's old answer does not count",
                false,
                Some(("bn", fresh)),
                vec![down(fresh), up(stale)],
                false,
                "no execution client answered in the last 24s",
            ),
            (
                "one of two",
                false,
                Some(("bn", fresh)),
                vec![down(None), up(fresh)],
                true,
                "following beacon node bn; 1 of 2 execution clients up and answering",
            ),
            (
                "exactly at the window's edge",
                false,
                Some(("bn", Some(at(100 - 24)))),
                vec![up(Some(at(100 - 24)))],
                true,
                "following beacon node bn; 1 of 1 execution clients up and answering",
            ),
            ("stopping wins", true, Some(("bn", fresh)), vec![up(fresh)], false, "stopping"),
        ];
        for (name, stopping, beacon, els, ready, reason) in cases {
            let input = ReadyInput { stopping, beacon, els, window: WINDOW };
            let verdict = readiness(&input, now);
            assert_eq!(verdict, Readiness { ready, reason: reason.to_string() }, "{name}");
        }
    }

    #[test]
    fn readiness_goes_and_comes_back_with_the_clock() {
        let at = clock();
        let input = ReadyInput {
            stopping: false,
            beacon: Some(("bn", Some(at(10)))),
            els: vec![ElProbe { up: true, last_answer: Some(at(12)) }],
            window: recent_window(Duration::from_secs(12)),
        };
        assert!(readiness(&input, at(34)).ready);
        assert!(!readiness(&input, at(35)).ready, "the beacon node's request is 25 s old");
        let later = ReadyInput { beacon: Some(("bn", Some(at(40)))), ..input };
        assert!(!readiness(&later, at(40)).ready, "the client's answer is 28 s old");
    }

    #[test]
    fn bodies_are_small_json_documents() {
        let verdict = Readiness { ready: false, reason: "no beacon node followed".to_string() };
        let body: serde_json::Value = serde_json::from_slice(&readiness_body(&verdict)).expect("JSON");
        assert_eq!(body, serde_json::json!({"ready": false, "reason": "no beacon node followed"}));
        let body: serde_json::Value =
            serde_json::from_slice(&health_body(Duration::from_secs(7))).expect("JSON");
        assert_eq!(body, serde_json::json!({"alive": true, "uptime_seconds": 7}));
    }
}
