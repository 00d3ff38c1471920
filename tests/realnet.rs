//! Regressions from the realnet capture (issue 7: "whatever the real traffic shows that the mocks
//! got wrong … becomes a regression test"). On 2026-11-21 a real Lodestar 1.5.1 beacon node
//! (`lodestar dev`, 2 s slots, Engine API V2) drove two EthereumJS 0.10.5 execution clients
//! through the proxy (a devnet on loopback, as `tests/interop.sh` runs it), and a TCP relay on each hop recorded every
//! byte; the bodies are kept in `tests/fixtures/lodestar-1.5.1/`. The toolkit's mocks had
//! assumed otherwise on each point below, so these tests replay the real shapes against the real
//! proxy binary, with mock ELs that write EthereumJS's answers byte for byte (`RawEl`):
//!
//! - Lodestar's request shape: a new connection per call with `Connection: close`, the request in
//!   one write, node-fetch's headers in node-fetch's order (`Accept: */*`, its `User-Agent`,
//!   `Accept-Encoding: gzip,deflate`), a JWT whose header has `typ` before `alg` and whose claims
//!   are only `iat`, the same token for every call within a second. `--jwt-secret` accepts it; the
//!   ELs get the end-to-end headers unchanged and no hop-by-hop ones; the beacon node gets its
//!   answer with `Connection: close`, and the connection closes.
//! - A slot as Lodestar drives it: fcU with payload attributes, ~630 ms later getPayload, ~17 ms
//!   later newPayload, ~14 ms later fcU without attributes (gaps scaled down): every call reaches
//!   both ELs in order, byte for byte, and the beacon node gets the primary's answers byte for
//!   byte.
//! - EthereumJS's answer shape: lower-case `content-length` and
//!   `content-type: application/json; charset=utf-8`, `Access-Control-Allow-Origin`, `Date`,
//!   `Connection: keep-alive`, `Keep-Alive: timeout=5`: the content type and body are relayed
//!   exactly, the EL's hop headers are not, and its connection is reused. Its -32601 "Method not
//!   found" for `engine_exchangeTransitionConfigurationV1` (sent once at start) is relayed as the
//!   200 it is.
//! - EthereumJS's JWT rejection: `401 Unauthorized`, chunked, no Content-Type, a plain-text
//!   reason. From the primary it is the answer (no fallback); from a secondary it is reported once,
//!   and its recovery once.
//! - EthereumJS closes kept-alive connections after 5 s idle (scaled down here): calls after the
//!   close are delivered exactly once, with no fallback and no warning — also when the close
//!   crosses a call the proxy had already written on that connection.
//! - An EL shutting down answers SYNCING while the primary says VALID: one disagreement warning
//!   per call, naming both.
//!
//! Every test is named `real_…`: each is a regression of a shape the mocks lacked.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::util::{lock, sample, Bn, Launch, Proxy, TIMEOUT};

/// node-fetch 1.x's `User-Agent`, which Lodestar 1.5.1 sends.
const USER_AGENT: &str = "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)";

/// The `Host` Lodestar wrote: its execution URL (in the capture, the relay in front of the
/// proxy), which is not the proxy's own address.
const LODESTAR_HOST: &str = "127.0.0.1:18550";

/// EthereumJS's content type, which the proxy relays.
const EJS_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The `Date` of the captured answers; the proxy relays none.
const EJS_DATE: &str = "Sat, 21 Nov 2026 05:57:21 GMT";

/// What EthereumJS says when the token's `iat` is over 60 s away from its clock.
const STALE_JWT: &str = "Unauthorized: Error: Stale jwt token drift=61234, allowed=60000";

/// The beacon node's JWT secret in these tests.
const BN_SECRET: [u8; 32] = *b"realnet-capture-2026-11-21-ldstr";

/// How long `RawEl::with_idle_close` ELs keep an idle connection: EthereumJS's 5 s, scaled down.
const IDLE_CLOSE: Duration = Duration::from_millis(100);

/// Lodestar's gaps between a call's answer and its next call (~630 ms, ~17 ms, ~14 ms), and until
/// the next slot's first call (~1.2 s of a 2 s slot), scaled down.
const GAPS: [Duration; 4] = [
    Duration::from_millis(60),
    Duration::from_millis(2),
    Duration::from_millis(2),
    Duration::from_millis(120),
];

// --------------------------------------------------------------------- Lodestar, the beacon node

/// A token as Lodestar 1.5.1 mints it: header `{"typ":"JWT","alg":"HS256"}` (`typ` first; the
/// proxy's own tokens put `alg` first), claims `{"iat":…}` and nothing else.
fn lodestar_token(secret: &[u8], iat: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"HS256"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{iat}}}"#));
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// The bytes of one Lodestar request, headers exactly as captured (names, order, values).
fn lodestar_request(token: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\n\
         Accept: */*\r\nContent-Length: {}\r\nUser-Agent: {USER_AGENT}\r\n\
         Accept-Encoding: gzip,deflate\r\nConnection: close\r\nHost: {LODESTAR_HOST}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// One call as Lodestar makes it: a new connection, the whole request in one write, then every
/// byte the proxy sends until it closes the connection, which it must do within `TIMEOUT`.
#[track_caller]
fn lodestar_call(proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy).unwrap_or_else(|e| panic!("cannot connect to {proxy}: {e}"));
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream.write_all(request).expect("write the request");
    let deadline = Instant::now() + TIMEOUT;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let got = String::from_utf8_lossy(&answer);
            panic!("the proxy did not close the connection within {TIMEOUT:?}; it sent {got:?}");
        }
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("set read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("reading the answer failed ({e}) after {:?}", String::from_utf8_lossy(&answer)),
        }
    }
}

/// The whole answer the capture shows the proxy giving Lodestar: status line, the EL's content
/// type (when it sent one), the length, `Connection: close`, the EL's body.
fn answer_with_close(status: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let content_type = content_type.map_or(String::new(), |ct| format!("Content-Type: {ct}\r\n"));
    let head = format!(
        "HTTP/1.1 {status}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

#[track_caller]
fn assert_bytes(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(String::from_utf8_lossy(actual), String::from_utf8_lossy(expected), "{what}");
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

// ------------------------------------------------------------------------- the captured bodies

/// A body from `tests/fixtures/lodestar-1.5.1/`, without the file's final newline (the bodies
/// on the wire had none).
fn lodestar_sample(name: &str) -> Vec<u8> {
    let mut bytes = sample(&format!("lodestar-1.5.1/{name}.json"));
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    bytes
}

/// `body` with its id replaced: Lodestar and EthereumJS both write `id` right after `jsonrpc`.
#[track_caller]
fn with_id(body: &[u8], id: &str) -> Vec<u8> {
    const PREFIX: &[u8] = br#"{"jsonrpc":"2.0","id":"#;
    assert!(body.starts_with(PREFIX), "not in Lodestar's key order: {}", String::from_utf8_lossy(body));
    let rest = &body[PREFIX.len()..];
    let end = rest.iter().position(|&b| b == b',').expect("a member after the id");
    [PREFIX, id.as_bytes(), &rest[end..]].concat()
}

/// The calls of one slot in Lodestar's order, numbered on from `first_id` as Lodestar numbers
/// them: fcU with attributes, getPayload, newPayload (`with_txs`: the captured block with three
/// transactions, else an empty one), fcU without attributes.
fn slot_calls(first_id: u64, with_txs: bool) -> [Vec<u8>; 4] {
    let new_payload = if with_txs { "engine_newPayloadV2.with_txs" } else { "engine_newPayloadV2" };
    let names = [
        "engine_forkchoiceUpdatedV2.with_attrs",
        "engine_getPayloadV2",
        new_payload,
        "engine_forkchoiceUpdatedV2.no_attrs",
    ];
    let mut id = first_id;
    names.map(|name| {
        let body = with_id(&lodestar_sample(&format!("{name}.request")), &id.to_string());
        id += 1;
        body
    })
}

/// The body EthereumJS answered the call with in the capture (the response sample of its method,
/// with the call's id); any other method gets a plain result.
fn sample_answer(call: &Call) -> Vec<u8> {
    let json = call.json();
    let name = match json["method"].as_str().unwrap_or_default() {
        "engine_forkchoiceUpdatedV2" if json["params"][1].is_null() => "engine_forkchoiceUpdatedV2.no_attrs",
        "engine_forkchoiceUpdatedV2" => "engine_forkchoiceUpdatedV2.with_attrs",
        "engine_getPayloadV2" => "engine_getPayloadV2",
        "engine_newPayloadV2"
            if json["params"][0]["transactions"].as_array().is_some_and(|t| !t.is_empty()) =>
        {
            "engine_newPayloadV2.with_txs"
        }
        "engine_newPayloadV2" => "engine_newPayloadV2",
        "engine_exchangeTransitionConfigurationV1" => "engine_exchangeTransitionConfigurationV1",
        _ => return format!(r#"{{"jsonrpc":"2.0","id":{},"result":"0x539"}}"#, call.id()).into_bytes(),
    };
    with_id(&lodestar_sample(&format!("{name}.response")), &call.id())
}

/// `sample_answer` as a second EL gives it. In the capture the ELs' payloads differed whenever
/// their transaction pools did; here a built block differs in its value only, which is enough to
/// tell whose answer the beacon node got.
fn other_el_answer(call: &Call) -> Vec<u8> {
    let body = String::from_utf8(sample_answer(call)).expect("samples are UTF-8");
    body.replace(r#""blockValue":"0x0""#, r#""blockValue":"0x394c549ef000""#).into_bytes()
}

/// The answer of an EL that is shutting down: SYNCING for every payload status.
fn syncing_answer(call: &Call) -> Vec<u8> {
    let status = r#"{"status":"SYNCING","latestValidHash":null,"validationError":null}"#;
    let json = call.json();
    let method = json["method"].as_str().unwrap_or_default();
    let result = if method.starts_with("engine_forkchoiceUpdated") {
        format!(r#"{{"payloadStatus":{status},"payloadId":null}}"#)
    } else if method.starts_with("engine_newPayload") {
        status.to_string()
    } else {
        return sample_answer(call);
    };
    format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, call.id()).into_bytes()
}

// ----------------------------------------------------------------- EthereumJS's answers on the wire

/// EthereumJS's 200: node's HTTP server, lower-case framing headers set by the JSON-RPC layer.
fn ejs_ok(body: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\ncontent-length: {}\r\n\
         content-type: {EJS_CONTENT_TYPE}\r\nDate: {EJS_DATE}\r\nConnection: keep-alive\r\n\
         Keep-Alive: timeout=5\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// EthereumJS's JWT rejection, `res.writeHead(401); res.end(text)`: node writes the head before it
/// knows the length, so the text is chunked, and there is no Content-Type (bytes as node 20 writes
/// them, the node that ran the capture).
fn ejs_unauthorized(text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 401 Unauthorized\r\nAccess-Control-Allow-Origin: *\r\nDate: {EJS_DATE}\r\n\
         Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{text}\r\n0\r\n\r\n",
        text.len()
    )
    .into_bytes()
}

// ----------------------------------------------------------------------------------- RawEl

/// One request as a `RawEl` read it whole.
#[derive(Clone, Debug)]
struct Call {
    /// Ordinal of the connection it came on.
    conn: usize,
    method_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the forwarded body is JSON")
    }

    /// The id as written; Lodestar's are integers.
    fn id(&self) -> String {
        self.json()["id"].to_string()
    }
}

type Answer = Arc<dyn Fn(&Call) -> Vec<u8> + Send + Sync>;

/// A mock EL that answers each request with exactly the bytes its answer function returns, so it
/// can speak like EthereumJS: the toolkit's `MockEl` writes its own heads
/// (`Content-Type: application/json`, capitalised, no charset) and has no raw reply that keeps
/// the connection open. It records each request whole before answering it, and with
/// `with_idle_close` closes a kept-alive connection that idles that long, as node's HTTP server
/// does after its `keepAliveTimeout`; with `with_idle_close_crossing` the close meets the next
/// call instead (the timer fires as the call arrives), which is then never processed.
struct RawEl {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The listening socket seen as a stream, only to `shutdown(2)` it (see `MockEl::stop`).
    listener_control: TcpStream,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    answer: Mutex<Answer>,
    idle_close: Option<Duration>,
    /// Close an idled connection only when the next request arrives, dropping that request.
    crossing: bool,
    stopped: AtomicBool,
    record: Mutex<Record>,
    changed: Condvar,
    /// A handle on each connection, so dropping the mock can shut them all down.
    streams: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct Record {
    calls: Vec<Call>,
    connections: usize,
    /// Connections that ended, for any reason.
    closed: usize,
    /// Connections the mock closed because they idled.
    idle_closes: usize,
    /// Connections that idled out but are left open until the next request (`crossing`).
    expired: usize,
    errors: Vec<String>,
}

impl RawEl {
    fn start(answer: impl Fn(&Call) -> Vec<u8> + Send + Sync + 'static) -> RawEl {
        RawEl::spawn(None, false, Arc::new(answer))
    }

    fn with_idle_close(idle: Duration, answer: impl Fn(&Call) -> Vec<u8> + Send + Sync + 'static) -> RawEl {
        RawEl::spawn(Some(idle), false, Arc::new(answer))
    }

    fn with_idle_close_crossing(
        idle: Duration,
        answer: impl Fn(&Call) -> Vec<u8> + Send + Sync + 'static,
    ) -> RawEl {
        RawEl::spawn(Some(idle), true, Arc::new(answer))
    }

    fn spawn(idle_close: Option<Duration>, crossing: bool, answer: Answer) -> RawEl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a raw mock EL");
        let addr = listener.local_addr().expect("raw mock EL address");
        let listener_control = TcpStream::from(OwnedFd::from(listener.try_clone().expect("clone listener")));
        let shared = Arc::new(Shared {
            answer: Mutex::new(answer),
            idle_close,
            crossing,
            stopped: AtomicBool::new(false),
            record: Mutex::new(Record::default()),
            changed: Condvar::new(),
            streams: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("raw-el-{}-accept", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn raw mock EL acceptor")
        };
        RawEl { addr, shared, listener_control, acceptor: Some(acceptor) }
    }

    /// `127.0.0.1:PORT`, as `--builders` names it and the proxy's log lines say.
    fn url(&self) -> String {
        self.addr.to_string()
    }

    fn set_answer(&self, answer: impl Fn(&Call) -> Vec<u8> + Send + Sync + 'static) {
        *lock(&self.shared.answer) = Arc::new(answer);
    }

    fn calls(&self) -> Vec<Call> {
        lock(&self.shared.record).calls.clone()
    }

    fn connections(&self) -> usize {
        lock(&self.shared.record).connections
    }

    fn errors(&self) -> Vec<String> {
        lock(&self.shared.record).errors.clone()
    }

    /// Waits until at least `n` requests have been recorded, and returns them all.
    #[track_caller]
    fn wait_calls(&self, n: usize) -> Vec<Call> {
        self.wait(&format!("{n} calls"), |r| r.calls.len() >= n);
        self.calls()
    }

    /// Waits until every connection accepted so far has ended.
    #[track_caller]
    fn wait_all_closed(&self) {
        self.wait("every connection closed", |r| r.closed == r.connections);
    }

    #[track_caller]
    fn wait(&self, what: &str, condition: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        let mut record = lock(&self.shared.record);
        while !condition(&record) {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "raw mock EL {}: no {what} within {TIMEOUT:?}: {} calls, {} connections, {} closed",
                    self.addr,
                    record.calls.len(),
                    record.connections,
                    record.closed
                );
            }
            record = self
                .shared
                .changed
                .wait_timeout(record, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for RawEl {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // On Linux this wakes the blocked accept with an error.
        let _ = self.listener_control.shutdown(Shutdown::Both);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in lock(&self.shared.streams).iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut Record)) {
        change(&mut lock(&self.record));
        self.changed.notify_all();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // Transient (a peer gave up before accept); do not spin if it persists.
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        let mut conn = 0;
        shared.update(|r| {
            conn = r.connections;
            r.connections += 1;
        });
        if let Ok(handle) = stream.try_clone() {
            lock(&shared.streams).push(handle);
        }
        let serving = Arc::clone(shared);
        let thread = thread::Builder::new()
            .name(format!("raw-el-c{conn}"))
            .spawn(move || serve(stream, conn, &serving))
            .expect("spawn raw mock EL connection thread");
        lock(&shared.threads).push(thread);
    }
}

/// Reads requests on one connection and answers each in turn, until the peer closes, the mock
/// is dropped, or (with an idle close) nothing arrives for that long between requests.
fn serve(mut stream: TcpStream, conn: usize, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut idled = false;
    let mut expired = false;
    loop {
        if expired && !buf.is_empty() {
            // The idle timer fired as this call arrived: it is dropped unread, unanswered.
            idled = true;
            break;
        }
        match parse_call(&buf, conn) {
            Err(e) => {
                shared.update(|r| r.errors.push(format!("conn {conn}: {e}")));
                break;
            }
            Ok(Some((call, len))) => {
                buf.drain(..len);
                let answer = Arc::clone(&lock(&shared.answer));
                let bytes = answer(&call);
                shared.update(|r| r.calls.push(call));
                if stream.write_all(&bytes).is_err() {
                    break;
                }
                continue;
            }
            Ok(None) => {}
        }
        // Only a connection with no request under way idles.
        let idle = if buf.is_empty() && !expired { shared.idle_close } else { None };
        let _ = stream.set_read_timeout(idle);
        match stream.read(&mut chunk) {
            Ok(0) => {
                if !buf.is_empty() {
                    let n = buf.len();
                    shared.update(|r| {
                        r.errors.push(format!("conn {conn}: closed mid-request after {n} bytes"))
                    });
                }
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if idle.is_some() && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !shared.crossing {
                    idled = true;
                    break;
                }
                expired = true;
                shared.update(|r| r.expired += 1);
            }
            Err(_) => break,
        }
    }
    // Closed before it is counted, so a test that sees the count knows the FIN is on its way.
    let _ = stream.shutdown(Shutdown::Both);
    shared.update(|r| {
        r.closed += 1;
        r.idle_closes += usize::from(idled);
    });
}

/// One whole request from the start of `buf`, and its length. The proxy always forwards with
/// `Content-Length`, so chunked requests are an error here.
fn parse_call(buf: &[u8], conn: usize) -> Result<Option<(Call, usize)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparsable request head: {e}")),
    };
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let find =
        |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    if find("transfer-encoding").is_some() {
        return Err("a request with Transfer-Encoding".to_string());
    }
    let length = match find("content-length") {
        None => 0,
        Some(v) => v.trim().parse::<usize>().map_err(|_| format!("bad Content-Length {v:?}"))?,
    };
    if buf.len() < head_len + length {
        return Ok(None);
    }
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(0);
    let method_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let body = buf[head_len..head_len + length].to_vec();
    Ok(Some((Call { conn, method_line, headers, body }, head_len + length)))
}

// ------------------------------------------------------------------------------ the proxy

/// A secret file for `--jwt-secret`, removed when dropped.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(secret: &[u8]) -> SecretFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sync-proxy-realnet-{}-{n}.hex", std::process::id()));
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, hex).expect("write the secret file");
        SecretFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The proxy in front of `els` (the first is the primary), logging at debug as in the capture.
#[track_caller]
fn start_proxy(els: &[&RawEl], extra: &[&str]) -> Proxy {
    let builders = els.iter().map(|el| el.url()).collect::<Vec<_>>().join(",");
    Launch::proxy().args(&["--builders", &builders, "--loglevel", "debug"]).args(extra).start()
}

/// Makes a call that goes to the primary (id `id`) and returns every stderr line the proxy wrote
/// before it read that call, which it logs at debug: counts taken from them are final for
/// everything that happened before, and untouched by whatever the call itself causes.
#[track_caller]
fn logs_before_barrier(proxy: &Proxy, id: u64) -> Vec<String> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId","params":[]}}"#);
    lodestar_call(proxy.addr(), &lodestar_request(&lodestar_token(&BN_SECRET, unix_now()), body.as_bytes()));
    let barrier = format!("eth_chainId id {id} from");
    proxy.wait_log(&barrier, TIMEOUT);
    let mut lines = proxy.logs();
    let end = lines.iter().position(|l| l.contains(&barrier)).expect("the barrier line was seen");
    lines.truncate(end);
    lines
}

/// The lines after the first `mark` that contain `text`.
fn matching(lines: &[String], mark: usize, text: &str) -> Vec<String> {
    lines.iter().skip(mark).filter(|l| l.contains(text)).cloned().collect()
}

// ----------------------------------------------------------------------- Lodestar's requests

#[test]
fn real_lodestar_request_shape_is_forwarded_and_answered_with_close() {
    // The first captured call's token (iat 1795240641) began exactly so: typ first, iat only.
    let captured = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpYXQiOjE3OTUyNDA2NDF9.";
    assert!(lodestar_token(&BN_SECRET, 1_795_240_641).starts_with(captured));

    let primary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::start(|c| ejs_ok(&other_el_answer(c)));
    let secret = SecretFile::new(&BN_SECRET);
    let proxy = start_proxy(&[&primary, &secondary], &["--jwt-secret", secret.arg()]);
    // Lodestar signs with whole seconds, so calls within a second carry the very same token.
    let token = lodestar_token(&BN_SECRET, unix_now());
    let [fcu, get_payload, ..] = slot_calls(2, false);
    let bodies = [fcu, get_payload];
    for (n, body) in bodies.iter().enumerate() {
        let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, body));
        let answered = &primary.wait_calls(n + 1)[n];
        let expected = answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &sample_answer(answered));
        assert_bytes(&answer, &expected, &format!("answer to call {n}"));
        // As in the capture, the secondary has each call before Lodestar's next one (which is not
        // ordered behind it, so without this it could overtake it here).
        secondary.wait_calls(n + 1);
    }

    for el in [&primary, &secondary] {
        let calls = el.wait_calls(2);
        assert_eq!(calls.len(), 2, "{}: each call once", el.url());
        for (call, body) in calls.iter().zip(&bodies) {
            assert_eq!(call.method_line, "POST / HTTP/1.1");
            assert_bytes(&call.body, body, "forwarded body");
            // The end-to-end headers, unchanged and in Lodestar's order.
            let set_by_proxy = ["host", "content-length", "x-forwarded-for"];
            let end_to_end: Vec<(&str, &str)> = call
                .headers
                .iter()
                .filter(|(name, _)| !set_by_proxy.contains(&name.to_ascii_lowercase().as_str()))
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let bearer = format!("Bearer {token}");
            let expected = [
                ("Content-Type", "application/json"),
                ("Authorization", bearer.as_str()),
                ("Accept", "*/*"),
                ("User-Agent", USER_AGENT),
            ];
            assert_eq!(end_to_end, expected, "{}: {:?}", el.url(), call.headers);
            assert_eq!(call.header("host"), Some(el.url().as_str()));
            assert_eq!(call.header("content-length"), Some(body.len().to_string().as_str()));
            assert_eq!(call.header("x-forwarded-for"), Some("127.0.0.1"));
            // Accept-Encoding and Connection describe Lodestar's hop only.
            assert_eq!(call.headers.len(), 7, "{}: {:?}", el.url(), call.headers);
        }
        assert_eq!(el.errors(), Vec::<String>::new());
    }
    // A connection per Lodestar call is not a connection per call to the EL.
    assert_eq!(primary.connections(), 1, "the proxy keeps its connection to the primary");

    // The check is real: the same shape signed with another secret is refused and not forwarded.
    let forged = lodestar_token(b"not-the-beacon-node-secret-00000", unix_now());
    let answer = lodestar_call(proxy.addr(), &lodestar_request(&forged, &bodies[0]));
    assert!(answer.starts_with(b"HTTP/1.1 401 "), "{}", String::from_utf8_lossy(&answer));
    let [.., new_payload, _] = slot_calls(4, false);
    lodestar_call(proxy.addr(), &lodestar_request(&token, &new_payload));
    for el in [&primary, &secondary] {
        let calls = el.wait_calls(3);
        assert_eq!(calls.len(), 3, "{}: the forged call reached it", el.url());
        assert_bytes(&calls[2].body, &new_payload, "the call after the forged one");
    }
}

#[test]
fn real_a_slot_as_lodestar_drives_it() {
    let primary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::start(|c| ejs_ok(&other_el_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let token = lodestar_token(&BN_SECRET, unix_now());
    let calls: Vec<Vec<u8>> = slot_calls(2, false).into_iter().chain(slot_calls(6, true)).collect();
    for (n, (body, gap)) in calls.iter().zip(GAPS.iter().cycle()).enumerate() {
        let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, body));
        let answered = &primary.wait_calls(n + 1)[n];
        let expected = answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &sample_answer(answered));
        assert_bytes(&answer, &expected, &format!("answer to call {n} (the primary's)"));
        // The real ELs had each call long before the next; waiting for the secondary to have it
        // keeps the order it records independent of thread scheduling here.
        secondary.wait_calls(n + 1);
        if n + 1 < calls.len() {
            thread::sleep(*gap);
        }
    }
    for el in [&primary, &secondary] {
        let received: Vec<Vec<u8>> = el.calls().into_iter().map(|c| c.body).collect();
        assert_eq!(received.len(), calls.len(), "{}: each call once", el.url());
        for (n, (got, sent)) in received.iter().zip(&calls).enumerate() {
            assert_bytes(got, sent, &format!("{}: call {n}", el.url()));
        }
        assert_eq!(el.errors(), Vec::<String>::new());
    }
}

// ---------------------------------------------------------------------- EthereumJS's answers

#[test]
fn real_ethereumjs_answer_headers_are_relayed() {
    let primary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let new_payload = lodestar_sample("engine_newPayloadV2.request");
    let expected_body = lodestar_sample("engine_newPayloadV2.response");

    // Lodestar: the EL's content type with its charset, the exact body, then the close.
    let token = lodestar_token(&BN_SECRET, unix_now());
    let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, &new_payload));
    assert_bytes(&answer, &answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &expected_body), "answer");

    // A client that keeps its connection: the same content type and body, and none of the EL's
    // hop headers (its Keep-Alive timeout is not the proxy's).
    let mut bn = Bn::connect(proxy.addr());
    for id in 41..=43 {
        let response = bn.post(&with_id(&new_payload, &id.to_string()));
        assert_eq!(response.status, 200);
        let content_types: Vec<&str> = response
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(content_types, [EJS_CONTENT_TYPE], "{:?}", response.headers);
        assert_eq!(response.header("keep-alive"), None, "{:?}", response.headers);
        assert_eq!(response.header("connection"), None, "{:?}", response.headers);
        assert_bytes(&response.body, &with_id(&expected_body, &id.to_string()), "body");
    }
    // Lower-case framing headers and `Keep-Alive: timeout=5` do not stop the proxy reusing the
    // primary's connection.
    assert_eq!(primary.connections(), 1);
    assert_eq!(primary.wait_calls(4).len(), 4);
}

#[test]
fn real_method_not_found_error_is_relayed() {
    let primary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mark = proxy.log_mark();
    let request = lodestar_sample("engine_exchangeTransitionConfigurationV1.request");
    let answer =
        lodestar_call(proxy.addr(), &lodestar_request(&lodestar_token(&BN_SECRET, unix_now()), &request));
    // The proxy's answer to Lodestar's first call, byte for byte as captured.
    let captured: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
Content-Length: 77\r\nConnection: close\r\n\r\n\
{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}";
    assert_bytes(&answer, captured, "answer to engine_exchangeTransitionConfigurationV1");
    for el in [&primary, &secondary] {
        let calls = el.wait_calls(1);
        assert_eq!(calls.len(), 1, "{}", el.url());
        assert_bytes(&calls[0].body, &request, "forwarded body");
    }
    // An error answer is an answer: nothing failed, nothing to warn about.
    let lines = logs_before_barrier(&proxy, 900);
    assert_eq!(matching(&lines, mark, "WARN"), Vec::<String>::new());
    assert_eq!(matching(&lines, mark, " failed: "), Vec::<String>::new());
}

#[test]
fn real_ethereumjs_401_from_the_primary_is_relayed() {
    let primary = RawEl::start(|_| ejs_unauthorized(STALE_JWT));
    let secondary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    // The proxy checks no token here, so Lodestar's stale one reaches the ELs as it is.
    let stale = lodestar_token(&BN_SECRET, unix_now() - 62);
    let new_payload = lodestar_sample("engine_newPayloadV2.request");
    let answer = lodestar_call(proxy.addr(), &lodestar_request(&stale, &new_payload));
    // The 401 is the primary's answer, relayed: no Content-Type (it sent none), the text de-chunked;
    // the secondary's 200 is not used.
    let expected = answer_with_close("401 Unauthorized", None, STALE_JWT.as_bytes());
    assert_bytes(&answer, &expected, "answer");
    assert_eq!(secondary.wait_calls(1).len(), 1);
    let warning = format!(
        "{} answers HTTP 401 (is its JWT secret right, and its clock in sync?): {STALE_JWT}",
        primary.url()
    );
    assert!(proxy.wait_log(&warning, TIMEOUT).contains("WARN"));
}

#[test]
fn real_ethereumjs_401_from_a_secondary_is_reported_once() {
    let primary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::start(|_| ejs_unauthorized(STALE_JWT));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let token = lodestar_token(&BN_SECRET, unix_now());
    // Calls that keep their order, so each reaches the secondary only after its answer to the one
    // before was read.
    let [fcu_attrs, _, new_payload, fcu] = slot_calls(2, false);
    let [next_fcu_attrs, ..] = slot_calls(6, false);
    for (n, body) in [fcu_attrs, new_payload, fcu, next_fcu_attrs].iter().enumerate() {
        if n == 3 {
            secondary.wait_calls(3);
            secondary.set_answer(|c| ejs_ok(&sample_answer(c)));
        }
        let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, body));
        let answered = &primary.wait_calls(n + 1)[n];
        let expected = answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &sample_answer(answered));
        assert_bytes(&answer, &expected, &format!("answer to call {n} (the primary's)"));
    }
    let recovered = proxy.wait_log(&format!("{} answers HTTP 200 again", secondary.url()), TIMEOUT);
    assert!(recovered.contains("INFO"), "{recovered}");
    // The recovery was logged on reading the fourth answer, after the three 401s.
    let lines = proxy.logs();
    let warnings = matching(&lines, 0, "answers HTTP 401");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let expected = format!(
        "{} answers HTTP 401 (is its JWT secret right, and its clock in sync?): {STALE_JWT}",
        secondary.url()
    );
    assert!(warnings[0].contains(&expected) && warnings[0].contains("WARN"), "{warnings:#?}");
    assert_eq!(matching(&lines, 0, "answers HTTP 200 again").len(), 1);
    assert_eq!(secondary.calls().len(), 4);
}

#[test]
fn real_el_closing_idle_connections_after_five_seconds_is_not_a_failure() {
    let primary = RawEl::with_idle_close(IDLE_CLOSE, |c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::with_idle_close(IDLE_CLOSE, |c| ejs_ok(&other_el_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mark = proxy.log_mark();
    let token = lodestar_token(&BN_SECRET, unix_now());
    let calls: Vec<Vec<u8>> = slot_calls(2, false).into_iter().chain(slot_calls(6, true)).collect();
    for (n, body) in calls.iter().enumerate() {
        let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, body));
        let answered = &primary.wait_calls(n + 1)[n];
        let expected = answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &sample_answer(answered));
        assert_bytes(&answer, &expected, &format!("answer to call {n} (the primary's)"));
        // Both ELs close the kept-alive connection once it idles (on mainnet, every 12 s slot
        // outlasts EthereumJS's 5 s); the next call follows at once.
        for el in [&primary, &secondary] {
            el.wait_calls(n + 1);
            el.wait_all_closed();
        }
    }
    for el in [&primary, &secondary] {
        let received: Vec<Vec<u8>> = el.calls().into_iter().map(|c| c.body).collect();
        assert_eq!(received, calls, "{}: every call exactly once, in order", el.url());
        let conns: Vec<usize> = el.calls().iter().map(|c| c.conn).collect();
        assert!(
            conns.windows(2).all(|w| w[0] < w[1]),
            "{}: each call on a new connection: {conns:?}",
            el.url()
        );
        let record = lock(&el.shared.record);
        assert!(record.idle_closes >= calls.len(), "{}: {} idle closes", el.url(), record.idle_closes);
        assert_eq!(record.errors, Vec::<String>::new());
    }
    let lines = logs_before_barrier(&proxy, 900);
    assert_eq!(matching(&lines, mark, "WARN"), Vec::<String>::new());
    assert_eq!(matching(&lines, mark, " failed: "), Vec::<String>::new());
}

#[test]
fn real_el_idle_close_crossing_a_call_is_retried_once() {
    // The same close, but it meets the next call: the EL's timer fires as the call arrives, so
    // the proxy, which had no way to know, wrote the call on a connection that then closes
    // without an answer. The EL never processed it, so it must go again, once, on a new one.
    let primary = RawEl::with_idle_close_crossing(IDLE_CLOSE, |c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::with_idle_close_crossing(IDLE_CLOSE, |c| ejs_ok(&other_el_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let mark = proxy.log_mark();
    let token = lodestar_token(&BN_SECRET, unix_now());
    let calls: Vec<Vec<u8>> = slot_calls(2, false).into_iter().chain(slot_calls(6, true)).collect();
    for (n, body) in calls.iter().enumerate() {
        for el in [&primary, &secondary] {
            el.wait(&format!("{n} idled connections"), |r| r.expired == n);
        }
        let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, body));
        let answered = &primary.wait_calls(n + 1)[n];
        let expected = answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &sample_answer(answered));
        assert_bytes(&answer, &expected, &format!("answer to call {n} (the primary's)"));
        secondary.wait_calls(n + 1);
    }
    for el in [&primary, &secondary] {
        let received: Vec<Vec<u8>> = el.calls().into_iter().map(|c| c.body).collect();
        assert_eq!(received, calls, "{}: every call exactly once, in order", el.url());
        // Call n went out on connection n-1 first, which closed under it, then on connection n.
        let conns: Vec<usize> = el.calls().iter().map(|c| c.conn).collect();
        assert_eq!(conns, (0..calls.len()).collect::<Vec<_>>(), "{}", el.url());
        assert_eq!(el.errors(), Vec::<String>::new());
    }
    let lines = logs_before_barrier(&proxy, 900);
    let retries = matching(&lines, mark, "kept-alive connection closed under a call; retrying it once");
    assert_eq!(retries.len(), 2 * (calls.len() - 1), "{retries:#?}");
    assert_eq!(matching(&lines, mark, "WARN"), Vec::<String>::new());
    assert_eq!(matching(&lines, mark, " failed: "), Vec::<String>::new());
}

#[test]
fn real_el_answering_syncing_while_it_shuts_down_warns_per_call() {
    let primary = RawEl::start(|c| ejs_ok(&sample_answer(c)));
    let secondary = RawEl::start(|c| ejs_ok(&syncing_answer(c)));
    let proxy = start_proxy(&[&primary, &secondary], &[]);
    let token = lodestar_token(&BN_SECRET, unix_now());
    // The calls of two slots that carry a payload status (getPayload carries none).
    let [a, _, b, c] = slot_calls(2, false);
    let [d, _, e, f] = slot_calls(6, true);
    let calls = [a, b, c, d, e, f];
    for (n, body) in calls.iter().enumerate() {
        let answer = lodestar_call(proxy.addr(), &lodestar_request(&token, body));
        let answered = &primary.wait_calls(n + 1)[n];
        let expected = answer_with_close("200 OK", Some(EJS_CONTENT_TYPE), &sample_answer(answered));
        assert_bytes(&answer, &expected, &format!("answer to call {n} (the primary's VALID)"));
    }
    for body in &calls {
        let json: Value = serde_json::from_slice(body).expect("a JSON body");
        let line =
            format!("execution clients disagree on {} id {}:", json["method"].as_str().unwrap(), json["id"]);
        let warning = proxy.wait_log(&line, TIMEOUT);
        for part in [format!("{} says VALID", primary.url()), format!("{} says SYNCING", secondary.url())] {
            assert!(warning.contains(&part), "{warning:?} should contain {part:?}");
        }
    }
    let lines = logs_before_barrier(&proxy, 900);
    let warnings = matching(&lines, 0, "execution clients disagree");
    assert_eq!(warnings.len(), calls.len(), "one per call: {warnings:#?}");
}
