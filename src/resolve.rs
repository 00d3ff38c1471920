//! Looking execution clients' host names up again while the proxy runs, and the one helper
//! thread that does what the event loop must never wait for: name lookups (`getaddrinfo` may
//! take seconds) and, on SIGHUP, reading the configuration files again (see `reload`).
//!
//! In Docker or Kubernetes an EL that is recreated comes back at a new address. A name is
//! looked up again when connecting to it fails (at most once per `MIN_GAP`) and every
//! `REFRESH_EVERY`, with at most one lookup in flight per EL; a failed lookup keeps the last
//! good addresses. [`Refresh`] decides when to ask and what an answer means, with `now` passed
//! in (unit-tested on a fake clock); [`Worker`] is the thread, which hands its answers back
//! through a `mio::Waker`, so the event loop never blocks and no thread touches a request.
//! Names that are IP literals are never looked up.
//!
//! Knows no sockets beyond resolving, no HTTP, no beacon nodes.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{self, ReloadSource, Reloaded};

/// A name is looked up again this often even when its EL answers.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Lookups caused by failed connections are at least this far apart per EL, so an EL that is
/// simply down (connects retried every 100 ms at first) does not hammer the DNS server.
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// Requests waiting for the worker thread; beyond this a lookup is asked again later.
const QUEUE: usize = 64;

/// The way a name becomes addresses: the system resolver in the binary, a table in tests.
pub trait Lookup: Send + 'static {
    fn lookup(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
}

/// `getaddrinfo` through the standard library; IPv4 first, as at start-up (see `config`).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|e| e.to_string())?.collect();
        addrs.sort_by_key(SocketAddr::is_ipv6);
        if addrs.is_empty() {
            return Err("the name resolved to no address".to_string());
        }
        Ok(addrs)
    }
}

/// The host and port to look up for an endpoint URL (`scheme://host:port/path`, as `config`
/// normalizes it), or None when the host is an IP literal and there is nothing to look up.
pub fn lookup_target(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// What a lookup's answer means for the EL's addresses and its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The same addresses as before: nothing to do.
    Same,
    /// New addresses: new connections go there.
    Changed(Vec<SocketAddr>),
    /// The lookup failed; the last good addresses stay. `first` is true for the first failure
    /// of an episode (logged), false for the ones after it (not logged again).
    Failed { first: bool },
    /// The first success after failures (logged), with new addresses if they changed.
    Recovered(Option<Vec<SocketAddr>>),
}

/// When one EL's name is looked up again, and what the answer means. Sans-IO: time is passed in.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub host: String,
    pub port: u16,
    in_flight: bool,
    /// A connection failed since the last lookup was sent.
    wanted: bool,
    /// A wanted lookup is not sent before this (the last one sent + `MIN_GAP`).
    gap_until: Instant,
    next_periodic: Instant,
    /// Lookups have failed since the last success (the episode is logged once).
    failing: bool,
}

impl Refresh {
    pub fn new(host: String, port: u16, now: Instant) -> Refresh {
        Refresh {
            host,
            port,
            in_flight: false,
            wanted: false,
            gap_until: now,
            next_periodic: now + REFRESH_EVERY,
            failing: false,
        }
    }

    /// A connection to the EL failed: its address may have changed.
    pub fn connect_failed(&mut self) {
        self.wanted = true;
    }

    /// When the next lookup should be sent; None while one is in flight.
    pub fn due_at(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        let wanted = self.wanted.then_some(self.gap_until);
        // A wanted lookup never waits longer than the periodic one would.
        Some(wanted.map_or(self.next_periodic, |w| w.min(self.next_periodic)))
    }

    /// True (and the lookup counts as sent) when one is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due_at().is_some_and(|at| at <= now) {
            self.in_flight = true;
            self.wanted = false;
            self.gap_until = now + MIN_GAP;
            return true;
        }
        false
    }

    /// The worker's queue was full: the lookup was not sent and is tried again after `MIN_GAP`.
    pub fn not_sent(&mut self) {
        self.in_flight = false;
        self.wanted = true;
        // The periodic lookup that was due must not make it due again at once.
        self.next_periodic = self.next_periodic.max(self.gap_until);
    }

    /// The answer to the lookup in flight, given the addresses in use.
    pub fn answered(
        &mut self,
        current: &[SocketAddr],
        result: Result<Vec<SocketAddr>, String>,
        now: Instant,
    ) -> Verdict {
        self.in_flight = false;
        self.next_periodic = now + REFRESH_EVERY;
        match result {
            Err(_) => {
                let first = !self.failing;
                self.failing = true;
                Verdict::Failed { first }
            }
            Ok(addrs) => {
                let changed = (!same_set(current, &addrs)).then_some(addrs);
                if std::mem::take(&mut self.failing) {
                    Verdict::Recovered(changed)
                } else {
                    changed.map_or(Verdict::Same, Verdict::Changed)
                }
            }
        }
    }
}

/// Whether two address lists hold the same addresses, whatever their order (DNS servers
/// rotate round-robin records; that is no change).
pub fn same_set(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

/// What the worker thread is asked to do.
pub enum Task {
    Lookup {
        host: String,
        port: u16,
    },
    /// Read the files of the configuration again (SIGHUP).
    Reload(Box<ReloadSource>),
}

/// What the worker thread hands back.
pub enum Done {
    Lookup { host: String, port: u16, result: Result<Vec<SocketAddr>, String> },
    Reload(Result<Box<Reloaded>, String>),
}

/// The helper thread and the two channels to it. Dropping it ends the thread (its task
/// channel closes); a lookup still running then finishes in the background.
pub struct Worker {
    tasks: SyncSender<Task>,
    done: Receiver<Done>,
}

impl Worker {
    /// Starts the thread; each finished task is sent back and announced with `waker`.
    pub fn spawn(mut lookup: Box<dyn Lookup>, waker: Arc<mio::Waker>) -> std::io::Result<Worker> {
        let (tasks, task_rx) = mpsc::sync_channel::<Task>(QUEUE);
        // Unbounded in type, bounded in fact: each EL has at most one lookup in flight and
        // there is at most one reload at a time, so at most that many answers ever wait here.
        let (done_tx, done) = mpsc::channel::<Done>();
        std::thread::Builder::new().name("resolver".into()).spawn(move || {
            while let Ok(task) = task_rx.recv() {
                let done = match task {
                    Task::Lookup { host, port } => {
                        let result = lookup.lookup(&host, port);
                        Done::Lookup { host, port, result }
                    }
                    Task::Reload(source) => Done::Reload(
                        config::read_reloadable(&source).map(Box::new).map_err(|e| e.to_string()),
                    ),
                };
                if done_tx.send(done).is_err() {
                    return;
                }
                // A failed wake leaves the answer queued until the next poll timeout (≤ 100 ms).
                let _ = waker.wake();
            }
        })?;
        Ok(Worker { tasks, done })
    }

    /// Queues a task; false when the queue is full or the thread is gone.
    pub fn ask(&self, task: Task) -> bool {
        match self.tasks.try_send(task) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// The tasks finished since the last call.
    pub fn finished(&self) -> Vec<Done> {
        self.done.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn refresh(now: Instant) -> Refresh {
        Refresh::new("el.test".into(), 8551, now)
    }

    #[test]
    fn lookup_targets_skip_ip_literals() {
        let cases = [
            ("http://localhost:8551/", Some(("localhost", 8551))),
            ("http://el-1.example:80/engine", Some(("el-1.example", 80))),
            ("https://el:443/", Some(("el", 443))),
            ("http://127.0.0.1:8551/", None),
            ("http://[::1]:8551/", None),
        ];
        for (url, want) in cases {
            let want = want.map(|(h, p): (&str, u16)| (h.to_string(), p));
            assert_eq!(lookup_target(url), want, "{url}");
        }
    }

    #[test]
    fn a_name_is_looked_up_again_every_period_one_at_a_time() {
        let t0 = Instant::now();
        let mut r = refresh(t0);
        assert!(!r.take_due(t0), "not at once: start-up just resolved it");
        assert!(!r.take_due(t0 + REFRESH_EVERY - Duration::from_millis(1)));
        assert!(r.take_due(t0 + REFRESH_EVERY));
        assert_eq!(r.due_at(), None, "one lookup in flight at a time");
        r.connect_failed();
        assert!(!r.take_due(t0 + REFRESH_EVERY * 3), "still in flight: no second one");
        let t1 = t0 + REFRESH_EVERY * 3;
        let current = [addr("10.0.0.1:8551")];
        assert_eq!(r.answered(&current, Ok(current.to_vec()), t1), Verdict::Same);
        // The failure noted while the first was in flight asks again, MIN_GAP after it was sent.
        assert_eq!(r.due_at(), Some(t0 + REFRESH_EVERY + MIN_GAP));
        assert!(r.take_due(t1));
        assert_eq!(r.answered(&current, Ok(current.to_vec()), t1), Verdict::Same);
        assert_eq!(r.due_at(), Some(t1 + REFRESH_EVERY), "then the period starts from the answer");
    }

    #[test]
    fn a_failed_connection_asks_at_once_but_at_most_once_per_gap() {
        let t0 = Instant::now();
        let mut r = refresh(t0);
        r.connect_failed();
        assert!(r.take_due(t0), "the first failure is looked into at once");
        let current = [addr("10.0.0.1:8551")];
        r.answered(&current, Ok(current.to_vec()), t0 + Duration::from_millis(5));
        r.connect_failed();
        assert!(!r.take_due(t0 + Duration::from_millis(100)), "the EL is just down: wait");
        assert!(r.take_due(t0 + MIN_GAP));
    }

    #[test]
    fn a_changed_address_is_reported_and_order_alone_is_no_change() {
        let t0 = Instant::now();
        let mut r = refresh(t0);
        let current = [addr("10.0.0.1:8551"), addr("10.0.0.2:8551")];
        assert!(r.take_due(t0 + REFRESH_EVERY));
        let rotated = vec![addr("10.0.0.2:8551"), addr("10.0.0.1:8551")];
        assert_eq!(r.answered(&current, Ok(rotated), t0), Verdict::Same);
        assert!(r.take_due(t0 + REFRESH_EVERY));
        let moved = vec![addr("10.0.0.7:8551")];
        assert_eq!(r.answered(&current, Ok(moved.clone()), t0), Verdict::Changed(moved));
    }

    #[test]
    fn lookup_failures_are_reported_once_per_episode() {
        let t0 = Instant::now();
        let mut r = refresh(t0);
        let current = [addr("10.0.0.1:8551")];
        let mut verdicts = Vec::new();
        let mut now = t0;
        for result in [
            Err("no such host".to_string()),
            Err("no such host".to_string()),
            Ok(current.to_vec()),
            Err("timeout".to_string()),
            Ok(vec![addr("10.0.0.9:8551")]),
        ] {
            now += REFRESH_EVERY;
            assert!(r.take_due(now));
            verdicts.push(r.answered(&current, result, now));
        }
        assert_eq!(
            verdicts,
            vec![
                Verdict::Failed { first: true },
                Verdict::Failed { first: false },
                Verdict::Recovered(None),
                Verdict::Failed { first: true },
                Verdict::Recovered(Some(vec![addr("10.0.0.9:8551")])),
            ]
        );
    }

    #[test]
    fn a_full_queue_asks_again_after_the_gap() {
        let t0 = Instant::now();
        let mut r = refresh(t0);
        let due = t0 + REFRESH_EVERY;
        assert!(r.take_due(due));
        r.not_sent();
        assert_eq!(r.due_at(), Some(due + MIN_GAP));
    }

    /// A lookup the test scripts, to check the thread's plumbing without DNS.
    struct Table(Vec<(String, Result<Vec<SocketAddr>, String>)>);

    impl Lookup for Table {
        fn lookup(&mut self, host: &str, _port: u16) -> Result<Vec<SocketAddr>, String> {
            self.0.iter().find(|(h, _)| h == host).map_or(Err("unknown".into()), |(_, r)| r.clone())
        }
    }

    #[test]
    fn the_worker_answers_through_the_waker() {
        let mut poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).expect("waker"));
        let table = Table(vec![("el.test".into(), Ok(vec![addr("10.0.0.3:8551")]))]);
        let worker = Worker::spawn(Box::new(table), waker).expect("thread");
        assert!(worker.ask(Task::Lookup { host: "el.test".into(), port: 8551 }));
        let mut events = mio::Events::with_capacity(4);
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while done.is_empty() && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100))).expect("poll");
            done.extend(worker.finished());
        }
        match done.as_slice() {
            [Done::Lookup { host, port: 8551, result: Ok(addrs) }] => {
                assert_eq!(host, "el.test");
                assert_eq!(addrs, &vec![addr("10.0.0.3:8551")]);
            }
            _ => panic!("expected one lookup answer"),
        }
    }
}
