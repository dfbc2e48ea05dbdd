//! The native agent's stream, `native-PID.bin`.
//!
//! OWNER: the native-agent work. The byte layout, the no-allocation encoder
//! (used inside the target) and the truncation-tolerant decoder live here,
//! and are documented in `docs/FORMAT-native.md`.
//!
//! The decoded form ([`NativeStream`]) is the contract with the analysis:
//! keep its field names stable.
//!
//! # Layout in one paragraph
//!
//! The file starts with [`MAGIC`], followed by records. Every record is
//! `len: u32 LE | tag: u8 | payload (len bytes) | check: u32 LE`, where
//! `check` is FNV-1a 32 over the tag byte and the payload. All integers are
//! little-endian; strings are length-prefixed bytes (not NUL terminated).
//! The writer appends whole snapshots with single `write(2)` calls, so a file
//! cut by SIGKILL ends with at most one partial record, which the reader
//! drops (and says so in [`NativeStream::notes`]).

/// Magic at the start of every `native-PID.bin` file.
pub const MAGIC: [u8; 8] = *b"OFHNATV1";

/// Version of the record layout, written in the header record.
pub const NATIVE_VERSION: u16 = 1;

/// Largest payload a reader accepts; anything bigger is treated as corruption.
pub const MAX_RECORD: u32 = 64 << 20;

/// Record tags.
pub mod tag {
    /// Process header: pid, ppid, configuration, exe path. First record.
    pub const HEADER: u8 = 1;
    /// A module (executable, shared library, addon) became known.
    pub const MODULE: u8 = 2;
    /// A module was unloaded.
    pub const MODULE_UNLOADED: u8 = 3;
    /// An interned stack.
    pub const STACK: u8 = 4;
    /// Start of snapshot N.
    pub const SNAPSHOT_BEGIN: u8 = 5;
    /// Changed counters of some stacks (inside a snapshot).
    pub const COUNTERS: u8 = 6;
    /// Allocator statistics (inside a snapshot).
    pub const ALLOCATOR: u8 = 7;
    /// A free-text agent note.
    pub const NOTE: u8 = 8;
    /// End of snapshot N: everything since the matching begin is committed.
    pub const SNAPSHOT_END: u8 = 9;
    /// The stack that queued the work a stack was allocated in (libuv
    /// threadpool work: the submitting thread's stack), after that stack's
    /// STACK record.
    pub const ORIGIN: u8 = 10;
    /// The leak check at exit (`OFFHEAP_LEAKS=1`): blocks still allocated,
    /// classed by reachability, per stack. After the final snapshot.
    pub const LEAKS: u8 = 11;
}

/// How a block still allocated at exit was classed by the leak check.
pub mod leak_class {
    /// No root reaches it, and no other lost block points to it.
    pub const DIRECT: u8 = 0;
    /// No root reaches it, but another lost block points to it.
    pub const INDIRECT: u8 = 1;
    /// A root (data, bss, a stack, registers, an anonymous mapping that is
    /// not malloc's) reaches it, directly or through other blocks.
    pub const REACHABLE: u8 = 2;
}

/// The figures of one leak check (the head of every `LEAKS` record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "read", derive(serde::Serialize, serde::Deserialize))]
pub struct LeakScanHead {
    /// 0: done; 1: not possible (a note says why).
    pub status: u8,
    /// Blocks still allocated at exit, and their bytes.
    pub blocks: u64,
    pub block_bytes: u64,
    /// Bytes of roots scanned.
    pub root_bytes: u64,
    /// Microseconds the check took.
    pub elapsed_us: u64,
}

/// Size of one entry of a leaks record.
pub const LEAK_ENTRY_LEN: usize = 4 + 1 + 8 + 8;

/// What kind of memory a stack's counters describe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "read", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "read", serde(rename_all = "lowercase"))]
#[repr(u8)]
pub enum AllocKind {
    /// malloc, calloc, realloc, memalign and friends, operator new.
    #[default]
    Malloc = 0,
    /// Anonymous mmap (MAP_ANONYMOUS), including mremap growth.
    Mmap = 1,
}

impl AllocKind {
    /// The kind for a byte in the stream (unknown values are `None`).
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Malloc),
            1 => Some(Self::Mmap),
            _ => None,
        }
    }
}

/// Counters of one stack at one snapshot. Bytes and counts are unbiased
/// estimates (sampling weights applied), exact with `--exact`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "read", derive(serde::Serialize, serde::Deserialize))]
pub struct StackCounters {
    /// Bytes allocated through this stack since the start.
    pub alloc_bytes: u64,
    /// Allocations through this stack since the start.
    pub alloc_count: u64,
    /// Bytes allocated through this stack and not yet freed.
    pub live_bytes: u64,
    /// Allocations through this stack not yet freed.
    pub live_count: u64,
    /// Live bytes whose allocation is older than the configured minimum
    /// age (`OFFHEAP_MIN_AGE_MS`) at the time of the snapshot.
    pub aged_live_bytes: u64,
}

/// glibc allocator state (`mallinfo2`, `malloc_info`) at one snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "read", derive(serde::Serialize, serde::Deserialize))]
pub struct AllocatorStats {
    /// Non-mmapped bytes the allocator got from the system (`arena`).
    pub arena_bytes: u64,
    /// Bytes in chunks in use (`uordblks`).
    pub in_use_bytes: u64,
    /// Bytes in free chunks the allocator retains (`fordblks`).
    pub free_bytes: u64,
    /// Bytes in mmapped chunks (`hblkhd`).
    pub mmapped_bytes: u64,
    /// Number of free chunks (`ordblks`).
    pub free_chunks: u64,
    /// Releasable top-most free bytes (`keepcost`).
    pub releasable_bytes: u64,
    /// Number of arenas (main + thread arenas), from `malloc_info`.
    pub arenas: u32,
    /// Bytes offheap's agent mapped for itself (its tables, copies of
    /// unwind sections): an upper bound of what it keeps resident. 0 from
    /// agents before 2026-12 (the field was appended to the record).
    pub agent_mapped_bytes: u64,
}

// ---------------------------------------------------------------------------
// Encoder (no allocation, no_std)
// ---------------------------------------------------------------------------

/// Where encoded bytes go. The agent implements it on its own buffer.
pub trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

/// A fixed slice used as a sink; bytes past its end are counted, not written.
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    /// Bytes that were offered (may exceed the slice length).
    pub len: usize,
}

impl<'a> SliceSink<'a> {
    /// A sink that writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }
    /// True if everything offered fit.
    pub fn fits(&self) -> bool {
        self.len <= self.buf.len()
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= self.buf.len() {
            self.buf[self.len..end].copy_from_slice(bytes);
        }
        self.len = end;
    }
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

fn fnv(mut h: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// One record being written: the length is declared up front, the
/// checksum accumulates as fields are written, [`Rec::end`] appends it.
struct Rec<'s, S: Sink> {
    sink: &'s mut S,
    sum: u32,
}

impl<'s, S: Sink> Rec<'s, S> {
    fn begin(sink: &'s mut S, tag: u8, len: usize) -> Self {
        sink.put(&(len as u32).to_le_bytes());
        sink.put(&[tag]);
        Rec {
            sink,
            sum: fnv(FNV_OFFSET, &[tag]),
        }
    }
    fn raw(&mut self, b: &[u8]) {
        self.sum = fnv(self.sum, b);
        self.sink.put(b);
    }
    fn u8(&mut self, v: u8) {
        self.raw(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.raw(&v.to_le_bytes());
    }
    fn end(self) {
        self.sink.put(&self.sum.to_le_bytes());
    }
}

/// Longest string the encoder writes (longer ones are cut).
const MAX_STR: usize = u16::MAX as usize;

fn str_len(s: &[u8]) -> usize {
    s.len().min(MAX_STR)
}

/// Writes the file magic; call once on an empty file.
pub fn write_magic<S: Sink>(s: &mut S) {
    s.put(&MAGIC);
}

/// The process header (tag [`tag::HEADER`]).
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub pid: u32,
    pub ppid: u32,
    /// Unix time in ms when the agent started.
    pub start_ms: f64,
    /// Mean sampling interval in bytes (1 with exact tracking).
    pub sample_interval: u64,
    pub exact: bool,
    pub min_age_ms: u64,
    pub max_depth: u32,
    /// Main executable path.
    pub exe: &'a [u8],
}

/// Writes the header record.
pub fn write_header<S: Sink>(s: &mut S, h: &Header<'_>) {
    let exe = &h.exe[..str_len(h.exe)];
    let len = 2 + 4 + 4 + 8 + 8 + 1 + 8 + 4 + 2 + exe.len();
    let mut r = Rec::begin(s, tag::HEADER, len);
    r.u16(NATIVE_VERSION);
    r.u32(h.pid);
    r.u32(h.ppid);
    r.f64(h.start_ms);
    r.u64(h.sample_interval);
    r.u8(h.exact as u8);
    r.u64(h.min_age_ms);
    r.u32(h.max_depth);
    r.u16(exe.len() as u16);
    r.raw(exe);
    r.end();
}

/// A module as the agent saw it (tag [`tag::MODULE`]).
#[derive(Clone, Copy, Debug)]
pub struct ModuleInfo<'a> {
    /// Index of the module in the stream, from 0, in order of appearance.
    pub id: u32,
    pub generation: u32,
    pub bias: u64,
    pub loaded_at_ms: f64,
    pub path: &'a [u8],
    pub build_id: &'a [u8],
    /// (start, end, file offset) of each PT_LOAD segment, runtime addresses.
    pub ranges: &'a [(u64, u64, u64)],
}

/// Writes a module record.
pub fn write_module<S: Sink>(s: &mut S, m: &ModuleInfo<'_>) {
    let path = &m.path[..str_len(m.path)];
    let bid = &m.build_id[..m.build_id.len().min(255)];
    let ranges = &m.ranges[..m.ranges.len().min(u16::MAX as usize)];
    let len = 4 + 4 + 8 + 8 + 2 + path.len() + 1 + bid.len() + 2 + ranges.len() * 24;
    let mut r = Rec::begin(s, tag::MODULE, len);
    r.u32(m.id);
    r.u32(m.generation);
    r.u64(m.bias);
    r.f64(m.loaded_at_ms);
    r.u16(path.len() as u16);
    r.raw(path);
    r.u8(bid.len() as u8);
    r.raw(bid);
    r.u16(ranges.len() as u16);
    for &(a, b, c) in ranges {
        r.u64(a);
        r.u64(b);
        r.u64(c);
    }
    r.end();
}

/// Writes a module-unloaded record.
pub fn write_module_unloaded<S: Sink>(s: &mut S, id: u32, generation: u32, at_ms: f64) {
    let mut r = Rec::begin(s, tag::MODULE_UNLOADED, 16);
    r.u32(id);
    r.u32(generation);
    r.f64(at_ms);
    r.end();
}

/// Writes an interned stack: return addresses, innermost first.
pub fn write_stack<S: Sink>(s: &mut S, id: u32, kind: AllocKind, truncated: bool, frames: &[u64]) {
    let frames = &frames[..frames.len().min(u16::MAX as usize)];
    let len = 4 + 1 + 1 + 2 + frames.len() * 8;
    let mut r = Rec::begin(s, tag::STACK, len);
    r.u32(id);
    r.u8(kind as u8);
    r.u8(truncated as u8);
    r.u16(frames.len() as u16);
    for &f in frames {
        r.u64(f);
    }
    r.end();
}

/// Writes the origin of stack `id`: stack `origin` queued the work it was
/// allocated in.
pub fn write_origin<S: Sink>(s: &mut S, id: u32, origin: u32) {
    let mut r = Rec::begin(s, tag::ORIGIN, 8);
    r.u32(id);
    r.u32(origin);
    r.end();
}

/// Writes the start of a snapshot.
pub fn write_snapshot_begin<S: Sink>(s: &mut S, index: u32, time_ms: f64) {
    let mut r = Rec::begin(s, tag::SNAPSHOT_BEGIN, 12);
    r.u32(index);
    r.f64(time_ms);
    r.end();
}

/// Writes the end of a snapshot (commits it).
pub fn write_snapshot_end<S: Sink>(s: &mut S, index: u32) {
    let mut r = Rec::begin(s, tag::SNAPSHOT_END, 4);
    r.u32(index);
    r.end();
}

/// Size of one entry of a counters record.
pub const COUNTER_ENTRY_LEN: usize = 4 + 5 * 8;

/// Writes the changed counters of some stacks: `(stack id, counters)`.
pub fn write_counters<S: Sink>(s: &mut S, entries: &[(u32, StackCounters)]) {
    let len = 4 + entries.len() * COUNTER_ENTRY_LEN;
    let mut r = Rec::begin(s, tag::COUNTERS, len);
    r.u32(entries.len() as u32);
    for (id, c) in entries {
        r.u32(*id);
        r.u64(c.alloc_bytes);
        r.u64(c.alloc_count);
        r.u64(c.live_bytes);
        r.u64(c.live_count);
        r.u64(c.aged_live_bytes);
    }
    r.end();
}

/// Writes allocator statistics of the current snapshot.
pub fn write_allocator<S: Sink>(s: &mut S, a: &AllocatorStats) {
    let mut r = Rec::begin(s, tag::ALLOCATOR, 7 * 8 + 4);
    r.u64(a.arena_bytes);
    r.u64(a.in_use_bytes);
    r.u64(a.free_bytes);
    r.u64(a.mmapped_bytes);
    r.u64(a.free_chunks);
    r.u64(a.releasable_bytes);
    r.u32(a.arenas);
    r.u64(a.agent_mapped_bytes);
    r.end();
}

/// Writes one leaks record: the check's figures and `(stack, class, count,
/// bytes)` entries (see [`leak_class`]). Several records may follow each
/// other (at most 65536 entries each); the reader adds their entries up.
pub fn write_leaks<S: Sink>(s: &mut S, h: &LeakScanHead, entries: &[(u32, u8, u64, u64)]) {
    let len = 1 + 4 * 8 + 4 + entries.len() * LEAK_ENTRY_LEN;
    let mut r = Rec::begin(s, tag::LEAKS, len);
    r.u8(h.status);
    r.u64(h.blocks);
    r.u64(h.block_bytes);
    r.u64(h.root_bytes);
    r.u64(h.elapsed_us);
    r.u32(entries.len() as u32);
    for &(stack, class, count, bytes) in entries {
        r.u32(stack);
        r.u8(class);
        r.u64(count);
        r.u64(bytes);
    }
    r.end();
}

/// Writes a free-text agent note (UTF-8).
pub fn write_note<S: Sink>(s: &mut S, text: &[u8]) {
    let t = &text[..str_len(text)];
    let mut r = Rec::begin(s, tag::NOTE, 2 + t.len());
    r.u16(t.len() as u16);
    r.raw(t);
    r.end();
}

// ---------------------------------------------------------------------------
// Decoded types and the reader
// ---------------------------------------------------------------------------

#[cfg(feature = "read")]
pub use decoded::*;

#[cfg(feature = "read")]
mod decoded {
    use super::{AllocKind, AllocatorStats, LeakScanHead, StackCounters};
    use serde::{Deserialize, Serialize};

    /// One loaded module (executable, shared library, `.node` addon) as the
    /// agent saw it. A module that was unloaded keeps its record, so its
    /// addresses still resolve.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct ModuleRecord {
        /// Path as the loader reported it (`/proc/self/exe` resolved for the main program).
        pub path: String,
        /// GNU build-id, if the module has one.
        pub build_id: Option<Vec<u8>>,
        /// Load bias: runtime address = file virtual address + bias.
        pub bias: u64,
        /// Mapped PT_LOAD segments: (start, end, file offset), runtime addresses.
        pub ranges: Vec<(u64, u64, u64)>,
        /// Bumped every time the module list changes (dlopen/dlclose).
        pub generation: u32,
        /// Unix time in ms when the agent first saw it.
        pub loaded_at_ms: f64,
        /// Unix time in ms when it was seen gone, if it was unloaded.
        pub unloaded_at_ms: Option<f64>,
    }

    impl ModuleRecord {
        /// True if `addr` falls in one of the module's mapped segments.
        pub fn contains(&self, addr: u64) -> bool {
            self.ranges.iter().any(|&(s, e, _)| addr >= s && addr < e)
        }
    }

    /// The time series of one stack: a point only where something changed,
    /// the value holding until the next point.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct StackSeries {
        /// Index into [`NativeStream::stacks`].
        pub stack: u32,
        /// (index into [`NativeStream::snapshot_times_ms`], counters from then on).
        pub points: Vec<(u32, StackCounters)>,
    }

    impl StackSeries {
        /// Counters in force at snapshot `idx` (zero before the first point).
        pub fn at(&self, idx: u32) -> StackCounters {
            match self.points.partition_point(|p| p.0 <= idx) {
                0 => StackCounters::default(),
                n => self.points[n - 1].1,
            }
        }
        /// The counters at the last snapshot.
        pub fn last(&self) -> StackCounters {
            self.points.last().map(|p| p.1).unwrap_or_default()
        }
    }

    /// One interned call stack.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct StackRecord {
        /// Return addresses, innermost first; the first one is the caller of
        /// the allocation function. Raw runtime addresses, never symbolized
        /// in the target. They are *return* addresses: subtract 1 before
        /// looking up the calling instruction's line.
        pub frames: Vec<u64>,
        /// Which allocation family the stack's counters are for.
        pub kind: AllocKind,
        /// True if the unwinder hit the depth cap.
        pub truncated: bool,
        /// The stack (an id into the same table) that queued the work this
        /// stack was allocated in: libuv threadpool work (zlib, crypto, fs,
        /// dns, N-API async work) carries the stack of the JS thread that
        /// submitted it. Its frames come after this stack's, outermost last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub origin: Option<u32>,
    }

    /// Everything one process's native agent wrote, decoded.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct NativeStream {
        pub pid: u32,
        pub ppid: u32,
        /// Main executable path.
        pub exe: String,
        /// Mean sampling interval in bytes (1 with `--exact`).
        pub sample_interval: u64,
        pub exact: bool,
        /// Unix time in ms when the agent started.
        pub start_ms: f64,
        pub modules: Vec<ModuleRecord>,
        /// Interned stacks; a stack id is an index into this.
        pub stacks: Vec<StackRecord>,
        /// Unix time in ms of every snapshot, in order.
        pub snapshot_times_ms: Vec<f64>,
        /// Allocator state per snapshot (same indexing as `snapshot_times_ms`).
        pub allocator: Vec<Option<AllocatorStats>>,
        /// Counters over time, one series per stack that ever had any.
        pub series: Vec<StackSeries>,
        /// Agent-side counters worth reporting (dropped samples, table overflow, ...).
        pub agent_notes: Vec<String>,
        /// Reader notes: what was skipped (truncated tail, corrupt record).
        pub notes: Vec<String>,
        /// Minimum age (ms) of an allocation to count in `aged_live_bytes`.
        #[serde(default)]
        pub min_age_ms: u64,
        /// Unwind depth cap the agent used.
        #[serde(default)]
        pub max_depth: u32,
        /// Version of the record layout ([`super::NATIVE_VERSION`]).
        #[serde(default)]
        pub version: u16,
        /// The leak check at exit, if the agent ran one (`OFFHEAP_LEAKS=1`).
        #[serde(default)]
        pub leaks: Option<LeakScan>,
    }

    /// The leak check at a process's exit: blocks still allocated, classed
    /// by reachability (see [`super::leak_class`]), per stack.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct LeakScan {
        pub head: LeakScanHead,
        /// `(stack, class, count, bytes)`.
        pub entries: Vec<(u32, u8, u64, u64)>,
    }
}

#[cfg(feature = "read")]
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

#[cfg(feature = "read")]
impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str16(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn done(&self) -> bool {
        self.pos == self.b.len()
    }
    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }
}

/// Fewest bytes a STACK record takes in the file (framing, no frames).
#[cfg(feature = "read")]
const MIN_STACK_RECORD: usize = 9 + 8;
/// Fewest bytes a MODULE record takes in the file (framing, empty strings,
/// no ranges).
#[cfg(feature = "read")]
const MIN_MODULE_RECORD: usize = 9 + 29;

/// Decodes a `native-PID.bin` file. Truncated or corrupt tails are skipped
/// and described in [`NativeStream::notes`]; an error only when the file is
/// not a native stream at all, or not a regular file (it is never read
/// through a symlink, see [`crate::io::open_recording_file`]). At most
/// [`crate::io::MAX_STREAM`] bytes are read; a longer file is decoded as if
/// cut there, with a note.
#[cfg(feature = "read")]
pub fn read_stream(path: &std::path::Path) -> std::io::Result<NativeStream> {
    use crate::io;
    let (bytes, cut) = io::read_recording_file(path, io::MAX_STREAM)?;
    let mut stream = decode(&bytes)?;
    if let Some(size) = cut {
        stream.notes.push(format!(
            "only the first {} of {} read; the rest skipped",
            io::human_size(io::MAX_STREAM),
            io::human_size(size)
        ));
    }
    Ok(stream)
}

/// Decodes the bytes of a native stream (see [`read_stream`]).
#[cfg(feature = "read")]
pub fn decode(bytes: &[u8]) -> std::io::Result<NativeStream> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an offheap native stream (bad magic)",
        ));
    }
    let mut d = Decoder {
        // Ids are dense from 0 and every id has its own record: a file of
        // N bytes cannot name more stacks or modules than that many records
        // fit in N bytes. A larger id is corruption, not a reason to grow a
        // table far past the size of the input.
        max_stacks: bytes.len() / MIN_STACK_RECORD,
        max_modules: bytes.len() / MIN_MODULE_RECORD,
        ..Decoder::default()
    };
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 9 {
            d.out.notes.push(format!(
                "truncated record at byte {pos}: {} trailing bytes skipped",
                rest.len()
            ));
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default());
        if len > MAX_RECORD {
            d.out.notes.push(format!(
                "corrupt record at byte {pos} (length {len}): {} bytes skipped",
                rest.len()
            ));
            break;
        }
        let total = 4 + 1 + len as usize + 4;
        if rest.len() < total {
            d.out.notes.push(format!(
                "truncated record at byte {pos} (needs {total} bytes, {} present): tail skipped",
                rest.len()
            ));
            break;
        }
        let t = rest[4];
        let payload = &rest[5..5 + len as usize];
        let check =
            u32::from_le_bytes(rest[5 + len as usize..total].try_into().unwrap_or_default());
        if fnv(fnv(FNV_OFFSET, &[t]), payload) != check {
            d.out.notes.push(format!(
                "corrupt record at byte {pos} (bad checksum): {} bytes skipped",
                rest.len()
            ));
            break;
        }
        if let Err(what) = d.record(t, payload) {
            d.out.notes.push(format!(
                "corrupt record at byte {pos} ({what}): {} bytes skipped",
                rest.len()
            ));
            break;
        }
        pos += total;
    }
    if let Some(p) = d.pending.take() {
        d.out.notes.push(format!(
            "last snapshot (agent index {}) was incomplete and was dropped",
            p.index
        ));
    }
    if !d.saw_header {
        d.out
            .notes
            .push("no header record: pid and configuration unknown".into());
    }
    d.finish();
    Ok(d.out)
}

#[cfg(feature = "read")]
struct Pending {
    index: u32,
    time_ms: f64,
    allocator: Option<AllocatorStats>,
    points: Vec<(u32, StackCounters)>,
}

#[cfg(feature = "read")]
#[derive(Default)]
struct Decoder {
    out: NativeStream,
    saw_header: bool,
    pending: Option<Pending>,
    /// stack id -> index into out.series
    series_of: std::collections::HashMap<u32, usize>,
    gaps: usize,
    /// Largest stack and module table the input can fill (see [`decode`]).
    max_stacks: usize,
    max_modules: usize,
}

#[cfg(feature = "read")]
impl Decoder {
    fn record(&mut self, t: u8, payload: &[u8]) -> Result<(), &'static str> {
        let mut c = Cursor { b: payload, pos: 0 };
        let bad = "malformed payload";
        match t {
            tag::HEADER => {
                let version = c.u16().ok_or(bad)?;
                if version > NATIVE_VERSION {
                    return Err("newer layout version than this reader");
                }
                self.out.version = version;
                self.out.pid = c.u32().ok_or(bad)?;
                self.out.ppid = c.u32().ok_or(bad)?;
                self.out.start_ms = c.f64().ok_or(bad)?;
                self.out.sample_interval = c.u64().ok_or(bad)?;
                self.out.exact = c.u8().ok_or(bad)? != 0;
                self.out.min_age_ms = c.u64().ok_or(bad)?;
                self.out.max_depth = c.u32().ok_or(bad)?;
                self.out.exe = c.str16().ok_or(bad)?;
                self.saw_header = true;
            }
            tag::MODULE => {
                let id = c.u32().ok_or(bad)? as usize;
                let generation = c.u32().ok_or(bad)?;
                let bias = c.u64().ok_or(bad)?;
                let loaded_at_ms = c.f64().ok_or(bad)?;
                let path = c.str16().ok_or(bad)?;
                let n = c.u8().ok_or(bad)? as usize;
                let bid = c.take(n).ok_or(bad)?.to_vec();
                let nr = c.u16().ok_or(bad)? as usize;
                let mut ranges = Vec::with_capacity(nr.min(c.remaining() / 24));
                for _ in 0..nr {
                    ranges.push((
                        c.u64().ok_or(bad)?,
                        c.u64().ok_or(bad)?,
                        c.u64().ok_or(bad)?,
                    ));
                }
                if id > 1 << 24 || id >= self.max_modules {
                    return Err("module id out of range");
                }
                if id >= self.out.modules.len() {
                    if id > self.out.modules.len() {
                        self.gaps += 1;
                    }
                    self.out.modules.resize(id + 1, ModuleRecord::default());
                }
                self.out.modules[id] = ModuleRecord {
                    path,
                    build_id: if bid.is_empty() { None } else { Some(bid) },
                    bias,
                    ranges,
                    generation,
                    loaded_at_ms,
                    unloaded_at_ms: None,
                };
            }
            tag::MODULE_UNLOADED => {
                let id = c.u32().ok_or(bad)? as usize;
                let _generation = c.u32().ok_or(bad)?;
                let at = c.f64().ok_or(bad)?;
                if let Some(m) = self.out.modules.get_mut(id) {
                    m.unloaded_at_ms = Some(at);
                }
            }
            tag::STACK => {
                let id = c.u32().ok_or(bad)? as usize;
                let kind =
                    AllocKind::from_u8(c.u8().ok_or(bad)?).ok_or("unknown allocation kind")?;
                let truncated = c.u8().ok_or(bad)? != 0;
                let n = c.u16().ok_or(bad)? as usize;
                let mut frames = Vec::with_capacity(n.min(c.remaining() / 8));
                for _ in 0..n {
                    frames.push(c.u64().ok_or(bad)?);
                }
                if id > 1 << 26 || id >= self.max_stacks {
                    return Err("stack id out of range");
                }
                if id >= self.out.stacks.len() {
                    if id > self.out.stacks.len() {
                        self.gaps += 1;
                    }
                    self.out.stacks.resize(id + 1, StackRecord::default());
                }
                self.out.stacks[id] = StackRecord {
                    frames,
                    kind,
                    truncated,
                    origin: None,
                };
            }
            tag::ORIGIN => {
                let id = c.u32().ok_or(bad)? as usize;
                let origin = c.u32().ok_or(bad)?;
                // The origin was interned before the stack that names it.
                if origin as usize >= id {
                    return Err("stack origin out of order");
                }
                match self.out.stacks.get_mut(id) {
                    Some(s) => s.origin = Some(origin),
                    None => return Err("origin of an unknown stack"),
                }
            }
            tag::SNAPSHOT_BEGIN => {
                let index = c.u32().ok_or(bad)?;
                let time_ms = c.f64().ok_or(bad)?;
                if let Some(p) = self.pending.take() {
                    self.out.notes.push(format!(
                        "snapshot (agent index {}) had no end record and was dropped",
                        p.index
                    ));
                }
                self.pending = Some(Pending {
                    index,
                    time_ms,
                    allocator: None,
                    points: Vec::new(),
                });
            }
            tag::COUNTERS => {
                let n = c.u32().ok_or(bad)? as usize;
                if n.saturating_mul(COUNTER_ENTRY_LEN) > payload.len() {
                    return Err("counter count exceeds record");
                }
                let mut pts = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = c.u32().ok_or(bad)?;
                    let sc = StackCounters {
                        alloc_bytes: c.u64().ok_or(bad)?,
                        alloc_count: c.u64().ok_or(bad)?,
                        live_bytes: c.u64().ok_or(bad)?,
                        live_count: c.u64().ok_or(bad)?,
                        aged_live_bytes: c.u64().ok_or(bad)?,
                    };
                    pts.push((id, sc));
                }
                match self.pending.as_mut() {
                    Some(p) => p.points.extend(pts),
                    None => return Err("counters outside a snapshot"),
                }
            }
            tag::ALLOCATOR => {
                let a = AllocatorStats {
                    arena_bytes: c.u64().ok_or(bad)?,
                    in_use_bytes: c.u64().ok_or(bad)?,
                    free_bytes: c.u64().ok_or(bad)?,
                    mmapped_bytes: c.u64().ok_or(bad)?,
                    free_chunks: c.u64().ok_or(bad)?,
                    releasable_bytes: c.u64().ok_or(bad)?,
                    arenas: c.u32().ok_or(bad)?,
                    // Appended later: absent in older recordings.
                    agent_mapped_bytes: c.u64().unwrap_or(0),
                };
                match self.pending.as_mut() {
                    Some(p) => p.allocator = Some(a),
                    None => return Err("allocator stats outside a snapshot"),
                }
            }
            tag::NOTE => {
                let s = c.str16().ok_or(bad)?;
                self.out.agent_notes.push(s);
            }
            tag::SNAPSHOT_END => {
                let index = c.u32().ok_or(bad)?;
                let p = self.pending.take().ok_or("snapshot end without begin")?;
                if p.index != index {
                    return Err("snapshot end does not match its begin");
                }
                let idx = self.out.snapshot_times_ms.len() as u32;
                self.out.snapshot_times_ms.push(p.time_ms);
                self.out.allocator.push(p.allocator);
                for (stack, sc) in p.points {
                    let si = *self.series_of.entry(stack).or_insert_with(|| {
                        self.out.series.push(StackSeries {
                            stack,
                            points: Vec::new(),
                        });
                        self.out.series.len() - 1
                    });
                    let pts = &mut self.out.series[si].points;
                    match pts.last_mut() {
                        Some(last) if last.0 == idx => last.1 = sc,
                        _ => pts.push((idx, sc)),
                    }
                }
            }
            tag::LEAKS => {
                let head = LeakScanHead {
                    status: c.u8().ok_or(bad)?,
                    blocks: c.u64().ok_or(bad)?,
                    block_bytes: c.u64().ok_or(bad)?,
                    root_bytes: c.u64().ok_or(bad)?,
                    elapsed_us: c.u64().ok_or(bad)?,
                };
                let n = c.u32().ok_or(bad)? as usize;
                if n.saturating_mul(LEAK_ENTRY_LEN) > c.remaining() {
                    return Err("leak entry count exceeds record");
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let stack = c.u32().ok_or(bad)?;
                    let class = c.u8().ok_or(bad)?;
                    let count = c.u64().ok_or(bad)?;
                    let bytes = c.u64().ok_or(bad)?;
                    if class > leak_class::REACHABLE {
                        return Err("unknown leak class");
                    }
                    entries.push((stack, class, count, bytes));
                }
                let scan = self.out.leaks.get_or_insert_with(Default::default);
                scan.head = head;
                scan.entries.extend(entries);
            }
            _ => return Err("unknown record tag"),
        }
        if !c.done() && t != tag::HEADER {
            return Err("trailing bytes in record");
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.out.series.sort_by_key(|s| s.stack);
        let n = self.out.stacks.len() as u32;
        let before = self.out.series.len();
        self.out.series.retain(|s| s.stack < n);
        if self.out.series.len() != before {
            self.out.notes.push(format!(
                "{} series refer to unknown stacks and were dropped",
                before - self.out.series.len()
            ));
        }
        if self.gaps > 0 {
            self.out.notes.push(format!(
                "{} gaps in module/stack ids (records missing)",
                self.gaps
            ));
        }
    }
}

#[cfg(all(test, feature = "read"))]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        struct V<'a>(&'a mut Vec<u8>);
        impl Sink for V<'_> {
            fn put(&mut self, b: &[u8]) {
                self.0.extend_from_slice(b);
            }
        }
        let mut s = V(&mut v);
        write_magic(&mut s);
        write_header(
            &mut s,
            &Header {
                pid: 7,
                ppid: 1,
                start_ms: 1000.0,
                sample_interval: 524288,
                exact: false,
                min_age_ms: 5000,
                max_depth: 64,
                exe: b"/bin/x",
            },
        );
        write_module(
            &mut s,
            &ModuleInfo {
                id: 0,
                generation: 1,
                bias: 0x1000,
                loaded_at_ms: 1000.0,
                path: b"/bin/x",
                build_id: &[1, 2, 3],
                ranges: &[(0x1000, 0x2000, 0)],
            },
        );
        write_stack(&mut s, 0, AllocKind::Malloc, false, &[0x1100, 0x1200]);
        write_snapshot_begin(&mut s, 0, 2000.0);
        let c = StackCounters {
            alloc_bytes: 10,
            alloc_count: 1,
            live_bytes: 10,
            live_count: 1,
            aged_live_bytes: 0,
        };
        write_counters(&mut s, &[(0, c)]);
        write_allocator(
            &mut s,
            &AllocatorStats {
                arenas: 1,
                agent_mapped_bytes: 4096,
                ..Default::default()
            },
        );
        write_snapshot_end(&mut s, 0);
        write_note(&mut s, b"hello");
        write_module_unloaded(&mut s, 0, 2, 2500.0);
        write_snapshot_begin(&mut s, 1, 3000.0);
        write_counters(&mut s, &[(0, StackCounters { live_bytes: 0, ..c })]);
        write_snapshot_end(&mut s, 1);
        v
    }

    #[test]
    fn roundtrip() {
        let v = sample();
        let s = decode(&v).unwrap();
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        assert_eq!(s.pid, 7);
        assert_eq!(s.exe, "/bin/x");
        assert_eq!(s.modules.len(), 1);
        assert_eq!(s.modules[0].build_id.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(s.modules[0].unloaded_at_ms, Some(2500.0));
        assert_eq!(s.stacks[0].frames, vec![0x1100, 0x1200]);
        assert_eq!(s.snapshot_times_ms, vec![2000.0, 3000.0]);
        assert_eq!(s.series.len(), 1);
        assert_eq!(s.series[0].points.len(), 2);
        assert_eq!(s.series[0].at(0).live_bytes, 10);
        assert_eq!(s.series[0].last().live_bytes, 0);
        assert_eq!(s.agent_notes, vec!["hello".to_string()]);
        assert_eq!(s.allocator[0].unwrap().arenas, 1);
        assert_eq!(s.allocator[1], None);
    }

    #[test]
    fn every_truncation_decodes() {
        let v = sample();
        for cut in MAGIC.len()..v.len() {
            let s = decode(&v[..cut]).unwrap();
            assert!(s.snapshot_times_ms.len() <= 2);
        }
        // Cut inside the second snapshot: first one survives, a note says why.
        let s = decode(&v[..v.len() - 3]).unwrap();
        assert_eq!(s.snapshot_times_ms.len(), 1);
        assert!(!s.notes.is_empty());
    }

    #[test]
    fn corruption_stops_with_note() {
        let mut v = sample();
        let n = v.len();
        v[n - 20] ^= 0xff;
        let s = decode(&v).unwrap();
        assert_eq!(s.snapshot_times_ms.len(), 1);
        assert!(
            s.notes.iter().any(|n| n.contains("corrupt")),
            "{:?}",
            s.notes
        );
        assert!(decode(b"garbage!").is_err());
    }

    #[test]
    fn slice_sink_counts_overflow() {
        let mut buf = [0u8; 4];
        let mut s = SliceSink::new(&mut buf);
        write_magic(&mut s);
        assert!(!s.fits());
        assert_eq!(s.len, 8);
    }
}
