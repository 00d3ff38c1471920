//! The sockets of the execution clients' connections, one slab per client with a slot per
//! `upstream::Conn` (`MAX_CONNS` of them). Slot `s` of client `e` here is the socket of
//! `ups[e].conns[s]`; the event loop keeps the two in step (open on `Dispatch::opened`, close
//! when it reaps the connection, move when a reload renumbers the clients).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::tls::Handshake;
use crate::upstream::{Conn, Failure, Outcome, MAX_CONNS};

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

#[derive(Default)]
pub struct ElSockets {
    by_el: Vec<Vec<Option<TcpStream>>>,
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
    /// READABLE | WRITABLE (the connect ends with WRITABLE). An error here is the
    /// connection's failure: the caller reports it as a failed connect.
    pub fn connect(
        &mut self,
        registry: &Registry,
        el: usize,
        slot: usize,
        addr: SocketAddr,
        token: Token,
    ) -> io::Result<()> {
        self.ensure(el + 1);
        let mut stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        if let Some(mut old) = self.by_el[el][slot].replace(stream) {
            // A slot is reused only after its connection was reaped; a leftover is closed.
            let _ = registry.deregister(&mut old);
        }
        Ok(())
    }

    /// The socket of connection `slot` of client `el`, lent for one I/O step.
    pub fn get_mut(&mut self, el: usize, slot: usize) -> Option<&mut TcpStream> {
        self.by_el.get_mut(el)?.get_mut(slot)?.as_mut()
    }

    /// Moves a connect on after an edge: the socket's connect, then (over TLS) the
    /// connection's handshake, which its state machine steps on the lent socket.
    pub fn finish_connect(&mut self, el: usize, slot: usize, conn: &mut Conn) -> Handshake {
        let Some(socket) = self.get_mut(el, slot) else {
            return Handshake::Failed("the connection has no socket".to_owned());
        };
        match connect_outcome(socket) {
            ConnectOutcome::Connected => conn.handshake(socket),
            ConnectOutcome::NotYet => Handshake::Pending,
            ConnectOutcome::Failed => Handshake::Failed("cannot connect".to_owned()),
        }
    }

    /// Writes what connection `slot` of client `el` has to send on its socket.
    pub fn write(
        &mut self,
        el: usize,
        slot: usize,
        conn: &mut Conn,
        now: std::time::Instant,
    ) -> io::Result<()> {
        match self.get_mut(el, slot) {
            Some(socket) => conn.write(socket, now),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Reads what arrived for connection `slot` of client `el` (a missing socket is a reset).
    pub fn read(
        &mut self,
        el: usize,
        slot: usize,
        conn: &mut Conn,
        scratch: &mut [u8],
        now: std::time::Instant,
    ) -> Outcome {
        match self.get_mut(el, slot) {
            Some(socket) => conn.read(socket, scratch, now),
            None => conn.fail(Failure::Reset),
        }
    }

    /// Closes the socket of connection `slot` of client `el`. With `abort`, closing sends
    /// RST and the kernel discards what it has not delivered (`SO_LINGER` 0): a request
    /// abandoned there must never reach the client later, behind newer calls.
    pub fn close(&mut self, registry: &Registry, el: usize, slot: usize, abort: bool) {
        let Some(mut stream) = self.by_el.get_mut(el).and_then(|s| s.get_mut(slot)).and_then(Option::take)
        else {
            return;
        };
        if abort {
            if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
                log::debug!("cannot set SO_LINGER 0 on an abandoned connection: {e}");
            }
        }
        let _ = registry.deregister(&mut stream);
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
        let mut old: Vec<Option<Vec<Option<TcpStream>>>> =
            std::mem::take(&mut self.by_el).into_iter().map(Some).collect();
        let mut failed = Vec::new();
        for (i, origin) in origins.iter().enumerate() {
            let slab = origin.and_then(|o| old.get_mut(o).and_then(Option::take));
            let mut slab = slab.unwrap_or_else(|| (0..MAX_CONNS).map(|_| None).collect());
            if *origin != Some(i) {
                for (slot, stream) in slab.iter_mut().enumerate() {
                    let Some(s) = stream.as_mut() else { continue };
                    if registry
                        .reregister(s, token(i, slot), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        failed.push((i, slot));
                    }
                }
            }
            self.by_el.push(slab);
        }
        for slab in old.into_iter().flatten() {
            for mut stream in slab.into_iter().flatten() {
                let _ = registry.deregister(&mut stream);
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
            let outcome = connect_outcome(sockets.get_mut(el, slot).expect("socket"));
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
        sockets.connect(poll.registry(), 0, 0, open, token(0, 0)).expect("connect");
        assert_eq!(settle(&mut poll, &mut sockets, 0, 0), ConnectOutcome::Connected);
        // A refused connect may fail at once or after an edge; both are the connection's failure.
        if sockets.connect(poll.registry(), 0, 1, closed, token(0, 1)).is_ok() {
            assert_eq!(settle(&mut poll, &mut sockets, 0, 1), ConnectOutcome::Failed);
        }
    }

    #[test]
    fn sockets_follow_their_clients_on_a_reload() {
        let poll = mio::Poll::new().expect("poll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("address");
        let mut sockets = ElSockets::with_clients(3);
        for el in 0..3 {
            sockets.connect(poll.registry(), el, el, addr, token(el, el)).expect("connect");
        }
        // Client 2 becomes 0, client 0 stays second, client 1 is removed, one is added.
        let failed = sockets.rearrange(poll.registry(), &[Some(2), Some(0), None], token);
        assert!(failed.is_empty());
        assert!(sockets.get_mut(0, 2).is_some() && sockets.get_mut(0, 0).is_none());
        assert!(sockets.get_mut(1, 0).is_some());
        assert!((0..MAX_CONNS).all(|slot| sockets.get_mut(2, slot).is_none()), "the added client has none");
    }
}
