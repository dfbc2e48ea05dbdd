//! The analysis's view of symbolization: every stack of one recorded
//! process symbolized in one batch through offheap-symbols.

use offheap_format::Recording;
use offheap_format::native::NativeStream;
use offheap_symbols::{Frame, ProcessSymbols};
use std::collections::HashMap;

/// Symbolizes the given stacks (by stack id) of `native`, each as seen when
/// it first appeared (JIT code at an address may be replaced later).
/// Returns frames per stack id, and the symbolizer's notes.
pub fn symbolize(
    rec: &Recording,
    native: &NativeStream,
    ids: &[u32],
) -> (HashMap<u32, Vec<Frame>>, Vec<String>) {
    let perf_map = rec.perf_maps.get(&native.pid).map(|p| p.as_path());
    let mut symbols = ProcessSymbols::new(&native.modules, perf_map);
    let mut first_seen: HashMap<u32, f64> = HashMap::new();
    for s in &native.series {
        if let Some(&(idx, _)) = s.points.first()
            && let Some(&t) = native.snapshot_times_ms.get(idx as usize)
        {
            first_seen.insert(s.stack, t);
        }
    }
    let inputs: Vec<(&[u64], f64)> = ids
        .iter()
        .map(|&id| {
            let t = first_seen.get(&id).copied().unwrap_or(native.start_ms);
            (native.stacks[id as usize].frames.as_slice(), t)
        })
        .collect();
    let frames = symbols.symbolize_stacks(&inputs);
    let map = ids.iter().copied().zip(frames).collect();
    (map, symbols.notes().to_vec())
}
