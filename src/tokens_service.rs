//! `jwt-tokens-service`: a small program of its own on the shell's poll loop
//! (`shell::poll_loop`, which accepts, reads, writes, fires deadlines and reaps) and the beacon
//! node connection's state machine (`downstream`); what is its own is what the bytes mean
//! (`feed`, `answer`). It answers `GET /tokens/…` with a fresh token per configured secret.
//! It forwards nothing and shares no state with the proxy. `answer` knows no sockets; `now`
//! (Unix seconds) is passed in.
//!
//! The bounds are the proxy's: `--max-connections`' default cap with the same hysteresis,
//! requests read through the same capped `RequestReader` (GET and HEAD answered at the head,
//! whatever body nginx's `auth_request` announces), pipelined answers bounded with real
//! backpressure, and the read, idle and write deadlines of a beacon node connection.

use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mio::{Poll, Token};

use crate::config::{Config, TokensServiceConfig};
use crate::downstream::{Downstream, Outgoing, Slot, Timeouts};
use crate::http::{self, Limits, RequestEvent};
use crate::jwt::TokenCache;
use crate::policy;
use crate::shell::bn_sockets;
use crate::shell::poll_loop::{self, BnSide, Service};
use crate::shell::Stopper;

const LISTENER: Token = Token(0);
/// Largest request head read; a tokens request has no body worth reading.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024;
const SCRATCH: usize = 16 * 1024;

/// The answer of `jwt-tokens-service`: `GET /tokens/…` gets a fresh token per entry as
/// `Authorization-<name>: Bearer <token>` (what nginx's `auth_request` copies into
/// `$upstream_http_authorization_<name>`); anything else is 404, as in the Go service.
pub fn answer(tokens: &mut [(String, TokenCache)], head: &http::RequestHead, now: u64) -> Outgoing {
    let (keep_alive, minor) = (head.keep_alive, head.minor);
    if !matches!(head.method.as_str(), "GET" | "HEAD") || !head.path.starts_with("/tokens/") {
        return Outgoing::answer(
            404,
            Some(b"text/plain"),
            b"404 page not found\n".to_vec(),
            keep_alive,
            minor,
        );
    }
    let names: Vec<Vec<u8>> =
        tokens.iter().map(|(name, _)| format!("Authorization-{name}").into_bytes()).collect();
    let values: Vec<Vec<u8>> =
        tokens.iter_mut().map(|(_, cache)| cache.header_value(now).as_bytes().to_vec()).collect();
    let extra: Vec<(&[u8], &[u8])> =
        names.iter().zip(&values).map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
    let mut out = Outgoing::default();
    http::write_response_head_with(&mut out.head, 200, None, 0, keep_alive, minor, &extra);
    out.close = !keep_alive;
    out
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The running service: its listener and connections (`BnSide`), and the tokens.
pub struct TokensService {
    poll: Poll,
    bn: BnSide,
    tokens: Vec<(String, TokenCache)>,
}

impl TokensService {
    /// Binds the listener; nothing is accepted until `run`.
    pub fn bind(t: &TokensServiceConfig) -> io::Result<TokensService> {
        // The proxy's defaults for the connection cap and the deadlines.
        let defaults = Config::serving_only(t);
        let poll = Poll::new()?;
        let timeouts = Timeouts {
            read: defaults.read_timeout,
            idle: defaults.idle_timeout,
            write: defaults.write_timeout,
        };
        let mut bn = BnSide::new(&poll, timeouts, SCRATCH)?;
        bn.listen(LISTENER, t.listen, defaults.max_connections, "", log::Level::Warn)?;
        let tokens = t
            .entries
            .iter()
            .map(|(name, secret)| (name.clone(), TokenCache::new(secret.clone(), t.client_id.clone())))
            .collect();
        Ok(TokensService { poll, bn, tokens })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.bn.local_addr(LISTENER)
    }

    /// Serves until `stopper` asks to stop.
    pub fn run(&mut self, stopper: &dyn Stopper) -> io::Result<()> {
        poll_loop::run(self, stopper)
    }

    /// Parses `input` into requests and answers each at once, until the pipeline is full.
    fn feed(&mut self, slot: usize, input: &[u8], now: Instant) {
        let Some(down) = self.bn.get_mut(slot) else { return };
        let mut pos = 0;
        while pos < input.len() && !down.no_more_requests {
            if down.backpressured() {
                down.stash(&input[pos..]);
                break;
            }
            let step = down.reader.advance(&input[pos..]);
            pos += step.consumed;
            match step.event {
                Some(Ok(RequestEvent::Continue)) => down.push(Slot::Ready(Outgoing::continue_100())),
                Some(Ok(RequestEvent::Request(req))) => {
                    if !req.head.keep_alive {
                        down.no_more_requests = true;
                    }
                    down.push(Slot::Ready(answer(&mut self.tokens, &req.head, unix_now())));
                }
                // Heads are not held here: there is no token to check and no budget.
                Some(Ok(RequestEvent::Head)) => {}
                Some(Err(e)) => {
                    log::debug!("bad request from {}: {e}", down.peer);
                    let body = policy::error_body(None, -32600, &e.to_string());
                    down.answer_early(e.status(), body, 1);
                }
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        down.after_read(now);
    }
}

impl Service for TokensService {
    fn poll(&mut self) -> &mut Poll {
        &mut self.poll
    }

    fn bn(&mut self) -> &mut BnSide {
        &mut self.bn
    }

    fn before_poll(&mut self, stopper: &dyn Stopper, _now: Instant) -> bool {
        if stopper.stop_requested() {
            log::info!("stopping");
            return false;
        }
        true
    }

    fn new_connection(
        &mut self,
        _listener: Token,
        serial: u64,
        peer: SocketAddr,
        now: Instant,
    ) -> Downstream {
        let limits = Limits { max_head: MAX_HEAD, max_body: MAX_BODY };
        let mut down = Downstream::new(serial, peer, limits, now);
        down.reader.answer_get_at_head();
        down
    }

    fn on_bytes(&mut self, slot: usize, input: &[u8], now: Instant) {
        self.feed(slot, input, now);
    }
}

/// Tokens below this are the listener's; connections' are `bn_sockets::BASE` and above.
const _: () = assert!(LISTENER.0 < bn_sockets::BASE);
