//! The single integration-test binary: every test drives the real `sync-proxy` binary over
//! 127.0.0.1 against mock execution clients that record exactly what they receive.

mod util;
mod util_selftest;

mod auth_metrics;
mod bounds;
mod budget;
mod combined_errors;
mod cut_through;
mod engine_api;
mod hostile;
mod http_cli;
mod lanes;
mod large_answers;
mod lingering;
mod partition;
mod payload;
mod payload_selftest;
mod piped;
mod probes_sync;
mod realnet;
mod relay;
mod reload_resolve;
mod routing;
mod stale_token_warning;
mod tls_el;
mod trust;
