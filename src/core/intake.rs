//! Intake: the first decisions about one request read from a beacon node, before any
//! execution client is involved: which kind of route it takes (an admin GET, a call to
//! forward, a refusal) and whether it carries a valid token.
//!
//! Pure functions of the request head, the configuration and the wall-clock seconds passed in;
//! it knows no connections, sockets or clocks.

use std::net::IpAddr;

use crate::beacons::{self, AuthError, Authenticated, Hints, Keys};
use crate::http::RequestHead;
use crate::jwt;

/// What `--metrics-addr` answers to anything but its own paths.
pub const METRICS_ONLY_404: &[u8] = b"only GET /metrics, /status, /healthz and /readyz are served here\n";

/// Where a request goes, by its method and the listener it came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD: `/metrics`, `/status`, `/healthz`, `/readyz`, or the empty health probe.
    Admin,
    /// Anything but GET or HEAD on `--metrics-addr`: 404.
    NotHere,
    /// A JSON-RPC call, to check, scan and forward.
    Call,
    /// Any other method on the main listener: 405.
    NotAllowed,
}

/// The route of a request with `method`, read on the metrics listener or not.
pub fn route(method: &str, metrics_only: bool) -> Route {
    match method {
        "GET" | "HEAD" => Route::Admin,
        _ if metrics_only => Route::NotHere,
        "POST" => Route::Call,
        _ => Route::NotAllowed,
    }
}

/// Who sent a request (its token's `id` claim, its path, its token's `clv` claim, its first
/// `X-Forwarded-For` address or `peer`: see `beacons`), and whether its token is valid for
/// the secret that identity selects (`beacons::authenticate`).
pub fn authenticate(
    head: &RequestHead,
    peer: IpAddr,
    keys: &Keys,
    unix_now: u64,
) -> Result<Authenticated, AuthError> {
    let token = head.header("authorization").and_then(jwt::bearer_token);
    let hints = Hints { claims: None, path: &head.path, forwarded_for: head.header("x-forwarded-for"), peer };
    beacons::authenticate(token, hints, keys, unix_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_method_and_the_listener() {
        let table = [
            ("GET", false, Route::Admin),
            ("HEAD", true, Route::Admin),
            ("POST", false, Route::Call),
            ("POST", true, Route::NotHere),
            ("PUT", true, Route::NotHere),
            ("PUT", false, Route::NotAllowed),
            ("DELETE", false, Route::NotAllowed),
        ];
        for (method, metrics_only, want) in table {
            assert_eq!(route(method, metrics_only), want, "{method} metrics_only={metrics_only}");
        }
    }
}
