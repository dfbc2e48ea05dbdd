//! Stack interning and per-stack counters.
//!
//! The intern table sits behind one lock; a per-thread memo of recently
//! interned stacks (by their 64-bit hash, length, first and last frame)
//! answers most lookups without it. The counters live in never-moving chunks
//! of atomics, so the writer reads them without a lock.
//!
//! A stack's counters are split by who writes them, in separate arrays:
//! - `own`: allocations by the thread that first interned the stack (its
//!   owner), which updates them with a plain load and store, no `lock`
//!   prefix (it is their only writer);
//! - `shared`: allocations by any other thread (atomic adds);
//! - `freed`: frees, by any thread (atomic adds).
//!
//! So a process that allocates on one thread and frees on another (node:
//! the main thread allocates Buffers, V8's sweeper threads free them) does
//! not bounce one cache line between their cores on every pair, and the
//! allocating thread pays no locked instruction for its counters. Live
//! figures are `own + shared - freed`.
//!
//! In header mode (exact, see `header.rs`) a free also knows the epoch its
//! allocation was born in. Frees of allocations born in the last
//! `YOUNG - 1` epochs are counted per birth epoch (`young`), the rest in
//! `bytes`: with the writer's per-epoch snapshots of the allocated bytes
//! this gives the bytes still live that were allocated before a given epoch
//! (the aged live bytes) without a walk over the live allocations, which
//! header mode does not keep.

use crate::sys::{SpinLock, map_anon};
use crate::tls::Tls;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use offheap_format::native::AllocKind;

/// Bytes and allocations, one side of a stack's counters.
#[derive(Default)]
pub struct Side {
    bytes: AtomicU64,
    count: AtomicU64,
}

/// Ring slots of `Freed::young`: frees of allocations born in the current
/// epoch and the `YOUNG - 2` before it are counted per epoch; one slot is
/// the slack that lets the writer recycle a slot no free can be adding to.
pub const YOUNG: usize = 6;

/// The free side of a stack's counters, one cache line per stack.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Freed {
    /// Bytes freed, other than those in `young`.
    bytes: AtomicU64,
    count: AtomicU64,
    /// Header mode: bytes freed of allocations born in epoch `e`, at
    /// `e % YOUNG`, for the recent epochs.
    young: [AtomicU64; YOUNG],
}

/// The current epoch (header mode): advanced by the writer, stored in every
/// allocation's header.
pub static EPOCH: AtomicU32 = AtomicU32::new(0);

/// One stack's counters.
pub struct Counters {
    own: &'static Side,
    shared: &'static Side,
    freed: &'static Freed,
}

/// One stack's figures as the writer reads them.
pub struct Figures {
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub live_bytes: u64,
    pub live_count: u64,
}

impl Counters {
    /// A consistent-enough read: the free side first (every free it counts
    /// was preceded by its allocation's add, published through the shard
    /// lock the free took, and the free side's adds are releases), so live
    /// figures never go below zero.
    pub fn read(&self) -> Figures {
        let fb = self
            .freed
            .young
            .iter()
            .fold(self.freed.bytes.load(Ordering::Acquire), |a, y| {
                a.wrapping_add(y.load(Ordering::Acquire))
            });
        let fc = self.freed.count.load(Ordering::Acquire);
        let ab = self.alloc_bytes();
        let ac = (self.own.count.load(Ordering::Acquire))
            .wrapping_add(self.shared.count.load(Ordering::Acquire));
        Figures {
            alloc_bytes: ab,
            alloc_count: ac,
            live_bytes: ab.saturating_sub(fb),
            live_count: ac.saturating_sub(fc),
        }
    }

    /// Bytes allocated so far.
    pub fn alloc_bytes(&self) -> u64 {
        (self.own.bytes.load(Ordering::Acquire))
            .wrapping_add(self.shared.bytes.load(Ordering::Acquire))
    }

    /// Bytes freed and not counted in `young`, and the `young` slots.
    pub fn freed_split(&self) -> (u64, [u64; YOUNG]) {
        let y = core::array::from_fn(|i| self.freed.young[i].load(Ordering::Acquire));
        (self.freed.bytes.load(Ordering::Acquire), y)
    }

    /// Moves ring slot `slot` into `bytes` (the writer, before the epoch
    /// that reuses the slot begins; no free adds to it meanwhile, see
    /// `sub_born`).
    pub fn recycle(&self, slot: usize) {
        let v = self.freed.young[slot].swap(0, Ordering::AcqRel);
        if v != 0 {
            self.freed.bytes.fetch_add(v, Ordering::Release);
        }
    }
}

/// A chunk of counters: all three sides of `CHUNK` stacks.
#[repr(C)]
struct Chunk {
    own: [Side; CHUNK],
    shared: [Side; CHUNK],
    freed: [Freed; CHUNK],
}

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const MAX_CHUNKS: usize = 1024;
/// At most this many distinct stacks (4M); beyond it, samples are dropped.
pub const MAX_STACKS: usize = CHUNK * MAX_CHUNKS;

#[allow(clippy::declare_interior_mutable_const)]
const NULL_CHUNK: AtomicPtr<Chunk> = AtomicPtr::new(core::ptr::null_mut());
static CHUNKS: [AtomicPtr<Chunk>; MAX_CHUNKS] = [NULL_CHUNK; MAX_CHUNKS];
/// Number of stacks whose counters exist.
pub static COUNT: AtomicU32 = AtomicU32::new(0);

pub struct Entry {
    pub hash: u64,
    pub start: u32,
    pub len: u16,
    pub kind: AllocKind,
    pub truncated: bool,
    /// The thread that interned it first: the writer of its `own` counters.
    pub owner: u32,
    /// 1 + the id of the stack that queued the work it was allocated in, or 0.
    pub origin: u32,
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

/// A hash of a stack's frames, computed one frame at a time as the unwinder
/// produces them (so its work overlaps the unwind's stack reads instead of
/// being a second pass). The per-frame dependency chain is a rotate and an
/// xor (the multiplies are off the chain); `finish` mixes in the kind and
/// depth.
#[derive(Clone, Copy)]
pub struct FrameHash(u64);

impl FrameHash {
    pub const fn new() -> Self {
        FrameHash(0x9E37_79B9_7F4A_7C15)
    }

    #[inline(always)]
    pub fn push(&mut self, f: u64) {
        self.0 = self.0.rotate_left(23) ^ f.wrapping_mul(0xff51_afd7_ed55_8ccd);
    }

    /// The final hash (never 0, which marks a free index slot).
    pub fn finish(self, kind: AllocKind, len: usize) -> u64 {
        let mut h = self.0 ^ kind as u64 ^ ((len as u64) << 48);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 29;
        h | 1
    }
}

/// The hash of a whole stack: what `FrameHash` gives frame by frame (the
/// check behind `intern_add`'s debug assertion).
fn hash_frames(kind: AllocKind, frames: &[u64], origin: u32) -> u64 {
    let mut h = FrameHash::new();
    for &f in frames {
        h.push(f);
    }
    with_origin(h, origin).finish(kind, frames.len())
}

/// The hash of a stack allocated in work queued by stack `origin - 1`:
/// the same frames under another origin are another stack.
#[inline(always)]
fn with_origin(mut h: FrameHash, origin: u32) -> FrameHash {
    if origin != 0 {
        h.push(0x8000_0000_0000_0000 | origin as u64);
    }
    h
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
pub fn counters(id: u32) -> Counters {
    let c = CHUNKS[(id as usize) >> CHUNK_BITS].load(Ordering::Acquire);
    let i = id as usize & (CHUNK - 1);
    // SAFETY: chunks are published before any id in them is handed out (and
    // before COUNT covers them), never freed; `id` came from `intern`.
    unsafe {
        Counters {
            own: &(*c).own[i],
            shared: &(*c).shared[i],
            freed: &(*c).freed[i],
        }
    }
}

/// Counts `bytes` and `count` as allocated (and live) on stack `id`, from
/// a thread that is not its owner.
fn add(id: u32, bytes: u64, count: u64) {
    let a = counters(id).shared;
    a.bytes.fetch_add(bytes, Ordering::Relaxed);
    if count != 0 {
        a.count.fetch_add(count, Ordering::Relaxed);
    }
}

/// The same, from the stack's owner thread: its only writer, so a load and
/// a store, no read-modify-write.
fn add_owned(id: u32, bytes: u64, count: u64) {
    let a = counters(id).own;
    let b = a.bytes.load(Ordering::Relaxed);
    a.bytes.store(b.wrapping_add(bytes), Ordering::Relaxed);
    let c = a.count.load(Ordering::Relaxed);
    a.count.store(c.wrapping_add(count), Ordering::Relaxed);
}

/// A per-thread memo entry: a stack interned recently by this thread.
#[derive(Clone, Copy)]
pub struct Memo {
    hash: u64,
    first: u64,
    last: u64,
    id: u32,
    len: u16,
    /// This thread owns the stack's `own` counters.
    owned: bool,
}

impl Memo {
    pub const EMPTY: Memo = Memo {
        hash: 0,
        first: 0,
        last: 0,
        id: 0,
        len: 0,
        owned: false,
    };
}

/// Entries of the per-thread memo (direct-mapped by hash).
pub const MEMO: usize = 64;

/// Interns a stack and counts `bytes` and `count` as allocated (and live)
/// on it; `None` if the table is full. The stack is the thread's frames
/// under the origin of the work it runs (`Tls::origin`), if any.
///
/// A stack this thread interned recently is found in its memo without the
/// table's lock, the index probe and the frame comparison (each a cache
/// miss in a process with thousands of stacks): a hit needs the same 64-bit
/// hash of kind and frames, the same depth and the same first and last
/// frame. Two different stacks agreeing on all of that would need a 64-bit
/// hash collision, and even then the same innermost and outermost frames.
pub fn intern_add(
    t: &Tls,
    h: FrameHash,
    kind: AllocKind,
    truncated: bool,
    frames: &[u64],
    bytes: u64,
    count: u64,
) -> Option<u32> {
    let origin = t.origin.get();
    let h = with_origin(h, origin).finish(kind, frames.len());
    debug_assert_eq!(h, hash_frames(kind, frames, origin));
    let first = frames.first().copied().unwrap_or(0);
    let last = frames.last().copied().unwrap_or(0);
    let slot = &t.memo[(h >> 40) as usize % MEMO];
    let m = slot.get();
    let (id, owned) =
        if m.hash == h && m.len as usize == frames.len() && m.first == first && m.last == last {
            (m.id, m.owned)
        } else {
            let (id, owned) = intern(h, kind, truncated, frames, origin, t.tid())?;
            slot.set(Memo {
                hash: h,
                first,
                last,
                id,
                len: frames.len() as u16,
                owned,
            });
            (id, owned)
        };
    if owned {
        add_owned(id, bytes, count);
    } else {
        add(id, bytes, count);
    }
    Some(id)
}

/// The table lookup behind `intern_add`: the stack's id, a new one (owned
/// by thread `tid`) if it was not known, and whether `tid` owns it; `None`
/// if the table is full.
fn intern(
    h: u64,
    kind: AllocKind,
    truncated: bool,
    frames: &[u64],
    origin: u32,
    tid: u32,
) -> Option<(u32, bool)> {
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
            && t.entries[x.id as usize].origin == origin
        {
            return Some((x.id, t.entries[x.id as usize].owner == tid));
        }
        i = (i + 1) & mask;
    }
    let id = t.entries.len();
    if id >= MAX_STACKS {
        return None;
    }
    if id.is_multiple_of(CHUNK) && CHUNKS[id >> CHUNK_BITS].load(Ordering::Relaxed).is_null() {
        // A fresh kernel mapping is zeroed: all-zero atomics are valid counters.
        let p = map_anon(core::mem::size_of::<Chunk>());
        if p.is_null() {
            return None;
        }
        CHUNKS[id >> CHUNK_BITS].store(p as *mut Chunk, Ordering::Release);
    }
    let start = t.frames.len() as u32;
    t.frames.extend_from_slice(frames);
    t.entries.push(Entry {
        hash: h,
        start,
        len: frames.len() as u16,
        kind,
        truncated,
        owner: tid,
        origin,
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
    Some((id as u32, true))
}

/// Extra bytes counted as allocated and live without a new allocation
/// (mremap growth of a tracked mapping).
pub fn grow(id: u32, bytes: u64) {
    add(id, bytes, 0);
}

/// Header mode: an allocation of `bytes` on stack `id`, born in epoch
/// `born`, is freed. Born in one of the last `YOUNG - 1` epochs, it is
/// counted in the ring slot of its epoch. The writer recycles slot
/// `(k + 1) % YOUNG` before it publishes epoch `k + 1`; a free that still
/// sees epoch `k` only adds to the slots of epochs `k - YOUNG + 2 ..= k`,
/// none of which is that slot.
#[inline(always)]
pub fn sub_born(id: u32, bytes: u64, born: u32) {
    let f = counters(id).freed;
    f.count.fetch_add(1, Ordering::Release);
    let now = EPOCH.load(Ordering::Relaxed);
    if now.wrapping_sub(born) < (YOUNG - 1) as u32 {
        f.young[born as usize % YOUNG].fetch_add(bytes, Ordering::Release);
    } else {
        f.bytes.fetch_add(bytes, Ordering::Release);
    }
}

/// Bytes and allocations of stack `id` that are no longer live.
pub fn sub(id: u32, bytes: u64, count: u64) {
    let f = counters(id).freed;
    f.bytes.fetch_add(bytes, Ordering::Release);
    if count != 0 {
        f.count.fetch_add(count, Ordering::Release);
    }
}
