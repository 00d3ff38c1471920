//! SIGTERM and SIGINT, turned into a flag the event loop polls, so a stop request lets it
//! deliver what is queued before the process exits; and SIGHUP, turned into a reload request
//! (the secret files and `--builders-file` are read again, see `reload`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::shell::Stopper;

/// Set once SIGTERM or SIGINT has arrived; `reload` is set by each SIGHUP until taken.
pub struct SignalFlag {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl SignalFlag {
    /// Routes SIGTERM and SIGINT to a new stop flag, and SIGHUP to a reload flag (so SIGHUP no
    /// longer ends the process, as it would by default).
    pub fn install() -> std::io::Result<SignalFlag> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&stop))?;
        }
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
        Ok(SignalFlag { stop, reload })
    }
}

impl Stopper for SignalFlag {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn take_reload(&self) -> bool {
        // Several SIGHUPs before the loop looks are one reload.
        self.reload.swap(false, Ordering::Relaxed)
    }
}
