//! A kernel pipe that moves bytes from one socket to another without copying them through
//! the proxy (`splice(2)`). Linux only: elsewhere `Pipe::new` says `Unsupported` and callers
//! keep their copying path.
//!
//! It counts the bytes it holds, so a caller always knows how much is in flight between the
//! two sockets (a bound it can charge to its budget); `capacity` is the kernel's own bound.
//! Every call is non-blocking: filling a full pipe, or a socket with nothing to give or no
//! room, says `WouldBlock`; moving out of an empty pipe moves nothing (`Ok(0)`). It knows file descriptors, not connections, clocks or HTTP.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// A non-blocking pipe and the number of bytes it holds.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    capacity: usize,
}

impl Pipe {
    /// A pipe that holds up to `capacity` bytes if the kernel allows (`F_SETPIPE_SZ`, bounded
    /// by `/proc/sys/fs/pipe-max-size` for unprivileged processes); else its default (64 KiB).
    #[cfg(target_os = "linux")]
    pub fn new(capacity: usize) -> io::Result<Pipe> {
        use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).map_err(|e| {
            // A kernel without pipe2 has none of this: `Unsupported`, as elsewhere.
            if e == rustix::io::Errno::NOSYS {
                io::Error::from(io::ErrorKind::Unsupported)
            } else {
                io::Error::from(e)
            }
        })?;
        // A refusal (over pipe-max-size) leaves the default size, read back below.
        let _ = fcntl_setpipe_size(&write, capacity);
        let capacity = fcntl_getpipe_size(&write)?;
        Ok(Pipe { read, write, held: 0, capacity })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_capacity: usize) -> io::Result<Pipe> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Bytes in the pipe now (moved in and not yet moved out).
    pub fn held(&self) -> usize {
        self.held
    }

    /// The most the pipe holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves up to `max` bytes from `from` (a socket) into the pipe, no more than it has room
    /// for (`WouldBlock` when full). `Ok(0)` with `max > 0` is the end of `from`'s stream.
    pub fn fill_from(&mut self, from: &impl AsFd, max: usize) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let room = self.capacity.saturating_sub(self.held).min(max);
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = splice(from.as_fd(), self.write.as_fd(), room)?;
        self.held += n;
        Ok(n)
    }

    /// Moves up to `max` of the held bytes, oldest first, to `to` (a socket).
    pub fn drain_to(&mut self, to: &impl AsFd, max: usize) -> io::Result<usize> {
        let want = self.held.min(max);
        if want == 0 {
            return Ok(0);
        }
        let n = splice(self.read.as_fd(), to.as_fd(), want)?;
        self.held = self.held.saturating_sub(n);
        Ok(n)
    }
}

#[cfg(target_os = "linux")]
fn splice(from: std::os::fd::BorrowedFd, to: std::os::fd::BorrowedFd, len: usize) -> io::Result<usize> {
    use rustix::pipe::SpliceFlags;
    // Both ends are streams: no offsets.
    Ok(rustix::pipe::splice(from, None, to, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
}

#[cfg(not(target_os = "linux"))]
fn splice(_: std::os::fd::BorrowedFd, _: std::os::fd::BorrowedFd, _: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Two connected loopback sockets: (the one the test writes, the one the pipe reads).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Fills `pipe` from `from` until `want` bytes are held (bytes written on loopback may
    /// arrive in pieces; each try is bounded).
    fn fill(pipe: &mut Pipe, from: &TcpStream, want: usize) {
        for _ in 0..10_000 {
            match pipe.fill_from(from, want - pipe.held()) {
                Ok(_) if pipe.held() == want => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("fill: {e}"),
            }
        }
        panic!("only {} of {want} bytes arrived", pipe.held());
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn read_all(reader: &mut TcpStream, len: usize) -> Vec<u8> {
        reader.set_nonblocking(false).unwrap();
        let mut got = vec![0; len];
        reader.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn bytes_go_from_one_socket_to_another_in_order_and_are_counted() {
        let (mut el, from) = pair();
        let (to, mut bn) = pair();
        let mut pipe = Pipe::new(1 << 20).unwrap();
        assert!(pipe.capacity() >= 64 * 1024);
        let sent = data(50_000);
        el.write_all(&sent).unwrap();
        fill(&mut pipe, &from, sent.len());
        assert_eq!(pipe.drain_to(&to, 10).unwrap(), 10);
        assert_eq!(pipe.held(), sent.len() - 10);
        while pipe.held() > 0 {
            pipe.drain_to(&to, usize::MAX).unwrap();
        }
        assert_eq!(pipe.drain_to(&to, usize::MAX).unwrap(), 0, "an empty pipe moves nothing");
        assert_eq!(read_all(&mut bn, sent.len()), sent);
    }

    #[test]
    fn a_full_pipe_takes_no_more_and_says_would_block() {
        let (mut el, from) = pair();
        let mut pipe = Pipe::new(64 * 1024).unwrap();
        let cap = pipe.capacity();
        el.write_all(&data(cap + 1000)).unwrap();
        fill(&mut pipe, &from, cap);
        let full = pipe.fill_from(&from, usize::MAX).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(pipe.held(), cap);
    }

    #[test]
    fn the_end_of_the_stream_is_a_zero_fill() {
        let (el, from) = pair();
        drop(el);
        let mut pipe = Pipe::new(64 * 1024).unwrap();
        let mut end = None;
        for _ in 0..10_000 {
            match pipe.fill_from(&from, 1024) {
                Ok(n) => {
                    end = Some(n);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("fill: {e}"),
            }
        }
        assert_eq!(end, Some(0));
    }
}
