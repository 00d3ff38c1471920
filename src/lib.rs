//! sync-proxy fans one or more beacon nodes' Engine API calls out to several execution
//! clients.
//!
//! A request flows listener → downstream → policy → upstreams → answer. `shell` owns the
//! sockets and the one poll loop (`shell::poll_loop`: poll, clock, accepting, capped reads of
//! beacon node connections with a revisit list, their writes, deadlines and reaping), which
//! both programs run on; `event_loop` is the proxy on that loop (its `requests` turn bytes
//! into exchanges, its `answers` turn the execution clients' outcomes into the beacon node's
//! answer, and it drives the execution client connections); `core` holds the pure
//! decisions on the way (`intake`: a request's route and token; `budget`: the process-wide
//! memory budget; `exchange`: one request's life across the execution clients, its fallback,
//! decision and deadline; `hold`: the primary-first hold; `compose`: the answer of a decided
//! exchange); the shell's sockets (listeners with their caps, the beacon node and execution
//! client connections' sockets) are never held by the connection state machines;
//! `tokens_service` is `jwt-tokens-service`, a small program of its own on the shell's loop;
//! `downstream` is one beacon node connection (pipelined requests answered in order; it is
//! told the bytes read and says the bytes to write); `http` reads and writes HTTP/1.1
//! without sockets; `rpc` finds method, id, timestamps and status in raw JSON without
//! building a tree; `policy` decides who
//! gets a call, which answer wins and which beacon node is followed; `upstream` is one execution client with its ordered,
//! bounded backlog; `jwt` mints and checks HS256 tokens; `config` turns the command line into
//! a `Config`; `logging` writes text or JSON log lines; `metrics` counts what happens and
//! renders `/metrics` and `/status`; `signals` turns SIGTERM/SIGINT into a stop request and
//! SIGHUP into a reload; `reload` plans what a reload changes in the list of execution clients;
//! `resolve` looks their names up again on a helper thread; `pool` keeps one spare large-body
//! buffer; `probes` decides `/healthz` and `/readyz`; `sync_view` keeps each execution client's
//! newest VALID payload and how far behind it is; `tls` is the optional TLS session of an
//! `https://` execution client's connection, which the shell keeps beside its socket.
#![forbid(unsafe_code)]

pub mod answer_policy;
pub mod beacons;
pub mod config;
pub mod core;
pub mod downstream;
pub mod event_loop;
pub mod http;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod payload_choice;
pub mod policy;
pub mod pool;
pub mod probes;
pub mod reload;
pub mod resolve;
pub mod rpc;
pub mod shell;
pub mod signals;
pub mod sync_view;
pub mod tls;
pub mod tokens_service;
pub mod upstream;
