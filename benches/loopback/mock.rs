//! The mock execution clients (fast, late or down) and the minimal forwarder that serves as
//! the reference for what any fan-out proxy costs.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::wire::{Framer, MessageKind};

/// How the secondary ELs of a scenario behave.
#[derive(Clone, Copy, PartialEq)]
pub enum Secondary {
    Fast,
    Late(Duration),
    Down,
}

/// Starts a mock EL on an ephemeral port: it reads each request whole, waits `delay`, and
/// answers `body` (a small newPayload result, or a getPayload answer of megabytes) with a
/// Content-Length, written in one call. One thread per connection.
pub fn spawn_mock_el(delay: Duration, body: &[u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a mock EL");
    let addr = listener.local_addr().expect("mock EL address");
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    let answer: Arc<[u8]> = answer.into();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            thread::spawn(move || {
                let _ = serve_el(stream, delay, &answer);
            });
        }
    });
    addr
}

/// An address where nothing listens: an EL that is down.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.local_addr().expect("port address")
}

pub fn serve_el(mut stream: TcpStream, delay: Duration, answer: &[u8]) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Framer::new();
    loop {
        if !conn.read_message(&mut stream, MessageKind::Request)? {
            return Ok(());
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        stream.write_all(answer)?;
    }
}

// ------------------------------------------------------------------------------- minimal forwarder

/// The least any fan-out proxy must do, as a reference: a thread per BN connection that reads
/// each request whole, writes it to every EL over kept-alive connections, relays the first EL's
/// answer, then reads the others' answers. No parsing beyond Content-Length, no ordering, no
/// event loop. Only for scenarios whose ELs are all up and fast.
pub fn spawn_forwarder(els: Vec<SocketAddr>) -> SocketAddr {
    spawn_forwarding(els, forward)
}

/// Listens on an ephemeral port and serves each BN connection with `serve` on its own thread.
fn spawn_forwarding(
    els: Vec<SocketAddr>,
    serve: fn(TcpStream, &[SocketAddr]) -> io::Result<()>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a forwarder");
    let addr = listener.local_addr().expect("forwarder address");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let els = els.clone();
            thread::spawn(move || {
                let _ = serve(stream, &els);
            });
        }
    });
    addr
}

/// A kept-alive connection to each EL, with its answer framer.
fn connect_all(els: &[SocketAddr]) -> io::Result<Vec<(TcpStream, Framer)>> {
    els.iter()
        .map(|el| {
            let stream = TcpStream::connect(el)?;
            stream.set_nodelay(true)?;
            Ok((stream, Framer::new()))
        })
        .collect()
}

/// Reads the BN's next request whole into `request` and writes it to every EL; false when the
/// BN closed its connection between requests.
fn request_to_all(
    bn: &mut TcpStream,
    from_bn: &mut Framer,
    request: &mut Vec<u8>,
    upstreams: &mut [(TcpStream, Framer)],
) -> io::Result<bool> {
    request.clear();
    if from_bn.read_message_status(bn, MessageKind::Request, Some(request))?.is_none() {
        return Ok(false);
    }
    for (stream, _) in upstreams.iter_mut() {
        stream.write_all(request)?;
    }
    Ok(true)
}

fn forward(mut bn: TcpStream, els: &[SocketAddr]) -> io::Result<()> {
    bn.set_nodelay(true)?;
    let mut upstreams = connect_all(els)?;
    let mut from_bn = Framer::new();
    let (mut request, mut answer) = (Vec::new(), Vec::new());
    while request_to_all(&mut bn, &mut from_bn, &mut request, &mut upstreams)? {
        for (i, (stream, framer)) in upstreams.iter_mut().enumerate() {
            answer.clear();
            framer.read_message_status(stream, MessageKind::Response, Some(&mut answer))?;
            if i == 0 {
                bn.write_all(&answer)?;
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------- cut-through forwarder

/// Like the minimal forwarder, but each piece of a request goes to the first EL as soon as it
/// is read from the BN (cut-through), the BN gets the first EL's answer before the other ELs
/// get their copies (primary first), and nothing is validated: the least a fan-out proxy that
/// streams to its primary costs here.
pub fn spawn_cut_through(els: Vec<SocketAddr>) -> SocketAddr {
    spawn_forwarding(els, cut_through)
}

fn cut_through(mut bn: TcpStream, els: &[SocketAddr]) -> io::Result<()> {
    use std::io::Read;
    bn.set_nodelay(true)?;
    let mut upstreams = connect_all(els)?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut request, mut answer) = (Vec::new(), Vec::new());
    loop {
        // The head (the benchmark's BN never pipelines, so nothing follows the body).
        request.clear();
        let head_end = loop {
            if let Some(i) = crate::wire::find(&request, b"\r\n\r\n") {
                break i + 4;
            }
            let n = bn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            request.extend_from_slice(&buf[..n]);
        };
        let total = head_end + crate::wire::content_length(&request[..head_end]).unwrap_or(0);
        let Some((first, _)) = upstreams.first_mut() else { return Ok(()) };
        first.write_all(&request)?;
        while request.len() < total {
            let n = bn.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            first.write_all(&buf[..n])?;
            request.extend_from_slice(&buf[..n]);
        }
        let Some((first, framer)) = upstreams.first_mut() else { return Ok(()) };
        answer.clear();
        framer.read_message_status(first, MessageKind::Response, Some(&mut answer))?;
        bn.write_all(&answer)?;
        for (stream, _) in upstreams.iter_mut().skip(1) {
            stream.write_all(&request)?;
        }
        for (stream, framer) in upstreams.iter_mut().skip(1) {
            framer.read_message_status(stream, MessageKind::Response, None)?;
        }
    }
}

// ------------------------------------------------------------------------- splicing forwarder

/// Like the minimal forwarder, but the first EL's answer is relayed as it arrives and its body
/// goes EL socket → pipe → BN socket with `splice(2)` (Linux), never copied into the forwarder;
/// the other ELs' answers are read and dropped after the BN has its answer. The least a
/// relaying proxy costs for a large answer here: every byte still crosses loopback twice.
#[cfg(target_os = "linux")]
pub fn spawn_splicing(els: Vec<SocketAddr>) -> SocketAddr {
    spawn_forwarding(els, splicing)
}

#[cfg(target_os = "linux")]
fn splicing(mut bn: TcpStream, els: &[SocketAddr]) -> io::Result<()> {
    use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe, splice, SpliceFlags};
    use std::io::Read;
    bn.set_nodelay(true)?;
    let mut upstreams = connect_all(els)?;
    let (from_pipe, to_pipe) = pipe()?;
    // 1 MiB, as the proxy asks; where fs.pipe-max-size is lower, what the system gives.
    let _ = fcntl_setpipe_size(&to_pipe, 1 << 20);
    let capacity = fcntl_getpipe_size(&to_pipe)?;
    let mut from_bn = Framer::new();
    let mut request = Vec::new();
    let mut head = vec![0u8; 64 * 1024];
    while request_to_all(&mut bn, &mut from_bn, &mut request, &mut upstreams)? {
        let Some((first, _)) = upstreams.first_mut() else { return Ok(()) };
        // The head, and whatever of the body came with it, through the forwarder; the mock ELs
        // answer one call at a time, so nothing of a next answer follows.
        let mut got = 0;
        let head_end = loop {
            if let Some(i) = crate::wire::find(&head[..got], b"\r\n\r\n") {
                break i + 4;
            }
            if got == head.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            let n = first.read(&mut head[got..])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        };
        let total = head_end + crate::wire::content_length(&head[..head_end]).unwrap_or(0);
        bn.write_all(&head[..got])?;
        let mut left = total.saturating_sub(got);
        while left > 0 {
            let filled = splice(&*first, None, &to_pipe, None, left.min(capacity), SpliceFlags::MOVE)?;
            if filled == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut held = filled;
            while held > 0 {
                held -= splice(&from_pipe, None, &bn, None, held, SpliceFlags::MOVE)?;
            }
            left -= filled;
        }
        for (stream, framer) in upstreams.iter_mut().skip(1) {
            framer.read_message_status(stream, MessageKind::Response, None)?;
        }
    }
    Ok(())
}
