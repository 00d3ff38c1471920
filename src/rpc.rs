//! The JSON-RPC scanner: one pass over a request or answer body that validates it as strict
//! JSON (RFC 8259) and picks out the few members the proxy routes on — the method, the raw
//! `id`, the timestamp a state-changing call carries, and an answer's status, error code and
//! raw `result`. It builds no document tree and does not recurse: nesting is tracked in a
//! 128-bit stack, so memory stays fixed whatever the body holds, and bodies of tens of MiB
//! (mostly long hex strings) pass through a word-at-a-time string loop.
//!
//! It knows no HTTP, no sockets and no routing policy: it takes the bytes of one body and
//! returns byte ranges into them plus a few decoded values; what they mean for routing is
//! `policy`'s business.
//!
//! The scan is resumable: [`RequestScan`] takes a request body as it arrives, in chunks split
//! anywhere, reports the method as soon as its string is read, fails at the first byte that
//! makes the body invalid, and at the end gives exactly the whole-body verdict. The whole-body
//! functions are the same scan given every byte at once; there is one scanner.
//!
//! Semantics worth knowing:
//! - Only members of the top-level object count; a `"method"` key nested anywhere else is
//!   ignored. Keys may come in any order, so both candidate timestamps (`params[0].timestamp`
//!   and `params[1].timestamp`) are kept until the end and picked by method then. Methods
//!   are matched by prefix (`engine_newPayload`, `engine_forkchoiceUpdated`), so new versions
//!   need no change here.
//! - Keys are compared after escape decoding (`"\u006dethod"` is `"method"`).
//! - Duplicate keys: the last occurrence wins, as in `serde_json::Value`. A repeated key
//!   replaces everything learned from the earlier value, even when the new value is of a
//!   type that yields nothing (a later `"method": 1` leaves the method `None`).
//! - Decoded strings (method, status) longer than [`MAX_TEXT_LEN`] bytes are reported as
//!   `None`: no Engine API method or status comes close, and the cap bounds the allocation.

use std::fmt;
use std::ops::Range;

/// How deeply arrays and objects may nest.
///
/// Depth is the number of arrays and objects open at a point in the body: the top-level `[`
/// or `{` opens depth 1, and each nested one adds 1, so 128 nested containers are accepted
/// and the 129th opening bracket is rejected with [`ScanErrorKind::TooDeep`]. Scalars do not
/// count. serde_json has the same limit of 128 but spends one unit before checking, so it
/// accepts only 127 nested containers; see [`differential`].
pub const MAX_DEPTH: usize = 128;

/// Longest decoded method or status string reported; longer ones come back as `None`.
pub const MAX_TEXT_LEN: usize = 1024;

/// Methods whose timestamp is `params[0].timestamp` (the execution payload).
const NEW_PAYLOAD_PREFIX: &str = "engine_newPayload";
/// Methods whose timestamp is `params[1].timestamp` (the payload attributes, or `null`).
const FORKCHOICE_PREFIX: &str = "engine_forkchoiceUpdated";

/// The kind of the top-level JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A single call or answer.
    Object,
    /// A JSON-RPC batch.
    Array,
    /// A string, number or literal: valid JSON, but no JSON-RPC message.
    Other,
}

/// What the proxy needs to know about a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub shape: Shape,
    /// Top-level "method" member when it is a string, escapes decoded. None when absent or not a string.
    pub method: Option<String>,
    /// Byte range in the body of the raw JSON text of the top-level "id" value (any JSON type), None if absent.
    pub id: Option<Range<usize>>,
    /// `engine_newPayload*` -> `params[0].timestamp`; `engine_forkchoiceUpdated*` -> `params[1].timestamp`
    /// (`params[1]` may be null -> None). Parsed from a hex QUANTITY string "0x..." into u64;
    /// None when absent, not a string, not valid hex quantity, or overflowing u64. None for other methods.
    pub timestamp: Option<u64>,
    /// `engine_newPayload*`: the block `params[0]` carries, when its number, hash and timestamp
    /// are all there and well-formed (for the sync view once an EL calls it VALID). Read by the
    /// same pass, so that a large body is never scanned again for it. None for other methods.
    pub payload: Option<PayloadHead>,
}

/// What the proxy needs to know about an answer body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub shape: Shape,
    /// Byte range of the raw JSON text of the top-level "id" value, None if absent.
    pub id: Option<Range<usize>>,
    /// result.status (newPayload answers) or result.payloadStatus.status (forkchoiceUpdated answers), when a string.
    /// When both are present, result.status is taken if it is a string.
    pub status: Option<String>,
    /// error.code when it is an integer fitting i64.
    /// Written without fraction or exponent; `-0` does not count, as serde_json reads it as a float.
    pub error_code: Option<i64>,
    /// Byte range of the raw JSON text of the top-level "result" value, if present.
    pub result: Option<Range<usize>>,
}

/// Why a body is not JSON, and where the scanner noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset of the offending byte; the body's length when it ended too early.
    pub offset: usize,
    pub kind: ScanErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanErrorKind {
    /// The body ended inside a value, or before any value.
    UnexpectedEnd,
    /// A byte that cannot start or continue the expected token.
    UnexpectedByte,
    /// A raw control character (below 0x20) inside a string.
    InvalidString,
    /// A number that breaks the grammar (leading zero, missing digits).
    InvalidNumber,
    /// An unknown escape, a bad `\u` escape or a lone surrogate.
    InvalidEscape,
    /// String bytes that are not UTF-8.
    InvalidUtf8,
    /// More than [`MAX_DEPTH`] nested arrays and objects.
    TooDeep,
    /// Something other than whitespace after the top-level value.
    TrailingData,
}

impl fmt::Display for ScanErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScanErrorKind::UnexpectedEnd => "unexpected end of input",
            ScanErrorKind::UnexpectedByte => "unexpected byte",
            ScanErrorKind::InvalidString => "control character in string",
            ScanErrorKind::InvalidNumber => "invalid number",
            ScanErrorKind::InvalidEscape => "invalid escape",
            ScanErrorKind::InvalidUtf8 => "invalid UTF-8",
            ScanErrorKind::TooDeep => "nested too deeply",
            ScanErrorKind::TrailingData => "trailing data after the value",
        })
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for ScanError {}

/// Validates a request body and extracts its method, id and timestamp.
pub fn scan_request(body: &[u8]) -> Result<Request, ScanError> {
    let (shape, fields) = scan(body, Mode::Request)?;
    Ok(request_of(shape, fields))
}

/// The request fields out of everything a scan learned: the timestamp is picked by method.
fn request_of(shape: Shape, fields: Fields) -> Request {
    let new_payload = fields.method.as_deref().is_some_and(|m| m.starts_with(NEW_PAYLOAD_PREFIX));
    let timestamp = match fields.method.as_deref() {
        _ if new_payload => fields.payload_timestamp,
        Some(m) if m.starts_with(FORKCHOICE_PREFIX) => fields.attributes_timestamp,
        _ => None,
    };
    let payload = match (new_payload, fields.payload_number, fields.payload_hash, fields.payload_timestamp) {
        (true, Some(number), Some(hash), Some(timestamp)) => Some(PayloadHead { number, hash, timestamp }),
        _ => None,
    };
    Request { shape, method: fields.method, id: fields.id, timestamp, payload }
}

/// The block a newPayload call carries, as far as the sync view needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHead {
    /// `params[0].blockNumber`.
    pub number: u64,
    /// `params[0].blockHash`.
    pub hash: [u8; 32],
    /// `params[0].timestamp`.
    pub timestamp: u64,
}

/// The block number, hash and timestamp of an `engine_newPayload*` request (any version);
/// `None` for other methods, for invalid JSON, or when one of the three is missing or
/// malformed: `scan_request(body)`'s `payload`.
pub fn scan_payload_head(body: &[u8]) -> Option<PayloadHead> {
    scan_request(body).ok()?.payload
}

/// Validates an answer body and extracts its id, status, error code and result.
pub fn scan_response(body: &[u8]) -> Result<Response, ScanError> {
    let (shape, fields) = scan(body, Mode::Response)?;
    Ok(Response {
        shape,
        id: fields.id,
        status: fields.status.or(fields.payload_status),
        error_code: fields.error_code,
        result: fields.result,
    })
}

/// Parses an Engine API QUANTITY — `0x` followed by 1 to 16 hex digits — into a u64.
///
/// The spec forbids leading zeros, but they are accepted here: a timestamp written `0x0065…`
/// still names one instant, and refusing it would only lose the routing hint. The prefix must
/// be a lowercase `0x`; digits may be of either case. No digits, more than 16 digits or a
/// non-hex byte give `None`; sixteen digits always fit a u64, so the length limit is also what
/// rules out overflow.
pub fn parse_quantity(text: &[u8]) -> Option<u64> {
    let digits = text.strip_prefix(b"0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        let nibble = char::from(digit).to_digit(16)?;
        Some(value << 4 | u64::from(nibble))
    })
}

/// Which members the scan looks for: a request's or an answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Request,
    Response,
}

/// What an open array or object is, as far as extraction cares. Only the first three depths
/// can hold anything of interest; deeper containers are always `Skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Skip,
    /// The top-level object.
    Top,
    /// The top-level `params` array.
    Params,
    /// `params[0]`, the execution payload of a newPayload call.
    Payload,
    /// `params[1]`, the payload attributes of a forkchoiceUpdated call.
    Attributes,
    /// The top-level `result` object of an answer.
    Result,
    /// `result.payloadStatus` of a forkchoiceUpdated answer.
    PayloadStatus,
    /// The top-level `error` object of an answer.
    Error,
}

/// Roles are remembered for depths 0 to 3; index 0 is never used because the top-level
/// value is at depth 0 and is not a container member.
const ROLE_DEPTHS: usize = 4;

/// What the value about to be scanned means to extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Skip,
    Top,
    Method,
    Id,
    Params,
    Payload,
    Attributes,
    PayloadTimestamp,
    PayloadNumber,
    PayloadHash,
    AttributesTimestamp,
    Result,
    Status,
    PayloadStatus,
    PayloadStatusStatus,
    Error,
    Code,
}

/// Everything a scan can learn; `scan_request` and `scan_response` pick from it.
#[derive(Debug, Default)]
struct Fields {
    method: Option<String>,
    id: Option<Range<usize>>,
    payload_timestamp: Option<u64>,
    attributes_timestamp: Option<u64>,
    payload_number: Option<u64>,
    payload_hash: Option<[u8; 32]>,
    result: Option<Range<usize>>,
    status: Option<String>,
    payload_status: Option<String>,
    error_code: Option<i64>,
}

/// The content of a scanned string: its byte range without the quotes, and whether it holds
/// escapes (when it does not, the raw bytes are the decoded text).
#[derive(Debug, Clone, Copy)]
struct Text {
    start: usize,
    end: usize,
    escaped: bool,
}

/// Where a suspended scan resumes. The scan stops only at these points, each of which needs
/// no byte before `pos` again except through ranges already recorded, so feeding a body in
/// chunks never rescans: a string or number cut by a chunk's end resumes at its last
/// complete character, and only a literal, an escape or a UTF-8 character (at most twelve
/// bytes) is read again from its start.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Before a value (after optional whitespace) that means `Slot`.
    Value(Slot),
    /// After `{`: the first key or `}`.
    ObjectStart,
    /// After `[`: the first element or `]`.
    ArrayStart,
    /// After `,` in an object: the next key.
    Key,
    /// After a key: whitespace, then `:`.
    Colon(Text),
    /// Inside a string whose content starts at `start`; `slot` is `None` for a key.
    Str { slot: Option<Slot>, start: usize, escaped: bool },
    /// Inside a number that starts at `start`.
    Number { slot: Slot, start: usize, part: NumberPart },
    /// At the first byte of `true`, `false` or `null`.
    Literal(&'static [u8]),
    /// A value is complete: close the containers it completes, then `,`, or the end.
    After,
    /// The top-level value and the whitespace after it are complete.
    Done,
}

/// Where a number stands in the RFC 8259 grammar
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberPart {
    /// Before the optional minus sign.
    Sign,
    /// After the minus sign: an integer digit is required.
    Minus,
    /// After a leading `0`.
    Zero,
    /// In the integer digits after `[1-9]`.
    Integer,
    /// After `.`: a digit is required.
    Point,
    /// In the fraction digits.
    Fraction,
    /// After `e` or `E`: a sign or a digit.
    Exponent,
    /// After the exponent's sign: a digit is required.
    ExponentSign,
    /// In the exponent digits.
    ExponentDigits,
}

/// Everything a scan carries from one chunk to the next: fixed size whatever the body holds
/// (the depth is a bit stack), plus the few decoded values, each capped.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// Where the scan resumes in the body.
    pos: usize,
    mode: Mode,
    shape: Shape,
    fields: Fields,
    /// Bit `d` is set when the container at depth `d + 1` is an object, clear for an array.
    /// 128 bits hold exactly [`MAX_DEPTH`] levels.
    objects: u128,
    /// Number of arrays and objects open at `pos`.
    depth: usize,
    roles: [Role; ROLE_DEPTHS],
    /// Index of the element being scanned in the top-level `params` array.
    params_index: usize,
    /// The top-level member being scanned, and where its value starts, so that the raw
    /// range of `id` and `result` can be recorded when the value ends.
    member: Slot,
    member_start: usize,
    /// The verdict once the body is known not to be JSON: later bytes cannot change it.
    failed: Option<ScanError>,
}

impl State {
    fn new(mode: Mode) -> State {
        State {
            phase: Phase::Value(Slot::Top),
            pos: 0,
            mode,
            shape: Shape::Other,
            fields: Fields::default(),
            objects: 0,
            depth: 0,
            roles: [Role::Skip; ROLE_DEPTHS],
            params_index: 0,
            member: Slot::Skip,
            member_start: 0,
            failed: None,
        }
    }

    /// Scans `body` from where the last call stopped. `complete` says that no byte follows
    /// `body`; without it, running out of bytes suspends the scan instead of failing it.
    fn advance(&mut self, body: &[u8], complete: bool) -> Result<(), ScanError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let placeholder = State::new(self.mode);
        let mut scanner = Scanner { body, complete, state: std::mem::replace(self, placeholder) };
        let result = scanner.run();
        *self = scanner.state;
        match result {
            Err(error) if complete || error.kind != ScanErrorKind::UnexpectedEnd => {
                self.failed = Some(error.clone());
                Err(error)
            }
            _ => Ok(()),
        }
    }
}

fn scan(body: &[u8], mode: Mode) -> Result<(Shape, Fields), ScanError> {
    let mut state = State::new(mode);
    state.advance(body, true)?;
    Ok((state.shape, state.fields))
}

/// A request body scanned as its bytes arrive, to the same verdict as [`scan_request`].
///
/// The body lives in one buffer that only grows: each [`feed`](RequestScan::feed) passes all
/// of it received so far (the bytes of the last call plus any new ones), and the scan goes on
/// where it stopped, so the ranges it reports index that buffer. Its state is fixed size, with
/// the same depth limit as the whole-body scan, whatever the body holds.
#[derive(Debug)]
pub struct RequestScan {
    state: State,
}

impl Default for RequestScan {
    fn default() -> Self {
        RequestScan::new()
    }
}

impl RequestScan {
    pub fn new() -> RequestScan {
        RequestScan { state: State::new(Mode::Request) }
    }

    /// Scans the bytes `body` adds since the last call. An error is final, and the same one
    /// (offset and kind) that [`scan_request`] would give the whole body, whatever follows.
    pub fn feed(&mut self, body: &[u8]) -> Result<(), ScanError> {
        self.state.advance(body, false)
    }

    /// The top-level `method` once its string has been read whole. Provisional: a later
    /// duplicate `"method"` key replaces it (last wins), so only [`finish`](Self::finish)
    /// settles it.
    pub fn method(&self) -> Option<&str> {
        self.state.fields.method.as_deref()
    }

    /// The raw range of the top-level `id` once its value has been read whole (provisional
    /// like the method).
    pub fn id(&self) -> Option<Range<usize>> {
        self.state.fields.id.clone()
    }

    /// The verdict on the whole `body`: exactly what [`scan_request`] gives it.
    pub fn finish(mut self, body: &[u8]) -> Result<Request, ScanError> {
        self.state.advance(body, true)?;
        Ok(request_of(self.state.shape, self.state.fields))
    }
}

/// One run of the scan over the bytes received so far.
struct Scanner<'a> {
    body: &'a [u8],
    complete: bool,
    state: State,
}

impl std::ops::Deref for Scanner<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Scanner<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Scanner<'_> {
    /// The scan proper: one token per turn, driven by the phase, so that nesting costs a bit
    /// and never a stack frame, and running out of bytes anywhere leaves a phase to resume
    /// from. Running out is reported as [`ScanErrorKind::UnexpectedEnd`]; `State::advance`
    /// decides whether that is final.
    fn run(&mut self) -> Result<(), ScanError> {
        loop {
            match self.phase {
                Phase::Value(slot) => self.value(slot)?,
                Phase::ObjectStart => {
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b'}') => {
                            self.pos += 1;
                            self.close();
                            self.phase = Phase::After;
                        }
                        Some(_) => self.phase = Phase::Key,
                        None => return Err(self.end()),
                    }
                }
                Phase::ArrayStart => {
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b']') => {
                            self.pos += 1;
                            self.close();
                            self.phase = Phase::After;
                        }
                        Some(_) => self.phase = Phase::Value(self.element_slot()),
                        None => return Err(self.end()),
                    }
                }
                Phase::Key => {
                    self.skip_whitespace();
                    if self.peek() != Some(b'"') {
                        return Err(self.unexpected());
                    }
                    self.pos += 1;
                    let key = self.string(None, self.pos, false)?;
                    self.phase = Phase::Colon(key);
                }
                Phase::Colon(key) => {
                    self.skip_whitespace();
                    if self.peek() != Some(b':') {
                        return Err(self.unexpected());
                    }
                    self.pos += 1;
                    let slot = self.member_slot(key);
                    self.phase = Phase::Value(slot);
                }
                Phase::Str { slot, start, escaped } => {
                    let text = self.string(slot, start, escaped)?;
                    match slot {
                        None => self.phase = Phase::Colon(text),
                        Some(slot) => {
                            self.store_text(slot, text);
                            self.phase = Phase::After;
                        }
                    }
                }
                Phase::Number { slot, start, part } => {
                    self.number(slot, start, part)?;
                    if slot == Slot::Code {
                        self.fields.error_code = self.body.get(start..self.pos).and_then(parse_integer);
                    }
                    self.phase = Phase::After;
                }
                Phase::Literal(word) => {
                    self.literal(word)?;
                    self.phase = Phase::After;
                }
                Phase::After => {
                    if self.after()? {
                        return Ok(());
                    }
                }
                Phase::Done => return Ok(()),
            }
        }
    }

    /// Starts the value at `pos` (after whitespace).
    fn value(&mut self, slot: Slot) -> Result<(), ScanError> {
        self.skip_whitespace();
        if matches!(slot, Slot::Id | Slot::Result) {
            self.member_start = self.pos;
        }
        let byte = self.peek().ok_or_else(|| self.end())?;
        if slot == Slot::Top {
            self.shape = match byte {
                b'{' => Shape::Object,
                b'[' => Shape::Array,
                _ => Shape::Other,
            };
        }
        self.phase = match byte {
            b'{' => {
                self.open(true, object_role(slot))?;
                Phase::ObjectStart
            }
            b'[' => {
                let role = if slot == Slot::Params { Role::Params } else { Role::Skip };
                self.open(false, role)?;
                Phase::ArrayStart
            }
            b'"' => {
                // Most values are strings: read here, without a turn of the phase loop.
                self.pos += 1;
                let text = self.string(Some(slot), self.pos, false)?;
                self.store_text(slot, text);
                Phase::After
            }
            b'-' | b'0'..=b'9' => Phase::Number { slot, start: self.pos, part: NumberPart::Sign },
            b't' => Phase::Literal(&b"true"[..]),
            b'f' => Phase::Literal(&b"false"[..]),
            b'n' => Phase::Literal(&b"null"[..]),
            _ => return Err(self.error(ScanErrorKind::UnexpectedByte)),
        };
        Ok(())
    }

    /// After a complete value: closes the container it completes, or goes on to the next
    /// member or element; `Ok(true)` once the top-level value and its trailing whitespace
    /// are complete.
    fn after(&mut self) -> Result<bool, ScanError> {
        if self.depth == 0 {
            self.skip_whitespace();
            if self.pos < self.body.len() {
                return Err(self.error(ScanErrorKind::TrailingData));
            }
            if !self.complete {
                // More whitespace, or trailing data, may follow.
                return Err(self.end());
            }
            self.phase = Phase::Done;
            return Ok(true);
        }
        if self.depth == 1 {
            self.end_member();
        }
        self.skip_whitespace();
        let in_object = self.in_object();
        match self.peek() {
            Some(b',') if in_object => {
                self.pos += 1;
                self.phase = Phase::Key;
            }
            Some(b',') => {
                self.pos += 1;
                if self.role() == Role::Params {
                    self.params_index = self.params_index.saturating_add(1);
                }
                self.phase = Phase::Value(self.element_slot());
            }
            Some(b'}') if in_object => {
                self.pos += 1;
                self.close();
            }
            Some(b']') if !in_object => {
                self.pos += 1;
                self.close();
            }
            Some(_) => return Err(self.error(ScanErrorKind::UnexpectedByte)),
            None => return Err(self.end()),
        }
        Ok(false)
    }

    fn peek(&self) -> Option<u8> {
        self.body.get(self.pos).copied()
    }

    fn error(&self, kind: ScanErrorKind) -> ScanError {
        ScanError { offset: self.pos, kind }
    }

    fn end(&self) -> ScanError {
        ScanError { offset: self.body.len(), kind: ScanErrorKind::UnexpectedEnd }
    }

    /// The error for a byte that is not the one required here, or for its absence.
    fn unexpected(&self) -> ScanError {
        match self.peek() {
            Some(_) => self.error(ScanErrorKind::UnexpectedByte),
            None => self.end(),
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Opens the array or object whose bracket is at `pos`.
    fn open(&mut self, object: bool, role: Role) -> Result<(), ScanError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(ScanErrorKind::TooDeep));
        }
        // The check above keeps the shift below 128, so no bit is lost.
        let bit = 1u128.wrapping_shl(self.depth as u32);
        if object {
            self.objects |= bit;
        } else {
            self.objects &= !bit;
        }
        self.depth += 1;
        let depth = self.depth;
        if let Some(slot) = self.roles.get_mut(depth) {
            *slot = role;
        }
        if role == Role::Params {
            self.params_index = 0;
        }
        self.pos += 1;
        Ok(())
    }

    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn in_object(&self) -> bool {
        let below = self.depth.saturating_sub(1) as u32;
        self.objects.wrapping_shr(below) & 1 == 1
    }

    fn role(&self) -> Role {
        self.roles.get(self.depth).copied().unwrap_or(Role::Skip)
    }

    /// Tells what the value of the member whose key was `key` means.
    fn member_slot(&mut self, key: Text) -> Slot {
        let role = self.role();
        if role == Role::Skip {
            return Slot::Skip;
        }
        let body = self.body;
        let mut buffer = [0u8; 16];
        let name = if key.escaped {
            // Keys longer than the buffer are none of the names looked for.
            body.get(key.start..key.end)
                .and_then(|raw| decode(raw, &mut buffer))
                .and_then(|len| buffer.get(..len))
        } else {
            body.get(key.start..key.end)
        };
        let slot = name.map_or(Slot::Skip, |name| classify(role, self.mode, name));
        self.forget(slot);
        if self.depth == 1 {
            self.member = slot;
        }
        slot
    }

    /// What the next element of the innermost array means.
    fn element_slot(&self) -> Slot {
        match (self.role(), self.params_index) {
            (Role::Params, 0) => Slot::Payload,
            (Role::Params, 1) => Slot::Attributes,
            _ => Slot::Skip,
        }
    }

    /// Drops what an earlier member with the same key taught, because the last duplicate
    /// wins and the new value may yield nothing.
    fn forget(&mut self, slot: Slot) {
        let fields = &mut self.fields;
        match slot {
            Slot::Method => fields.method = None,
            Slot::Id => fields.id = None,
            Slot::Params => {
                fields.payload_timestamp = None;
                fields.attributes_timestamp = None;
                fields.payload_number = None;
                fields.payload_hash = None;
            }
            Slot::PayloadTimestamp => fields.payload_timestamp = None,
            Slot::PayloadNumber => fields.payload_number = None,
            Slot::PayloadHash => fields.payload_hash = None,
            Slot::AttributesTimestamp => fields.attributes_timestamp = None,
            Slot::Result => {
                fields.result = None;
                fields.status = None;
                fields.payload_status = None;
            }
            Slot::Status => fields.status = None,
            Slot::PayloadStatus | Slot::PayloadStatusStatus => fields.payload_status = None,
            Slot::Error | Slot::Code => fields.error_code = None,
            Slot::Skip | Slot::Top | Slot::Payload | Slot::Attributes => {}
        }
    }

    /// Called when a member value of the top-level object has just ended at `pos`.
    fn end_member(&mut self) {
        let range = self.member_start..self.pos;
        match self.member {
            Slot::Id => self.fields.id = Some(range),
            Slot::Result => self.fields.result = Some(range),
            _ => {}
        }
        self.member = Slot::Skip;
    }

    fn store_text(&mut self, slot: Slot, text: Text) {
        let body = self.body;
        let Some(raw) = body.get(text.start..text.end) else {
            return;
        };
        let fields = &mut self.state.fields;
        match slot {
            Slot::Method => fields.method = decode_string(raw, text.escaped),
            Slot::Status => fields.status = decode_string(raw, text.escaped),
            Slot::PayloadStatusStatus => fields.payload_status = decode_string(raw, text.escaped),
            Slot::PayloadTimestamp => fields.payload_timestamp = decode_quantity(raw, text.escaped),
            Slot::AttributesTimestamp => {
                fields.attributes_timestamp = decode_quantity(raw, text.escaped);
            }
            Slot::PayloadNumber => fields.payload_number = decode_quantity(raw, text.escaped),
            // Block hashes are plain hex; an escaped one is not worth decoding.
            Slot::PayloadHash => fields.payload_hash = (!text.escaped).then(|| parse_hash(raw)).flatten(),
            _ => {}
        }
    }

    /// Validates string content from `pos` (the content starts at `start`) and moves past
    /// the closing quote. When it fails, `pos` and the phase keep the last complete
    /// character, so that a scan suspended for want of bytes resumes there.
    fn string(&mut self, slot: Option<Slot>, start: usize, mut escaped: bool) -> Result<Text, ScanError> {
        let body = self.body;
        let mut i = self.pos;
        let failure = loop {
            i = skip_plain(body, i);
            let step = match body.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(Text { start, end: i, escaped });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape(i)
                }
                Some(&byte) if byte < 0x20 => Err(at(i, ScanErrorKind::InvalidString)),
                Some(_) => self.utf8_char(i),
                None => Err(self.end()),
            };
            match step {
                Ok(next) => i = next,
                Err(error) => break error,
            }
        };
        self.pos = i;
        self.phase = Phase::Str { slot, start, escaped };
        Err(failure)
    }

    /// Validates the escape whose backslash is at `i`; returns the index after it. A `\u`
    /// escape of a surrogate must be a high surrogate followed by an escaped low one, because
    /// a lone surrogate cannot be decoded to a Rust `String` (serde_json rejects it too).
    fn escape(&self, i: usize) -> Result<usize, ScanError> {
        match self.body.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => match self.hex4(i + 2)? {
                0xD800..=0xDBFF => match (self.body.get(i + 6), self.body.get(i + 7)) {
                    (Some(b'\\'), Some(b'u')) => match self.hex4(i + 8)? {
                        0xDC00..=0xDFFF => Ok(i + 12),
                        _ => Err(at(i + 6, ScanErrorKind::InvalidEscape)),
                    },
                    (None, _) | (Some(b'\\'), None) => Err(self.end()),
                    _ => Err(at(i, ScanErrorKind::InvalidEscape)),
                },
                0xDC00..=0xDFFF => Err(at(i, ScanErrorKind::InvalidEscape)),
                _ => Ok(i + 6),
            },
            Some(_) => Err(at(i + 1, ScanErrorKind::InvalidEscape)),
            None => Err(self.end()),
        }
    }

    /// Reads the four hex digits of a `\u` escape starting at `i`.
    fn hex4(&self, i: usize) -> Result<u32, ScanError> {
        let mut value = 0;
        for k in i..i + 4 {
            let Some(&digit) = self.body.get(k) else {
                return Err(self.end());
            };
            let Some(nibble) = char::from(digit).to_digit(16) else {
                return Err(at(k, ScanErrorKind::InvalidEscape));
            };
            value = value << 4 | nibble;
        }
        Ok(value)
    }

    /// Validates the multi-byte UTF-8 character whose lead byte is at `i`; returns the index
    /// after it. The standard library's validator decides, so overlong forms, surrogates and
    /// code points above U+10FFFF are refused exactly as `str` refuses them.
    fn utf8_char(&self, i: usize) -> Result<usize, ScanError> {
        let width = match self.body.get(i) {
            Some(0xC2..=0xDF) => 2,
            Some(0xE0..=0xEF) => 3,
            Some(0xF0..=0xF4) => 4,
            _ => return Err(at(i, ScanErrorKind::InvalidUtf8)),
        };
        match self.body.get(i..i + width) {
            Some(bytes) if std::str::from_utf8(bytes).is_ok() => Ok(i + width),
            Some(_) => Err(at(i, ScanErrorKind::InvalidUtf8)),
            None => {
                // The body ends inside the character: that is an early end if what is there
                // could still begin one, and bad UTF-8 otherwise. (A byte that is no
                // continuation makes the character bad whatever follows, so a scan fed in
                // chunks fails here exactly as the whole-body scan does.)
                let tail = self.body.get(i + 1..).unwrap_or_default();
                if tail.iter().all(|&b| (0x80..=0xBF).contains(&b)) {
                    Err(self.end())
                } else {
                    Err(at(i, ScanErrorKind::InvalidUtf8))
                }
            }
        }
    }

    /// Validates the number that starts at `start`, from `pos` where `part` of the grammar
    /// left off, and moves `pos` past it. The end of the bytes ends the number only when the
    /// body is complete; otherwise more digits may follow, and the part is kept to resume.
    fn number(&mut self, slot: Slot, start: usize, mut part: NumberPart) -> Result<(), ScanError> {
        let body = self.body;
        let mut i = self.pos;
        let outcome = loop {
            let byte = body.get(i).copied();
            let next = match (part, byte) {
                (NumberPart::Sign, Some(b'-')) => NumberPart::Minus,
                (NumberPart::Sign | NumberPart::Minus, Some(b'0')) => NumberPart::Zero,
                (NumberPart::Sign | NumberPart::Minus, Some(b'1'..=b'9')) => NumberPart::Integer,
                (NumberPart::Zero, Some(b'0'..=b'9')) => break Err(at(i, ScanErrorKind::InvalidNumber)),
                (NumberPart::Integer, Some(b'0'..=b'9')) => {
                    i = skip_digits(body, i);
                    continue;
                }
                (NumberPart::Zero | NumberPart::Integer, Some(b'.')) => NumberPart::Point,
                (NumberPart::Point, Some(b'0'..=b'9')) => NumberPart::Fraction,
                (NumberPart::Fraction, Some(b'0'..=b'9')) => {
                    i = skip_digits(body, i);
                    continue;
                }
                (NumberPart::Zero | NumberPart::Integer | NumberPart::Fraction, Some(b'e' | b'E')) => {
                    NumberPart::Exponent
                }
                (NumberPart::Exponent, Some(b'+' | b'-')) => NumberPart::ExponentSign,
                (NumberPart::Exponent | NumberPart::ExponentSign, Some(b'0'..=b'9')) => {
                    NumberPart::ExponentDigits
                }
                (NumberPart::ExponentDigits, Some(b'0'..=b'9')) => {
                    i = skip_digits(body, i);
                    continue;
                }
                (
                    NumberPart::Zero
                    | NumberPart::Integer
                    | NumberPart::Fraction
                    | NumberPart::ExponentDigits,
                    Some(_),
                ) => break Ok(()),
                (
                    NumberPart::Zero
                    | NumberPart::Integer
                    | NumberPart::Fraction
                    | NumberPart::ExponentDigits,
                    None,
                ) if self.complete => break Ok(()),
                (_, None) => break Err(self.end()),
                (_, Some(_)) => break Err(at(i, ScanErrorKind::InvalidNumber)),
            };
            part = next;
            i += 1;
        };
        self.pos = i;
        if outcome.is_err() {
            self.phase = Phase::Number { slot, start, part };
        }
        outcome
    }

    /// Checks `word` at `pos` and moves past it; a word cut by the end of the bytes is read
    /// again from its start.
    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        for (k, &expected) in word.iter().enumerate() {
            match self.body.get(self.pos + k) {
                Some(&byte) if byte == expected => {}
                Some(_) => return Err(at(self.pos + k, ScanErrorKind::UnexpectedByte)),
                None => return Err(self.end()),
            }
        }
        self.pos += word.len();
        Ok(())
    }
}

fn at(offset: usize, kind: ScanErrorKind) -> ScanError {
    ScanError { offset, kind }
}

fn object_role(slot: Slot) -> Role {
    match slot {
        Slot::Top => Role::Top,
        Slot::Payload => Role::Payload,
        Slot::Attributes => Role::Attributes,
        Slot::Result => Role::Result,
        Slot::PayloadStatus => Role::PayloadStatus,
        Slot::Error => Role::Error,
        _ => Role::Skip,
    }
}

/// What the value of member `key` of an object with `role` means.
fn classify(role: Role, mode: Mode, key: &[u8]) -> Slot {
    match (role, mode, key) {
        (Role::Top, _, b"id") => Slot::Id,
        (Role::Top, Mode::Request, b"method") => Slot::Method,
        (Role::Top, Mode::Request, b"params") => Slot::Params,
        (Role::Top, Mode::Response, b"result") => Slot::Result,
        (Role::Top, Mode::Response, b"error") => Slot::Error,
        (Role::Payload, _, b"timestamp") => Slot::PayloadTimestamp,
        (Role::Payload, _, b"blockNumber") => Slot::PayloadNumber,
        (Role::Payload, _, b"blockHash") => Slot::PayloadHash,
        (Role::Attributes, _, b"timestamp") => Slot::AttributesTimestamp,
        (Role::Result, _, b"status") => Slot::Status,
        (Role::Result, _, b"payloadStatus") => Slot::PayloadStatus,
        (Role::PayloadStatus, _, b"status") => Slot::PayloadStatusStatus,
        (Role::Error, _, b"code") => Slot::Code,
        _ => Slot::Skip,
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes tested at once by `skip_plain`'s first loop.
const PLAIN_BLOCK: usize = 64;

/// Returns the index of the first byte at or after `i` that a string loop must look at —
/// `"`, `\`, a control character or a non-ASCII byte — or the body's length.
///
/// This is the hot loop of the scanner: an Engine API body is mostly hex strings. Blocks of
/// [`PLAIN_BLOCK`] bytes are tested whole first (vectorized: about 22 GiB/s on an 8 MiB
/// newPayload, three times the word loop alone); the block with a stop in it, and the tail,
/// go eight bytes per step with word arithmetic. In each term of the word test a byte's high
/// bit is set when the byte matches, and bits can be set spuriously only above a real match,
/// so the lowest set bit is always the first match.
fn skip_plain(body: &[u8], mut i: usize) -> usize {
    // Long runs (hex strings) a block at a time: the block's test has no early exit, so the
    // compiler turns it into vector compares; the block holding the stop is then searched by
    // the word loop below.
    while let Some(block) = body.get(i..i + PLAIN_BLOCK) {
        let stops = block.iter().fold(0u8, |acc, &b| {
            acc | u8::from(b == b'"') | u8::from(b == b'\\') | u8::from(b.wrapping_sub(0x20) >= 0x60)
        });
        if stops != 0 {
            break;
        }
        i += PLAIN_BLOCK;
    }
    while let Some(chunk) = body.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(bytes);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | word.wrapping_sub(ONES * 0x20)
            | word;
        let found = found & HIGHS;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&byte) = body.get(i) {
        if byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte) {
            break;
        }
        i += 1;
    }
    i
}

fn skip_digits(body: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = body.get(i) {
        i += 1;
    }
    i
}

/// Decodes the escapes of validated string content `raw` into `out`; returns the decoded
/// length, or `None` when it does not fit (or, defensively, when `raw` is malformed).
fn decode(raw: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let mut i = 0;
    while let Some(&byte) = raw.get(i) {
        if byte != b'\\' {
            put(out, &mut len, &[byte])?;
            i += 1;
            continue;
        }
        let simple = match *raw.get(i + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let high = hex_value(raw.get(i + 2..i + 6)?)?;
                let code = if (0xD800..0xDC00).contains(&high) {
                    let low = hex_value(raw.get(i + 8..i + 12)?)?;
                    i += 12;
                    0x10000 + ((high - 0xD800) << 10) + low.checked_sub(0xDC00)?
                } else {
                    i += 6;
                    high
                };
                let mut utf8 = [0u8; 4];
                put(out, &mut len, char::from_u32(code)?.encode_utf8(&mut utf8).as_bytes())?;
                continue;
            }
            _ => return None,
        };
        put(out, &mut len, &[simple])?;
        i += 2;
    }
    Some(len)
}

/// Appends `bytes` to the first `len` bytes of `out`, or fails when they do not fit.
fn put(out: &mut [u8], len: &mut usize, bytes: &[u8]) -> Option<()> {
    out.get_mut(*len..*len + bytes.len())?.copy_from_slice(bytes);
    *len += bytes.len();
    Some(())
}

fn hex_value(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, &digit| Some(value << 4 | char::from(digit).to_digit(16)?))
}

/// Decodes validated string content into an owned string, `None` beyond [`MAX_TEXT_LEN`].
fn decode_string(raw: &[u8], escaped: bool) -> Option<String> {
    if !escaped {
        if raw.len() > MAX_TEXT_LEN {
            return None;
        }
        return std::str::from_utf8(raw).ok().map(str::to_owned);
    }
    let mut buffer = [0u8; MAX_TEXT_LEN];
    let len = decode(raw, &mut buffer)?;
    String::from_utf8(buffer.get(..len)?.to_vec()).ok()
}

/// Decodes a validated timestamp string and parses it as a QUANTITY. A QUANTITY is at most
/// 18 bytes, so anything that does not fit the small buffer is no QUANTITY.
fn decode_quantity(raw: &[u8], escaped: bool) -> Option<u64> {
    if !escaped {
        return parse_quantity(raw);
    }
    let mut buffer = [0u8; 32];
    let len = decode(raw, &mut buffer)?;
    parse_quantity(buffer.get(..len)?)
}

/// A 32-byte hash written as `0x` and 64 hex digits (either case).
fn parse_hash(text: &[u8]) -> Option<[u8; 32]> {
    let digits = text.strip_prefix(b"0x")?;
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = (high << 4 | low) as u8;
    }
    Some(hash)
}

/// Reads validated number text as an i64 the way serde_json's `Value::as_i64` would: only
/// integers written without fraction or exponent, and not `-0` (serde_json makes it a float).
fn parse_integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    let magnitude = digits.iter().try_fold(0u64, |value, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    if negative {
        if magnitude == 0 {
            return None;
        }
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// The scanner checked against serde_json, for tests and the fuzz target.
///
/// Each `check_*` function scans a body with this module and parses it with
/// `serde_json::from_slice::<serde_json::Value>`, then requires both to accept or both to
/// reject, and on acceptance the same shape and fields, derived from the `Value` by the rules
/// the scanner documents (top-level members only, last duplicate wins, method and status
/// capped at [`MAX_TEXT_LEN`] bytes, timestamp picked by method prefix).
///
/// Known differences, and the only ones tolerated:
/// - Depth: the scanner accepts [`MAX_DEPTH`] (128) nested arrays and objects; serde_json
///   spends one unit of its limit of 128 before checking, so it accepts only 127. A body
///   nested exactly 128 deep is accepted here and rejected there ("recursion limit exceeded").
/// - Number range: the scanner checks the number grammar only, as RFC 8259 does; serde_json
///   (without `arbitrary_precision`) turns large numbers into f64 and rejects those that
///   overflow, such as `1e400` or a 400-digit integer ("number out of range"). The proxy
///   forwards the bytes unchanged, so it has no reason to refuse them.
#[doc(hidden)]
pub mod differential {
    use super::{
        parse_quantity, scan_request, scan_response, RequestScan, ScanError, Shape, FORKCHOICE_PREFIX,
        MAX_DEPTH, MAX_TEXT_LEN, NEW_PAYLOAD_PREFIX,
    };
    use serde_json::{Map, Value};
    use std::ops::Range;

    /// Compares [`scan_request`] with serde_json on `body`.
    pub fn check_request(body: &[u8]) -> Result<(), String> {
        let ours = scan_request(body);
        let Some(value) = reference(body, ours.as_ref().err())? else {
            return Ok(());
        };
        let ours = ours.map_err(|e| format!("scanner rejected an accepted body: {e}"))?;
        same("shape", &ours.shape, &shape(&value))?;
        let members = value.as_object();
        let method = short_text(member(members, "method"));
        same("method", &ours.method.as_deref(), &method)?;
        same_raw("id", body, &ours.id, members.and_then(|m| m.get("id")))?;
        let position = match method {
            Some(m) if m.starts_with(NEW_PAYLOAD_PREFIX) => Some(0),
            Some(m) if m.starts_with(FORKCHOICE_PREFIX) => Some(1),
            _ => None,
        };
        let timestamp = position
            .and_then(|p| member(members, "params")?.as_array()?.get(p))
            .and_then(|param| param.as_object()?.get("timestamp")?.as_str())
            .and_then(|text| parse_quantity(text.as_bytes()));
        same("timestamp", &ours.timestamp, &timestamp)
    }

    /// Compares [`RequestScan`] fed `body` in chunks that end at `cuts` (any order, values
    /// beyond the body clamped) with [`scan_request`] on the whole body: the same verdict and
    /// fields, an error reported early being that verdict, and a method reported early being
    /// the final one unless a later duplicate key replaced it.
    pub fn check_chunked(body: &[u8], cuts: &[usize]) -> Result<(), String> {
        let whole = scan_request(body);
        let mut ends: Vec<usize> = cuts.iter().map(|&cut| cut.min(body.len())).collect();
        ends.sort_unstable();
        // Only then can no later key replace a method seen early.
        let one_method_key =
            body.windows(8).filter(|w| w == b"\"method\"").count() == 1 && !body.contains(&b'\\');
        let mut scan = RequestScan::new();
        for end in ends {
            let prefix = body.get(..end).unwrap_or_default();
            if let Err(early) = scan.feed(prefix) {
                if whole.as_ref().err() != Some(&early) {
                    return Err(format!("chunks to {end}: error {early:?}, whole body {whole:?}"));
                }
                if early.kind == super::ScanErrorKind::UnexpectedEnd {
                    return Err(format!("chunks to {end}: the end of a chunk taken for the end of the body"));
                }
                break;
            }
            if let (Some(early), Ok(whole), true) = (scan.method(), &whole, one_method_key) {
                if whole.method.as_deref() != Some(early) {
                    return Err(format!("chunks to {end}: method {early:?}, whole body {:?}", whole.method));
                }
            }
        }
        let chunked = scan.finish(body);
        if chunked == whole {
            Ok(())
        } else {
            Err(format!("chunked {chunked:?}, whole body {whole:?}"))
        }
    }

    /// Compares [`scan_response`] with serde_json on `body`.
    pub fn check_response(body: &[u8]) -> Result<(), String> {
        let ours = scan_response(body);
        let Some(value) = reference(body, ours.as_ref().err())? else {
            return Ok(());
        };
        let ours = ours.map_err(|e| format!("scanner rejected an accepted body: {e}"))?;
        same("shape", &ours.shape, &shape(&value))?;
        let members = value.as_object();
        same_raw("id", body, &ours.id, members.and_then(|m| m.get("id")))?;
        same_raw("result", body, &ours.result, member(members, "result"))?;
        let result = member(members, "result").and_then(Value::as_object);
        let direct = short_text(member(result, "status"));
        let nested = short_text(member(result, "payloadStatus").and_then(|p| p.get("status")));
        same("status", &ours.status.as_deref(), &direct.or(nested))?;
        let code = member(members, "error").and_then(|e| e.get("code")).and_then(Value::as_i64);
        same("error code", &ours.error_code, &code)
    }

    /// Parses `body` with serde_json and settles acceptance: `Ok(Some(value))` when both
    /// accept, `Ok(None)` when both reject or the difference is a documented one.
    fn reference(body: &[u8], ours: Option<&ScanError>) -> Result<Option<Value>, String> {
        match (serde_json::from_slice::<Value>(body), ours) {
            (Ok(value), None) => Ok(Some(value)),
            (Err(_), Some(_)) => Ok(None),
            (Err(e), None) => {
                let message = e.to_string();
                let tolerated = message.starts_with("number out of range")
                    || (message.starts_with("recursion limit exceeded") && nesting(body) == MAX_DEPTH);
                if tolerated {
                    Ok(None)
                } else {
                    Err(format!("scanner accepted, serde_json rejected: {e}"))
                }
            }
            (Ok(_), Some(e)) => Err(format!("scanner rejected ({e}), serde_json accepted")),
        }
    }

    /// A string value the scanner reports, that is one no longer than [`MAX_TEXT_LEN`].
    fn short_text(value: Option<&Value>) -> Option<&str> {
        value?.as_str().filter(|text| text.len() <= MAX_TEXT_LEN)
    }

    fn member<'v>(members: Option<&'v Map<String, Value>>, key: &str) -> Option<&'v Value> {
        members?.get(key)
    }

    fn shape(value: &Value) -> Shape {
        match value {
            Value::Object(_) => Shape::Object,
            Value::Array(_) => Shape::Array,
            _ => Shape::Other,
        }
    }

    fn same<T: PartialEq + std::fmt::Debug>(what: &str, ours: &T, theirs: &T) -> Result<(), String> {
        if ours == theirs {
            Ok(())
        } else {
            Err(format!("{what}: scanner {ours:?}, serde_json {theirs:?}"))
        }
    }

    /// Requires the raw range found by the scanner to hold the value serde_json found.
    fn same_raw(
        what: &str,
        body: &[u8],
        ours: &Option<Range<usize>>,
        theirs: Option<&Value>,
    ) -> Result<(), String> {
        match (ours, theirs) {
            (None, None) => Ok(()),
            (Some(range), Some(theirs)) => {
                let raw = body
                    .get(range.clone())
                    .ok_or_else(|| format!("{what}: range {range:?} outside the body"))?;
                let ours = serde_json::from_slice::<Value>(raw)
                    .map_err(|e| format!("{what}: raw range {range:?} is not a value: {e}"))?;
                same(what, &ours, theirs)
            }
            _ => Err(format!("{what}: scanner {ours:?}, serde_json {theirs:?}")),
        }
    }

    /// Deepest nesting of arrays and objects in a body already known to be valid JSON.
    fn nesting(body: &[u8]) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &byte in body {
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }
}

#[cfg(test)]
mod tests {
    use super::differential::{check_chunked, check_request, check_response};
    use super::*;
    use serde_json::Value;

    const FCU: &[u8] = include_bytes!("../tests/fixtures/fcu.json");
    const NEW_PAYLOAD_1K: &[u8] = include_bytes!("../tests/fixtures/newpayload-1k.json");
    const NEW_PAYLOAD_128K: &[u8] = include_bytes!("../tests/fixtures/newpayload-128k.json");

    macro_rules! lodestar {
        ($name:literal) => {
            include_bytes!(concat!("../tests/fixtures/lodestar-1.5.1/", $name, ".json"))
        };
    }

    /// A request sample: (name, body, method, raw id, timestamp).
    type RequestSample = (&'static str, &'static [u8], &'static str, &'static str, Option<u64>);
    /// An answer sample: (name, body, raw id, status, error code, raw result starts with).
    type ResponseSample =
        (&'static str, &'static [u8], &'static str, Option<&'static str>, Option<i64>, Option<&'static str>);
    /// A request case: (body, method, raw id, timestamp).
    type RequestCase = (&'static str, Option<&'static str>, Option<&'static str>, Option<u64>);
    /// An answer case: (body, status, error code, raw result).
    type ResponseCase = (&'static str, Option<&'static str>, Option<i64>, Option<&'static str>);

    const REQUEST_SAMPLES: &[RequestSample] = &[
        ("fcu", FCU, "engine_forkchoiceUpdatedV3", "2", Some(0x66ed3e63)),
        ("newpayload-1k", NEW_PAYLOAD_1K, "engine_newPayloadV3", "1", Some(0x66ed3e57)),
        ("newpayload-128k", NEW_PAYLOAD_128K, "engine_newPayloadV3", "1", Some(0x66ed3e57)),
        (
            "lodestar exchangeTransitionConfigurationV1",
            lodestar!("engine_exchangeTransitionConfigurationV1.request"),
            "engine_exchangeTransitionConfigurationV1",
            "1",
            None,
        ),
        (
            "lodestar forkchoiceUpdatedV2 no_attrs",
            lodestar!("engine_forkchoiceUpdatedV2.no_attrs.request"),
            "engine_forkchoiceUpdatedV2",
            "41",
            None,
        ),
        (
            "lodestar forkchoiceUpdatedV2 with_attrs",
            lodestar!("engine_forkchoiceUpdatedV2.with_attrs.request"),
            "engine_forkchoiceUpdatedV2",
            "42",
            Some(0x6b012238),
        ),
        (
            "lodestar getPayloadV2",
            lodestar!("engine_getPayloadV2.request"),
            "engine_getPayloadV2",
            "43",
            None,
        ),
        (
            "lodestar newPayloadV2",
            lodestar!("engine_newPayloadV2.request"),
            "engine_newPayloadV2",
            "40",
            Some(0x6b012236),
        ),
        (
            "lodestar newPayloadV2 with_txs",
            lodestar!("engine_newPayloadV2.with_txs.request"),
            "engine_newPayloadV2",
            "20",
            Some(0x6b01222c),
        ),
    ];

    const RESPONSE_SAMPLES: &[ResponseSample] = &[
        (
            "exchangeTransitionConfigurationV1",
            lodestar!("engine_exchangeTransitionConfigurationV1.response"),
            "1",
            None,
            Some(-32601),
            None,
        ),
        (
            "forkchoiceUpdatedV2 no_attrs",
            lodestar!("engine_forkchoiceUpdatedV2.no_attrs.response"),
            "41",
            Some("VALID"),
            None,
            Some(r#"{"payloadStatus":{"status":"VALID""#),
        ),
        (
            "forkchoiceUpdatedV2 with_attrs",
            lodestar!("engine_forkchoiceUpdatedV2.with_attrs.response"),
            "42",
            Some("VALID"),
            None,
            Some(r#"{"payloadStatus""#),
        ),
        (
            "getPayloadV2",
            lodestar!("engine_getPayloadV2.response"),
            "43",
            None,
            None,
            Some(r#"{"executionPayload":{"blockNumber":"0xb""#),
        ),
        (
            "newPayloadV2",
            lodestar!("engine_newPayloadV2.response"),
            "40",
            Some("VALID"),
            None,
            Some(r#"{"status":"VALID""#),
        ),
        (
            "newPayloadV2 with_txs",
            lodestar!("engine_newPayloadV2.with_txs.response"),
            "20",
            Some("VALID"),
            None,
            Some(r#"{"status":"VALID""#),
        ),
    ];

    /// The raw text a range points at.
    fn raw<'b>(body: &'b [u8], range: &Option<Range<usize>>) -> Option<&'b str> {
        let range = range.clone()?;
        std::str::from_utf8(body.get(range)?).ok()
    }

    #[track_caller]
    fn request(body: &[u8]) -> Request {
        match scan_request(body) {
            Ok(request) => request,
            Err(e) => panic!("{e} in {}", String::from_utf8_lossy(body)),
        }
    }

    #[track_caller]
    fn response(body: &[u8]) -> Response {
        match scan_response(body) {
            Ok(response) => response,
            Err(e) => panic!("{e} in {}", String::from_utf8_lossy(body)),
        }
    }

    /// Rebuilds an object body with its top-level members in `order` (all must be named).
    fn with_key_order(body: &[u8], order: &[&str]) -> Vec<u8> {
        let value: Value = serde_json::from_slice(body).expect("sample is JSON");
        let members = value.as_object().expect("sample is an object");
        let parts: Vec<String> = order
            .iter()
            .filter_map(|key| members.get(*key).map(|v| format!("{}:{v}", Value::from(*key))))
            .collect();
        assert_eq!(parts.len(), members.len(), "order {order:?} misses members");
        format!("{{{}}}", parts.join(",")).into_bytes()
    }

    #[test]
    fn request_samples() {
        for &(name, body, method, id, timestamp) in REQUEST_SAMPLES {
            let scanned = request(body);
            assert_eq!(scanned.shape, Shape::Object, "{name}");
            assert_eq!(scanned.method.as_deref(), Some(method), "{name}");
            assert_eq!(raw(body, &scanned.id), Some(id), "{name}");
            assert_eq!(scanned.timestamp, timestamp, "{name}");
        }
    }

    #[test]
    fn response_samples() {
        for &(name, body, id, status, error_code, result) in RESPONSE_SAMPLES {
            let scanned = response(body);
            assert_eq!(scanned.shape, Shape::Object, "{name}");
            assert_eq!(raw(body, &scanned.id), Some(id), "{name}");
            assert_eq!(scanned.status.as_deref(), status, "{name}");
            assert_eq!(scanned.error_code, error_code, "{name}");
            match (raw(body, &scanned.result), result) {
                (Some(text), Some(prefix)) => {
                    assert!(text.starts_with(prefix), "{name}: {text}");
                    assert!(text.ends_with('}'), "{name}: {text}");
                }
                (text, prefix) => assert_eq!(text, prefix, "{name}"),
            }
        }
    }

    #[test]
    fn any_key_order() {
        let orders: &[&[&str]] = &[
            &["jsonrpc", "id", "method", "params"], // Lodestar, Prysm
            &["jsonrpc", "method", "params", "id"], // Lighthouse
            &["params", "method", "jsonrpc", "id"], // method after params
            &["params", "id", "jsonrpc", "method"], // method last
            &["id", "jsonrpc", "method", "params"], // serde_json's sorted order
        ];
        for &(name, body, method, id, timestamp) in REQUEST_SAMPLES {
            for order in orders {
                let body = with_key_order(body, order);
                let scanned = request(&body);
                assert_eq!(scanned.method.as_deref(), Some(method), "{name} {order:?}");
                assert_eq!(raw(&body, &scanned.id), Some(id), "{name} {order:?}");
                assert_eq!(scanned.timestamp, timestamp, "{name} {order:?}");
                check_request(&body).unwrap();
            }
            // Pretty printing puts whitespace between every token.
            let value: Value = serde_json::from_slice(body).unwrap();
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            let scanned = request(&pretty);
            assert_eq!(scanned.method.as_deref(), Some(method), "{name} pretty");
            assert_eq!(scanned.timestamp, timestamp, "{name} pretty");
        }
    }

    #[test]
    fn escaped_keys_and_values() {
        let cases: &[(&str, Option<&str>, Option<u64>)] = &[
            (
                r#"{"\u006dethod":"engine_newPayloadV3","params":[{"timestamp":"0x10"}]}"#,
                Some("engine_newPayloadV3"),
                Some(0x10),
            ),
            (
                r#"{"method":"engine_newPayloadV3","p\u0061rams":[{"time\u0073tamp":"0x10"}]}"#,
                Some("engine_newPayloadV3"),
                Some(0x10),
            ),
            (
                r#"{"method":"engine_\u006eewPayloadV1","params":[{"timestamp":"\u0030x1f"}]}"#,
                Some("engine_newPayloadV1"),
                Some(0x1f),
            ),
            (
                r#"{"method":"engine_forkchoiceUpdatedV3","params":[{},{"\u0074\u0069\u006D\u0065\u0073\u0074\u0061\u006D\u0070":"0x2"}]}"#,
                Some("engine_forkchoiceUpdatedV3"),
                Some(2),
            ),
            // An escape that decodes to something else is a different key.
            (r#"{"me\thod":"engine_newPayloadV3"}"#, None, None),
            (r#"{"method\u0000":"engine_newPayloadV3"}"#, None, None),
            // Escaped keys longer than any wanted name are skipped without decoding them whole.
            (
                r#"{"\u006dethod_and_a_long_tail":"x","method":"m\u00e9\ud83d\ude00\n\/"}"#,
                Some("mé😀\n/"),
                None,
            ),
        ];
        for &(body, method, timestamp) in cases {
            let scanned = request(body.as_bytes());
            assert_eq!(scanned.method.as_deref(), method, "{body}");
            assert_eq!(scanned.timestamp, timestamp, "{body}");
            check_request(body.as_bytes()).unwrap();
        }
        let answer = br#"{"id":1,"r\u0065sult":{"payload\u0053tatus":{"st\u0061tus":"\u0056ALID"}},"error":{"\u0063ode":-1}}"#;
        let scanned = response(answer);
        assert_eq!(scanned.status.as_deref(), Some("VALID"));
        assert_eq!(scanned.error_code, Some(-1));
        check_response(answer).unwrap();
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let requests: &[RequestCase] = &[
            (
                r#"{"method":"engine_getPayloadV3","method":"engine_newPayloadV3","params":[{"timestamp":"0x1"}]}"#,
                Some("engine_newPayloadV3"),
                None,
                Some(1),
            ),
            (r#"{"method":"engine_newPayloadV3","method":1}"#, None, None, None),
            (r#"{"id":1,"id":"two"}"#, None, Some(r#""two""#), None),
            (r#"{"id":[1,2],"method":"x","id":null}"#, Some("x"), Some("null"), None),
            (
                r#"{"method":"engine_newPayloadV3","params":[{"timestamp":"0x1"}],"params":[{"timestamp":"0x2"}]}"#,
                Some("engine_newPayloadV3"),
                None,
                Some(2),
            ),
            (
                r#"{"method":"engine_newPayloadV3","params":[{"timestamp":"0x1"}],"params":[]}"#,
                Some("engine_newPayloadV3"),
                None,
                None,
            ),
            (
                r#"{"method":"engine_newPayloadV3","params":[{"timestamp":"0x1","timestamp":"0x3"}]}"#,
                Some("engine_newPayloadV3"),
                None,
                Some(3),
            ),
            (
                r#"{"method":"engine_newPayloadV3","params":[{"timestamp":"0x1","timestamp":"bad"}]}"#,
                Some("engine_newPayloadV3"),
                None,
                None,
            ),
            (
                r#"{"method":"engine_forkchoiceUpdatedV3","params":[{},{"timestamp":"0x5","timestamp":null}]}"#,
                Some("engine_forkchoiceUpdatedV3"),
                None,
                None,
            ),
        ];
        for &(body, method, id, timestamp) in requests {
            let scanned = request(body.as_bytes());
            assert_eq!(scanned.method.as_deref(), method, "{body}");
            assert_eq!(raw(body.as_bytes(), &scanned.id), id, "{body}");
            assert_eq!(scanned.timestamp, timestamp, "{body}");
            check_request(body.as_bytes()).unwrap();
        }
        let responses: &[ResponseCase] = &[
            (
                r#"{"result":{"status":"VALID"},"result":{"status":"INVALID"}}"#,
                Some("INVALID"),
                None,
                Some(r#"{"status":"INVALID"}"#),
            ),
            (r#"{"result":{"status":"VALID"},"result":5}"#, None, None, Some("5")),
            (
                r#"{"result":{"status":"VALID","status":"SYNCING"}}"#,
                Some("SYNCING"),
                None,
                Some(r#"{"status":"VALID","status":"SYNCING"}"#),
            ),
            (
                r#"{"result":{"payloadStatus":{"status":"VALID"},"payloadStatus":{}}}"#,
                None,
                None,
                Some(r#"{"payloadStatus":{"status":"VALID"},"payloadStatus":{}}"#),
            ),
            (r#"{"error":{"code":1},"error":{"code":2}}"#, None, Some(2), None),
            (r#"{"error":{"code":1,"code":"x"}}"#, None, None, None),
            (r#"{"error":{"code":1},"error":null}"#, None, None, None),
        ];
        for &(body, status, error_code, result) in responses {
            let scanned = response(body.as_bytes());
            assert_eq!(scanned.status.as_deref(), status, "{body}");
            assert_eq!(scanned.error_code, error_code, "{body}");
            assert_eq!(raw(body.as_bytes(), &scanned.result), result, "{body}");
            check_response(body.as_bytes()).unwrap();
        }
    }

    #[test]
    fn every_id_type() {
        let ids = [
            "7",
            "0",
            "-1.5e3",
            "18446744073709551616",
            r#""abc""#,
            r#""""#,
            r#""\u0041\"]}""#,
            "null",
            "true",
            "false",
            r#"{"a":[1,{}],"id":2}"#,
            "{}",
            "[]",
            r#"[1,"x",null,[]]"#,
        ];
        for id in ids {
            let bodies = [
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"engine_getPayloadV3","params":["0x1"]}}"#),
                format!(r#"{{"jsonrpc":"2.0","method":"engine_getPayloadV3","params":["0x1"],"id":{id}}}"#),
                format!("{{ \"id\" :\t{id}\n , \"method\" : \"m\" }}"),
                format!("{{\"id\":{id}}}"),
            ];
            for body in &bodies {
                let scanned = request(body.as_bytes());
                assert_eq!(raw(body.as_bytes(), &scanned.id), Some(id), "{body}");
                check_request(body.as_bytes()).unwrap();
                let scanned = response(body.as_bytes());
                assert_eq!(raw(body.as_bytes(), &scanned.id), Some(id), "{body}");
                check_response(body.as_bytes()).unwrap();
            }
        }
        assert_eq!(request(br#"{"method":"m"}"#).id, None);
        assert_eq!(request(br#"{"x":{"id":1}}"#).id, None);
    }

    #[test]
    fn only_top_level_members_count() {
        let cases: &[(&str, Option<&str>, Option<u64>)] = &[
            (r#"{"params":[{"method":"engine_newPayloadV1","timestamp":"0x1"}]}"#, None, None),
            (r#"{"x":{"method":"engine_newPayloadV1"},"y":[{"method":"m"}]}"#, None, None),
            (r#"[{"method":"engine_newPayloadV1","params":[{"timestamp":"0x1"}]}]"#, None, None),
            (
                r#"{"method":"engine_newPayloadV1","x":{"params":[{"timestamp":"0x1"}]}}"#,
                Some("engine_newPayloadV1"),
                None,
            ),
            (
                r#"{"method":"engine_newPayloadV1","params":[[{"timestamp":"0x1"}]]}"#,
                Some("engine_newPayloadV1"),
                None,
            ),
            (
                r#"{"method":"engine_newPayloadV1","params":[{"a":{"timestamp":"0x1"}}]}"#,
                Some("engine_newPayloadV1"),
                None,
            ),
            (
                r#"{"method":"engine_newPayloadV1","params":[{"timestamp":"0x2","a":{"timestamp":"0x1"},"b":[{"timestamp":"0x3"}]}]}"#,
                Some("engine_newPayloadV1"),
                Some(2),
            ),
            (
                r#"{"method":"engine_newPayloadV1","params":{"0":{"timestamp":"0x1"}}}"#,
                Some("engine_newPayloadV1"),
                None,
            ),
            (r#"{"method":{"method":"engine_newPayloadV1"},"params":[{"timestamp":"0x1"}]}"#, None, None),
        ];
        for &(body, method, timestamp) in cases {
            let scanned = request(body.as_bytes());
            assert_eq!(scanned.method.as_deref(), method, "{body}");
            assert_eq!(scanned.timestamp, timestamp, "{body}");
            check_request(body.as_bytes()).unwrap();
        }
        let answer = br#"{"result":{"x":{"status":"VALID"},"payloadStatus":{"x":{"status":"VALID"}}},"error":{"data":{"code":1}}}"#;
        let scanned = response(answer);
        assert_eq!((scanned.status, scanned.error_code), (None, None));
    }

    #[test]
    fn timestamp_position_by_method() {
        let params_both = r#"[{"timestamp":"0xa","blockHash":"0x00"},{"timestamp":"0xb"},"0xcc"]"#;
        let params_null = r#"[{"headBlockHash":"0x00"},null]"#;
        let cases: &[(&str, &str, Option<u64>)] = &[
            ("engine_newPayloadV1", params_both, Some(0xa)),
            ("engine_newPayloadV2", params_both, Some(0xa)),
            ("engine_newPayloadV3", params_both, Some(0xa)),
            ("engine_newPayloadV4", params_both, Some(0xa)),
            ("engine_newPayloadV5", params_both, Some(0xa)),
            ("engine_forkchoiceUpdatedV1", params_both, Some(0xb)),
            ("engine_forkchoiceUpdatedV2", params_both, Some(0xb)),
            ("engine_forkchoiceUpdatedV3", params_both, Some(0xb)),
            ("engine_forkchoiceUpdatedV4", params_both, Some(0xb)),
            ("engine_forkchoiceUpdatedV3", params_null, None),
            ("engine_forkchoiceUpdatedV3", r#"[{}]"#, None),
            ("engine_forkchoiceUpdatedV3", r#"[]"#, None),
            ("engine_forkchoiceUpdatedV3", r#"[{"timestamp":"0xa"},{"timestamp":7}]"#, None),
            ("engine_newPayloadV3", r#"[{"timestamp":"0x"}]"#, None),
            ("engine_newPayloadV3", r#"[{"timestamp":"0x10000000000000000"}]"#, None),
            ("engine_newPayloadV3", r#"[{"timestamp":"0xffffffffffffffff"}]"#, Some(u64::MAX)),
            ("engine_newPayloadV3", r#"[null,{"timestamp":"0xb"}]"#, None),
            ("engine_getPayloadV4", params_both, None),
            ("engine_exchangeCapabilities", params_both, None),
            ("eth_blockNumber", params_both, None),
            ("engine_newpayloadV3", params_both, None),
        ];
        for &(method, params, timestamp) in cases {
            let lodestar = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
            let lighthouse = format!(r#"{{"jsonrpc":"2.0","params":{params},"method":"{method}","id":1}}"#);
            for body in [lodestar, lighthouse] {
                assert_eq!(request(body.as_bytes()).timestamp, timestamp, "{body}");
                check_request(body.as_bytes()).unwrap();
            }
        }
    }

    /// What serde_json finds at `params[0]` of a newPayload request, as a `PayloadHead`.
    fn head_by_serde(body: &[u8]) -> Option<PayloadHead> {
        let value: Value = serde_json::from_slice(body).ok()?;
        if !value["method"].as_str()?.starts_with("engine_newPayload") {
            return None;
        }
        let payload = &value["params"][0];
        let quantity = |key: &str| parse_quantity(payload[key].as_str()?.as_bytes());
        Some(PayloadHead {
            number: quantity("blockNumber")?,
            hash: parse_hash(payload["blockHash"].as_str()?.as_bytes())?,
            timestamp: quantity("timestamp")?,
        })
    }

    #[test]
    fn payload_head_of_every_captured_request_matches_serde() {
        let mut found = 0;
        let mut bodies: Vec<Vec<u8>> = vec![NEW_PAYLOAD_1K.to_vec(), NEW_PAYLOAD_128K.to_vec(), FCU.to_vec()];
        for fork in ["lodestar-1.22-deneb", "lodestar-1.22-electra"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fork);
            for name in
                ["newPayload_first_block", "newPayload_with_blob", "forkchoiceUpdated_with_attributes"]
            {
                let text = std::fs::read(dir.join(format!("{name}.json"))).expect("fixture");
                let capture: Value = serde_json::from_slice(&text).expect("fixture JSON");
                bodies.push(serde_json::to_vec(&capture["request"]).expect("re-encode"));
            }
        }
        bodies.push(lodestar!("engine_newPayloadV2.with_txs.request").to_vec());
        for body in &bodies {
            let head = scan_payload_head(body);
            assert_eq!(
                head,
                head_by_serde(body),
                "{}",
                String::from_utf8_lossy(&body[..200.min(body.len())])
            );
            found += usize::from(head.is_some());
        }
        assert!(found >= 6, "only {found} payload heads found");
    }

    #[test]
    fn payload_head_needs_all_three_members_in_params_0() {
        let hash = format!("0x{}", "ab".repeat(32));
        let whole = format!(r#"{{"timestamp":"0xa","blockNumber":"0x7","blockHash":"{hash}"}}"#);
        // (method, params, expected (number, timestamp)).
        type Case = (String, String, Option<(u64, u64)>);
        let cases: Vec<Case> = vec![
            ("engine_newPayloadV3".into(), format!("[{whole}]"), Some((7, 10))),
            ("engine_newPayloadV1".into(), format!("[{whole}]"), Some((7, 10))),
            ("engine_forkchoiceUpdatedV3".into(), format!("[{whole}]"), None),
            ("engine_newPayloadV3".into(), format!("[null,{whole}]"), None),
            ("engine_newPayloadV3".into(), format!(r#"[{{"nested":{whole}}}]"#), None),
            ("engine_newPayloadV3".into(), r#"[{"timestamp":"0xa","blockNumber":"0x7"}]"#.into(), None),
            (
                "engine_newPayloadV3".into(),
                r#"[{"timestamp":"0xa","blockNumber":"0x7","blockHash":"0x12"}]"#.into(),
                None,
            ),
            (
                "engine_newPayloadV3".into(),
                format!(r#"[{{"timestamp":"0xa","blockNumber":7,"blockHash":"{hash}"}}]"#),
                None,
            ),
            // The last duplicate wins, as everywhere in the scanner.
            (
                "engine_newPayloadV3".into(),
                format!(
                    r#"[{{"blockNumber":"0x1","timestamp":"0xa","blockNumber":"0x9","blockHash":"{hash}"}}]"#
                ),
                Some((9, 10)),
            ),
        ];
        for (method, params, expected) in cases {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
            let head = scan_payload_head(body.as_bytes());
            assert_eq!(head.map(|h| (h.number, h.timestamp)), expected, "{body}");
            if let Some(head) = head {
                assert_eq!(head.hash, [0xab; 32]);
            }
            // The request-time scan reads it in the same pass.
            assert_eq!(request(body.as_bytes()).method.as_deref(), Some(method.as_str()));
            assert_eq!(request(body.as_bytes()).payload, head);
        }
        assert_eq!(scan_payload_head(b"{not json"), None);
    }

    #[test]
    fn response_status_and_error_code() {
        let cases: &[(&str, Option<&str>, Option<i64>)] = &[
            (r#"{"id":1,"result":{"status":"SYNCING","latestValidHash":null}}"#, Some("SYNCING"), None),
            (
                r#"{"id":1,"result":{"payloadStatus":{"status":"INVALID"},"payloadId":null}}"#,
                Some("INVALID"),
                None,
            ),
            (r#"{"result":{"payloadStatus":{"status":"INVALID"},"status":"VALID"}}"#, Some("VALID"), None),
            (r#"{"result":{"status":5,"payloadStatus":{"status":"ACCEPTED"}}}"#, Some("ACCEPTED"), None),
            (r#"{"result":{"status":"INVALID_BLOCK_HASH"}}"#, Some("INVALID_BLOCK_HASH"), None),
            (r#"{"result":"VALID"}"#, None, None),
            (r#"{"result":null}"#, None, None),
            (r#"{"error":{"code":-38001,"message":"Unknown payload"}}"#, None, Some(-38001)),
            (r#"{"error":{"message":"x","code":-32700}}"#, None, Some(-32700)),
            (r#"{"error":{"code":9223372036854775807}}"#, None, Some(i64::MAX)),
            (r#"{"error":{"code":-9223372036854775808}}"#, None, Some(i64::MIN)),
            (r#"{"error":{"code":9223372036854775808}}"#, None, None),
            (r#"{"error":{"code":-9223372036854775809}}"#, None, None),
            (r#"{"error":{"code":99999999999999999999}}"#, None, None),
            (r#"{"error":{"code":0}}"#, None, Some(0)),
            (r#"{"error":{"code":-0}}"#, None, None),
            (r#"{"error":{"code":1.0}}"#, None, None),
            (r#"{"error":{"code":1e3}}"#, None, None),
            (r#"{"error":{"code":"-32000"}}"#, None, None),
            (r#"{"error":-32000}"#, None, None),
            (r#"{"code":-32000}"#, None, None),
        ];
        for &(body, status, error_code) in cases {
            let scanned = response(body.as_bytes());
            assert_eq!(scanned.status.as_deref(), status, "{body}");
            assert_eq!(scanned.error_code, error_code, "{body}");
            check_response(body.as_bytes()).unwrap();
        }
        // A request scan looks for none of an answer's members, and the other way round.
        let answer =
            br#"{"method":"engine_newPayloadV1","params":[{"timestamp":"0x1"}],"result":{"status":"VALID"}}"#;
        assert_eq!(request(answer).timestamp, Some(1));
        assert_eq!(response(answer).status.as_deref(), Some("VALID"));
        let scanned = response(FCU);
        assert_eq!((scanned.status, scanned.result), (None, None));
        assert_eq!(request(lodestar!("engine_newPayloadV2.response")).method, None);
    }

    #[test]
    fn shapes() {
        let cases: &[(&str, Shape)] = &[
            ("{}", Shape::Object),
            (" \r\n\t{ } ", Shape::Object),
            ("[]", Shape::Array),
            (r#"[{"method":"engine_newPayloadV1","id":1}]"#, Shape::Array),
            ("1", Shape::Other),
            ("-0.5e-7", Shape::Other),
            (r#""method""#, Shape::Other),
            ("null", Shape::Other),
            ("true", Shape::Other),
            ("false ", Shape::Other),
        ];
        for &(body, shape) in cases {
            let scanned = request(body.as_bytes());
            assert_eq!(scanned.shape, shape, "{body}");
            if shape != Shape::Object {
                assert_eq!((scanned.method, scanned.id, scanned.timestamp), (None, None, None), "{body}");
                let scanned = response(body.as_bytes());
                assert_eq!((scanned.id, scanned.status, scanned.result), (None, None, None), "{body}");
            }
        }
    }

    #[test]
    fn long_text_is_capped() {
        let exactly = "a".repeat(MAX_TEXT_LEN);
        let over = "a".repeat(MAX_TEXT_LEN + 1);
        // Each escape is six bytes of input for one byte of text, so the cap is on the text.
        let escaped_exactly = r"\u0061".repeat(MAX_TEXT_LEN);
        let escaped_over = format!("{escaped_exactly}a");
        let multibyte_over = "é".repeat(MAX_TEXT_LEN / 2) + "a";
        let cases: &[(&str, Option<&str>)] = &[
            (&exactly, Some(&exactly)),
            (&over, None),
            (&escaped_exactly, Some(&exactly)),
            (&escaped_over, None),
            (&multibyte_over, None),
        ];
        for &(text, expected) in cases {
            let body = format!(r#"{{"method":"{text}","params":[]}}"#);
            assert_eq!(request(body.as_bytes()).method.as_deref(), expected);
            check_request(body.as_bytes()).unwrap();
            let body = format!(r#"{{"result":{{"status":"{text}"}}}}"#);
            assert_eq!(response(body.as_bytes()).status.as_deref(), expected);
            check_response(body.as_bytes()).unwrap();
        }
    }

    /// Invalid bodies: (body, kind, offset).
    const INVALID: &[(&[u8], ScanErrorKind, usize)] = &[
        (b"", ScanErrorKind::UnexpectedEnd, 0),
        (b"  \n", ScanErrorKind::UnexpectedEnd, 3),
        (b"{", ScanErrorKind::UnexpectedEnd, 1),
        (b"{\"a\"", ScanErrorKind::UnexpectedEnd, 4),
        (b"{\"a\":", ScanErrorKind::UnexpectedEnd, 5),
        (b"{\"a\":1", ScanErrorKind::UnexpectedEnd, 6),
        (b"[1,", ScanErrorKind::UnexpectedEnd, 3),
        (b"\"abc", ScanErrorKind::UnexpectedEnd, 4),
        (b"\"abcdefghijklmnopqrstuvwxyz", ScanErrorKind::UnexpectedEnd, 27),
        (b"tru", ScanErrorKind::UnexpectedEnd, 3),
        (b"-", ScanErrorKind::UnexpectedEnd, 1),
        (b"1.", ScanErrorKind::UnexpectedEnd, 2),
        (b"1e", ScanErrorKind::UnexpectedEnd, 2),
        (b"1e+", ScanErrorKind::UnexpectedEnd, 3),
        (b"\"\\", ScanErrorKind::UnexpectedEnd, 2),
        (b"\"\\u12", ScanErrorKind::UnexpectedEnd, 5),
        (b"\"\\ud800", ScanErrorKind::UnexpectedEnd, 7),
        (b"\"\\ud800\\", ScanErrorKind::UnexpectedEnd, 8),
        (b"\"\xe2\x82", ScanErrorKind::UnexpectedEnd, 3),
        (b"[1,]", ScanErrorKind::UnexpectedByte, 3),
        (b"{\"a\":1,}", ScanErrorKind::UnexpectedByte, 7),
        (b"{,}", ScanErrorKind::UnexpectedByte, 1),
        (b"{a:1}", ScanErrorKind::UnexpectedByte, 1),
        (b"{1:1}", ScanErrorKind::UnexpectedByte, 1),
        (b"{\"a\" 1}", ScanErrorKind::UnexpectedByte, 5),
        (b"{\"a\":1 \"b\":2}", ScanErrorKind::UnexpectedByte, 7),
        (b"[1 2]", ScanErrorKind::UnexpectedByte, 3),
        (b"[1}", ScanErrorKind::UnexpectedByte, 2),
        (b"{\"a\":1]", ScanErrorKind::UnexpectedByte, 6),
        (b"]", ScanErrorKind::UnexpectedByte, 0),
        (b"trUe", ScanErrorKind::UnexpectedByte, 2),
        (b"nul1", ScanErrorKind::UnexpectedByte, 3),
        (b"NaN", ScanErrorKind::UnexpectedByte, 0),
        (b"Infinity", ScanErrorKind::UnexpectedByte, 0),
        (b"'a'", ScanErrorKind::UnexpectedByte, 0),
        (b".5", ScanErrorKind::UnexpectedByte, 0),
        (b"+1", ScanErrorKind::UnexpectedByte, 0),
        (b"\xef\xbb\xbf{}", ScanErrorKind::UnexpectedByte, 0),
        (b"\x0c{}", ScanErrorKind::UnexpectedByte, 0),
        (b"\xa0{}", ScanErrorKind::UnexpectedByte, 0),
        (b"\"a\x01\"", ScanErrorKind::InvalidString, 2),
        (b"\"\t\"", ScanErrorKind::InvalidString, 1),
        (b"\"0123456789abcdef\n\"", ScanErrorKind::InvalidString, 17),
        (b"{\"a\x1f\":1}", ScanErrorKind::InvalidString, 3),
        (b"01", ScanErrorKind::InvalidNumber, 1),
        (b"-01", ScanErrorKind::InvalidNumber, 2),
        (b"[00]", ScanErrorKind::InvalidNumber, 2),
        (b"[1.]", ScanErrorKind::InvalidNumber, 3),
        (b"[1.e5]", ScanErrorKind::InvalidNumber, 3),
        (b"[1e]", ScanErrorKind::InvalidNumber, 3),
        (b"[1E+x]", ScanErrorKind::InvalidNumber, 4),
        (b"-a", ScanErrorKind::InvalidNumber, 1),
        (b"[-]", ScanErrorKind::InvalidNumber, 2),
        (b"\"\\x\"", ScanErrorKind::InvalidEscape, 2),
        (b"\"\\U0041\"", ScanErrorKind::InvalidEscape, 2),
        (b"\"\\'\"", ScanErrorKind::InvalidEscape, 2),
        (b"\"\\u12G4\"", ScanErrorKind::InvalidEscape, 5),
        (b"\"\\ud800\"", ScanErrorKind::InvalidEscape, 1),
        (b"\"\\udc00\"", ScanErrorKind::InvalidEscape, 1),
        (b"\"\\udfff\\ud800\"", ScanErrorKind::InvalidEscape, 1),
        (b"\"\\ud800\\u0041\"", ScanErrorKind::InvalidEscape, 7),
        (b"\"\\ud800\\ud800\"", ScanErrorKind::InvalidEscape, 7),
        (b"\"\\ud800\\n\"", ScanErrorKind::InvalidEscape, 1),
        (b"\"\\ud800x\"", ScanErrorKind::InvalidEscape, 1),
        (b"{\"\\ud800\":1}", ScanErrorKind::InvalidEscape, 2),
        (b"\"\xff\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\x80\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xc0\x80\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xc3\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xe0\x80\x80\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xed\xa0\x80\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xf4\x90\x80\x80\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xf5\x80\x80\x80\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xe2\x82\"", ScanErrorKind::InvalidUtf8, 1),
        (b"\"\xe2(", ScanErrorKind::InvalidUtf8, 1),
        (b"\"abcdefgh\xe2\x82\xac\xff\"", ScanErrorKind::InvalidUtf8, 12),
        (b"1 2", ScanErrorKind::TrailingData, 2),
        (b"{}x", ScanErrorKind::TrailingData, 2),
        (b"{} {}", ScanErrorKind::TrailingData, 3),
        (b"[]]", ScanErrorKind::TrailingData, 2),
        (b"null\0", ScanErrorKind::TrailingData, 4),
        (b"0x10", ScanErrorKind::TrailingData, 1),
        (b"1.5.", ScanErrorKind::TrailingData, 3),
    ];

    #[test]
    fn invalid_json() {
        for &(body, kind, offset) in INVALID {
            let expected = Err(ScanError { offset, kind });
            let shown = String::from_utf8_lossy(body);
            assert_eq!(scan_request(body).map(|_| ()), expected, "{shown:?}");
            assert_eq!(scan_response(body).map(|_| ()), expected, "{shown:?}");
            check_request(body).unwrap();
            check_response(body).unwrap();
        }
    }

    #[test]
    fn valid_json_edge_cases() {
        let cases: &[&[u8]] = &[
            b"0",
            b"-0",
            b"-0.0e-0",
            b"1E+5",
            b"123456789012345678901234567890",
            b"[0,1,-1,0.5,1e-400,2.5E10]",
            b"\"\"",
            b"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\uFFFF\\ud83d\\ude00\"",
            "\"é€😀\u{7f}\"".as_bytes(),
            b"\"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\"",
            b"{\"\":\"\"}",
            b"[[],{},[{}],{\"a\":[]}]",
            b" \t\r\n[ \t\r\n1 \t\r\n, \t\r\n{ \t\r\n\"a\" \t\r\n: \t\r\nnull \t\r\n} \t\r\n] \t\r\n",
        ];
        for &body in cases {
            let shown = String::from_utf8_lossy(body);
            assert!(scan_request(body).is_ok(), "{shown}");
            assert!(scan_response(body).is_ok(), "{shown}");
            check_request(body).unwrap();
            check_response(body).unwrap();
        }
    }

    fn nested(open: &str, inner: &str, close: &str, depth: usize) -> Vec<u8> {
        format!("{}{inner}{}", open.repeat(depth), close.repeat(depth)).into_bytes()
    }

    #[test]
    fn nesting_limit() {
        let shapes = [("[", "", "]"), ("[", "1", "]"), ("{\"a\":", "1", "}"), ("[{\"a\":", "null", "}]")];
        for (open, inner, close) in shapes {
            // A pair of containers per repetition for the last shape.
            let per = if open.len() > 5 { 2 } else { 1 };
            let ok = nested(open, inner, close, MAX_DEPTH / per);
            assert!(scan_request(&ok).is_ok(), "{open} x {}", MAX_DEPTH / per);
            let deep = nested(open, inner, close, MAX_DEPTH / per + 1);
            let error = scan_request(&deep).unwrap_err();
            assert_eq!(error.kind, ScanErrorKind::TooDeep, "{open}");
            // The offending bracket is the 129th one.
            let brackets = deep.iter().enumerate().filter(|(_, b)| matches!(b, b'[' | b'{'));
            assert_eq!(Some(error.offset), brackets.map(|(i, _)| i).nth(MAX_DEPTH), "{open}");
        }
        // Siblings at the limit do not add up.
        let mut siblings = b"[".to_vec();
        for _ in 0..3 {
            siblings.extend(nested("[", "", "]", MAX_DEPTH - 1));
            siblings.push(b',');
        }
        siblings.extend(b"1]");
        assert!(scan_request(&siblings).is_ok());
        // Extraction still works around a deep member.
        let mut body = br#"{"method":"engine_newPayloadV1","x":"#.to_vec();
        body.extend(nested("[", "", "]", MAX_DEPTH - 1));
        body.extend(br#","params":[{"timestamp":"0x9"}]}"#);
        assert_eq!(request(&body).timestamp, Some(9));
    }

    #[test]
    fn a_million_brackets_fail_without_recursion() {
        let body = vec![b'['; 1_000_000];
        assert_eq!(scan_request(&body), Err(ScanError { offset: MAX_DEPTH, kind: ScanErrorKind::TooDeep }));
        let body = b"{\"a\":".repeat(1_000_000);
        assert_eq!(scan_response(&body).unwrap_err().kind, ScanErrorKind::TooDeep);
    }

    #[test]
    fn quantities() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"0x0", Some(0)),
            (b"0x1", Some(1)),
            (b"0x66ed3e63", Some(0x66ed3e63)),
            (b"0xABCdef", Some(0xabcdef)),
            (b"0x00000001", Some(1)),
            (b"0xffffffffffffffff", Some(u64::MAX)),
            (b"0x0000000000000000", Some(0)),
            (b"0x00000000000000001", None),
            (b"0x10000000000000000", None),
            (b"0x", None),
            (b"", None),
            (b"0", None),
            (b"10", None),
            (b"x10", None),
            (b"0X10", None),
            (b"0x-1", None),
            (b"0x+1", None),
            (b"0x1g", None),
            (b"0x 1", None),
            (b"0x1 ", None),
            (b" 0x1", None),
            (b"0x\xc3\xa9", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_quantity(text), expected, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn error_display() {
        let error = ScanError { offset: 17, kind: ScanErrorKind::UnexpectedByte };
        assert_eq!(error.to_string(), "invalid JSON at byte 17: unexpected byte");
        assert_eq!(
            scan_request(b"[").unwrap_err().to_string(),
            "invalid JSON at byte 1: unexpected end of input"
        );
    }

    /// The differences `differential` tolerates are real, and the only ones.
    #[test]
    fn documented_differences_from_serde_json() {
        let at_limit = nested("[", "", "]", MAX_DEPTH);
        let out_of_range: &[&[u8]] =
            &[b"1e400", b"[-1e400]", &[b'9'; 400], b"{\"id\":1.7976931348623159e308}"];
        for body in std::iter::once(at_limit.as_slice()).chain(out_of_range.iter().copied()) {
            assert!(scan_request(body).is_ok());
            assert!(serde_json::from_slice::<Value>(body).is_err());
            check_request(body).unwrap();
            check_response(body).unwrap();
        }
        assert!(serde_json::from_slice::<Value>(&nested("[", "", "]", MAX_DEPTH - 1)).is_ok());
    }

    /// A deterministic xorshift generator, so mutations are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    /// Bytes that make mutations interesting to a JSON scanner.
    const MUTANTS: &[u8] = b"{}[],:\"\\ -+.eE019afuxnlt\t\n\x00\x1f\x7f\x80\xbf\xc3\xe2\xed\xf0\xff";

    fn mutate(body: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut body = body.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(body.len() + 1);
            let byte = MUTANTS[rng.below(MUTANTS.len())];
            match rng.below(5) {
                0 => body.truncate(at),
                1 if at < body.len() => {
                    body.remove(at);
                }
                2 => body.insert(at, byte),
                _ if at < body.len() => body[at] = byte,
                _ => body.push(byte),
            }
        }
        body
    }

    #[test]
    fn skip_plain_stops_at_the_first_stop_byte_wherever_it_falls() {
        // Every stop byte kind, at every offset across two blocks and a tail, from several
        // starting points: the block loop and the word loop must agree with a byte loop.
        let len = 2 * PLAIN_BLOCK + 13;
        for stop in [b'"', b'\\', 0x00, 0x1f, 0x7f + 1, 0xff] {
            for at in 0..len {
                let mut body = vec![b'a'; len];
                body[at] = stop;
                for start in [0, 1, 7, 8, PLAIN_BLOCK - 1, PLAIN_BLOCK] {
                    let expected = if start <= at { at } else { len };
                    assert_eq!(skip_plain(&body, start), expected, "stop {stop:#x} at {at}, from {start}");
                }
            }
        }
        let plain: Vec<u8> = (0x20..0x80).filter(|b| *b != b'"' && *b != b'\\').collect();
        let long: Vec<u8> = plain.iter().copied().cycle().take(5 * PLAIN_BLOCK + 3).collect();
        assert_eq!(
            skip_plain(&long, 0),
            long.len(),
            "no printable ASCII byte but the quote and backslash stops"
        );
    }

    /// Every `.json` file under tests/fixtures, each a whole JSON document.
    fn fixture_files() -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("fixture folder") {
                let path = entry.expect("fixture entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    bodies.push(std::fs::read(&path).expect("fixture"));
                }
            }
        }
        assert!(bodies.len() > 30, "found {} fixtures", bodies.len());
        bodies
    }

    #[track_caller]
    fn chunked(body: &[u8], cuts: &[usize]) {
        check_chunked(body, cuts)
            .unwrap_or_else(|e| panic!("{e} in {:?}", String::from_utf8_lossy(&body[..body.len().min(300)])));
    }

    /// The incremental scan gives the whole-body verdict at every split point: fed a byte at
    /// a time (every position is a chunk's end), and, for bodies up to 4 KiB, in two chunks
    /// split at each position; on the fixtures, the samples, the invalid bodies, and
    /// mutants and truncations of them all.
    #[test]
    fn chunked_scan_matches_the_whole_body_scan_at_every_split_point() {
        let mut corpus = fixture_files();
        corpus.extend(REQUEST_SAMPLES.iter().map(|s| s.1.to_vec()));
        corpus.extend(INVALID.iter().map(|s| s.0.to_vec()));
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut mutants = Vec::new();
        for body in &corpus {
            for _ in 0..if body.len() < 4096 { 20 } else { 3 } {
                mutants.push(mutate(body, &mut rng));
            }
        }
        for (k, body) in corpus.iter().chain(&mutants).enumerate() {
            let every: Vec<usize> = (0..=body.len()).collect();
            chunked(body, &every);
            if k < corpus.len() && body.len() <= 4096 {
                // Two pieces, the second taken by the block loops at once. Every 13th cut (and
                // each of the first 64): each check scans the whole body twice, and a cut at
                // every byte made this one test take 8 s of `cargo test`; resuming at every
                // byte is already checked just above.
                for cut in (0..=body.len()).filter(|&c| c < 64 || c % 13 == 0) {
                    chunked(body, &[cut]);
                }
            } else {
                for _ in 0..10 {
                    let cuts: Vec<usize> = (0..1 + rng.below(8)).map(|_| rng.below(body.len() + 1)).collect();
                    chunked(body, &cuts);
                }
            }
        }
    }

    /// The method is reported once its string is read, long before a large body ends.
    #[test]
    fn chunked_scan_reports_the_method_before_the_body_ends() {
        let method_end = NEW_PAYLOAD_128K
            .windows(21)
            .position(|w| w == b"\"engine_newPayloadV3\"")
            .expect("method in the fixture")
            + 21;
        let mut scan = RequestScan::new();
        scan.feed(&NEW_PAYLOAD_128K[..method_end - 1]).unwrap();
        assert_eq!(scan.method(), None, "the closing quote is not there yet");
        scan.feed(&NEW_PAYLOAD_128K[..method_end]).unwrap();
        assert_eq!(scan.method(), Some("engine_newPayloadV3"));
        assert!(method_end < 200, "{method_end}");
        let request = scan.finish(NEW_PAYLOAD_128K).unwrap();
        assert_eq!(request, scan_request(NEW_PAYLOAD_128K).unwrap());
    }

    /// Each EL's VALID answer to an 8 MiB newPayload scanned the whole body again for the sync
    /// view's block (four ELs: four extra passes, the first before the BN's answer): the
    /// request's one pass, whole or fed as the body streams, now reads it.
    #[test]
    fn regression_each_valid_answer_scanned_the_whole_request_body_again() {
        let expected = head_by_serde(NEW_PAYLOAD_128K);
        assert!(expected.is_some(), "the fixture carries a block");
        let mut scan = RequestScan::new();
        for end in (0..NEW_PAYLOAD_128K.len()).step_by(4096) {
            scan.feed(&NEW_PAYLOAD_128K[..end]).unwrap();
        }
        assert_eq!(scan.finish(NEW_PAYLOAD_128K).unwrap().payload, expected);
        assert_eq!(scan_request(NEW_PAYLOAD_128K).unwrap().payload, expected);
        let fcu = scan_request(FCU).unwrap();
        assert_eq!(fcu.payload, None, "only a newPayload carries one");
    }

    /// A malformed byte is reported when it arrives, not when the body ends, and the
    /// verdict stays the whole-body scan's whatever comes after it.
    #[test]
    fn chunked_scan_fails_at_the_first_bad_byte() {
        let mut body = NEW_PAYLOAD_128K.to_vec();
        let bad = body.len() / 2;
        body[bad] = 0x01;
        let whole = scan_request(&body).unwrap_err();
        let mut scan = RequestScan::new();
        scan.feed(&body[..bad]).unwrap();
        assert_eq!(scan.feed(&body[..bad + 1]), Err(whole.clone()));
        assert_eq!(scan.feed(&body), Err(whole.clone()));
        assert_eq!(scan.finish(&body), Err(whole));
    }

    #[test]
    fn differential_against_serde_json() {
        let mut corpus: Vec<Vec<u8>> = Vec::new();
        corpus.extend(REQUEST_SAMPLES.iter().map(|s| s.1.to_vec()));
        corpus.extend(RESPONSE_SAMPLES.iter().map(|s| s.1.to_vec()));
        corpus.extend(INVALID.iter().map(|s| s.0.to_vec()));
        corpus.extend(
            [
                r#"{"method":"engine_newPayloadV3","params":[{"timestamp":"0x1"}],"id":{"method":"x"}}"#,
                r#"{"method":"engine_forkchoiceUpdatedV3","params":[{},{"timestamp":"\u0030x2"}]}"#,
                r#"{"result":{"payloadStatus":{"status":"VALID"}},"id":"a","error":{"code":-32000}}"#,
                r#"{"result":[{"status":"VALID"}],"id":[]}"#,
                r#"[{"method":"engine_newPayloadV1"},{"result":1}]"#,
                r#"{"id":-0,"error":{"code":-0}}"#,
                r#"{"id":1e400,"method":"x"}"#,
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec()),
        );
        for body in &corpus {
            check_request(body).unwrap_or_else(|e| panic!("{e} in {}", String::from_utf8_lossy(body)));
            check_response(body).unwrap_or_else(|e| panic!("{e} in {}", String::from_utf8_lossy(body)));
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for body in corpus.iter().filter(|b| b.len() < 4096) {
            for _ in 0..300 {
                let mutant = mutate(body, &mut rng);
                let shown = || String::from_utf8_lossy(&mutant).into_owned();
                check_request(&mutant).unwrap_or_else(|e| panic!("{e} in {}", shown()));
                check_response(&mutant).unwrap_or_else(|e| panic!("{e} in {}", shown()));
            }
        }
    }
}
