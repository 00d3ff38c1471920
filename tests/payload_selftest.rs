//! Self-tests of the payload generator (`tests/payload.rs`): sizes, fork shapes, determinism,
//! and the fuzz seeds it made. They live here, not in the module, because the benchmarks
//! include that module too.

use crate::payload::*;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("generated bodies are JSON")
}

#[test]
fn new_payload_has_the_size_asked_for_and_the_fork_shape() {
    for fork in [Fork::Deneb, Fork::Electra, Fork::Osaka, Fork::Amsterdam] {
        for size in [2 << 10, 16 << 10, 128 << 10, 1 << 20] {
            let body = NewPayload::new(fork, size).body();
            assert_eq!(body.len(), size, "{fork:?} {size}");
            let v = json(&body);
            assert_eq!(v["method"], fork.new_payload_method());
            let params = v["params"].as_array().unwrap();
            assert_eq!(params.len(), if fork == Fork::Deneb { 3 } else { 4 }, "{fork:?}");
            let payload = &params[0];
            assert_eq!(payload["timestamp"], format!("0x{:x}", slot_timestamp(0)));
            for tx in payload["transactions"].as_array().unwrap() {
                assert!(tx.as_str().unwrap().starts_with("0x02"), "{tx}");
            }
            let big = size >= BIG;
            assert_eq!(payload["withdrawals"].as_array().unwrap().len(), if big { 16 } else { 0 });
            assert_eq!(params[1].as_array().unwrap().len(), if big { 3 } else { 0 });
            if fork != Fork::Deneb {
                let requests = params[3].as_array().unwrap();
                assert_eq!(requests.len(), if big { 3 } else { 0 });
                for (i, r) in requests.iter().enumerate() {
                    assert!(r.as_str().unwrap().starts_with(&format!("0x0{i}")), "{r}");
                }
            }
            assert_eq!(payload.get("blockAccessList").is_some(), fork == Fork::Amsterdam);
        }
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = NewPayload::new(Fork::Electra, 64 << 10).seed(7).body();
    assert_eq!(a, NewPayload::new(Fork::Electra, 64 << 10).seed(7).body());
    assert_ne!(a, NewPayload::new(Fork::Electra, 64 << 10).seed(8).body());
}

#[test]
fn a_size_below_an_empty_block_gets_the_empty_block() {
    let body = NewPayload::new(Fork::Deneb, 100).body();
    assert!(body.len() > 1300 && body.len() < 1500, "{}", body.len());
    assert!(json(&body)["params"][0]["transactions"].as_array().unwrap().is_empty());
}

#[test]
fn transactions_are_rlp_framed() {
    let mut rng = Rng::new(3);
    for n in [3, 56, 57, 58, 300, 70_000] {
        let mut s = String::new();
        typed_into(&mut rng, &mut s, 0x02, n);
        assert_eq!(s.len(), 2 * n + 4, "{n}");
    }
}

#[test]
fn get_payload_answers_carry_the_blob_bundle() {
    let body = get_payload_answer(Fork::Osaka, 5, 32 << 10, 2, 1);
    let v = json(&body);
    let bundle = &v["result"]["blobsBundle"];
    assert_eq!(bundle["blobs"].as_array().unwrap().len(), 2);
    assert_eq!(bundle["blobs"][0].as_str().unwrap().len(), 2 + 2 * BLOB_BYTES);
    assert_eq!(bundle["proofs"].as_array().unwrap().len(), 2 * CELLS_PER_EXT_BLOB);
    assert_eq!(v["result"]["executionRequests"].as_array().unwrap().len(), 3);
    let deneb = json(&get_payload_answer(Fork::Deneb, 5, 2 << 10, 1, 1));
    assert_eq!(deneb["result"]["blobsBundle"]["proofs"].as_array().unwrap().len(), 1);
    assert!(deneb["result"].get("executionRequests").is_none());
}

#[test]
fn forkchoice_updated_carries_the_next_timestamp() {
    let v = json(&forkchoice_updated(Fork::Amsterdam, 2, 0, 1));
    assert_eq!(v["method"], "engine_forkchoiceUpdatedV4");
    assert_eq!(v["params"][1]["timestamp"], format!("0x{:x}", slot_timestamp(1)));
    assert!(v["params"][1]["slotNumber"].is_string());
}

/// The fuzz seeds made by this generator (`fuzz/corpus/json_scan/seed-gen-*`): the fuzz
/// crate cannot run this module, so the seeds are checked in, and this test keeps them
/// what the generator makes. `REGENERATE_FUZZ_SEEDS=1 cargo test --test integration
/// fuzz_seeds` rewrites them after a change here.
#[test]
fn fuzz_seeds_match_the_generator() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/json_scan");
    let seeds = [
        ("seed-gen-newpayload-v4-17k", NewPayload::new(Fork::Electra, 17 << 10).seed(11).body()),
        ("seed-gen-newpayload-v5-17k", NewPayload::new(Fork::Amsterdam, 17 << 10).seed(12).body()),
        ("seed-gen-fcu-v4", forkchoice_updated(Fork::Amsterdam, 3, 0, 13)),
    ];
    for (name, body) in seeds {
        let path = dir.join(name);
        if std::env::var_os("REGENERATE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, &body).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(stored == body, "{name} differs from the generator's output; regenerate it");
    }
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("1k"), Some(1024));
    assert_eq!(parse_size("8m"), Some(8 << 20));
    assert_eq!(parse_size("300"), Some(300));
    assert_eq!(parse_size("x"), None);
}
