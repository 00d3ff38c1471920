//! The sockets of the execution clients' connections, one slab per client with a slot per
//! `upstream::Conn` (`MAX_CONNS` of them). Slot `s` of client `e` here is the socket of
//! `ups[e].conns[s]`; the event loop keeps the two in step (open on `Dispatch::opened`, close
//! when it reaps the connection, move when a reload renumbers the clients).
//!
//! This is the only code that moves an execution client's bytes, and it knows no connection
//! state: the event loop asks `upstream::Conn` what to write (`Conn::to_write`) and gives
//! this what it offers, then tells the connection what moved; it hands what this reads to
//! `Conn::on_bytes`. For an `https://` client the slot also holds the connection's TLS
//! session (`tls`), beside its socket: the handshake runs here (under the connection's connect
//! deadline, which the connection owns), reads come back decrypted into the caller's scratch
//! buffer, and writes are encrypted through the session's bounded buffer. On plain TCP the
//! request's head and its shared body go out in one vectored write, straight from the job:
//! the body is never copied per client.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::http;
use crate::tls::{self, Handshake};
use crate::upstream::MAX_CONNS;

/// Where a non-blocking connect stands after an edge.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    Connected,
    /// A spurious edge: still connecting.
    NotYet,
    Failed,
}

/// A non-blocking connect ends with WRITABLE; the error (if any) is in `SO_ERROR`, and a peer
/// address confirms the connection really is established (mio's `TcpStream::connect` docs).
pub fn connect_outcome(socket: &TcpStream) -> ConnectOutcome {
    match socket.take_error() {
        Ok(Some(_)) | Err(_) => ConnectOutcome::Failed,
        Ok(None) => match socket.peer_addr() {
            Ok(_) => ConnectOutcome::Connected,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectOutcome::NotYet,
            Err(_) => ConnectOutcome::Failed,
        },
    }
}

/// What one write step moved, for `Conn::wrote` and `Conn::transport_sent`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wrote {
    /// Bytes of the head and body given that were taken (into the socket, or the TLS session).
    pub taken: usize,
    /// Bytes of TLS records encrypted earlier that reached the socket now.
    pub sent: usize,
    /// Whether TLS records still wait for room in the socket.
    pub holds_more: bool,
}

/// One connection's socket and, for an `https://` client, its TLS session.
struct Socket {
    stream: TcpStream,
    tls: Option<tls::Session>,
}

#[derive(Default)]
pub struct ElSockets {
    by_el: Vec<Vec<Option<Socket>>>,
}

impl ElSockets {
    /// Room for `n` clients (more are added as they are named).
    pub fn with_clients(n: usize) -> ElSockets {
        let mut sockets = ElSockets::default();
        sockets.ensure(n);
        sockets
    }

    fn ensure(&mut self, n: usize) {
        while self.by_el.len() < n {
            self.by_el.push((0..MAX_CONNS).map(|_| None).collect());
        }
    }

    /// Starts a non-blocking connect to `addr` and registers it once, edge-triggered, for
    /// READABLE | WRITABLE (the connect ends with WRITABLE). With `tls` (the settings and the
    /// server's name), the connection gets a TLS session of its own. An error here is the
    /// connection's failure: the caller reports it as a failed connect.
    pub fn connect(
        &mut self,
        registry: &Registry,
        el: usize,
        slot: usize,
        addr: SocketAddr,
        token: Token,
        tls: Option<(&tls::Settings, &str)>,
    ) -> io::Result<()> {
        self.ensure(el + 1);
        let tls = match tls {
            Some((settings, name)) => Some(
                tls::Session::new(settings, name)
                    .map_err(|e| io::Error::other(format!("cannot start TLS: {e}")))?,
            ),
            None => None,
        };
        let mut stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        if let Some(mut old) = self.by_el[el][slot].replace(Socket { stream, tls }) {
            // A slot is reused only after its connection was reaped; a leftover is closed.
            let _ = registry.deregister(&mut old.stream);
        }
        Ok(())
    }

    fn socket(&mut self, el: usize, slot: usize) -> Option<&mut Socket> {
        self.by_el.get_mut(el)?.get_mut(slot)?.as_mut()
    }

    /// Whether connection `slot` of client `el` has a socket.
    #[cfg(test)]
    fn has_socket(&self, el: usize, slot: usize) -> bool {
        self.by_el.get(el).and_then(|s| s.get(slot)).is_some_and(Option::is_some)
    }

    /// Moves a connect on after an edge: the socket's connect, then (over TLS) the handshake.
    /// Until it is `Done`, the connection stays `Connecting`, under its connect deadline.
    pub fn finish_connect(&mut self, el: usize, slot: usize) -> Handshake {
        let Some(socket) = self.socket(el, slot) else {
            return Handshake::Failed("the connection has no socket".to_owned());
        };
        match connect_outcome(&socket.stream) {
            ConnectOutcome::Connected => match socket.tls.as_mut() {
                None => Handshake::Done,
                Some(session) => session.handshake(&mut socket.stream),
            },
            ConnectOutcome::NotYet => Handshake::Pending,
            ConnectOutcome::Failed => Handshake::Failed("cannot connect".to_owned()),
        }
    }

    /// Writes `head` then `body` (what the connection offers, `Conn::to_write`) on the socket
    /// of connection `slot` of client `el`, and says what moved. Plain: vectored writes
    /// straight from the caller's slices, so the shared body is never copied. Over TLS:
    /// records encrypted earlier go out first, then the bytes are fed to the session's bounded
    /// buffer. An error is the connection's (the caller fails it).
    pub fn write(&mut self, el: usize, slot: usize, head: &[u8], body: &[u8]) -> io::Result<Wrote> {
        let Some(socket) = self.socket(el, slot) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut wrote = Wrote::default();
        match socket.tls.as_mut() {
            None => {
                http::write_head_body(&mut socket.stream, head, body, &mut wrote.taken)?;
            }
            Some(session) => {
                wrote.sent = session.send(&mut socket.stream)?;
                if !head.is_empty() || !body.is_empty() {
                    let mut writer = session.writer(&mut socket.stream);
                    http::write_head_body(&mut writer, head, body, &mut wrote.taken)?;
                }
                wrote.holds_more = session.wants_write();
            }
        }
        Ok(wrote)
    }

    /// Reads what arrived on the socket of connection `slot` of client `el` into `scratch`,
    /// decrypted over TLS, like `Read::read` on a plain socket: `Ok(0)` is the end of the
    /// stream (or close_notify), `WouldBlock` means nothing more for now. A missing socket or
    /// a TLS error is an error (the connection is then reset).
    pub fn read(&mut self, el: usize, slot: usize, scratch: &mut [u8]) -> io::Result<usize> {
        match self.socket(el, slot) {
            Some(socket) => tls::read(socket.tls.as_mut(), &mut socket.stream, scratch),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The socket of connection `slot` of client `el` when it carries plain TCP (no TLS), for
    /// bytes moved on without being read into the proxy (`shell::pipe`).
    pub fn plain(&self, el: usize, slot: usize) -> Option<&TcpStream> {
        let socket = self.by_el.get(el).and_then(|s| s.get(slot)).and_then(Option::as_ref)?;
        socket.tls.is_none().then_some(&socket.stream)
    }

    /// Whether the TLS session of connection `slot` of client `el` still holds records that
    /// wait for room in the socket (reading may have sent some: a key update's answer, or the
    /// request's last records). Always false on plain TCP.
    pub fn holds_unsent(&self, el: usize, slot: usize) -> bool {
        let socket = self.by_el.get(el).and_then(|s| s.get(slot)).and_then(Option::as_ref);
        socket.and_then(|s| s.tls.as_ref()).is_some_and(tls::Session::wants_write)
    }

    /// Closes the socket of connection `slot` of client `el`. With `abort`, closing sends
    /// RST and the kernel discards what it has not delivered (`SO_LINGER` 0): a request
    /// abandoned there must never reach the client later, behind newer calls.
    pub fn close(&mut self, registry: &Registry, el: usize, slot: usize, abort: bool) {
        let Some(mut socket) = self.by_el.get_mut(el).and_then(|s| s.get_mut(slot)).and_then(Option::take)
        else {
            return;
        };
        if abort {
            if let Err(e) = socket2::SockRef::from(&socket.stream).set_linger(Some(Duration::ZERO)) {
                log::debug!("cannot set SO_LINGER 0 on an abandoned connection: {e}");
            }
        }
        // The TLS session goes with its socket (no close_notify: the connection is over).
        let _ = registry.deregister(&mut socket.stream);
    }

    /// Closes every socket of client `el` (it is being removed).
    pub fn close_all(&mut self, registry: &Registry, el: usize) {
        for slot in 0..MAX_CONNS {
            self.close(registry, el, slot, false);
        }
    }

    /// A reload renumbered the clients: `origins[i]` is where client `i` was before (None for
    /// one just added). Sockets follow their clients and are registered again under their new
    /// tokens (`token(i, slot)`); one that cannot be is returned, as `(i, slot)`, for the event
    /// loop to fail its connection. Sockets of clients no longer listed are closed.
    pub fn rearrange(
        &mut self,
        registry: &Registry,
        origins: &[Option<usize>],
        token: impl Fn(usize, usize) -> Token,
    ) -> Vec<(usize, usize)> {
        let mut old: Vec<Option<Vec<Option<Socket>>>> =
            std::mem::take(&mut self.by_el).into_iter().map(Some).collect();
        let mut failed = Vec::new();
        for (i, origin) in origins.iter().enumerate() {
            let slab = origin.and_then(|o| old.get_mut(o).and_then(Option::take));
            let mut slab = slab.unwrap_or_else(|| (0..MAX_CONNS).map(|_| None).collect());
            if *origin != Some(i) {
                for (slot, socket) in slab.iter_mut().enumerate() {
                    let Some(s) = socket.as_mut() else { continue };
                    if registry
                        .reregister(&mut s.stream, token(i, slot), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        failed.push((i, slot));
                    }
                }
            }
            self.by_el.push(slab);
        }
        for slab in old.into_iter().flatten() {
            for mut socket in slab.into_iter().flatten() {
                let _ = registry.deregister(&mut socket.stream);
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(el: usize, slot: usize) -> Token {
        Token(16 + el * MAX_CONNS + slot)
    }

    /// Polls (bounded) until the socket's connect is no longer pending.
    fn settle(poll: &mut mio::Poll, sockets: &mut ElSockets, el: usize, slot: usize) -> ConnectOutcome {
        let mut events = mio::Events::with_capacity(8);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let outcome = connect_outcome(&sockets.socket(el, slot).expect("socket").stream);
            if outcome != ConnectOutcome::NotYet || std::time::Instant::now() > deadline {
                return outcome;
            }
            poll.poll(&mut events, Some(Duration::from_millis(50))).expect("poll");
        }
    }

    #[test]
    fn a_connect_ends_connected_or_failed() {
        let mut poll = mio::Poll::new().expect("poll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let open = listener.local_addr().expect("address");
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
            gone.local_addr().expect("address")
        };
        let mut sockets = ElSockets::with_clients(1);
        sockets.connect(poll.registry(), 0, 0, open, token(0, 0), None).expect("connect");
        assert_eq!(settle(&mut poll, &mut sockets, 0, 0), ConnectOutcome::Connected);
        // A refused connect may fail at once or after an edge; both are the connection's failure.
        if sockets.connect(poll.registry(), 0, 1, closed, token(0, 1), None).is_ok() {
            assert_eq!(settle(&mut poll, &mut sockets, 0, 1), ConnectOutcome::Failed);
        }
    }

    #[test]
    fn bytes_cross_a_plain_socket_both_ways_and_a_missing_socket_is_an_error() {
        use std::io::{Read, Write};
        let mut poll = mio::Poll::new().expect("poll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let mut sockets = ElSockets::with_clients(1);
        sockets
            .connect(poll.registry(), 0, 0, listener.local_addr().expect("address"), token(0, 0), None)
            .expect("connect");
        assert_eq!(settle(&mut poll, &mut sockets, 0, 0), ConnectOutcome::Connected);
        assert_eq!(sockets.finish_connect(0, 0), Handshake::Done, "no TLS: connected is done");
        let (mut server, _) = listener.accept().expect("accept");
        server.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let wrote = sockets.write(0, 0, b"HEAD", b"body").expect("write");
        assert_eq!(wrote, Wrote { taken: 8, sent: 0, holds_more: false });
        let mut got = [0u8; 8];
        server.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"HEADbody");
        assert!(!sockets.holds_unsent(0, 0));
        server.write_all(b"answer").expect("write");
        drop(server);
        // Bounded poll for the bytes, then the end of the stream.
        let mut scratch = [0u8; 64];
        let mut read = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut events = mio::Events::with_capacity(8);
        loop {
            match sockets.read(0, 0, &mut scratch) {
                Ok(0) => break,
                Ok(n) => read.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no end of stream");
                    poll.poll(&mut events, Some(Duration::from_millis(50))).expect("poll");
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(read, b"answer");
        sockets.close(poll.registry(), 0, 0, false);
        assert_eq!(sockets.read(0, 0, &mut scratch).map_err(|e| e.kind()), Err(io::ErrorKind::NotConnected));
        assert_eq!(sockets.write(0, 0, b"x", b"").map_err(|e| e.kind()), Err(io::ErrorKind::NotConnected));
        assert!(matches!(sockets.finish_connect(0, 0), Handshake::Failed(_)));
    }

    #[test]
    fn sockets_follow_their_clients_on_a_reload() {
        let poll = mio::Poll::new().expect("poll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("address");
        let mut sockets = ElSockets::with_clients(3);
        for el in 0..3 {
            sockets.connect(poll.registry(), el, el, addr, token(el, el), None).expect("connect");
        }
        // Client 2 becomes 0, client 0 stays second, client 1 is removed, one is added.
        let failed = sockets.rearrange(poll.registry(), &[Some(2), Some(0), None], token);
        assert!(failed.is_empty());
        assert!(sockets.has_socket(0, 2) && !sockets.has_socket(0, 0));
        assert!(sockets.has_socket(1, 0));
        assert!((0..MAX_CONNS).all(|slot| !sockets.has_socket(2, slot)), "the added client has none");
    }
}
