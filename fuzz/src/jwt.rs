//! Properties of the HS256 token code, for the `jwt_verify` target.
//!
//! The input's first 8 bytes (little-endian, zero-padded) are `now`; the rest is the text under
//! test. It is verified as a token, read as an `Authorization` value, used as a client id in a
//! mint/verify round trip, split into a header and claims that are signed with the secret (so
//! that the header and claims checks are reached at all), and parsed as a secret and as a
//! secret map.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sync_proxy::jwt::{self, JwtError, Secret, IAT_LEEWAY_SECS, SECRET_LEN};

/// The secret every token here is checked against.
const SECRET: [u8; SECRET_LEN] = *b"sync-proxy fuzzing secret, 32 B!";

pub fn check(data: &[u8]) {
    let (now, text) = data.split_at(data.len().min(8));
    let mut now_bytes = [0u8; 8];
    now_bytes[..now.len()].copy_from_slice(now);
    let now = u64::from_le_bytes(now_bytes);
    let secret = Secret::from_bytes(SECRET);

    // Arbitrary bytes are refused or accepted, never a panic; forging a MAC is not expected.
    let _ = jwt::verify(&secret, text, now, IAT_LEEWAY_SECS);
    bearer(text);
    round_trip(&secret, now & i64::MAX as u64, std::str::from_utf8(text).ok());
    signed(&secret, text, now);
    secret_text(&String::from_utf8_lossy(text));
}

/// `bearer_token` returns a trimmed, non-empty tail of the value, and finds it again after
/// a plain `Bearer ` prefix.
fn bearer(value: &[u8]) {
    let Some(token) = jwt::bearer_token(value) else { return };
    assert!(!token.is_empty() && token == token.trim_ascii(), "untrimmed token {token:?}");
    assert!(value.trim_ascii().ends_with(token), "token {token:?} is not the end of {value:?}");
    let again = [b"Bearer ".as_slice(), token].concat();
    assert_eq!(jwt::bearer_token(&again), Some(token));
}

/// A minted token verifies at its own `iat`, is out of range one second past the leeway, and
/// is a forgery under another secret.
fn round_trip(secret: &Secret, iat: u64, client_id: Option<&str>) {
    let token = jwt::mint(secret, iat, client_id);
    assert_eq!(jwt::verify(secret, token.as_bytes(), iat, IAT_LEEWAY_SECS), Ok(()), "{token}");
    let late = iat + IAT_LEEWAY_SECS + 1;
    let signed_iat = i64::try_from(iat).expect("iat is masked to i64");
    assert_eq!(
        jwt::verify(secret, token.as_bytes(), late, IAT_LEEWAY_SECS),
        Err(JwtError::IatOutOfRange { iat: signed_iat, now: late })
    );
    let other = Secret::from_bytes([0x5a; SECRET_LEN]);
    assert_eq!(jwt::verify(&other, token.as_bytes(), iat, IAT_LEEWAY_SECS), Err(JwtError::BadSignature));
}

/// A token built from arbitrary header and claims bytes (split at the first `.`; without one,
/// an HS256 header and the whole text as claims), correctly encoded and signed, is never refused
/// for its structure, its base64 or its signature: only the header or claims checks may refuse it.
fn signed(secret: &Secret, text: &[u8], now: u64) {
    let (header, claims) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (br#"{"alg":"HS256"}"#.as_slice(), text),
    };
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let mut mac = Hmac::<Sha256>::new_from_slice(&SECRET).expect("HMAC takes any key length");
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    let result = jwt::verify(secret, token.as_bytes(), now, IAT_LEEWAY_SECS);
    assert!(
        !matches!(result, Err(JwtError::Malformed | JwtError::BadBase64 | JwtError::BadSignature)),
        "a correctly signed token was refused: {result:?}"
    );
}

/// `Secret::from_hex` accepts exactly what its documentation says (surrounding whitespace, an
/// optional 0x or 0X, 64 hex digits), and `parse_secret_map` never returns a name twice.
fn secret_text(text: &str) {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")).unwrap_or(trimmed);
    let valid = digits.len() == 2 * SECRET_LEN && digits.bytes().all(|b| b.is_ascii_hexdigit());
    assert_eq!(Secret::from_hex(text).is_ok(), valid, "from_hex on {text:?}");
    if let Ok(entries) = jwt::parse_secret_map(text) {
        for (i, (name, _)) in entries.iter().enumerate() {
            assert!(entries[..i].iter().all(|(earlier, _)| earlier != name), "name {name:?} twice");
        }
    }
}
