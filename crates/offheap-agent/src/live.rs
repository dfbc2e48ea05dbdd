//! Live sampled allocations: a counting prefilter in front of sharded
//! address tables (malloc family), and a small region list (mmap family).

use crate::sys::SpinLock;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};

/// One live sampled allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Live {
    pub stack: u32,
    /// Monotonic ms at allocation time.
    pub born_ms: u32,
    /// Estimated bytes this sample stands for.
    pub bytes: u64,
    /// Estimated allocations this sample stands for.
    pub count: u64,
}

/// Buckets of the prefilter: the top `FILTER_BITS` bits of a pointer's hash.
const FILTER_BITS: u32 = 18;
const SHARD_BITS: u32 = 6;
pub const SHARDS: usize = 1 << SHARD_BITS;
const WORDS: usize = 1 << (FILTER_BITS - 6);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
/// The prefilter `free` reads: one bit per bucket, set while at least one
/// sampled live pointer hashes to it. 32 KiB, so it stays in cache even in
/// a process whose own working set is large (a 2^18 array of 16-bit counts,
/// 512 KiB, missed the cache on most frees in a busy node process: 7% of
/// its time). A word covers 64 buckets of a single shard (the shard is the
/// top bits of the bucket), so its bits change only under that shard's lock.
static BITS: [AtomicU64; WORDS] = [ZERO64; WORDS];

#[allow(clippy::declare_interior_mutable_const)]
const ZERO16: AtomicU16 = AtomicU16::new(0);
/// How many sampled live pointers hash to each bucket: touched only on
/// sampled events, under the lock of the bucket's shard (relaxed loads and
/// stores, no read-modify-write). A count that reaches `u16::MAX` stays
/// there, its bit set for good: a harmless false positive.
static COUNTS: [AtomicU16; 1 << FILTER_BITS] = [ZERO16; 1 << FILTER_BITS];

#[inline(always)]
fn hash(p: usize) -> u64 {
    ((p as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The bucket: the hash's top bits (the best mixed bits of a multiplicative
/// hash). Its top `SHARD_BITS` bits are the shard.
#[inline(always)]
fn bucket(h: u64) -> usize {
    (h >> (64 - FILTER_BITS)) as usize
}

/// True if `p` might be a sampled live pointer (one relaxed load of a
/// cache-resident word and a bit test).
#[inline(always)]
pub fn maybe_tracked(p: usize) -> bool {
    let b = bucket(hash(p));
    (BITS[b >> 6].load(Ordering::Relaxed) >> (b & 63)) & 1 != 0
}

/// Exact mode tracks every allocation: the prefilter could only say "maybe"
/// everywhere. All bits set, and the counts are no longer kept.
pub fn saturate_filter() {
    SATURATED.store(true, Ordering::Relaxed);
    for w in BITS.iter() {
        w.store(u64::MAX, Ordering::Relaxed);
    }
}

/// Set by `saturate_filter`: `insert` and `remove` then skip the counts.
static SATURATED: AtomicBool = AtomicBool::new(false);

/// One more sampled live pointer in bucket `b`. Caller holds the bucket's
/// shard lock.
fn filter_inc(b: usize) {
    let c = &COUNTS[b];
    let n = c.load(Ordering::Relaxed);
    if n == u16::MAX {
        return;
    }
    c.store(n + 1, Ordering::Relaxed);
    if n == 0 {
        BITS[b >> 6].fetch_or(1 << (b & 63), Ordering::Relaxed);
    }
}

/// One fewer sampled live pointer in bucket `b`. Caller holds the bucket's
/// shard lock.
fn filter_dec(b: usize) {
    let c = &COUNTS[b];
    let n = c.load(Ordering::Relaxed);
    if n == u16::MAX || n == 0 {
        return;
    }
    c.store(n - 1, Ordering::Relaxed);
    if n == 1 {
        BITS[b >> 6].fetch_and(!(1 << (b & 63)), Ordering::Relaxed);
    }
}

const EMPTY: usize = 0;

/// One slot: the address and its record side by side (32 bytes, so a probe
/// touches one cache line, not one in a key array and one in a value array).
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    key: usize,
    val: Live,
}

/// Open-addressing table (linear probing, backward-shift deletion, so no
/// tombstones pile up under churn) of address -> Live.
pub struct Shard {
    slots: Vec<Slot>,
    used: usize,
}

/// The first slot probed in a shard's table: hash bits 18 and up, below
/// the bucket's (which are constant within a shard and a bucket), so a
/// table of up to 2^28 slots spreads its keys. (Rotated top bits, used
/// before, were the shard's own bits from 2^12 slots on, so larger tables
/// had only 2^11 distinct home slots and long probe runs.)
#[inline(always)]
fn home(k: usize, mask: usize) -> usize {
    ((hash(k) >> 18) as usize) & mask
}

impl Shard {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            used: 0,
        }
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(64));
    }

    /// Rebuilds the table with `cap` slots (a power of two, more than
    /// twice `used`).
    fn resize(&mut self, cap: usize) {
        let old = core::mem::replace(&mut self.slots, vec![Slot::default(); cap]);
        self.used = 0;
        for e in old {
            if e.key != EMPTY {
                self.put(e.key, e.val);
            }
        }
    }

    fn put(&mut self, k: usize, v: Live) {
        if (self.used + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = home(k, mask);
        loop {
            match self.slots[i].key {
                EMPTY => break,
                x if x == k => {
                    // Same address twice: the old record is stale (a free we
                    // never saw). Replace it.
                    self.slots[i].val = v;
                    return;
                }
                _ => {}
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { key: k, val: v };
        self.used += 1;
    }

    fn take(&mut self, k: usize) -> Option<Live> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = home(k, mask);
        loop {
            match self.slots[i].key {
                EMPTY => return None,
                x if x == k => break,
                _ => {}
            }
            i = (i + 1) & mask;
        }
        let val = self.slots[i].val;
        self.used -= 1;
        // Backward shift: move later members of the probe run into the hole
        // when their home slot is not after it (cyclically).
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let kj = self.slots[j].key;
            if kj == EMPTY {
                break;
            }
            let h = home(kj, mask);
            // Stays if its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < h && h <= j
            } else {
                i < h || h <= j
            };
            if !stays {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i].key = EMPTY;
        // Shrink after a peak (node's start-up, a burst): a table 8x larger
        // than its contents spreads every lookup over cold cache lines.
        // Shrinking at 1/8 to a load of at most 1/4 leaves room before the
        // next growth at 1/2.
        if self.slots.len() > 64 && self.used * 8 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
        Some(val)
    }
}

/// A shard's lock on a cache line of its own: threads working on different
/// shards do not bounce one line between their cores.
#[repr(align(64))]
pub struct PaddedShard(pub SpinLock<Shard>);

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: PaddedShard = PaddedShard(SpinLock::new(Shard::new()));
pub static SHARD_LOCKS: [PaddedShard; SHARDS] = [SHARD_INIT; SHARDS];

fn shard_of(h: u64) -> usize {
    (h >> (64 - SHARD_BITS)) as usize
}

#[allow(clippy::declare_interior_mutable_const)]
const HINT0: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));
/// Per shard: the address of its slot array and the index mask, published
/// after every resize, read without the lock only to issue a prefetch.
static HINTS: [(AtomicUsize, AtomicUsize); SHARDS] = [HINT0; SHARDS];

/// Starts loading the line at `a`.
#[inline(always)]
fn prefetch_line(a: usize) {
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(a as *const i8)
    };
}

/// Starts loading the shard lock and the slot that `insert(p, ..)` or
/// `remove(p)` will touch first, so that their cache misses (often lines
/// another core wrote last: node's sweeper threads free what the main thread
/// allocated) overlap each other and, on the allocation side, the unwind,
/// instead of following one another.
#[inline]
pub fn prefetch(p: usize) {
    let idx = shard_of(hash(p));
    prefetch_line(&SHARD_LOCKS[idx] as *const PaddedShard as usize);
    let (base, mask) = &HINTS[idx];
    let base = base.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // Possibly stale (the table was resized): a prefetch is only a hint.
    prefetch_line(
        base.wrapping_add(home(p, mask.load(Ordering::Relaxed)) * core::mem::size_of::<Slot>()),
    );
}

/// Publishes shard `idx`'s slot array for `prefetch`. Caller holds its lock.
fn publish_hint(idx: usize, s: &Shard) {
    HINTS[idx].1.store(s.slots.len() - 1, Ordering::Relaxed);
    HINTS[idx]
        .0
        .store(s.slots.as_ptr() as usize, Ordering::Relaxed);
}

/// Records a sampled allocation at `p`.
pub fn insert(p: usize, v: Live) {
    let h = hash(p);
    let idx = shard_of(h);
    let mut s = SHARD_LOCKS[idx].0.lock();
    let before = s.used;
    let cap = s.slots.len();
    s.put(p, v);
    if s.slots.len() != cap {
        publish_hint(idx, &s);
    }
    if s.used > before && !SATURATED.load(Ordering::Relaxed) {
        filter_inc(bucket(h));
    }
}

/// Removes and returns the record for `p`, if it was sampled.
pub fn remove(p: usize) -> Option<Live> {
    let h = hash(p);
    let idx = shard_of(h);
    let mut s = SHARD_LOCKS[idx].0.lock();
    let cap = s.slots.len();
    let r = s.take(p);
    if s.slots.len() != cap {
        publish_hint(idx, &s);
    }
    if r.is_some() && !SATURATED.load(Ordering::Relaxed) {
        filter_dec(bucket(h));
    }
    drop(s);
    r
}

/// Number of live records (malloc family): the sum over the shards, so the
/// hot paths keep no shared counter.
pub fn live_entries() -> usize {
    SHARD_LOCKS.iter().map(|l| l.0.lock().used).sum()
}

/// Slots allocated in the address tables (malloc family).
pub fn live_slots() -> usize {
    SHARD_LOCKS.iter().map(|l| l.0.lock().slots.len()).sum()
}

/// Calls `f` for every live record (one shard locked at a time).
pub fn for_each(mut f: impl FnMut(&Live)) {
    for lock in SHARD_LOCKS.iter() {
        let s = lock.0.lock();
        for e in s.slots.iter() {
            if e.key != EMPTY {
                f(&e.val);
            }
        }
    }
    let r = REGIONS.lock();
    for reg in r.iter() {
        f(&Live {
            stack: reg.stack,
            born_ms: reg.born_ms,
            bytes: reg.bytes(),
            count: reg.count,
        })
    }
}

/// Calls `f(address, record)` for every live record of the malloc family
/// (one shard locked at a time): the leak check's view of the heap.
pub fn for_each_block(mut f: impl FnMut(usize, &Live)) {
    for lock in SHARD_LOCKS.iter() {
        let s = lock.0.lock();
        for e in s.slots.iter() {
            if e.key != EMPTY {
                f(e.key, &e.val);
            }
        }
    }
}

/// Calls `f(start, bytes)` for each shard's slot array: memory full of
/// block addresses, which the leak check must not take for roots.
pub fn table_ranges(mut f: impl FnMut(usize, usize)) {
    for lock in SHARD_LOCKS.iter() {
        let s = lock.0.lock();
        if !s.slots.is_empty() {
            f(
                s.slots.as_ptr() as usize,
                s.slots.len() * core::mem::size_of::<Slot>(),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// mmap regions
// ---------------------------------------------------------------------------

/// A sampled anonymous mapping (or part of one).
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: usize,
    pub end: usize,
    pub stack: u32,
    pub born_ms: u32,
    /// Estimated bytes per real byte (sampling weight).
    pub ratio: f64,
    pub count: u64,
}

impl Region {
    pub fn bytes(&self) -> u64 {
        ((self.end - self.start) as f64 * self.ratio) as u64
    }
}

pub static REGIONS: SpinLock<Vec<Region>> = SpinLock::new(Vec::new());
static REGION_COUNT: AtomicUsize = AtomicUsize::new(0);

pub fn add_region(r: Region) {
    let mut v = REGIONS.lock();
    v.push(r);
    REGION_COUNT.store(v.len(), Ordering::Relaxed);
}

/// Removes [start, end) from the tracked regions. Returns, per affected
/// stack, what must be subtracted: calls `sub(stack, bytes, count)`.
pub fn unmap_range(start: usize, end: usize, mut sub: impl FnMut(u32, u64, u64)) {
    if REGION_COUNT.load(Ordering::Relaxed) == 0 || end <= start {
        return;
    }
    let mut v = REGIONS.lock();
    let mut i = 0;
    while i < v.len() {
        let r = v[i];
        if r.end <= start || r.start >= end {
            i += 1;
            continue;
        }
        let cut_s = r.start.max(start);
        let cut_e = r.end.min(end);
        let bytes = ((cut_e - cut_s) as f64 * r.ratio) as u64;
        let left = (r.start < cut_s).then_some(Region { end: cut_s, ..r });
        let right = (cut_e < r.end).then_some(Region { start: cut_e, ..r });
        let gone = left.is_none() && right.is_none();
        sub(r.stack, bytes, if gone { r.count } else { 0 });
        match (left, right) {
            (None, None) => {
                v.swap_remove(i);
                continue;
            }
            (Some(l), None) => v[i] = l,
            (None, Some(rr)) => v[i] = rr,
            (Some(l), Some(rr)) => {
                v[i] = l;
                // Both halves keep the count split: keep it on the left.
                v.push(Region { count: 0, ..rr });
            }
        }
        i += 1;
    }
    REGION_COUNT.store(v.len(), Ordering::Relaxed);
}

/// Takes the region that starts at `start`, if any (for mremap).
pub fn take_region_at(start: usize) -> Option<Region> {
    if REGION_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut v = REGIONS.lock();
    let i = v.iter().position(|r| r.start == start)?;
    let r = v.swap_remove(i);
    REGION_COUNT.store(v.len(), Ordering::Relaxed);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses spread like malloc's (16-byte aligned, 48 bytes apart)
    /// in a range no real allocation of the test process uses.
    fn addrs(base: usize, n: usize) -> impl Iterator<Item = usize> {
        (0..n).map(move |i| base + i * 48)
    }

    fn live(stack: u32) -> Live {
        Live {
            stack,
            born_ms: 0,
            bytes: 16,
            count: 1,
        }
    }

    /// Regression: the home slot used to come from the rotated top bits of
    /// the hash, which include the shard's own bits; from 2^12 slots on, a
    /// shard's keys had at most 2^11 distinct home slots and probe runs grew
    /// long. One shard's worth of keys must spread over the table.
    #[test]
    fn a_shards_keys_spread_over_its_table() {
        let mut s = Shard::new();
        let mine: Vec<usize> = addrs(0x5000_0000_0000, 1 << 20)
            .filter(|&p| shard_of(hash(p)) == 7)
            .take(6000)
            .collect();
        assert_eq!(mine.len(), 6000);
        for &p in &mine {
            s.put(p, live(1));
        }
        let mask = s.slots.len() - 1;
        assert!(s.slots.len() >= 16384);
        let mut homes: Vec<usize> = mine.iter().map(|&p| home(p, mask)).collect();
        homes.sort_unstable();
        homes.dedup();
        // Random placement of 6000 keys in 16384 slots gives about 5,000
        // distinct homes; the old hash gave at most 2048.
        assert!(
            homes.len() > 4000,
            "only {} distinct home slots",
            homes.len()
        );
        for &p in &mine {
            assert!(s.take(p).is_some());
        }
        assert_eq!(s.used, 0);
    }

    /// After a peak the table shrinks again, and every key stays findable
    /// across the resizes.
    #[test]
    fn a_shard_shrinks_after_a_peak_and_keeps_its_keys() {
        let mut s = Shard::new();
        let keys: Vec<usize> = addrs(0x5100_0000_0000, 20_000).collect();
        for (i, &p) in keys.iter().enumerate() {
            s.put(p, live(i as u32));
        }
        let peak = s.slots.len();
        assert!(peak >= 40_000);
        for &p in &keys[100..] {
            assert!(s.take(p).is_some());
        }
        assert!(
            s.slots.len() <= 1024,
            "{} slots for 100 keys",
            s.slots.len()
        );
        for (i, &p) in keys[..100].iter().enumerate() {
            assert_eq!(s.take(p).map(|l| l.stack), Some(i as u32));
        }
        assert!(s.take(keys[0]).is_none());
    }

    /// The prefilter says "maybe" for every tracked pointer and, once the
    /// last pointer of a bucket is gone, "no" again.
    #[test]
    fn the_prefilter_follows_inserts_and_removes() {
        // Pointers alone in their buckets among these.
        let ps: Vec<usize> = addrs(0x5200_0000_0000, 64).collect();
        for &p in &ps {
            insert(p, live(3));
            assert!(maybe_tracked(p));
        }
        for &p in &ps {
            assert_eq!(remove(p).map(|l| l.stack), Some(3));
        }
        let lonely: Vec<usize> = ps
            .iter()
            .copied()
            .filter(|&p| {
                ps.iter()
                    .filter(|&&q| bucket(hash(q)) == bucket(hash(p)))
                    .count()
                    == 1
            })
            .collect();
        assert!(lonely.len() > 50);
        for &p in &lonely {
            assert!(!maybe_tracked(p), "bucket of {p:#x} still marked");
        }
        assert!(remove(ps[0]).is_none());
    }
}
