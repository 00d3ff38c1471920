//! `Reply`: what a mock EL does with one request — answer (with any framing), wait, hang,
//! close, reset, write garbage, trickle — plus the answers of a healthy EL
//! (`default_reply`) and builders of JSON-RPC answers. Knows no sockets or threads.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::lock;
use super::received::Received;
use super::wire;

/// A 32-byte zero hash as a JSON-RPC DATA string.
pub const ZERO_HASH: &str = "0x0000000000000000000000000000000000000000000000000000000000000000";

/// Chunk size of `Framing::Chunked` answers; small enough that a modest body has several.
const CHUNK_SIZE: usize = 4096;

/// What `Reply::Reset` writes before dropping the connection: a head promising 1000 bytes of
/// body, and the first 22 of them.
pub(super) const RESET_PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 1000\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":";

/// How a `Reply::Json` body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    ContentLength,
    /// In chunks of 4096 bytes.
    Chunked,
    /// No length: the body ends when the mock closes the connection (which it then does).
    CloseDelimited,
}

/// What the mock does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A normal answer (Content-Type: application/json). The connection stays open unless
    /// the framing is close-delimited or the request asked to close.
    Json { status: u16, body: Vec<u8>, framing: Framing },
    /// Waits, then does the inner reply. `stop()` cuts the wait short.
    Delay(Duration, Box<Reply>),
    /// Never answers; the socket stays open until `stop()`. Later requests on the connection
    /// are still read and recorded but never answered.
    Hang,
    /// Closes the connection (FIN) without answering.
    Close,
    /// Writes a head promising 1000 bytes of body and 22 of them, then drops the socket
    /// without `shutdown`. The kernel sends RST instead of FIN only if unread bytes are
    /// waiting in the mock's receive buffer (the mock stops reading at this request, so
    /// anything the client sent after it counts); otherwise the client sees a FIN
    /// mid-body, and its next write draws the RST. std cannot set `SO_LINGER` to 0 without
    /// unstable features or unsafe code, so this is as abrupt as it gets.
    Reset,
    /// Writes these bytes as they are, then closes.
    Garbage(Vec<u8>),
    /// Writes the inner reply one byte at a time, with this gap between bytes.
    Trickle(Box<Reply>, Duration),
    /// Does the inner reply (without adding `Connection: close`), then closes at once: the
    /// client's next request on this keep-alive connection finds it closed.
    CloseIdle(Box<Reply>),
    /// Writes the first bytes of the inner answer (`Json`, as encoded), then waits for the
    /// test to `open` the gate (the rest is written) or `break_off` (the connection closes
    /// mid-answer). A gate nobody opens holds until `stop()`.
    Gated { reply: Box<Reply>, first: usize, gate: Gate },
}

/// The signal a `Reply::Gated` answer waits for, shared between the test and the mock.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<Option<bool>>, Condvar)>);

impl Gate {
    /// The rest of the answer goes out.
    pub fn open(&self) {
        self.set(true);
    }

    /// The answer is never finished: the mock closes the connection.
    pub fn break_off(&self) {
        self.set(false);
    }

    fn set(&self, open: bool) {
        *super::lock(&self.0 .0) = Some(open);
        self.0 .1.notify_all();
    }

    /// Waits up to `timeout` for the test's word: Some(true) to go on, Some(false) to break off.
    pub(super) fn wait(&self, timeout: Duration) -> Option<bool> {
        let guard = super::lock(&self.0 .0);
        let (guard, _) = self
            .0
             .1
            .wait_timeout_while(guard, timeout, |word| word.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard
    }
}

/// How a connection continues after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    KeepAlive,
    Close,
    Reset,
    Hang,
}

impl Reply {
    /// A 200 answer with Content-Length framing.
    pub fn json(body: impl Into<Vec<u8>>) -> Reply {
        Reply::http(200, body)
    }

    /// A 200 answer carrying `value` serialized.
    pub fn json_value(value: &Value) -> Reply {
        Reply::json(value.to_string())
    }

    /// An answer with the given status and Content-Length framing.
    pub fn http(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Json { status, body: body.into(), framing: Framing::ContentLength }
    }

    /// The same reply with the innermost answer framed as `framing`.
    pub fn framed(self, framing: Framing) -> Reply {
        match self {
            Reply::Json { status, body, .. } => Reply::Json { status, body, framing },
            Reply::Delay(d, inner) => Reply::Delay(d, Box::new(inner.framed(framing))),
            Reply::Trickle(inner, gap) => Reply::Trickle(Box::new(inner.framed(framing)), gap),
            Reply::CloseIdle(inner) => Reply::CloseIdle(Box::new(inner.framed(framing))),
            other => other,
        }
    }

    /// This reply after a delay.
    pub fn delayed(self, delay: Duration) -> Reply {
        Reply::Delay(delay, Box::new(self))
    }

    /// This reply written one byte at a time.
    pub fn trickled(self, gap: Duration) -> Reply {
        Reply::Trickle(Box::new(self), gap)
    }

    /// The first `first` bytes of this answer, then the rest once `gate` opens.
    pub fn gated(self, first: usize, gate: &Gate) -> Reply {
        Reply::Gated { reply: Box::new(self), first, gate: gate.clone() }
    }

    /// This reply, then the connection closes without warning.
    pub fn then_close(self) -> Reply {
        Reply::CloseIdle(Box::new(self))
    }

    /// How the connection continues after this reply to a request that did (`close`) or
    /// did not ask to close.
    pub(super) fn outcome(&self, close: bool) -> Outcome {
        match self {
            Reply::Json { framing, .. } if close || *framing == Framing::CloseDelimited => Outcome::Close,
            Reply::Json { .. } => Outcome::KeepAlive,
            Reply::Delay(_, inner) | Reply::Trickle(inner, _) | Reply::Gated { reply: inner, .. } => {
                inner.outcome(close)
            }
            Reply::Hang => Outcome::Hang,
            Reply::Close | Reply::Garbage(_) => Outcome::Close,
            Reply::Reset => Outcome::Reset,
            Reply::CloseIdle(inner) => match inner.outcome(close) {
                Outcome::KeepAlive => Outcome::Close,
                other => other,
            },
        }
    }
}

/// A healthy EL's answer: JSON-RPC 2.0 echoing the request's id byte for byte, with
/// `default_result`; a parse error (-32700) for a body that is not JSON, and an invalid
/// request error (-32600) for JSON without a method.
pub fn default_reply(request: &Received) -> Reply {
    if !request.valid_json {
        return rpc_error(request, -32700, "Parse error");
    }
    if request.rpc_method.is_none() {
        return rpc_error(request, -32600, "Invalid Request");
    }
    rpc_result(request, default_result(request))
}

/// The `result` a healthy EL gives for the request's method (VALID for state changes).
pub fn default_result(request: &Received) -> Value {
    let method = request.rpc_method.as_deref().unwrap_or_default();
    if method.starts_with("engine_newPayload") {
        payload_status("VALID")
    } else if method.starts_with("engine_forkchoiceUpdated") {
        json!({ "payloadStatus": payload_status("VALID"), "payloadId": null })
    } else if method.starts_with("engine_getPayload") && !method.contains("Bodies") {
        get_payload_result()
    } else if method == "engine_exchangeCapabilities" {
        let params = serde_json::from_slice::<Value>(&request.body).ok();
        params.map_or(json!([]), |p| p["params"][0].clone())
    } else if method == "engine_getClientVersionV1" {
        json!([{ "code": "MK", "name": "mock", "version": "1.0.0", "commit": "0x00000000" }])
    } else {
        json!("0x1")
    }
}

/// The default answer with the payload status set to `status` (`"SYNCING"`, `"INVALID"`…):
/// `result.status` for newPayload, `result.payloadStatus.status` for forkchoiceUpdated.
/// Other methods get `default_reply`.
pub fn reply_status(request: &Received, status: &str) -> Reply {
    if request.is("engine_newPayload") {
        rpc_result(request, payload_status(status))
    } else if request.is("engine_forkchoiceUpdated") {
        let result = json!({ "payloadStatus": payload_status(status), "payloadId": null });
        rpc_result(request, result)
    } else {
        default_reply(request)
    }
}

/// A JSON-RPC success answer echoing the request's raw id (or `null`).
pub fn rpc_result(request: &Received, result: Value) -> Reply {
    Reply::json(format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, raw_id(request)))
}

/// A JSON-RPC error answer echoing the request's raw id (or `null`).
pub fn rpc_error(request: &Received, code: i64, message: &str) -> Reply {
    let error = json!({ "code": code, "message": message });
    Reply::json(format!(r#"{{"jsonrpc":"2.0","id":{},"error":{error}}}"#, raw_id(request)))
}

/// A behaviour that gives the first requests these replies in order, then `default_reply`.
pub fn sequence(
    replies: impl IntoIterator<Item = Reply>,
) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    let queue = Mutex::new(replies.into_iter().collect::<VecDeque<_>>());
    move |request| lock(&queue).pop_front().unwrap_or_else(|| default_reply(request))
}

fn raw_id(request: &Received) -> &str {
    request.rpc_id_raw.as_deref().unwrap_or("null")
}

fn payload_status(status: &str) -> Value {
    let has_hash = matches!(status, "VALID" | "INVALID");
    let hash = if has_hash { json!(ZERO_HASH) } else { Value::Null };
    let error = if status.starts_with("INVALID") { json!("mock: invalid") } else { Value::Null };
    json!({ "status": status, "latestValidHash": hash, "validationError": error })
}

fn get_payload_result() -> Value {
    json!({
        "executionPayload": {
            "blockHash": ZERO_HASH,
            "blockNumber": "0x1",
            "timestamp": "0x0",
            "transactions": [],
        },
        "blockValue": "0x0",
        "blobsBundle": { "commitments": [], "proofs": [], "blobs": [] },
        "shouldOverrideBuilder": false,
    })
}

/// The bytes of a whole answer; `connection` is the value of a `Connection` header to add.
pub(super) fn encode_response(
    status: u16,
    body: &[u8],
    framing: Framing,
    connection: Option<&str>,
) -> Vec<u8> {
    let mut head =
        format!("HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n", wire::reason(status));
    match framing {
        Framing::ContentLength => head += &format!("Content-Length: {}\r\n", body.len()),
        Framing::Chunked => head += "Transfer-Encoding: chunked\r\n",
        Framing::CloseDelimited => {}
    }
    if let Some(connection) = connection {
        head += &format!("Connection: {connection}\r\n");
    }
    head += "\r\n";
    let mut bytes = head.into_bytes();
    match framing {
        Framing::Chunked => bytes.extend_from_slice(&wire::encode_chunked(body, CHUNK_SIZE)),
        _ => bytes.extend_from_slice(body),
    }
    bytes
}
