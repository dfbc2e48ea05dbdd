//! From a recording to a [`Model`]: timeline, verdict, suspects, diffs.
//! Pure functions over data: nothing here reads the target or writes files.

pub mod model;
pub use model::*;
