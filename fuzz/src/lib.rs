//! Helpers for the sync-proxy fuzz targets, so that each target stays a few lines.
//!
//! `schedule` turns an input into read caps and the pieces a byte stream arrives in; `http`
//! drives the HTTP readers exactly as the event loop and an upstream connection do, checking the
//! invariants callers rely on; `jwt` holds the token properties; `core` drives a beacon node connection, its exchanges and the
//! memory budget with random events on a fake clock; `args` builds command lines
//! that `config::parse` can resolve and read without leaving the machine.
//!
//! Seed corpora live in `corpus/<target>/seed-*` (the only corpus files git keeps) and
//! dictionaries in `dict/<target>.dict`; `run.sh` runs the targets.

pub mod args;
pub mod core;
pub mod http;
pub mod jwt;
pub mod schedule;
