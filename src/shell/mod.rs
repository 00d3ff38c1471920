//! The shell: the code that owns sockets. The connection state machines (`downstream` for
//! beacon nodes, `upstream::Conn` for execution clients) own none; they decide, and the shell
//! connects, registers, reads into the loop's buffer, writes what a connection offers, shuts down the write side, and
//! closes (with RST when a connection asks to be aborted). Every error the shell meets on a
//! connection's socket is handed back to the event loop as that connection's failure.
//! `poll_loop` is the one poll loop both programs (the proxy, `jwt-tokens-service`) run on.

pub mod bn_sockets;
pub mod el_sockets;
pub mod listener;
pub mod pipe;
pub mod poll_loop;

/// Something a poll loop can stop: set from a signal handler's token in `main`.
pub trait Stopper {
    fn stop_requested(&self) -> bool;

    /// True once per reload request (SIGHUP) since the last call.
    fn take_reload(&self) -> bool {
        false
    }
}

pub use bn_sockets::BnSockets;
pub use el_sockets::ElSockets;
pub use listener::Listener;
pub use poll_loop::{BnSide, Service};
