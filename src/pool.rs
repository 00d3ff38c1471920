//! One spare body buffer, so that large request bodies and execution clients' answers arriving
//! one after another reuse the same memory instead of each being fresh pages.
//!
//! A large body or answer gets its own buffer (its declared length reserved whole, or grown by
//! doubling as its bytes arrive: see `http`), unless the spare below has room for all of it:
//! then it is read into the spare and never grows. A spare too small for it is freed rather
//! than kept beside the new buffer. With musl's allocator (the static build) every such
//! allocation is a new mapping, so each byte costs a page fault and the kernel's zeroing before
//! the proxy can copy into it, and the mapping is torn down when the body is freed: about a
//! sixth of the proxy's CPU on 8 MiB bodies. glibc keeps freed memory and reuses it, but not
//! always the right block: 13 MB getPayload answers, each a fresh allocation, left two answers'
//! worth resident. So the last large buffer freed (a request body when its last copy is
//! written, an answer once written to the beacon node or read too late to matter) is kept here
//! and handed to the next large body or answer that fits. Its bytes are kept with it, so a
//! request body can be read into it in place (`take_filled`: nothing to zero, see
//! `http::RequestReader::room`); an answer gets it empty (`take`). At most one buffer is kept, never
//! larger than a body or answer the proxy accepted (`--max-body-bytes`); it is freed after
//! [`SPARE_KEEP`] without large bodies (`tick`, called by the event loop), so an idle proxy
//! gives the memory back.
//!
//! This file knows no sockets and reads no clock: the event loop passes the time to `tick`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bodies (and buffers) smaller than this are left to the allocator.
pub const MIN_POOLED: usize = 256 * 1024;
/// The spare is freed after this long without a large body taken or given back: longer than a
/// slot (12 s), so the next block's newPayload still finds it; short enough that an idle proxy
/// gives the memory back.
pub const SPARE_KEEP: Duration = Duration::from_secs(30);

/// The pool as the request readers and the requests share it, within the one event-loop thread.
pub type SharedPool = Rc<RefCell<BodyPool>>;

#[derive(Debug, Default)]
pub struct BodyPool {
    spare: Option<Vec<u8>>,
    /// Buffers taken or given so far, and the count and time `tick` last saw: activity shows
    /// as a change of the count.
    uses: u64,
    seen: Option<(u64, Instant)>,
}

impl BodyPool {
    pub fn shared() -> SharedPool {
        Rc::new(RefCell::new(BodyPool::default()))
    }

    /// An empty buffer with room for `len` bytes, when the spare is large enough and `len` is
    /// large enough to be worth it. A spare too small for a large body is freed: the body gets
    /// a buffer of its own, and the spare would only be kept beside it (its memory resident
    /// twice over) until the larger buffer replaced it.
    pub fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let mut spare = self.take_spare(len)?;
        spare.clear();
        Some(spare)
    }

    /// The spare as a buffer exactly `len` bytes long, for a request body read in place
    /// (`http::RequestReader::room`): the old bytes it holds are overwritten as the body
    /// arrives, so only room never written before is zeroed (once: the buffer comes back at
    /// its body's length). Taken and freed as `take` says.
    pub fn take_filled(&mut self, len: usize) -> Option<Vec<u8>> {
        let mut spare = self.take_spare(len)?;
        spare.resize(len, 0);
        Some(spare)
    }

    /// The spare as it was given back, when it is worth taking for `len` bytes (see `take`).
    fn take_spare(&mut self, len: usize) -> Option<Vec<u8>> {
        if len < MIN_POOLED {
            return None;
        }
        match self.spare.take() {
            Some(spare) if spare.capacity() >= len => {
                self.uses += 1;
                Some(spare)
            }
            _ => None,
        }
    }

    /// Keeps `buffer` as the spare when it is large and larger than the current one; otherwise
    /// it is simply freed. Its bytes are kept (`take` empties it, `take_filled` reuses them).
    pub fn give(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() < MIN_POOLED || buffer.capacity() <= self.spare_bytes() {
            return;
        }
        self.uses += 1;
        self.spare = Some(buffer);
    }

    /// Frees the spare; returns how many bytes of room it had.
    pub fn release(&mut self) -> usize {
        self.spare.take().map_or(0, |b| b.capacity())
    }

    /// Room in the spare buffer (0 without one).
    pub fn spare_bytes(&self) -> usize {
        self.spare.as_ref().map_or(0, Vec::capacity)
    }

    pub fn uses(&self) -> u64 {
        self.uses
    }

    /// Notes the time; frees the spare once it has gone `SPARE_KEEP` without use, and returns
    /// how many bytes of room were freed then.
    pub fn tick(&mut self, now: Instant) -> Option<usize> {
        match self.seen {
            Some((uses, _)) if uses != self.uses => self.seen = Some((self.uses, now)),
            None => self.seen = Some((self.uses, now)),
            Some(_) => {}
        }
        if self.deadline().is_some_and(|due| due <= now) {
            return Some(self.release());
        }
        None
    }

    /// When `tick` will free the spare, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        let (_, since) = self.seen?;
        (self.spare_bytes() > 0).then(|| since + SPARE_KEEP)
    }
}

/// Gives `buffer` to `pool` if the pool is free to take it (a buffer freed while the pool is in
/// use is simply freed: this never panics).
pub fn recycle(pool: &SharedPool, buffer: Vec<u8>) {
    if let Ok(mut pool) = pool.try_borrow_mut() {
        pool.give(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_freed_buffer_is_kept_and_handed_to_a_body_that_fits() {
        let mut pool = BodyPool::default();
        assert_eq!(pool.take(MIN_POOLED), None, "nothing kept yet");
        pool.give(vec![7; MIN_POOLED - 1]);
        assert_eq!(pool.spare_bytes(), 0, "small buffers are left to the allocator");
        let mut big = Vec::with_capacity(4 * MIN_POOLED);
        big.extend_from_slice(&[1, 2, 3]);
        let address = big.as_ptr();
        pool.give(big);
        assert_eq!(pool.spare_bytes(), 4 * MIN_POOLED);
        pool.give(Vec::with_capacity(2 * MIN_POOLED));
        assert_eq!(pool.spare_bytes(), 4 * MIN_POOLED, "the larger one stays");
        assert_eq!(pool.take(MIN_POOLED - 1), None, "a small body allocates its own");
        let reused = pool.take(3 * MIN_POOLED).expect("the spare");
        assert!(reused.is_empty(), "handed over empty");
        assert_eq!(reused.as_ptr(), address, "the same memory");
        assert_eq!(pool.spare_bytes(), 0);
        assert_eq!(pool.uses(), 2, "one buffer kept, one handed out");
    }

    #[test]
    fn a_body_read_in_place_gets_the_spare_at_its_length_with_old_bytes_kept() {
        let mut pool = BodyPool::default();
        let mut big = Vec::with_capacity(4 * MIN_POOLED);
        big.resize(2 * MIN_POOLED, 9);
        pool.give(big);
        assert_eq!(pool.take_filled(MIN_POOLED - 1), None, "a small body allocates its own");
        let filled = pool.take_filled(3 * MIN_POOLED).expect("the spare");
        assert_eq!(filled.len(), 3 * MIN_POOLED);
        assert_eq!(filled[2 * MIN_POOLED - 1], 9, "old bytes are not zeroed again");
        assert_eq!(filled[2 * MIN_POOLED], 0, "room never written is");
        pool.give(filled);
        assert!(pool.take(MIN_POOLED).expect("the spare").is_empty(), "`take` still hands it over empty");
    }

    #[test]
    fn regression_a_spare_too_small_for_a_large_body_is_not_kept_beside_its_buffer() {
        // The 4 MiB spare stayed while an 8 MiB body was read into a fresh buffer: both resident.
        let mut pool = BodyPool::default();
        pool.give(Vec::with_capacity(4 * MIN_POOLED));
        assert_eq!(pool.take(MIN_POOLED - 1), None, "a small body allocates its own");
        assert_eq!(pool.spare_bytes(), 4 * MIN_POOLED, "and leaves the spare alone");
        assert_eq!(pool.take(4 * MIN_POOLED + 1), None, "too small for this body");
        assert_eq!(pool.spare_bytes(), 0, "freed, not kept beside the body's own buffer");
    }

    #[test]
    fn the_spare_is_freed_after_a_while_without_large_bodies() {
        let t0 = Instant::now();
        let mut pool = BodyPool::default();
        assert_eq!((pool.tick(t0), pool.deadline()), (None, None), "nothing to free");
        pool.give(Vec::with_capacity(MIN_POOLED));
        assert_eq!(pool.tick(t0), None);
        assert_eq!(pool.deadline(), Some(t0 + SPARE_KEEP));
        // Used again 20 s later: the wait starts over.
        let again = pool.take(MIN_POOLED).expect("the spare");
        pool.give(again);
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(pool.tick(t20), None);
        assert_eq!(pool.tick(t0 + SPARE_KEEP), None, "not due: it was used at 20 s");
        assert_eq!(pool.deadline(), Some(t20 + SPARE_KEEP));
        assert_eq!(pool.tick(t20 + SPARE_KEEP), Some(MIN_POOLED));
        assert_eq!((pool.spare_bytes(), pool.deadline()), (0, None));
    }

    #[test]
    fn release_frees_the_spare_and_recycle_never_panics() {
        let pool = BodyPool::shared();
        recycle(&pool, Vec::with_capacity(MIN_POOLED));
        assert_eq!(pool.borrow().spare_bytes(), MIN_POOLED);
        {
            let _busy = pool.borrow_mut();
            recycle(&pool, Vec::with_capacity(8 * MIN_POOLED));
        }
        assert_eq!(
            pool.borrow().spare_bytes(),
            MIN_POOLED,
            "a buffer freed while the pool is busy is dropped"
        );
        assert_eq!(pool.borrow_mut().release(), MIN_POOLED);
        assert_eq!(pool.borrow().spare_bytes(), 0);
    }
}
