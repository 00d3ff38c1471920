//! What the benchmarks share: the request bodies they run on. The bodies come from
//! `../shared/tools/payloads` (deterministic with `--seed 1`) and are written once into
//! `target/bench-payloads/`; without python3 or `../shared`, the 1 KiB and 128 KiB samples in
//! `../shared/samples` are used and the larger sizes are skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The body sizes the issue asks for, as the generator names them.
pub const SIZES: [&str; 4] = ["1k", "128k", "1m", "8m"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the generated bodies live.
pub fn payload_dir() -> PathBuf {
    manifest_dir().join("target").join("bench-payloads")
}

/// Generates the bodies once; later runs reuse them.
fn generate(dir: &Path) {
    if SIZES.iter().all(|s| dir.join(format!("newpayload-{s}.json")).exists()) {
        return;
    }
    let tool = manifest_dir().join("../shared/tools/payloads");
    let status = Command::new("python3")
        .arg(&tool)
        .arg(dir)
        .args(SIZES)
        .args(["--seed", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("note: {} could not run; using ../shared/samples where it has the size", tool.display());
    }
}

/// The `engine_newPayloadV3` body of the given size (`"1k"`, `"128k"`, `"1m"`, `"8m"`), keys in
/// the order Lodestar and Prysm send (`jsonrpc, id, method, params`). None when it cannot be had.
pub fn new_payload(size: &str) -> Option<Vec<u8>> {
    let dir = payload_dir();
    generate(&dir);
    let name = format!("newpayload-{size}.json");
    std::fs::read(dir.join(&name))
        .or_else(|_| std::fs::read(manifest_dir().join("../shared/samples").join(&name)))
        .ok()
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
