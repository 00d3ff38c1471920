//! The beacon-node-side budgets (issue 11, first part), over 127.0.0.1 against the real
//! binary: each bound holds under the client that used to break it, and each has its answer.
//!
//! - Lock-out: clients that pipeline GETs and never read their answers are closed after
//!   `--write-timeout` (counted in `sync_proxy_connections_closed_total{reason="write_timeout"}`),
//!   so a beacon node waiting behind them at `--max-connections` is served.
//! - Pipelining: 64 KiB of pipelined `GET /metrics` in one write, never read, does not grow
//!   the proxy's memory by the answers to all of them (it stops parsing at the pipeline bound).
//! - `--metrics-addr`: answers while the beacon node side is saturated, has its own cap, and
//!   serves a client that waited at that cap once a metrics connection closes.
//! - Announced bodies: sixteen 16 MiB `Content-Length`s with 1 KiB sent do not commit 256 MiB.
//! - HTTP framing: `Transfer-Encoding` with `Content-Length` is 400 and closes; HTTP/1.1
//!   without `Host` is 400; an EL's 204/304 is relayed with no `Content-Length` and no body.
//! - EL answers: an endless chunked answer fails that EL at `--max-body-bytes` (its call falls
//!   back to the next EL), with a bounded amount read.
//!
//! Memory is read from `/proc/<pid>/status` (Linux).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::util::{rpc_body, wait_until, Bn, MockEl, Proxy, Reply, TIMEOUT};

/// `--metrics-addr`'s own connection cap (`METRICS_MAX_CONNECTIONS` in `src/event_loop.rs`).
const METRICS_MAX_CONNECTIONS: usize = 8;
/// How long to watch for something that must not happen, after a positive signal.
const QUIET: Duration = Duration::from_millis(300);
const MIB: u64 = 1 << 20;
/// One pipelined scrape request.
const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

// ------------------------------------------------------------------------------- helpers

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, `VmData`).
#[track_caller]
fn vm_kib(proxy: &Proxy, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("proc status");
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
    let value = line.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    value.unwrap_or_else(|| panic!("no {field} in /proc/{}/status", proxy.pid()))
}

/// `GET /metrics` on a fresh connection to `addr`.
#[track_caller]
fn scrape(addr: SocketAddr) -> String {
    let mut bn = Bn::connect(addr);
    bn.send_raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    bn.read_response().text()
}

/// One value of a `/metrics` text, by the whole text before the value.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[track_caller]
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = scrape(addr);
    value(&text, series).unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
}

/// Bytes the proxy has read from beacon nodes, not counting the scrape that asks.
#[track_caller]
fn received_bytes(addr: SocketAddr) -> u64 {
    let scrape_request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".len() as u64;
    metric(addr, "sync_proxy_received_bytes_total") as u64 - scrape_request
}

fn chain_id(id: u64) -> Vec<u8> {
    rpc_body(id, "eth_chainId", json!([]))
}

/// A socket that sends `bytes` and never reads.
#[track_caller]
fn non_reader(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect a non-reading client");
    stream.write_all(bytes).expect("send the pipelined requests");
    stream
}

// ------------------------------------------------------------------------------- lock-out

#[test]
fn regression_clients_that_stop_reading_are_closed_after_the_write_timeout() {
    // Four sockets pipelining GETs and reading nothing held --max-connections 4 for ever:
    // answers owed had no deadline.
    let el = MockEl::start();
    let proxy = Proxy::start(&[
        "--builders",
        &el.url(),
        "--max-connections",
        "4",
        "--write-timeout",
        "300",
        "--loglevel",
        "debug",
    ]);
    let pipelined = GET_METRICS.repeat(2048);
    let hogs: Vec<TcpStream> = (0..4).map(|_| non_reader(proxy.addr(), &pipelined)).collect();
    // The fifth connection waits in the listen queue until a hog is closed.
    let mut bn = proxy.bn();
    bn.send_post(&[], &chain_id(7));
    let answer = bn.try_read_response(TIMEOUT);
    let answer = answer.unwrap_or_else(|e| panic!("the beacon node was locked out: {e:?}"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["id"], 7);
    proxy.wait_log("took no byte of its answers for --write-timeout", TIMEOUT);
    wait_until("all four non-readers are counted as closed", TIMEOUT, || {
        bn.send_raw(GET_METRICS);
        let text = bn.read_response().text();
        value(&text, "sync_proxy_connections_closed_total{reason=\"write_timeout\"}") == Some(4.0)
    });
    drop(hogs);
}

// ------------------------------------------------------------------------------- pipelining

#[test]
fn regression_pipelined_gets_in_one_write_do_not_grow_memory() {
    // 64 KiB of pipelined GET /metrics, never read, was parsed whole in one read: ~2,000
    // answers queued, ~13 MiB.
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--write-timeout", "1000"]);
    let addr = proxy.addr();
    for _ in 0..5 {
        scrape(addr);
    }
    let peak_before = vm_kib(&proxy, "VmHWM");
    let read_before = received_bytes(addr);
    let pipelined = GET_METRICS.repeat(64 * 1024 / GET_METRICS.len());
    let hog = non_reader(addr, &pipelined);
    // The proxy has read it (one read of up to 64 KiB, parsed in the same pass as the read:
    // it used to be parsed whole, now only up to the pipeline bound, the rest kept unparsed),
    // or it stopped reading part-way and the write timeout has closed the socket. Either way
    // nothing more is parsed while the socket is not read, so the peak is reached by now.
    wait_until("the proxy read all the requests or closed the non-reader", TIMEOUT, || {
        thread::sleep(Duration::from_millis(20));
        let text = scrape(addr);
        let closed = value(&text, "sync_proxy_connections_closed_total{reason=\"write_timeout\"}");
        let read = value(&text, "sync_proxy_received_bytes_total").unwrap_or(0.0) as u64;
        closed == Some(1.0) || read >= read_before + pipelined.len() as u64
    });
    let grown = vm_kib(&proxy, "VmHWM").saturating_sub(peak_before);
    eprintln!("peak RSS grew by {grown} KiB under {} pipelined GETs", pipelined.len() / GET_METRICS.len());
    assert!(grown < 4 * 1024, "peak RSS grew by {grown} KiB");
    drop(hog);
    assert_eq!(proxy.bn().post(&chain_id(1)).status, 200);
}

// ------------------------------------------------------------------------------- metrics listener

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

/// A keep-alive connection to `addr` that has been served once (so it is surely accepted).
#[track_caller]
fn served_connection(addr: SocketAddr) -> Bn {
    let mut bn = Bn::connect(addr);
    bn.send_raw(GET_METRICS);
    assert_eq!(bn.read_response().status, 200);
    bn
}

#[test]
fn regression_metrics_answer_while_beacon_node_connections_are_saturated() {
    // Metrics connections counted against --max-connections: /metrics was unreachable
    // exactly when the proxy was saturated.
    let el = MockEl::start();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(&[
        "--builders",
        &el.url(),
        "--max-connections",
        "2",
        "--metrics-addr",
        &metrics_addr.to_string(),
        "--loglevel",
        "debug",
    ]);
    let _held: Vec<Bn> = (0..2).map(|_| served_connection(proxy.addr())).collect();
    proxy.wait_log("2 connections open: not accepting", TIMEOUT);
    let mut bn = Bn::connect(metrics_addr);
    bn.send_raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = bn.try_read_response(TIMEOUT).unwrap_or_else(|e| panic!("no /metrics: {e:?}"));
    assert_eq!(value(&answer.text(), "sync_proxy_open_connections"), Some(2.0), "{}", answer.text());
}

#[test]
fn regression_a_metrics_client_waiting_at_its_cap_is_served_once_one_closes() {
    // Only the main listener was resumed when capacity freed.
    let el = MockEl::start();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cap = METRICS_MAX_CONNECTIONS.to_string();
    let proxy = Proxy::start(&[
        "--builders",
        &el.url(),
        "--max-connections",
        &cap,
        "--metrics-addr",
        &metrics_addr.to_string(),
        "--loglevel",
        "debug",
    ]);
    let mut held: Vec<Bn> = (0..METRICS_MAX_CONNECTIONS).map(|_| served_connection(metrics_addr)).collect();
    proxy.wait_log(&format!("{METRICS_MAX_CONNECTIONS} metrics connections open"), TIMEOUT);
    // Beacon nodes are not held back by the metrics connections.
    assert_eq!(proxy.bn().post(&chain_id(1)).status, 200);
    let mut waiting = Bn::connect(metrics_addr);
    waiting.send_raw(GET_METRICS);
    assert!(waiting.read_response_timeout(QUIET).is_none(), "served beyond the metrics cap");
    drop(held.pop());
    let answer = waiting.try_read_response(TIMEOUT).unwrap_or_else(|e| panic!("never served: {e:?}"));
    assert_eq!(answer.status, 200);
}

// ------------------------------------------------------------------------------- body memory

#[test]
fn regression_announced_bodies_do_not_commit_memory_before_they_arrive() {
    // Each declared body was reserved whole at its head: 16 × 16 MiB announced, 1 KiB sent,
    // 256 MiB committed (untouched pages are not resident, so RSS hardly shows it; the
    // committed data size, which overcommit limits and `ulimit -v` count, does).
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let addr = proxy.addr();
    scrape(addr);
    let (data_before, rss_before) = (vm_kib(&proxy, "VmData"), vm_kib(&proxy, "VmRSS"));
    let read_before = received_bytes(addr);
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        16 * MIB
    )
    .into_bytes();
    request.extend_from_slice(&[b' '; 1024]);
    let senders: Vec<TcpStream> = (0..16).map(|_| non_reader(addr, &request)).collect();
    let sent = 16 * request.len() as u64;
    wait_until("the proxy read every head and its first KiB", TIMEOUT, || {
        thread::sleep(Duration::from_millis(20));
        received_bytes(addr) >= read_before + sent
    });
    let data = vm_kib(&proxy, "VmData").saturating_sub(data_before);
    let rss = vm_kib(&proxy, "VmRSS").saturating_sub(rss_before);
    eprintln!("16 announced 16 MiB bodies: data +{data} KiB, RSS +{rss} KiB");
    assert!(data < 64 * 1024, "{data} KiB committed for 16 KiB of body bytes");
    drop(senders);
}

// ------------------------------------------------------------------------------- framing

#[test]
fn regression_transfer_encoding_with_content_length_is_400_and_closes() {
    // RFC 9112 §6.1: it was served (by Transfer-Encoding) and the connection kept.
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let body = chain_id(1);
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: {}\r\n\r\n{:x}\r\n",
        body.len(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut bn = proxy.bn();
    bn.send_raw(&request);
    let answer = bn.read_response();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(bn.is_closed_within(TIMEOUT), "the connection was kept");
    // A later call is the positive signal: had the request been forwarded, the EL would have
    // had it first.
    assert_eq!(proxy.bn().post(&chain_id(2)).status, 200);
    let received = el.wait_requests(1, TIMEOUT);
    assert_eq!(received[0].rpc_id, Some(json!(2)), "forwarded: {received:?}");
}

#[test]
fn regression_an_http_1_1_request_without_host_is_400() {
    // RFC 9112 §3.2: it was served.
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url()]);
    let body = chain_id(1);
    let mut request = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut bn = proxy.bn();
    bn.send_raw(&request);
    let answer = bn.read_response();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("Host"), "{}", answer.text());
    // HTTP/1.0 may leave it out.
    let mut request = format!(
        "POST / HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut bn = proxy.bn();
    bn.send_raw(&request);
    assert_eq!(bn.read_response().status, 200);
}

#[test]
fn regression_an_el_answer_without_a_body_is_relayed_without_content_length_or_body() {
    // An EL's 204 was relayed with `Content-Length: 0` (RFC 9110 §8.6: never on 1xx and 204).
    for status in [204u16, 304] {
        let el = MockEl::with(move |_| Reply::http(status, Vec::new()));
        let proxy = Proxy::start(&["--builders", &el.url()]);
        let mut bn = proxy.bn();
        for id in 1..=2 {
            // Twice on one connection: the first answer must not desynchronise the second.
            let answer = bn.post(&chain_id(id));
            assert_eq!(answer.status, status);
            assert_eq!(answer.header("content-length"), None, "{status}: {:?}", answer.headers);
            assert!(answer.body.is_empty(), "{status}: {}", answer.text());
        }
    }
}

// ------------------------------------------------------------------------------- EL answers

/// An execution client that answers every connection with an endless chunked answer, counting
/// the bytes the proxy took, until the proxy closes or `stop` is set.
struct EndlessEl {
    addr: SocketAddr,
    written: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl EndlessEl {
    fn start() -> EndlessEl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the endless EL");
        let addr = listener.local_addr().expect("endless EL address");
        let written = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, c, s) = (Arc::clone(&written), Arc::clone(&closed), Arc::clone(&stop));
        thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let chunk = [&b"4000\r\n"[..], &[b' '; 0x4000], b"\r\n"].concat();
            let mut out = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            while out.is_ok() && !s.load(Ordering::SeqCst) {
                out = stream.write_all(&chunk);
                if out.is_ok() {
                    w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            }
            c.store(out.is_err(), Ordering::SeqCst);
        });
        EndlessEl { addr, written, closed, stop }
    }
}

impl Drop for EndlessEl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn regression_an_endless_chunked_answer_fails_that_el_at_max_body_bytes() {
    // EL answers were read with a fixed 128 MiB cap, not --max-body-bytes: an endless answer
    // held ~130 MiB before it failed.
    let endless = EndlessEl::start();
    let el = MockEl::start();
    let proxy = Proxy::start(&[
        "--builders",
        &format!("{},{}", endless.addr, el.url()),
        "--max-body-bytes",
        "1048576",
        "--request-timeout",
        "30000",
    ]);
    let answer = proxy.bn().post(&chain_id(5));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["id"], 5);
    assert_eq!(el.received().len(), 1, "the call fell back to the next EL");
    wait_until("the proxy closed the endless answer", TIMEOUT, || endless.closed.load(Ordering::SeqCst));
    let written = endless.written.load(Ordering::SeqCst);
    eprintln!("the endless EL wrote {written} bytes before the proxy closed");
    // The cap, plus what the kernel's socket buffers took.
    assert!(written < 32 * MIB, "{written} bytes read of an endless answer");
    let failures = format!("sync_proxy_el_errors_total{{el=\"{}\",kind=\"bad_answer\"}}", endless.addr);
    assert_eq!(metric(proxy.addr(), &failures), 1.0);
}
