//! Deterministic Engine API bodies of any size, for the tests, the benchmarks and the fuzz seeds
//! (shared with `#[path]`; std only, so every crate can include it).
//!
//! A body is compact one-line JSON with Lodestar's and Prysm's key order (`jsonrpc, id, method,
//! params`). `new_payload` fills an execution payload with typed transactions of realistic sizes
//! (transfers, token and DEX calls, large calls, the odd contract deployment) until the body has
//! the size asked for; big blocks (16 KiB or more) also carry 16 withdrawals, blob versioned
//! hashes and, from Electra, deposit/withdrawal/consolidation requests, and from Amsterdam a
//! block access list. The same `seed` always gives the same bytes, so a benchmark or a
//! checked-in fuzz seed is reproducible. Hashes, roots and signatures are random bytes: the
//! proxy never checks them, and the shapes and sizes are what it must handle.
//!
//! A body cannot be smaller than an empty block (~1.4 KB, the logs bloom alone is 514
//! characters): below that, the empty block is returned. Otherwise the size is exact: the last
//! transaction takes what is left, and up to 8 bytes of trailing newlines (JSON whitespace, as
//! Go's encoder writes one) make up an odd remainder.

#![allow(dead_code)]

use std::fmt::Write;

/// Engine API generations, by the fork that introduced their method versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// `engine_newPayloadV3` (payload, versioned hashes, parent beacon block root),
    /// `engine_getPayloadV3` (BlobsBundleV1), `engine_forkchoiceUpdatedV3`.
    Deneb,
    /// `engine_newPayloadV4` (+ execution requests), `engine_getPayloadV4`.
    Electra,
    /// `engine_newPayloadV4`, `engine_getPayloadV5` (BlobsBundleV2: 128 cell proofs per blob).
    Osaka,
    /// `engine_newPayloadV5` (ExecutionPayloadV4: `blockAccessList`, `slotNumber`),
    /// `engine_getPayloadV6`, `engine_forkchoiceUpdatedV4` (attributes with `slotNumber`).
    Amsterdam,
}

impl Fork {
    pub fn new_payload_method(self) -> &'static str {
        match self {
            Fork::Deneb => "engine_newPayloadV3",
            Fork::Electra | Fork::Osaka => "engine_newPayloadV4",
            Fork::Amsterdam => "engine_newPayloadV5",
        }
    }

    pub fn get_payload_method(self) -> &'static str {
        match self {
            Fork::Deneb => "engine_getPayloadV3",
            Fork::Electra => "engine_getPayloadV4",
            Fork::Osaka => "engine_getPayloadV5",
            Fork::Amsterdam => "engine_getPayloadV6",
        }
    }

    pub fn forkchoice_method(self) -> &'static str {
        match self {
            Fork::Amsterdam => "engine_forkchoiceUpdatedV4",
            _ => "engine_forkchoiceUpdatedV3",
        }
    }

    fn has_requests(self) -> bool {
        self != Fork::Deneb
    }

    fn has_access_list(self) -> bool {
        self == Fork::Amsterdam
    }

    /// BlobsBundleV2 (Osaka on) carries one proof per cell, 128 cells per extended blob.
    fn proofs_per_blob(self) -> usize {
        match self {
            Fork::Deneb | Fork::Electra => 1,
            Fork::Osaka | Fork::Amsterdam => CELLS_PER_EXT_BLOB,
        }
    }
}

pub const BLOB_BYTES: usize = 131_072;
pub const CELLS_PER_EXT_BLOB: usize = 128;
/// Mainnet genesis time and a slot far into the chain: realistic timestamps.
pub const GENESIS_TIME: u64 = 1_606_824_023;
pub const SLOT: u64 = 10_000_000;
/// Below this a block is built without withdrawals, blobs or requests.
pub const BIG: usize = 16 << 10;

/// `"1k"`, `"128k"`, `"1m"`, `"8m"`, `"300"` → bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let (digits, unit) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 1 << 10),
        b'm' | b'M' => (&text[..text.len() - 1], 1 << 20),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// The timestamp of slot `SLOT + n`.
pub fn slot_timestamp(n: u64) -> u64 {
    GENESIS_TIME + 12 * (SLOT + n)
}

/// splitmix64: small, fast, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_0f5e_ed0f)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// Appends `n` random bytes as lower-case hex (no `0x`).
    pub fn hex_into(&mut self, out: &mut String, n: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut left = n;
        while left > 0 {
            let word = self.next_u64().to_le_bytes();
            for &b in word.iter().take(left.min(8)) {
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            left -= left.min(8);
        }
    }

    /// `"0x…"` with `n` random bytes, quotes included.
    fn data_into(&mut self, out: &mut String, n: usize) {
        out.push_str("\"0x");
        self.hex_into(out, n);
        out.push('"');
    }
}

/// (weight, smallest, largest) byte sizes of a signed transaction: transfers, token and DEX
/// calls, aggregator and MEV bundles, large calls, contract deployments.
const TX_SIZES: [(u64, u64, u64); 5] =
    [(45, 100, 130), (35, 130, 400), (15, 400, 1500), (4, 1500, 10_000), (1, 10_000, 50_000)];

fn tx_size(rng: &mut Rng) -> usize {
    let total: u64 = TX_SIZES.iter().map(|t| t.0).sum();
    let mut r = rng.range(0, total);
    for (weight, lo, hi) in TX_SIZES {
        if r < weight {
            return rng.range(lo, hi) as usize;
        }
        r -= weight;
    }
    unreachable!("r < total")
}

/// Appends `"0x…"`: `n` bytes (n >= 3) of `type || RLP list header || random payload`, the
/// shape of an EIP-2718 typed transaction (or, with type 0xf9… absent, any RLP blob).
pub fn typed_into(rng: &mut Rng, out: &mut String, kind: u8, n: usize) {
    let body_and_header = n - 1;
    // The list header's length depends on the body's, which depends on the header's; for the
    // one size with no canonical framing (58 bytes) a 2-byte header over 55 bytes will do.
    let (header, body) = (1..=4)
        .map(|h: usize| (h, body_and_header - h))
        .find(|&(h, body)| match h {
            1 => body < 56,
            _ => body >= 56 && body.to_be_bytes().iter().skip_while(|&&b| b == 0).count() == h - 1,
        })
        .unwrap_or((2, body_and_header - 2));
    write!(out, "\"0x{kind:02x}").unwrap();
    if header == 1 {
        write!(out, "{:02x}", 0xc0 + body).unwrap();
    } else {
        write!(out, "{:02x}", 0xf7 + header - 1).unwrap();
        for b in &body.to_be_bytes()[8 - (header - 1)..] {
            write!(out, "{b:02x}").unwrap();
        }
    }
    rng.hex_into(out, body);
    out.push('"');
}

fn quantity_into(out: &mut String, n: u64) {
    write!(out, "\"0x{n:x}\"").unwrap();
}

fn withdrawals_into(rng: &mut Rng, out: &mut String, n: usize) {
    out.push('[');
    let first = rng.range(50_000_000, 60_000_000);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"index\":");
        quantity_into(out, first + i as u64);
        out.push_str(",\"validatorIndex\":");
        quantity_into(out, rng.range(0, 1_500_000));
        out.push_str(",\"address\":");
        rng.data_into(out, 20);
        out.push_str(",\"amount\":");
        quantity_into(out, rng.range(15_000_000, 20_000_000)); // Gwei
        out.push('}');
    }
    out.push(']');
}

/// EIP-7685 requests as Electra's `executionRequests`: `type || data`, ascending types, empty
/// ones left out. Deposits are 192 bytes each, withdrawals 76, consolidations 116.
fn requests_into(rng: &mut Rng, out: &mut String, big: bool) {
    out.push('[');
    if big {
        for (i, (kind, each, count)) in [(0u8, 192, 4), (1, 76, 2), (2, 116, 1)].into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write!(out, "\"0x{kind:02x}").unwrap();
            rng.hex_into(out, each * count);
            out.push('"');
        }
    }
    out.push(']');
}

/// An `engine_newPayload*` body: the method version and parameters of `fork`.
#[derive(Debug, Clone)]
pub struct NewPayload {
    pub fork: Fork,
    /// The body's size in bytes (at least an empty block's).
    pub size: usize,
    pub seed: u64,
    /// Blob versioned hashes; default 3 for a big block, 0 for a small one.
    pub blobs: Option<usize>,
    pub id: u64,
    /// Slot after `SLOT` whose timestamp the payload carries.
    pub slot: u64,
}

impl NewPayload {
    pub fn new(fork: Fork, size: usize) -> NewPayload {
        NewPayload { fork, size, seed: 1, blobs: None, id: 1, slot: 0 }
    }

    pub fn seed(mut self, seed: u64) -> NewPayload {
        self.seed = seed;
        self
    }

    pub fn blobs(mut self, blobs: usize) -> NewPayload {
        self.blobs = Some(blobs);
        self
    }

    pub fn id(mut self, id: u64) -> NewPayload {
        self.id = id;
        self
    }

    pub fn slot(mut self, slot: u64) -> NewPayload {
        self.slot = slot;
        self
    }

    pub fn timestamp(&self) -> u64 {
        slot_timestamp(self.slot)
    }

    pub fn body(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.seed);
        let big = self.size >= BIG;
        let blobs = self.blobs.unwrap_or(if big { 3 } else { 0 });
        let (head, payload_tail) = payload_parts(&mut rng, self.fork, self.slot, big, blobs, self.size);
        let mut tail = payload_tail;
        tail.push_str("},[");
        for i in 0..blobs {
            if i > 0 {
                tail.push(',');
            }
            tail.push_str("\"0x01");
            rng.hex_into(&mut tail, 31);
            tail.push('"');
        }
        tail.push_str("],");
        rng.data_into(&mut tail, 32); // parent beacon block root
        if self.fork.has_requests() {
            tail.push(',');
            requests_into(&mut rng, &mut tail, big);
        }
        tail.push_str("]}");
        let mut out = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"{}\",\"params\":[{head}",
            self.id,
            self.fork.new_payload_method()
        );
        let room = self.size.saturating_sub(out.len() + tail.len() + 2); // the array's brackets
        transactions_into(&mut rng, &mut out, room);
        out.push_str(&tail);
        let pad = self.size.saturating_sub(out.len()).min(8);
        out.extend(std::iter::repeat('\n').take(pad));
        out.into_bytes()
    }
}

/// An execution payload of `fork` without its closing brace, split around `transactions`:
/// (everything up to `"transactions":`, everything after the array).
fn payload_parts(
    rng: &mut Rng,
    fork: Fork,
    slot: u64,
    big: bool,
    blobs: usize,
    size: usize,
) -> (String, String) {
    let mut head = String::with_capacity(2048);
    let fields: [(&str, usize); 5] = [
        ("parentHash", 32),
        ("feeRecipient", 20),
        ("stateRoot", 32),
        ("receiptsRoot", 32),
        ("logsBloom", 256),
    ];
    head.push('{');
    for (i, (name, n)) in fields.into_iter().enumerate() {
        if i > 0 {
            head.push(',');
        }
        write!(head, "\"{name}\":").unwrap();
        rng.data_into(&mut head, n);
    }
    head.push_str(",\"prevRandao\":");
    rng.data_into(&mut head, 32);
    head.push_str(",\"blockNumber\":");
    quantity_into(&mut head, 20_600_000 + slot);
    head.push_str(",\"gasLimit\":");
    quantity_into(&mut head, 36_000_000);
    head.push_str(",\"gasUsed\":");
    quantity_into(&mut head, if big { rng.range(17_000_000, 36_000_000) } else { 0 });
    head.push_str(",\"timestamp\":");
    quantity_into(&mut head, slot_timestamp(slot));
    head.push_str(",\"extraData\":\"0x");
    for b in b"beaverbuild.org" {
        write!(head, "{b:02x}").unwrap();
    }
    head.push_str("\",\"baseFeePerGas\":");
    quantity_into(&mut head, rng.range(3_000_000_000, 30_000_000_000));
    head.push_str(",\"blockHash\":");
    rng.data_into(&mut head, 32);
    head.push_str(",\"transactions\":");

    let mut tail = String::with_capacity(4096);
    tail.push_str(",\"withdrawals\":");
    withdrawals_into(rng, &mut tail, if big { 16 } else { 0 });
    tail.push_str(",\"blobGasUsed\":");
    quantity_into(&mut tail, (blobs * BLOB_BYTES) as u64);
    tail.push_str(",\"excessBlobGas\":");
    quantity_into(&mut tail, rng.range(0, 100) * BLOB_BYTES as u64);
    if fork.has_access_list() {
        // EIP-7928: an RLP list of the accounts touched and their changes, roughly a fifth of
        // the block's bytes in a busy block.
        tail.push_str(",\"blockAccessList\":");
        typed_into(rng, &mut tail, 0xf9, if big { size / 5 } else { 3 });
        tail.push_str(",\"slotNumber\":");
        quantity_into(&mut tail, SLOT + slot);
    }
    (head, tail)
}

/// Fills `room` bytes (a JSON array included) with transactions of realistic sizes.
fn transactions_into(rng: &mut Rng, out: &mut String, room: usize) {
    out.push('[');
    let mut room = room as isize;
    let mut first = true;
    while room > 0 {
        let n = tx_size(rng);
        let sep = if first { 0 } else { 1 };
        let cost = (2 * n + 4 + sep) as isize; // "0x…", quotes, comma
        if cost > room - (2 * 100 + 5) {
            // the last one takes what is left (if it can be a transaction at all)
            let n = (room - 4 - sep as isize) / 2;
            if n >= 3 {
                if !first {
                    out.push(',');
                }
                typed_into(rng, out, 0x02, n as usize);
            }
            break;
        }
        if !first {
            out.push(',');
        }
        typed_into(rng, out, 0x02, n);
        room -= cost;
        first = false;
    }
    out.push(']');
}

/// `engine_forkchoiceUpdatedV3` (V4 for Amsterdam, with `slotNumber`) with payload attributes
/// for the slot after `slot`, 16 withdrawals.
pub fn forkchoice_updated(fork: Fork, id: u64, slot: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0xfc);
    let mut out = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{}\",\"params\":[{{",
        fork.forkchoice_method()
    );
    for (i, name) in ["headBlockHash", "safeBlockHash", "finalizedBlockHash"].into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write!(out, "\"{name}\":").unwrap();
        rng.data_into(&mut out, 32);
    }
    out.push_str("},{\"timestamp\":");
    quantity_into(&mut out, slot_timestamp(slot + 1));
    out.push_str(",\"prevRandao\":");
    rng.data_into(&mut out, 32);
    out.push_str(",\"suggestedFeeRecipient\":");
    rng.data_into(&mut out, 20);
    out.push_str(",\"withdrawals\":");
    withdrawals_into(&mut rng, &mut out, 16);
    out.push_str(",\"parentBeaconBlockRoot\":");
    rng.data_into(&mut out, 32);
    if fork == Fork::Amsterdam {
        out.push_str(",\"slotNumber\":");
        quantity_into(&mut out, SLOT + slot + 1);
    }
    out.push_str("}]}");
    out.into_bytes()
}

/// An `engine_getPayload*` answer of `fork` for a block of about `size` bytes with `blobs`
/// blobs: the blobs bundle holds every blob (128 KiB each, 256 KiB of hex), its commitment and
/// its proof(s). 21 blobs make about 5.8 MB of JSON, 48 about 13 MB.
pub fn get_payload_answer(fork: Fork, id: u64, size: usize, blobs: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x9e7);
    let big = size >= BIG;
    let (head, tail) = payload_parts(&mut rng, fork, 0, big, blobs, size);
    let mut out =
        String::with_capacity(size + blobs * (2 * BLOB_BYTES + 110 * fork.proofs_per_blob() + 110) + 4096);
    write!(out, "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"executionPayload\":{head}").unwrap();
    let room = size.saturating_sub(head.len() + tail.len() + 100);
    transactions_into(&mut rng, &mut out, room);
    out.push_str(&tail);
    out.push_str("},\"blockValue\":");
    quantity_into(&mut out, rng.range(1 << 50, 1 << 62));
    out.push_str(",\"blobsBundle\":{\"commitments\":[");
    for i in 0..blobs {
        if i > 0 {
            out.push(',');
        }
        rng.data_into(&mut out, 48);
    }
    out.push_str("],\"proofs\":[");
    for i in 0..blobs * fork.proofs_per_blob() {
        if i > 0 {
            out.push(',');
        }
        rng.data_into(&mut out, 48);
    }
    out.push_str("],\"blobs\":[");
    for i in 0..blobs {
        if i > 0 {
            out.push(',');
        }
        rng.data_into(&mut out, BLOB_BYTES);
    }
    out.push_str("]},\"shouldOverrideBuilder\":false");
    if fork.has_requests() {
        out.push_str(",\"executionRequests\":");
        requests_into(&mut rng, &mut out, big);
    }
    out.push_str("}}");
    out.into_bytes()
}
