//! The answers of `jwt-tokens-service`: `GET /tokens/…` gets a fresh token per configured
//! secret. Knows no sockets; `now` (Unix seconds) is passed in.

use crate::downstream::Outgoing;
use crate::http;
use crate::jwt::TokenCache;

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
