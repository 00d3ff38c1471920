//! Hostile beacon nodes, failing execution clients, and stopping on a signal (issue 4), over
//! 127.0.0.1 against the real binary. After every bad input the proxy must still answer a
//! normal request.
//!
//! Hostile clients:
//! - Slowloris: hundreds of connections trickling a head a byte at a time, and connections
//!   that stop mid-body, do not delay a normal request, and are closed at `--read-timeout`.
//! - Huge or endless heads (431 and close), lying Content-Length (short: closed at the read
//!   timeout, nothing forwarded; long: the extra bytes are the next request, 400), chunk-size
//!   overflow and invalid chunk framing (400), NUL and non-UTF-8 bytes in head and body (400
//!   or a -32700 answer), deeply nested JSON (-32700, no stack growth).
//! - The `id` of every JSON type is echoed exactly: in the EL answer the proxy relays, in its
//!   own 502 "no answer" error, and in the `SYNCING` answer to a filtered forkchoiceUpdated.
//! - Duplicate keys: the last `"method"` wins, as in serde_json (and so in the mock EL), so a
//!   body routes the way an EL would read it.
//! - 10,000 connection attempts: the connections the proxy has are still served, it does not
//!   spin when at `--max-connections` or out of file descriptors, and it recovers once they
//!   close.
//!
//! Failing execution clients:
//! - An EL that refuses, resets mid-answer, answers garbage, closes without answering or never
//!   answers: as primary the BN gets the next EL's answer, as secondary it delays nothing. One
//!   that answers a byte at a time is still relayed exactly.
//! - An EL that closes a kept-alive connection as a request is written to it: the request is
//!   sent again, once, on a fresh connection (and never after an answer began).
//! - Nothing lost: under resets, garbage, delays, close-idle and a stop/restart, every ordered
//!   call reaches every EL exactly once, in order.
//!
//! Stopping:
//! - SIGTERM and SIGINT stop accepting (for good), deliver the calls queued for a slow EL and
//!   the answers owed to beacon nodes, and exit 0; an EL that never answers holds the exit
//!   back only until the 5 s drain deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{
    default_reply, fcu, new_payload, reply_status, rpc_body, wait_until, without_repeats, Bn, Framing,
    Launch, MockEl, Proxy, ReadError, Received, Reply, SYNC_PROXY, TIMEOUT,
};

/// `--read-timeout` for the tests that wait for it.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
const READ_TIMEOUT_FLAG: &str = "500";
/// How fast a normal request must be answered while the proxy is under attack.
const PROMPT: Duration = Duration::from_secs(1);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);
/// Scheduling slack on a busy two-core machine, added to deadlines the proxy must meet.
const SLACK: Duration = Duration::from_millis(1500);
/// The proxy's drain deadline after SIGTERM/SIGINT (`DRAIN` in `src/main.rs`).
const DRAIN: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------- helpers

fn chain_id(id: u64) -> Vec<u8> {
    rpc_body(id, "eth_chainId", json!([]))
}

/// The body the mock EL's `default_reply` gives `eth_chainId` with this id.
fn chain_id_answer(raw_id: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{raw_id},"result":"0x1"}}"#)
}

/// The bytes of the body a reply carries (for comparing a relayed answer byte for byte).
fn reply_body(reply: Reply) -> Vec<u8> {
    match reply {
        Reply::Json { body, .. } => body,
        other => panic!("not a plain answer: {other:?}"),
    }
}

/// What the EL received besides `assert_serves`'s probes. Checked after a probe: a request
/// forwarded by mistake would have reached the EL before it.
fn forwarded(el: &MockEl) -> Vec<Received> {
    el.received().into_iter().filter(|r| r.rpc_id != Some(json!(4242))).collect()
}

/// A normal request on a new connection is answered by the EL, exactly and promptly.
#[track_caller]
fn assert_serves(proxy: &Proxy) {
    let mut bn = proxy.bn();
    bn.set_timeout(TIMEOUT);
    let started = Instant::now();
    let response = bn.post(&chain_id(4242));
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), chain_id_answer("4242"));
    assert!(took < PROMPT, "a normal request took {took:?}");
}

/// The proxy's own error answer: this status, a JSON-RPC error with `code` and a null id,
/// `Connection: close`, then the close.
#[track_caller]
fn assert_rejected_and_closed(bn: &mut Bn, status: u16, code: i64) {
    let response = bn.read_response();
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!((body["error"]["code"].as_i64(), &body["id"]), (Some(code), &Value::Null), "{body}");
    assert!(bn.is_closed_within(TIMEOUT), "the connection stayed open after {status}");
}

/// The connection is closed within `within` and nothing was written to it first.
#[track_caller]
fn assert_closed_without_answer(bn: &mut Bn, within: Duration) {
    match bn.try_read_response(within) {
        Err(ReadError::Closed { partial, .. }) => {
            assert!(partial.is_empty(), "got {:?} before the close", String::from_utf8_lossy(&partial))
        }
        other => panic!("expected a close without an answer, got {other:?}"),
    }
}

/// `POST /` with a raw head tail (`extra`, each line ending in CRLF) and a raw body.
fn raw_post(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes =
        format!("POST / HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n{extra}\r\n")
            .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The bytes of `POST /` carrying `body`, for pipelining.
fn post(body: &[u8]) -> Vec<u8> {
    crate::util::post_request("proxy", &[], body)
}

/// A `--builders` value: the ELs, comma-separated.
fn list(urls: &[&str]) -> String {
    urls.join(",")
}

/// A port on 127.0.0.1 that refuses connections (bound, then released).
fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    listener.local_addr().expect("throwaway port address")
}

/// One value of the proxy's `/metrics`, by the whole text before the value.
#[track_caller]
fn metric(proxy: &Proxy, series: &str) -> f64 {
    let mut bn = proxy.bn();
    bn.send_raw(b"GET /metrics HTTP/1.1\r\nHost: proxy\r\n\r\n");
    let text = bn.read_response().text();
    let value = text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok());
    value.unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
}

/// Answers the proxy has read whole from this EL.
#[track_caller]
fn answers_from(proxy: &Proxy, el: &MockEl) -> usize {
    metric(proxy, &format!("sync_proxy_el_answer_seconds_count{{el=\"{}\"}}", el.url())) as usize
}

/// The request's numeric JSON-RPC id.
fn id_of(request: &Received) -> u64 {
    request.rpc_id.as_ref().and_then(Value::as_u64).expect("a numeric id")
}

fn ids(requests: &[Received]) -> Vec<u64> {
    requests.iter().map(id_of).collect()
}

/// CPU time (user + system) the process has used, in clock ticks.
#[track_caller]
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name may contain spaces; the fields after it start with the state (field 3).
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("numeric stat field");
    field(14) + field(15)
}

/// The share of one core the process used over `window`.
#[track_caller]
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    let before = cpu_ticks(pid);
    let started = Instant::now();
    // Measuring a rate needs a window; nothing signals its end.
    thread::sleep(window);
    let used = (cpu_ticks(pid) - before) as f64 / hz;
    used / started.elapsed().as_secs_f64()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Opens `n` connections to `addr` and keeps them open.
#[track_caller]
fn hold_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(stream) => stream,
            Err(e) => panic!("connection {i} of {n} to {addr} failed: {e}"),
        })
        .collect()
}

/// A splitmix64 step: a seeded, reproducible pseudo-random stream without a crate.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ------------------------------------------------------------------------------- herds

/// Many raw connections driven by one thread without blocking: each writes its opening
/// bytes, then one byte of `trickle` per round, and notes when the proxy closes it.
struct Herd {
    members: Vec<Member>,
    trickle: Vec<u8>,
}

struct Member {
    stream: TcpStream,
    /// When its first byte was written: the proxy's read deadline starts no earlier.
    first_byte: Instant,
    trickled: usize,
    closed: Option<Instant>,
    /// Whatever the proxy wrote to it.
    got: Vec<u8>,
}

impl Herd {
    #[track_caller]
    fn connect(addr: SocketAddr, n: usize, opening: &[u8], trickle: &[u8]) -> Herd {
        // Connected first and written to only then, so that the members' read deadlines (which
        // start at their first byte) lie close together.
        let members = hold_connections(addr, n)
            .into_iter()
            .map(|mut stream| {
                let first_byte = Instant::now();
                stream.write_all(opening).expect("write the opening bytes");
                stream.set_nonblocking(true).expect("non-blocking herd member");
                Member { stream, first_byte, trickled: 0, closed: None, got: Vec::new() }
            })
            .collect();
        Herd { members, trickle: trickle.to_vec() }
    }

    /// One round: the next trickle byte to every open member, then a look for closes.
    /// Returns how many are still open.
    fn round(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        for m in self.members.iter_mut().filter(|m| m.closed.is_none()) {
            if let Some(&byte) = self.trickle.get(m.trickled) {
                match m.stream.write(&[byte]) {
                    Ok(_) => m.trickled += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => m.closed = Some(Instant::now()),
                }
            }
            while m.closed.is_none() {
                match m.stream.read(&mut buf) {
                    Ok(0) => m.closed = Some(Instant::now()),
                    Ok(n) => m.got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => m.closed = Some(Instant::now()),
                }
            }
        }
        self.members.iter().filter(|m| m.closed.is_none()).count()
    }
}

/// Drives a herd from its own thread until every member is closed or `limit` passes; the
/// counters say how many rounds ran and how many members are closed so far.
struct HerdRun {
    rounds: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    handle: thread::JoinHandle<Herd>,
}

impl HerdRun {
    fn start(addr: SocketAddr, n: usize, opening: Vec<u8>, trickle: Vec<u8>, limit: Duration) -> HerdRun {
        let rounds = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (r, c) = (Arc::clone(&rounds), Arc::clone(&closed));
        let handle = thread::spawn(move || {
            let mut herd = Herd::connect(addr, n, &opening, &trickle);
            let started = Instant::now();
            loop {
                let open = herd.round();
                c.store(n - open, Ordering::SeqCst);
                r.fetch_add(1, Ordering::SeqCst);
                if open == 0 || started.elapsed() > limit {
                    return herd;
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        HerdRun { rounds, closed, handle }
    }

    #[track_caller]
    fn wait_rounds(&self, n: usize) {
        wait_until(&format!("{n} herd rounds"), TIMEOUT * 2, || self.rounds.load(Ordering::SeqCst) >= n);
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn finish(self) -> Herd {
        self.handle.join().expect("herd thread panicked")
    }
}

/// Every member was closed without an answer, no earlier than the read timeout after its
/// first byte and no later than the read timeout plus slack.
#[track_caller]
fn assert_closed_at_read_timeout(herd: &Herd) {
    let n = herd.members.len();
    let mut lives: Vec<Duration> = Vec::with_capacity(n);
    for (i, m) in herd.members.iter().enumerate() {
        let closed = m.closed.unwrap_or_else(|| panic!("member {i} of {n} was never closed"));
        assert!(m.got.is_empty(), "member {i} got {:?}", String::from_utf8_lossy(&m.got));
        lives.push(closed - m.first_byte);
    }
    let (shortest, longest) = (lives.iter().min().copied(), lives.iter().max().copied());
    assert!(shortest >= Some(READ_TIMEOUT), "closed before the read timeout: {shortest:?}");
    assert!(longest < Some(READ_TIMEOUT + SLACK), "closed late: {longest:?}");
}

// ------------------------------------------------------------------------------- slowloris

#[test]
fn slowloris_heads_trickled_a_byte_at_a_time_delay_nothing_and_are_closed_at_the_read_timeout() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--read-timeout", READ_TIMEOUT_FLAG]);
    // A head that never ends: a header line of 4000 bytes, fed one byte per round.
    let opening = b"P".to_vec();
    let trickle = [&b"OST / HTTP/1.1\r\nHost: slow\r\nX-Slow: "[..], &[b'a'; 4000]].concat();
    let herd = HerdRun::start(proxy.addr(), 300, opening, trickle, TIMEOUT);
    herd.wait_rounds(3);
    assert_eq!(herd.closed(), 0, "trickling connections closed before the read timeout");
    assert_serves(&proxy);
    let herd = herd.finish();
    assert_closed_at_read_timeout(&herd);
    assert!(herd.members.iter().all(|m| m.trickled > 3), "the herd did trickle");
    assert_eq!(ids(&el.received()), [4242], "only the normal request is forwarded");
    assert_serves(&proxy);
}

#[test]
fn slowloris_bodies_that_stop_midway_delay_nothing_and_are_closed_at_the_read_timeout() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--read-timeout", READ_TIMEOUT_FLAG]);
    let body = new_payload(1, 100);
    let opening = raw_post(&format!("Content-Length: {}\r\n", body.len()), &body[..body.len() / 2]);
    let herd = HerdRun::start(proxy.addr(), 200, opening, Vec::new(), TIMEOUT);
    herd.wait_rounds(2);
    assert_eq!(herd.closed(), 0, "stalled connections closed before the read timeout");
    assert_serves(&proxy);
    let herd = herd.finish();
    assert_closed_at_read_timeout(&herd);
    assert_eq!(ids(&el.received()), [4242], "no half-read body is forwarded");
    assert_serves(&proxy);
}

// ------------------------------------------------------------------------------- heads

#[test]
fn a_head_one_byte_over_64_kib_gets_431_and_close() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut head = b"POST / HTTP/1.1\r\nHost: proxy\r\nX-Big: ".to_vec();
    head.resize(64 * 1024 + 1, b'a');
    let mut bn = proxy.bn();
    bn.send_raw(&head);
    assert_rejected_and_closed(&mut bn, 431, -32600);
    assert_serves(&proxy);
    assert!(forwarded(&el).is_empty());
}

#[test]
fn an_endless_head_gets_431_and_close_without_being_buffered() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    let mut writer = bn.stream().try_clone().expect("clone the BN stream");
    // Header lines forever, 1 KiB each, until the proxy closes; 64 MiB means it never did.
    let sent = thread::spawn(move || {
        let mut sent = writer.write(b"POST / HTTP/1.1\r\n").unwrap_or(0);
        let line = [&b"X-Endless: "[..], &[b'a'; 1011], b"\r\n"].concat();
        while sent < 64 << 20 {
            match writer.write_all(&line) {
                Ok(()) => sent += line.len(),
                Err(_) => return Some(sent),
            }
        }
        None
    });
    // The proxy answers 431 and closes with our later bytes unread, which may turn the close
    // into a reset that discards the answer; either way the answer is never anything else.
    match bn.try_read_response(TIMEOUT) {
        Ok(response) => assert_eq!(response.status, 431, "{}", response.text()),
        Err(ReadError::Closed { partial, reset: true }) => {
            assert!(partial.is_empty() || partial.starts_with(b"HTTP/1.1 431 "), "{partial:?}")
        }
        Err(e) => panic!("expected 431 or a reset, got {e:?}"),
    }
    bn.shutdown_write();
    let sent = sent.join().expect("writer thread");
    assert!(sent.is_some(), "the proxy kept reading an endless head (64 MiB)");
    assert_serves(&proxy);
    assert!(forwarded(&el).is_empty());
}

#[test]
fn sixty_five_header_fields_get_431_and_close() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let extra: String = (0..65).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let mut bn = proxy.bn();
    bn.send_raw(&raw_post(&format!("{extra}Content-Length: 2\r\n"), b"{}"));
    assert_rejected_and_closed(&mut bn, 431, -32600);
    assert_serves(&proxy);
    assert!(forwarded(&el).is_empty());
}

// ------------------------------------------------------------------------------- lying lengths

#[test]
fn a_content_length_longer_than_the_body_is_closed_at_the_read_timeout_and_nothing_is_forwarded() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--read-timeout", READ_TIMEOUT_FLAG]);
    let mut bn = proxy.bn();
    let sent = Instant::now();
    bn.send_raw(&raw_post("Content-Length: 10\r\n", b"[1,2,"));
    assert_closed_without_answer(&mut bn, TIMEOUT);
    let lived = sent.elapsed();
    assert!(lived >= READ_TIMEOUT, "closed after {lived:?}, before the read timeout");
    assert!(lived < READ_TIMEOUT + SLACK, "closed after {lived:?}");
    assert_serves(&proxy);
    assert!(forwarded(&el).is_empty(), "a partial body was forwarded: {:?}", forwarded(&el));
}

#[test]
fn bytes_beyond_a_short_content_length_are_read_as_the_next_request() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    // Declares 5 bytes, sends 10: `"abc"` is the body, `abc\n\n` a (bad) second request.
    bn.send_raw(&raw_post("Content-Length: 5\r\n", b"\"abc\"abc\n\n"));
    let first = bn.read_response();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.text(),
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request"}}"#
    );
    assert_rejected_and_closed(&mut bn, 400, -32600);
    let received = el.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].body, b"\"abc\"");
    assert_serves(&proxy);
}

// ------------------------------------------------------------------------------- chunked bodies

#[test]
fn chunk_size_overflow_and_invalid_chunk_framing_get_400_and_close() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let huge = format!("1;{}\r\n", "x".repeat(2000));
    let cases: [(&str, &[u8], u16); 11] = [
        ("17 hex digits (overflows u64)", b"10000000000000000\r\nab\r\n0\r\n\r\n", 400),
        ("20 hex digits", b"ffffffffffffffffffff\r\nab\r\n0\r\n\r\n", 400),
        ("16 hex digits (u64::MAX)", b"ffffffffffffffff\r\nab\r\n0\r\n\r\n", 400),
        ("15 hex digits: over --max-body-bytes", b"fffffffffffffff\r\nab\r\n0\r\n\r\n", 413),
        ("not hex", b"zz\r\nab\r\n0\r\n\r\n", 400),
        ("negative", b"-1\r\nab\r\n0\r\n\r\n", 400),
        ("empty size line", b"\r\nab\r\n0\r\n\r\n", 400),
        ("data longer than its size", b"2\r\nabcdef\r\n0\r\n\r\n", 400),
        ("no CRLF after the data", b"2\r\nab0\r\n\r\n", 400),
        ("size line over 1 KiB", huge.as_bytes(), 400),
        ("NUL in the size line", b"2\0\r\nab\r\n0\r\n\r\n", 400),
    ];
    for (what, chunked, status) in cases {
        let mut bn = proxy.bn();
        bn.send_raw(&raw_post("Transfer-Encoding: chunked\r\n", chunked));
        let response = bn.read_response();
        assert_eq!(response.status, status, "{what}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], -32600, "{what}");
        assert!(bn.is_closed_within(TIMEOUT), "{what}: the connection stayed open");
        assert_serves(&proxy);
        assert!(forwarded(&el).is_empty(), "{what}: forwarded {:?}", forwarded(&el));
        el.clear();
    }
}

// ------------------------------------------------------------------------------- NUL and non-UTF-8

/// What the proxy does with one odd request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Malformed HTTP: 400 and close.
    BadHttp,
    /// Malformed JSON: 400 with JSON-RPC error -32700; the connection stays usable.
    BadJson,
    /// Well-formed: forwarded to the EL byte for byte.
    Forwarded,
}

#[test]
fn nul_and_non_utf8_bytes_in_head_and_body_get_400_or_a_parse_error_never_a_crash() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let ok_body = chain_id(7);
    let head = |line: &[u8], extra: &[u8]| {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"Host: proxy\r\n");
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", ok_body.len()).as_bytes());
        bytes.extend_from_slice(&ok_body);
        bytes
    };
    let body = |body: &[u8]| raw_post(&format!("Content-Length: {}\r\n", body.len()), body);
    let cases: Vec<(&str, Vec<u8>, Verdict)> = vec![
        ("NUL in the method", head(b"PO\0ST / HTTP/1.1\r\n", b""), Verdict::BadHttp),
        ("NUL in the path", head(b"POST /\0 HTTP/1.1\r\n", b""), Verdict::BadHttp),
        ("0xFF in the path", head(b"POST /\xff HTTP/1.1\r\n", b""), Verdict::BadHttp),
        ("0xFF in the version", head(b"POST / HTTP/1.\xff\r\n", b""), Verdict::BadHttp),
        ("NUL in a header name", head(b"POST / HTTP/1.1\r\n", b"X-\0A: 1\r\n"), Verdict::BadHttp),
        ("NUL in a header value", head(b"POST / HTTP/1.1\r\n", b"X-A: a\0b\r\n"), Verdict::BadHttp),
        ("0xFF in a header name", head(b"POST / HTTP/1.1\r\n", b"X-\xff: 1\r\n"), Verdict::BadHttp),
        // obs-text (RFC 9110 §5.5) is allowed in values; the proxy passes it on untouched.
        ("0xFF in a header value", head(b"POST / HTTP/1.1\r\n", b"X-A: \xff\xfe\r\n"), Verdict::Forwarded),
        ("NUL bytes, then a blank line", [&[0u8; 64][..], b"\r\n\r\n"].concat(), Verdict::BadHttp),
        (
            "NUL in a JSON string",
            body(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_\0\"}"),
            Verdict::BadJson,
        ),
        ("NUL between JSON tokens", body(b"{\"id\":1,\0\"method\":\"eth_chainId\"}"), Verdict::BadJson),
        ("a body of NULs", body(&[0; 32]), Verdict::BadJson),
        ("0xFF in a JSON string", body(b"{\"id\":1,\"method\":\"eth_\xff\"}"), Verdict::BadJson),
        ("overlong UTF-8 '/'", body(b"{\"id\":1,\"method\":\"\xc0\xaf\"}"), Verdict::BadJson),
        ("UTF-8 surrogate", body(b"{\"id\":1,\"method\":\"\xed\xa0\x80\"}"), Verdict::BadJson),
        ("lone surrogate escape", body(br#"{"id":1,"method":"\ud800"}"#), Verdict::BadJson),
        ("truncated UTF-8", body(b"{\"id\":1,\"method\":\"\xe2\x82\"}"), Verdict::BadJson),
        ("0xFF outside strings", body(b"{\"id\":1\xff}"), Verdict::BadJson),
    ];
    for (what, request, verdict) in cases {
        let mut bn = proxy.bn();
        bn.send_raw(&request);
        match verdict {
            Verdict::BadHttp => {
                let response = bn.read_response();
                assert_eq!(response.status, 400, "{what}: {}", response.text());
                assert!(bn.is_closed_within(TIMEOUT), "{what}: the connection stayed open");
                // After a probe: had it been forwarded, the EL would have it before the probe.
                assert_serves(&proxy);
                assert!(forwarded(&el).is_empty(), "{what}: forwarded");
            }
            Verdict::BadJson => {
                let response = bn.read_response();
                assert_eq!(response.status, 400, "{what}: {}", response.text());
                let answer = response.json();
                assert_eq!(answer["error"]["code"], -32700, "{what}: {answer}");
                assert_eq!(answer["id"], Value::Null, "{what}: {answer}");
                assert_eq!(bn.post(&chain_id(8)).text(), chain_id_answer("8"), "{what}: then a good one");
                // The good one reached the EL, and nothing before it.
                assert_eq!(ids(&el.received()), [8], "{what}: forwarded");
            }
            Verdict::Forwarded => {
                assert_eq!(bn.read_response().text(), chain_id_answer("7"), "{what}");
                let received = el.received();
                assert_eq!(received.len(), 1, "{what}");
                assert_eq!(received[0].body, ok_body, "{what}");
            }
        }
        assert_serves(&proxy);
        el.clear();
    }
}

// ------------------------------------------------------------------------------- nesting

#[test]
fn json_nested_100k_deep_gets_a_parse_error_and_the_proxy_stays_up() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    let objects = r#"{"a":"#.repeat(100_000);
    let method_first =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":{}"#, "[".repeat(100_000));
    let bodies: [(&str, Vec<u8>); 4] = [
        ("arrays", vec![b'['; 100_000]),
        ("arrays, closed", [vec![b'['; 100_000], vec![b']'; 100_000]].concat()),
        ("objects", objects.into_bytes()),
        ("inside params", method_first.into_bytes()),
    ];
    for (what, body) in bodies {
        let response = bn.post(&body);
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        let answer = response.json();
        assert_eq!(answer["error"]["code"], -32700, "{what}: {answer}");
        assert_eq!(answer["id"], Value::Null, "{what}");
        // The same connection goes on.
        assert_eq!(bn.post(&chain_id(2)).text(), chain_id_answer("2"), "{what}");
    }
    assert_eq!(ids(&el.received()), [2, 2, 2, 2], "nothing nested was forwarded");
    assert_serves(&proxy);
}

// ------------------------------------------------------------------------------- ids

/// Ids of every JSON type, as raw text.
const IDS: [&str; 18] = [
    "0",
    "-7",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1.5",
    "1.0e0",
    "-0",
    r#""abc""#,
    r#""""#,
    r#""a\"}b""#,
    r#""\u00e9""#,
    "null",
    "true",
    "false",
    r#"[1,"x"]"#,
    "[]",
    r#"{"a":{"b":[]}}"#,
    "{}",
];

/// A request with a raw id; `last` puts the id after the params (Lighthouse's order).
fn with_raw_id(raw_id: &str, method: &str, params: &Value, last: bool) -> Vec<u8> {
    if last {
        format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params},"id" : {raw_id} }}"#)
    } else {
        format!(r#"{{"jsonrpc":"2.0","id":{raw_id},"method":"{method}","params":{params}}}"#)
    }
    .into_bytes()
}

#[test]
fn ids_of_every_json_type_are_echoed_exactly_in_relayed_answers() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    for (i, raw_id) in IDS.iter().enumerate() {
        let response = bn.post(&with_raw_id(raw_id, "eth_chainId", &json!([]), i % 2 == 1));
        assert_eq!(response.status, 200, "id {raw_id}");
        assert_eq!(response.text(), chain_id_answer(raw_id), "id {raw_id}");
    }
    let seen: Vec<Option<String>> = el.received().into_iter().map(|r| r.rpc_id_raw).collect();
    let sent: Vec<Option<String>> = IDS.iter().map(|id| Some(id.to_string())).collect();
    assert_eq!(seen, sent);
}

#[test]
fn ids_of_every_json_type_are_echoed_exactly_in_the_proxys_502() {
    let dead = refusing_addr().to_string();
    let proxy = Proxy::start(&["--builders", &dead]);
    let mut bn = proxy.bn();
    for (i, raw_id) in IDS.iter().enumerate() {
        for method in ["eth_chainId", "engine_getPayloadV4"] {
            let response = bn.post(&with_raw_id(raw_id, method, &json!(["0x01"]), i % 2 == 0));
            assert_eq!(response.status, 502, "id {raw_id}");
            let expected = format!(
                r#"{{"jsonrpc":"2.0","id":{raw_id},"error":{{"code":-32603,"message":"no execution client answered"}}}}"#
            );
            assert_eq!(response.text(), expected, "{method} id {raw_id}");
        }
    }
}

#[test]
fn ids_of_every_json_type_are_echoed_exactly_in_filtered_forkchoice_answers() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut best = proxy.bn();
    let followed = best.post_with(&[("X-Forwarded-For", "10.0.0.1")], &fcu(1, Some(1000)));
    assert_eq!(followed.json()["result"]["payloadStatus"]["status"], "VALID");
    let mut other = proxy.bn();
    let state = json!({ "headBlockHash": crate::util::hash(9), "safeBlockHash": crate::util::ZERO_HASH,
        "finalizedBlockHash": crate::util::ZERO_HASH });
    for (i, raw_id) in IDS.iter().enumerate() {
        let body = with_raw_id(raw_id, "engine_forkchoiceUpdatedV3", &json!([state, null]), i % 2 == 0);
        let response = other.post_with(&[("X-Forwarded-For", "10.0.0.2")], &body);
        assert_eq!(response.status, 200, "id {raw_id}");
        let expected = format!(
            r#"{{"jsonrpc":"2.0","id":{raw_id},"result":{{"payloadStatus":{{"status":"SYNCING","latestValidHash":null,"validationError":null}},"payloadId":null}}}}"#
        );
        assert_eq!(response.text(), expected, "id {raw_id}");
    }
    assert_eq!(ids(&el.received()), [1], "filtered calls are not forwarded");
}

// ------------------------------------------------------------------------------- duplicate keys

#[test]
fn duplicate_method_keys_route_by_the_last_one_as_serde_json_reads_them() {
    let primary = MockEl::start();
    let secondary = MockEl::start();
    let proxy = Proxy::start(&["--builders", &list(&[&primary.url(), &secondary.url()])]);
    let mut bn = proxy.bn();
    // Last "method" is eth_chainId: a non-engine call, for the primary only.
    let eth_last =
        br#"{"jsonrpc":"2.0","id":1,"method":"engine_newPayloadV3","params":[],"method":"eth_chainId"}"#;
    assert_eq!(bn.post(eth_last).text(), chain_id_answer("1"));
    // Last "method" is engine_newPayloadV3: fanned out to every EL.
    let engine_last =
        br#"{"jsonrpc":"2.0","id":2,"method":"eth_chainId","params":[],"method":"engine_newPayloadV3"}"#;
    let answer = bn.post(engine_last).json();
    assert_eq!(answer["result"]["status"], "VALID", "{answer}");
    let to_secondary = secondary.wait_requests(1, TIMEOUT);
    assert_eq!(primary.methods(), ["eth_chainId", "engine_newPayloadV3"]);
    assert_eq!(secondary.methods(), ["engine_newPayloadV3"]);
    assert_eq!(to_secondary[0].body, engine_last, "forwarded byte for byte");
    assert_eq!(primary.received()[0].body, eth_last);
}

#[test]
fn duplicate_id_keys_the_last_one_is_echoed_in_proxy_made_answers() {
    let dead = refusing_addr().to_string();
    let proxy = Proxy::start(&["--builders", &dead]);
    let response = proxy.bn().post(br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","id":"second"}"#);
    assert_eq!(response.status, 502);
    assert_eq!(response.json()["id"], "second", "{}", response.text());
}

// ------------------------------------------------------------------------------- connection floods

#[test]
fn ten_thousand_connect_and_close_attempts_keep_existing_connections_served_and_leak_nothing() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&chain_id(1)).text(), chain_id_answer("1"));
    let fds_before = open_fds(proxy.pid());
    let done = Arc::new(AtomicBool::new(false));
    let addr = proxy.addr();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut failed = 0;
                for i in 0..2500 {
                    // Paced so that the listen queue (1024) never overflows: the kernel then
                    // drops the SYN and the client tries again a second later, which says
                    // nothing about the proxy and made this test take 10 to 30 s on a loaded
                    // machine. The queue is first in, first out, so once a request on a new
                    // connection is answered, every connection made before it was accepted.
                    if i % 128 == 127 {
                        let mut probe = Bn::connect(addr);
                        probe.send_raw(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n");
                        assert_eq!(probe.read_response().status, 200, "GET /healthz during the flood");
                    }
                    match TcpStream::connect_timeout(&addr, TIMEOUT) {
                        Ok(stream) => drop(stream),
                        Err(_) => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let watcher = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut id = 100;
            while !done.load(Ordering::SeqCst) {
                id += 1;
                let started = Instant::now();
                let response = bn.post(&chain_id(id));
                slowest = slowest.max(started.elapsed());
                assert_eq!(response.text(), chain_id_answer(&id.to_string()));
                // Paced, not back to back: a request every few milliseconds samples the
                // latency as well, and leaves the two cores to the flood it is measured under.
                thread::sleep(Duration::from_millis(5));
            }
            (slowest, id - 100, bn)
        })
    };
    let failed: usize = flooders.into_iter().map(|f| f.join().expect("flooder")).sum();
    done.store(true, Ordering::SeqCst);
    let (slowest, served, mut bn) = watcher.join().expect("watcher");
    assert_eq!(failed, 0, "connection attempts failed");
    assert!(served > 0, "the kept-alive connection was not used during the flood");
    assert!(slowest < PROMPT, "a kept-alive request took {slowest:?} during the flood");
    wait_until("the flood's connections are closed in the proxy", TIMEOUT * 2, || {
        open_fds(proxy.pid()) <= fds_before
    });
    assert_eq!(metric(&proxy, "sync_proxy_open_connections"), 2.0, "the BN's and the metrics one");
    assert_eq!(bn.post(&chain_id(2)).text(), chain_id_answer("2"));
    assert_serves(&proxy);
}

#[test]
fn at_max_connections_existing_ones_are_served_new_ones_wait_and_the_proxy_does_not_spin() {
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--max-connections", "100"]);
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&chain_id(1)).text(), chain_id_answer("1"));
    let held = hold_connections(proxy.addr(), 99);
    proxy.wait_log("100 connections open: not accepting", TIMEOUT);
    // These connect (the kernel queues them) but the proxy does not take them yet.
    let mut waiting: Vec<Bn> = (0..50).map(|_| proxy.bn()).collect();
    let last = waiting.last_mut().expect("50 waiting");
    last.send_post(&[], &chain_id(3));
    assert!(last.read_response_timeout(QUIET).is_none(), "served beyond --max-connections");
    assert_eq!(bn.post(&chain_id(2)).text(), chain_id_answer("2"), "an existing connection");
    let share = cpu_share(proxy.pid(), Duration::from_millis(500));
    assert!(share < 0.3, "the proxy used {:.0}% of a core at the connection limit", share * 100.0);
    drop(held);
    let last = waiting.last_mut().expect("50 waiting");
    assert_eq!(last.read_response().text(), chain_id_answer("3"), "served once others closed");
    assert_eq!(ids(&el.received()), [1, 2, 3]);
    drop(waiting);
    assert_serves(&proxy);
}

#[test]
fn out_of_file_descriptors_the_proxy_serves_what_it_has_does_not_spin_and_recovers() {
    let el = MockEl::start();
    // 64 descriptors: stdio, the poll, the listener and the EL connection leave room for
    // fewer than 60 beacon node connections.
    let proxy = Launch::bin("/bin/bash")
        .args(&["-c", "ulimit -n 64 && exec \"$0\" \"$@\"", SYNC_PROXY])
        .args(&["--addr", "127.0.0.1:0", "--builders", &el.url()])
        .start();
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&chain_id(1)).text(), chain_id_answer("1"));
    let mut flood: Vec<Bn> = (0..100).map(|_| proxy.bn()).collect();
    proxy.wait_log("accept failed", TIMEOUT);
    let last = flood.last_mut().expect("100 connections");
    last.send_post(&[], &chain_id(3));
    assert!(last.read_response_timeout(QUIET).is_none(), "served without a descriptor");
    assert_eq!(bn.post(&chain_id(2)).text(), chain_id_answer("2"), "an existing connection");
    let share = cpu_share(proxy.pid(), Duration::from_millis(500));
    assert!(share < 0.3, "the proxy used {:.0}% of a core out of descriptors", share * 100.0);
    let mut last = flood.pop().expect("100 connections");
    drop(flood);
    assert_eq!(last.read_response().text(), chain_id_answer("3"), "served once others closed");
    assert_serves(&proxy);
    assert_eq!(ids(&el.received()), [1, 2, 3, 4242]);
}

// ------------------------------------------------------------------------------- failing ELs

/// Ways an EL fails one call.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Refuse,
    ResetMidAnswer,
    Garbage,
    CloseWithoutAnswer,
    NeverAnswer,
}

const FAULTS: [Fault; 5] =
    [Fault::Refuse, Fault::ResetMidAnswer, Fault::Garbage, Fault::CloseWithoutAnswer, Fault::NeverAnswer];

/// `--request-timeout` for the fault tests, so that a hung EL costs little.
const FAULT_TIMEOUT: Duration = Duration::from_millis(700);

/// An EL with this fault on every call (None for `Refuse`: nothing listens) and its address.
fn faulty_el(fault: Fault) -> (Option<MockEl>, String) {
    let reply = match fault {
        Fault::Refuse => return (None, refusing_addr().to_string()),
        Fault::ResetMidAnswer => Reply::Reset,
        Fault::Garbage => Reply::Garbage(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()),
        Fault::CloseWithoutAnswer => Reply::Close,
        Fault::NeverAnswer => Reply::Hang,
    };
    let el = MockEl::with(move |_| reply.clone());
    let url = el.url();
    (Some(el), url)
}

#[test]
fn a_failing_primary_is_replaced_by_the_secondarys_answer() {
    for fault in FAULTS {
        let (bad, bad_url) = faulty_el(fault);
        let good = MockEl::with(|r| reply_status(r, "SYNCING"));
        let timeout = FAULT_TIMEOUT.as_millis().to_string();
        let proxy =
            Proxy::start(&["--builders", &list(&[&bad_url, &good.url()]), "--request-timeout", &timeout]);
        let mut bn = proxy.bn();
        for id in 1..=2 {
            let started = Instant::now();
            let response = bn.post(&new_payload(id, 100 + id));
            let took = started.elapsed();
            let received = good.wait_requests(id as usize, TIMEOUT);
            let expected = reply_body(reply_status(&received[id as usize - 1], "SYNCING"));
            assert_eq!(response.status, 200, "{fault:?}");
            assert_eq!(response.text(), String::from_utf8_lossy(&expected), "{fault:?}, call {id}");
            let bound = if matches!(fault, Fault::NeverAnswer) { FAULT_TIMEOUT + SLACK } else { PROMPT };
            assert!(took < bound, "{fault:?}: answered after {took:?}");
        }
        if let Some(bad) = bad {
            assert_eq!(ids(&bad.wait_requests(1, TIMEOUT))[0], 1, "{fault:?}: the primary was asked");
        }
        assert_eq!(ids(&good.received()), [1, 2], "{fault:?}");
    }
}

#[test]
fn a_failing_secondary_never_delays_the_primarys_answer() {
    for fault in FAULTS {
        let good = MockEl::start();
        let (bad, bad_url) = faulty_el(fault);
        let proxy =
            Proxy::start(&["--builders", &list(&[&good.url(), &bad_url]), "--request-timeout", "5000"]);
        let mut bn = proxy.bn();
        for id in 1..=3 {
            let started = Instant::now();
            let response = bn.post(&new_payload(id, 100 + id));
            let took = started.elapsed();
            let received = good.wait_requests(id as usize, TIMEOUT);
            let expected = reply_body(default_reply(&received[id as usize - 1]));
            assert_eq!(response.text(), String::from_utf8_lossy(&expected), "{fault:?}, call {id}");
            assert!(took < PROMPT, "{fault:?}: call {id} answered after {took:?}");
        }
        if let Some(bad) = bad {
            bad.wait_requests(1, TIMEOUT);
        }
        assert_serves(&proxy);
    }
}

#[test]
fn an_answer_trickled_a_byte_at_a_time_by_the_primary_is_relayed_exactly() {
    for framing in [Framing::ContentLength, Framing::Chunked, Framing::CloseDelimited] {
        let gap = Duration::from_millis(1);
        let primary = MockEl::with(move |r| default_reply(r).framed(framing).trickled(gap));
        let secondary = MockEl::with(|r| reply_status(r, "SYNCING"));
        let proxy = Proxy::start(&["--builders", &list(&[&primary.url(), &secondary.url()])]);
        let mut bn = proxy.bn();
        for id in 1..=2 {
            let response = bn.post(&new_payload(id, 100 + id));
            let received = primary.wait_requests(id as usize, TIMEOUT);
            let expected = reply_body(default_reply(&received[id as usize - 1]));
            assert_eq!(response.status, 200, "{framing:?}");
            assert_eq!(response.header("content-type"), Some("application/json"), "{framing:?}");
            assert_eq!(response.text(), String::from_utf8_lossy(&expected), "{framing:?}, call {id}");
        }
    }
}

// ------------------------------------------------------------------------------- retry once

#[test]
fn a_kept_alive_connection_closed_as_a_request_is_written_gets_it_again_once_on_a_fresh_connection() {
    let first = Arc::new(AtomicBool::new(true));
    let el = MockEl::with(move |r| {
        let reply = default_reply(r);
        if first.swap(false, Ordering::SeqCst) {
            reply.then_close()
        } else {
            reply
        }
    });
    let proxy = Proxy::start(&["--builders", &el.url(), "--loglevel", "debug"]);
    let mut bn = proxy.bn();
    // Pipelined: the proxy writes call 2 to the kept-alive connection the moment call 1's
    // answer is read, before it can notice the close that followed that answer.
    bn.send_raw(&[post(&new_payload(1, 101)), post(&new_payload(2, 102))].concat());
    for id in 1..=2 {
        assert_eq!(bn.read_response().json()["id"], id);
    }
    proxy.wait_log("kept-alive connection closed under a call; retrying it once", TIMEOUT);
    let received = el.received();
    assert_eq!(ids(&received), [1, 2], "each call reached the EL exactly once");
    assert_eq!(received.iter().map(|r| r.conn).collect::<Vec<_>>(), [0, 1], "call 2 on a fresh connection");
}

#[test]
fn an_ordered_call_whose_retry_also_fails_is_sent_again_after_a_backoff() {
    let calls = Arc::new(AtomicUsize::new(0));
    let el = MockEl::with(move |r| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => default_reply(r).then_close(),
        1 => Reply::Close,
        _ => default_reply(r),
    });
    let proxy = Proxy::start(&["--builders", &el.url(), "--loglevel", "debug"]);
    let mut bn = proxy.bn();
    bn.send_raw(&[post(&new_payload(1, 101)), post(&new_payload(2, 102))].concat());
    assert_eq!(bn.read_response().json()["id"], 1);
    let second = bn.read_response();
    assert_eq!((second.status, second.json()["id"].as_u64()), (502, Some(2)), "{}", second.text());
    // Call 2 was lost once on the closed connection (retried at once), then on the fresh one:
    // an ordered call is never dropped for that (issue 17), but the EL now counts as not
    // answering and gets it again only after the backoff, not in a hot loop.
    let received = el.wait_for("call 2 a second time", TIMEOUT, |r| r.len() >= 3);
    assert_eq!(ids(&received), [1, 2, 2]);
    let gap = received[2].at.duration_since(received[1].at);
    assert!(gap >= Duration::from_millis(90), "sent again after {gap:?}, before the backoff");
    assert_up_again_then_call_3(&proxy, &el, &mut bn);
}

#[test]
fn an_ordered_call_whose_answer_broke_off_is_sent_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let el = MockEl::with(move |r| match calls.fetch_add(1, Ordering::SeqCst) {
        1 => Reply::Reset,
        _ => default_reply(r),
    });
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    assert_eq!(bn.post(&new_payload(1, 101)).json()["id"], 1);
    // Call 2 goes out on the kept-alive connection, and its answer breaks off midway.
    let second = bn.post(&new_payload(2, 102));
    assert_eq!((second.status, second.json()["id"].as_u64()), (502, Some(2)), "{}", second.text());
    // The EL may not have acted on it, and it must not miss a block: it gets it again, on a
    // fresh connection (issue 17). A duplicate right after itself is harmless.
    let received = el.wait_for("call 2 again", TIMEOUT, |r| r.len() >= 3);
    assert_eq!(ids(&received), [1, 2, 2]);
    assert_eq!(received[1].conn, 0, "first on the kept-alive connection");
    assert_ne!(received[2].conn, 0, "then on a fresh one");
    assert_up_again_then_call_3(&proxy, &el, &mut bn);
}

/// Once the EL has answered the call sent again, it is up, and call 3 reaches it next.
#[track_caller]
fn assert_up_again_then_call_3(proxy: &Proxy, el: &MockEl, bn: &mut Bn) {
    let up = format!("{} is up", el.url());
    wait_until("the EL is up again after it was not answering", TIMEOUT, || {
        let logs = proxy.logs();
        let down = logs.iter().position(|l| l.contains("is not answering"));
        down.is_some_and(|d| logs[d..].iter().any(|l| l.contains(&up)))
    });
    let third = bn.post(&new_payload(3, 103));
    assert_eq!((third.status, third.json()["id"].as_u64()), (200, Some(3)), "{}", third.text());
    assert_eq!(ids(&el.received()), [1, 2, 2, 3]);
}

/// Only calls that need no order: an ordered one is sent again after a backoff (above).
#[test]
fn a_fresh_connection_closed_without_an_answer_is_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let el = MockEl::with(move |r| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::Close,
        _ => default_reply(r),
    });
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let mut bn = proxy.bn();
    let get_payload = |id| rpc_body(id, "engine_getPayloadV4", json!(["0x0000000000000001"]));
    let first = bn.post(&get_payload(1));
    assert_eq!((first.status, first.json()["id"].as_u64()), (502, Some(1)), "{}", first.text());
    // The next call is the positive signal: the EL has it, and call 1 only once before it.
    assert_eq!(bn.post(&get_payload(2)).json()["id"], 2);
    let received = el.wait_requests(2, TIMEOUT);
    assert_eq!(ids(&received), [1, 2], "the EL may have acted on it: it is not sent twice");
}

// ------------------------------------------------------------------------------- nothing lost

/// What the flaky secondary does: the first time it sees a call, something chosen from the id
/// with a fixed seed; a call sent again (its answer was lost) is answered normally, so faults
/// are passing ones, not a call the EL can never take.
fn flaky() -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    move |request| {
        let first_time =
            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id_of(request));
        if first_time {
            flaky_reply(request)
        } else {
            default_reply(request)
        }
    }
}

/// What the flaky secondary does with one call, chosen from its id with a fixed seed.
fn flaky_reply(request: &Received) -> Reply {
    const SEED: u64 = 0x5eed_0004;
    let roll = splitmix64(SEED ^ id_of(request));
    let reply = default_reply(request);
    match roll % 100 {
        0..=44 => reply,
        45..=59 => reply.delayed(Duration::from_millis(1 + (roll >> 8) % 30)),
        60..=74 => reply.then_close(),
        75..=79 => reply.delayed(Duration::from_millis(1 + (roll >> 8) % 10)).then_close(),
        80..=89 => Reply::Reset,
        _ => Reply::Garbage(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n".to_vec()),
    }
}

#[test]
fn nothing_lost_every_ordered_call_reaches_every_el_in_order() {
    const CALLS: u64 = 200;
    const STOP_AFTER: u64 = 70;
    const RESTART_AFTER: u64 = 130;
    let primary = MockEl::start();
    let flaky = MockEl::with(flaky());
    let mut restarted = MockEl::start();
    let proxy = Proxy::start(&["--builders", &list(&[&primary.url(), &flaky.url(), &restarted.url()])]);
    let mut bns = [proxy.bn(), proxy.bn()];
    let mut restart_at = None;
    for id in 1..=CALLS {
        let body = if id % 2 == 1 { new_payload(id, 1000 + id) } else { fcu(id, Some(1000 + id)) };
        let response = bns[id as usize % 2].post(&body);
        assert_eq!((response.status, response.json()["id"].as_u64()), (200, Some(id)), "{}", response.text());
        if id == STOP_AFTER {
            // Stop only once the proxy has this EL's every answer: a call it had read but not
            // answered would be retried after the restart, and reach it twice.
            restarted.wait_requests(STOP_AFTER as usize, TIMEOUT);
            wait_until("the proxy has every answer of the EL to restart", TIMEOUT, || {
                answers_from(&proxy, &restarted) == STOP_AFTER as usize
            });
            restarted.stop();
        }
        if id == RESTART_AFTER {
            restart_at = Some(Instant::now());
            restarted.restart();
        }
    }
    let expected: Vec<u64> = (1..=CALLS).collect();
    let mut counts = Vec::new();
    for (name, el) in [("primary", &primary), ("flaky", &flaky), ("restarted", &restarted)] {
        let received =
            el.wait_for("the last call", TIMEOUT * 3, |r| r.last().is_some_and(|r| id_of(r) == CALLS));
        // A call whose connection broke (the flaky EL's resets and closes) is sent again,
        // right after itself (issue 17); nothing is missing and nothing comes out of order.
        assert_eq!(without_repeats(&ids(&received)), expected, "{name}: every call, in order");
        let methods = received.iter().map(|r| (id_of(r), r.is("engine_newPayload")));
        assert!(methods.into_iter().all(|(id, np)| np == (id % 2 == 1)), "{name}");
        counts.push(received.len());
    }
    assert_eq!(counts[0], CALLS as usize, "the primary got every call exactly once");
    let restart_at = restart_at.expect("restarted");
    let caught_up = &restarted.received()[STOP_AFTER as usize..RESTART_AFTER as usize];
    assert!(
        caught_up.iter().all(|r| r.at >= restart_at),
        "calls made while it was down came after the restart"
    );
    // Nothing late: no call arrives after the last one. A marker call, which reaches every
    // EL after everything sent before it, is the positive signal.
    let marker = CALLS + 1;
    let response = bns[0].post(&new_payload(marker, 1000 + marker));
    assert_eq!((response.status, response.json()["id"].as_u64()), (200, Some(marker)), "{}", response.text());
    for (el, count) in [&primary, &flaky, &restarted].into_iter().zip(counts) {
        let received = el.wait_for("the marker call", TIMEOUT, |r| r.iter().any(|r| id_of(r) == marker));
        let after_last = received.iter().rposition(|r| id_of(r) == CALLS).expect("the last call");
        assert!(
            received[after_last + 1..].iter().all(|r| id_of(r) == marker),
            "a call arrived after the last one: {:?}",
            ids(&received[after_last + 1..])
        );
        assert_eq!(received.iter().filter(|r| id_of(r) != marker).count(), count);
    }
}

// ------------------------------------------------------------------------------- stopping

/// A proxy with a primary that answers at once and a secondary that takes 100 ms per call,
/// given 10 calls; returns how many the secondary had when they were all answered.
fn with_queued_calls() -> (MockEl, MockEl, Proxy, usize) {
    let primary = MockEl::start();
    let slow = MockEl::with(|r| default_reply(r).delayed(Duration::from_millis(100)));
    let proxy = Proxy::start(&["--builders", &list(&[&primary.url(), &slow.url()])]);
    let mut bn = proxy.bn();
    for id in 1..=10 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).json()["id"], id);
    }
    let before = slow.received().len();
    assert!(before < 10, "the slow EL already has {before} of 10: nothing left to drain");
    (primary, slow, proxy, before)
}

/// With 10 calls queued for a slow secondary when `signal` arrives, all 10 are delivered,
/// then the proxy exits 0.
fn drains_queued_calls_then_exits_0_on(signal: &str) {
    let (primary, slow, mut proxy, before) = with_queued_calls();
    let mark = proxy.log_mark();
    let signalled = Instant::now();
    proxy.signal(signal);
    proxy.wait_log_from(mark, "stopping: no new connections", TIMEOUT);
    let status =
        proxy.wait_exit(DRAIN).unwrap_or_else(|| panic!("still running {DRAIN:?} after SIG{signal}"));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "SIG{signal}: {status}");
    assert_eq!(ids(&slow.received()), (1..=10).collect::<Vec<_>>(), "every queued call was delivered");
    assert_eq!(ids(&primary.received()), (1..=10).collect::<Vec<_>>());
    let left = Duration::from_millis(100) * (10 - before as u32);
    assert!(took + Duration::from_millis(100) >= left, "exited after {took:?} with {left:?} of work left");
    proxy.wait_log_from(mark, "stopped", TIMEOUT);
    assert!(!proxy.logs().iter().any(|l| l.contains("undelivered")), "{:?}", proxy.logs());
}

#[test]
fn sigterm_delivers_queued_calls_and_exits_0() {
    drains_queued_calls_then_exits_0_on("TERM");
}

#[test]
fn sigint_delivers_queued_calls_and_exits_0() {
    drains_queued_calls_then_exits_0_on("INT");
}

/// Regression: `reap()` turned accepting back on below 90 % of `--max-connections` without
/// looking at `stopping`, so while queued calls drained, new connections were accepted from
/// the (deregistered, still open) listener and served.
#[test]
fn accepting_never_resumes_after_a_stop_request() {
    for signal in ["TERM", "INT"] {
        let (_primary, _slow, proxy, _) = with_queued_calls();
        let mark = proxy.log_mark();
        proxy.signal(signal);
        proxy.wait_log_from(mark, "stopping: no new connections", TIMEOUT);
        // Refused, or queued by the kernel and never served: both are fine.
        let Ok(mut late) = Bn::try_connect(proxy.addr()) else { continue };
        if late.try_send_raw(&post(&chain_id(99))).is_ok() {
            if let Ok(response) = late.try_read_response(QUIET) {
                panic!("SIG{signal}: served a connection made while stopping: {}", response.text());
            }
        }
    }
}

#[test]
fn sigterm_answers_a_request_already_read_before_exiting() {
    let primary = MockEl::with(|r| default_reply(r).delayed(Duration::from_millis(300)));
    let mut proxy = Proxy::start(&["--builders", &primary.url()]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &new_payload(1, 101));
    primary.wait_requests(1, TIMEOUT);
    proxy.terminate();
    let response = bn.read_response();
    assert_eq!((response.status, response.json()["id"].as_u64()), (200, Some(1)));
    let status = proxy.wait_exit(DRAIN).expect("exits after answering");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_with_an_el_that_never_answers_exits_0_at_the_drain_deadline() {
    let primary = MockEl::start();
    let hung = MockEl::with(|_| Reply::Hang);
    let mut proxy = Proxy::start(&["--builders", &list(&[&primary.url(), &hung.url()])]);
    let mut bn = proxy.bn();
    for id in 1..=3 {
        assert_eq!(bn.post(&new_payload(id, 100 + id)).json()["id"], id);
    }
    hung.wait_requests(1, TIMEOUT);
    let signalled = Instant::now();
    proxy.terminate();
    let status = proxy.wait_exit(DRAIN + SLACK).expect("exits at the drain deadline");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took >= DRAIN - Duration::from_millis(200), "gave up after {took:?}, before the deadline");
    proxy.wait_log("stopping with 3 calls undelivered", TIMEOUT);
    assert_eq!(ids(&hung.received()), [1], "one at a time: calls 2 and 3 never went out");
}
