//! `--payload-choice primary|best-value`: which execution client's (EL's) payload a proposer
//! gets from getPayload.
//!
//! Under `best-value`, forkchoiceUpdated with payload attributes reaches every EL (it already
//! does) and each starts its own build under its own payloadId; the beacon node (BN) is given
//! one of them — the one of the EL whose answer it got, normally the primary. This module keeps
//! the bounded, expiring map from that id to every EL's own id (`PayloadMap`), rewrites the
//! getPayload request for each EL (`rewrite_get_payload`), reads `blockValue` out of the answers
//! without building a tree (`answer_of`), and picks the answer to relay (`choose`): the highest
//! `blockValue` among those in by the deadline, the primary's on a tie, and the usual
//! first-in-list-order rule when no answer with a value came.
//!
//! `primary` (the default) is today's behaviour and needs nothing here. This module knows no
//! sockets, no clock (`now` is passed in), no exchanges and no HTTP.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::rpc;

/// How long getPayload waits for the other ELs' answers: the spec gives the call 1 s, and the
/// BN still has to sign and broadcast the block.
pub const DEFAULT_CHOICE_DEADLINE: Duration = Duration::from_millis(400);
/// Most payload builds remembered. A BN asks for at most one payload per slot (a few with
/// several BNs); when full, the oldest mapping is dropped.
pub const MAX_MAPPED: usize = 64;
/// How long a mapping is kept: a build is fetched within its slot; three slots leave room for a
/// late getPayload and a BN that re-asks.
pub const MAPPING_TTL: Duration = Duration::from_secs(36);
/// Most ELs one mapping names (more than any `--builders` list needs).
pub const MAX_ELS: usize = 64;
/// Largest forkchoiceUpdated result or getPayload request read with serde_json here; real ones
/// are a few hundred bytes.
const MAX_SMALL_JSON: usize = 4096;

/// `--payload-choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadChoice {
    #[default]
    Primary,
    BestValue,
}

/// An Engine API payloadId (DATA, 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadId(pub u64);

impl PayloadId {
    /// From the text of a JSON string's content: `0x` and exactly 16 hex digits.
    pub fn parse(text: &str) -> Option<PayloadId> {
        let digits = text.strip_prefix("0x")?;
        if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(digits, 16).ok().map(PayloadId)
    }
}

impl fmt::Display for PayloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

/// The `result.payloadId` of a forkchoiceUpdated answer (`rpc::Response::result`'s text).
pub fn payload_id_of_fcu_result(result: &[u8]) -> Option<PayloadId> {
    if result.len() > MAX_SMALL_JSON {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(result).ok()?;
    PayloadId::parse(value.get("payloadId")?.as_str()?)
}

/// The payloadId a getPayload request asks for (`params[0]`).
pub fn payload_id_of_request(body: &[u8]) -> Option<PayloadId> {
    if body.len() > MAX_SMALL_JSON {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    PayloadId::parse(value.get("params")?.get(0)?.as_str()?)
}

/// The getPayload request for an EL whose own id for this build is `id`: the same id (its raw
/// JSON text, so the EL's answer carries exactly the BN's id) and method, `params` = `[id]`,
/// which is all a getPayload call has. None when the body is not a getPayload request.
pub fn rewrite_get_payload(body: &[u8], id: PayloadId) -> Option<Vec<u8>> {
    let scan = rpc::scan_request(body).ok()?;
    let method = scan.method.filter(|m| m.starts_with("engine_getPayload") && !m.contains("Bodies"))?;
    let raw_id = match scan.id {
        Some(range) => body.get(range)?,
        None => b"null",
    };
    let method = serde_json::Value::String(method).to_string();
    let mut out = Vec::with_capacity(80 + raw_id.len() + method.len());
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(raw_id);
    out.extend_from_slice(br#","method":"#);
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(format!(r#","params":["{id}"]}}"#).as_bytes());
    Some(out)
}

/// Each EL's own payloadId for a build, under the id the BN was given.
#[derive(Debug, Default)]
pub struct PayloadMap {
    entries: VecDeque<Entry>,
    dropped: u64,
}

#[derive(Debug)]
struct Entry {
    given: PayloadId,
    ids: Vec<Option<PayloadId>>,
    since: Instant,
}

impl PayloadMap {
    pub fn new() -> Self {
        PayloadMap::default()
    }

    /// Notes that EL `el` builds the payload the BN knows as `given` under `id`. Call it for
    /// the EL whose answer the BN got (`id == given`) and for each other EL's answer to the
    /// same forkchoiceUpdated, in any order once `given` is known.
    pub fn remember(&mut self, given: PayloadId, el: usize, id: PayloadId, now: Instant) {
        self.expire(now);
        if el >= MAX_ELS {
            return;
        }
        let at = match self.entries.iter().position(|e| e.given == given) {
            Some(at) => at,
            None => {
                if self.entries.len() >= MAX_MAPPED {
                    self.entries.pop_front();
                    self.dropped += 1;
                }
                self.entries.push_back(Entry { given, ids: Vec::new(), since: now });
                self.entries.len() - 1
            }
        };
        let Some(entry) = self.entries.get_mut(at) else { return };
        if entry.ids.len() <= el {
            entry.ids.resize(el + 1, None);
        }
        entry.ids[el] = Some(id);
    }

    /// Which ELs to ask for `given`, with which id, in list order (`els` of them; None: that EL
    /// has no build for it and is not asked). An unknown or expired id: every slot None, and
    /// the caller routes getPayload as under `primary`.
    pub fn targets(&mut self, given: PayloadId, els: usize, now: Instant) -> Vec<Option<PayloadId>> {
        self.expire(now);
        let mut out = vec![None; els];
        if let Some(entry) = self.entries.iter().find(|e| e.given == given) {
            for (slot, id) in out.iter_mut().zip(&entry.ids) {
                *slot = *id;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Mappings dropped because the map was full (for a metric).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn expire(&mut self, now: Instant) {
        self.entries.retain(|e| now.saturating_duration_since(e.since) <= MAPPING_TTL);
    }
}

/// A `blockValue` in wei: a 256-bit QUANTITY, as (high, low) 128-bit halves so that ordering the
/// pair orders the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Wei {
    pub high: u128,
    pub low: u128,
}

impl Wei {
    /// `0x` and 1 to 64 hex digits (leading zeros accepted).
    pub fn parse(text: &[u8]) -> Option<Wei> {
        let digits = text.strip_prefix(b"0x")?;
        if digits.is_empty() || digits.len() > 64 {
            return None;
        }
        let mut wei = Wei::default();
        for &d in digits {
            let nibble = u128::from(char::from(d).to_digit(16)?);
            wei.high = (wei.high << 4) | (wei.low >> 124);
            wei.low = (wei.low << 4) | nibble;
        }
        Some(wei)
    }

    /// `self - other`, None when `other` is larger.
    pub fn checked_sub(self, other: Wei) -> Option<Wei> {
        let (low, borrow) = self.low.overflowing_sub(other.low);
        let high = self.high.checked_sub(other.high)?.checked_sub(u128::from(borrow))?;
        Some(Wei { high, low })
    }

    /// Approximate value in ether, for a metric.
    pub fn as_eth_f64(self) -> f64 {
        (self.high as f64 * 2f64.powi(128) + self.low as f64) / 1e18
    }
}

impl fmt::Display for Wei {
    /// Decimal wei when it fits 128 bits (always, for real values), else hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == 0 {
            write!(f, "{} wei", self.low)
        } else {
            write!(f, "0x{:x}{:032x} wei", self.high, self.low)
        }
    }
}

/// Where one EL stands on a getPayload, in list order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// Asked, not answered yet.
    Pending,
    /// Not asked (no build of its own), or no answer will come.
    Failed,
    /// A JSON-RPC error, or an answer without a result: skipped.
    Error,
    /// A payload, with its `blockValue` (None for getPayloadV1, which has none).
    Payload(Option<Wei>),
}

/// What an EL's getPayload answer body is, for `choose`.
pub fn answer_of(body: &[u8]) -> Got {
    match rpc::scan_response(body) {
        Ok(scan) => answer_from(body, &scan),
        Err(_) => Got::Error,
    }
}

/// `answer_of` for an answer the caller has already scanned (the event loop scans every
/// answer), so the megabytes of a payload are not validated twice.
pub fn answer_from(body: &[u8], scan: &rpc::Response) -> Got {
    let Some(result) = scan.result.clone().filter(|_| scan.error_code.is_none()).and_then(|r| body.get(r))
    else {
        return Got::Error;
    };
    let value = member(result, b"blockValue")
        .and_then(|v| v.strip_prefix(b"\"")?.strip_suffix(b"\""))
        .and_then(Wei::parse);
    Got::Payload(value)
}

/// The payload to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Keep waiting: decide again when an answer arrives or at `until`.
    Wait { until: Instant },
    /// Relay this EL's answer as it came (it carries its own payload and the BN's id).
    Relay(Report),
    /// No answer with a value came: answer as `--payload-choice primary` does (the first in
    /// list order that answered, waiting for the ones before it).
    Fallback,
}

/// Which EL built the relayed payload, and by how much it beat the EL whose id the BN holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub el: usize,
    pub value: Wei,
    /// The value of the BN's own EL's payload, when it came in time with one.
    pub primary_value: Option<Wei>,
    /// `value - primary_value`, when another EL's payload was chosen over one that came.
    pub gain: Option<Wei>,
}

/// Picks the answer (see the module header): wait until every asked EL answered or `deadline`
/// after the calls went out (`started`); then the highest `blockValue`, ties to `primary` (the
/// EL whose payloadId the BN holds) and then to list order.
pub fn choose(got: &[Got], primary: usize, started: Instant, deadline: Duration, now: Instant) -> Choice {
    let until = started + deadline;
    if got.contains(&Got::Pending) && now < until {
        return Choice::Wait { until };
    }
    let value = |el: usize| match got.get(el) {
        Some(Got::Payload(Some(v))) => Some(*v),
        _ => None,
    };
    let mut best: Option<(usize, Wei)> = value(primary).map(|v| (primary, v));
    for el in 0..got.len() {
        if let Some(v) = value(el) {
            // Strictly larger only: ties keep the primary, then the earlier in list order.
            if !best.is_some_and(|(_, b)| v <= b) {
                best = Some((el, v));
            }
        }
    }
    let Some((el, value_chosen)) = best else { return Choice::Fallback };
    let primary_value = value(primary);
    let gain = primary_value.filter(|_| el != primary).and_then(|p| value_chosen.checked_sub(p));
    Choice::Relay(Report { el, value: value_chosen, primary_value, gain })
}

/// The raw text of the last top-level member `key` of a JSON object that is already known to
/// be valid (the caller scanned it). Keys are compared as written, without decoding escapes.
/// One pass, no tree: a getPayload answer is megabytes of hex strings.
fn member<'a>(object: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_whitespace(object, 0);
    if object.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_whitespace(object, i);
        match object.get(i)? {
            b'}' => return found,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(object, i)?;
        let name = object.get(i + 1..key_end - 1)?;
        i = skip_whitespace(object, key_end);
        if object.get(i) != Some(&b':') {
            return None;
        }
        i = skip_whitespace(object, i + 1);
        let value_end = value_end(object, i)?;
        if name == key {
            found = object.get(i..value_end);
        }
        i = value_end;
    }
}

fn skip_whitespace(text: &[u8], mut i: usize) -> usize {
    while matches!(text.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index just past the string that opens at `start`.
fn string_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = text.get(i..)?.iter().position(|&b| b == b'"' || b == b'\\')?;
        i += at;
        if text[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The index just past the value that starts at `start`.
fn value_end(text: &[u8], start: usize) -> Option<usize> {
    match text.get(start)? {
        b'"' => string_end(text, start),
        b'{' | b'[' => {
            let (mut i, mut depth) = (start, 0usize);
            loop {
                match text.get(i)? {
                    b'"' => i = string_end(text, i)?,
                    b'{' | b'[' => {
                        depth += 1;
                        i += 1;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        i += 1;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => i += 1,
                }
            }
        }
        _ => {
            let len = text[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(text.len() - start);
            Some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wei(n: u128) -> Wei {
        Wei { high: 0, low: n }
    }

    fn answer(value: &str) -> Vec<u8> {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"result":{{"executionPayload":{{"blockHash":"0x{}","transactions":["0x{}"],"extra":{{"blockValue":"0xffff"}}}},"blockValue":"{value}","blobsBundle":{{"blobs":[]}},"shouldOverrideBuilder":false}}}}"#,
            "ab".repeat(32),
            "cd".repeat(5000)
        )
        .into_bytes()
    }

    #[test]
    fn block_values_are_256_bit_quantities() {
        assert_eq!(Wei::parse(b"0x0"), Some(wei(0)));
        assert_eq!(Wei::parse(b"0x1bc16d674ec80000"), Some(wei(2_000_000_000_000_000_000)));
        let big = Wei::parse(format!("0x1{}", "0".repeat(32)).as_bytes()).expect("2^128");
        assert_eq!(big, Wei { high: 1, low: 0 });
        assert!(big > wei(u128::MAX));
        assert_eq!(
            Wei::parse(format!("0x{}", "f".repeat(64)).as_bytes()),
            Some(Wei { high: u128::MAX, low: u128::MAX })
        );
        for bad in [&b"0x"[..], b"12", b"0xg", format!("0x{}", "1".repeat(65)).as_bytes()] {
            assert_eq!(Wei::parse(bad), None, "{bad:?}");
        }
        assert_eq!(big.checked_sub(wei(1)), Some(Wei { high: 0, low: u128::MAX }));
        assert_eq!(wei(1).checked_sub(wei(2)), None);
        assert_eq!(wei(5).to_string(), "5 wei");
    }

    #[test]
    fn the_block_value_is_read_from_the_top_level_of_the_result() {
        assert_eq!(answer_of(&answer("0x10")), Got::Payload(Some(wei(16))));
        // getPayloadV1: the result is the payload itself, without a value.
        let v1 = br#"{"jsonrpc":"2.0","id":1,"result":{"blockHash":"0x00","transactions":[]}}"#;
        assert_eq!(answer_of(v1), Got::Payload(None));
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-38001,"message":"Unknown payload"}}"#;
        assert_eq!(answer_of(error), Got::Error);
        assert_eq!(answer_of(b"{not json"), Got::Error);
        assert_eq!(answer_of(br#"{"jsonrpc":"2.0","id":1,"result":null}"#), Got::Payload(None));
        // Escaped quotes and brackets inside strings do not confuse the skipper.
        let tricky = br#"{"jsonrpc":"2.0","id":1,"result":{"x":"\"}]\\","y":[{"blockValue":"0x1"}],"blockValue":"0x2"}}"#;
        assert_eq!(answer_of(tricky), Got::Payload(Some(wei(2))));
    }

    #[test]
    fn the_member_finder_never_panics_on_cut_or_broken_text() {
        let whole = answer("0x10");
        for end in (0..whole.len()).step_by(5) {
            let _ = member(&whole[..end], b"blockValue");
        }
        for text in [&b"{\"a\":}"[..], b"{\"a\"", b"{,,}", b"{\"a\":]", b"{\"a\":\"\\", b"{\"\\\"", b"}"] {
            assert_eq!(member(text, b"blockValue"), None, "{}", String::from_utf8_lossy(text));
        }
        let result = br#"{"a":1,"blockValue":"0x5"}"#;
        assert_eq!(member(result, b"blockValue"), Some(&b"\"0x5\""[..]));
        assert_eq!(member(result, b"a"), Some(&b"1"[..]));
    }

    #[test]
    fn payload_ids_from_fcu_answers_and_get_payload_requests() {
        let id = PayloadId(0x0123_4567_89ab_cdef);
        let result = br#"{"payloadStatus":{"status":"VALID"},"payloadId":"0x0123456789abcdef"}"#;
        assert_eq!(payload_id_of_fcu_result(result), Some(id));
        assert_eq!(payload_id_of_fcu_result(br#"{"payloadId":null}"#), None);
        assert_eq!(payload_id_of_fcu_result(br#"{"payloadId":"0x01"}"#), None);
        let request =
            br#"{"jsonrpc":"2.0","id":3,"method":"engine_getPayloadV4","params":["0x0123456789ABCDEF"]}"#;
        assert_eq!(payload_id_of_request(request), Some(id));
        assert_eq!(id.to_string(), "0x0123456789abcdef");
    }

    #[test]
    fn the_get_payload_request_is_rewritten_with_the_els_own_id() {
        let request =
            br#"{"id":1.50,"params":["0x0000000000000001"],"jsonrpc":"2.0","method":"engine_getPayloadV5"}"#;
        let rewritten = rewrite_get_payload(request, PayloadId(0xff)).expect("a getPayload");
        assert_eq!(
            rewritten,
            br#"{"jsonrpc":"2.0","id":1.50,"method":"engine_getPayloadV5","params":["0x00000000000000ff"]}"#,
            "the id's raw text is kept, so the EL's answer carries the BN's id exactly"
        );
        let bodies = br#"{"id":1,"method":"engine_getPayloadBodiesByHashV1","params":[[]]}"#;
        assert_eq!(rewrite_get_payload(bodies, PayloadId(1)), None);
        assert_eq!(rewrite_get_payload(b"[]", PayloadId(1)), None);
    }

    #[test]
    fn the_map_gives_each_el_its_own_id() {
        let t0 = Instant::now();
        let mut map = PayloadMap::new();
        let given = PayloadId(10);
        map.remember(given, 0, given, t0);
        map.remember(given, 2, PayloadId(30), t0);
        assert_eq!(map.targets(given, 3, t0), vec![Some(given), None, Some(PayloadId(30))]);
        assert_eq!(map.targets(PayloadId(99), 2, t0), vec![None, None], "unknown id");
        // The BN got EL 1's id (the primary was down): the map is keyed by what the BN holds.
        map.remember(PayloadId(21), 1, PayloadId(21), t0);
        map.remember(PayloadId(21), 0, PayloadId(11), t0);
        assert_eq!(map.targets(PayloadId(21), 2, t0), vec![Some(PayloadId(11)), Some(PayloadId(21))]);
        // An EL index past the bound is not remembered.
        map.remember(given, MAX_ELS, PayloadId(1), t0);
        assert_eq!(map.targets(given, MAX_ELS + 1, t0)[MAX_ELS], None);
    }

    #[test]
    fn the_map_is_bounded_and_expires() {
        let t0 = Instant::now();
        let mut map = PayloadMap::new();
        for n in 0..(MAX_MAPPED as u64 + 3) {
            map.remember(PayloadId(n), 0, PayloadId(n), t0);
        }
        assert_eq!((map.len(), map.dropped()), (MAX_MAPPED, 3));
        assert_eq!(map.targets(PayloadId(0), 1, t0), vec![None], "the oldest was dropped");
        assert_eq!(map.targets(PayloadId(3), 1, t0), vec![Some(PayloadId(3))]);
        let later = t0 + MAPPING_TTL + ms(1);
        assert_eq!(map.targets(PayloadId(3), 1, later), vec![None]);
        assert!(map.is_empty());
    }

    #[test]
    fn the_highest_value_in_time_wins_and_the_gain_is_reported() {
        let t0 = Instant::now();
        let d = DEFAULT_CHOICE_DEADLINE;
        let got = [Got::Payload(Some(wei(100))), Got::Payload(Some(wei(250))), Got::Payload(Some(wei(200)))];
        assert_eq!(
            choose(&got, 0, t0, d, t0 + ms(50)),
            Choice::Relay(Report {
                el: 1,
                value: wei(250),
                primary_value: Some(wei(100)),
                gain: Some(wei(150))
            })
        );
        // A tie keeps the primary.
        let tie = [Got::Payload(Some(wei(5))), Got::Payload(Some(wei(5)))];
        assert_eq!(
            choose(&tie, 0, t0, d, t0),
            Choice::Relay(Report { el: 0, value: wei(5), primary_value: Some(wei(5)), gain: None })
        );
    }

    #[test]
    fn an_el_slower_than_the_deadline_and_one_answering_an_error_are_skipped() {
        let t0 = Instant::now();
        let d = DEFAULT_CHOICE_DEADLINE;
        let got = [Got::Payload(Some(wei(100))), Got::Pending, Got::Error];
        assert_eq!(choose(&got, 0, t0, d, t0 + ms(10)), Choice::Wait { until: t0 + d });
        assert_eq!(
            choose(&got, 0, t0, d, t0 + d),
            Choice::Relay(Report { el: 0, value: wei(100), primary_value: Some(wei(100)), gain: None })
        );
        // The primary is the slow one: the best that came is relayed, with no gain to report.
        let got = [Got::Pending, Got::Payload(Some(wei(7))), Got::Error];
        assert_eq!(
            choose(&got, 0, t0, d, t0 + d),
            Choice::Relay(Report { el: 1, value: wei(7), primary_value: None, gain: None })
        );
    }

    #[test]
    fn without_any_value_the_primary_rule_decides() {
        let t0 = Instant::now();
        let d = DEFAULT_CHOICE_DEADLINE;
        assert_eq!(choose(&[Got::Payload(None), Got::Error], 0, t0, d, t0), Choice::Fallback);
        assert_eq!(choose(&[Got::Pending, Got::Error], 0, t0, d, t0 + d), Choice::Fallback);
        assert_eq!(choose(&[Got::Failed, Got::Failed], 0, t0, d, t0), Choice::Fallback);
    }
}
