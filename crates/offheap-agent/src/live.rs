//! Live sampled allocations: a counting prefilter in front of sharded
//! address tables (malloc family), and a small region list (mmap family).

use crate::sys::SpinLock;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

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

const FILTER_BITS: u32 = 18;
const SHARD_BITS: u32 = 6;
pub const SHARDS: usize = 1 << SHARD_BITS;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO16: AtomicU16 = AtomicU16::new(0);
/// Counting prefilter: how many sampled live pointers hash to each bucket.
static FILTER: [AtomicU16; 1 << FILTER_BITS] = [ZERO16; 1 << FILTER_BITS];

#[inline(always)]
fn hash(p: usize) -> u64 {
    ((p as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline(always)]
fn filter_index(h: u64) -> usize {
    ((h >> 20) & ((1 << FILTER_BITS) - 1)) as usize
}

/// True if `p` might be a sampled live pointer (one relaxed load).
#[inline(always)]
pub fn maybe_tracked(p: usize) -> bool {
    FILTER[filter_index(hash(p))].load(Ordering::Relaxed) != 0
}

/// Exact mode tracks every allocation: the prefilter could only say "maybe"
/// everywhere. Saturated counters make `filter_inc`/`filter_dec` a single
/// load instead of a compare-and-swap per allocation and free.
pub fn saturate_filter() {
    for f in FILTER.iter() {
        f.store(u16::MAX, Ordering::Relaxed);
    }
    SATURATED.store(true, Ordering::Relaxed);
}

/// Set by `saturate_filter`: `insert` then skips the filter (a cold line).
static SATURATED: AtomicBool = AtomicBool::new(false);

fn filter_inc(h: u64) {
    let f = &FILTER[filter_index(h)];
    let mut cur = f.load(Ordering::Relaxed);
    while cur != u16::MAX {
        match f.compare_exchange_weak(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

fn filter_dec(h: u64) {
    let f = &FILTER[filter_index(h)];
    let mut cur = f.load(Ordering::Relaxed);
    // A saturated counter stays saturated (false positives are harmless).
    while cur != u16::MAX && cur != 0 {
        match f.compare_exchange_weak(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
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

#[inline(always)]
fn home(k: usize, mask: usize) -> usize {
    (hash(k).rotate_left(17) as usize) & mask
}

impl Shard {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            used: 0,
        }
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(64);
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
        Some(val)
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: SpinLock<Shard> = SpinLock::new(Shard::new());
pub static SHARD_LOCKS: [SpinLock<Shard>; SHARDS] = [SHARD_INIT; SHARDS];

fn shard_of(h: u64) -> usize {
    (h >> (64 - SHARD_BITS)) as usize
}

#[allow(clippy::declare_interior_mutable_const)]
const HINT0: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));
/// Per shard: the address of its slot array and the index mask, published
/// after every resize, read without the lock only to issue a prefetch.
static HINTS: [(AtomicUsize, AtomicUsize); SHARDS] = [HINT0; SHARDS];

/// Starts loading the slot where `insert(p, ..)` will probe first, so the
/// cache miss overlaps the unwind instead of following it (the table is
/// large and cold in exact mode).
#[inline]
pub fn prefetch(p: usize) {
    let (base, mask) = &HINTS[shard_of(hash(p))];
    let base = base.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    let at =
        base.wrapping_add(home(p, mask.load(Ordering::Relaxed)) * core::mem::size_of::<Slot>());
    // SAFETY: a prefetch is a hint: it never faults, even if the table was
    // resized and `at` is stale.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at as *const i8)
    };
}

/// Records a sampled allocation at `p`.
pub fn insert(p: usize, v: Live) {
    let h = hash(p);
    let idx = shard_of(h);
    let mut s = SHARD_LOCKS[idx].lock();
    let before = s.used;
    let cap = s.slots.len();
    s.put(p, v);
    if s.slots.len() != cap {
        HINTS[idx].1.store(s.slots.len() - 1, Ordering::Relaxed);
        HINTS[idx]
            .0
            .store(s.slots.as_ptr() as usize, Ordering::Relaxed);
    }
    if s.used > before && !SATURATED.load(Ordering::Relaxed) {
        filter_inc(h);
    }
}

/// Removes and returns the record for `p`, if it was sampled.
pub fn remove(p: usize) -> Option<Live> {
    let h = hash(p);
    let r = SHARD_LOCKS[shard_of(h)].lock().take(p);
    if r.is_some() {
        filter_dec(h);
    }
    r
}

/// Number of live records (malloc family): the sum over the shards, so the
/// hot paths keep no shared counter.
pub fn live_entries() -> usize {
    SHARD_LOCKS.iter().map(|l| l.lock().used).sum()
}

/// Calls `f` for every live record (one shard locked at a time).
pub fn for_each(mut f: impl FnMut(&Live)) {
    for lock in SHARD_LOCKS.iter() {
        let s = lock.lock();
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
