//! SIGTERM and SIGINT, turned into a flag the event loop polls, so a stop request lets it
//! deliver what is queued before the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::event_loop::Stopper;

/// Set once SIGTERM or SIGINT has arrived.
pub struct SignalFlag(Arc<AtomicBool>);

impl SignalFlag {
    /// Routes SIGTERM and SIGINT to a new flag.
    pub fn install() -> std::io::Result<SignalFlag> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&stop))?;
        }
        Ok(SignalFlag(stop))
    }
}

impl Stopper for SignalFlag {
    fn stop_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
