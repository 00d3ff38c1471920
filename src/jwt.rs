//! Engine API authentication: HS256 JSON Web Tokens, minted for the requests the proxy sends to
//! execution clients and verified on the requests that reach the proxy.
//!
//! This module owns the 32-byte shared secret (parsing, redaction), token minting, token
//! verification, Bearer header parsing, a small cache that re-mints the outbound token every few
//! seconds, and the parser for a name → secret map. It knows no sockets and no HTTP beyond the
//! value of one `Authorization` header, and it never reads the clock: `now` (Unix seconds) is
//! always passed in, so every decision here is a pure function that tests can drive.
//!
//! The rules come from the Engine API authentication spec (ethereum/execution-apis,
//! `src/engine/authentication.md`): HS256 only, `iat` required and within ±60 s, `id` and `clv`
//! optional, unknown claims ignored. HMAC-SHA256 and base64url are done directly with the `hmac`,
//! `sha2` and `base64` crates: the format is small, and owning it means exactly what the spec
//! allows is accepted, with no algorithm negotiation to get wrong.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Length of the shared secret in bytes.
pub const SECRET_LEN: usize = 32;
/// How far `iat` may be from `now`, in either direction, for a token to be accepted.
pub const IAT_LEEWAY_SECS: u64 = 60;
/// How old a cached outbound token may get before it is minted again.
pub const REMINT_AFTER_SECS: u64 = 5;

/// The base64url form of `{"alg":"HS256","typ":"JWT"}`, the only header this proxy mints.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Rejected `alg` values are echoed in errors (and so in logs), so a hostile header is cut short.
const MAX_ECHOED_ALG_CHARS: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The 32-byte secret shared with the beacon nodes and execution clients. Equality is for
/// configuration and tests; tokens are checked with the MAC's constant-time comparison instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Parses the contents of a secret file: surrounding whitespace, optional 0x/0X, exactly 64
    /// hex digits.
    pub fn from_hex(text: &str) -> Result<Secret, SecretError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty);
        }
        let digits = trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")).unwrap_or(trimmed);
        // Checking the alphabet first makes the digit count below a count of ASCII bytes.
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecretError::NotHex);
        }
        if digits.len() != SECRET_LEN * 2 {
            return Err(SecretError::WrongLength { hex_digits: digits.len() });
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (byte, pair) in bytes.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
            let [high, low] = pair else {
                return Err(SecretError::NotHex);
            };
            *byte = (hex_value(*high) << 4) | hex_value(*low);
        }
        Ok(Secret(bytes))
    }

    /// Wraps raw secret bytes, for callers that do not read a hex file.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Secret {
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    /// A secret must never reach logs, so even `{:?}` shows nothing of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Value of one ASCII hex digit; the caller has already checked that `digit` is one.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Why a secret file could not be parsed. No variant carries any of the file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The text is empty or only whitespace.
    Empty,
    /// The text is hex but not 64 digits long (after removing whitespace and `0x`).
    WrongLength { hex_digits: usize },
    /// The text contains a character that is not a hex digit.
    NotHex,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Empty => f.write_str("JWT secret is empty"),
            SecretError::WrongLength { hex_digits } => write!(
                f,
                "JWT secret has {hex_digits} hex digits, expected {} ({SECRET_LEN} bytes)",
                SECRET_LEN * 2
            ),
            SecretError::NotHex => f.write_str("JWT secret contains a character that is not a hex digit"),
        }
    }
}

impl std::error::Error for SecretError {}

/// Mints an HS256 token with header `{"alg":"HS256","typ":"JWT"}` and claims `{"iat":<iat>}` or
/// `{"iat":<iat>,"id":"<client_id>"}`, the client id escaped as a JSON string.
#[must_use]
pub fn mint(secret: &Secret, iat: u64, client_id: Option<&str>) -> String {
    let claims = match client_id {
        None => format!("{{\"iat\":{iat}}}"),
        // Displaying a JSON string value escapes quotes, backslashes and control characters.
        Some(id) => format!("{{\"iat\":{iat},\"id\":{}}}", Value::from(id)),
    };
    let mut token = String::with_capacity(HEADER_B64.len() + claims.len() * 4 / 3 + 48);
    token.push_str(HEADER_B64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.as_bytes(), &mut token);
    let signature = sign(&secret.0, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// HMAC-SHA256 of the JWS signing input (`base64url(header) "." base64url(claims)`).
fn sign(key: &[u8], signing_input: &[u8]) -> [u8; 32] {
    let mut mac = keyed_mac(key);
    mac.update(signing_input);
    mac.finalize().into_bytes().into()
}

fn keyed_mac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of every length (RFC 2104 section 2: short keys are padded, long
    // ones hashed), so the hmac crate never returns its length error here.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Why an inbound token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// The token is not three dot-separated parts.
    Malformed,
    /// A part is not base64url without padding.
    BadBase64,
    /// The header is not a JSON object with a string `alg`.
    BadHeader,
    /// The header names an algorithm other than HS256 (the name is cut to a few characters).
    UnsupportedAlg(String),
    /// The signature was not made with our secret.
    BadSignature,
    /// The claims are not a JSON object, or `iat` is not an integer that fits in an i64.
    BadClaims,
    /// The claims have no `iat`.
    MissingIat,
    /// `iat` is further from `now` than the leeway allows.
    IatOutOfRange { iat: i64, now: u64 },
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed => f.write_str("token is not three dot-separated parts"),
            JwtError::BadBase64 => f.write_str("token part is not unpadded base64url"),
            JwtError::BadHeader => f.write_str("token header is not a JSON object with a string alg"),
            JwtError::UnsupportedAlg(alg) => {
                write!(f, "token alg {alg:?} is not supported (only HS256)")
            }
            JwtError::BadSignature => f.write_str("token signature does not match the secret"),
            JwtError::BadClaims => f.write_str("token claims are not a JSON object with an integer iat"),
            JwtError::MissingIat => f.write_str("token claims have no iat"),
            JwtError::IatOutOfRange { iat, now } => {
                let (iat, now_wide) = (i128::from(*iat), i128::from(*now));
                let side = if iat < now_wide { "before" } else { "after" };
                let distance = (iat - now_wide).unsigned_abs();
                write!(f, "token iat {iat} is {distance} s {side} now ({now})")
            }
        }
    }
}

impl std::error::Error for JwtError {}

/// Verifies a compact JWS: three parts in base64url without padding (padded parts and the
/// standard alphabet's `+` and `/` are refused), a header whose `alg` is exactly "HS256" (`typ`
/// optional, other members ignored), an HMAC-SHA256 signature compared in constant time, and
/// claims that are a JSON object with an integer `iat` within ±`leeway_secs` of `now`.
///
/// The checks run in that order: structure, base64, header, signature, claims. A forged token is
/// therefore reported as `BadSignature`, and its claims are never parsed.
pub fn verify(secret: &Secret, token: &[u8], now: u64, leeway_secs: u64) -> Result<(), JwtError> {
    verify_with_key(&secret.0, token, now, leeway_secs)
}

/// `verify` for a key of any length, so the RFC 7515 example (a 64-byte key) can run through it.
fn verify_with_key(key: &[u8], token: &[u8], now: u64, leeway_secs: u64) -> Result<(), JwtError> {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let signing_input = token.get(..header_b64.len() + 1 + claims_b64.len()).ok_or(JwtError::Malformed)?;

    let header = decode_part(header_b64)?;
    let claims = decode_part(claims_b64)?;
    let signature = decode_part(signature_b64)?;

    check_header(&header)?;

    let mut mac = keyed_mac(key);
    mac.update(signing_input);
    // verify_slice compares in constant time and also rejects a signature of the wrong length.
    mac.verify_slice(&signature).map_err(|_| JwtError::BadSignature)?;

    check_claims(&claims, now, leeway_secs)
}

/// Decodes one part. `URL_SAFE_NO_PAD` rejects `=` padding, `+` and `/`, and non-zero trailing bits, so
/// each token has exactly one spelling and a changed character always changes the decoded bytes.
fn decode_part(part: &[u8]) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::BadBase64)
}

fn check_header(header: &[u8]) -> Result<(), JwtError> {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(header) else {
        return Err(JwtError::BadHeader);
    };
    match members.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => Ok(()),
        Some(Value::String(alg)) => {
            Err(JwtError::UnsupportedAlg(alg.chars().take(MAX_ECHOED_ALG_CHARS).collect()))
        }
        _ => Err(JwtError::BadHeader),
    }
}

fn check_claims(claims: &[u8], now: u64, leeway_secs: u64) -> Result<(), JwtError> {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(claims) else {
        return Err(JwtError::BadClaims);
    };
    // A float (even 1.7e9) or an integer beyond i64 is refused rather than rounded: the spec
    // asks for integer seconds, and rounding would let one signed token mean several times.
    let iat = match members.get("iat") {
        None => return Err(JwtError::MissingIat),
        Some(Value::Number(number)) => number.as_i64().ok_or(JwtError::BadClaims)?,
        Some(_) => return Err(JwtError::BadClaims),
    };
    // i128 holds every i64 - u64 difference, so no iat or now can overflow here.
    let distance = (i128::from(iat) - i128::from(now)).unsigned_abs();
    if distance > u128::from(leeway_secs) {
        return Err(JwtError::IatOutOfRange { iat, now });
    }
    Ok(())
}

/// Extracts the token from an `Authorization` header value: the scheme "Bearer" in any case, one
/// or more spaces, then the token with surrounding whitespace trimmed. None if the value is not a
/// Bearer credential or the token is empty.
#[must_use]
pub fn bearer_token(header_value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let value = header_value.trim_ascii();
    let scheme = value.get(..SCHEME.len())?;
    let rest = value.get(SCHEME.len()..)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Caches one outbound token and re-mints it when it is `REMINT_AFTER_SECS` old (or when the clock
/// went backwards), so `iat` is never more than a few seconds old without minting on every request.
pub struct TokenCache {
    secret: Secret,
    client_id: Option<String>,
    /// `"Bearer <token>"`, or empty before the first call.
    header: String,
    /// The `iat` of the token in `header`.
    minted_at: Option<u64>,
}

impl TokenCache {
    pub fn new(secret: Secret, client_id: Option<String>) -> TokenCache {
        TokenCache { secret, client_id, header: String::new(), minted_at: None }
    }

    /// Returns `"Bearer <token>"`, ready to be used as the `Authorization` header value.
    pub fn header_value(&mut self, now: u64) -> &str {
        // A clock that went backwards makes checked_sub fail, which also re-mints: a token from
        // the "future" could otherwise stay cached until the clock caught up with it.
        let fresh = self
            .minted_at
            .and_then(|minted_at| now.checked_sub(minted_at))
            .is_some_and(|age| age < REMINT_AFTER_SECS);
        if !fresh {
            let token = mint(&self.secret, now, self.client_id.as_deref());
            self.header.clear();
            self.header.push_str("Bearer ");
            self.header.push_str(&token);
            self.minted_at = Some(now);
        }
        &self.header
    }
}

impl fmt::Debug for TokenCache {
    /// The cached token is a credential for as long as its `iat` is in range, so it is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("client_id", &self.client_id)
            .field("minted_at", &self.minted_at)
            .finish_non_exhaustive()
    }
}

/// Parses a jwt-tokens-service style config, a JSON object `{"name": "hex secret", ...}`, into its
/// entries in file order. A duplicate name is an error. Errors name the offending key but never
/// show a secret.
///
/// serde_json's `Map` (without the `preserve_order` feature) sorts its keys, and implementing a
/// serde `Visitor` would need serde as a direct dependency, so the object is scanned here. Only
/// strings are valid values, so the scanner needs just strings, whitespace and the punctuation of
/// one flat object; serde_json decodes each string, escapes included.
pub fn parse_secret_map(json: &str) -> Result<Vec<(String, Secret)>, String> {
    let mut scanner = Scanner { text: json, pos: 0 };
    let mut entries: Vec<(String, Secret)> = Vec::new();

    scanner.skip_whitespace();
    if !scanner.eat(b'{') {
        return Err("JWT secret map must be a JSON object of name to hex secret".to_owned());
    }
    scanner.skip_whitespace();
    if !scanner.eat(b'}') {
        loop {
            scanner.skip_whitespace();
            let key_at = scanner.pos;
            let key = scanner
                .string()
                .ok_or_else(|| format!("expected a name as a JSON string at byte {key_at}"))?;
            // A handful of names is expected, so a linear search is simpler than a set.
            if entries.iter().any(|(name, _)| *name == key) {
                return Err(format!("name {key:?} appears more than once"));
            }
            scanner.skip_whitespace();
            if !scanner.eat(b':') {
                return Err(format!("expected ':' after name {key:?}"));
            }
            scanner.skip_whitespace();
            let hex = scanner
                .string()
                .ok_or_else(|| format!("the secret for {key:?} is not a JSON string of 64 hex digits"))?;
            let secret =
                Secret::from_hex(&hex).map_err(|err| format!("the secret for {key:?} is invalid: {err}"))?;
            scanner.skip_whitespace();
            let closed = scanner.eat(b'}');
            if !closed && !scanner.eat(b',') {
                return Err(format!("expected ',' or '}}' after the secret for {key:?}"));
            }
            entries.push((key, secret));
            if closed {
                break;
            }
        }
    }
    scanner.skip_whitespace();
    if scanner.pos != json.len() {
        return Err(format!("unexpected text after the JSON object at byte {}", scanner.pos));
    }
    Ok(entries)
}

/// A cursor over the flat JSON object `parse_secret_map` reads.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    /// Skips JSON's four whitespace characters (RFC 8259 section 2).
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Reads one JSON string and returns it decoded, or None if there is no valid string here.
    /// The end is found by skipping escaped bytes; serde_json then checks and decodes the escapes.
    fn string(&mut self) -> Option<String> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => break,
                _ => self.pos += 1,
            }
        }
        self.pos += 1;
        // Both ends are ASCII quotes, so `get` finds char boundaries; it still returns None
        // rather than panicking if that reasoning were ever wrong.
        serde_json::from_str(self.text.get(start..self.pos)?).ok()
    }
}

/// The optional identity claims of an Engine API token (authentication spec: `id`, the client's
/// identifier; `clv`, its client version), each only when it is a JSON string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub id: Option<String>,
    pub clv: Option<String>,
}

/// The claims of a token WITHOUT checking its signature: only for choosing which secret must then
/// verify it (see `beacons::authenticate`), never to be trusted as they are. None when the token
/// is not three parts or its claims are not a base64url JSON object.
#[must_use]
pub fn peek_claims(token: &[u8]) -> Option<Claims> {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(_), Some(claims_b64), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    claims_of(&decode_part(claims_b64).ok()?)
}

/// `verify`, then the token's identity claims: once this returns them, they were signed with
/// `secret`.
pub fn verify_claims(secret: &Secret, token: &[u8], now: u64, leeway_secs: u64) -> Result<Claims, JwtError> {
    verify(secret, token, now, leeway_secs)?;
    peek_claims(token).ok_or(JwtError::BadClaims)
}

fn claims_of(claims: &[u8]) -> Option<Claims> {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(claims) else {
        return None;
    };
    let text = |name: &str| members.get(name).and_then(Value::as_str).map(str::to_owned);
    Some(Claims { id: text("id"), clv: text("clv") })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const KEY_A_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B_HEX: &str = "c0ffee00deadbeef0123456789abcdeffedcba98765432100f1e2d3c4b5a6978";
    const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn secret_a() -> Secret {
        Secret::from_hex(KEY_A_HEX).unwrap()
    }

    fn secret_b() -> Secret {
        Secret::from_hex(KEY_B_HEX).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a token from raw header and claims JSON, signed with `key`.
    fn signed(header: &str, claims: &str, key: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = b64(&sign(key, input.as_bytes()));
        format!("{input}.{signature}")
    }

    /// A token with the usual header and the given claims, signed with secret A.
    fn hs256(claims: &str) -> String {
        signed(HS256_HEADER, claims, &secret_a().0)
    }

    /// A token with the given header and a current `iat`, signed with secret A.
    fn with_header(header: &str) -> String {
        signed(header, &iat_claims(NOW), &secret_a().0)
    }

    fn iat_claims(iat: impl fmt::Display) -> String {
        format!(r#"{{"iat":{iat}}}"#)
    }

    fn check(token: &str) -> Result<(), JwtError> {
        verify(&secret_a(), token.as_bytes(), NOW, IAT_LEEWAY_SECS)
    }

    #[track_caller]
    fn assert_rejected(expected: JwtError, cases: &[(&str, String)]) {
        for (name, token) in cases {
            assert_eq!(check(token), Err(expected.clone()), "{name}: {token:?}");
        }
    }

    // Known answers from a second implementation, Python's standard library. Each token was
    // produced with P set to this one-liner:
    //
    //   P='import hmac,hashlib,base64,json,sys;e=lambda b:base64.urlsafe_b64encode(b).rstrip(b"=").decode();j=lambda o:json.dumps(o,separators=(",",":"),ensure_ascii=False).encode();c={"iat":int(sys.argv[2])};c.update({"id":sys.argv[3]} if sys.argv[3:] else {});s=e(j({"alg":"HS256","typ":"JWT"}))+"."+e(j(c));print(s+"."+e(hmac.new(bytes.fromhex(sys.argv[1]),s.encode(),hashlib.sha256).digest()))'
    //
    // and run as `python3 -c "$P" SECRET_HEX IAT [CLIENT_ID]` (Python 3.11) with the arguments
    // of each row; the fourth row's id was passed as $'a\nb\tc\x01'.
    const KNOWN_TOKENS: &[(&str, u64, Option<&str>, &str)] = &[
        (
            KEY_A_HEX,
            1_700_000_000,
            None,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MDAwMDAwMDB9.uAxdaUtr1_HpYPtNDLNlQ_sHMiP5eBV-ra8EjL3ScS8",
        ),
        (
            KEY_A_HEX,
            1_700_000_000,
            Some("lighthouse"),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MDAwMDAwMDAsImlkIjoibGlnaHRob3VzZSJ9.wSVn3nLrAbMHPJO0Eli1MuNGEPpTv3K8_ikI89DJE64",
        ),
        (
            KEY_B_HEX,
            1_712_345_678,
            Some("Lodestar \"beta\"\\ ünï"),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MTIzNDU2NzgsImlkIjoiTG9kZXN0YXIgXCJiZXRhXCJcXCDDvG7DryJ9.q8OAILeldABWA1DvvotK4VFV-ZkTfxjTYOwDU6uqdxM",
        ),
        (
            KEY_B_HEX,
            u64::MAX,
            Some("a\nb\tc\u{1}"),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE4NDQ2NzQ0MDczNzA5NTUxNjE1LCJpZCI6ImFcbmJcdGNcdTAwMDEifQ.yUB4KlLDxjRdZl2uuexTYHYd-vXnS3s5Qk-n411eX-M",
        ),
        (
            KEY_B_HEX,
            0,
            None,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjB9.73GC_ThJhMJB24mjw4ccf7L5Qz-HerZBxfrxYvAmiQw",
        ),
    ];

    #[test]
    fn mint_matches_independent_implementation() {
        for &(key_hex, iat, client_id, expected) in KNOWN_TOKENS {
            let secret = Secret::from_hex(key_hex).unwrap();
            assert_eq!(mint(&secret, iat, client_id), expected, "iat {iat}, id {client_id:?}");
        }
    }

    #[test]
    fn known_tokens_verify_at_their_iat() {
        for &(key_hex, iat, client_id, token) in KNOWN_TOKENS {
            let secret = Secret::from_hex(key_hex).unwrap();
            let result = verify(&secret, token.as_bytes(), iat, IAT_LEEWAY_SECS);
            // An iat beyond i64 is refused even though mint accepts it, as JwtError documents.
            let expected = if iat > i64::MAX as u64 { Err(JwtError::BadClaims) } else { Ok(()) };
            assert_eq!(result, expected, "iat {iat}, id {client_id:?}");
        }
    }

    #[test]
    fn header_constant_is_the_minted_header() {
        assert_eq!(HEADER_B64, b64(HS256_HEADER.as_bytes()));
    }

    #[test]
    fn minted_claims_are_the_documented_json() {
        let token = mint(&secret_a(), 42, Some("a\"b"));
        let claims_b64 = token.split('.').nth(1).unwrap();
        let claims = URL_SAFE_NO_PAD.decode(claims_b64).unwrap();
        assert_eq!(claims, br#"{"iat":42,"id":"a\"b"}"#);
    }

    // RFC 7515 Appendix A.1: the HS256 example, whose JWK key `k` is 64 bytes. The signing input
    // and signature were checked with Python's hmac module before being written down here.
    const RFC7515_KEY_B64: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const RFC7515_SIGNING_INPUT: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    const RFC7515_SIGNATURE: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    #[test]
    fn sign_matches_rfc7515_appendix_a1() {
        let header = "{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let payload = "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        assert_eq!(input, RFC7515_SIGNING_INPUT);

        let key = URL_SAFE_NO_PAD.decode(RFC7515_KEY_B64).unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(b64(&sign(&key, input.as_bytes())), RFC7515_SIGNATURE);
    }

    #[test]
    fn rfc7515_token_passes_signature_and_fails_on_missing_iat() {
        // The example has exp but no iat, so it gets through the header (with its CRLF
        // whitespace) and signature checks and is refused only at the claims.
        let mut key = URL_SAFE_NO_PAD.decode(RFC7515_KEY_B64).unwrap();
        let token = format!("{RFC7515_SIGNING_INPUT}.{RFC7515_SIGNATURE}");
        let result = verify_with_key(&key, token.as_bytes(), NOW, IAT_LEEWAY_SECS);
        assert_eq!(result, Err(JwtError::MissingIat));

        key[0] ^= 1;
        let result = verify_with_key(&key, token.as_bytes(), NOW, IAT_LEEWAY_SECS);
        assert_eq!(result, Err(JwtError::BadSignature));
    }

    #[test]
    fn minted_tokens_verify_with_their_secret_only() {
        for iat in [0, 1, 59, 60, NOW, i64::MAX as u64] {
            for client_id in [None, Some(""), Some("nimbus"), Some("q\"uo\\te"), Some("ü\u{0}")] {
                let token = mint(&secret_a(), iat, client_id);
                let context = format!("iat {iat}, id {client_id:?}");
                let result = verify(&secret_a(), token.as_bytes(), iat, IAT_LEEWAY_SECS);
                assert_eq!(result, Ok(()), "{context}");
                let result = verify(&secret_b(), token.as_bytes(), iat, IAT_LEEWAY_SECS);
                assert_eq!(result, Err(JwtError::BadSignature), "{context}");
            }
        }
    }

    #[test]
    fn verify_accepts_good_tokens() {
        let cases = [
            ("iat now", hs256(&iat_claims(NOW))),
            ("id and clv", hs256(r#"{"iat":1700000000,"id":"lighthouse","clv":"v5.1.0"}"#)),
            ("unknown claims", hs256(r#"{"exp":1,"more":{"a":[1,2]},"iat":1700000000}"#)),
            ("whitespace in claims", hs256(" {\r\n \"iat\" : 1700000000 } ")),
            ("no typ", with_header(r#"{"alg":"HS256"}"#)),
            ("other members", with_header(r#"{"kid":"x","typ":"at+jwt","alg":"HS256"}"#)),
            ("whitespace in header", with_header("{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}")),
            ("minted", mint(&secret_a(), NOW, Some("prysm"))),
        ];
        for (name, token) in cases {
            assert_eq!(check(&token), Ok(()), "{name}: {token}");
        }
    }

    #[test]
    fn verify_rejects_wrong_structure() {
        let good = hs256(&iat_claims(NOW));
        let (two_parts, _) = good.rsplit_once('.').unwrap();
        assert_rejected(
            JwtError::Malformed,
            &[
                ("empty", String::new()),
                ("one part", "abc".into()),
                ("two parts", two_parts.into()),
                ("four parts", format!("{good}.x")),
                ("trailing dot", format!("{good}.")),
                ("only dots", "...".into()),
            ],
        );
    }

    #[test]
    fn verify_rejects_bad_base64() {
        let good = hs256(&iat_claims(NOW));
        let (header, rest) = good.split_once('.').unwrap();
        let last = good.len() - 1;
        assert_rejected(
            JwtError::BadBase64,
            &[
                ("padded signature", format!("{good}=")),
                ("padded header", format!("{header}==.{rest}")),
                ("plus, from the standard alphabet", format!("+{}", &good[1..])),
                ("slash, from the standard alphabet", good.replacen(".e", "./", 1)),
                ("space", format!("{} {}", &good[..10], &good[11..])),
                ("invalid character", good.replacen('J', "!", 1)),
                ("impossible length", format!("{header}x.{rest}")),
                // A signature's last character carries 4 bits and 2 zero bits; a set zero bit
                // would give a second spelling of the same signature, so it is refused.
                ("non-zero trailing bits", format!("{}{}", &good[..last], next_b64_char(&good))),
            ],
        );
    }

    /// The base64url character after the token's last: same signature bits, one padding bit set.
    fn next_b64_char(token: &str) -> char {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.find(token.chars().last().unwrap()).unwrap();
        assert_eq!(index % 4, 0, "a 32-byte signature ends in two zero bits");
        alphabet.chars().nth(index + 1).unwrap()
    }

    #[test]
    fn verify_rejects_bad_headers() {
        let claims = b64(iat_claims(NOW).as_bytes());
        let good = hs256(&iat_claims(NOW));
        let (_, signature) = good.rsplit_once('.').unwrap();
        assert_rejected(
            JwtError::BadHeader,
            &[
                ("empty header", format!(".{claims}.{signature}")),
                ("not JSON", with_header("not json")),
                ("an array", with_header(r#"["HS256"]"#)),
                ("a string", with_header(r#""HS256""#)),
                ("missing alg", with_header(r#"{"typ":"JWT"}"#)),
                ("alg a number", with_header(r#"{"alg":256}"#)),
                ("alg null", with_header(r#"{"alg":null}"#)),
            ],
        );

        let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let cases = [
            ("none", format!("{none_header}.{claims}.")),
            ("none", with_header(r#"{"alg":"none"}"#)),
            ("HS512", with_header(r#"{"alg":"HS512"}"#)),
            ("RS256", with_header(r#"{"alg":"RS256"}"#)),
            ("hs256", with_header(r#"{"alg":"hs256"}"#)),
            ("HS256 ", with_header(r#"{"alg":"HS256 "}"#)),
            ("", with_header(r#"{"alg":""}"#)),
        ];
        for (alg, token) in cases {
            assert_eq!(check(&token), Err(JwtError::UnsupportedAlg(alg.into())), "{token}");
        }

        let long = with_header(&format!(r#"{{"alg":"{}"}}"#, "X".repeat(10_000)));
        let echoed = "X".repeat(MAX_ECHOED_ALG_CHARS);
        assert_eq!(check(&long), Err(JwtError::UnsupportedAlg(echoed)));
    }

    #[test]
    fn verify_rejects_bad_signatures() {
        let key_b = secret_b().0;
        let good = hs256(&iat_claims(NOW));
        let (input, signature) = good.rsplit_once('.').unwrap();
        let mut flipped = URL_SAFE_NO_PAD.decode(signature).unwrap();
        flipped[7] ^= 0x10;
        let other_input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(b"{\"iat\":1}"));
        assert_rejected(
            JwtError::BadSignature,
            &[
                ("other secret", signed(HS256_HEADER, &iat_claims(NOW), &key_b)),
                ("flipped bit", format!("{input}.{}", b64(&flipped))),
                ("empty", format!("{input}.")),
                ("short", format!("{input}.{}", &signature[..40])),
                ("long", format!("{input}.{signature}AAAA")),
                ("another token's", format!("{other_input}.{signature}")),
                // A forged token's claims are never looked at, however wrong they are.
                ("forged, claims not JSON", signed(HS256_HEADER, "not json", &key_b)),
                ("forged, no iat", signed(HS256_HEADER, "{}", &key_b)),
                ("forged, iat far off", signed(HS256_HEADER, &iat_claims(0), &key_b)),
            ],
        );
    }

    #[test]
    fn verify_rejects_bad_claims() {
        assert_rejected(
            JwtError::BadClaims,
            &[
                ("not JSON", hs256("not json")),
                ("empty", hs256("")),
                ("an array", hs256("[1700000000]")),
                ("a number", hs256("1700000000")),
                ("iat a string", hs256(r#"{"iat":"1700000000"}"#)),
                ("iat a float", hs256(r#"{"iat":1700000000.0}"#)),
                ("iat in exponent form", hs256(r#"{"iat":1.7e9}"#)),
                ("iat null", hs256(r#"{"iat":null}"#)),
                ("iat true", hs256(r#"{"iat":true}"#)),
                ("iat an object", hs256(r#"{"iat":{}}"#)),
                ("iat beyond i64", hs256(&iat_claims(u64::MAX))),
                ("iat beyond u64", hs256(&iat_claims("99999999999999999999999"))),
                ("iat beyond f64", hs256(&iat_claims("1e400"))),
            ],
        );
        assert_rejected(
            JwtError::MissingIat,
            &[
                ("empty object", hs256("{}")),
                ("other claims only", hs256(r#"{"id":"x","clv":"1","exp":1700000000}"#)),
            ],
        );
    }

    #[test]
    fn verify_accepts_iat_within_leeway_only() {
        let now = NOW as i64;
        let cases: &[(i64, bool)] = &[
            (now, true),
            (now - 60, true),
            (now + 60, true),
            (now - 61, false),
            (now + 61, false),
            (0, false),
            (-1, false),
            (i64::MAX, false),
            (i64::MIN, false),
        ];
        for &(iat, accepted) in cases {
            let expected = if accepted { Ok(()) } else { Err(JwtError::IatOutOfRange { iat, now: NOW }) };
            assert_eq!(check(&hs256(&iat_claims(iat))), expected, "iat {iat}");
        }
    }

    #[test]
    fn leeway_arithmetic_does_not_overflow() {
        // (iat, now, leeway, accepted)
        let cases: &[(i64, u64, u64, bool)] = &[
            (i64::MAX, u64::MAX, 0, false),
            (i64::MAX, u64::MAX, u64::MAX, true),
            (i64::MIN, u64::MAX, u64::MAX, false),
            (i64::MIN, 0, u64::MAX, true),
            (0, u64::MAX, u64::MAX, true),
            (i64::MAX, i64::MAX as u64, 0, true),
            (0, 0, 0, true),
            (1, 0, 0, false),
        ];
        for &(iat, now, leeway, accepted) in cases {
            let token = hs256(&iat_claims(iat));
            let result = verify(&secret_a(), token.as_bytes(), now, leeway);
            let expected = if accepted { Ok(()) } else { Err(JwtError::IatOutOfRange { iat, now }) };
            assert_eq!(result, expected, "iat {iat}, now {now}, leeway {leeway}");
        }
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        // Because base64url is canonical here, no edit leaves the signed bytes unchanged.
        let token = mint(&secret_a(), NOW, Some("teku"));
        for position in 0..token.len() {
            for replacement in [b'A', b'f', b'0', b'-', b'_', b'.', b'=', b'+', b' ', 0xff] {
                let mut bytes = token.clone().into_bytes();
                if bytes[position] != replacement {
                    bytes[position] = replacement;
                    let result = verify(&secret_a(), &bytes, NOW, IAT_LEEWAY_SECS);
                    assert!(result.is_err(), "byte {position} set to {replacement}");
                }
            }
            let prefix = &token.as_bytes()[..position];
            assert!(verify(&secret_a(), prefix, NOW, IAT_LEEWAY_SECS).is_err(), "{position}");
        }
    }

    #[test]
    fn jwt_error_display() {
        let out_of_range = |iat, now| JwtError::IatOutOfRange { iat, now }.to_string();
        let cases = [
            (JwtError::Malformed.to_string(), "token is not three dot-separated parts"),
            (
                JwtError::UnsupportedAlg("no\nne".into()).to_string(),
                "token alg \"no\\nne\" is not supported (only HS256)",
            ),
            (
                out_of_range(1_700_000_000, 1_700_000_075),
                "token iat 1700000000 is 75 s before now (1700000075)",
            ),
            (
                out_of_range(1_700_000_075, 1_700_000_000),
                "token iat 1700000075 is 75 s after now (1700000000)",
            ),
            (
                out_of_range(i64::MIN, u64::MAX),
                "token iat -9223372036854775808 is 27670116110564327423 s before now \
                 (18446744073709551615)",
            ),
        ];
        for (shown, expected) in cases {
            assert_eq!(shown, expected);
        }
    }

    #[test]
    fn bearer_token_extraction() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"Bearer abc.def.ghi", Some(b"abc.def.ghi")),
            (b"bearer abc", Some(b"abc")),
            (b"BEARER abc", Some(b"abc")),
            (b"bEaReR abc", Some(b"abc")),
            (b"Bearer    abc", Some(b"abc")),
            (b"Bearer abc   ", Some(b"abc")),
            (b"  Bearer abc\r\n", Some(b"abc")),
            (b"Bearer  \tabc\t", Some(b"abc")),
            (b"Bearer a b", Some(b"a b")),
            (b"Bearer \xff", Some(b"\xff")),
            (b"Bearer", None),
            (b"Bearer ", None),
            (b"Bearer     ", None),
            (b"Bearerabc", None),
            (b"Bearer\tabc", None),
            (b"Basic abc", None),
            (b"Bear abc", None),
            (b"Token abc", None),
            (b"", None),
            (b" ", None),
            (b"abc", None),
            (b"\xff\xfe Bearer", None),
        ];
        for &(value, expected) in cases {
            let shown = String::from_utf8_lossy(value);
            assert_eq!(bearer_token(value), expected, "{shown:?}");
        }
    }

    #[test]
    fn secret_from_hex_accepts_file_contents() {
        let upper = KEY_B_HEX.to_ascii_uppercase();
        let mixed: String = (KEY_B_HEX.chars().zip(upper.chars()))
            .enumerate()
            .map(|(i, (lower, upper))| if i % 2 == 0 { upper } else { lower })
            .collect();
        let cases = [
            KEY_B_HEX.to_owned(),
            format!("0x{KEY_B_HEX}"),
            format!("0X{KEY_B_HEX}"),
            format!("{KEY_B_HEX}\n"),
            format!(" \t\r\n0x{KEY_B_HEX}\r\n\n "),
            format!("0x{upper}"),
            upper,
            mixed,
        ];
        for text in cases {
            assert_eq!(Secret::from_hex(&text), Ok(secret_b()), "{text:?}");
        }
    }

    #[test]
    fn secret_from_hex_decodes_bytes_in_order() {
        let expected: [u8; SECRET_LEN] = std::array::from_fn(|i| i as u8);
        assert_eq!(secret_a(), Secret::from_bytes(expected));
        let all_ones = Secret::from_hex(&"fF".repeat(SECRET_LEN));
        assert_eq!(all_ones, Ok(Secret::from_bytes([0xff; SECRET_LEN])));
    }

    #[test]
    fn secret_from_hex_rejects_and_never_echoes() {
        use SecretError::{Empty, NotHex, WrongLength};
        let cases = [
            (String::new(), Empty),
            (" \n\t".into(), Empty),
            ("0x".into(), WrongLength { hex_digits: 0 }),
            (KEY_B_HEX[..63].into(), WrongLength { hex_digits: 63 }),
            (format!("{KEY_B_HEX}0"), WrongLength { hex_digits: 65 }),
            (format!("0x{}", &KEY_B_HEX[..62]), WrongLength { hex_digits: 62 }),
            (KEY_B_HEX.repeat(2), WrongLength { hex_digits: 128 }),
            (format!("{}g", &KEY_B_HEX[..63]), NotHex),
            (format!("{} {}", &KEY_B_HEX[..32], &KEY_B_HEX[32..]), NotHex),
            (format!("0x0x{KEY_B_HEX}"), NotHex),
            (format!("x{KEY_B_HEX}"), NotHex),
            (format!("\"{KEY_B_HEX}\""), NotHex),
            (format!("{}é", &KEY_B_HEX[..62]), NotHex),
            ("+1".into(), NotHex),
        ];
        for (text, expected) in cases {
            assert_eq!(Secret::from_hex(&text), Err(expected.clone()), "{text:?}");
            assert_no_secret_in(&expected.to_string(), &[KEY_B_HEX]);
        }
    }

    /// Fails if `message` contains any 8 consecutive characters of any of `secrets`.
    #[track_caller]
    fn assert_no_secret_in(message: &str, secrets: &[&str]) {
        let message = message.to_ascii_lowercase();
        for secret in secrets {
            for window in secret.as_bytes().windows(8) {
                let window = std::str::from_utf8(window).unwrap();
                assert!(!message.contains(window), "{message:?} leaks {window}");
            }
        }
    }

    #[test]
    fn secret_error_display() {
        let cases = [
            (SecretError::Empty, "JWT secret is empty"),
            (
                SecretError::WrongLength { hex_digits: 63 },
                "JWT secret has 63 hex digits, expected 64 (32 bytes)",
            ),
            (SecretError::NotHex, "JWT secret contains a character that is not a hex digit"),
        ];
        for (err, expected) in cases {
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn secrets_and_tokens_never_show_in_debug() {
        let secret = secret_b();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{secret:#?}"), "Secret(<redacted>)");

        let mut cache = TokenCache::new(secret, Some("id".into()));
        let header = cache.header_value(NOW).to_owned();
        let debug = format!("{cache:?}");
        let token = header.strip_prefix("Bearer ").unwrap();
        assert!(!debug.contains(token), "{debug}");
        assert_no_secret_in(&debug, &[KEY_B_HEX]);
    }

    #[test]
    fn token_cache_remints_when_old_or_clock_went_back() {
        let mut cache = TokenCache::new(secret_a(), Some("lodestar".into()));
        // (now, iat of the token the cache must return)
        let steps: &[(u64, u64)] = &[
            (NOW, NOW),
            (NOW, NOW),
            (NOW + 1, NOW),
            (NOW + REMINT_AFTER_SECS - 1, NOW),
            (NOW + REMINT_AFTER_SECS, NOW + REMINT_AFTER_SECS),
            (NOW + REMINT_AFTER_SECS + 3, NOW + REMINT_AFTER_SECS),
            (NOW + 100, NOW + 100),
            (NOW + 99, NOW + 99),
            (NOW + 99, NOW + 99),
            (NOW + 50, NOW + 50),
            (0, 0),
            (u64::MAX, u64::MAX),
            (u64::MAX, u64::MAX),
        ];
        for &(now, iat) in steps {
            let header = cache.header_value(now).to_owned();
            let expected = format!("Bearer {}", mint(&secret_a(), iat, Some("lodestar")));
            assert_eq!(header, expected, "now {now}");
            let token = bearer_token(header.as_bytes()).unwrap();
            if iat <= i64::MAX as u64 {
                assert_eq!(verify(&secret_a(), token, now, IAT_LEEWAY_SECS), Ok(()), "now {now}");
            }
        }
    }

    #[test]
    fn token_cache_without_client_id() {
        let mut cache = TokenCache::new(secret_b(), None);
        let expected = format!("Bearer {}", KNOWN_TOKENS[4].3);
        assert_eq!(cache.header_value(0), expected);
        assert_eq!(cache.header_value(REMINT_AFTER_SECS - 1), expected);
    }

    /// 64 hex digits: `byte` repeated 32 times.
    fn hex_of(byte: u8) -> String {
        format!("{byte:02x}").repeat(SECRET_LEN)
    }

    #[test]
    fn secret_map_keeps_file_order() {
        let json = format!(
            " \n{{ \"zeta\" : \"{}\",\r\n\t\"alpha\":\"0x{}\" ,\"mid\\u0064le\":\"  {}\\n\", \
             \"q\\\"uote\":\"{}\", \"ünï\":\"{}\"}}\n",
            hex_of(1),
            hex_of(2),
            hex_of(3),
            hex_of(4),
            hex_of(5)
        );
        let names = ["zeta", "alpha", "middle", "q\"uote", "ünï"];
        let expected: Vec<(String, Secret)> = (names.iter().zip(1..))
            .map(|(name, byte)| (name.to_string(), Secret::from_bytes([byte; SECRET_LEN])))
            .collect();
        assert_eq!(parse_secret_map(&json), Ok(expected));
    }

    #[test]
    fn secret_map_may_be_empty() {
        assert_eq!(parse_secret_map("{}"), Ok(vec![]));
        assert_eq!(parse_secret_map(" { \n } \n"), Ok(vec![]));
    }

    #[test]
    fn secret_map_errors_name_the_key_never_the_secret() {
        let (g, o) = (hex_of(0xab), KEY_B_HEX);
        let short = &o[..60];
        // (what is wrong, input, text the error must contain)
        let cases = [
            ("empty input", String::new(), "JSON object"),
            ("array", format!("[\"{g}\"]"), "JSON object"),
            ("string", format!("\"{g}\""), "JSON object"),
            ("bare secret", g.clone(), "JSON object"),
            ("null", "null".into(), "JSON object"),
            ("duplicate", format!(r#"{{"a":"{g}","b":"{o}","a":"{o}"}}"#), r#""a" appears more"#),
            ("escaped duplicate", format!(r#"{{"ab":"{g}","a\u0062":"{o}"}}"#), r#""ab" appears"#),
            ("bad hex", format!(r#"{{"ok":"{g}","bad":"{o}zz"}}"#), r#""bad" is invalid: JWT"#),
            ("short hex", format!(r#"{{"short":"{short}"}}"#), "has 60 hex digits"),
            ("blank secret", r#"{"blank":"  "}"#.into(), r#""blank" is invalid"#),
            ("number value", r#"{"num":5}"#.into(), r#""num" is not a JSON string"#),
            ("object value", format!(r#"{{"obj":{{"k":"{o}"}}}}"#), r#""obj" is not"#),
            ("bad escape in value", format!(r#"{{"esc":"\q{o}"}}"#), r#""esc" is not"#),
            ("unterminated value", format!(r#"{{"open":"{o}"#), r#""open" is not"#),
            ("unterminated key", r#"{"open"#.into(), "expected a name"),
            ("unquoted key", format!(r#"{{a:"{o}"}}"#), "expected a name"),
            ("missing colon", format!(r#"{{"a" "{o}"}}"#), r#"':' after name "a""#),
            ("missing comma", format!(r#"{{"a":"{o}" "b":"{g}"}}"#), r#"secret for "a""#),
            ("trailing comma", format!(r#"{{"a":"{o}",}}"#), "expected a name"),
            ("unclosed object", format!(r#"{{"a":"{o}""#), r#"secret for "a""#),
            ("text after object", format!(r#"{{"a":"{o}"}} {{}}"#), "after the JSON object"),
            ("control character in key", format!("{{\"a\nb\":\"{o}\"}}"), "expected a name"),
        ];
        for (what, input, needle) in cases {
            let err = parse_secret_map(&input).unwrap_err();
            assert!(err.contains(needle), "{what}: {err}");
            assert_no_secret_in(&err, &[&g, o]);
        }
    }

    /// A small deterministic generator, so the robustness test needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound.max(1) as u64) as usize
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // Inputs are mutations of valid ones, so they get deep into each parser, using the bytes
        // the parsers care about plus some that are not UTF-8.
        const BYTES: &[u8] = b"{}[]\":,\\. \t\r\n=+/-_0123456789abcdefxXABEFeyJ\xff\xc3\xa9";
        let seeds: Vec<Vec<u8>> = vec![
            mint(&secret_a(), NOW, Some("x")).into_bytes(),
            format!("Bearer {}", mint(&secret_a(), NOW, None)).into_bytes(),
            format!(r#"{{"a":"{KEY_A_HEX}","b\u0063":"0x{KEY_B_HEX}"}}"#).into_bytes(),
            format!("0x{KEY_A_HEX}\n").into_bytes(),
            Vec::new(),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].clone();
            for _ in 0..=rng.below(4) {
                let byte = BYTES[rng.below(BYTES.len())];
                let at = rng.below(input.len());
                match rng.below(3) {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.insert(at, byte),
                }
            }
            let now = NOW + rng.below(200) as u64 - 100;
            let _ = verify(&secret_a(), &input, now, IAT_LEEWAY_SECS);
            let _ = verify(&secret_a(), &input, now, u64::MAX);
            let _ = bearer_token(&input);
            let text = String::from_utf8_lossy(&input);
            let _ = Secret::from_hex(&text);
            let _ = parse_secret_map(&text);
        }
    }
}

#[cfg(test)]
mod claims_tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn secret(byte: u8) -> Secret {
        Secret::from_bytes([byte; SECRET_LEN])
    }

    /// A token with the given raw claims JSON, signed with `secret`.
    fn token(secret: &Secret, claims: &str) -> String {
        let input = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(claims.as_bytes()));
        let signature = URL_SAFE_NO_PAD.encode(sign(&secret.0, input.as_bytes()));
        format!("{input}.{signature}")
    }

    #[test]
    fn verified_claims_carry_id_and_clv() {
        let t = token(&secret(1), &format!(r#"{{"iat":{NOW},"id":"bn-a","clv":"Lodestar/v1.2.3"}}"#));
        let claims = verify_claims(&secret(1), t.as_bytes(), NOW, IAT_LEEWAY_SECS).expect("valid");
        assert_eq!(claims, Claims { id: Some("bn-a".into()), clv: Some("Lodestar/v1.2.3".into()) });
        let minted = mint(&secret(1), NOW, Some("x"));
        assert_eq!(
            verify_claims(&secret(1), minted.as_bytes(), NOW, IAT_LEEWAY_SECS).map(|c| c.id),
            Ok(Some("x".into()))
        );
    }

    #[test]
    fn claims_of_a_token_signed_with_another_secret_are_refused() {
        let t = token(&secret(2), &format!(r#"{{"iat":{NOW},"id":"bn-a"}}"#));
        assert_eq!(verify_claims(&secret(1), t.as_bytes(), NOW, 60), Err(JwtError::BadSignature));
        // Peeking reads them anyway: it is only for choosing the secret.
        assert_eq!(peek_claims(t.as_bytes()).and_then(|c| c.id), Some("bn-a".into()));
    }

    #[test]
    fn claims_that_are_not_strings_are_absent() {
        let t = token(&secret(1), &format!(r#"{{"iat":{NOW},"id":7,"clv":null}}"#));
        assert_eq!(verify_claims(&secret(1), t.as_bytes(), NOW, 60), Ok(Claims::default()));
        for bad in [&b"a.b"[..], b"a.!!.c", b"", b"a.e30.c.d"] {
            assert_eq!(peek_claims(bad), None, "{bad:?}");
        }
        assert_eq!(peek_claims(b"x.e30.y"), Some(Claims::default()), "{{}} is an object");
    }
}
