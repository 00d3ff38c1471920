//! Pure routing policy: which execution clients get a call, how long they have, which answer
//! the beacon node gets, and the answers the proxy writes itself
//! (which beacon node is followed is `beacons`).
//!
//! Nothing here knows sockets or HTTP; it knows method names, timestamps and JSON-RPC bodies.

use std::time::Duration;

/// What kind of call a request is, by its method name. Versions are matched by prefix so a
/// new `V<n>` of a known method is handled like its predecessors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    NewPayload,
    ForkchoiceUpdated,
    GetPayload,
    GetPayloadBodies,
    GetBlobs,
    ExchangeCapabilities,
    GetClientVersion,
    /// Any other `engine_*` method: fanned out, the primary's answer wins.
    OtherEngine,
    /// Not an Engine API call (`eth_*`, `net_*`, …), a batch, or no method: primary only.
    NonEngine,
}

impl Class {
    pub fn of(method: Option<&str>) -> Class {
        let Some(method) = method else { return Class::NonEngine };
        let Some(name) = method.strip_prefix("engine_") else { return Class::NonEngine };
        const TABLE: &[(&str, Class)] = &[
            ("newPayload", Class::NewPayload),
            ("forkchoiceUpdated", Class::ForkchoiceUpdated),
            ("getPayloadBodies", Class::GetPayloadBodies),
            ("getPayload", Class::GetPayload),
            ("getBlobs", Class::GetBlobs),
            ("exchangeCapabilities", Class::ExchangeCapabilities),
            ("getClientVersion", Class::GetClientVersion),
        ];
        TABLE.iter().find(|(prefix, _)| name.starts_with(prefix)).map_or(Class::OtherEngine, |&(_, c)| c)
    }

    /// Calls that change an execution client's state reach it one at a time, in arrival order.
    pub fn is_ordered(self) -> bool {
        matches!(self, Class::NewPayload | Class::ForkchoiceUpdated)
    }

    /// Engine calls go to every execution client; the rest to the primary (with fallback).
    pub fn is_fanned_out(self) -> bool {
        self != Class::NonEngine
    }

    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Class::NewPayload => "newPayload",
            Class::ForkchoiceUpdated => "forkchoiceUpdated",
            Class::GetPayload => "getPayload",
            Class::GetPayloadBodies => "getPayloadBodies",
            Class::GetBlobs => "getBlobs",
            Class::ExchangeCapabilities => "exchangeCapabilities",
            Class::GetClientVersion => "getClientVersion",
            Class::OtherEngine => "otherEngine",
            Class::NonEngine => "nonEngine",
        }
    }
}

/// The consensus layer's timeout for a method (execution-apis, src/engine/*.md), unless the
/// operator set one value for all. `engine_newPayloadV5` onwards (Amsterdam) has 6 s.
pub fn timeout_for(method: Option<&str>, class: Class, all: Option<Duration>) -> Duration {
    if let Some(all) = all {
        return all;
    }
    let secs = match class {
        Class::NewPayload => match method.and_then(version_of) {
            Some(v) if v >= 5 => 6,
            _ => 8,
        },
        Class::ForkchoiceUpdated => 8,
        Class::GetPayloadBodies => 10,
        _ => 1,
    };
    Duration::from_secs(secs)
}

/// The `N` of a method name ending in `V<N>`.
fn version_of(method: &str) -> Option<u32> {
    let (_, digits) = method.rsplit_once('V')?;
    digits.parse().ok()
}

/// How the beacon node's answer is made from the execution clients' answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The primary's answer, or the next in list order that answered.
    FirstInOrder,
    /// `engine_getClientVersionV1`: the arrays of every client that answered with a result,
    /// concatenated, primary first (see `combine_answers` for clients that answered errors).
    ClientVersions,
    /// `engine_exchangeCapabilities`: the methods every client that answered with a result
    /// supports.
    Capabilities,
}

impl Combine {
    pub fn for_class(class: Class) -> Combine {
        match class {
            Class::GetClientVersion => Combine::ClientVersions,
            Class::ExchangeCapabilities => Combine::Capabilities,
            _ => Combine::FirstInOrder,
        }
    }
}

/// Where one execution client stands in deciding the beacon node's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Pending,
    Answered,
    Failed,
}

/// The decision, once it can be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Relay this client's answer unchanged.
    Relay(usize),
    /// Combine the answers of these clients (every one that answered), in list order: see
    /// `combine_answers`.
    Combine(Vec<usize>),
    /// Nobody answered.
    NoAnswer,
    /// `--answer-policy safe`: the clients split on validity; the beacon node gets SYNCING.
    Syncing(crate::answer_policy::Disagreement),
}

/// Decides the beacon node's answer from the clients' standings (in `--builders` order), as
/// early as possible: the primary's answer is relayed the moment it arrives, whatever the
/// others are doing; a later client's answer only once every client before it has failed.
pub fn choose(combine: Combine, standings: &[Standing]) -> Option<Choice> {
    match combine {
        Combine::FirstInOrder => {
            for (i, s) in standings.iter().enumerate() {
                match s {
                    Standing::Answered => return Some(Choice::Relay(i)),
                    Standing::Pending => return None,
                    Standing::Failed => {}
                }
            }
            Some(Choice::NoAnswer)
        }
        Combine::ClientVersions | Combine::Capabilities => {
            if standings.contains(&Standing::Pending) {
                return None;
            }
            let answered: Vec<usize> =
                (0..standings.len()).filter(|&i| standings[i] == Standing::Answered).collect();
            Some(if answered.is_empty() { Choice::NoAnswer } else { Choice::Combine(answered) })
        }
    }
}

/// The result a filtered `forkchoiceUpdated` gets: valid JSON-RPC that tells the beacon node
/// the execution client is syncing, without starting a payload build.
pub const SYNCING_FCU_RESULT: &[u8] =
    br#"{"payloadStatus":{"status":"SYNCING","latestValidHash":null,"validationError":null},"payloadId":null}"#;
const SYNCING_PAYLOAD_RESULT: &[u8] =
    br#"{"status":"SYNCING","latestValidHash":null,"validationError":null}"#;

/// `{"jsonrpc":"2.0","id":<id>,"result":<result>}`, with the id's raw JSON text.
pub fn result_body(id: Option<&[u8]>, result: &[u8]) -> Vec<u8> {
    let id = id.unwrap_or(b"null");
    let mut out = Vec::with_capacity(40 + id.len() + result.len());
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id);
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(result);
    out.push(b'}');
    out
}

/// `{"jsonrpc":"2.0","id":<id>,"error":{"code":<code>,"message":"<message>"}}`.
pub fn error_body(id: Option<&[u8]>, code: i64, message: &str) -> Vec<u8> {
    let id = id.unwrap_or(b"null");
    let message = serde_json::Value::String(message.to_string()).to_string();
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{message}}}}}"#,
        String::from_utf8_lossy(id)
    )
    .into_bytes()
}

/// The acknowledgement sent at once in `--mirror-mode`: nobody reads it (nginx drops mirror
/// answers), but it is valid JSON-RPC that claims nothing beyond "not yet known".
pub fn mirror_ack(class: Class, id: Option<&[u8]>) -> Vec<u8> {
    let result: &[u8] = match class {
        Class::NewPayload => SYNCING_PAYLOAD_RESULT,
        Class::ForkchoiceUpdated => SYNCING_FCU_RESULT,
        _ => b"null",
    };
    result_body(id, result)
}

/// What the beacon node gets for a call whose answer is combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Combined {
    /// A new answer made of these clients' `result` arrays (in list order); the clients in
    /// `left_out` answered, but without a usable result (a JSON-RPC error, or a result that is
    /// not an array).
    Body { body: Vec<u8>, from: Vec<usize>, left_out: Vec<usize> },
    /// No client answered with a result: this client's answer (the first in list order that
    /// answered at all) is relayed as it came, as for any other call. An execution client that
    /// lacks the method answers a JSON-RPC error (EthereumJS: `-32601 Method not found` to
    /// `engine_getClientVersionV1`), and that is an answer, not a failure.
    Relay(usize),
}

/// The largest `result` one client may contribute to a combined answer. Real ones are small
/// (a capabilities list is ~2 KB, a client version ~200 B); a larger one is left out, as a
/// result that is not an array is, so that combining costs at most a few milliseconds of the
/// event loop whatever a client sends.
pub const COMBINE_MAX_RESULT: usize = 256 * 1024;

/// Combines the answers of the clients that answered, given in list order as (client, the raw
/// text of its `result` if it had one). None when nobody answered. Linear in the size of the
/// results: the intersection looks each item up in a hash set per client.
pub fn combine_answers(
    combine: Combine,
    id: Option<&[u8]>,
    answers: &[(usize, Option<&[u8]>)],
) -> Option<Combined> {
    let first = answers.first()?.0;
    let mut arrays: Vec<Vec<serde_json::Value>> = Vec::new();
    let (mut from, mut left_out) = (Vec::new(), Vec::new());
    for &(client, result) in answers {
        let result = result.filter(|r| r.len() <= COMBINE_MAX_RESULT);
        match result.map(serde_json::from_slice::<serde_json::Value>) {
            Some(Ok(serde_json::Value::Array(items))) => {
                arrays.push(items);
                from.push(client);
            }
            _ => left_out.push(client),
        }
    }
    let Some(head) = arrays.first() else { return Some(Combined::Relay(first)) };
    let combined: Vec<serde_json::Value> = match combine {
        Combine::ClientVersions => arrays.iter().flatten().cloned().collect(),
        Combine::Capabilities => {
            // Items compared by their JSON text (method names are strings; anything else is
            // compared as written), one hash set per other client.
            let others: Vec<std::collections::HashSet<String>> = arrays[1..]
                .iter()
                .map(|items| items.iter().map(serde_json::Value::to_string).collect())
                .collect();
            head.iter()
                .filter(|m| {
                    let key = m.to_string();
                    others.iter().all(|set| set.contains(&key))
                })
                .cloned()
                .collect()
        }
        Combine::FirstInOrder => head.clone(),
    };
    let result = serde_json::Value::Array(combined).to_string();
    Some(Combined::Body { body: result_body(id, result.as_bytes()), from, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_prefix() {
        let cases = [
            ("engine_newPayloadV1", Class::NewPayload),
            ("engine_newPayloadV5", Class::NewPayload),
            ("engine_forkchoiceUpdatedV4", Class::ForkchoiceUpdated),
            ("engine_getPayloadV6", Class::GetPayload),
            ("engine_getPayloadBodiesByRangeV1", Class::GetPayloadBodies),
            ("engine_getBlobsV2", Class::GetBlobs),
            ("engine_exchangeCapabilities", Class::ExchangeCapabilities),
            ("engine_getClientVersionV1", Class::GetClientVersion),
            ("engine_exchangeTransitionConfigurationV1", Class::OtherEngine),
            ("eth_blockNumber", Class::NonEngine),
            ("engine", Class::NonEngine),
        ];
        for (method, class) in cases {
            assert_eq!(Class::of(Some(method)), class, "{method}");
        }
        assert_eq!(Class::of(None), Class::NonEngine);
    }

    #[test]
    fn intersecting_large_capability_lists_is_linear() {
        // Two clients answering 15,000 names each froze the event loop for 2.5 s when every
        // name was searched for in the other list. Now each list goes into a hash set once.
        let names = |from: usize, to: usize| {
            let items: Vec<String> = (from..to).map(|i| format!("\"m{i:05}\"")).collect();
            format!("[{}]", items.join(","))
        };
        let (a, b) = (names(0, 15_000), names(5_000, 20_000));
        let answers = [(0, Some(a.as_bytes())), (1, Some(b.as_bytes()))];
        let Some(Combined::Body { body, from, left_out }) =
            combine_answers(Combine::Capabilities, Some(b"1"), &answers)
        else {
            panic!("combined")
        };
        assert_eq!((from, left_out), (vec![0, 1], vec![]));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let result = v["result"].as_array().expect("array");
        assert_eq!(result.len(), 10_000, "the names both lists have");
        assert_eq!(result[0], "m05000");
        assert_eq!(result[9_999], "m14999");
    }

    #[test]
    fn a_result_over_the_combine_cap_is_left_out() {
        let big = format!("[{}]", vec!["\"engine_x\""; COMBINE_MAX_RESULT / 10].join(","));
        assert!(big.len() > COMBINE_MAX_RESULT);
        let small: &[u8] = br#"["engine_x","engine_y"]"#;
        let answers = [(0, Some(big.as_bytes())), (1, Some(small))];
        let Some(Combined::Body { from, left_out, .. }) =
            combine_answers(Combine::Capabilities, Some(b"1"), &answers)
        else {
            panic!("combined")
        };
        assert_eq!((from, left_out), (vec![1], vec![0]));
        let only_big = [(0, Some(big.as_bytes()))];
        assert_eq!(combine_answers(Combine::Capabilities, None, &only_big), Some(Combined::Relay(0)));
    }

    #[test]
    fn spec_timeouts() {
        let t = |m: &str| timeout_for(Some(m), Class::of(Some(m)), None).as_secs();
        assert_eq!(t("engine_newPayloadV4"), 8);
        assert_eq!(t("engine_newPayloadV5"), 6);
        assert_eq!(t("engine_forkchoiceUpdatedV3"), 8);
        assert_eq!(t("engine_getPayloadV4"), 1);
        assert_eq!(t("engine_getPayloadBodiesByHashV1"), 10);
        assert_eq!(t("engine_exchangeCapabilities"), 1);
        assert_eq!(t("eth_chainId"), 1);
        let all = Some(Duration::from_millis(250));
        assert_eq!(
            timeout_for(Some("engine_newPayloadV3"), Class::NewPayload, all),
            Duration::from_millis(250)
        );
    }

    /// The later forks' methods against execution-apis (amsterdam.md, osaka.md, bogota.md):
    /// newPayloadV6 has 6 s like V5, forkchoiceUpdatedV4/V5 8 s, getPayloadV5–V7,
    /// getInclusionListV1, updatePayloadWithInclusionListV1 and getBlobsV2/V3 1 s, the V2
    /// payload-bodies calls 10 s. Matching by prefix must keep giving these to new versions.
    #[test]
    fn later_fork_timeouts_follow_the_spec() {
        let t = |m: &str| timeout_for(Some(m), Class::of(Some(m)), None).as_secs();
        let cases = [
            ("engine_newPayloadV5", 6),
            ("engine_newPayloadV6", 6),
            ("engine_forkchoiceUpdatedV4", 8),
            ("engine_forkchoiceUpdatedV5", 8),
            ("engine_getPayloadV5", 1),
            ("engine_getPayloadV6", 1),
            ("engine_getPayloadV7", 1),
            ("engine_getInclusionListV1", 1),
            ("engine_updatePayloadWithInclusionListV1", 1),
            ("engine_getBlobsV2", 1),
            ("engine_getBlobsV3", 1),
            ("engine_getPayloadBodiesByHashV2", 10),
            ("engine_getPayloadBodiesByRangeV2", 10),
        ];
        for (method, secs) in cases {
            assert_eq!(t(method), secs, "{method}");
        }
    }

    #[test]
    fn first_in_order_waits_only_for_earlier_clients() {
        use Standing::*;
        let cases: &[(&[Standing], Option<Choice>)] = &[
            (&[Answered, Pending], Some(Choice::Relay(0))),
            (&[Pending, Answered], None),
            (&[Failed, Answered], Some(Choice::Relay(1))),
            (&[Failed, Pending, Answered], None),
            (&[Failed, Failed], Some(Choice::NoAnswer)),
        ];
        for (standings, choice) in cases {
            assert_eq!(&choose(Combine::FirstInOrder, standings), choice, "{standings:?}");
        }
    }

    #[test]
    fn combined_answers_wait_for_everyone() {
        use Standing::*;
        assert_eq!(choose(Combine::ClientVersions, &[Answered, Pending]), None);
        assert_eq!(
            choose(Combine::Capabilities, &[Failed, Answered, Answered]),
            Some(Choice::Combine(vec![1, 2]))
        );
        assert_eq!(choose(Combine::Capabilities, &[Failed, Failed]), Some(Choice::NoAnswer));
    }

    /// The body of a combined answer, or a panic naming what came instead.
    #[track_caller]
    fn combined_body(combine: Combine, id: &[u8], answers: &[(usize, Option<&[u8]>)]) -> Vec<u8> {
        match combine_answers(combine, Some(id), answers) {
            Some(Combined::Body { body, .. }) => body,
            other => panic!("expected a combined body, got {other:?}"),
        }
    }

    #[test]
    fn combine_concatenates_and_intersects() {
        let a: &[u8] = br#"[{"code":"GE"}]"#;
        let b: &[u8] = br#"[{"code":"NM"}]"#;
        let body = combined_body(Combine::ClientVersions, b"7", &[(0, Some(a)), (1, Some(b))]);
        assert_eq!(body, br#"{"jsonrpc":"2.0","id":7,"result":[{"code":"GE"},{"code":"NM"}]}"#);
        let a: &[u8] = br#"["engine_newPayloadV3","engine_newPayloadV4","engine_getPayloadV4"]"#;
        let b: &[u8] = br#"["engine_getPayloadV4","engine_newPayloadV3"]"#;
        let body = combined_body(Combine::Capabilities, b"\"x\"", &[(0, Some(a)), (1, Some(b))]);
        assert_eq!(
            body,
            br#"{"jsonrpc":"2.0","id":"x","result":["engine_newPayloadV3","engine_getPayloadV4"]}"#
        );
        assert_eq!(combine_answers(Combine::Capabilities, None, &[]), None, "nobody answered");
    }

    #[test]
    fn regression_an_el_answering_a_json_rpc_error_to_a_combined_method_was_no_answer() {
        // (client, its result): None is an answer without a result (a JSON-RPC error such as
        // EthereumJS's -32601 to engine_getClientVersionV1).
        let version: &[u8] = br#"[{"code":"NM"}]"#;
        let caps: &[u8] = br#"["engine_newPayloadV3"]"#;
        for combine in [Combine::ClientVersions, Combine::Capabilities] {
            let result = if combine == Combine::ClientVersions { version } else { caps };
            let expected = [&br#"{"jsonrpc":"2.0","id":1,"result":"#[..], result, b"}"].concat();
            // Everyone answered an error: the first in list order is relayed as it came.
            assert_eq!(
                combine_answers(combine, Some(b"1"), &[(0, None), (1, None)]),
                Some(Combined::Relay(0))
            );
            // The primary failed (it is not among the answers): the next that answered.
            assert_eq!(
                combine_answers(combine, Some(b"1"), &[(1, None), (2, None)]),
                Some(Combined::Relay(1))
            );
            // An error and a result: the result alone, the error named as left out.
            assert_eq!(
                combine_answers(combine, Some(b"1"), &[(0, None), (1, Some(result))]),
                Some(Combined::Body { body: expected.clone(), from: vec![1], left_out: vec![0] })
            );
            assert_eq!(
                combine_answers(combine, Some(b"1"), &[(0, Some(result)), (2, None)]),
                Some(Combined::Body { body: expected, from: vec![0], left_out: vec![2] })
            );
            // A result that is not an array is no result either.
            let null: &[u8] = b"null";
            assert_eq!(
                combine_answers(combine, Some(b"1"), &[(0, Some(null)), (1, None)]),
                Some(Combined::Relay(0))
            );
        }
    }

    #[test]
    fn written_answers_are_valid_json_rpc() {
        for body in [
            result_body(Some(b"1"), SYNCING_FCU_RESULT),
            error_body(None, -32700, "parse \"error\""),
            mirror_ack(Class::NewPayload, Some(b"[1]")),
            mirror_ack(Class::GetPayload, None),
        ] {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(v["jsonrpc"], "2.0");
        }
    }
}
