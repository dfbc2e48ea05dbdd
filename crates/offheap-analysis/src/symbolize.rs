//! The analysis's view of symbolization: every stack of one recorded
//! process symbolized in one batch through offheap-symbols.

use offheap_format::Recording;
use offheap_format::native::NativeStream;
use offheap_symbols::{Frame, ProcessSymbols};
use std::collections::HashMap;

/// Symbolizes the given stacks (by stack id) of `native`, as seen at `t_ms`.
/// Returns frames per stack id, and the symbolizer's notes.
pub fn symbolize(rec: &Recording, native: &NativeStream, ids: &[u32], t_ms: f64) -> (HashMap<u32, Vec<Frame>>, Vec<String>) {
    let perf_map = rec.perf_maps.get(&native.pid).map(|p| p.as_path());
    let mut symbols = ProcessSymbols::new(&native.modules, perf_map);
    let inputs: Vec<(&[u64], f64)> =
        ids.iter().map(|&id| (native.stacks[id as usize].frames.as_slice(), t_ms)).collect();
    let frames = symbols.symbolize_stacks(&inputs);
    let map = ids.iter().copied().zip(frames).collect();
    (map, symbols.notes().to_vec())
}
