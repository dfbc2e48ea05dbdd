//! Live sampled allocations: a counting prefilter in front of sharded
//! address tables (malloc family), and a small region list (mmap family).

use crate::sys::SpinLock;
use core::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

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
const TOMB: usize = 1;

/// Open-addressing table (linear probing) of address -> Live.
pub struct Shard {
    keys: Vec<usize>,
    vals: Vec<Live>,
    used: usize,
    tombs: usize,
}

impl Shard {
    const fn new() -> Self {
        Self {
            keys: Vec::new(),
            vals: Vec::new(),
            used: 0,
            tombs: 0,
        }
    }

    fn grow(&mut self) {
        let cap = (self.keys.len() * 2).max(64);
        let cap = if self.used * 4 < self.keys.len() {
            self.keys.len().max(64)
        } else {
            cap
        };
        let old_k = core::mem::replace(&mut self.keys, vec![EMPTY; cap]);
        let old_v = core::mem::replace(&mut self.vals, vec![Live::default(); cap]);
        self.used = 0;
        self.tombs = 0;
        for (k, v) in old_k.into_iter().zip(old_v) {
            if k > TOMB {
                self.put(k, v);
            }
        }
    }

    fn put(&mut self, k: usize, v: Live) {
        if (self.used + self.tombs + 1) * 2 > self.keys.len() {
            self.grow();
        }
        let mask = self.keys.len() - 1;
        let mut i = (hash(k).rotate_left(17) as usize) & mask;
        let mut first_tomb = usize::MAX;
        loop {
            match self.keys[i] {
                EMPTY => break,
                TOMB if first_tomb == usize::MAX => first_tomb = i,
                x if x == k => {
                    // Same address twice: the old record is stale (a free we
                    // never saw). Replace it.
                    self.vals[i] = v;
                    return;
                }
                _ => {}
            }
            i = (i + 1) & mask;
        }
        if first_tomb != usize::MAX {
            i = first_tomb;
            self.tombs -= 1;
        }
        self.keys[i] = k;
        self.vals[i] = v;
        self.used += 1;
    }

    fn take(&mut self, k: usize) -> Option<Live> {
        if self.keys.is_empty() {
            return None;
        }
        let mask = self.keys.len() - 1;
        let mut i = (hash(k).rotate_left(17) as usize) & mask;
        loop {
            match self.keys[i] {
                EMPTY => return None,
                x if x == k => {
                    self.keys[i] = TOMB;
                    self.used -= 1;
                    self.tombs += 1;
                    return Some(self.vals[i]);
                }
                _ => {}
            }
            i = (i + 1) & mask;
        }
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: SpinLock<Shard> = SpinLock::new(Shard::new());
pub static SHARD_LOCKS: [SpinLock<Shard>; SHARDS] = [SHARD_INIT; SHARDS];
static LIVE_ENTRIES: AtomicUsize = AtomicUsize::new(0);

fn shard_of(h: u64) -> usize {
    (h >> (64 - SHARD_BITS)) as usize
}

/// Records a sampled allocation at `p`.
pub fn insert(p: usize, v: Live) {
    let h = hash(p);
    let mut s = SHARD_LOCKS[shard_of(h)].lock();
    let before = s.used;
    s.put(p, v);
    if s.used > before {
        filter_inc(h);
        LIVE_ENTRIES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Removes and returns the record for `p`, if it was sampled.
pub fn remove(p: usize) -> Option<Live> {
    let h = hash(p);
    let r = SHARD_LOCKS[shard_of(h)].lock().take(p);
    if r.is_some() {
        filter_dec(h);
        LIVE_ENTRIES.fetch_sub(1, Ordering::Relaxed);
    }
    r
}

pub fn live_entries() -> usize {
    LIVE_ENTRIES.load(Ordering::Relaxed)
}

/// Calls `f` for every live record (one shard locked at a time).
pub fn for_each(mut f: impl FnMut(&Live)) {
    for lock in SHARD_LOCKS.iter() {
        let s = lock.lock();
        for (k, v) in s.keys.iter().zip(s.vals.iter()) {
            if *k > TOMB {
                f(v);
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
