//! Beacon nodes (BNs): who a request comes from, whether its token is that BN's, which BN the
//! execution clients follow, and the batches that must not slip past that rule.
//!
//! Owns: the identity order (`identify`), the per-BN secret rule (`authenticate`,
//! `parse_beacon_secrets`), the best-BN rule that cannot be hijacked (`BestBeacon`: plausible
//! timestamps, switches confirmed by an EL's answer) and the batch check (`check_batch`).
//! Knows no sockets, no HTTP beyond the values of a few header fields and the path, and never
//! reads the clock: `now` (monotonic) and `unix_now` (wall clock seconds) are passed in.
//!
//! Identity, in this order:
//! 1. the token's `id` claim (the Engine API authentication spec's client id);
//! 2. the path the operator gave the BN (`--execution-endpoint http://proxy:25590/bn-a` →
//!    `bn-a`): exactly one non-empty segment of `A-Z a-z 0-9 . _ -`, at most
//!    `MAX_IDENTITY_LEN` bytes, optionally followed by one `/` and a query; `.` and `..` do not
//!    count; `/`, `/a/b` and anything else give no path identity;
//! 3. the token's `clv` claim (client version, e.g. `Lodestar/v1.20.0`). It comes after the path
//!    because it names a client release, not a BN: two BNs of one release on one host share it,
//!    and only the operator's path (or `id`) tells them apart. Alone it still tells a Lodestar
//!    from a Lighthouse on one host, which the address cannot;
//! 4. the first `X-Forwarded-For` address, when it is an IP address (anything else is ignored,
//!    so a header cannot choose a name);
//! 5. the peer's IP address.
//!
//! Claims and paths are cut to `MAX_IDENTITY_LEN` bytes and every byte outside printable ASCII
//! (and `"`, `\`) becomes `_`, so an identity is safe in a log line and a metric label.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::answer_policy::Status;
use crate::jwt::{self, Claims, JwtError, Secret};
use crate::policy::{self, Class};

/// Longest identity, in bytes: ample for a client id, a release string or an IPv6 address,
/// and short enough for a metric label.
pub const MAX_IDENTITY_LEN: usize = 64;

/// Most entries in a `--beacon-jwt-secrets` file: secrets are searched linearly per request.
pub const MAX_BEACON_SECRETS: usize = 256;

/// Where an identity came from, for logs and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    IdClaim,
    Path,
    ClvClaim,
    ForwardedFor,
    Peer,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::IdClaim => "id claim",
            Source::Path => "path",
            Source::ClvClaim => "clv claim",
            Source::ForwardedFor => "X-Forwarded-For",
            Source::Peer => "peer address",
        }
    }
}

/// A BN's name, safe for logs and labels, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub source: Source,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What a request says about its sender.
#[derive(Debug, Clone, Copy)]
pub struct Hints<'a> {
    /// The token's claims (checked or not: see `authenticate`).
    pub claims: Option<&'a Claims>,
    /// The request target, as on the request line.
    pub path: &'a str,
    /// The raw value of the `X-Forwarded-For` header.
    pub forwarded_for: Option<&'a [u8]>,
    pub peer: IpAddr,
}

/// The identity of a request's sender, by the order in the module header.
pub fn identify(hints: &Hints) -> Identity {
    let claim = |pick: fn(&Claims) -> Option<&String>| hints.claims.and_then(pick).and_then(|c| sanitize(c));
    if let Some(name) = claim(|c| c.id.as_ref()) {
        return Identity { name, source: Source::IdClaim };
    }
    if let Some(name) = path_name(hints.path) {
        return Identity { name: name.to_owned(), source: Source::Path };
    }
    if let Some(name) = claim(|c| c.clv.as_ref()) {
        return Identity { name, source: Source::ClvClaim };
    }
    if let Some(ip) = hints.forwarded_for.and_then(forwarded_ip) {
        return Identity { name: ip.to_string(), source: Source::ForwardedFor };
    }
    Identity { name: hints.peer.to_string(), source: Source::Peer }
}

/// The BN name in a request path (see the module header), or None.
pub fn path_name(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or_default();
    let segment = path.strip_prefix('/')?;
    let segment = segment.strip_suffix('/').unwrap_or(segment);
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    let valid = !segment.is_empty()
        && segment.len() <= MAX_IDENTITY_LEN
        && segment.bytes().all(safe)
        && segment != "."
        && segment != "..";
    valid.then_some(segment)
}

/// A claim cut to `MAX_IDENTITY_LEN` bytes with unsafe characters replaced; None when empty.
pub fn sanitize(text: &str) -> Option<String> {
    let text = text.trim();
    let safe = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
    let out: String = text.chars().map(|c| if safe(c) { c } else { '_' }).take(MAX_IDENTITY_LEN).collect();
    (!out.is_empty()).then_some(out)
}

/// The first `X-Forwarded-For` entry when it is an IP address (or IP and port).
fn forwarded_ip(value: &[u8]) -> Option<IpAddr> {
    let first = std::str::from_utf8(value).ok()?.split(',').next()?.trim();
    first.parse::<IpAddr>().ok().or_else(|| first.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The secrets a BN's token may be signed with.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// `--jwt-secret`.
    pub shared: Option<Secret>,
    /// `--beacon-jwt-secrets`: identity name → that BN's own secret.
    pub per_beacon: Vec<(String, Secret)>,
}

impl Keys {
    /// Whether requests need a token at all.
    pub fn required(&self) -> bool {
        self.shared.is_some() || !self.per_beacon.is_empty()
    }

    fn own(&self, name: &str) -> Option<&Secret> {
        self.per_beacon.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

/// Which secret verified a request's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The BN's own entry in `--beacon-jwt-secrets`.
    Own,
    /// `--jwt-secret`.
    Shared,
    /// No secret is configured: nothing was checked.
    Unchecked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Identity,
    pub key: Key,
}

/// Why a request was refused (the 401's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    MissingToken,
    /// The identity has no entry of its own and there is no `--jwt-secret`.
    NoSecret(Identity),
    /// The secret the identity selects did not verify the token.
    Token {
        identity: Identity,
        key: Key,
        error: JwtError,
    },
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::MissingToken => f.write_str("missing bearer token"),
            AuthError::NoSecret(id) => {
                write!(f, "no secret for beacon node {id} ({}) and no --jwt-secret", id.source.label())
            }
            AuthError::Token { identity, key, error } => {
                let which = if *key == Key::Own { "its own secret" } else { "--jwt-secret" };
                write!(
                    f,
                    "{error} (beacon node {identity} by {}, checked with {which})",
                    identity.source.label()
                )
            }
        }
    }
}

/// Checks a request's token and says which BN sent it.
///
/// The rule, so that one leaked BN secret cannot impersonate another: the identity is found
/// first, from the token's claims read without checking them (they only select the secret);
/// then the secret that identity selects must verify the token — the identity's own entry in
/// `--beacon-jwt-secrets` when it has one, otherwise `--jwt-secret`. So a token claiming
/// `"id":"bn-a"`, or sent to path `/bn-a`, is accepted only when signed with bn-a's secret, and
/// a name that has an entry can never be reached with the shared secret, whichever source
/// (claim, path, header or address) produced it. A BN with its own secret must therefore send
/// an `id` claim or use its path. With no secret configured at all, nothing is checked and the
/// claims only name the sender.
pub fn authenticate(
    token: Option<&[u8]>,
    hints: Hints,
    keys: &Keys,
    unix_now: u64,
) -> Result<Authenticated, AuthError> {
    let claims = token.and_then(jwt::peek_claims);
    let identity = identify(&Hints { claims: claims.as_ref(), ..hints });
    if !keys.required() {
        return Ok(Authenticated { identity, key: Key::Unchecked });
    }
    let token = token.ok_or(AuthError::MissingToken)?;
    let (secret, key) = match (keys.own(&identity.name), keys.shared.as_ref()) {
        (Some(own), _) => (own, Key::Own),
        (None, Some(shared)) => (shared, Key::Shared),
        (None, None) => return Err(AuthError::NoSecret(identity)),
    };
    match jwt::verify_claims(secret, token, unix_now, jwt::IAT_LEEWAY_SECS) {
        Ok(_) => Ok(Authenticated { identity, key }),
        Err(error) => Err(AuthError::Token { identity, key, error }),
    }
}

/// Parses a `--beacon-jwt-secrets` file, `{"<id or path name>": "<hex>", ...}`. Every name
/// must already be a valid identity (what `sanitize` and `path_name` would keep as is),
/// because a name that no request can produce would be a secret that protects nothing.
pub fn parse_beacon_secrets(json: &str) -> Result<Vec<(String, Secret)>, String> {
    let entries = jwt::parse_secret_map(json)?;
    if entries.len() > MAX_BEACON_SECRETS {
        return Err(format!("{} beacon node secrets, at most {MAX_BEACON_SECRETS}", entries.len()));
    }
    for (name, _) in &entries {
        if sanitize(name).as_deref() != Some(name.as_str()) || name.len() > MAX_IDENTITY_LEN {
            return Err(format!(
                "beacon node name {name:?} is not an identity: 1 to {MAX_IDENTITY_LEN} printable ASCII \
                 characters without spaces, quotes or backslashes"
            ));
        }
    }
    Ok(entries)
}

/// The length of a slot on mainnet.
pub const SLOT_SECS: u64 = 12;
/// How many slots ahead of the wall clock a payload timestamp may be to count for the best-BN
/// rule. A real BN's payload is at most its current slot's start, so one slot covers a BN
/// whose clock runs ahead of the proxy's; the second covers a proxy host whose clock lags.
/// Anything further ahead can only be a lie meant to win the "largest timestamp" rule.
pub const MAX_SLOTS_AHEAD: u64 = 2;
/// `MAX_SLOTS_AHEAD` slots, in seconds (24 s): on chains with shorter slots it is more slots.
pub const MAX_AHEAD_SECS: u64 = MAX_SLOTS_AHEAD * SLOT_SECS;
/// Most switches awaiting an EL's answer. One per newPayload in flight is what real BNs make;
/// when full, the oldest is dropped (and counted): it is the one least likely to be answered.
pub const MAX_PENDING: usize = 64;
/// A switch not confirmed within this is forgotten: newPayload's timeout is 8 s, so every EL
/// has answered or failed by then.
pub const PENDING_TTL: Duration = Duration::from_secs(10);

/// Which EL answers confirm a switch to another BN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Confirmation {
    /// VALID, SYNCING or ACCEPTED (the issue's rule): anything but INVALID,
    /// INVALID_BLOCK_HASH or an error. What it leaves open: a client that may send requests
    /// can make up a payload on an unknown parent (its block hash is only a hash it can
    /// compute), which ELs answer SYNCING or ACCEPTED; with a timestamp up to
    /// `MAX_AHEAD_SECS` ahead it stays the best for as long as it keeps doing so. Per-BN
    /// secrets (who may send at all) are the defence there, or `ValidOnly`.
    #[default]
    NotInvalid,
    /// Only VALID switches to another BN (SYNCING/ACCEPTED still advance the best BN's own
    /// timestamp). Stricter: a made-up payload on an unknown parent gets SYNCING, never VALID.
    ValidOnly,
}

/// Follows the best-synced BN (the flashbots/sync-proxy rule, hardened): the first BN seen is
/// the best; another takes over when an EL accepted its payload with a larger, plausible
/// timestamp, or at once when the best has been silent for `expiry`. forkchoiceUpdated from any
/// other BN is answered SYNCING and forwarded to no one.
///
/// Two phases, because an EL's answer is what proves a payload real: `observe` at intake
/// forwards or filters and records a candidate under the caller's key `K` (the exchange);
/// `confirm` with the first EL answer to that exchange makes the switch or discards it.
#[derive(Debug)]
pub struct BestBeacon<K> {
    best: Option<Best>,
    expiry: Duration,
    max_ahead_secs: u64,
    confirmation: Confirmation,
    pending: VecDeque<Pending<K>>,
    dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Best {
    name: String,
    timestamp: u64,
    last_seen: Instant,
}

#[derive(Debug)]
struct Pending<K> {
    key: K,
    beacon: String,
    timestamp: u64,
    since: Instant,
}

/// What `observe` says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub forward: bool,
    /// Set when this request made its sender the best at once (first seen, or the best expired).
    pub switched: Option<Switch>,
    pub candidate: Candidate,
}

/// What became of the request's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// Nothing to confirm: no timestamp, not larger than the best's, or a forkchoiceUpdated
    /// from another BN (filtered, so no EL can confirm it).
    None,
    /// Recorded: call `confirm` with the exchange's first EL answer.
    Pending,
    /// Further ahead of the wall clock than the bound: ignored (the request itself is routed
    /// as any other).
    Implausible { timestamp: u64, limit: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub from: Option<String>,
    pub to: String,
    pub timestamp: u64,
}

/// What `confirm` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// Another BN is now the best.
    Switched(Switch),
    /// The best BN's own timestamp moved forward.
    Advanced { timestamp: u64 },
    /// Accepted, but another payload with a timestamp at least as large was confirmed first.
    Stale,
    /// The EL's answer does not make the payload real: nothing changes.
    Refused { beacon: String, timestamp: u64, status: Status },
    /// No candidate under this key (none recorded, expired, or dropped from a full table).
    Unknown,
}

impl<K: PartialEq> BestBeacon<K> {
    pub fn new(expiry: Duration, max_ahead_secs: u64, confirmation: Confirmation) -> Self {
        BestBeacon { best: None, expiry, max_ahead_secs, confirmation, pending: VecDeque::new(), dropped: 0 }
    }

    /// The best BN and its last confirmed timestamp.
    pub fn current(&self) -> Option<(&str, u64)> {
        self.best.as_ref().map(|b| (b.name.as_str(), b.timestamp))
    }

    /// Candidates dropped because the table was full (for a metric).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Candidates awaiting an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Notes a request from BN `beacon` and says whether it is forwarded. Only
    /// forkchoiceUpdated is ever filtered: payloads from every BN are useful.
    pub fn observe(
        &mut self,
        key: K,
        beacon: &str,
        class: Class,
        timestamp: Option<u64>,
        now: Instant,
        unix_now: u64,
    ) -> Verdict {
        self.expire(now);
        let mut switched = None;
        let expired = self
            .best
            .as_ref()
            .is_some_and(|b| b.name != beacon && now.saturating_duration_since(b.last_seen) > self.expiry);
        if self.best.is_none() || expired {
            let from = self.best.take().map(|b| b.name);
            self.best = Some(Best { name: beacon.to_owned(), timestamp: 0, last_seen: now });
            switched = Some(Switch { from, to: beacon.to_owned(), timestamp: 0 });
        }
        let Some(best) = self.best.as_mut() else {
            return Verdict { forward: true, switched, candidate: Candidate::None };
        };
        let is_best = best.name == beacon;
        if is_best {
            best.last_seen = now;
        }
        let forward = is_best || class != Class::ForkchoiceUpdated;
        let tracks_time = matches!(class, Class::NewPayload | Class::ForkchoiceUpdated);
        let limit = unix_now.saturating_add(self.max_ahead_secs);
        let candidate = match timestamp.filter(|_| tracks_time) {
            Some(ts) if ts > limit => Candidate::Implausible { timestamp: ts, limit },
            Some(ts) if ts > best.timestamp && forward => {
                self.pending.retain(|p| p.key != key);
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.dropped += 1;
                }
                self.pending.push_back(Pending { key, beacon: beacon.to_owned(), timestamp: ts, since: now });
                Candidate::Pending
            }
            _ => Candidate::None,
        };
        Verdict { forward, switched, candidate }
    }

    /// Applies the first EL answer (its status; `Status::Error` for a JSON-RPC error or a
    /// failure) to the candidate recorded under `key`. Call it before the BN is answered, so
    /// that its next forkchoiceUpdated already finds it the best.
    pub fn confirm(&mut self, key: &K, status: Status, now: Instant) -> Confirmed {
        self.expire(now);
        let Some(at) = self.pending.iter().position(|p| p.key == *key) else { return Confirmed::Unknown };
        let Some(candidate) = self.pending.remove(at) else { return Confirmed::Unknown };
        let is_best = self.best.as_ref().is_some_and(|b| b.name == candidate.beacon);
        let accepted = match (status, self.confirmation) {
            (Status::Valid, _) => true,
            (Status::Syncing | Status::Accepted, Confirmation::NotInvalid) => true,
            (Status::Syncing | Status::Accepted, Confirmation::ValidOnly) => is_best,
            _ => false,
        };
        if !accepted {
            return Confirmed::Refused { beacon: candidate.beacon, timestamp: candidate.timestamp, status };
        }
        let Some(best) = self.best.as_mut() else {
            let to = candidate.beacon;
            self.best = Some(Best { name: to.clone(), timestamp: candidate.timestamp, last_seen: now });
            return Confirmed::Switched(Switch { from: None, to, timestamp: candidate.timestamp });
        };
        if candidate.timestamp <= best.timestamp {
            return Confirmed::Stale;
        }
        best.timestamp = candidate.timestamp;
        if is_best {
            return Confirmed::Advanced { timestamp: candidate.timestamp };
        }
        let from = std::mem::replace(&mut best.name, candidate.beacon.clone());
        best.last_seen = now;
        Confirmed::Switched(Switch { from: Some(from), to: candidate.beacon, timestamp: candidate.timestamp })
    }

    /// Forgets the candidate under `key` (its exchange ended without any EL answer).
    pub fn forget(&mut self, key: &K) {
        self.pending.retain(|p| p.key != *key);
    }

    fn expire(&mut self, now: Instant) {
        self.pending.retain(|p| now.saturating_duration_since(p.since) <= PENDING_TTL);
    }
}

/// What to do with a JSON-RPC batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// No Engine API call inside: forward as any non-engine request (primary, with fallback).
    Forward,
    /// An `engine_*` call inside: answer this body (HTTP 200) and forward nothing.
    Refuse(Vec<u8>),
}

/// The message for the `engine_*` calls of a refused batch.
pub const BATCH_ENGINE_MESSAGE: &str = "engine_* calls are not accepted in a batch: send them one by one";
/// The message for the other calls of a refused batch.
pub const BATCH_OTHER_MESSAGE: &str =
    "batch refused because it contains engine_* calls: send those one by one";

/// Checks a batch body (one `rpc::scan_request` found to be an array). An Engine API call in a
/// batch would otherwise escape the best-BN filter, the ordering and the fan-out, so a batch
/// holding one is refused whole, with one JSON-RPC error per call (its id, or null), code
/// -32600: splitting it would mean answering one HTTP request from several exchanges. Batches
/// are rare and never on the Engine API's hot path, so serde_json builds the tree here.
pub fn check_batch(body: &[u8]) -> Batch {
    let Ok(serde_json::Value::Array(calls)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Batch::Forward;
    };
    let is_engine = |call: &serde_json::Value| {
        call.get("method").and_then(serde_json::Value::as_str).is_some_and(|m| m.starts_with("engine_"))
    };
    if !calls.iter().any(is_engine) {
        return Batch::Forward;
    }
    let mut out = Vec::from(&b"["[..]);
    for (n, call) in calls.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let id = call.get("id").map(serde_json::Value::to_string);
        let message = if is_engine(call) { BATCH_ENGINE_MESSAGE } else { BATCH_OTHER_MESSAGE };
        out.extend(policy::error_body(id.as_deref().map(str::as_bytes), -32600, message));
    }
    out.push(b']');
    Batch::Refuse(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};

    const NOW: u64 = 1_700_000_000;
    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn secret(byte: u8) -> Secret {
        Secret::from_bytes([byte; jwt::SECRET_LEN])
    }

    /// A token with these raw claims signed with `[byte; 32]`.
    fn token(byte: u8, claims: &str) -> Vec<u8> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&[byte; 32]).expect("any key length");
        mac.update(input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{signature}").into_bytes()
    }

    fn claims(id: Option<&str>, clv: Option<&str>) -> Claims {
        Claims { id: id.map(Into::into), clv: clv.map(Into::into) }
    }

    fn hints<'a>(claims: Option<&'a Claims>, path: &'a str, xff: Option<&'a [u8]>) -> Hints<'a> {
        Hints { claims, path, forwarded_for: xff, peer: PEER }
    }

    #[test]
    fn identity_order_id_path_clv_forwarded_peer() {
        let both = claims(Some("bn-1"), Some("Lodestar/v1.20.0"));
        let clv = claims(None, Some("Lodestar/v1.20.0"));
        let xff: &[u8] = b"192.0.2.7, 10.0.0.9";
        let cases = [
            (hints(Some(&both), "/bn-a", Some(xff)), "bn-1", Source::IdClaim),
            (hints(Some(&clv), "/bn-a", Some(xff)), "bn-a", Source::Path),
            (hints(Some(&clv), "/", Some(xff)), "Lodestar/v1.20.0", Source::ClvClaim),
            (hints(None, "/", Some(xff)), "192.0.2.7", Source::ForwardedFor),
            (hints(None, "/", Some(b"[2001:db8::1]:443")), "2001:db8::1", Source::ForwardedFor),
            (hints(None, "/", Some(b"bn-a")), "10.0.0.1", Source::Peer),
            (hints(None, "/", None), "10.0.0.1", Source::Peer),
        ];
        for (h, name, source) in cases {
            assert_eq!(identify(&h), Identity { name: name.into(), source }, "{h:?}");
        }
    }

    #[test]
    fn only_one_safe_path_segment_names_a_beacon_node() {
        let cases = [
            ("/bn-a", Some("bn-a")),
            ("/bn-a/", Some("bn-a")),
            ("/bn_a.2?x=1", Some("bn_a.2")),
            ("/", None),
            ("", None),
            ("/a/b", None),
            ("/..", None),
            ("/.", None),
            ("/bn%20a", None),
            ("//", None),
            ("*", None),
        ];
        for (path, name) in cases {
            assert_eq!(path_name(path), name, "{path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_IDENTITY_LEN + 1));
        assert_eq!(path_name(&long), None);
        assert!(path_name(&long[..=MAX_IDENTITY_LEN]).is_some());
    }

    #[test]
    fn claims_are_capped_and_made_safe_for_labels() {
        assert_eq!(sanitize("  bn \"a\"\n\\é "), Some("bn__a____".into()));
        assert_eq!(sanitize(&"x".repeat(1000)).map(|s| s.len()), Some(MAX_IDENTITY_LEN));
        assert_eq!(sanitize(" "), None);
        let huge = claims(Some(&"é".repeat(500)), None);
        let id = identify(&hints(Some(&huge), "/", None));
        assert_eq!((id.name.len(), id.source), (MAX_IDENTITY_LEN, Source::IdClaim));
        let empty = claims(Some(""), None);
        assert_eq!(identify(&hints(Some(&empty), "/p", None)).source, Source::Path, "an empty id is no id");
    }

    fn keys(shared: Option<u8>, own: &[(&str, u8)]) -> Keys {
        Keys {
            shared: shared.map(secret),
            per_beacon: own.iter().map(|&(n, b)| (n.to_owned(), secret(b))).collect(),
        }
    }

    fn auth(token: Option<&[u8]>, path: &str, keys: &Keys) -> Result<Authenticated, AuthError> {
        authenticate(token, hints(None, path, None), keys, NOW)
    }

    #[test]
    fn a_beacon_node_is_checked_with_its_own_secret() {
        let keys = keys(Some(9), &[("bn-a", 1), ("bn-b", 2)]);
        let a = token(1, &format!(r#"{{"iat":{NOW},"id":"bn-a"}}"#));
        let ok = auth(Some(&a), "/", &keys).expect("bn-a's own token");
        assert_eq!((ok.identity.name.as_str(), ok.key), ("bn-a", Key::Own));
        // By path, without an id claim.
        let by_path = token(2, &format!(r#"{{"iat":{NOW}}}"#));
        let ok = auth(Some(&by_path), "/bn-b", &keys).expect("bn-b by path");
        assert_eq!((ok.identity.name.as_str(), ok.identity.source), ("bn-b", Source::Path));
        // A BN without an entry uses the shared secret.
        let other = token(9, &format!(r#"{{"iat":{NOW},"id":"bn-c"}}"#));
        assert_eq!(auth(Some(&other), "/", &keys).map(|a| a.key), Ok(Key::Shared));
        assert_eq!(auth(None, "/", &keys), Err(AuthError::MissingToken));
    }

    #[test]
    fn a_leaked_secret_cannot_impersonate_another_beacon_node() {
        let keys = keys(Some(9), &[("bn-a", 1), ("bn-b", 2)]);
        let forged = [
            // bn-b's secret claiming bn-a, by claim and by path.
            (token(2, &format!(r#"{{"iat":{NOW},"id":"bn-a"}}"#)), "/"),
            (token(2, &format!(r#"{{"iat":{NOW}}}"#)), "/bn-a"),
            // The shared secret claiming a name that has its own entry.
            (token(9, &format!(r#"{{"iat":{NOW},"id":"bn-a"}}"#)), "/"),
            (token(9, &format!(r#"{{"iat":{NOW},"clv":"bn-a"}}"#)), "/"),
            (token(9, &format!(r#"{{"iat":{NOW}}}"#)), "/bn-a/"),
        ];
        for (t, path) in forged {
            let err = auth(Some(&t), path, &keys).expect_err("forged");
            assert!(
                matches!(&err, AuthError::Token { identity, key: Key::Own, error: JwtError::BadSignature }
                    if identity.name == "bn-a"),
                "{err:?} for {path}"
            );
        }
        // bn-b's secret with its own id, sent to bn-a's path: the id claim wins, so it is bn-b.
        let t = token(2, &format!(r#"{{"iat":{NOW},"id":"bn-b"}}"#));
        assert_eq!(auth(Some(&t), "/bn-a", &keys).map(|a| a.identity.name), Ok("bn-b".into()));
    }

    #[test]
    fn without_a_shared_secret_only_named_beacon_nodes_get_in() {
        let keys = keys(None, &[("bn-a", 1)]);
        let t = token(1, &format!(r#"{{"iat":{NOW}}}"#));
        let err = auth(Some(&t), "/", &keys).expect_err("no entry for the peer address");
        assert_eq!(err, AuthError::NoSecret(Identity { name: "10.0.0.1".into(), source: Source::Peer }));
        assert!(err.to_string().contains("no --jwt-secret"), "{err}");
        // No secret at all: nothing is checked, the claims only name the sender.
        let open = auth(Some(&token(7, r#"{"id":"x"}"#)), "/", &Keys::default()).expect("open");
        assert_eq!((open.identity.name.as_str(), open.key), ("x", Key::Unchecked));
    }

    #[test]
    fn a_stale_token_is_refused_even_with_the_right_secret() {
        let keys = keys(None, &[("bn-a", 1)]);
        let t = token(1, &format!(r#"{{"iat":{},"id":"bn-a"}}"#, NOW - 3600));
        let err = auth(Some(&t), "/", &keys).expect_err("stale");
        assert!(matches!(err, AuthError::Token { error: JwtError::IatOutOfRange { .. }, .. }), "{err:?}");
    }

    #[test]
    fn beacon_secret_files() {
        let hex = "11".repeat(32);
        let parsed =
            parse_beacon_secrets(&format!(r#"{{"bn-a":"{hex}","10.0.0.2":"0x{hex}"}}"#)).expect("valid");
        assert_eq!(parsed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["bn-a", "10.0.0.2"]);
        for bad in [
            format!(r#"{{"bn a":"{hex}"}}"#),
            format!(r#"{{"":"{hex}"}}"#),
            format!(r#"{{"{}":"{hex}"}}"#, "n".repeat(MAX_IDENTITY_LEN + 1)),
            format!(r#"{{"bn-a":"{hex}","bn-a":"{hex}"}}"#),
            r#"{"bn-a":"12"}"#.to_owned(),
            "[]".to_owned(),
        ] {
            let err = parse_beacon_secrets(&bad).expect_err(&bad);
            assert!(!err.contains(&hex), "a secret leaked into {err}");
        }
    }

    // ------------------------------------------------------------------ best beacon node

    const EXPIRY: Duration = Duration::from_secs(12);
    /// Wall clock of the fake clock's t0; payloads around it are plausible.
    const WALL: u64 = 1_700_000_000;

    fn best() -> BestBeacon<u32> {
        BestBeacon::new(EXPIRY, MAX_AHEAD_SECS, Confirmation::NotInvalid)
    }

    #[test]
    fn regression_a_huge_timestamp_hijacked_the_best_beacon_node() {
        let t0 = Instant::now();
        let mut b = best();
        b.observe(1, "real", Class::NewPayload, Some(WALL - 12), t0, WALL);
        assert_eq!(b.confirm(&1, Status::Valid, t0), Confirmed::Advanced { timestamp: WALL - 12 });
        let v = b.observe(2, "attacker", Class::NewPayload, Some(u64::MAX), t0, WALL);
        assert!(v.forward, "payloads are still forwarded");
        assert_eq!(v.candidate, Candidate::Implausible { timestamp: u64::MAX, limit: WALL + 24 });
        assert_eq!(b.confirm(&2, Status::Valid, t0), Confirmed::Unknown, "nothing to confirm");
        assert_eq!(b.current(), Some(("real", WALL - 12)));
        assert!(b.observe(3, "real", Class::ForkchoiceUpdated, None, t0, WALL).forward);
        let v = b.observe(4, "attacker", Class::ForkchoiceUpdated, Some(u64::MAX), t0, WALL);
        assert!(!v.forward, "the attacker's fcU is answered SYNCING");
    }

    #[test]
    fn a_plausible_payload_every_el_calls_invalid_never_makes_the_best() {
        let t0 = Instant::now();
        let mut b = best();
        b.observe(1, "real", Class::NewPayload, Some(WALL), t0, WALL);
        b.confirm(&1, Status::Valid, t0);
        for (key, status) in [(2, Status::Invalid), (3, Status::InvalidBlockHash), (4, Status::Error)] {
            let v = b.observe(key, "attacker", Class::NewPayload, Some(WALL + 20), t0, WALL);
            assert_eq!(v.candidate, Candidate::Pending);
            assert_eq!(
                b.confirm(&key, status, t0),
                Confirmed::Refused { beacon: "attacker".into(), timestamp: WALL + 20, status }
            );
            assert_eq!(b.current(), Some(("real", WALL)));
            assert!(!b.observe(9, "attacker", Class::ForkchoiceUpdated, None, t0, WALL).forward);
        }
        // A timestamp just past the bound is not even a candidate.
        let v = b.observe(5, "attacker", Class::NewPayload, Some(WALL + MAX_AHEAD_SECS + 1), t0, WALL);
        assert!(matches!(v.candidate, Candidate::Implausible { .. }));
    }

    #[test]
    fn a_real_switch_happens_when_an_el_accepts_the_payload() {
        let t0 = Instant::now();
        let mut b = best();
        let v = b.observe(1, "a", Class::ForkchoiceUpdated, None, t0, WALL);
        assert_eq!(v.switched, Some(Switch { from: None, to: "a".into(), timestamp: 0 }), "first seen");
        b.observe(2, "a", Class::NewPayload, Some(WALL - 24), t0, WALL);
        b.confirm(&2, Status::Valid, t0);
        // b is ahead: its newPayload is a candidate; until confirmed its fcU is still filtered.
        let v = b.observe(3, "b", Class::NewPayload, Some(WALL - 12), t0, WALL);
        assert_eq!((v.forward, v.candidate), (true, Candidate::Pending));
        assert!(!b.observe(4, "b", Class::ForkchoiceUpdated, None, t0, WALL).forward);
        assert_eq!(
            b.confirm(&3, Status::Syncing, t0),
            Confirmed::Switched(Switch { from: Some("a".into()), to: "b".into(), timestamp: WALL - 12 })
        );
        assert!(b.observe(5, "b", Class::ForkchoiceUpdated, None, t0, WALL).forward);
        assert!(!b.observe(6, "a", Class::ForkchoiceUpdated, None, t0, WALL).forward);
        // A fcU from a non-best BN is never a candidate: it reaches no EL that could confirm it.
        let v = b.observe(7, "a", Class::ForkchoiceUpdated, Some(WALL), t0, WALL);
        assert_eq!((v.forward, v.candidate), (false, Candidate::None));
        // Equal timestamps do not switch.
        let v = b.observe(8, "a", Class::NewPayload, Some(WALL - 12), t0, WALL);
        assert_eq!(v.candidate, Candidate::None);
    }

    #[test]
    fn a_confirmation_overtaken_by_a_larger_one_is_stale() {
        let t0 = Instant::now();
        let mut b = best();
        b.observe(1, "a", Class::NewPayload, Some(WALL - 12), t0, WALL);
        b.observe(2, "b", Class::NewPayload, Some(WALL), t0, WALL);
        assert!(matches!(b.confirm(&2, Status::Valid, t0), Confirmed::Switched(_)));
        assert_eq!(b.confirm(&1, Status::Valid, t0), Confirmed::Stale);
        assert_eq!(b.current(), Some(("b", WALL)));
    }

    #[test]
    fn a_silent_best_expires_and_unconfirmed_candidates_are_forgotten() {
        let t0 = Instant::now();
        let mut b = best();
        b.observe(1, "a", Class::NewPayload, Some(WALL), t0, WALL);
        b.confirm(&1, Status::Valid, t0);
        let later = t0 + Duration::from_secs(5);
        assert!(!b.observe(2, "b", Class::ForkchoiceUpdated, Some(WALL), later, WALL + 5).forward);
        let v = b.observe(3, "b", Class::ForkchoiceUpdated, None, t0 + Duration::from_secs(13), WALL + 13);
        assert!(v.forward);
        assert_eq!(v.switched, Some(Switch { from: Some("a".into()), to: "b".into(), timestamp: 0 }));
        // A candidate not confirmed within the TTL is gone.
        let t1 = t0 + Duration::from_secs(20);
        b.observe(4, "a", Class::NewPayload, Some(WALL + 20), t1, WALL + 20);
        assert_eq!(b.pending(), 1);
        assert_eq!(
            b.confirm(&4, Status::Valid, t1 + PENDING_TTL + Duration::from_millis(1)),
            Confirmed::Unknown
        );
        assert_eq!(b.pending(), 0);
        b.observe(5, "a", Class::NewPayload, Some(WALL + 21), t1, WALL + 21);
        b.forget(&5);
        assert_eq!(b.confirm(&5, Status::Valid, t1), Confirmed::Unknown);
    }

    #[test]
    fn the_pending_table_is_bounded() {
        let t0 = Instant::now();
        let mut b = best();
        for key in 0..(MAX_PENDING as u32 + 5) {
            b.observe(key, "a", Class::NewPayload, Some(WALL), t0, WALL);
        }
        assert_eq!((b.pending(), b.dropped()), (MAX_PENDING, 5));
        assert_eq!(b.confirm(&0, Status::Valid, t0), Confirmed::Unknown, "the oldest went first");
        assert_eq!(b.confirm(&5, Status::Valid, t0), Confirmed::Advanced { timestamp: WALL });
    }

    #[test]
    fn valid_only_needs_valid_to_switch_but_not_to_advance() {
        let t0 = Instant::now();
        let mut b = BestBeacon::new(EXPIRY, MAX_AHEAD_SECS, Confirmation::ValidOnly);
        b.observe(1, "a", Class::NewPayload, Some(WALL - 12), t0, WALL);
        assert_eq!(b.confirm(&1, Status::Syncing, t0), Confirmed::Advanced { timestamp: WALL - 12 });
        b.observe(2, "b", Class::NewPayload, Some(WALL), t0, WALL);
        assert!(matches!(b.confirm(&2, Status::Accepted, t0), Confirmed::Refused { .. }));
        b.observe(3, "b", Class::NewPayload, Some(WALL), t0, WALL);
        assert!(matches!(b.confirm(&3, Status::Valid, t0), Confirmed::Switched(_)));
    }

    // ------------------------------------------------------------------ batches

    #[test]
    fn non_engine_batches_are_forwarded() {
        for body in [
            &br#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]"#[..],
            b"[]",
            b"[1,2]",
            br#"[{"method":"Engine_x"}]"#,
        ] {
            assert_eq!(check_batch(body), Batch::Forward, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn regression_an_fcu_in_a_batch_reached_the_primary() {
        let body = br#"[{"jsonrpc":"2.0","id":"x","method":"engine_forkchoiceUpdatedV3","params":[]},
                       {"jsonrpc":"2.0","method":"eth_chainId"},{"jsonrpc":"2.0","id":3,"method":"eth_chainId"}]"#;
        let Batch::Refuse(answer) = check_batch(body) else { panic!("an engine call must be refused") };
        let v: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
        let answers = v.as_array().expect("one answer per call");
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0]["id"], "x");
        assert_eq!(answers[0]["error"]["code"], -32600);
        assert_eq!(answers[0]["error"]["message"], BATCH_ENGINE_MESSAGE);
        assert!(answers[1]["id"].is_null());
        assert_eq!(answers[2]["id"], 3);
        assert_eq!(answers[2]["error"]["message"], BATCH_OTHER_MESSAGE);
        // An escaped method name is still an engine call.
        assert!(matches!(check_batch(br#"[{"method":"\u0065ngine_newPayloadV4"}]"#), Batch::Refuse(_)));
    }
}
