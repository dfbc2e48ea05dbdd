//! From a recording to a [`Model`]: timeline, verdict, suspects, diffs.
//! Pure functions over data: nothing here reads the target or writes files
//! (symbolization reads the target's binaries on disk, through offheap-symbols).

mod analyze;
pub mod check;
pub mod diff;
mod jsheap;
pub mod ledger;
pub mod model;
pub mod owners;
pub mod stats;
pub mod summary;
pub mod suspects;
mod symbolize;
pub mod verdict;

pub use analyze::{Options, ProcStreams, analyze, processes, timeline, warmup};
pub use model::*;
pub use owners::OwnerFinding;
