//! Pipelined requests read whole and read in scheduled pieces must give the same events, and
//! every step must be one the event loop can follow (see `sync_proxy_fuzz::http`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_proxy_fuzz::{http::read_requests, schedule::Schedule};

fuzz_target!(|data: &[u8]| {
    let input = Schedule::new(data);
    let whole = read_requests(input.limits, &[input.stream]);
    let cut = read_requests(input.limits, &input.pieces());
    assert_eq!(whole, cut, "the same bytes read differently when cut into pieces");
});
