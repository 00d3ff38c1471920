//! The beacon node side: keep-alive connections sending calls and timing each answer.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{Framer, MessageKind};
use crate::RUN_CAP;

/// A target that answers nothing for this long has failed: the connection reports an error
/// instead of hanging the benchmark.
const STUCK: Duration = Duration::from_secs(30);

/// What one run of the load against one target measured.
pub struct Run {
    pub requests: usize,
    pub errors: usize,
    pub secs: f64,
    /// Sorted, in microseconds.
    pub latencies: Vec<f64>,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Sends `requests` calls (split over `conns` keep-alive connections) to `addr`, after
/// `warmup` calls per connection that are not counted, pausing `gap` after each answer, and
/// stops early at `RUN_CAP` (pauses excluded from the run's time).
pub fn run_load(
    addr: SocketAddr,
    conns: usize,
    requests: usize,
    warmup: usize,
    gap: Duration,
    wire: &Arc<Vec<u8>>,
) -> Run {
    let barrier = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let (barrier, wire) = (barrier.clone(), wire.clone());
            let share = requests / conns + usize::from(i < requests % conns);
            thread::spawn(move || -> io::Result<(Vec<f64>, usize, Instant)> {
                let warmed = (|| -> io::Result<(TcpStream, Framer)> {
                    let mut stream = TcpStream::connect(addr)?;
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(STUCK))?;
                    let mut framer = Framer::new();
                    for _ in 0..warmup {
                        stream.write_all(&wire)?;
                        framer.read_message_status(&mut stream, MessageKind::Response, None)?;
                        thread::sleep(gap);
                    }
                    Ok((stream, framer))
                })();
                // Every connection meets the others here, warmed up or failed: one that failed
                // must not hold the run up forever.
                barrier.wait();
                let (mut stream, mut framer) = warmed?;
                let mut deadline = Instant::now() + RUN_CAP;
                let mut latencies = Vec::with_capacity(share);
                let mut errors = 0;
                for _ in 0..share {
                    let t0 = Instant::now();
                    if t0 > deadline {
                        break;
                    }
                    stream.write_all(&wire)?;
                    let status = framer.read_message_status(&mut stream, MessageKind::Response, None)?;
                    latencies.push(t0.elapsed().as_secs_f64() * 1e6);
                    if status != Some(200) {
                        errors += 1;
                    }
                    if !gap.is_zero() {
                        thread::sleep(gap);
                        deadline += gap;
                    }
                }
                let paused = gap * latencies.len() as u32;
                Ok((latencies, errors, Instant::now() - paused))
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut run = Run { requests: 0, errors: 0, secs: 0.0, latencies: Vec::with_capacity(requests) };
    let mut last = start;
    for handle in handles {
        match handle.join() {
            Ok(Ok((latencies, errors, end))) => {
                run.requests += latencies.len();
                run.errors += errors;
                run.latencies.extend(latencies);
                last = last.max(end);
            }
            Ok(Err(e)) => {
                eprintln!("  a BN connection to {addr} failed: {e}");
                run.errors += 1;
            }
            Err(_) => run.errors += 1,
        }
    }
    run.secs = (last - start).as_secs_f64().max(1e-9);
    run.latencies.sort_by(f64::total_cmp);
    run
}
