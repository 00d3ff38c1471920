//! The incremental request scanner against the whole-body scan: the first two bytes of the
//! input choose how many chunk ends there are and the rest of the input is the body; chunk
//! ends are drawn from the body's bytes, so every split point is reachable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_proxy::rpc::differential::check_chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&count, body)) = data.split_first() else {
        return;
    };
    let len = body.len().max(1);
    let cuts: Vec<usize> = body
        .iter()
        .step_by((body.len() / usize::from(count).max(1)).max(1))
        .enumerate()
        .map(|(k, &byte)| (k * 131 + usize::from(byte) * 7) % (len + 1))
        .collect();
    if let Err(e) = check_chunked(body, &cuts) {
        panic!("chunked scan differs from the whole-body scan: {e}");
    }
});
