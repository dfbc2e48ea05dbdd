//! The native agent's stream, `native-PID.bin`.
//!
//! OWNER: the native-agent work. The byte layout, the no-allocation encoder
//! (used inside the target) and the truncation-tolerant decoder live here,
//! and are documented in `docs/FORMAT.md`.
//!
//! The decoded form ([`NativeStream`]) is the contract with the analysis:
//! keep its field names stable.

/// Magic at the start of every `native-PID.bin` file.
pub const MAGIC: [u8; 8] = *b"OFHNATV1";

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

#[cfg(feature = "read")]
pub use decoded::*;

#[cfg(feature = "read")]
mod decoded {
    use super::AllocKind;
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

    /// Counters of one stack at one snapshot. Bytes and counts are unbiased
    /// estimates (sampling weights applied), exact with `--exact`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    /// glibc allocator state (`mallinfo2`, `malloc_info`) at one snapshot.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    }

    /// One interned call stack.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct StackRecord {
        /// Return addresses, innermost first; the first one is the caller of
        /// the allocation function. Raw runtime addresses, never symbolized
        /// in the target.
        pub frames: Vec<u64>,
        /// Which allocation family the stack's counters are for.
        pub kind: AllocKind,
        /// True if the unwinder hit the depth cap.
        pub truncated: bool,
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
    }
}

/// Decodes a `native-PID.bin` file. Truncated or corrupt tails are skipped
/// and described in [`NativeStream::notes`]; an error only when the file is
/// not a native stream at all.
#[cfg(feature = "read")]
pub fn read_stream(path: &std::path::Path) -> std::io::Result<NativeStream> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an offheap native stream (bad magic)"));
    }
    // TODO(native-agent work): decode records.
    Ok(NativeStream { notes: vec!["native stream decoding not implemented yet".into()], ..Default::default() })
}
