//! Answers read whole and read in scheduled pieces, then the connection closed, must give the
//! same outcomes, and every step must be one an upstream connection can follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_proxy_fuzz::{http::read_responses, schedule::Schedule};

fuzz_target!(|data: &[u8]| {
    let input = Schedule::new(data);
    let whole = read_responses(input.limits, &[input.stream]);
    let cut = read_responses(input.limits, &input.pieces());
    assert_eq!(whole, cut, "the same bytes read differently when cut into pieces");
});
