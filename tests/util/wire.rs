//! HTTP/1.1 message framing shared by the mock EL and the BN client: heads parsed with
//! httparse, bodies framed by Content-Length, chunked coding or the connection's close.
//! Pure functions over a byte buffer; this file knows no sockets, threads or JSON.
//!
//! Parsing never consumes: a caller appends bytes to its buffer, asks again, and drains
//! `len` bytes only once a message is `Complete`.

/// Enough for any real client; more is a parse error, as it would be in the proxy.
const MAX_HEADERS: usize = 64;

/// The result of trying to parse one message from the start of a buffer.
#[derive(Debug)]
pub enum Parsed<T> {
    /// More bytes are needed.
    Partial,
    /// A whole message, `len` bytes long from the start of the buffer.
    Complete { message: T, len: usize },
    /// The bytes are not HTTP/1.1.
    Invalid(String),
}

/// A request as read whole from the wire.
#[derive(Debug)]
pub struct Request {
    /// The raw request line, e.g. `POST / HTTP/1.1`.
    pub method_line: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    /// The body with any chunked coding removed.
    pub body: Vec<u8>,
}

/// A response as read whole from the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body with any chunked coding removed.
    pub body: Vec<u8>,
}

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(format!("request head: {e}")),
    };
    let headers = owned_headers(request.headers);
    let framing = match request_framing(&headers) {
        Ok(framing) => framing,
        Err(e) => return Parsed::Invalid(e),
    };
    let version = request.version.unwrap_or(1);
    let method_line = first_line(buf);
    with_body(buf, head_len, framing, false, |body| Request { method_line, version, headers, body })
}

/// Parses one response from the start of `buf`; `eof` says the peer has closed, which
/// completes a body that is delimited by the close.
pub fn parse_response(buf: &[u8], eof: bool) -> Parsed<Response> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(format!("response head: {e}")),
    };
    let status = response.code.expect("httparse sets the code of a complete head");
    let headers = owned_headers(response.headers);
    let framing = match response_framing(status, &headers) {
        Ok(framing) => framing,
        Err(e) => return Parsed::Invalid(e),
    };
    with_body(buf, head_len, framing, eof, |body| Response { status, headers, body })
}

/// The value of the first header called `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Whether any header called `name` lists `token` among its comma-separated values, as
/// `Connection: keep-alive, close` lists `close`.
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Encodes `body` in chunks of at most `chunk_size` bytes, with the final empty chunk.
pub fn encode_chunked(body: &[u8], chunk_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk_size.max(1) * 8 + 16);
    for chunk in body.chunks(chunk_size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The standard reason phrase of the status codes tests use; anything else gets "Status".
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_string(), value)
        })
        .collect()
}

fn first_line(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    String::from_utf8_lossy(&buf[..end.unwrap_or(buf.len())]).into_owned()
}

/// A request has a body only when it announces one (RFC 9112 §6.3).
fn request_framing(headers: &[(String, String)]) -> Result<BodyFraming, String> {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Ok(BodyFraming::Chunked);
    }
    Ok(content_length(headers)?.map_or(BodyFraming::None, BodyFraming::Length))
}

/// A response without length or chunking runs until the server closes.
fn response_framing(status: u16, headers: &[(String, String)]) -> Result<BodyFraming, String> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyFraming::None);
    }
    if has_token(headers, "transfer-encoding", "chunked") {
        return Ok(BodyFraming::Chunked);
    }
    Ok(content_length(headers)?.map_or(BodyFraming::UntilClose, BodyFraming::Length))
}

fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, String> {
    header(headers, "content-length")
        .map(|v| v.trim().parse::<usize>().map_err(|_| format!("bad Content-Length {v:?}")))
        .transpose()
}

/// Completes a message whose head is `head_len` bytes once its whole body is in `buf`.
fn with_body<T>(
    buf: &[u8],
    head_len: usize,
    framing: BodyFraming,
    eof: bool,
    build: impl FnOnce(Vec<u8>) -> T,
) -> Parsed<T> {
    let rest = &buf[head_len..];
    let (body, body_len) = match framing {
        BodyFraming::None => (Vec::new(), 0),
        BodyFraming::Length(n) if rest.len() >= n => (rest[..n].to_vec(), n),
        BodyFraming::Length(_) => return Parsed::Partial,
        BodyFraming::UntilClose if eof => (rest.to_vec(), rest.len()),
        BodyFraming::UntilClose => return Parsed::Partial,
        BodyFraming::Chunked => match chunked_len(rest) {
            Parsed::Complete { len, .. } => (decode_chunked(&rest[..len]), len),
            Parsed::Partial => return Parsed::Partial,
            Parsed::Invalid(e) => return Parsed::Invalid(e),
        },
    };
    Parsed::Complete { message: build(body), len: head_len + body_len }
}

/// Finds where a chunked body (with its trailers) ends, without copying its data.
fn chunked_len(buf: &[u8]) -> Parsed<()> {
    let mut pos = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid(format!("bad chunk size at body offset {pos}")),
        };
        pos += size_len;
        if size == 0 {
            return trailers_end(buf, pos);
        }
        let Ok(size) = usize::try_from(size) else {
            return Parsed::Invalid(format!("chunk of {size} bytes"));
        };
        let data_end = pos.saturating_add(size);
        if buf.len() < data_end + 2 {
            return Parsed::Partial;
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Parsed::Invalid(format!("chunk data not followed by CRLF at {data_end}"));
        }
        pos = data_end + 2;
    }
}

fn trailers_end(buf: &[u8], pos: usize) -> Parsed<()> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(&buf[pos..], &mut slots) {
        Ok(httparse::Status::Complete((len, _))) => Parsed::Complete { message: (), len: pos + len },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Invalid(format!("chunked trailers: {e}")),
    }
}

/// Decodes a chunked body already known to be complete and valid.
fn decode_chunked(buf: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut pos = 0;
    while let Ok(httparse::Status::Complete((size_len, size))) = httparse::parse_chunk_size(&buf[pos..]) {
        pos += size_len;
        let size = usize::try_from(size).expect("chunk size was validated");
        if size == 0 {
            break;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
    body
}
