//! One beacon node connection, its exchanges and the memory budget driven by random events
//! and byte splits on a fake clock; every bound must hold after every event (see
//! `sync_proxy_fuzz::core`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sync_proxy_fuzz::core::run(data));
