//! V8-heap suspects: the JS allocation sites whose live objects accumulate,
//! from the sampling heap profiler the JS agent runs in every isolate
//! (main thread and workers), with no flag and no inspector port.
//!
//! Each `heap_profile` record is V8's unbiased estimate of the live bytes
//! allocated at each stack at that moment (objects sampled by bytes; a
//! sample leaves the profile when its object is collected). A site whose
//! estimate keeps rising, by more than sampling noise, is a suspect.

use crate::model::{Suspect, SuspectKind};
use crate::stats::trend;
use offheap_format::NodeStream;
use offheap_format::Recording;
use offheap_symbols::{Frame, FrameKind};
use std::collections::HashMap;

/// Profiles needed before a site's trend means anything.
const MIN_PROFILES: usize = 3;
/// Least growth of a suspect, in bytes.
const MIN_GROWTH: f64 = 64.0 * 1024.0;
/// Least net growth in sampled objects: one sample stands for a whole
/// sampling interval of bytes, so fewer than this is noise.
const MIN_SAMPLES: i64 = 3;

/// Frames of a heap stack, innermost first, as the other suspects' frames.
fn frames(ns: &NodeStream, stack: u32) -> Vec<Frame> {
    let Some(st) = ns.heap_stacks.get(stack as usize) else {
        return Vec::new();
    };
    st.frames
        .iter()
        .filter_map(|&id| ns.heap_frames.get(id as usize))
        .filter(|f| f.function != "(root)")
        .map(|f| {
            let file = f.url.trim_start_matches("file://");
            Frame {
                function: if f.function.is_empty() {
                    "(anonymous)".into()
                } else {
                    f.function.clone()
                },
                module: if file.is_empty() {
                    offheap_symbols::JIT_MODULE.into()
                } else {
                    file.to_string()
                },
                file: (!file.is_empty()).then(|| file.to_string()),
                line: (f.line > 0).then_some(f.line),
                kind: FrameKind::Js,
                address: 0,
                inlined: false,
            }
        })
        .collect()
}

/// A site's first stack, and its (bytes, samples) at each profile.
type Site = (u32, Vec<(u64, u64)>);

/// The frames of a heap stack that make it a site: without the builtins
/// on top (`String.prototype.repeat`, `Array.prototype.push`: frames with
/// no script), so that what one line of JS allocates is one site whether
/// or not it went through a builtin, or an inlined one. A stack of
/// builtins alone is kept whole.
fn site_key(ns: &NodeStream, stack: u32) -> Vec<u32> {
    let Some(st) = ns.heap_stacks.get(stack as usize) else {
        return Vec::new();
    };
    let scripted = |id: &u32| {
        ns.heap_frames
            .get(*id as usize)
            .is_some_and(|f| !f.url.is_empty())
    };
    match st.frames.iter().position(scripted) {
        Some(k) => st.frames[k..].to_vec(),
        None => st.frames.clone(),
    }
}

/// [`frames`] without the builtins on top, as [`site_key`] merges them.
fn site_frames(ns: &NodeStream, stack: u32) -> Vec<Frame> {
    let f = frames(ns, stack);
    match f.iter().position(|f| f.file.is_some()) {
        Some(k) => f[k..].to_vec(),
        None => f,
    }
}

/// When no site grows enough alone but the heap does: one function's
/// allocations are often split over several stacks (a function inlined
/// into its caller once optimized shows as the caller from then on, each
/// stack with too few samples). The stacks' common callers add them up:
/// the most specific application frame (not node's own `node:` scripts)
/// under which the live estimate rises steadily is the suspect, with the
/// stack from that frame out.
fn by_caller(
    ns: &NodeStream,
    sites: &HashMap<Vec<u32>, Site>,
    n: usize,
    rising: impl Fn(&[(u64, u64)]) -> Option<(f64, u64)>,
) -> Option<(f64, u64, Vec<Frame>)> {
    type Key = Vec<(String, Option<String>, Option<u32>)>;
    /// The caller's frames out, and its (bytes, samples) at each profile.
    type Caller = (Vec<Frame>, Vec<(u64, u64)>);
    let mut callers: HashMap<Key, Caller> = HashMap::new();
    for (stack, v) in sites.values() {
        let fr = site_frames(ns, *stack);
        let mut seen = std::collections::HashSet::new();
        for k in 0..fr.len() {
            let app = fr[k]
                .file
                .as_deref()
                .is_some_and(|f| !f.starts_with("node:"));
            if !app {
                continue;
            }
            let key: Key = fr[k..]
                .iter()
                .map(|f| (f.function.clone(), f.file.clone(), f.line))
                .collect();
            if !seen.insert(key.clone()) {
                continue;
            }
            let e = callers
                .entry(key)
                .or_insert_with(|| (fr[k..].to_vec(), vec![(0, 0); n]));
            for (sum, x) in e.1.iter_mut().zip(v) {
                sum.0 += x.0;
                sum.1 += x.1;
            }
        }
    }
    callers
        .into_values()
        .filter_map(|(frames, v)| {
            let (slope, peak) = rising(&v)?;
            Some((slope, peak, frames))
        })
        .max_by(|a, b| a.2.len().cmp(&b.2.len()).then(a.0.total_cmp(&b.0)))
}

/// js-heap suspects of every isolate of one process, over the window
/// `[from, to]` (seconds since start), ending at `stop_ms` (Unix ms) when
/// the target was asked to stop. `heap_grows`: the verdict found the V8
/// heap growing; otherwise only clear, large growth makes a suspect.
pub fn suspects(
    rec: &Recording,
    isolates: &[&NodeStream],
    (from, to): (f64, f64),
    stop_ms: Option<f64>,
    heap_grows: bool,
    top: usize,
) -> (Vec<Suspect>, Vec<String>) {
    let start = rec.meta.start_ms;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let (tau_min, growth_min) = if heap_grows {
        (0.5, MIN_GROWTH)
    } else {
        (0.7, 1024.0 * 1024.0)
    };
    for &ns in isolates {
        let stop = stop_ms.unwrap_or(f64::MAX);
        let end = stop.min(start + to * 1000.0);
        // The at-exit profile describes teardown (a script whose timers
        // ended lets its caches go before exit): like the native at-exit
        // snapshot, it is used only when there are too few others.
        let live: Vec<_> = ns
            .heap_profiles
            .iter()
            .filter(|p| !p.exit && p.t <= stop)
            .collect();
        let mut profiles: Vec<_> = live
            .iter()
            .copied()
            .filter(|p| p.t >= start + from * 1000.0 && p.t <= end)
            .collect();
        if profiles.len() < MIN_PROFILES {
            // Short run: every profile taken before the target was asked to
            // stop (reads are sparse, and the last may fall just after the
            // window's last sample).
            profiles = live;
        }
        if profiles.len() < MIN_PROFILES {
            profiles = ns.heap_profiles.iter().filter(|p| p.t <= stop).collect();
        }
        if profiles.len() < MIN_PROFILES {
            continue;
        }
        // site -> (bytes, samples) at each profile, 0 when absent; each
        // site named by its first stack.
        let n = profiles.len();
        let mut keys: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut sites: HashMap<Vec<u32>, Site> = HashMap::new();
        for (i, p) in profiles.iter().enumerate() {
            for &(stack, bytes, samples) in &p.sites {
                let key = keys
                    .entry(stack)
                    .or_insert_with(|| site_key(ns, stack))
                    .clone();
                let (_, v) = sites.entry(key).or_insert_with(|| (stack, vec![(0, 0); n]));
                v[i].0 += bytes;
                v[i].1 += samples;
            }
        }
        let times: Vec<f64> = profiles.iter().map(|p| (p.t - start) / 1000.0).collect();
        let span = (times[n - 1] - times[0]).max(1e-9);
        // A site's trend: (slope, peak) if it rises steadily, by more than
        // sampling noise.
        let rising = |v: &[(u64, u64)]| -> Option<(f64, u64)> {
            let samples_growth = v[n - 1].1 as i64 - v[0].1 as i64;
            if samples_growth < MIN_SAMPLES {
                return None;
            }
            let pts: Vec<(f64, f64)> = times
                .iter()
                .zip(v)
                .map(|(&t, &(b, _))| (t, b as f64))
                .collect();
            let tr = trend(&pts);
            if tr.tau < tau_min || tr.slope <= 0.0 || tr.slope * span < growth_min {
                return None;
            }
            Some((tr.slope, v.iter().map(|x| x.0).max().unwrap_or(0)))
        };
        let mut found: Vec<(f64, u64, Vec<Frame>)> = sites
            .values()
            .filter_map(|(stack, v)| {
                let (slope, peak) = rising(v)?;
                Some((slope, peak, site_frames(ns, *stack)))
            })
            .collect();
        if found.is_empty() && heap_grows {
            found.extend(by_caller(ns, &sites, n, rising));
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        let thread = ns.thread_id();
        if !found.is_empty() && thread != 0 {
            let total: f64 = found.iter().map(|f| f.0).sum();
            notes.push(format!(
                "worker thread {thread}: its V8 heap has {} growing allocation site(s), {}/s together",
                found.len(),
                offheap_format::units::bytes_f(total)
            ));
        }
        for (slope, peak, frames) in found.into_iter().take(top) {
            if frames.is_empty() {
                continue;
            }
            let mut s = crate::suspects::suspect(frames, SuspectKind::JsHeap, slope, peak, 0);
            if let Some(js) = &s.js {
                s.module = js.file.clone();
                s.function = js.function.clone();
            }
            s.thread = Some(thread);
            out.push(s);
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use offheap_format::{HeapFrame, HeapProfile, HeapStack, NodeHello};

    fn stream(profiles: &[(f64, u64, bool)]) -> NodeStream {
        NodeStream {
            hello: Some(NodeHello {
                is_main_thread: true,
                ..Default::default()
            }),
            heap_frames: vec![HeapFrame {
                id: 0,
                function: "remember".into(),
                url: "/app/cache.js".into(),
                line: 3,
                column: 1,
            }],
            heap_stacks: vec![HeapStack {
                id: 0,
                frames: vec![0],
            }],
            heap_profiles: profiles
                .iter()
                .map(|&(t, mib, exit)| HeapProfile {
                    t: t * 1000.0,
                    interval: 512 << 10,
                    sites: if mib > 0 {
                        vec![(0, mib << 20, mib * 2)]
                    } else {
                        vec![]
                    },
                    exit,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn found(profiles: &[(f64, u64, bool)], window: (f64, f64)) -> usize {
        let rec = Recording::default();
        let ns = stream(profiles);
        suspects(&rec, &[&ns], window, None, true, 5).0.len()
    }

    #[test]
    fn the_teardown_profile_never_ends_a_growing_trend() {
        // Two reads in the window, one before it, and the exit's empty one
        // (the leak let go at teardown): the trend is read from the three
        // live ones, not from two and the empty exit profile.
        let p = [
            (1.0, 2, false),
            (3.0, 7, false),
            (6.0, 15, false),
            (6.2, 0, true),
        ];
        assert_eq!(found(&p, (1.25, 6.3)), 1);
        // The last live read just after the window's end counts too.
        assert_eq!(found(&p, (0.0, 5.9)), 1);
        // Enough reads in the window: the one before it is left out, and a
        // flat site is no suspect.
        let flat = [
            (1.0, 2, false),
            (3.0, 2, false),
            (5.0, 2, false),
            (7.0, 2, false),
            (7.2, 0, true),
        ];
        assert_eq!(found(&flat, (0.0, 7.1)), 0);
        // Only the exit profile beside two others: too few to judge.
        assert_eq!(found(&[(1.0, 2, false), (3.0, 7, false)], (0.0, 4.0)), 0);
    }

    /// Regression (CI's Node 24 leg): what one line of JS allocated came in
    /// two stacks, through `String.prototype.repeat` (a builtin: no
    /// script) and directly, each too few samples to be a suspect alone.
    /// They are one site, named by the scripted frames.
    #[test]
    fn a_builtin_on_top_does_not_split_a_site() {
        let mut ns = stream(&[]);
        ns.heap_frames.push(HeapFrame {
            id: 1,
            function: "repeat".into(),
            url: String::new(),
            line: 0,
            column: 0,
        });
        ns.heap_stacks.push(HeapStack {
            id: 1,
            frames: vec![1, 0],
        });
        ns.heap_profiles = (0..5)
            .map(|k| HeapProfile {
                t: k as f64 * 2000.0,
                interval: 512 << 10,
                sites: vec![(0, k << 19, k), (1, k << 19, k)],
                exit: false,
            })
            .collect();
        let rec = Recording::default();
        let (found, _) = suspects(&rec, &[&ns], (0.0, 10.0), None, true, 5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].frames[0].function, "remember");
        // 4 MiB over 8 s, both stacks together.
        assert!((found[0].bytes_per_s - 524288.0).abs() < 1.0, "{found:?}");
    }

    /// Regression (CI's Node 22 leg): a slow leak whose function was
    /// inlined into its caller halfway: two stacks, two samples of growth
    /// each, neither a suspect alone. Their common application caller is.
    #[test]
    fn a_site_split_by_inlining_is_found_at_its_caller() {
        let mut ns = stream(&[]);
        ns.heap_frames.push(HeapFrame {
            id: 1,
            function: "tick".into(),
            url: "/app/cache.js".into(),
            line: 5,
            column: 1,
        });
        ns.heap_frames.push(HeapFrame {
            id: 2,
            function: "listOnTimeout".into(),
            url: "node:internal/timers".into(),
            line: 581,
            column: 1,
        });
        ns.heap_stacks = vec![
            HeapStack {
                id: 0,
                frames: vec![0, 1, 2],
            },
            HeapStack {
                id: 1,
                frames: vec![1, 2],
            },
        ];
        let k = |i: u64| i.min(2);
        ns.heap_profiles = (0..5u64)
            .map(|i| HeapProfile {
                t: i as f64 * 2000.0,
                interval: 512 << 10,
                sites: vec![
                    (0, k(i) << 19, k(i)),
                    (1, (i.saturating_sub(2)) << 19, i.saturating_sub(2)),
                ],
                exit: false,
            })
            .collect();
        let rec = Recording::default();
        let (found, _) = suspects(&rec, &[&ns], (0.0, 10.0), None, true, 5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].frames[0].function, "tick");
        // Not without the verdict's js-heap growth.
        let (none, _) = suspects(&rec, &[&ns], (0.0, 10.0), None, false, 5);
        assert!(none.is_empty(), "{none:?}");
    }
}
