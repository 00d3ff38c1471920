//! The zero-copy JSON-RPC scanner against serde_json, as a request body and as an answer body;
//! `rpc::differential` knows the documented differences that are allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_proxy::rpc::differential::{check_request, check_response};

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_request(data) {
        panic!("scan_request differs from serde_json: {e}");
    }
    if let Err(e) = check_response(data) {
        panic!("scan_response differs from serde_json: {e}");
    }
});
