//! Stack interning and per-stack counters.
//!
//! The intern table sits behind one lock (taken only on sampled events);
//! the counters live in never-moving chunks of atomics, so updates and the
//! writer's reads need no lock.

use crate::sys::{SpinLock, map_anon};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use offheap_format::native::AllocKind;

#[derive(Default)]
pub struct Counters {
    pub alloc_bytes: AtomicU64,
    pub alloc_count: AtomicU64,
    pub live_bytes: AtomicU64,
    pub live_count: AtomicU64,
}

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const MAX_CHUNKS: usize = 1024;
/// At most this many distinct stacks (4M); beyond it, samples are dropped.
pub const MAX_STACKS: usize = CHUNK * MAX_CHUNKS;

#[allow(clippy::declare_interior_mutable_const)]
const NULL_CHUNK: AtomicPtr<Counters> = AtomicPtr::new(core::ptr::null_mut());
static CHUNKS: [AtomicPtr<Counters>; MAX_CHUNKS] = [NULL_CHUNK; MAX_CHUNKS];
/// Number of stacks whose counters exist.
pub static COUNT: AtomicU32 = AtomicU32::new(0);

pub struct Entry {
    pub hash: u64,
    pub start: u32,
    pub len: u16,
    pub kind: AllocKind,
    pub truncated: bool,
}

pub struct Table {
    index: Vec<Slot>,
    pub entries: Vec<Entry>,
    pub frames: Vec<u64>,
}

pub static TABLE: SpinLock<Table> = SpinLock::new(Table {
    index: Vec::new(),
    entries: Vec::new(),
    frames: Vec::new(),
});

/// A hash of the frames whose per-frame dependency chain is a rotate and
/// an xor (the multiplies are off the chain), finished by a full mix.
fn hash_frames(kind: AllocKind, frames: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15 ^ kind as u64 ^ ((frames.len() as u64) << 48);
    for &f in frames {
        h = h.rotate_left(23) ^ f.wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 29;
    h | 1
}

/// An index slot: enough to compare a stack without touching `entries`.
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    id: u32,
    start: u32,
    len: u16,
    kind: AllocKind,
}

const FREE: Slot = Slot {
    hash: 0,
    id: u32::MAX,
    start: 0,
    len: 0,
    kind: AllocKind::Malloc,
};

impl Table {
    fn rehash(&mut self) {
        let cap = (self.index.len() * 2).max(1024);
        self.index = vec![FREE; cap];
        for (id, e) in self.entries.iter().enumerate() {
            let mut i = (e.hash as usize) & (cap - 1);
            while self.index[i].hash != 0 {
                i = (i + 1) & (cap - 1);
            }
            self.index[i] = Slot {
                hash: e.hash,
                id: id as u32,
                start: e.start,
                len: e.len,
                kind: e.kind,
            };
        }
    }

    pub fn frames_of(&self, e: &Entry) -> &[u64] {
        &self.frames[e.start as usize..e.start as usize + e.len as usize]
    }
}

/// The counters of stack `id` (which must exist).
pub fn counters(id: u32) -> &'static Counters {
    let c = CHUNKS[(id as usize) >> CHUNK_BITS].load(Ordering::Acquire);
    // SAFETY: chunks are published before COUNT covers their ids, never freed,
    // and `id` < COUNT by contract.
    unsafe { &*c.add(id as usize & (CHUNK - 1)) }
}

/// Interns a stack; `None` if the table is full.
pub fn intern(kind: AllocKind, truncated: bool, frames: &[u64]) -> Option<u32> {
    let h = hash_frames(kind, frames);
    let mut t = TABLE.lock();
    if t.index.is_empty() {
        t.rehash();
    }
    let mask = t.index.len() - 1;
    let mut i = (h as usize) & mask;
    loop {
        let x = t.index[i];
        if x.hash == 0 {
            break;
        }
        if x.hash == h
            && x.kind == kind
            && x.len as usize == frames.len()
            && t.frames[x.start as usize..x.start as usize + x.len as usize] == *frames
        {
            return Some(x.id);
        }
        i = (i + 1) & mask;
    }
    let id = t.entries.len();
    if id >= MAX_STACKS {
        return None;
    }
    if id.is_multiple_of(CHUNK) && CHUNKS[id >> CHUNK_BITS].load(Ordering::Relaxed).is_null() {
        // A fresh kernel mapping is zeroed: all-zero atomics are valid counters.
        let p = map_anon(CHUNK * core::mem::size_of::<Counters>());
        if p.is_null() {
            return None;
        }
        CHUNKS[id >> CHUNK_BITS].store(p as *mut Counters, Ordering::Release);
    }
    let start = t.frames.len() as u32;
    t.frames.extend_from_slice(frames);
    t.entries.push(Entry {
        hash: h,
        start,
        len: frames.len() as u16,
        kind,
        truncated,
    });
    t.index[i] = Slot {
        hash: h,
        id: id as u32,
        start,
        len: frames.len() as u16,
        kind,
    };
    if t.entries.len() * 2 > t.index.len() {
        t.rehash();
    }
    COUNT.store(t.entries.len() as u32, Ordering::Release);
    Some(id as u32)
}

pub fn add(id: u32, bytes: u64, count: u64) {
    let c = counters(id);
    c.alloc_bytes.fetch_add(bytes, Ordering::Relaxed);
    c.alloc_count.fetch_add(count, Ordering::Relaxed);
    c.live_bytes.fetch_add(bytes, Ordering::Relaxed);
    c.live_count.fetch_add(count, Ordering::Relaxed);
}

/// Extra bytes counted as allocated and live without a new allocation
/// (mremap growth of a tracked mapping).
pub fn grow(id: u32, bytes: u64) {
    let c = counters(id);
    c.alloc_bytes.fetch_add(bytes, Ordering::Relaxed);
    c.live_bytes.fetch_add(bytes, Ordering::Relaxed);
}

pub fn sub(id: u32, bytes: u64, count: u64) {
    let c = counters(id);
    c.live_bytes.fetch_sub(bytes, Ordering::Relaxed);
    c.live_count.fetch_sub(count, Ordering::Relaxed);
}
