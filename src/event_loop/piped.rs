//! A relayed answer moved from a plain-TCP execution client's socket to its beacon node's
//! through a kernel pipe (`shell::pipe`, splice(2)), never copied into the proxy (issue 15: a
//! 13 MB getPayload answer read into the proxy and written out again cost one thread 7–9 ms
//! of copies, more than fetching it directly took).
//!
//! Once everything of a relayed answer (`answers::offer_relay`) that arrived so far is written
//! to the beacon node (`Downstream::pipe_ready`), the rest of its body moves socket → pipe →
//! socket, driven by the execution client's readable events (`up_read`), the beacon node's
//! writable ones (`on_flushed`) and each pass's end (`pipe_check`). No more than the answer's
//! bytes left are ever taken from the client's socket, so its connection stays in step and is
//! reused. One answer is piped at a time; another one, an `https://` client, or a system
//! without splice relays by copying as before.
//!
//! Bounds: the pipe holds at most `PIPE_BYTES` (kernel memory, within the answer's length that
//! the beacon node's connection already counts as queued); while it holds bytes the beacon
//! node does not take, that connection's `--write-timeout` runs (`Downstream::wrote`); the
//! client's side is bounded by the call's timeout, as when copying. A failure keeps the
//! relay's meaning (`answers::relay_broke`): the beacon node gets what reached the pipe, then
//! its connection closes. A beacon node that goes away ends the piping; the client's answer is
//! then read on and dropped by the copying relay, keeping its connection in step.

use std::io;
use std::time::Instant;

use super::Proxy;
use crate::core::exchange::{ExchangeRef, Reply};
use crate::shell::pipe::Pipe;
use crate::upstream::{Failure, Outcome};

/// The most a relay's pipe holds: the default `pipe-max-size` an unprivileged process may ask
/// for, sixteen times the kernel's default pipe, so that each splice moves up to 1 MiB.
const PIPE_BYTES: usize = 1 << 20;

/// The answer being piped: from connection `slot` of client `up`, to the beacon node `to`,
/// for `exchange`.
pub(super) struct Piped {
    up: usize,
    slot: usize,
    to: Reply,
    exchange: ExchangeRef,
    pipe: Pipe,
    /// No more bytes come from the client: its answer was taken whole, or it failed.
    el_done: bool,
}

impl Proxy {
    /// Before reading connection `slot` of client `up`: whether its bytes go through the
    /// pipe now (then `pipe_pump` moved them, and its outcome, if any, is returned) — it is
    /// the piped answer's, or it relays an answer that may start piping now.
    pub(super) fn pipe_read(&mut self, up: usize, slot: usize, now: Instant) -> Option<Option<Outcome>> {
        match &self.piped {
            Some(p) if (p.up, p.slot) == (up, slot) && !p.el_done => return Some(self.pipe_pump(now)),
            Some(_) => return None,
            None => {}
        }
        if !self.pipe_supported || self.el_sockets.plain(up, slot).is_none() {
            return None;
        }
        let conn = self.ups.get(up)?.conns.get(slot)?.as_ref().filter(|c| !c.dead)?;
        conn.relay_left().filter(|left| *left > 0)?;
        let job = conn.job.as_ref()?;
        let (exchange, el) = (job.exchange?, job.target);
        let to = self.exchanges.get(exchange)?.relay.filter(|r| r.el == el)?.to;
        // What was appended and not written yet goes first.
        if self.relay_unflushed.is_some_and(|(s, _)| s == to.slot) {
            self.relay_unflushed = None;
            self.down_flush(to.slot, now);
        }
        let down = self.bn.get(to.slot).filter(|d| d.serial == to.serial)?;
        down.pipe_ready(exchange)?;
        let pipe = match Pipe::new(PIPE_BYTES) {
            Ok(pipe) => pipe,
            // No pipes here at all: copied from now on, said once.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                log::info!("relayed answers are copied, not piped: no pipe ({e})");
                self.pipe_supported = false;
                return None;
            }
            // Out of descriptors or memory for now: this answer is copied.
            Err(e) => {
                log::debug!("a relayed answer is copied, not piped: no pipe ({e})");
                return None;
            }
        };
        log::debug!("{}: piping the rest of its relayed answer", self.ups[up].name());
        self.piped = Some(Piped { up, slot, to, exchange, pipe, el_done: false });
        Some(self.pipe_pump(now))
    }

    /// A beacon node connection was flushed: the piped answer's bytes may go on to it.
    pub(super) fn pipe_flushed(&mut self, slot: usize, now: Instant) {
        let Some(p) = self.piped.as_ref().filter(|p| p.to.slot == slot) else { return };
        let up = p.up;
        if let Some(outcome) = self.pipe_pump(now) {
            self.on_outcome(up, outcome, now);
        }
    }

    /// At each pass's end: a client connection that failed or timed out elsewhere gives no
    /// more; a beacon node that went away ends the piping (the client's answer is then read
    /// on and dropped); what the pipe holds goes on.
    pub(super) fn pipe_check(&mut self, now: Instant) {
        let Some(p) = self.piped.as_mut() else { return };
        let (up, slot) = (p.up, p.slot);
        let relaying = self.ups.get(up).and_then(|u| u.conns.get(slot)?.as_ref()).is_some_and(|c| {
            !c.dead && c.relay_left().is_some() && c.job.as_ref().and_then(|j| j.exchange) == Some(p.exchange)
        });
        if !relaying {
            p.el_done = true;
        }
        if let Some(outcome) = self.pipe_pump(now) {
            self.on_outcome(up, outcome, now);
        }
        if self.piped.is_none() && relaying {
            // The beacon node went away with bytes still to come: read them on (and drop them).
            if self
                .ups
                .get(up)
                .and_then(|u| u.conns.get(slot)?.as_ref())
                .is_some_and(|c| c.relay_left().is_some())
            {
                self.up_read(up, slot, now);
            }
        }
    }

    /// Moves the piped answer on until neither side takes more: the pipe into the beacon
    /// node's socket, the client's socket into the pipe (never past the answer's end). Returns
    /// the client connection's outcome when its answer ended or it failed.
    fn pipe_pump(&mut self, now: Instant) -> Option<Outcome> {
        let mut outcome = None;
        loop {
            // Every way out returns `outcome`: a job answered or failed above is never dropped.
            let Some(p) = self.piped.as_mut() else { return outcome };
            let (to, exchange) = (p.to, p.exchange);
            if !self.bn.get(to.slot).is_some_and(|d| d.serial == to.serial && !d.dead) {
                log::debug!("the beacon node of a piped answer has gone; the rest is read and dropped");
                self.piped = None;
                return outcome;
            }
            let mut moved = false;
            if p.pipe.held() > 0 {
                let drained = match self.bn.socket(to.slot) {
                    Some(socket) => p.pipe.drain_to(socket, usize::MAX),
                    None => Err(io::ErrorKind::NotConnected.into()),
                };
                let Some(down) = self.bn.get_mut(to.slot) else { return outcome };
                match drained {
                    Ok(n) => {
                        moved |= n > 0;
                        self.metrics.bytes_out += n as u64;
                        self.metrics.piped_bytes += n as u64;
                        down.wrote(n, now);
                        if self.holding && n > 0 && down.queued_bytes() == 0 {
                            // The large answer went out whole: the copies held for it may go.
                            self.release_held(now);
                        }
                        if n > 0 {
                            // Drain it to `WouldBlock` (or empty) before filling it again.
                            continue;
                        }
                    }
                    // The beacon node takes no more for now: its write deadline runs.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        down.wrote(0, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        down.write_failed();
                        continue;
                    }
                }
            }
            let Some(p) = self.piped.as_mut() else { return outcome };
            if !p.el_done {
                let conn = self.ups.get_mut(p.up).and_then(|u| u.conns.get_mut(p.slot)?.as_mut());
                let left = conn.as_ref().filter(|c| !c.dead).and_then(|c| c.relay_left());
                match (conn, left) {
                    (Some(conn), Some(left)) if left > 0 => {
                        let max = usize::try_from(left).unwrap_or(usize::MAX);
                        let filled = match self.el_sockets.plain(p.up, p.slot) {
                            Some(socket) => p.pipe.fill_from(socket, max),
                            None => Err(io::ErrorKind::NotConnected.into()),
                        };
                        match filled {
                            Ok(0) => {
                                p.el_done = true;
                                outcome = Some(conn.on_eof(now));
                            }
                            Ok(n) => {
                                moved = true;
                                if let Some(down) = self.bn.get_mut(to.slot) {
                                    down.stream_piped(exchange, n);
                                }
                                if let Outcome::Relayed { last: true, .. } = conn.relay_taken(n) {
                                    p.el_done = true;
                                    outcome = Some(conn.end_relay(false, now));
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => {
                                p.el_done = true;
                                outcome = Some(conn.fail(Failure::Reset));
                            }
                        }
                    }
                    _ => p.el_done = true,
                }
            }
            let Some(p) = self.piped.as_ref() else { return outcome };
            if p.el_done && p.pipe.held() == 0 {
                self.piped = None;
                // The answers behind it may go now.
                self.down_flush(to.slot, now);
                return outcome;
            }
            if !moved {
                return outcome;
            }
        }
    }
}
