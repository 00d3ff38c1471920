//! `Received`: one request as a mock EL read it whole, with its JSON-RPC method and id
//! picked out (the id also byte for byte, for echoing), and accessors tests need.

use std::time::Instant;

use serde_json::Value;

use super::wire;

/// One request as the mock read it whole.
#[derive(Clone, Debug)]
pub struct Received {
    /// Ordinal of the connection it came on (0 for the first accepted), across restarts.
    pub conn: usize,
    /// The raw request line, e.g. `POST / HTTP/1.1`.
    pub method_line: String,
    pub headers: Vec<(String, String)>,
    /// The body with any chunked coding removed.
    pub body: Vec<u8>,
    /// Whether the body parsed as JSON.
    pub valid_json: bool,
    /// The top-level `method`, when the body is a JSON object with a string `method`.
    pub rpc_method: Option<String>,
    /// The top-level `id` (`Some(Null)` for `"id":null`, `None` when absent).
    pub rpc_id: Option<Value>,
    /// The `id` exactly as written in the body, which `default_reply` echoes byte for byte.
    pub rpc_id_raw: Option<String>,
    /// When the last byte of the request had been read.
    pub at: Instant,
}

impl Received {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// The body parsed as JSON; panics if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is not JSON")
    }

    /// Whether the JSON-RPC method starts with `prefix` (`"engine_newPayload"` matches
    /// every version).
    pub fn is(&self, prefix: &str) -> bool {
        self.rpc_method.as_deref().is_some_and(|m| m.starts_with(prefix))
    }

    /// The timestamp the Engine API puts in the request: newPayload's `params[0].timestamp`
    /// or forkchoiceUpdated's `params[1].timestamp`, as a number.
    pub fn rpc_timestamp(&self) -> Option<u64> {
        let index = if self.is("engine_newPayload") {
            0
        } else if self.is("engine_forkchoiceUpdated") {
            1
        } else {
            return None;
        };
        let json: Value = serde_json::from_slice(&self.body).ok()?;
        let quantity = json["params"][index]["timestamp"].as_str()?;
        u64::from_str_radix(quantity.strip_prefix("0x")?, 16).ok()
    }

    pub(super) fn from_wire(conn: usize, request: wire::Request, at: Instant) -> Received {
        let json = serde_json::from_slice::<Value>(&request.body).ok();
        let rpc_method =
            json.as_ref().and_then(|j| j.get("method")).and_then(Value::as_str).map(str::to_string);
        let rpc_id = json.as_ref().and_then(|j| j.get("id")).cloned();
        let rpc_id_raw = rpc_id
            .as_ref()
            .and_then(|_| raw_member(&request.body, "id"))
            .map(|raw| String::from_utf8_lossy(raw).into_owned());
        Received {
            conn,
            method_line: request.method_line,
            headers: request.headers,
            body: request.body,
            valid_json: json.is_some(),
            rpc_method,
            rpc_id,
            rpc_id_raw,
            at,
        }
    }
}

/// The raw text of a top-level member of a JSON object, found by skipping values without
/// decoding them. The body must already be known to be valid JSON.
fn raw_member<'a>(body: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let quoted = format!("\"{key}\"");
    let mut pos = skip_whitespace(body, 0);
    if body.get(pos) != Some(&b'{') {
        return None;
    }
    pos += 1;
    loop {
        pos = skip_whitespace(body, pos);
        match body.get(pos)? {
            b'}' => return None,
            b',' => {
                pos += 1;
                continue;
            }
            _ => {}
        }
        let key_end = skip_value(body, pos)?;
        let name = &body[pos..key_end];
        pos = skip_whitespace(body, key_end);
        if body.get(pos) != Some(&b':') {
            return None;
        }
        pos = skip_whitespace(body, pos + 1);
        let value_end = skip_value(body, pos)?;
        if name == quoted.as_bytes() {
            return Some(&body[pos..value_end]);
        }
        pos = value_end;
    }
}

fn skip_whitespace(body: &[u8], mut pos: usize) -> usize {
    while body.get(pos).is_some_and(u8::is_ascii_whitespace) {
        pos += 1;
    }
    pos
}

/// The end of the JSON value starting at `pos`.
fn skip_value(body: &[u8], pos: usize) -> Option<usize> {
    match body.get(pos)? {
        b'"' => skip_string(body, pos),
        b'{' | b'[' => skip_nested(body, pos),
        _ => {
            let len = body[pos..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(body.len() - pos);
            Some(pos + len)
        }
    }
}

fn skip_string(body: &[u8], start: usize) -> Option<usize> {
    let mut pos = start + 1;
    loop {
        match body.get(pos)? {
            b'\\' => pos += 2,
            b'"' => return Some(pos + 1),
            _ => pos += 1,
        }
    }
}

fn skip_nested(body: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut pos = start;
    loop {
        match body.get(pos)? {
            b'"' => {
                pos = skip_string(body, pos)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(pos + 1);
                }
            }
            _ => {}
        }
        pos += 1;
    }
}

/// `ids` with each run of one id counted once: an ordered call whose answer was lost is sent
/// again right after itself, which is harmless, unlike a gap or a call out of order.
pub fn without_repeats(ids: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &id in ids {
        if out.last() != Some(&id) {
            out.push(id);
        }
    }
    out
}
