//! `Bn`: the beacon node's side of one HTTP/1.1 connection, driven step by step from a test
//! (send, read, expect a close), plus builders of Engine API request bodies.
//!
//! Reading never loses bytes: a response is taken from the buffer only once it is whole, so
//! a read that times out can be retried, and pipelined responses are read one by one.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::reply::ZERO_HASH;
use super::wire::{self, Parsed};

/// How long `read_response` and `post` wait unless `set_timeout` says otherwise; longer than
/// any Engine API timeout the proxy may apply before answering.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many bytes one read may append to the buffer.
const READ_SIZE: usize = 64 * 1024;

/// Chunk size `post_with` uses when the caller asks for `Transfer-Encoding: chunked`.
const REQUEST_CHUNK_SIZE: usize = 1024;

/// A beacon node's connection to the proxy (or to a mock, in self-tests).
pub struct Bn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    /// The server has closed (FIN or RST); no more bytes will come.
    eof: bool,
    /// The close was an RST.
    reset: bool,
    timeout: Duration,
}

/// A response as read whole; the body is de-chunked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why no whole response could be read.
#[derive(Debug)]
pub enum ReadError {
    /// Time ran out; `buffered` bytes of an incomplete response are kept for the next read.
    Timeout { buffered: usize },
    /// The server closed the connection (`reset`: with an RST) before a whole response;
    /// `partial` is what had arrived of it.
    Closed { partial: Vec<u8>, reset: bool },
    /// The bytes are not an HTTP/1.1 response.
    Invalid(String),
    /// Any other socket error.
    Io(std::io::Error),
}

/// The key order of a JSON-RPC envelope; the proxy must accept both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrder {
    /// `jsonrpc, id, method, params`, as Lodestar and Prysm send.
    Lodestar,
    /// `jsonrpc, method, params, id`, as Lighthouse sends.
    Lighthouse,
}

/// What one attempt to read more bytes gave.
enum Fill {
    /// This many bytes were appended.
    Data(usize),
    Closed,
    TimedOut,
    Failed(std::io::Error),
}

impl Bn {
    /// Connects to `addr`; panics if it cannot.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Bn {
        match Bn::try_connect(addr) {
            Ok(bn) => bn,
            Err(e) => panic!("BN cannot connect to {addr}: {e}"),
        }
    }

    /// Connects to `addr`, for tests that expect a refusal.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Bn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(Bn { stream, peer: addr, buf: Vec::new(), eof: false, reset: false, timeout: DEFAULT_TIMEOUT })
    }

    /// Sets how long `read_response` and `post` wait (10 s by default).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("BN local address")
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The socket itself, for what these helpers do not cover.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` as they are; panics on a socket error.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send_raw(bytes) {
            panic!("BN cannot send {} bytes to {}: {e}", bytes.len(), self.peer);
        }
    }

    /// Writes `bytes` as they are, for tests that expect the write to fail.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `POST /` with `body` and default headers, without reading the answer (to
    /// pipeline, or to read it later).
    #[track_caller]
    pub fn send_post(&mut self, headers: &[(&str, &str)], body: &[u8]) {
        let request = post_request(&self.peer.to_string(), headers, body);
        self.send_raw(&request);
    }

    /// POSTs `body` as JSON and reads the (final) response.
    #[track_caller]
    pub fn post(&mut self, body: &[u8]) -> HttpResponse {
        self.post_with(&[], body)
    }

    /// POSTs `body` with extra `headers` and reads the (final) response; see `post_request`
    /// for how the headers combine with the defaults.
    #[track_caller]
    pub fn post_with(&mut self, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        self.send_post(headers, body);
        self.read_response()
    }

    /// Reads the next final response, skipping interim (1xx) ones; panics if none arrives
    /// within the timeout or the connection closes first.
    #[track_caller]
    pub fn read_response(&mut self) -> HttpResponse {
        let result = self.read_until(Instant::now() + self.timeout, false);
        self.expect_response(result)
    }

    /// Reads the next response, interim (100 Continue) ones included.
    #[track_caller]
    pub fn read_response_allow_interim(&mut self) -> HttpResponse {
        let result = self.read_until(Instant::now() + self.timeout, true);
        self.expect_response(result)
    }

    /// Reads the next final response if it arrives within `timeout`; `None` otherwise
    /// (bytes of an incomplete one stay buffered). Panics if the connection closes first.
    #[track_caller]
    pub fn read_response_timeout(&mut self, timeout: Duration) -> Option<HttpResponse> {
        match self.try_read_response(timeout) {
            Err(ReadError::Timeout { .. }) => None,
            result => Some(self.expect_response(result)),
        }
    }

    /// Reads the next final response within `timeout`, saying why not instead of panicking.
    pub fn try_read_response(&mut self, timeout: Duration) -> Result<HttpResponse, ReadError> {
        self.read_until(Instant::now() + timeout, false)
    }

    /// Whether the server closes the connection (read gives EOF or ECONNRESET) within
    /// `timeout`. Bytes arriving meanwhile are kept for `read_response`.
    pub fn is_closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            match self.fill(deadline) {
                Fill::Data(_) => {}
                Fill::TimedOut => return false,
                Fill::Closed | Fill::Failed(_) => self.eof = true,
            }
        }
        true
    }

    /// Half-closes: the server sees EOF, and can still answer.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    #[track_caller]
    fn expect_response(&self, result: Result<HttpResponse, ReadError>) -> HttpResponse {
        match result {
            Ok(response) => response,
            Err(e) => panic!("BN got no response from {}: {e:?}", self.peer),
        }
    }

    fn read_until(&mut self, deadline: Instant, allow_interim: bool) -> Result<HttpResponse, ReadError> {
        loop {
            // A reset truncates whatever it interrupts, so it never completes a body.
            let complete_at_eof = self.eof && !self.reset;
            match wire::parse_response(&self.buf, complete_at_eof) {
                Parsed::Complete { message, len } => {
                    self.buf.drain(..len);
                    let interim = (100..200).contains(&message.status) && message.status != 101;
                    if interim && !allow_interim {
                        continue;
                    }
                    return Ok(HttpResponse {
                        status: message.status,
                        headers: message.headers,
                        body: message.body,
                    });
                }
                Parsed::Invalid(e) => return Err(ReadError::Invalid(e)),
                Parsed::Partial => {}
            }
            if self.eof {
                let partial = self.buf.clone();
                return Err(ReadError::Closed { partial, reset: self.reset });
            }
            match self.fill(deadline) {
                Fill::Data(_) => {}
                Fill::Closed => self.eof = true,
                Fill::TimedOut => {
                    let buffered = self.buf.len();
                    return Err(ReadError::Timeout { buffered });
                }
                Fill::Failed(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Reads once into the buffer, waiting no later than `deadline`.
    fn fill(&mut self, deadline: Instant) -> Fill {
        let start = self.buf.len();
        self.buf.resize(start + READ_SIZE, 0);
        let fill = self.read_into(start, deadline);
        let filled = if let Fill::Data(n) = fill { n } else { 0 };
        self.buf.truncate(start + filled);
        fill
    }

    /// Reads into `buf[start..]`, retrying interruptions and short timeouts.
    fn read_into(&mut self, start: usize, deadline: Instant) -> Fill {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Fill::TimedOut;
            }
            // std rejects a zero read timeout, hence the floor.
            let wait = left.max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait)).expect("set BN read timeout");
            match self.stream.read(&mut self.buf[start..]) {
                Ok(0) => return Fill::Closed,
                Ok(n) => return Fill::Data(n),
                Err(e) => match e.kind() {
                    ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => {}
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                        self.reset = true;
                        return Fill::Closed;
                    }
                    _ => return Fill::Failed(e),
                },
            }
        }
    }
}

/// Closing by `shutdown(2)` acts on the socket itself, so the server sees the close now
/// even if a child process forked meanwhile (a test spawning the proxy) holds a copy of
/// the descriptor until its exec.
impl Drop for Bn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl HttpResponse {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    /// The body parsed as JSON; panics showing the body if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(e) => panic!("response body is not JSON ({e}): {:?}", self.text()),
        }
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The bytes of `POST / HTTP/1.1` to `host` carrying `body`. Defaults: `Host`,
/// `Content-Type: application/json` and `Content-Length`; a header of the same name in
/// `headers` replaces its default, others are added. `Transfer-Encoding: chunked` among
/// `headers` drops `Content-Length` and sends the body in chunks of 1024 bytes.
pub fn post_request(host: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let given = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let length = body.len().to_string();
    let defaults =
        [("Host", host), ("Content-Type", "application/json"), ("Content-Length", length.as_str())];
    let mut head = String::from("POST / HTTP/1.1\r\n");
    for (name, value) in defaults {
        let implied = name == "Content-Length" && chunked;
        if !given(name) && !implied {
            head += &format!("{name}: {value}\r\n");
        }
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    let mut bytes = head.into_bytes();
    if chunked {
        bytes.extend_from_slice(&wire::encode_chunked(body, REQUEST_CHUNK_SIZE));
    } else {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// A JSON-RPC 2.0 request body with a numeric id, in Lodestar's key order.
pub fn rpc_body(id: u64, method: &str, params: Value) -> Vec<u8> {
    rpc_body_with_id(&json!(id), method, params, KeyOrder::Lodestar)
}

/// A JSON-RPC 2.0 request body with any id, in the given key order.
pub fn rpc_body_with_id(id: &Value, method: &str, params: Value, order: KeyOrder) -> Vec<u8> {
    let method = Value::from(method);
    let body = match order {
        KeyOrder::Lodestar => {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":{method},"params":{params}}}"#)
        }
        KeyOrder::Lighthouse => {
            format!(r#"{{"jsonrpc":"2.0","method":{method},"params":{params},"id":{id}}}"#)
        }
    };
    body.into_bytes()
}

/// An `engine_newPayloadV3` request for a small empty block at `timestamp`: the execution
/// payload (block hash derived from the timestamp), no blob hashes, and a beacon root.
pub fn new_payload(id: u64, timestamp: u64) -> Vec<u8> {
    let payload = json!({
        "parentHash": hash(timestamp.saturating_sub(1)),
        "feeRecipient": format!("0x{}", "00".repeat(20)),
        "stateRoot": ZERO_HASH,
        "receiptsRoot": ZERO_HASH,
        "logsBloom": format!("0x{}", "00".repeat(256)),
        "prevRandao": ZERO_HASH,
        "blockNumber": quantity(id),
        "gasLimit": quantity(30_000_000),
        "gasUsed": "0x0",
        "timestamp": quantity(timestamp),
        "extraData": "0x",
        "baseFeePerGas": quantity(7),
        "blockHash": hash(timestamp),
        "transactions": [],
        "withdrawals": [],
        "blobGasUsed": "0x0",
        "excessBlobGas": "0x0",
    });
    rpc_body(id, "engine_newPayloadV3", json!([payload, [], hash(u64::MAX)]))
}

/// An `engine_forkchoiceUpdatedV3` request; with a timestamp it carries payload
/// attributes (so it asks for a block to be built), without it `null`.
pub fn fcu(id: u64, timestamp: Option<u64>) -> Vec<u8> {
    let state = json!({
        "headBlockHash": hash(timestamp.unwrap_or(id)),
        "safeBlockHash": ZERO_HASH,
        "finalizedBlockHash": ZERO_HASH,
    });
    let attributes = timestamp.map_or(Value::Null, |t| {
        json!({
            "timestamp": quantity(t),
            "prevRandao": ZERO_HASH,
            "suggestedFeeRecipient": format!("0x{}", "00".repeat(20)),
            "withdrawals": [],
            "parentBeaconBlockRoot": hash(u64::MAX),
        })
    });
    rpc_body(id, "engine_forkchoiceUpdatedV3", json!([state, attributes]))
}

/// A request body from `tests/fixtures/` (Engine API traffic copied into the repository).
#[track_caller]
pub fn sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("cannot read sample {}: {e}", path.display()),
    }
}

/// A JSON-RPC QUANTITY: `0x` and lowercase hex without leading zeros.
pub fn quantity(n: u64) -> String {
    format!("0x{n:x}")
}

/// A 32-byte hash whose low bytes are `n`, so distinct numbers give distinct hashes.
pub fn hash(n: u64) -> String {
    format!("0x{n:064x}")
}
