//! The sockets of the execution clients' connections, one slab per client with a slot per
//! `upstream::Conn` (`MAX_CONNS` of them). Slot `s` of client `e` here is the socket of
//! `ups[e].conns[s]`; the event loop keeps the two in step (open on `Dispatch::opened`, close
//! when it reaps the connection, move when a reload renumbers the clients).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::upstream::MAX_CONNS;

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
        if let Some(old) = self.by_el[el][slot].replace(stream) {
            // A slot is reused only after its connection was reaped; a leftover is closed.
            let _ = registry.deregister(&mut { old });
        }
        Ok(())
    }

    /// The socket of connection `slot` of client `el`, lent for one I/O step.
    pub fn get_mut(&mut self, el: usize, slot: usize) -> Option<&mut TcpStream> {
        self.by_el.get_mut(el)?.get_mut(slot)?.as_mut()
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
