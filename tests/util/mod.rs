//! Test-side helpers for the integration binary: scripted mock execution clients
//! (`mock_el`, answering with `reply` to each `received` request), a beacon-node client
//! (`client`), and a launcher for the crate's binaries (`proxy`); `wire` is the HTTP/1.1
//! framing the mock and the client share.
//!
//! Everything binds or connects to 127.0.0.1 only, and every wait is bounded and panics
//! with a message that says what was awaited.
//!
//! Use from a test module declared in `tests/main.rs`:
//! `use crate::util::{MockEl, Proxy, Reply, new_payload, TIMEOUT};`.

// Each test file uses a different part of this toolkit, so in any one build of the test
// binary some helpers look unused (here and in the re-exports below).
#![allow(dead_code)]

pub mod client;
pub mod mock_el;
pub mod proxy;
pub mod received;
pub mod reply;
pub mod temp_file;
mod wire;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

// Re-exports, so tests import from `crate::util` alone; each test file uses a few.
#[allow(unused_imports)]
pub use self::{
    client::{
        fcu, hash, new_payload, post_request, quantity, rpc_body, rpc_body_with_id, sample, Bn, HttpResponse,
        KeyOrder, ReadError,
    },
    mock_el::{Behaviour, LateDelivery, MockEl},
    proxy::{run_bin_expect_exit, run_proxy_expect_exit, Exited, Launch, Proxy, SYNC_PROXY},
    received::{without_repeats, Received},
    reply::{
        default_reply, default_result, reply_status, rpc_error, rpc_result, sequence, Framing, Gate, Reply,
        ZERO_HASH,
    },
    temp_file::TempFile,
    wire::encode_chunked,
};

/// A generous bound for waits that should end in milliseconds; reaching it means a bug.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `condition` every few milliseconds until it holds; panics naming `what` when
/// `timeout` passes first. For conditions no `Condvar` announces (metrics, files).
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Locks a mutex even if a panicking test thread poisoned it: the helpers' shared state
/// stays consistent under each lock, and one failed test must not cascade.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
