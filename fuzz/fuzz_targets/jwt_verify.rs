//! Token verification, Bearer parsing, mint/verify round trips and secret parsing; the
//! properties are in `sync_proxy_fuzz::jwt`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sync_proxy_fuzz::jwt::check(data));
