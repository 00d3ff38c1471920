//! Sans-IO HTTP/1.1: an incremental request reader (beacon node → proxy), an incremental
//! response reader (execution client → proxy) and the head writers for both directions.
//!
//! Heads are parsed with `httparse` once the blank line that ends them has arrived, so a
//! trickled head is searched incrementally and never re-parsed from the start. Bodies are
//! framed by `Content-Length`, `chunked` or (answers only) the end of the connection. Every
//! buffer has a cap and every cap has an answer (431, 413, 400).
//!
//! A request reader can hold each head (`hold_heads`) until its caller decides whether the body
//! is wanted: a refused body is never buffered (a short one is dropped as it arrives, anything
//! else ends the connection), which is how a request without a valid token is answered at its
//! head.
//!
//! A request body framed by `Content-Length` that the pool's spare buffer holds is read in
//! place: the caller reads the socket straight into the room the reader lends (`room`) and says
//! how much it read (`filled`), so the body is not copied from a read buffer.
//!
//! This module knows no sockets, no JSON and no JWT: it turns bytes into heads and bodies and
//! heads back into bytes.

use std::fmt;

use crate::pool::SharedPool;

/// How many header lines a head may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (size, extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Most bytes of trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 8 * 1024;
/// Most room reserved for a body before its bytes arrive, unless its reader is told it may
/// reserve more (`RequestReader::accept_body`): a declared `Content-Length` is a claim, not
/// bytes, so a larger body grows (by doubling, never past its declared length) as its bytes
/// come in. Sixteen clients announcing 16 MiB and sending 1 KiB hold 16 MiB, not 256 MiB.
pub const BODY_RESERVE: usize = 1 << 20;
/// Most room reserved ahead of the bytes that fill it: process-wide for request bodies (the
/// event loop passes what is left of it to `accept_body`), per answer for an execution
/// client's. A body declared within it is reserved whole once, so it is never copied to grow
/// and leaves no outgrown buffers behind (growing a 13 MB answer by doubling peaked at twice
/// its size); one declared larger grows from `BODY_RESERVE`. Two 16 MiB bodies fit.
pub const RESERVE_AHEAD: usize = 32 << 20;
/// A refused body (see `RequestReader::refuse_body`) at most this long is read and dropped so
/// the connection can carry the next request; a longer one ends the connection.
pub const MAX_DISCARD: u64 = 64 * 1024;

/// The caps that bound one message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 64 * 1024, max_body: 128 << 20 }
    }
}

/// Why a message could not be read; each maps to the status code the peer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is longer than `max_head` or has more than `MAX_HEADERS` fields.
    HeadTooLarge,
    /// The body is longer than `max_body`.
    BodyTooLarge,
    /// A transfer coding other than `chunked`.
    UnsupportedEncoding,
    /// Anything else that is not HTTP/1.x: the text says what.
    Malformed(&'static str),
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedEncoding => 501,
            HttpError::Malformed(_) => 400,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge => f.write_str("request head too large"),
            HttpError::BodyTooLarge => f.write_str("body too large"),
            HttpError::UnsupportedEncoding => f.write_str("unsupported transfer encoding"),
            HttpError::Malformed(what) => write!(f, "malformed HTTP: {what}"),
        }
    }
}

/// One header field as it arrived; the value is kept as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// The parsed head of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<Header>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// A request read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// What the request reader has to say after a call to `advance`.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestEvent {
    /// With `hold_heads`: a head whose body has not been read yet. It is in `held_head()`, and
    /// the reader reads nothing more until it is told `accept_body` or `refuse_body`.
    Head,
    /// The head asked for `100 Continue` and its body is within limits.
    Continue,
    /// A whole request.
    Request(Request),
}

/// The outcome of feeding bytes to a reader: how many were used, and what happened.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<E> {
    pub consumed: usize,
    pub event: Option<Result<E, HttpError>>,
}

impl<E> Step<E> {
    fn more(consumed: usize) -> Self {
        Step { consumed, event: None }
    }
    fn done(consumed: usize, event: E) -> Self {
        Step { consumed, event: Some(Ok(event)) }
    }
    fn fail(consumed: usize, error: HttpError) -> Self {
        Step { consumed, event: Some(Err(error)) }
    }
}

/// What becomes of the connection once a held head's body is refused (`refuse_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The body (at most `MAX_DISCARD` bytes) will be read and dropped; the next request on the
    /// connection is read as usual.
    Discard,
    /// The body is too long to read for nothing, its length is unknown (chunked), or the client
    /// asked `Expect: 100-continue` and may never send it: answer and close the connection.
    Close,
}

/// Incremental reader of pipelined requests from one connection.
///
/// Feed it the bytes read from the socket with `advance`; it consumes what belongs to the
/// current request and reports each request once it is whole. After an error the connection
/// must be answered and closed: the reader's state is no longer meaningful.
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    head: HeadBuffer,
    body: Option<(RequestHead, BodyReader)>,
    /// See `answer_get_at_head`.
    early_get: bool,
    /// A GET was reported before its body, or a body was refused with `Refusal::Close`: what
    /// follows on the connection is ignored.
    spent: bool,
    /// See `hold_heads`.
    hold: bool,
    /// A head held for the caller's decision, with its body's framing.
    held: Option<(RequestHead, Framing)>,
    /// Bytes of a refused body still to be dropped.
    discard: u64,
    /// Where a large body's buffer comes from, when a spare one is kept (see `pool`).
    pool: Option<SharedPool>,
}

impl RequestReader {
    pub fn new(limits: Limits) -> Self {
        RequestReader {
            limits,
            head: HeadBuffer::default(),
            body: None,
            early_get: false,
            spent: false,
            hold: false,
            held: None,
            discard: 0,
            pool: None,
        }
    }

    /// Takes large bodies' buffers from `pool` when it has one that fits.
    pub fn use_pool(&mut self, pool: SharedPool) {
        self.pool = Some(pool);
    }

    /// A body framed by `Content-Length` that the pool's spare can hold is read in place
    /// (`room`, `filled`); any other body as an answer's is.
    fn body_reader(&self, framing: Framing, reserve: usize) -> BodyReader {
        if let (Framing::Length(n), Some(pool)) = (framing, self.pool.as_ref()) {
            let spare = usize::try_from(n)
                .ok()
                .and_then(|len| pool.try_borrow_mut().ok().and_then(|mut pool| pool.take_filled(len)));
            if let Some(body) = spare {
                return BodyReader::InPlace { filled: 0, body };
            }
        }
        body_reader(self.pool.as_ref(), framing, self.limits.max_body, reserve)
    }

    /// Reports a GET or HEAD as soon as its head is read, ignoring any body it announces, and
    /// marks it as the connection's last request. nginx's `auth_request` subrequest carries the
    /// original request's `Content-Length` but no body, and a tokens service must answer it.
    pub fn answer_get_at_head(&mut self) {
        self.early_get = true;
    }

    /// Reports each request that has a body as `RequestEvent::Head` once its head is read, and
    /// waits for `accept_body` or `refuse_body` before reading (or reserving room for) the body.
    /// This is how a request without a valid token is answered before its body is buffered.
    pub fn hold_heads(&mut self) {
        self.hold = true;
    }

    /// The head reported by the last `RequestEvent::Head`, while it waits for a decision.
    pub fn held_head(&self) -> Option<&RequestHead> {
        self.held.as_ref().map(|(head, _)| head)
    }

    /// Reads the held head's body after all, its declared length reserved whole when it is
    /// at most `reserve` bytes (what the caller's share of `RESERVE_AHEAD` has left), else
    /// grown as it arrives. True when the client asked for `100 Continue` (held heads do not
    /// report `RequestEvent::Continue`: the caller owes the 100 now).
    pub fn accept_body(&mut self, reserve: usize) -> bool {
        let Some((head, framing)) = self.held.take() else { return false };
        let expect = head.expect_continue;
        self.body = Some((head, self.body_reader(framing, reserve)));
        expect
    }

    /// Room reserved for the body being read and not filled yet (counted against
    /// `RESERVE_AHEAD` by the caller).
    pub fn reserved_ahead(&self) -> usize {
        self.body.as_ref().map_or(0, |(_, body)| body.reserved_ahead())
    }

    /// Refuses the held head's body: no `100 Continue` is owed, and nothing of it is kept. A
    /// short body announced by `Content-Length` and already on its way is dropped as it arrives;
    /// anything else ends the connection (the caller answers and closes).
    pub fn refuse_body(&mut self) -> Refusal {
        let Some((head, framing)) = self.held.take() else { return Refusal::Close };
        match framing {
            Framing::Length(n) if n <= MAX_DISCARD && !head.expect_continue && head.keep_alive => {
                self.discard = n;
                Refusal::Discard
            }
            _ => {
                self.spent = true;
                Refusal::Close
            }
        }
    }

    /// Bytes held for the request being read (its head so far, its body: see `BodyReader::held`),
    /// for the process-wide memory budget.
    pub fn held_bytes(&self) -> usize {
        self.head.buf.capacity() + self.body.as_ref().map_or(0, |(_, body)| body.held())
    }

    /// The request whose body framed by `Content-Length` is being read: its head, the body's
    /// bytes so far (a prefix of the body `RequestEvent::Request` will carry) and its declared
    /// length. None for other framings and between requests. This is what lets a body be
    /// forwarded as it arrives (`core::cut`).
    pub fn body_in_progress(&self) -> Option<(&RequestHead, &[u8], u64)> {
        match self.body.as_ref()? {
            (head, BodyReader::Length { remaining, body }) => {
                Some((head, body.as_slice(), (body.len() as u64).saturating_add(*remaining)))
            }
            (head, BodyReader::InPlace { filled, body }) => {
                Some((head, body.get(..*filled).unwrap_or_default(), body.len() as u64))
            }
            _ => None,
        }
    }

    /// Whether the body being read is read in place (`room`).
    pub fn reads_in_place(&self) -> bool {
        matches!(self.body.as_ref(), Some((_, BodyReader::InPlace { .. })))
    }

    /// The room left in a body being read in place, at most `max` bytes of it, for the next
    /// read from the socket to land in (then `filled`): None when no such body is being read,
    /// and the bytes go through `advance` as usual.
    pub fn room(&mut self, max: usize) -> Option<&mut [u8]> {
        if self.spent || self.held.is_some() || self.discard > 0 {
            return None;
        }
        match self.body.as_mut()? {
            (_, BodyReader::InPlace { filled, body }) if *filled < body.len() => {
                let end = body.len().min(filled.saturating_add(max));
                body.get_mut(*filled..end)
            }
            _ => None,
        }
    }

    /// `n` bytes were read into `room`: the body grew by them, as `advance` would have had it
    /// with those bytes (the request is reported once its body is whole).
    pub fn filled(&mut self, n: usize) -> Step<RequestEvent> {
        let progress = match self.body.as_mut() {
            Some((_, BodyReader::InPlace { filled, body })) => {
                *filled = body.len().min(filled.saturating_add(n));
                let done = if *filled == body.len() { BodyProgress::Done } else { BodyProgress::More };
                (n, done)
            }
            _ => return Step::more(0),
        };
        self.body_step(progress)
    }

    /// What the body's progress means for the request.
    fn body_step(&mut self, progress: (usize, BodyProgress)) -> Step<RequestEvent> {
        match progress {
            (n, BodyProgress::More) => Step::more(n),
            (n, BodyProgress::Done) => match self.body.take() {
                Some((head, body)) => {
                    Step::done(n, RequestEvent::Request(Request { head, body: body.into_body() }))
                }
                None => Step::more(n),
            },
            (n, BodyProgress::Error(e)) => Step::fail(n, e),
        }
    }

    /// Whether some bytes of a request have arrived but not the whole request.
    pub fn in_progress(&self) -> bool {
        self.body.is_some() || !self.head.buf.is_empty() || self.held.is_some() || self.discard > 0
    }

    /// Consumes bytes from `input`; call again with the rest while `consumed > 0` and no event.
    pub fn advance(&mut self, input: &[u8]) -> Step<RequestEvent> {
        if self.spent {
            return Step::more(input.len());
        }
        if self.held.is_some() {
            // Nothing is read until the caller has decided about the held head.
            return Step::more(0);
        }
        if self.discard > 0 {
            let take = input.len().min(usize::try_from(self.discard).unwrap_or(usize::MAX));
            self.discard -= take as u64;
            return Step::more(take);
        }
        if let Some((_, body)) = self.body.as_mut() {
            let progress = body.advance(input);
            return self.body_step(progress);
        }
        let (consumed, head_bytes) = match self.head.complete(input, self.limits.max_head) {
            Ok((consumed, Some(head_bytes))) => (consumed, head_bytes),
            Ok((consumed, None)) => return Step::more(consumed),
            Err(e) => return Step::fail(input.len(), e),
        };
        match parse_request_head(&head_bytes, &self.limits) {
            Err(e) => Step::fail(consumed, e),
            Ok((mut head, framing)) => {
                if framing == Framing::Length(0) {
                    return Step::done(consumed, RequestEvent::Request(Request { head, body: Vec::new() }));
                }
                if self.early_get && matches!(head.method.as_str(), "GET" | "HEAD") {
                    self.spent = true;
                    head.keep_alive = false;
                    return Step::done(consumed, RequestEvent::Request(Request { head, body: Vec::new() }));
                }
                if self.hold {
                    // No room is reserved for the body until the caller wants it.
                    self.held = Some((head, framing));
                    return Step::done(consumed, RequestEvent::Head);
                }
                let body = self.body_reader(framing, BODY_RESERVE);
                let expect = head.expect_continue;
                self.body = Some((head, body));
                if expect {
                    Step::done(consumed, RequestEvent::Continue)
                } else {
                    Step::more(consumed)
                }
            }
        }
    }
}

/// The parsed head of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor: u8,
    pub headers: Vec<Header>,
    pub keep_alive: bool,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// An answer read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

/// Incremental reader of one answer from an execution client. Interim (1xx) answers are
/// skipped. A close-delimited body is finished by `finish`, called when the peer closes.
#[derive(Debug)]
pub struct ResponseReader {
    limits: Limits,
    head: HeadBuffer,
    body: Option<(ResponseHead, BodyReader)>,
    /// Whether any byte of an answer has arrived (a retry is only safe when none has).
    started: bool,
    /// Where a large answer's buffer comes from, when a spare one is kept (see `pool`).
    pool: Option<SharedPool>,
}

impl ResponseReader {
    pub fn new(limits: Limits) -> Self {
        ResponseReader { limits, head: HeadBuffer::default(), body: None, started: false, pool: None }
    }

    /// Takes large answers' buffers from `pool` when it has one that fits.
    pub fn use_pool(&mut self, pool: SharedPool) {
        self.pool = Some(pool);
    }

    /// A reader for the connection's next answer: the same caps and pool.
    pub fn next(&self) -> Self {
        ResponseReader { pool: self.pool.clone(), ..ResponseReader::new(self.limits) }
    }

    /// Bytes held for the answer being read, for the process-wide memory budget.
    pub fn held_bytes(&self) -> usize {
        self.head.buf.capacity() + self.body.as_ref().map_or(0, |(_, body)| body.held())
    }

    /// The caps this reader was made with (a connection's next answer is read with the same).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Consumes bytes from `input`; call again with the rest while `consumed > 0` and no event.
    pub fn advance(&mut self, input: &[u8]) -> Step<Response> {
        if !input.is_empty() {
            self.started = true;
        }
        if let Some((_, body)) = self.body.as_mut() {
            return match body.advance(input) {
                (n, BodyProgress::More) => Step::more(n),
                (n, BodyProgress::Done) => self.complete(n),
                (n, BodyProgress::Error(e)) => Step::fail(n, e),
            };
        }
        let (consumed, head_bytes) = match self.head.complete(input, self.limits.max_head) {
            Ok((consumed, Some(head_bytes))) => (consumed, head_bytes),
            Ok((consumed, None)) => return Step::more(consumed),
            Err(e) => return Step::fail(input.len(), e),
        };
        match parse_response_head(&head_bytes, &self.limits) {
            Err(e) => Step::fail(consumed, e),
            // An interim answer (100 Continue) is followed by the real one.
            Ok((head, _)) if (100..200).contains(&head.status) => Step::more(consumed),
            Ok((head, framing)) => {
                // An execution client is a configured peer and its answer is charged at its
                // declared length (see `core::budget`): reserved whole, within RESERVE_AHEAD.
                let body = body_reader(self.pool.as_ref(), framing, self.limits.max_body, RESERVE_AHEAD);
                self.body = Some((head, body));
                if self.body.as_ref().is_some_and(|(_, b)| b.is_done()) {
                    self.complete(consumed)
                } else {
                    Step::more(consumed)
                }
            }
        }
    }

    /// The head of the answer being read while none of its body has arrived yet, with the
    /// body's length when `Content-Length` frames it (None when chunked or close-delimited).
    pub fn head_before_body(&self) -> Option<(&ResponseHead, Option<u64>)> {
        match self.body.as_ref()? {
            (head, BodyReader::Length { remaining, body }) => {
                body.is_empty().then_some((head, Some(*remaining)))
            }
            (head, BodyReader::Chunked { body, .. } | BodyReader::UntilClose { body, .. }) => {
                body.is_empty().then_some((head, None))
            }
            // Only request bodies are read in place.
            (_, BodyReader::InPlace { .. }) => None,
        }
    }

    /// Takes the `Content-Length` answer whose head was read and whose body has not begun
    /// (`head_before_body`), to be relayed as it arrives instead of stored: its head, the
    /// buffer reserved for its body (empty, with room for all of it when it fits
    /// `RESERVE_AHEAD`, as a stored one), and its length. The reader reads no more of it.
    pub fn take_for_relay(&mut self) -> Option<(ResponseHead, Vec<u8>, u64)> {
        match self.body.take() {
            Some((head, BodyReader::Length { remaining, body })) if body.is_empty() => {
                Some((head, body, remaining))
            }
            other => {
                self.body = other;
                None
            }
        }
    }

    /// The peer closed the connection: a close-delimited answer is now whole; anything else
    /// is an answer cut short.
    pub fn finish(&mut self) -> Result<Response, HttpError> {
        match self.body.take() {
            Some((head, BodyReader::UntilClose { body, .. })) => Ok(Response { head, body }),
            _ => Err(HttpError::Malformed("connection closed before the answer was complete")),
        }
    }

    fn complete(&mut self, consumed: usize) -> Step<Response> {
        match self.body.take() {
            Some((head, body)) => Step::done(consumed, Response { head, body: body.into_body() }),
            None => Step::more(consumed),
        }
    }
}

/// Accumulates a head until the blank line that ends it, searching only new bytes.
#[derive(Debug, Default)]
struct HeadBuffer {
    buf: Vec<u8>,
}

impl HeadBuffer {
    /// Appends bytes up to the end of the head. Returns how many bytes of `input` belong to
    /// the head and whether it is complete.
    fn push(&mut self, input: &[u8], max_head: usize) -> Result<(usize, bool), HttpError> {
        // Blank lines before a request line are ignored (RFC 9112 §2.2), so they never count.
        let mut skipped = 0;
        if self.buf.is_empty() {
            while skipped < input.len() && matches!(input[skipped], b'\r' | b'\n') {
                skipped += 1;
            }
        }
        let input = &input[skipped..];
        let old = self.buf.len();
        let room = max_head.saturating_sub(old);
        let take = input.len().min(room.saturating_add(1));
        // The blank line is looked for in the new bytes (and across the seam with the old
        // ones) before anything is copied, so only the head's own bytes are ever copied here,
        // never the body that follows it in the same read.
        if let Some(end) = self.find_end(&input[..take]) {
            self.buf.extend_from_slice(&input[..end]);
            if self.buf.len() > max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok((skipped + end, true));
        }
        self.buf.extend_from_slice(&input[..take]);
        if self.buf.len() > max_head {
            return Err(HttpError::HeadTooLarge);
        }
        Ok((skipped + take, false))
    }

    /// `push`, handing over the head's bytes once it is complete (and starting afresh).
    fn complete(&mut self, input: &[u8], max_head: usize) -> Result<(usize, Option<Vec<u8>>), HttpError> {
        let (consumed, done) = self.push(input, max_head)?;
        Ok((consumed, done.then(|| std::mem::take(&mut self.buf))))
    }

    /// Where in `input` the head ends, counting a blank line that began in earlier bytes.
    fn find_end(&self, input: &[u8]) -> Option<usize> {
        let tail = &self.buf[self.buf.len().saturating_sub(3)..];
        if !tail.is_empty() {
            let mut seam = [0u8; 6];
            let head = input.len().min(3);
            seam[..tail.len()].copy_from_slice(tail);
            seam[tail.len()..tail.len() + head].copy_from_slice(&input[..head]);
            if let Some(end) = find_head_end(&seam[..tail.len() + head]) {
                if end > tail.len() {
                    return Some(end - tail.len());
                }
            }
        }
        find_head_end(input)
    }
}

/// The index just past the first blank line (`\n\n` or `\n\r\n`).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            match bytes.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if bytes.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

fn find_header<'h>(headers: &'h [Header], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn copy_headers(raw: &[httparse::Header<'_>]) -> Vec<Header> {
    raw.iter().map(|h| Header { name: h.name.to_string(), value: h.value.to_vec() }).collect()
}

/// Body framing shared by requests and answers: Transfer-Encoding wins over Content-Length,
/// and several differing Content-Length values are an error (request smuggling otherwise).
fn framing_of(headers: &[Header]) -> Result<Option<Framing>, HttpError> {
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(HttpError::UnsupportedEncoding);
            }
            transfer_encoding = Some(&h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(&h.value)?;
            if length.is_some_and(|old| old != n) {
                return Err(HttpError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    match transfer_encoding {
        Some(te) if te.trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(Some(Framing::Chunked)),
        Some(_) => Err(HttpError::UnsupportedEncoding),
        None => Ok(length.map(Framing::Length)),
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Malformed("bad Content-Length"));
    }
    Ok(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn parse_request_head(bytes: &[u8], limits: &Limits) -> Result<(RequestHead, Framing), HttpError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed("invalid request head")),
    }
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    let headers = copy_headers(req.headers);
    let connection = find_header(&headers, "connection");
    let keep_alive = match minor {
        0 => connection.is_some_and(|v| has_token(v, "keep-alive")),
        _ => !connection.is_some_and(|v| has_token(v, "close")),
    };
    let expect_continue = minor >= 1
        && find_header(&headers, "expect")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    // RFC 9112 §3.2: an HTTP/1.1 request names exactly one Host (an HTTP/1.0 one may omit it).
    match headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count() {
        0 if minor >= 1 => return Err(HttpError::Malformed("HTTP/1.1 request without Host")),
        0 | 1 => {}
        _ => return Err(HttpError::Malformed("more than one Host")),
    }
    // RFC 9112 §6.1: a request with both is how requests are smuggled past a proxy that reads
    // one and a server that reads the other; it is refused, and the connection closed (every
    // framing error ends the connection).
    if find_header(&headers, "transfer-encoding").is_some()
        && find_header(&headers, "content-length").is_some()
    {
        return Err(HttpError::Malformed("both Transfer-Encoding and Content-Length"));
    }
    // A request without Content-Length or Transfer-Encoding has no body (RFC 9112 §6.3).
    let framing = framing_of(&headers)?.unwrap_or(Framing::Length(0));
    if matches!(framing, Framing::Chunked) && minor == 0 {
        return Err(HttpError::Malformed("chunked body in HTTP/1.0"));
    }
    if let Framing::Length(n) = framing {
        if n > limits.max_body as u64 {
            return Err(HttpError::BodyTooLarge);
        }
    }
    let head = RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        minor,
        headers,
        keep_alive,
        expect_continue,
    };
    Ok((head, framing))
}

fn parse_response_head(bytes: &[u8], limits: &Limits) -> Result<(ResponseHead, Framing), HttpError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    match resp.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed("invalid answer head")),
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(HttpError::Malformed("incomplete status line"));
    };
    let headers = copy_headers(resp.headers);
    let connection = find_header(&headers, "connection");
    let mut keep_alive = match minor {
        0 => connection.is_some_and(|v| has_token(v, "keep-alive")),
        _ => !connection.is_some_and(|v| has_token(v, "close")),
    };
    let framing = if !status_has_body(status) {
        Framing::Length(0)
    } else {
        framing_of(&headers)?.unwrap_or(Framing::UntilClose)
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    if let Framing::Length(n) = framing {
        if n > limits.max_body as u64 {
            return Err(HttpError::BodyTooLarge);
        }
    }
    Ok((ResponseHead { status, minor, headers, keep_alive }, framing))
}

/// Reads one body, whatever its framing, into a single buffer: the only copy the proxy makes.
#[derive(Debug)]
enum BodyReader {
    Length {
        remaining: u64,
        body: Vec<u8>,
    },
    /// A request body framed by `Content-Length` in the pool's spare buffer, which is as long
    /// as the body from the start (its old bytes are overwritten as the body arrives); `filled`
    /// bytes of it are the body's so far. The socket is read straight into the rest
    /// (`RequestReader::room`), so a large body is not copied from a read buffer (the
    /// copy cost as much CPU as the read itself on 8 MiB bodies, all of it on the way to the
    /// primary).
    InPlace {
        filled: usize,
        body: Vec<u8>,
    },
    Chunked {
        state: ChunkState,
        line: Vec<u8>,
        body: Vec<u8>,
        max: usize,
    },
    UntilClose {
        body: Vec<u8>,
        max: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Reading chunk data; this many bytes are left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer fields after the last chunk, until a blank line.
    Trailers,
    Done,
}

enum BodyProgress {
    More,
    Done,
    Error(HttpError),
}

impl BodyReader {
    fn new(framing: Framing, max: usize, reserve: usize) -> Self {
        match framing {
            Framing::Length(n) => BodyReader::Length { remaining: n, body: body_buffer(n, reserve) },
            Framing::Chunked => {
                BodyReader::Chunked { state: ChunkState::Size, line: Vec::new(), body: Vec::new(), max }
            }
            Framing::UntilClose => BodyReader::UntilClose { body: Vec::new(), max },
        }
    }

    fn is_done(&self) -> bool {
        match self {
            BodyReader::Length { remaining, .. } => *remaining == 0,
            BodyReader::InPlace { filled, body } => *filled == body.len(),
            BodyReader::Chunked { state, .. } => *state == ChunkState::Done,
            BodyReader::UntilClose { .. } => false,
        }
    }

    /// Bytes this body will hold: what is buffered, and for a declared length the rest too
    /// (its buffer grows to it as bytes arrive).
    fn held(&self) -> usize {
        match self {
            BodyReader::Length { remaining, body } => body
                .capacity()
                .max(body.len().saturating_add(usize::try_from(*remaining).unwrap_or(usize::MAX))),
            BodyReader::Chunked { line, body, .. } => line.capacity() + body.capacity(),
            BodyReader::InPlace { body, .. } | BodyReader::UntilClose { body, .. } => body.capacity(),
        }
    }

    fn reserved_ahead(&self) -> usize {
        match self {
            BodyReader::Length { body, .. } => body.capacity() - body.len(),
            BodyReader::InPlace { filled, body } => body.capacity().saturating_sub(*filled),
            BodyReader::Chunked { .. } | BodyReader::UntilClose { .. } => 0,
        }
    }

    fn into_body(self) -> Vec<u8> {
        match self {
            // Whole by then; a body cut short keeps only what arrived.
            BodyReader::InPlace { filled, mut body } => {
                body.truncate(filled);
                body
            }
            BodyReader::Length { body, .. }
            | BodyReader::Chunked { body, .. }
            | BodyReader::UntilClose { body, .. } => body,
        }
    }

    fn advance(&mut self, input: &[u8]) -> (usize, BodyProgress) {
        match self {
            BodyReader::Length { remaining, body } => {
                let left = usize::try_from(*remaining).unwrap_or(usize::MAX);
                let take = input.len().min(left);
                grow_for(body, take, left);
                body.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                (take, if *remaining == 0 { BodyProgress::Done } else { BodyProgress::More })
            }
            BodyReader::InPlace { filled, body } => {
                let rest = body.get_mut(*filled..).unwrap_or_default();
                let take = input.len().min(rest.len());
                rest[..take].copy_from_slice(&input[..take]);
                *filled += take;
                (take, if *filled == body.len() { BodyProgress::Done } else { BodyProgress::More })
            }
            BodyReader::UntilClose { body, max } => {
                if body.len() + input.len() > *max {
                    return (input.len(), BodyProgress::Error(HttpError::BodyTooLarge));
                }
                body.extend_from_slice(input);
                (input.len(), BodyProgress::More)
            }
            BodyReader::Chunked { state, line, body, max } => {
                let mut used = 0;
                while used < input.len() {
                    let rest = &input[used..];
                    match *state {
                        ChunkState::Size => match take_line(line, rest, MAX_CHUNK_LINE) {
                            Err(e) => return (used, BodyProgress::Error(e)),
                            Ok((n, false)) => used += n,
                            Ok((n, true)) => {
                                used += n;
                                let size = match parse_chunk_size(line) {
                                    Ok(size) => size,
                                    Err(e) => return (used, BodyProgress::Error(e)),
                                };
                                line.clear();
                                if (body.len() as u64).saturating_add(size) > *max as u64 {
                                    return (used, BodyProgress::Error(HttpError::BodyTooLarge));
                                }
                                *state =
                                    if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                            }
                        },
                        ChunkState::Data(left) => {
                            let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                            if body.capacity() - body.len() < take {
                                // Exact, so the buffer never holds more room than `max`.
                                let room = take.max(body.len() / 2).min(max.saturating_sub(body.len()));
                                body.reserve_exact(room.max(take));
                            }
                            body.extend_from_slice(&rest[..take]);
                            used += take;
                            let left = left - take as u64;
                            *state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                        }
                        // Chunk data must be followed by CRLF (a bare LF is tolerated) and
                        // nothing else, so a lying chunk size is caught at once.
                        ChunkState::DataEnd => match (line.is_empty(), rest[0]) {
                            (true, b'\r') => {
                                line.push(b'\r');
                                used += 1;
                            }
                            (_, b'\n') => {
                                line.clear();
                                used += 1;
                                *state = ChunkState::Size;
                            }
                            _ => return (used, BodyProgress::Error(HttpError::Malformed("bad chunk end"))),
                        },
                        ChunkState::Trailers => match take_line(line, rest, MAX_TRAILERS) {
                            Err(e) => return (used, BodyProgress::Error(e)),
                            Ok((n, false)) => used += n,
                            Ok((n, true)) => {
                                used += n;
                                let blank = line.is_empty();
                                line.clear();
                                if blank {
                                    *state = ChunkState::Done;
                                    return (used, BodyProgress::Done);
                                }
                            }
                        },
                        ChunkState::Done => return (used, BodyProgress::Done),
                    }
                }
                let progress =
                    if *state == ChunkState::Done { BodyProgress::Done } else { BodyProgress::More };
                (used, progress)
            }
        }
    }
}

/// The reader for a body framed by `framing`: a large declared length gets `pool`'s spare
/// buffer when it fits, else a buffer of its own with room for at most `reserve` bytes up front
/// (the whole declared length when it fits, see `body_buffer`).
fn body_reader(pool: Option<&SharedPool>, framing: Framing, max: usize, reserve: usize) -> BodyReader {
    if let (Framing::Length(n), Some(pool)) = (framing, pool) {
        let spare = usize::try_from(n)
            .ok()
            .and_then(|len| pool.try_borrow_mut().ok().and_then(|mut pool| pool.take(len)));
        if let Some(body) = spare {
            return BodyReader::Length { remaining: n, body };
        }
    }
    BodyReader::new(framing, max, reserve)
}

/// The buffer of a body of `n` declared bytes (already checked against `max_body`): room for
/// all of them when they are at most `reserve`, else for `BODY_RESERVE` of them up front and
/// the rest grown as the bytes arrive (`grow_for`). If even that cannot be had, the buffer
/// starts empty rather than aborting the process.
fn body_buffer(n: u64, reserve: usize) -> Vec<u8> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let n = if n <= reserve { n } else { n.min(BODY_RESERVE) };
    let mut body = Vec::new();
    let _ = body.try_reserve_exact(n);
    body
}

/// Makes room in `body` for `take` more bytes of a body that has `left` bytes still to come
/// (`take <= left`): the room doubles, so a body is copied by growing a logarithmic number of
/// times, and never exceeds the declared length, so a body that arrives whole fits exactly.
fn grow_for(body: &mut Vec<u8>, take: usize, left: usize) {
    if body.capacity() - body.len() >= take {
        return;
    }
    let wanted = body.capacity().saturating_mul(2).max(body.len() + take);
    let ceiling = body.len().saturating_add(left);
    body.reserve_exact(wanted.min(ceiling) - body.len());
}

/// Appends to `line` up to and including the next LF. Returns bytes used and whether the line
/// ended; the stored line excludes its CRLF/LF. A line over `max` bytes is an error.
fn take_line(line: &mut Vec<u8>, input: &[u8], max: usize) -> Result<(usize, bool), HttpError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&input[..i]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > max {
                return Err(HttpError::Malformed("chunk line too long"));
            }
            Ok((i + 1, true))
        }
        None => {
            line.extend_from_slice(input);
            if line.len() > max + 1 {
                return Err(HttpError::Malformed("chunk line too long"));
            }
            Ok((input.len(), false))
        }
    }
}

/// A chunk-size line: hex digits, optionally followed by `;extensions` (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let size = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if size.is_empty() || size.len() > 15 {
        return Err(HttpError::Malformed("bad chunk size"));
    }
    let mut n: u64 = 0;
    for &b in size {
        let digit = (b as char).to_digit(16).ok_or(HttpError::Malformed("bad chunk size"))?;
        n = n * 16 + u64::from(digit);
    }
    Ok(n)
}

/// The reason phrase for the status codes the proxy writes itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Whether an answer with this status carries a body: 1xx, 204 and 304 never do (RFC 9112 §6.3),
/// whatever their head says.
pub fn status_has_body(status: u16) -> bool {
    !((100..200).contains(&status) || status == 204 || status == 304)
}

/// Writes the head of an answer to a beacon node. `minor` is the request's HTTP version.
/// The head has no `Content-Length` when the status has no body (`status_has_body`).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: Option<&[u8]>,
    content_length: usize,
    keep_alive: bool,
    minor: u8,
) {
    write_response_head_with(out, status, content_type, content_length, keep_alive, minor, &[]);
}

/// `write_response_head` with extra header fields (names and values must be valid HTTP).
pub fn write_response_head_with(
    out: &mut Vec<u8>,
    status: u16,
    content_type: Option<&[u8]>,
    content_length: usize,
    keep_alive: bool,
    minor: u8,
    extra: &[(&[u8], &[u8])],
) {
    out.extend_from_slice(if minor == 0 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(ct) = content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct);
        out.extend_from_slice(b"\r\n");
    }
    // RFC 9110 §8.6: never on 1xx and 204; on 304 it could only repeat the length of a 200
    // the proxy never saw, so it is left out there too.
    if status_has_body(status) {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, content_length as u64);
        out.extend_from_slice(b"\r\n");
    }
    match (keep_alive, minor) {
        (false, 1) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, 0) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        _ => {}
    }
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe one hop, never the message: they are not forwarded (RFC 9110 §7.6.1).
/// `Host` and `Content-Length` are rewritten, `Expect` was answered here, and
/// `Accept-Encoding` is dropped so that execution clients never compress their answers.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "accept-encoding",
    "x-forwarded-for",
];

/// What a forwarded request says beside the beacon node's own headers.
pub struct Forward<'a> {
    pub path: &'a str,
    pub host: &'a str,
    /// Replaces the beacon node's `Authorization` when the execution client has its own secret.
    pub authorization: Option<&'a [u8]>,
    /// The beacon node's address, appended to `X-Forwarded-For`.
    pub client: &'a str,
    pub content_length: usize,
}

/// Writes the head of a request forwarded to an execution client: the beacon node's headers
/// minus the hop-by-hop ones (and those its `Connection` header names), with `Host`,
/// `Content-Length` and `X-Forwarded-For` set by the proxy.
pub fn write_forward_head(out: &mut Vec<u8>, head: &RequestHead, fwd: &Forward<'_>) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(fwd.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(fwd.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    // Every `Connection` line counts, and every `X-Forwarded-For` line is kept, in order.
    let named_by_connection = |name: &str| {
        head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection") && has_token(&h.value, name))
    };
    for h in &head.headers {
        let name = h.name.as_str();
        if NOT_FORWARDED.iter().any(|n| name.eq_ignore_ascii_case(n)) || named_by_connection(name) {
            continue;
        }
        if fwd.authorization.is_some() && name.eq_ignore_ascii_case("authorization") {
            continue;
        }
        push_header(out, name.as_bytes(), &h.value);
    }
    if let Some(auth) = fwd.authorization {
        push_header(out, b"Authorization", auth);
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in head.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
        let prior = h.value.trim_ascii();
        if !prior.is_empty() {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.client.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_decimal(out, fwd.content_length as u64);
    out.extend_from_slice(b"\r\n\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without going through the formatting machinery.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes a message held as a head and a separate (shared) body from offset `*written`, with
/// vectored writes while head bytes remain, until it is all written or `out` would block.
/// Returns how many bytes moved and whether the message is complete. Both directions use it,
/// so a body is never copied to be joined to its head.
pub fn write_head_body(
    out: &mut impl std::io::Write,
    head: &[u8],
    body: &[u8],
    written: &mut usize,
) -> std::io::Result<(usize, bool)> {
    use std::io::{ErrorKind, IoSlice};
    let mut moved = 0;
    while *written < head.len() + body.len() {
        let n = if *written < head.len() {
            out.write_vectored(&[IoSlice::new(&head[*written..]), IoSlice::new(body)])
        } else {
            out.write(&body[*written - head.len()..])
        };
        match n {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                *written += n;
                moved += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((moved, false)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((moved, true))
}

/// Whether `name` is a valid header field name (an RFC 9110 token).
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The first address of `X-Forwarded-For`, which names the original client.
pub fn first_forwarded_for(value: &[u8]) -> Option<&str> {
    let first = value.split(|&b| b == b',').next()?.trim_ascii();
    if first.is_empty() {
        return None;
    }
    std::str::from_utf8(first).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_head: 1024, max_body: 4096 }
    }

    /// Feeds `input` in pieces of `split` bytes and collects every event.
    fn read_all(input: &[u8], split: usize) -> Vec<Result<RequestEvent, HttpError>> {
        read_with(&mut RequestReader::new(limits()), input, split)
    }

    /// Feeds `input` to `reader` in pieces of `split` bytes, as the event loop feeds its reads,
    /// and returns the events, up to and including the first error.
    fn read_with(
        reader: &mut RequestReader,
        input: &[u8],
        split: usize,
    ) -> Vec<Result<RequestEvent, HttpError>> {
        let mut events = Vec::new();
        for piece in input.chunks(split.max(1)) {
            let mut rest = piece;
            loop {
                let step = reader.advance(rest);
                rest = &rest[step.consumed..];
                match step.event {
                    Some(Err(e)) => {
                        events.push(Err(e));
                        return events;
                    }
                    Some(Ok(ev)) => events.push(Ok(ev)),
                    None if step.consumed == 0 || rest.is_empty() => break,
                    None => {}
                }
                if rest.is_empty() {
                    break;
                }
            }
        }
        events
    }

    fn bodies(events: &[Result<RequestEvent, HttpError>]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                Ok(RequestEvent::Request(r)) => Some(r.body.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn regression_a_request_with_both_transfer_encoding_and_content_length_is_400() {
        // RFC 9112 §6.1: it was served by Transfer-Encoding and the connection kept.
        for order in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let events = read_all(order, 4096);
            assert_eq!(
                events,
                [Err(HttpError::Malformed("both Transfer-Encoding and Content-Length"))],
                "{}",
                String::from_utf8_lossy(order)
            );
        }
    }

    #[test]
    fn regression_an_http_1_1_request_without_exactly_one_host_is_400() {
        // RFC 9112 §3.2: it was served.
        let cases: [(&[u8], bool); 5] = [
            (b"GET / HTTP/1.1\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\n\r\n", true),
        ];
        for (input, ok) in cases {
            let events = read_all(input, 4096);
            let served = matches!(events.as_slice(), [Ok(RequestEvent::Request(_))]);
            assert_eq!(served, ok, "{}: {events:?}", String::from_utf8_lossy(input));
            if !ok {
                assert!(matches!(events.as_slice(), [Err(e)] if e.status() == 400), "{events:?}");
            }
        }
    }

    /// Room reserved by the body being read now.
    fn body_capacity(reader: &RequestReader) -> usize {
        match reader.body.as_ref() {
            Some((_, BodyReader::Length { body, .. })) => body.capacity(),
            other => panic!("no Content-Length body in progress: {other:?}"),
        }
    }

    #[test]
    fn regression_a_declared_body_is_not_reserved_whole_before_it_arrives() {
        // 16 sockets announcing 16 MiB and sending 1 KiB each had 256 MiB reserved.
        let declared = 16 << 20;
        let mut reader = RequestReader::new(Limits { max_head: 1024, max_body: declared });
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
        assert_eq!(reader.advance(head.as_bytes()), Step { consumed: head.len(), event: None });
        assert_eq!(reader.advance(&[7; 1024]).consumed, 1024);
        assert_eq!(body_capacity(&reader), BODY_RESERVE, "reserved up front");
        // The room grows (by doubling) as bytes arrive, and ends exactly at the declared length.
        let mut sent = 1024;
        let mut grew = 0;
        let mut last = body_capacity(&reader);
        while sent < declared {
            let piece = (declared - sent).min(64 * 1024);
            let step = reader.advance(&vec![7; piece]);
            sent += step.consumed;
            if let Some(event) = step.event {
                let Ok(RequestEvent::Request(request)) = event else { panic!("{event:?}") };
                assert_eq!(request.body.len(), declared);
                assert_eq!(request.body.capacity(), declared, "no room past the declared length");
                break;
            }
            let now = body_capacity(&reader);
            assert!(now <= (2 * last).max(sent), "grew from {last} to {now} with {sent} bytes in");
            assert!(now < 2 * sent.max(BODY_RESERVE), "{now} of room for {sent} bytes");
            grew += usize::from(now != last);
            last = now;
        }
        assert_eq!(grew, 4, "1 -> 2 -> 4 -> 8 -> 16 MiB");
    }

    #[test]
    fn regression_a_large_answer_is_reserved_whole_at_its_head_and_never_grown() {
        // A 13 MB getPayload answer grew from 1 MiB by doubling: each step a copy, and the
        // outgrown buffers left the proxy's peak RSS at twice the answer (28 MiB for 12.7 MiB).
        let declared = 13_000_000;
        let mut reader = ResponseReader::new(Limits { max_head: 1024, max_body: 16 << 20 });
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n");
        assert_eq!(reader.advance(head.as_bytes()).event, None);
        let address = match reader.body.as_ref() {
            Some((_, BodyReader::Length { body, .. })) => {
                assert_eq!(body.capacity(), declared, "the declared length, once");
                body.as_ptr()
            }
            other => panic!("no Content-Length body in progress: {other:?}"),
        };
        let piece = vec![b'x'; 64 * 1024];
        let mut fed = 0;
        let answer = loop {
            let step = reader.advance(&piece[..piece.len().min(declared - fed)]);
            fed += step.consumed;
            if let Some(event) = step.event {
                break event.expect("a whole answer");
            }
        };
        assert_eq!((answer.body.len(), answer.body.capacity()), (declared, declared));
        assert_eq!(answer.body.as_ptr(), address, "never moved to grow");
        // Past RESERVE_AHEAD a declared length is a claim again: it grows as bytes arrive.
        let mut reader = ResponseReader::new(Limits { max_head: 1024, max_body: 2 * RESERVE_AHEAD });
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", RESERVE_AHEAD + 1);
        assert_eq!(reader.advance(head.as_bytes()).event, None);
        assert!(
            matches!(reader.body.as_ref(), Some((_, BodyReader::Length { body, .. })) if body.capacity() == BODY_RESERVE)
        );
    }

    #[test]
    fn an_admitted_body_is_reserved_whole_when_the_caller_has_room_for_it() {
        let declared = 8 << 20;
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
        for (reserve, room) in [(declared, declared), (declared - 1, BODY_RESERVE), (0, BODY_RESERVE)] {
            let mut reader = RequestReader::new(Limits { max_head: 1024, max_body: 16 << 20 });
            reader.hold_heads();
            assert_eq!(reader.advance(head.as_bytes()).event, Some(Ok(RequestEvent::Head)));
            assert_eq!(reader.reserved_ahead(), 0, "nothing before the decision");
            assert!(!reader.accept_body(reserve));
            assert_eq!(body_capacity(&reader), room, "reserve {reserve}");
            assert_eq!(reader.reserved_ahead(), room);
            assert_eq!(reader.advance(&[7; 1000]).consumed, 1000);
            assert_eq!(reader.reserved_ahead(), room - 1000, "filled room is no longer ahead");
        }
    }

    #[test]
    fn regression_an_endless_chunked_answer_fails_at_max_body_with_bounded_memory() {
        // The chunked reader's room could grow to twice `max_body` (amortized doubling past
        // it); with the fixed 128 MiB answer cap that was 256 MiB for one endless answer.
        let max_body = 1_500_000;
        let mut reader = ResponseReader::new(Limits { max_head: 1024, max_body });
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(reader.advance(head).event, None);
        let chunk = [&b"4000\r\n"[..], &[b'x'; 0x4000], b"\r\n"].concat();
        let mut fed = 0;
        let error = loop {
            assert!(fed <= max_body + chunk.len(), "still reading after {fed} bytes");
            let mut rest = &chunk[..];
            let mut error = None;
            while !rest.is_empty() && error.is_none() {
                let step = reader.advance(rest);
                rest = &rest[step.consumed..];
                fed += step.consumed;
                error = step.event;
            }
            if let Some((_, BodyReader::Chunked { body, .. })) = reader.body.as_ref() {
                assert!(body.capacity() <= max_body, "{} bytes of room", body.capacity());
            }
            if let Some(event) = error {
                break event;
            }
        };
        assert_eq!(error, Err(HttpError::BodyTooLarge));
        assert_eq!(ResponseReader::new(Limits { max_head: 1024, max_body }).limits().max_body, max_body);
    }

    #[test]
    fn regression_no_content_length_on_answers_without_a_body() {
        // An EL's 204 was relayed with `Content-Length: 0` (RFC 9110 §8.6: never on 1xx/204).
        for status in [100, 204, 304] {
            let mut out = Vec::new();
            write_response_head(&mut out, status, None, 5, true, 1);
            let text = String::from_utf8(out).expect("ascii");
            assert!(!text.contains("Content-Length"), "{text}");
            assert!(!status_has_body(status));
        }
        assert!(status_has_body(200) && status_has_body(404));
    }

    #[test]
    fn content_length_requests_in_any_split() {
        let input = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        for split in [1, 2, 3, 7, 64, 4096] {
            let events = read_all(input, split);
            assert_eq!(bodies(&events), vec![b"hello".to_vec(), b"abc".to_vec()], "split {split}");
        }
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let input = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\nGET /h HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1, 2, 5, 4096] {
            let events = read_all(input, split);
            assert_eq!(bodies(&events), vec![b"hello world".to_vec(), Vec::new()], "split {split}");
        }
    }

    #[test]
    fn a_large_declared_body_is_read_into_the_pools_spare_buffer() {
        use crate::pool::{BodyPool, MIN_POOLED};
        let pool = BodyPool::shared();
        let spare = Vec::with_capacity(2 * MIN_POOLED);
        let address = spare.as_ptr();
        pool.borrow_mut().give(spare);
        let mut reader = RequestReader::new(Limits { max_head: 64 * 1024, max_body: 4 * MIN_POOLED });
        reader.use_pool(pool.clone());
        // A small body allocates its own buffer and leaves the spare alone.
        let small = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok";
        let events: Vec<_> =
            read_with(&mut reader, small, 64 * 1024).into_iter().map(|e| e.expect("no HTTP error")).collect();
        assert!(matches!(events.as_slice(), [RequestEvent::Request(r)] if r.body == b"ok"));
        assert_eq!(pool.borrow().spare_bytes(), 2 * MIN_POOLED);
        // A large one is read into the spare, byte for byte.
        let body: Vec<u8> = (0..MIN_POOLED + 5).map(|i| (i % 251) as u8).collect();
        let mut wire =
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        wire.extend_from_slice(&body);
        let events: Vec<_> =
            read_with(&mut reader, &wire, 64 * 1024).into_iter().map(|e| e.expect("no HTTP error")).collect();
        let [RequestEvent::Request(request)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!(request.body, body);
        assert_eq!(request.body.as_ptr(), address, "the spare's memory");
        assert_eq!(pool.borrow().spare_bytes(), 0);
    }

    #[test]
    fn a_body_the_spare_holds_is_read_in_place_and_arrives_as_advance_would_have_it() {
        use crate::pool::{BodyPool, MIN_POOLED};
        let pool = BodyPool::shared();
        // The spare holds an older body's bytes, longer than this one: they must not show.
        pool.borrow_mut().give(vec![b'#'; 3 * MIN_POOLED]);
        let mut reader = RequestReader::new(Limits { max_head: 64 * 1024, max_body: 4 * MIN_POOLED });
        reader.use_pool(pool.clone());
        assert!(reader.room(1024).is_none(), "no body yet");
        let body: Vec<u8> = (0..2 * MIN_POOLED + 5).map(|i| (i % 251) as u8).collect();
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        // The read that brought the head brought the body's first bytes too: copied in.
        let first = [head.as_bytes(), &body[..1000]].concat();
        let step = reader.advance(&first);
        assert_eq!(step.consumed, head.len());
        assert_eq!(reader.advance(&first[head.len()..]).consumed, 1000);
        let (_, so_far, declared) = reader.body_in_progress().expect("a body in progress");
        assert_eq!((so_far, declared), (&body[..1000], body.len() as u64));
        assert_eq!(reader.reserved_ahead(), 3 * MIN_POOLED - 1000, "the spare's room not filled yet");
        // The rest is read in place, a capped piece at a time.
        let mut at = 1000;
        let request = loop {
            let room = reader.room(100_000).expect("room in the body");
            assert_eq!(room.len(), 100_000.min(body.len() - at), "capped, and never past the body");
            let n = room.len().min(70_000);
            room[..n].copy_from_slice(&body[at..at + n]);
            at += n;
            let step = reader.filled(n);
            assert_eq!(step.consumed, n);
            if let Some(event) = step.event {
                break event;
            }
            assert_eq!(reader.body_in_progress().map(|(_, b, _)| b), Some(&body[..at]));
        };
        let Ok(RequestEvent::Request(request)) = request else { panic!("{request:?}") };
        assert_eq!(request.body, body, "byte for byte, none of the spare's old bytes");
        assert!(reader.room(1024).is_none(), "between requests, reads go through `advance`");
        // The buffer goes back at its body's length and is read in place again.
        pool.borrow_mut().give(request.body);
        let step = reader.advance(head.as_bytes());
        assert_eq!(step.consumed, head.len());
        assert_eq!(reader.room(usize::MAX).map(|r| r.len()), Some(body.len()));
    }

    #[test]
    fn regression_a_large_answer_is_read_into_the_pools_spare_buffer_answer_after_answer() {
        // Each 13 MB getPayload answer was a fresh allocation; with glibc's heap the freed one
        // was not always reusable, and two answers' worth stayed resident (28 MiB peak).
        use crate::pool::{BodyPool, MIN_POOLED};
        let pool = BodyPool::shared();
        let spare = Vec::with_capacity(2 * MIN_POOLED);
        let address = spare.as_ptr();
        pool.borrow_mut().give(spare);
        let mut reader = ResponseReader::new(Limits { max_head: 1024, max_body: 4 * MIN_POOLED });
        reader.use_pool(pool.clone());
        let mut reader = reader.next();
        let body = vec![b'x'; MIN_POOLED + 5];
        let mut wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        wire.extend_from_slice(&body);
        let mut input = &wire[..];
        let answer = loop {
            let step = reader.advance(input);
            input = &input[step.consumed..];
            if let Some(event) = step.event {
                break event.expect("a whole answer");
            }
        };
        assert_eq!(answer.body, body);
        assert_eq!(answer.body.as_ptr(), address, "the spare's memory, kept by `next`");
        assert_eq!(pool.borrow().spare_bytes(), 0);
    }

    #[test]
    fn a_get_can_be_answered_before_the_body_it_announces() {
        // nginx's auth_request subrequest: the original Content-Length, and no body.
        let mut reader = RequestReader::new(limits());
        reader.answer_get_at_head();
        let step = reader.advance(b"GET /tokens/ HTTP/1.0\r\nContent-Length: 7\r\n\r\n");
        match step.event {
            Some(Ok(RequestEvent::Request(r))) => assert!(r.body.is_empty() && !r.head.keep_alive),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.advance(b"leftover"), Step { consumed: 8, event: None });
    }

    #[test]
    fn held_heads_wait_for_a_decision_before_the_body_is_read() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        let mut reader = RequestReader::new(limits());
        reader.hold_heads();
        let input = [&head[..], b"ok"].concat();
        assert_eq!(
            reader.advance(&input),
            Step { consumed: head.len(), event: Some(Ok(RequestEvent::Head)) }
        );
        assert_eq!(reader.held_head().map(|h| h.method.as_str()), Some("POST"));
        assert!(reader.in_progress());
        // Nothing is read until the decision.
        assert_eq!(reader.advance(b"ok"), Step { consumed: 0, event: None });
        // Accepting says a 100 is owed (no Continue event comes), then the body is read.
        assert!(reader.accept_body(0));
        assert_eq!(reader.held_head(), None);
        match reader.advance(b"ok").event {
            Some(Ok(RequestEvent::Request(r))) => assert_eq!(r.body, b"ok"),
            other => panic!("{other:?}"),
        }
        // Requests without a body are never held.
        let events = read_with(
            &mut reader,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            4096,
        );
        assert!(
            matches!(events.as_slice(), [Ok(RequestEvent::Request(_)), Ok(RequestEvent::Request(_))]),
            "{events:?}"
        );
    }

    #[test]
    fn a_refused_short_body_is_dropped_and_the_next_request_read() {
        let next = b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let input = [&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..], next].concat();
        for split in [1, 3, 4096] {
            let mut reader = RequestReader::new(limits());
            reader.hold_heads();
            let mut events = Vec::new();
            for piece in input.chunks(split) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let step = reader.advance(rest);
                    rest = &rest[step.consumed..];
                    match step.event {
                        Some(Ok(RequestEvent::Head)) if events.is_empty() => {
                            assert_eq!(reader.refuse_body(), Refusal::Discard);
                            events.push("refused".to_string());
                        }
                        Some(Ok(RequestEvent::Head)) => {
                            assert!(!reader.accept_body(0));
                        }
                        Some(Ok(RequestEvent::Request(r))) => {
                            events.push(format!("{} {}", r.head.path, String::from_utf8_lossy(&r.body)))
                        }
                        Some(other) => panic!("{other:?}"),
                        None if step.consumed == 0 => panic!("stuck at split {split}"),
                        None => {}
                    }
                }
            }
            assert_eq!(events, ["refused", "/next abc"], "split {split}");
        }
    }

    #[test]
    fn a_refused_body_ends_the_connection_when_long_unknown_or_maybe_never_sent() {
        let limits = Limits { max_head: 1024, max_body: 1 << 20 };
        let long = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", MAX_DISCARD + 1);
        let cases: [(&str, &[u8]); 4] = [
            ("longer than MAX_DISCARD", long.as_bytes()),
            ("chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (
                "Expect: 100-continue",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            ),
            (
                "Connection: close",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            ),
        ];
        for (case, head) in cases {
            let mut reader = RequestReader::new(limits);
            reader.hold_heads();
            assert_eq!(reader.advance(head).event, Some(Ok(RequestEvent::Head)), "{case}");
            assert_eq!(reader.refuse_body(), Refusal::Close, "{case}");
            // Whatever follows is not a request.
            let more = b"{}POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
            assert_eq!(reader.advance(more), Step { consumed: more.len(), event: None }, "{case}");
        }
        // Within the limit and kept alive, the same body is dropped instead.
        let mut reader = RequestReader::new(limits);
        reader.hold_heads();
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_DISCARD}\r\n\r\n");
        assert_eq!(reader.advance(head.as_bytes()).event, Some(Ok(RequestEvent::Head)));
        assert_eq!(reader.refuse_body(), Refusal::Discard);
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        ];
        for (input, keep) in cases {
            let events = read_all(input, 4096);
            match &events[0] {
                Ok(RequestEvent::Request(r)) => assert_eq!(r.head.keep_alive, *keep),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn expect_continue_is_reported_before_the_body() {
        let input = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
        let events = read_all(input, 4096);
        assert_eq!(events[0], Ok(RequestEvent::Continue));
        assert_eq!(bodies(&events), vec![b"ok".to_vec()]);
    }

    #[test]
    fn errors_map_to_status_codes() {
        let long_header = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(2000));
        let many_headers = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (long_header.into_bytes(), 431),
            (many_headers.into_bytes(), 431),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n".to_vec(), 413),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(), 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(), 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n"
                    .to_vec(),
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc".to_vec(), 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
            (b"\x00\x01garbage\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(), 400),
        ];
        for (input, status) in cases {
            let events = read_all(&input, 4096);
            match events.last() {
                Some(Err(e)) => assert_eq!(e.status(), status, "{:?}", String::from_utf8_lossy(&input)),
                other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(&input)),
            }
        }
    }

    #[test]
    fn head_split_across_reads_at_every_point() {
        let input = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
        for cut in 0..input.len() {
            let mut reader = RequestReader::new(limits());
            let (a, b) = input.split_at(cut);
            let mut got = None;
            for part in [a, b] {
                let mut rest = part;
                while !rest.is_empty() {
                    let step = reader.advance(rest);
                    rest = &rest[step.consumed..];
                    if let Some(ev) = step.event {
                        got = Some(ev);
                    }
                }
            }
            match got {
                Some(Ok(RequestEvent::Request(r))) => assert_eq!(r.body, b"x"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    fn read_response(input: &[u8], split: usize) -> Result<Response, HttpError> {
        let mut reader = ResponseReader::new(limits());
        for piece in input.chunks(split.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let step = reader.advance(rest);
                rest = &rest[step.consumed..];
                if let Some(ev) = step.event {
                    return ev;
                }
            }
        }
        reader.finish()
    }

    #[test]
    fn responses_of_every_framing() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", b"ok", true),
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", b"until close", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b"", true),
        ];
        for (input, body, keep) in cases {
            for split in [1, 3, 4096] {
                let resp = read_response(input, split).expect("answer");
                assert_eq!(&resp.body, body);
                assert_eq!(resp.head.keep_alive, *keep);
            }
        }
    }

    #[test]
    fn regression_answer_content_length_over_max_body_is_refused() {
        // Found by the http_response fuzz target: a Content-Length answer ignored max_body.
        let mut reader = ResponseReader::new(Limits { max_head: 4096, max_body: 0 });
        let step = reader.advance(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(step.event, Some(Err(HttpError::BodyTooLarge)));
    }

    #[test]
    fn cut_answers_are_errors() {
        assert!(read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", 4096).is_err());
        assert!(read_response(b"HTTP/1.1 200 OK\r\nContent-Le", 4096).is_err());
        assert!(read_response(b"not http at all\r\n\r\n", 4096).is_err());
    }

    #[test]
    fn forward_head_drops_hop_by_hop_and_appends_forwarded_for() {
        let input = b"POST /x HTTP/1.1\r\nHost: proxy\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept-Encoding: gzip\r\nAuthorization: Bearer bn\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let events = read_all(input, 4096);
        let Some(Ok(RequestEvent::Request(req))) = events.into_iter().next() else { panic!("no request") };
        let mut out = Vec::new();
        let fwd = Forward {
            path: "/",
            host: "el:8551",
            authorization: None,
            client: "127.0.0.1",
            content_length: 0,
        };
        write_forward_head(&mut out, &req.head, &fwd);
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\nHost: el:8551\r\nAuthorization: Bearer bn\r\nContent-Type: application/json\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        let fwd = Forward { authorization: Some(b"Bearer own"), ..fwd };
        write_forward_head(&mut out, &req.head, &fwd);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("Authorization: Bearer own\r\n") && !text.contains("Bearer bn"), "{text}");
    }

    #[test]
    fn response_head_matches_version_and_persistence() {
        let mut out = Vec::new();
        write_response_head(&mut out, 200, Some(b"application/json"), 12, true, 1);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n");
        out.clear();
        write_response_head(&mut out, 502, None, 0, false, 0);
        assert_eq!(out, b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
    }

    /// A writer that takes at most `room` bytes per call and `budget` in all, then blocks.
    struct Trickle {
        got: Vec<u8>,
        room: usize,
        budget: usize,
    }

    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room).min(self.budget);
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn head_and_body_are_written_in_order_across_blocking() {
        let mut out = Trickle { got: Vec::new(), room: 3, budget: 5 };
        let mut written = 0;
        assert_eq!(write_head_body(&mut out, b"HEAD", b"body", &mut written).ok(), Some((5, false)));
        out.budget = usize::MAX;
        assert_eq!(write_head_body(&mut out, b"HEAD", b"body", &mut written).ok(), Some((3, true)));
        assert_eq!((out.got.as_slice(), written), (&b"HEADbody"[..], 8));
    }

    #[test]
    fn forwarded_for_takes_the_first_address() {
        assert_eq!(first_forwarded_for(b" 10.0.0.1 , 10.0.0.2"), Some("10.0.0.1"));
        assert_eq!(first_forwarded_for(b""), None);
    }
}
