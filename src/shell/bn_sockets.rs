//! The sockets of the beacon node connections (and of `--metrics-addr`'s), by slot, and the
//! only reads and writes on them: a read into the caller's buffer, and a flush that writes
//! what the connection says is ready (`Downstream::to_write`) in vectored writes and tells it
//! what moved (`Downstream::wrote`). Slot `s` here is the socket of `poll_loop::BnSide`'s
//! connection `s`; each carries its connection's serial,
//! which is part of its token, so an event meant for a closed connection is told apart from
//! one for the connection that reused its slot (mio may report an event for a socket after it
//! was deregistered), not only by reaping after the event batch.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::downstream::{Downstream, Flushed, WRITE_SLICES};

/// Beacon node connection tokens: `BASE | slot`, with the connection's serial number in the
/// bits above (`token`). Every token below `BASE` is free for listeners and execution clients.
pub const BASE: usize = 1 << 24;

/// The token of the connection in `slot` with serial number `serial`.
pub fn token(slot: usize, serial: u64) -> Token {
    let generation = (serial as usize) << (BASE.trailing_zeros() + 1);
    Token(generation | BASE | slot)
}

/// The slot a connection's token names (its serial is checked by `BnSockets::slot_of`).
fn slot(token: usize) -> usize {
    token & (BASE - 1)
}

/// What one read from a connection's socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStep {
    /// This many bytes are at the start of the buffer.
    Bytes(usize),
    /// The client closed its side.
    End,
    /// Nothing more now (`WouldBlock`): the next edge says when.
    Blocked,
    /// The socket failed (or is gone): the connection is over.
    Failed,
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct FlushStep {
    /// Bytes written.
    pub moved: u64,
    /// The connection may have bytes to read that no new edge will announce (reading was
    /// paused by backpressure, or a lingering close began): revisit it before the next poll.
    pub revisit: bool,
}

#[derive(Default)]
pub struct BnSockets {
    slots: Vec<Option<(Token, TcpStream)>>,
}

impl BnSockets {
    /// Registers an accepted connection's socket once, edge-triggered, for READABLE |
    /// WRITABLE, under the token of (`slot`, `serial`). On error the socket is closed and the
    /// slot stays free.
    pub fn adopt(
        &mut self,
        registry: &Registry,
        slot: usize,
        serial: u64,
        mut stream: TcpStream,
    ) -> io::Result<()> {
        if slot >= BASE {
            // More slots than a token can name (16 M connections): refused, as at the cap.
            return Err(io::Error::other("no token left for another connection"));
        }
        let _ = stream.set_nodelay(true);
        let token = token(slot, serial);
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        if let Some((_, mut old)) = self.slots[slot].replace((token, stream)) {
            let _ = registry.deregister(&mut old);
        }
        Ok(())
    }

    /// The slot an event's token names, if that connection is still the one there.
    pub fn slot_of(&self, token: Token) -> Option<usize> {
        let s = slot(token.0);
        match self.slots.get(s) {
            Some(Some((current, _))) if *current == token => Some(s),
            // A stale event: the connection it was for is gone.
            _ => None,
        }
    }

    /// The socket in `slot`, to look at.
    pub fn get(&self, slot: usize) -> Option<&TcpStream> {
        self.slots.get(slot)?.as_ref().map(|(_, s)| s)
    }

    /// The socket in `slot`, lent for one read or write.
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut TcpStream> {
        self.slots.get_mut(slot)?.as_mut().map(|(_, s)| s)
    }

    /// One read into `buf`, retried when interrupted.
    pub fn read(&mut self, slot: usize, buf: &mut [u8]) -> ReadStep {
        let Some(socket) = self.get_mut(slot) else { return ReadStep::Failed };
        loop {
            return match socket.read(buf) {
                Ok(0) => ReadStep::End,
                Ok(n) => ReadStep::Bytes(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadStep::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => ReadStep::Failed,
            };
        }
    }

    /// Writes what connection `slot` has ready (`Downstream::to_write`, at most
    /// `WRITE_SLICES` slices per vectored write) until the socket takes no more or nothing is
    /// left, tells the connection what each write moved, and does what it asks after: shut
    /// the write side down for a lingering close. A write error ends the connection.
    pub fn flush(&mut self, slot: usize, down: &mut Downstream, now: Instant) -> FlushStep {
        let Some(socket) = self.get_mut(slot) else {
            down.write_failed();
            return FlushStep::default();
        };
        let was_backpressured = down.backpressured();
        let mut step = FlushStep::default();
        let flushed = loop {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slice, part) in slices.iter_mut().zip(down.to_write()) {
                *slice = IoSlice::new(part);
                count += 1;
            }
            // Nothing ready still tells the connection (a last answer may have ended it).
            let n = if count == 0 {
                0
            } else {
                match socket.write_vectored(&slices[..count]) {
                    Ok(0) => {
                        down.write_failed();
                        return step;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        down.write_failed();
                        return step;
                    }
                }
            };
            step.moved += n as u64;
            match down.wrote(n, now) {
                // Drain to WouldBlock: an edge-triggered poll says WRITABLE again only after
                // the socket was full.
                Flushed::Blocked if n > 0 => continue,
                flushed => break flushed,
            }
        };
        match flushed {
            // Reading stopped at the pipeline limit; bytes may be waiting already, and an
            // edge-triggered poll will not say so again.
            Flushed::Drained => step.revisit = was_backpressured && !down.backpressured(),
            Flushed::Blocked => {}
            Flushed::Linger => {
                // The client reads the answer and then the end of the stream; what it still
                // sends is read (now: it may be waiting already, and no new edge would say so)
                // and dropped.
                if self.shutdown_write(slot).is_err() {
                    down.write_failed();
                } else {
                    step.revisit = true;
                }
            }
        }
        step
    }

    /// Shuts down the write side (a lingering close: the client reads the answer, then the end).
    pub fn shutdown_write(&mut self, slot: usize) -> io::Result<()> {
        match self.get_mut(slot) {
            Some(stream) => stream.shutdown(Shutdown::Write),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Closes the socket in `slot`.
    pub fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some((_, mut stream)) = self.slots.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_gets_a_token_of_its_own() {
        for s in [0, 1, 4095, BASE - 1] {
            let old = token(s, 7);
            let new = token(s, 8);
            assert_ne!(old, new, "slot {s}");
            assert_eq!(slot(old.0), s);
            assert_eq!(slot(new.0), s);
            assert!(old.0 >= BASE && new.0 >= BASE, "never taken for an EL token");
        }
    }

    #[test]
    fn an_event_for_a_closed_connection_names_no_slot() {
        let poll = mio::Poll::new().expect("poll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("address");
        let mut sockets = BnSockets::default();
        let first = TcpStream::connect(addr).expect("connect");
        sockets.adopt(poll.registry(), 3, 1, first).expect("adopt");
        assert_eq!(sockets.slot_of(token(3, 1)), Some(3));
        sockets.close(poll.registry(), 3);
        assert_eq!(sockets.slot_of(token(3, 1)), None);
        let second = TcpStream::connect(addr).expect("connect");
        sockets.adopt(poll.registry(), 3, 2, second).expect("adopt");
        assert_eq!(sockets.slot_of(token(3, 1)), None, "the old token is stale");
        assert_eq!(sockets.slot_of(token(3, 2)), Some(3));
    }
}
