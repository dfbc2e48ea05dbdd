//! The analysis's view of symbolization: every stack of one recorded
//! process symbolized in one batch through offheap-symbols.

use offheap_format::Recording;
use offheap_format::native::NativeStream;
use offheap_symbols::{Frame, ProcessSymbols};
use std::collections::HashMap;

/// How many queued-from links a stitched stack follows (work queued from
/// threadpool work queued from...).
const MAX_ORIGINS: usize = 4;

/// Symbolizes the given stacks (by stack id) of `native`, each as seen when
/// it first appeared (JIT code at an address may be replaced later).
/// A stack allocated in queued work (libuv threadpool) is stitched: its own
/// frames up to the agent's work wrapper, a [`Frame::queued_from`] seam,
/// then the frames of the stack that queued the work.
/// Returns frames per stack id, and the symbolizer's notes.
pub fn symbolize(
    rec: &Recording,
    native: &NativeStream,
    ids: &[u32],
) -> (HashMap<u32, Vec<Frame>>, Vec<String>) {
    // The origins too, each symbolized when the stack naming it first appeared.
    let mut all: Vec<u32> = ids.to_vec();
    let mut seen: std::collections::HashSet<u32> = ids.iter().copied().collect();
    let mut k = 0;
    while k < all.len() {
        if let Some(o) = native.stacks.get(all[k] as usize).and_then(|s| s.origin)
            && (o as usize) < native.stacks.len()
            && seen.insert(o)
        {
            all.push(o);
        }
        k += 1;
    }
    let (mut own, notes) = symbolize_each(rec, native, &all);
    // A stack asked for once that no other one names as its origin is
    // used once: its frames are moved, not copied (most stacks: start-up
    // queues no work).
    let mut reused: std::collections::HashSet<u32> = all
        .iter()
        .filter_map(|&id| native.stacks.get(id as usize).and_then(|s| s.origin))
        .collect();
    let mut asked = std::collections::HashSet::new();
    for &id in ids {
        if !asked.insert(id) {
            reused.insert(id);
        }
    }
    let stitched = ids
        .iter()
        .map(|&id| {
            let mut frames = Vec::new();
            let mut cur = Some(id);
            for depth in 0..=MAX_ORIGINS {
                let Some(c) = cur else { break };
                let next = native.stacks.get(c as usize).and_then(|s| s.origin);
                let mut part = if depth == 0 && next.is_none() && !reused.contains(&c) {
                    own.remove(&c).unwrap_or_default()
                } else {
                    own.get(&c).cloned().unwrap_or_default()
                };
                if next.is_some() && depth < MAX_ORIGINS {
                    // What ran the work (the agent's wrapper, libuv's worker
                    // loop, the thread start) says nothing once the stack
                    // that queued it follows.
                    if let Some(cut) = part.iter().position(is_agent_frame) {
                        part.truncate(cut);
                    }
                    frames.extend(part);
                    frames.push(Frame::queued_from());
                } else {
                    frames.extend(part);
                }
                cur = next;
            }
            (id, frames)
        })
        .collect();
    own.clear();
    (stitched, notes)
}

/// A frame of offheap's own agent (the wrapper that runs queued work).
fn is_agent_frame(f: &Frame) -> bool {
    f.module
        .rsplit('/')
        .next()
        .is_some_and(|b| b.starts_with("liboffheap_agent"))
}

fn symbolize_each(
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
            // An origin is as old as the first stack allocated under it.
            let mut o = native.stacks.get(s.stack as usize).and_then(|st| st.origin);
            for _ in 0..MAX_ORIGINS {
                let Some(id) = o else { break };
                let e = first_seen.entry(id).or_insert(t);
                *e = e.min(t);
                o = native.stacks.get(id as usize).and_then(|st| st.origin);
            }
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
