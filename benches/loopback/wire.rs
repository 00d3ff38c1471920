//! Just enough HTTP/1.1 for the benchmark's own clients and servers: messages framed by
//! Content-Length on blocking sockets.

use std::io::{self, Read};
use std::net::TcpStream;

#[derive(Clone, Copy)]
pub enum MessageKind {
    Request,
    Response,
}

/// Reads HTTP/1.1 messages framed by Content-Length from one connection, keeping bytes that
/// belong to the next message. Bodies are read and dropped: only their length matters here.
pub struct Framer {
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl Framer {
    pub fn new() -> Self {
        Framer { buf: vec![0; 256 * 1024], start: 0, end: 0 }
    }

    /// Reads one whole message; false when the peer closed before a new one began.
    pub fn read_message(&mut self, stream: &mut TcpStream, kind: MessageKind) -> io::Result<bool> {
        self.read_message_status(stream, kind, None).map(|s| s.is_some())
    }

    /// Reads one whole message and returns the status code of an answer (0 for a request), or
    /// None when the peer closed before a new message began. With `keep`, the message's bytes
    /// are appended to it.
    pub fn read_message_status(
        &mut self,
        stream: &mut TcpStream,
        kind: MessageKind,
        mut keep: Option<&mut Vec<u8>>,
    ) -> io::Result<Option<u16>> {
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                break self.start + i + 4;
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            let n = stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return if self.end == 0 { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
            }
            self.end += n;
        };
        let head = &self.buf[self.start..head_end];
        let status = match kind {
            MessageKind::Request => 0,
            MessageKind::Response => status_code(head).unwrap_or(0),
        };
        let mut remaining = content_length(head).unwrap_or(0);
        let buffered = (self.end - head_end).min(remaining);
        if let Some(keep) = keep.as_mut() {
            keep.extend_from_slice(&self.buf[self.start..head_end + buffered]);
        }
        self.start = head_end + buffered;
        remaining -= buffered;
        while remaining > 0 {
            let n = stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = n.min(remaining);
            if let Some(keep) = keep.as_mut() {
                keep.extend_from_slice(&self.buf[..take]);
            }
            remaining -= take;
            self.start = take;
            self.end = n;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(status))
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

pub fn status_code(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// A POST of `body` as a beacon node sends it.
pub fn request_wire(body: &[u8]) -> Vec<u8> {
    let mut wire = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: */*\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(body);
    wire
}
