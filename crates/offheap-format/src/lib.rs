//! The offheap recording: the only interface between what runs beside or
//! inside the target (the CLI's collector, the JS agent, the native agent)
//! and everything that analyses it afterwards.
//!
//! A recording is a directory (see `docs/FORMAT.md`):
//!
//! | file                    | written by        | encoding |
//! |-------------------------|-------------------|----------|
//! | `recording.json`        | CLI, at start     | one JSON object ([`Meta`]) |
//! | `proc.jsonl`            | CLI, every interval | JSON lines ([`ProcSample`]) |
//! | `node-PID-TID.jsonl`    | JS agent          | JSON lines ([`NodeRecord`]) |
//! | `native-PID.bin`        | native agent      | length-prefixed binary records ([`native`]) |
//! | `perf-PID.map`          | CLI (copy of V8's map) | text, `START SIZE name` |
//! | `end.json`              | CLI, at the end   | one JSON object ([`End`]) |
//!
//! Every stream is append-only and self-delimiting, so a recording cut short
//! by SIGKILL or the OOM killer is read up to its last complete record; the
//! reader reports what it skipped in [`Recording::notes`].
//!
//! Without the `read` feature this crate has no dependencies and never
//! allocates: that is the part the agent links.
#![cfg_attr(not(feature = "read"), no_std)]

pub mod elf;
pub mod layout;
pub mod native;

#[cfg(feature = "read")]
pub mod io;
#[cfg(feature = "read")]
pub use io::write_atomic;
#[cfg(feature = "read")]
mod telemetry;
#[cfg(feature = "read")]
pub mod text;
#[cfg(feature = "read")]
pub mod units;
#[cfg(feature = "read")]
pub use telemetry::*;
#[cfg(feature = "read")]
pub use text::escape_terminal;

/// Version of the recording format as a whole. Bumped on any incompatible
/// change of any stream; readers refuse newer major versions.
pub const FORMAT_VERSION: u32 = 1;
