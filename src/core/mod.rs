//! The sans-IO core: the decisions about requests and answers, as functions of bytes, state
//! and `now` passed in. It knows no sockets, no `mio` and no clock; the event loop moves the
//! bytes and calls in here.
//!
//! In the order a request meets them: `intake` routes one request and checks its token;
//! `budget` is the process-wide memory budget its body must fit; `exchange` is the request's
//! life across the execution clients (standings, fallback, deciding, its deadline); `cut`
//! streams a large newPayload body to the primary as it arrives, holding its tail; `hold`
//! says how long the secondary clients' copies wait for the primary; `relay` says when an
//! execution client's answer goes to the beacon node as it arrives; `compose` turns a decided
//! exchange into the beacon node's answer.

pub mod budget;
pub mod compose;
pub mod cut;
pub mod exchange;
pub mod hold;
pub mod intake;
pub mod relay;
