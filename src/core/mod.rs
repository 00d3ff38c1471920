//! The sans-IO core: the decisions about requests and answers, as functions of bytes, state
//! and `now` passed in. It knows no sockets, no `mio` and no clock; the event loop moves the
//! bytes and calls in here.
//!
//! `budget` is the process-wide memory budget; `intake` routes one request and checks its token; `hold` says how long the secondary
//! clients' copies wait for the primary; `compose` turns a decided exchange into the beacon
//! node's answer.

pub mod budget;
pub mod compose;
pub mod hold;
pub mod intake;
