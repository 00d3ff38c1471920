//! The single integration-test binary: every test drives the real `sync-proxy` binary over
//! 127.0.0.1 against mock execution clients that record exactly what they receive.

mod util;
mod util_selftest;

mod auth_metrics;
mod engine_api;
mod hostile;
mod http_cli;
mod payload;
mod payload_selftest;
mod realnet;
mod routing;
