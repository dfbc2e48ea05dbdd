//! Offline symbolization of the stacks a recording holds.
//!
//! OWNER: the symbolization work. Never runs inside the target.

use serde::{Deserialize, Serialize};

/// What kind of code a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Compiled code from an ELF module (executable, library, addon).
    Native,
    /// JavaScript (V8 JIT or interpreter frame named from the perf map).
    Js,
    /// A V8 builtin or bytecode handler.
    Builtin,
    /// An address that could not be resolved; `function` is `module+0xoffset` or the raw address.
    Unknown,
}

/// One symbolized frame. Inlined functions become several frames, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    /// Module path (for JS frames: the script, if known, else "[jit]").
    pub module: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kind: FrameKind,
    /// The raw address the frame came from.
    pub address: u64,
    /// True for a frame that is an inlined call inside the next frame's function.
    #[serde(default)]
    pub inlined: bool,
}
