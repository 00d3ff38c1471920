//! What the benchmarks share: the request bodies they run on, made by the project's own
//! generator (`tests/payload.rs`, deterministic: seed 1), so a benchmark needs nothing outside
//! the repository.

#![allow(dead_code)]

#[path = "../../tests/payload.rs"]
mod payload;

/// The body sizes the benchmarks run on, as `payload::parse_size` reads them.
pub const SIZES: [&str; 4] = ["1k", "128k", "1m", "8m"];

/// The `engine_newPayloadV3` body of the given size (`"1k"`, `"128k"`, `"1m"`, `"8m"`), keys in
/// the order Lodestar and Prysm send (`jsonrpc, id, method, params`). None for a size that does
/// not parse.
pub fn new_payload(size: &str) -> Option<Vec<u8>> {
    let bytes = payload::parse_size(size)?;
    Some(payload::NewPayload::new(payload::Fork::Deneb, bytes).seed(1).body())
}

/// The same request with its top-level members in reverse order (`params, method, id,
/// jsonrpc`), so `params` comes before the method that says which timestamp counts. serde_json
/// writes nested objects with their keys sorted, which changes no length.
pub fn reversed(body: &[u8]) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(body).expect("generated bodies are JSON");
    let serde_json::Value::Object(members) = value else { panic!("a request is an object") };
    let mut out = b"{".to_vec();
    for (i, key) in ["params", "method", "id", "jsonrpc"].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"{key}\":").as_bytes());
        out.extend_from_slice(&serde_json::to_vec(&members[*key]).expect("a Value serializes"));
    }
    out.push(b'}');
    out
}

/// An `engine_getPayloadV3` answer carrying the request's execution payload, so the answer
/// scanner runs on a body of about the same size as the request.
pub fn get_payload_answer(request: &[u8]) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(request).expect("generated bodies are JSON");
    let payload = &value["params"][0];
    let answer = serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "executionPayload": payload,
            "blockValue": "0x1bc16d674ec80000",
            "blobsBundle": { "commitments": [], "proofs": [], "blobs": [] },
            "shouldOverrideBuilder": false
        }
    });
    serde_json::to_vec(&answer).expect("a Value serializes")
}

/// A newPayload answer as an execution client writes it.
pub const VALID_ANSWER: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"result":{"status":"VALID","latestValidHash":"0x3559e851470f6e7bbed1db474980683e8c315bfce99b2a6ef47c057c04de7858","validationError":null}}"#;

/// The `engine_getPayloadV5` (Osaka) request a beacon node sends when it proposes.
pub const GET_PAYLOAD_V5: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"method":"engine_getPayloadV5","params":["0x0000000000000001"]}"#;

/// An `engine_getPayloadV5` answer for a 128 KiB block with `blobs` blobs (BlobsBundleV2: 128
/// cell proofs per blob), as an execution client writes it: 21 blobs make ~5.9 MB of JSON, 48
/// ~13 MB.
pub fn get_payload_v5_answer(blobs: usize) -> Vec<u8> {
    payload::get_payload_answer(payload::Fork::Osaka, 1, 128 << 10, blobs, 1)
}
