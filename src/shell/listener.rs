//! One listening socket with its own connection cap and accept hysteresis: accepting stops
//! at the cap and resumes below 90 % of it (sozu's choice), so a crowd at the limit does not
//! make the loop flap between accepting and refusing. An accept error (out of file
//! descriptors, say) pauses this listener for `ACCEPT_PAUSE` instead of spinning, and is said
//! once per episode. Each listener counts only its own connections: `--metrics-addr`'s
//! never count against the beacon nodes' `--max-connections`, so `/metrics` answers exactly
//! when the beacon node side is saturated.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// After an accept error, this listener waits this long before it tries again.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub struct Listener {
    socket: TcpListener,
    /// For the log: "" for the beacon nodes' listener, "metrics " for `--metrics-addr`.
    label: &'static str,
    /// How loud reaching the cap is (a warning for beacon nodes, debug for metrics).
    full_level: log::Level,
    cap: usize,
    open: usize,
    accepting: bool,
    paused_until: Option<Instant>,
    failing: bool,
    /// Closed for good (a stop was requested): accepting never resumes.
    stopped: bool,
}

impl Listener {
    /// Binds `addr` and registers it once (edge-triggered READABLE) under `token`.
    pub fn bind(
        registry: &Registry,
        addr: SocketAddr,
        token: Token,
        cap: usize,
        label: &'static str,
        full_level: log::Level,
    ) -> io::Result<Listener> {
        let mut socket = TcpListener::bind(addr)?;
        registry.register(&mut socket, token, Interest::READABLE)?;
        Ok(Listener {
            socket,
            label,
            full_level,
            cap,
            open: 0,
            accepting: true,
            paused_until: None,
            failing: false,
            stopped: false,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The next connection waiting, while below the cap and not paused; None when there is
    /// none (or at the cap, or paused). The caller adopts it and calls `opened` if it did.
    pub fn accept(&mut self, now: Instant) -> Option<(TcpStream, SocketAddr)> {
        while self.accepting && !self.stopped && self.paused_until.is_none() {
            if self.open >= self.cap {
                log::log!(
                    self.full_level,
                    "{} {}connections open: not accepting until some close",
                    self.open,
                    self.label
                );
                self.accepting = false;
                return None;
            }
            match self.socket.accept() {
                Ok(accepted) => {
                    if self.failing {
                        log::info!("{}accepting connections again", self.label);
                        self.failing = false;
                    }
                    return Some(accepted);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or similar: the pending connection
                    // stays queued, and retrying at once would spin, so wait a moment. The
                    // first failure of an episode is a warning; the retries are not.
                    if self.failing {
                        log::debug!("{}accept failed again: {e}", self.label);
                    } else {
                        log::warn!(
                            "{}accept failed: {e}; retrying every {ACCEPT_PAUSE:?} until it works",
                            self.label
                        );
                        self.failing = true;
                    }
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    return None;
                }
            }
        }
        None
    }

    /// A connection from this listener was adopted…
    pub fn opened(&mut self) {
        self.open += 1;
    }

    /// …and one was closed.
    pub fn closed(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    pub fn open(&self) -> usize {
        self.open
    }

    /// Whether accepting should be tried again now: the pause after an error is over, or the
    /// listener had stopped at its cap and is below 90 % of it. An edge-triggered listener
    /// would not say again that connections are waiting, so the caller accepts at once.
    pub fn resume(&mut self, now: Instant) -> bool {
        if self.stopped {
            return false;
        }
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            return true;
        }
        if !self.accepting && self.paused_until.is_none() && self.open * 10 < self.cap * 9 {
            self.accepting = true;
            return true;
        }
        false
    }

    /// When the pause after an accept error ends.
    pub fn deadline(&self) -> Option<Instant> {
        self.paused_until.filter(|_| !self.stopped)
    }

    /// Stops accepting for good (a stop was requested): the socket is deregistered.
    pub fn stop(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.socket);
        self.stopped = true;
        self.accepting = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(cap: usize) -> (mio::Poll, Listener) {
        let poll = mio::Poll::new().expect("poll");
        let addr = "127.0.0.1:0".parse().expect("address");
        let l = Listener::bind(poll.registry(), addr, Token(0), cap, "", log::Level::Debug).expect("bind");
        (poll, l)
    }

    #[test]
    fn accepting_stops_at_the_cap_and_resumes_below_ninety_percent() {
        let (_poll, mut l) = listener(10);
        let now = Instant::now();
        for _ in 0..10 {
            l.opened();
        }
        assert!(l.accept(now).is_none(), "at the cap");
        assert!(!l.resume(now), "still at the cap");
        l.closed();
        assert!(!l.resume(now), "9 of 10 open is not below 90 %");
        l.closed();
        assert!(l.resume(now), "8 of 10 open");
        assert!(!l.resume(now), "resumed once");
    }

    #[test]
    fn a_stopped_listener_never_resumes() {
        let (poll, mut l) = listener(10);
        let now = Instant::now();
        for _ in 0..10 {
            l.opened();
        }
        assert!(l.accept(now).is_none());
        l.stop(poll.registry());
        for _ in 0..10 {
            l.closed();
        }
        assert!(!l.resume(now));
        assert!(l.accept(now).is_none());
    }

    #[test]
    fn a_waiting_connection_is_accepted() {
        let (_poll, mut l) = listener(10);
        let _client = std::net::TcpStream::connect(l.local_addr().expect("address")).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(5);
        // The kernel queues the connection at once; a bounded poll covers a loaded machine.
        while l.accept(Instant::now()).is_none() {
            assert!(Instant::now() < deadline, "no connection accepted");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
