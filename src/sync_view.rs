//! The sync view: for each execution client, the newest payload it called VALID (block
//! number, hash, timestamp), and how far that is behind — in blocks behind the highest block
//! any execution client called VALID, and in seconds behind the newest payload a beacon node
//! sent. An execution client that falls more than [`BEHIND_BLOCKS`] blocks behind is reported
//! once, and once more when it is back within [`CAUGHT_UP_BLOCKS`].
//!
//! Only `--builders` take part (a `--proxies` peer answers for its own primary). Pure state:
//! the event loop feeds it the payloads it forwards and the VALID verdicts it reads, and logs
//! the changes it returns. It knows no sockets, JSON or clock.

use std::fmt::Write as _;

use crate::rpc::PayloadHead;

/// An execution client more than this many blocks behind the best VALID block is reported
/// behind. Eight slots (over 1.5 minutes on mainnet): an execution client that just
/// restarted answers SYNCING for a few blocks while it replays its backlog, which is normal.
pub const BEHIND_BLOCKS: u64 = 8;

/// A client reported behind is reported back once it is this close again. Less than one
/// block would never be reached while blocks keep coming: clients answer the same payload
/// milliseconds apart, so one of them is always a block behind for a moment.
pub const CAUGHT_UP_BLOCKS: u64 = 2;

/// What one VALID verdict changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Client `el` is now `blocks` behind the best VALID block `best`.
    FellBehind { el: usize, blocks: u64, head: Option<PayloadHead>, best: u64 },
    /// Client `el` is back within `CAUGHT_UP_BLOCKS` of `best`.
    CaughtUp { el: usize, head: Option<PayloadHead>, best: u64 },
}

impl Change {
    /// The execution client the change is about.
    pub fn el(&self) -> usize {
        match *self {
            Change::FellBehind { el, .. } | Change::CaughtUp { el, .. } => el,
        }
    }

    /// The log line, with the client called `name`.
    pub fn message(&self, name: &str) -> String {
        match *self {
            Change::FellBehind { blocks, head, best, .. } => match head {
                Some(head) => format!(
                    "{name} is {blocks} blocks behind: its newest VALID payload is block {} ({}), \
                     another execution client is at block {best}",
                    head.number,
                    hash_hex(&head.hash)
                ),
                None => format!(
                    "{name} is {blocks} blocks behind: it has called no payload VALID since start-up, \
                     another execution client is at block {best}"
                ),
            },
            Change::CaughtUp { head, best, .. } => {
                let number = head.map_or(0, |h| h.number);
                format!("{name} has caught up: VALID at block {number}, the best is block {best}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ElSync {
    head: Option<PayloadHead>,
    behind: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SyncView {
    els: Vec<ElSync>,
    /// The highest block number any client called VALID.
    best_block: Option<u64>,
    /// The lowest block number any client called VALID since start-up: a client that has
    /// validated nothing is counted behind from there, as the proxy knows nothing older.
    first_block: Option<u64>,
    /// The newest payload timestamp a beacon node sent.
    newest_payload: Option<u64>,
}

impl SyncView {
    /// A view of `els` execution clients (indices `0..els`).
    pub fn new(els: usize) -> Self {
        SyncView { els: vec![ElSync::default(); els], ..SyncView::default() }
    }

    /// The execution clients were reloaded: position `i` of the new list is the client that was
    /// at `origins[i]` (it keeps what it validated), or a new one (`None`, nothing validated yet).
    pub fn rearrange(&mut self, origins: &[Option<usize>]) {
        let old = std::mem::take(&mut self.els);
        self.els = origins.iter().map(|o| o.and_then(|o| old.get(o).copied()).unwrap_or_default()).collect();
    }

    /// A beacon node sent a newPayload with this timestamp.
    pub fn payload_seen(&mut self, timestamp: u64) {
        self.newest_payload = Some(self.newest_payload.map_or(timestamp, |t| t.max(timestamp)));
    }

    /// The newest payload timestamp a beacon node sent.
    pub fn newest_payload(&self) -> Option<u64> {
        self.newest_payload
    }

    /// Client `el` called the payload `head` VALID. Its head moves unless it already has a
    /// higher block (a late answer to an older payload); every client's standing is then
    /// checked again, since the best block may have moved.
    pub fn valid(&mut self, el: usize, head: PayloadHead) -> Vec<Change> {
        let Some(entry) = self.els.get_mut(el) else { return Vec::new() };
        if entry.head.map_or(true, |old| head.number >= old.number) {
            entry.head = Some(head);
        }
        self.best_block = Some(self.best_block.map_or(head.number, |b| b.max(head.number)));
        self.first_block = Some(self.first_block.map_or(head.number, |b| b.min(head.number)));
        let Some(best) = self.best_block else { return Vec::new() };
        let mut changes = Vec::new();
        for i in 0..self.els.len() {
            let lag = self.lag_blocks(i).unwrap_or(0);
            let Some(entry) = self.els.get_mut(i) else { continue };
            if !entry.behind && lag > BEHIND_BLOCKS {
                entry.behind = true;
                changes.push(Change::FellBehind { el: i, blocks: lag, head: entry.head, best });
            } else if entry.behind && lag <= CAUGHT_UP_BLOCKS {
                entry.behind = false;
                changes.push(Change::CaughtUp { el: i, head: entry.head, best });
            }
        }
        changes
    }

    /// Whether client `el` takes part (it is one of the `--builders`).
    pub fn tracks(&self, el: usize) -> bool {
        el < self.els.len()
    }

    /// The newest payload client `el` called VALID.
    pub fn head(&self, el: usize) -> Option<PayloadHead> {
        self.els.get(el).and_then(|e| e.head)
    }

    /// Blocks client `el` is behind the best VALID block; `None` before any client called a
    /// payload VALID.
    pub fn lag_blocks(&self, el: usize) -> Option<u64> {
        let entry = self.els.get(el)?;
        let best = self.best_block?;
        Some(match entry.head {
            Some(head) => best.saturating_sub(head.number),
            None => best.saturating_sub(self.first_block?).saturating_add(1),
        })
    }

    /// Seconds between client `el`'s newest VALID payload and the newest payload a beacon
    /// node sent; `None` until both are known.
    pub fn lag_seconds(&self, el: usize) -> Option<u64> {
        let head = self.head(el)?;
        Some(self.newest_payload?.saturating_sub(head.timestamp))
    }

    /// Whether client `el` is reported behind now.
    pub fn is_behind(&self, el: usize) -> bool {
        self.els.get(el).is_some_and(|e| e.behind)
    }
}

/// `0x` and 64 lowercase hex digits.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    let mut text = String::with_capacity(66);
    text.push_str("0x");
    for byte in hash {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(number: u64) -> PayloadHead {
        let mut hash = [0u8; 32];
        hash[24..].copy_from_slice(&number.to_be_bytes());
        PayloadHead { number, hash, timestamp: 1_000 + 12 * number }
    }

    #[test]
    fn a_reload_moves_each_kept_client_with_its_head_and_starts_new_ones_empty() {
        let mut view = SyncView::new(3);
        view.valid(0, block(10));
        view.valid(2, block(12));
        // Old 2 is now first, old 0 second, and a new client third; old 1 was removed.
        view.rearrange(&[Some(2), Some(0), None]);
        assert_eq!(view.head(0).map(|h| h.number), Some(12));
        assert_eq!(view.head(1).map(|h| h.number), Some(10));
        assert_eq!(view.head(2), None);
        assert!(view.tracks(2) && !view.tracks(3));
    }

    #[test]
    fn heads_follow_valid_verdicts_and_never_go_back() {
        let mut view = SyncView::new(2);
        assert_eq!((view.head(0), view.lag_blocks(0), view.lag_seconds(0)), (None, None, None));
        view.payload_seen(block(5).timestamp);
        assert!(view.valid(0, block(5)).is_empty());
        assert_eq!(view.head(0), Some(block(5)));
        assert_eq!(view.lag_blocks(0), Some(0));
        assert_eq!(view.lag_seconds(0), Some(0));
        // A late answer to an older payload does not move the head back; a reorg at the same
        // height replaces it.
        view.valid(0, block(4));
        assert_eq!(view.head(0), Some(block(5)));
        let mut sibling = block(5);
        sibling.hash = [7; 32];
        view.valid(0, sibling);
        assert_eq!(view.head(0), Some(sibling));
        // Client 1 has validated nothing: behind by every block seen validated (4 and 5).
        assert_eq!((view.head(1), view.lag_blocks(1), view.lag_seconds(1)), (None, Some(2), None));
        // Seconds count from the newest payload a beacon node sent, validated or not.
        view.payload_seen(block(7).timestamp);
        view.payload_seen(block(6).timestamp);
        assert_eq!(view.lag_seconds(0), Some(24));
        // Indices outside the view (peers) are ignored.
        assert!(view.valid(2, block(9)).is_empty());
        assert!(!view.tracks(2));
        assert_eq!(view.lag_blocks(2), None);
    }

    #[test]
    fn falling_behind_and_catching_up_are_reported_once_each() {
        let mut view = SyncView::new(2);
        let mut changes = Vec::new();
        view.valid(1, block(100));
        for n in 100..=100 + BEHIND_BLOCKS + 3 {
            changes.extend(view.valid(0, block(n)));
        }
        assert_eq!(
            changes,
            vec![Change::FellBehind { el: 1, blocks: BEHIND_BLOCKS + 1, head: Some(block(100)), best: 109 }]
        );
        assert!(view.is_behind(1));
        assert!(!view.is_behind(0));
        // Catching up part of the way is not enough…
        assert!(view.valid(1, block(105)).is_empty());
        assert!(view.is_behind(1));
        // …within CAUGHT_UP_BLOCKS it is.
        let best = 100 + BEHIND_BLOCKS + 3;
        let back = view.valid(1, block(best - CAUGHT_UP_BLOCKS));
        assert_eq!(back, vec![Change::CaughtUp { el: 1, head: Some(block(best - CAUGHT_UP_BLOCKS)), best }]);
        assert!(view.valid(1, block(best)).is_empty());
        assert!(view.valid(0, block(best + 1)).is_empty());
    }

    #[test]
    fn a_client_that_never_called_anything_valid_falls_behind_from_the_first_valid_block() {
        let mut view = SyncView::new(2);
        let mut changes = Vec::new();
        for n in 50..50 + BEHIND_BLOCKS {
            changes.extend(view.valid(0, block(n)));
        }
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(view.lag_blocks(1), Some(BEHIND_BLOCKS));
        let changes = view.valid(0, block(50 + BEHIND_BLOCKS));
        assert_eq!(
            changes,
            vec![Change::FellBehind {
                el: 1,
                blocks: BEHIND_BLOCKS + 1,
                head: None,
                best: 50 + BEHIND_BLOCKS
            }]
        );
        let text = changes[0].message("el-b:8552");
        assert!(text.starts_with("el-b:8552 is 9 blocks behind: it has called no payload VALID"), "{text}");
    }

    #[test]
    fn messages_name_the_client_the_blocks_and_the_hash() {
        let fell = Change::FellBehind { el: 1, blocks: 12, head: Some(block(88)), best: 100 };
        assert_eq!(fell.el(), 1);
        assert_eq!(
            fell.message("localhost:8552"),
            "localhost:8552 is 12 blocks behind: its newest VALID payload is block 88 \
             (0x0000000000000000000000000000000000000000000000000000000000000058), \
             another execution client is at block 100"
        );
        let back = Change::CaughtUp { el: 1, head: Some(block(99)), best: 100 };
        assert_eq!(
            back.message("localhost:8552"),
            "localhost:8552 has caught up: VALID at block 99, the best is block 100"
        );
    }
}
