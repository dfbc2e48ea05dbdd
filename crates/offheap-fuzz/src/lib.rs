//! Fuzz targets for everything offheap reads from a recording or names in
//! one: the native agent's stream, the JSON-lines streams, the recording
//! loader, heap snapshots (and the analysis of a parsed one), perf maps, ELF
//! files, `/proc/PID/maps`.
//!
//! Every target takes bytes and must return, whatever they are: no panic
//! (a debug build's integer overflow is one), no hang, no allocation out of
//! proportion to the input. [`guard`] checks the last two, [`mutate`] makes
//! inputs from the seed corpus, [`run`] drives a bounded, seeded pass.
//!
//! The corpus of each target is in `tests/__fuzz__/<target>/corpus/` (the
//! layout cargo-bolero and libFuzzer use); inputs that failed are written to
//! `tests/__fuzz__/<target>/crashes/`, which every run replays first.
//! `tests/fuzz.rs` has, per target, a bolero test (corpus, then random
//! bytes) and a mutation test (seeded mutations of the corpus). See
//! "Fuzzing" in `docs/NOTES.md` for long runs.

// `cargo bolero test` builds the library's unit-test binary as well (it has
// no tests), instrumented for libFuzzer: linking bolero links libFuzzer in.
#[cfg(all(test, fuzzing))]
use bolero as _;

pub mod guard;
pub mod mutate;
pub mod run;
pub mod targets;

pub use guard::Counting;
pub use run::{Budget, fuzz, replay_corpus};
pub use targets::{TARGETS, Target, target};
