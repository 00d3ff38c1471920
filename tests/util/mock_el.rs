//! `MockEl`: a scripted execution client on 127.0.0.1 that records exactly what it receives.
//!
//! Each accepted connection gets two threads. The reader parses requests (httparse;
//! Content-Length or chunked bodies), records each one the moment it is read whole, asks
//! the behaviour for a `Reply`, and queues it; the writer performs the replies in order.
//! Because reading never waits for answering, a request that arrives while an earlier one
//! is delayed or hung is still recorded on arrival — tests can see a client pipelining.
//!
//! The behaviour is any `Fn(&Received) -> Reply` (see `reply.rs`); `default_reply` answers
//! like a healthy EL.
//! `stop()` closes the listener and every connection (an EL going down); `restart()` binds
//! the same port again and keeps the records, so a test sees the whole history.
//!
//! `partition()` … `heal()` … `deliver_late()` stand in for a network partition on loopback,
//! where nothing is ever lost in flight. Bytes read during the partition are held, unparsed
//! and unanswered, as if still in the network; a connection that got any is "cut" and holds
//! everything until it ends. New connections after `heal()` are served as usual. Then
//! `deliver_late()` plays the sender's TCP retransmitting what was stuck: a cut connection
//! its peer closed normally delivers what it held, late; one its peer aborted (RST) delivers
//! nothing, because an abort makes the sender's kernel discard what it had not delivered.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::lock;
use super::received::Received;
use super::reply::{default_reply, encode_response, Outcome, Reply, RESET_PARTIAL};
use super::wire::{self, Parsed};

/// How long `start_on`/`restart` keep retrying a port that is still taken.
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);

/// What a request the mock cannot parse gets before the connection closes.
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The behaviour a mock consults for each request, shareable across connection threads.
pub type Behaviour = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// A reply queued for the writer, with what its request said about the connection.
struct Job {
    reply: Reply,
    asked: Asked,
}

/// What a request asked of its connection.
#[derive(Clone, Copy)]
struct Asked {
    /// To close it (`Connection: close`, or HTTP/1.0 without keep-alive).
    close: bool,
    /// To keep an HTTP/1.0 connection alive, so the answer says it will.
    keep_alive_10: bool,
}

/// A mock execution client listening on 127.0.0.1; dropping it stops it.
pub struct MockEl {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    running: Option<Running>,
}

/// What survives a restart: the records and the behaviour.
struct Recorder {
    records: Mutex<Records>,
    changed: Condvar,
    behaviour: Mutex<Behaviour>,
}

#[derive(Default)]
struct Records {
    received: Vec<Received>,
    connections: usize,
    open: usize,
    errors: Vec<String>,
    partition: Partition,
    /// Bytes read on every connection, as they arrive (before any request is whole).
    bytes: usize,
    /// Connections the peer reset (RST) rather than closed.
    resets: usize,
}

/// The state of a simulated network partition (see the module docs).
#[derive(Default)]
struct Partition {
    /// Bytes read now are held as if in the network.
    on: bool,
    /// Connections that read bytes during the partition.
    cut: usize,
    /// Cut connections their peer has closed (normally or by RST).
    ended: usize,
    /// `deliver_late()` was called: cut connections may now deliver or discard.
    released: bool,
    /// Cut connections that delivered their held requests late, or discarded them.
    delivered: usize,
    discarded: usize,
}

/// What `MockEl::deliver_late` did with the cut connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateDelivery {
    /// Cut connections closed normally: their held requests were recorded, late.
    pub delivered: usize,
    /// Cut connections aborted by their peer: their held bytes were dropped.
    pub discarded: usize,
}

/// One listening period, from bind to `stop()`.
struct Running {
    run: Arc<Run>,
    /// The listening socket seen as a stream, only to call `shutdown(2)` on it.
    listener_control: TcpStream,
    acceptor: JoinHandle<()>,
}

struct Run {
    addr: SocketAddr,
    stopped: Mutex<bool>,
    wake: Condvar,
    /// A handle on each open connection, so `stop()` can shut it down.
    live: Mutex<Vec<(usize, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MockEl {
    /// Starts a mock on an ephemeral port that answers like a healthy EL.
    #[track_caller]
    pub fn start() -> MockEl {
        MockEl::with(default_reply)
    }

    /// Starts a mock on an ephemeral port with the given behaviour.
    #[track_caller]
    pub fn with(behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> MockEl {
        MockEl::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour)
    }

    /// Starts a fresh mock (no records) on `addr`, retrying for a while if the port is
    /// still taken.
    #[track_caller]
    pub fn start_on(
        addr: SocketAddr,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> MockEl {
        let recorder = Arc::new(Recorder {
            records: Mutex::new(Records::default()),
            changed: Condvar::new(),
            behaviour: Mutex::new(Arc::new(behaviour)),
        });
        let listener = bind_with_retry(addr);
        let addr = listener.local_addr().expect("mock EL local address");
        let running = Running::spawn(listener, Arc::clone(&recorder));
        MockEl { addr, recorder, running: Some(running) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Every request recorded so far, in the order they were read whole.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.recorder.records).received.clone()
    }

    /// The `rpc_method` of every request so far ("" for a body without one), in order.
    pub fn methods(&self) -> Vec<String> {
        lock(&self.recorder.records)
            .received
            .iter()
            .map(|r| r.rpc_method.clone().unwrap_or_default())
            .collect()
    }

    /// Connections accepted so far, across restarts.
    pub fn connections(&self) -> usize {
        lock(&self.recorder.records).connections
    }

    /// Connections accepted and not yet closed by either side.
    pub fn open_connections(&self) -> usize {
        lock(&self.recorder.records).open
    }

    /// Protocol anomalies seen: unparsable requests, connections closed mid-request, and
    /// behaviours that panicked. A well-behaved client leaves this empty.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.recorder.records).errors.clone()
    }

    /// Forgets the requests and errors recorded so far (connection counts stay).
    pub fn clear(&self) {
        let mut records = lock(&self.recorder.records);
        records.received.clear();
        records.errors.clear();
    }

    /// Waits until at least `n` requests have been recorded and returns all of them.
    #[track_caller]
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_for(&format!("at least {n} requests"), timeout, |all| all.len() >= n)
    }

    /// Waits until the records satisfy `condition` and returns them; panics naming `what`
    /// and listing what did arrive when `timeout` passes first.
    #[track_caller]
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let records = self.recorder.wait(timeout, |r| condition(&r.received));
        match records {
            Ok(received) => received,
            Err(seen) => panic!(
                "mock EL {}: timed out after {timeout:?} waiting for {what}; \
                 received {} requests: {seen:?}",
                self.addr,
                seen.len()
            ),
        }
    }

    /// Waits until at least `n` bytes have been read, over all connections, whole requests or
    /// not (a request still arriving counts).
    #[track_caller]
    pub fn wait_bytes(&self, n: usize, timeout: Duration) {
        let result = self.recorder.wait(timeout, |r| r.bytes >= n);
        let bytes = lock(&self.recorder.records).bytes;
        assert!(
            result.is_ok(),
            "mock EL {}: timed out after {timeout:?} waiting for {n} bytes; {bytes} came",
            self.addr
        );
    }

    /// Bytes read so far over all connections.
    pub fn bytes_read(&self) -> usize {
        lock(&self.recorder.records).bytes
    }

    /// Waits until the peer has reset (RST) at least `n` connections.
    #[track_caller]
    pub fn wait_resets(&self, n: usize, timeout: Duration) {
        let result = self.recorder.wait(timeout, |r| r.resets >= n);
        let resets = lock(&self.recorder.records).resets;
        assert!(
            result.is_ok(),
            "mock EL {}: timed out after {timeout:?} waiting for {n} resets; {resets} came",
            self.addr
        );
    }

    /// Waits until exactly `n` connections are open.
    #[track_caller]
    pub fn wait_open_connections(&self, n: usize, timeout: Duration) {
        let result = self.recorder.wait(timeout, |r| r.open == n);
        assert!(
            result.is_ok(),
            "mock EL {}: timed out after {timeout:?} waiting for {n} open connections; \
             {} are open",
            self.addr,
            self.open_connections()
        );
    }

    /// Replaces the behaviour; requests read from now on get the new one.
    pub fn set_behaviour(&self, behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
        *lock(&self.recorder.behaviour) = Arc::new(behaviour);
    }

    /// Starts a simulated partition: bytes read from now on are held, not answered.
    pub fn partition(&self) {
        self.recorder.update(|r| r.partition.on = true);
    }

    /// Ends the partition for new bytes on connections that are not cut.
    pub fn heal(&self) {
        self.recorder.update(|r| r.partition.on = false);
    }

    /// Waits until the peer has closed `n` cut connections (given up on them).
    #[track_caller]
    pub fn wait_cut_closed(&self, n: usize, timeout: Duration) {
        let result = self.recorder.wait(timeout, |r| r.partition.ended >= n);
        let p = lock(&self.recorder.records).partition.ended;
        assert!(
            result.is_ok(),
            "mock EL {}: timed out after {timeout:?} waiting for {n} cut connections to close; {p} did",
            self.addr
        );
    }

    /// Plays the late retransmission of what was held: waits until the peer has closed every
    /// cut connection, then has each deliver its held requests (closed normally) or drop them
    /// (aborted), and waits until all have.
    #[track_caller]
    pub fn deliver_late(&self, timeout: Duration) -> LateDelivery {
        let closed = self.recorder.wait(timeout, |r| r.partition.ended == r.partition.cut);
        assert!(closed.is_ok(), "mock EL {}: the peer never closed every cut connection", self.addr);
        self.recorder.update(|r| r.partition.released = true);
        let settled =
            self.recorder.wait(timeout, |r| r.partition.delivered + r.partition.discarded == r.partition.cut);
        assert!(settled.is_ok(), "mock EL {}: cut connections did not settle", self.addr);
        let records = lock(&self.recorder.records);
        LateDelivery { delivered: records.partition.delivered, discarded: records.partition.discarded }
    }

    /// Closes the listener and every connection, and waits for the mock's threads to end.
    /// New connections are refused from then on. Idempotent.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    /// Listens again on the same port, keeping the records and the behaviour.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        let listener = bind_with_retry(self.addr);
        self.running = Some(Running::spawn(listener, Arc::clone(&self.recorder)));
    }
}

impl Drop for MockEl {
    fn drop(&mut self) {
        self.stop();
    }
}

#[track_caller]
fn bind_with_retry(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + BIND_RETRY_FOR;
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("mock EL cannot bind {addr}: {e}"),
        }
    }
}

impl Recorder {
    /// Waits until `condition` holds; `Err` carries the requests seen when time ran out.
    fn wait(
        &self,
        timeout: Duration,
        condition: impl Fn(&Records) -> bool,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = Instant::now() + timeout;
        let mut records = lock(&self.records);
        loop {
            if condition(&records) {
                return Ok(records.received.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(records.received.clone());
            }
            records = self
                .changed
                .wait_timeout(records, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn update(&self, change: impl FnOnce(&mut Records)) {
        change(&mut lock(&self.records));
        self.changed.notify_all();
    }

    fn connection_opened(&self) -> usize {
        let mut conn = 0;
        self.update(|r| {
            conn = r.connections;
            r.connections += 1;
            r.open += 1;
        });
        conn
    }

    fn connection_closed(&self) {
        self.update(|r| r.open -= 1);
    }

    fn error(&self, error: String) {
        self.update(|r| r.errors.push(error));
    }

    fn record(&self, request: Received) {
        self.update(|r| r.received.push(request));
    }

    /// Asks the behaviour; a panicking behaviour is recorded as an error and closes the
    /// connection, so the test fails on its assertion instead of hanging.
    fn reply_to(&self, request: &Received) -> Reply {
        let behaviour = Arc::clone(&lock(&self.behaviour));
        match catch_unwind(AssertUnwindSafe(|| behaviour(request))) {
            Ok(reply) => reply,
            Err(_) => {
                let method = request.rpc_method.as_deref().unwrap_or("?");
                self.error(format!("behaviour panicked on {method} (conn {})", request.conn));
                Reply::Close
            }
        }
    }
}

impl Running {
    fn spawn(listener: TcpListener, recorder: Arc<Recorder>) -> Running {
        let addr = listener.local_addr().expect("mock EL local address");
        let run = Arc::new(Run {
            addr,
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            live: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let listener_control = listener_control(&listener);
        let acceptor = {
            let run = Arc::clone(&run);
            thread::Builder::new()
                .name(format!("mock-el-{}-accept", addr.port()))
                .spawn(move || accept_loop(listener, &run, &recorder))
                .expect("spawn mock EL acceptor")
        };
        Running { run, listener_control, acceptor }
    }

    /// Stops listening, shuts every connection down, and joins all threads.
    ///
    /// Both use `shutdown(2)`, which acts on the socket itself: merely closing our
    /// descriptors would leave the port listening and connections open for as long as a
    /// child process forked meanwhile (any test spawning the proxy) holds copies of them,
    /// until its exec closes them. On Linux, shutting a listening socket down makes it
    /// refuse connections at once and wakes the blocked `accept` with an error.
    fn stop(self) {
        self.run.set_stopped();
        let _ = self.listener_control.shutdown(Shutdown::Both);
        self.acceptor.join().expect("mock EL acceptor panicked");
        for (_, stream) in lock(&self.run.live).iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&self.run.threads));
        for thread in threads {
            // A connection thread that panicked has already printed why; stopping goes on.
            let _ = thread.join();
        }
    }
}

impl Run {
    fn set_stopped(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    /// Sleeps for `duration` unless stopped first; returns whether it slept it all.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut stopped = lock(&self.stopped);
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        false
    }

    fn wait_stopped(&self) {
        let mut stopped = lock(&self.stopped);
        while !*stopped {
            stopped = self.wake.wait(stopped).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn forget(&self, conn: usize) {
        lock(&self.live).retain(|(c, _)| *c != conn);
    }
}

/// A second handle on the listening socket, typed as a stream so that safe std code can
/// call `shutdown(2)` on it (`TcpListener` has no `shutdown`).
fn listener_control(listener: &TcpListener) -> TcpStream {
    let fd = listener.try_clone().expect("clone mock EL listener");
    TcpStream::from(OwnedFd::from(fd))
}

/// Accepts until `stop()` shuts the listener down (which makes `accept` fail).
fn accept_loop(listener: TcpListener, run: &Arc<Run>, recorder: &Arc<Recorder>) {
    for stream in listener.incoming() {
        if run.is_stopped() {
            break;
        }
        match stream {
            Ok(stream) => spawn_connection(stream, run, recorder),
            // Transient (a peer gave up before accept); avoid spinning if it persists.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn spawn_connection(stream: TcpStream, run: &Arc<Run>, recorder: &Arc<Recorder>) {
    let conn = recorder.connection_opened();
    let _ = stream.set_nodelay(true);
    let read_half = stream.try_clone().expect("clone mock EL stream");
    let handle = stream.try_clone().expect("clone mock EL stream");
    lock(&run.live).push((conn, handle));
    let (jobs, queue) = mpsc::channel();
    let port = run.addr.port();
    let reader = ConnReader {
        conn,
        stream: read_half,
        recorder: Arc::clone(recorder),
        run: Arc::clone(run),
        jobs,
        cut: false,
        held: Vec::new(),
    };
    let writer = ConnWriter { conn, stream, run: Arc::clone(run), recorder: Arc::clone(recorder), queue };
    let threads = [
        thread::Builder::new().name(format!("mock-el-{port}-c{conn}-read")).spawn(move || reader.run()),
        thread::Builder::new().name(format!("mock-el-{port}-c{conn}-write")).spawn(move || writer.run()),
    ];
    let mut all = lock(&run.threads);
    all.extend(threads.map(|t| t.expect("spawn mock EL connection thread")));
}

/// Reads and records requests of one connection, and queues their replies.
struct ConnReader {
    conn: usize,
    stream: TcpStream,
    recorder: Arc<Recorder>,
    run: Arc<Run>,
    jobs: Sender<Job>,
    /// Whether this connection read bytes during a partition (see the module docs).
    cut: bool,
    /// What a cut connection read: "in the network" until `deliver_late`.
    held: Vec<u8>,
}

impl ConnReader {
    fn run(mut self) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match wire::parse_request(&buf) {
                Parsed::Complete { message, len } => {
                    buf.drain(..len);
                    if !self.handle(message) {
                        return;
                    }
                    continue;
                }
                Parsed::Invalid(e) => return self.reject(&e),
                Parsed::Partial => {}
            }
            match self.stream.read(&mut chunk) {
                Ok(0) if self.cut => return self.settle(true, buf),
                Ok(0) => return self.closed_by_peer(&buf),
                Ok(n) if self.cut || self.hold_from_now() => self.held.extend_from_slice(&chunk[..n]),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    self.recorder.update(|r| r.bytes += n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) if self.cut => return self.settle(false, buf),
                Err(e) => {
                    if e.kind() == ErrorKind::ConnectionReset {
                        self.recorder.update(|r| r.resets += 1);
                    }
                    return;
                }
            }
        }
    }

    /// Whether a partition is on; if so this connection is cut from now on.
    fn hold_from_now(&mut self) -> bool {
        let mut records = lock(&self.recorder.records);
        if records.partition.on {
            records.partition.cut += 1;
            self.cut = true;
            self.recorder.changed.notify_all();
        }
        self.cut
    }

    /// A cut connection ended (`closed_normally`, or reset): once `deliver_late` releases it,
    /// its held requests are recorded, late, or dropped as an aborting sender's kernel would.
    fn settle(&mut self, closed_normally: bool, mut buf: Vec<u8>) {
        self.recorder.update(|r| r.partition.ended += 1);
        while self.recorder.wait(Duration::from_millis(50), |r| r.partition.released).is_err() {
            if self.run.is_stopped() {
                return;
            }
        }
        if closed_normally {
            buf.append(&mut self.held);
            while let Parsed::Complete { message, len } = wire::parse_request(&buf) {
                buf.drain(..len);
                self.handle(message);
            }
        }
        self.recorder.update(|r| {
            if closed_normally {
                r.partition.delivered += 1;
            } else {
                r.partition.discarded += 1;
            }
        });
    }

    /// Records the request and queues its reply; returns whether to read on.
    fn handle(&self, request: wire::Request) -> bool {
        let at = Instant::now();
        let http10 = request.version == 0;
        let keep_alive = wire::has_token(&request.headers, "connection", "keep-alive");
        let close = wire::has_token(&request.headers, "connection", "close") || (http10 && !keep_alive);
        let received = Received::from_wire(self.conn, request, at);
        let reply = self.recorder.reply_to(&received);
        let outcome = reply.outcome(close);
        self.recorder.record(received);
        let asked = Asked { close, keep_alive_10: http10 && keep_alive };
        let job = Job { reply, asked };
        // The writer only hangs up after this reader stops, so a send cannot fail unless the
        // writer died; then there is nothing left to do.
        self.jobs.send(job).is_ok() && matches!(outcome, Outcome::KeepAlive | Outcome::Hang)
    }

    fn reject(&self, error: &str) {
        let conn = self.conn;
        self.recorder.error(format!("conn {conn}: unparsable request: {error}"));
        let asked = Asked { close: true, keep_alive_10: false };
        let job = Job { reply: Reply::Garbage(BAD_REQUEST.to_vec()), asked };
        let _ = self.jobs.send(job);
    }

    fn closed_by_peer(&self, unparsed: &[u8]) {
        if !unparsed.is_empty() {
            let (conn, n) = (self.conn, unparsed.len());
            self.recorder.error(format!("conn {conn}: closed mid-request after {n} bytes"));
        }
    }
}

/// Performs the queued replies of one connection in order, and closes it.
struct ConnWriter {
    conn: usize,
    stream: TcpStream,
    run: Arc<Run>,
    recorder: Arc<Recorder>,
    queue: Receiver<Job>,
}

impl ConnWriter {
    fn run(mut self) {
        match self.serve() {
            Outcome::Reset => {}
            Outcome::Hang => {
                self.run.wait_stopped();
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            Outcome::Close | Outcome::KeepAlive => {
                let _ = self.stream.shutdown(Shutdown::Both);
            }
        }
        self.run.forget(self.conn);
        self.recorder.connection_closed();
        // Dropping the last handle here closes the socket (a Reset closes it only now).
    }

    /// Answers jobs until one ends the connection or the reader stops.
    fn serve(&mut self) -> Outcome {
        while let Ok(Job { reply, asked }) = self.queue.recv() {
            match self.perform(reply, asked, None) {
                Ok(Outcome::KeepAlive) => {}
                Ok(end) => return end,
                Err(_) => return Outcome::Close,
            }
        }
        Outcome::Close
    }

    /// Writes `reply`, one byte per `pace` when set; returns how the connection continues.
    fn perform(&mut self, reply: Reply, asked: Asked, pace: Option<Duration>) -> std::io::Result<Outcome> {
        let outcome = reply.outcome(asked.close);
        match reply {
            Reply::Json { status, body, framing } => {
                let connection = match outcome {
                    Outcome::Close => Some("close"),
                    _ if asked.keep_alive_10 => Some("keep-alive"),
                    _ => None,
                };
                let bytes = encode_response(status, &body, framing, connection);
                self.write(&bytes, pace)?;
            }
            Reply::Delay(delay, inner) => {
                if !self.run.sleep(delay) {
                    return Ok(Outcome::Close);
                }
                return self.perform(*inner, asked, pace);
            }
            Reply::Trickle(inner, gap) => return self.perform(*inner, asked, Some(gap)),
            Reply::CloseIdle(inner) => {
                self.perform(*inner, asked, pace)?;
            }
            Reply::Gated { reply, first, gate } => {
                let Reply::Json { status, body, framing } = *reply else {
                    return self.perform(*reply, asked, pace);
                };
                let connection = match outcome {
                    Outcome::Close => Some("close"),
                    _ if asked.keep_alive_10 => Some("keep-alive"),
                    _ => None,
                };
                let bytes = encode_response(status, &body, framing, connection);
                let first = first.min(bytes.len());
                self.write(&bytes[..first], pace)?;
                // Bounded: a test that never gives the word is failing anyway.
                if gate.wait(Duration::from_secs(10)) != Some(true) {
                    return Ok(Outcome::Close);
                }
                self.write(&bytes[first..], pace)?;
            }
            Reply::Reset => self.write(RESET_PARTIAL, pace)?,
            Reply::Garbage(bytes) => self.write(&bytes, pace)?,
            Reply::Hang | Reply::Close => {}
        }
        Ok(outcome)
    }

    fn write(&mut self, bytes: &[u8], pace: Option<Duration>) -> std::io::Result<()> {
        let Some(gap) = pace else {
            return self.stream.write_all(bytes);
        };
        for (i, byte) in bytes.iter().enumerate() {
            if i > 0 && !self.run.sleep(gap) {
                return Err(ErrorKind::ConnectionAborted.into());
            }
            self.stream.write_all(std::slice::from_ref(byte))?;
        }
        Ok(())
    }
}
