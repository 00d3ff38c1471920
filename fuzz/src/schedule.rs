//! One fuzz input taken apart into the caps to read with, the byte stream, and the sizes of
//! the pieces the stream arrives in, so that a target can read the same stream whole and cut
//! the way a network might cut it.
//!
//! Layout: byte 0 is a control byte. Its bits 0–3 count the schedule bytes that follow (0–15)
//! and bits 4–5 pick the body cap from [`MAX_BODIES`]. Each schedule byte `b` is a piece of
//! `b + 1` bytes; the sizes are used in turn, over and over, until the stream is used up.
//! Without schedule bytes the stream arrives in one piece. Everything after the schedule is the
//! stream. A seed that starts with `0x00` is therefore a plain HTTP stream, read in one piece
//! with a 64 KiB body cap.

use sync_proxy::http::Limits;

/// Head cap of the HTTP targets: small, so that inputs of a few KiB reach it.
pub const MAX_HEAD: usize = 4096;

/// Body caps the control byte picks from; the small ones let short inputs cross them.
pub const MAX_BODIES: [usize; 4] = [64 * 1024, 4096, 64, 0];

/// A fuzz input taken apart; see the module documentation for the layout.
#[derive(Debug)]
pub struct Schedule<'a> {
    pub limits: Limits,
    sizes: &'a [u8],
    pub stream: &'a [u8],
}

impl<'a> Schedule<'a> {
    pub fn new(data: &'a [u8]) -> Schedule<'a> {
        let Some((&control, rest)) = data.split_first() else {
            return Schedule { limits: limits(0), sizes: &[], stream: &[] };
        };
        let count = usize::from(control & 0x0f).min(rest.len());
        let (sizes, stream) = rest.split_at(count);
        Schedule { limits: limits(control), sizes, stream }
    }

    /// The stream cut into the scheduled pieces; one piece when there is no schedule.
    pub fn pieces(&self) -> Vec<&'a [u8]> {
        if self.sizes.is_empty() {
            return vec![self.stream];
        }
        let mut pieces = Vec::new();
        let mut rest = self.stream;
        for &size in self.sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((usize::from(size) + 1).min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
        pieces
    }
}

fn limits(control: u8) -> Limits {
    Limits { max_head: MAX_HEAD, max_body: MAX_BODIES[usize::from((control >> 4) & 3)] }
}
