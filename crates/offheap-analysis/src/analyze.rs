//! Recording -> Model.

use crate::model::*;
use crate::stats::trend;
use crate::verdict::{Evidence, decide};
use offheap_format::Recording;
use offheap_format::native::{AllocKind, NativeStream, StackCounters, StackSeries};
use offheap_symbols::Frame;
use std::collections::HashMap;
use std::collections::HashSet;

/// (seconds since start, value) points.
pub type Points = Vec<(f64, f64)>;

/// Analysis settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Allocations younger than this do not count towards a suspect's growth
    /// (the agent's aged counters use its own OFFHEAP_MIN_AGE_MS; this is
    /// informational and used when the agent recorded none).
    pub min_age_s: f64,
    /// How many suspects to keep.
    pub top: usize,
    /// Analysis window in seconds since start; default: after warm-up to the end.
    pub window: Option<(f64, f64)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_age_s: 5.0,
            top: 10,
            window: None,
        }
    }
}

/// Warm-up skipped before judging growth: 20% of the run, 1 s to 30 s.
pub fn warmup(duration: f64) -> f64 {
    (duration * 0.2).clamp(1.0, 30.0).min(duration)
}

fn rel(t_ms: f64, start_ms: f64) -> f64 {
    (t_ms - start_ms) / 1000.0
}

/// Builds the timeline from every stream of the target process.
/// Also returns heapUsed after natural major GCs, and after the agent's exit GC.
pub fn timeline(rec: &Recording, skip: &HashSet<u32>) -> (Timeline, Points, Option<(f64, f64)>) {
    let start = rec.meta.start_ms;
    let pid = rec.meta.pid;
    let mut tl = Timeline::default();
    let mut push = |name: &str, points: Vec<(f64, f64)>| {
        if !points.is_empty() {
            tl.series.push(Series {
                name: name.into(),
                points,
            });
        }
    };
    push(
        "rss",
        rec.proc
            .iter()
            .filter(|s| s.pid == pid)
            .filter_map(|s| Some((rel(s.t, start), s.rss()? as f64)))
            .collect(),
    );
    let mut post_gc = Vec::new();
    let mut exit_gc = None;
    if let Some(node) = rec.main_node_stream() {
        // Every isolate of the process (main thread and workers) adds to
        // its V8 heap and external memory: the series are their sums, at
        // the main thread's sample times, each worker's value carried
        // forward (0 before it started).
        let isolates: Vec<&offheap_format::NodeStream> = std::iter::once(node)
            .chain(rec.node.iter().filter(|s| {
                !s.is_main_thread() && s.pid().is_none_or(|p| p == pid) && !s.mem.is_empty()
            }))
            .collect();
        let times: Vec<f64> = node.mem.iter().map(|x| x.t).collect();
        let summed = |f: &dyn Fn(&offheap_format::NodeMem) -> u64| -> Points {
            let per: Vec<Points> = isolates
                .iter()
                .map(|s| s.mem.iter().map(|x| (x.t, f(x) as f64)).collect())
                .collect();
            sum_carried(&per, &times, true)
                .into_iter()
                .map(|(t, v)| (rel(t, start), v))
                .collect()
        };
        push("heap_used", summed(&|x| x.heap_used));
        push("heap_total", summed(&|x| x.heap_total));
        push("external", summed(&|x| x.external));
        push("array_buffers", summed(&|x| x.array_buffers));
        tl.gc = node
            .gc
            .iter()
            .map(|g| GcMark {
                t: rel(g.t, start),
                kind: g.kind_name().into(),
                duration_ms: g.duration_ms,
            })
            .collect();
        // heapUsed after natural major GCs, summed over the isolates that
        // had one (each isolate's last value carried forward).
        let per: Vec<Points> = isolates
            .iter()
            .map(|s| {
                s.gc.iter()
                    .filter(|g| !g.forced())
                    .filter_map(|g| Some((g.t, g.heap_used_after? as f64)))
                    .collect::<Points>()
            })
            .filter(|p| !p.is_empty())
            .collect();
        let mut events: Vec<f64> = per.iter().flatten().map(|p| p.0).collect();
        events.sort_by(f64::total_cmp);
        post_gc = sum_carried(&per, &events, false)
            .into_iter()
            .map(|(t, v)| (rel(t, start), v))
            .collect();
        exit_gc = node
            .gc
            .iter()
            .rfind(|g| g.forced())
            .and_then(|g| Some((rel(g.t, start), g.heap_used_after? as f64)))
            .map(|(t, v)| {
                // The workers' heaps at that time (their own exit GCs, or
                // their last sample) belong to the total too.
                let others: f64 = isolates[1..]
                    .iter()
                    .filter_map(|s| {
                        s.gc.iter()
                            .rfind(|g| g.forced())
                            .and_then(|g| g.heap_used_after)
                            .or_else(|| s.mem.last().map(|m| m.heap_used))
                    })
                    .map(|v| v as f64)
                    .sum();
                (t, v + others)
            });
    }
    if let Some(native) = rec.main_native_stream() {
        let (live, retained) = native_totals(native, start, skip);
        push("native_live", live);
        push("allocator_retained", retained);
    }
    let last_sample = tl
        .series
        .iter()
        .filter_map(|s| s.points.last().map(|p| p.0))
        .fold(0.0, f64::max);
    tl.duration = rec
        .end
        .as_ref()
        .map(|e| rel(e.end_ms, start))
        .unwrap_or(last_sample)
        .max(last_sample);
    tl.warmup_end = warmup(tl.duration);
    (tl, post_gc, exit_gc)
}

/// The sum of several step series at `times`: each one's last value at or
/// before the time. `missing_is_zero`: a series with no value yet adds 0;
/// otherwise such a time is left out.
fn sum_carried(series: &[Points], times: &[f64], missing_is_zero: bool) -> Points {
    let mut out = Vec::with_capacity(times.len());
    'time: for &t in times {
        let mut sum = 0.0;
        for s in series {
            match s.partition_point(|p| p.0 <= t) {
                0 if missing_is_zero => {}
                0 => continue 'time,
                k => sum += s[k - 1].1,
            }
        }
        out.push((t, sum));
    }
    out
}

/// The timeline up to `t` seconds: what the verdict judges when the target
/// was asked to stop at `t`.
fn until(tl: &Timeline, t: f64) -> Timeline {
    Timeline {
        series: tl
            .series
            .iter()
            .map(|s| Series {
                name: s.name.clone(),
                points: s.points.iter().copied().filter(|p| p.0 <= t).collect(),
            })
            .collect(),
        gc: tl.gc.iter().filter(|g| g.t <= t).cloned().collect(),
        warmup_end: tl.warmup_end,
        duration: t,
    }
}

/// Sum of live malloc bytes per snapshot (aged when the agent recorded ages),
/// and the allocator's retained free bytes.
fn native_totals(native: &NativeStream, start: f64, skip: &HashSet<u32>) -> (Points, Points) {
    let n = native.snapshot_times_ms.len();
    let mut live = vec![0f64; n];
    for s in &native.series {
        if skip.contains(&s.stack)
            || native
                .stacks
                .get(s.stack as usize)
                .is_some_and(|st| st.kind != AllocKind::Malloc)
        {
            continue;
        }
        // Walk the sparse points, carrying values forward.
        for (k, &(idx, c)) in s.points.iter().enumerate() {
            let next = s.points.get(k + 1).map(|p| p.0 as usize).unwrap_or(n);
            for v in live.iter_mut().take(next.min(n)).skip(idx as usize) {
                *v += c.live_bytes as f64;
            }
        }
    }
    // The at-exit snapshot describes teardown, not the run: leave it out.
    let usable = if n > 3 { n - 1 } else { n };
    live.truncate(usable);
    let times: Vec<f64> = native
        .snapshot_times_ms
        .iter()
        .take(usable)
        .map(|&t| rel(t, start))
        .collect();
    let live_pts = times.iter().copied().zip(live).collect();
    let retained = times
        .iter()
        .zip(&native.allocator)
        .filter_map(|(&t, a)| a.map(|a| (t, a.free_bytes as f64)))
        .collect();
    (live_pts, retained)
}

/// The snapshots of the window [from, to], excluding the final at-exit
/// snapshot (teardown frees or leaves everything; it says nothing of a leak).
fn window_snapshots(native: &NativeStream, start: f64, from: f64, to: f64) -> Vec<u32> {
    let n = native.snapshot_times_ms.len();
    let usable = if n > 3 { n - 1 } else { n };
    (0..usable)
        .filter(|&i| {
            let t = rel(native.snapshot_times_ms[i], start);
            t >= from && t <= to
        })
        .map(|i| i as u32)
        .collect()
}

/// Per-stack figures over a window.
struct StackFigures {
    stack: u32,
    live_end: u64,
    count_end: u64,
    /// The most live bytes at any snapshot of the window, and the live
    /// allocations then (a Node target's exit frees most of what leaked
    /// before the window's last snapshot).
    live_peak: u64,
    count_at_peak: u64,
    alloc_bytes: u64,
    alloc_count: u64,
    growth: i64,
    slope: f64,
}

/// How steady (Kendall's tau) a stack's live bytes must rise in a window
/// too short for the aged counter.
const SHORT_WINDOW_TAU: f64 = 0.7;

/// Per-stack growth, counting only allocations that survived `min_age`:
/// the agent's aged counter at time t + min_age is "bytes allocated before t
/// and still live at t + min_age", so the series (t, aged(t + min_age)) rises
/// only with memory that is kept, never with young garbage, and startup
/// allocations stay constant in it.
fn stack_figures(
    native: &NativeStream,
    series: &[StackSeries],
    snaps: &[u32],
    start: f64,
    min_age: f64,
) -> Vec<StackFigures> {
    let (Some(&first), Some(&last)) = (snaps.first(), snaps.last()) else {
        return Vec::new();
    };
    let t = |i: u32| rel(native.snapshot_times_ms[i as usize], start);
    let t_first = t(first);
    let shifted: Vec<u32> = snaps
        .iter()
        .copied()
        .filter(|&i| t(i) - min_age >= t_first)
        .collect();
    let step = (shifted.len() / 64).max(1);
    series
        .iter()
        .map(|s| {
            let end = s.at(last);
            let begin = s.at(first);
            let peak = snaps
                .iter()
                .map(|&i| s.at(i))
                .max_by_key(|c| c.live_bytes)
                .unwrap_or(end);
            let slope = if shifted.len() >= 3 {
                let mut pts: Vec<(f64, f64)> = shifted
                    .iter()
                    .step_by(step)
                    .map(|&i| (t(i) - min_age, s.at(i).aged_live_bytes as f64))
                    .collect();
                if let Some(&l) = shifted.last() {
                    pts.push((t(l) - min_age, s.at(l).aged_live_bytes as f64));
                }
                let tr = trend(&pts);
                if tr.tau > 0.0 { tr.slope } else { 0.0 }
            } else {
                // Too short for the shift (a window under min_age plus three
                // snapshots): the aged counter cannot tell kept memory from
                // young garbage yet, so the live bytes must rise steadily
                // instead, snapshot after snapshot, which churn does not.
                let pts: Vec<(f64, f64)> = snaps
                    .iter()
                    .step_by((snaps.len() / 64).max(1))
                    .map(|&i| (t(i), s.at(i).live_bytes as f64))
                    .collect();
                let tr = trend(&pts);
                if pts.len() >= 4 && tr.tau >= SHORT_WINDOW_TAU {
                    tr.slope
                } else {
                    let span = (t(last) - t_first).max(1e-9);
                    (end.aged_live_bytes as f64 - begin.live_bytes as f64).max(0.0) / span
                }
            };
            StackFigures {
                stack: s.stack,
                live_end: end.live_bytes,
                count_end: end.live_count,
                live_peak: peak.live_bytes,
                count_at_peak: peak.live_count,
                alloc_bytes: end.alloc_bytes,
                alloc_count: end.alloc_count,
                growth: end.live_bytes as i64 - begin.live_bytes as i64,
                slope,
            }
        })
        .collect()
}

/// One frame as a reader tells it apart: function, module, file, line, kind.
type FrameKey<'a> = (&'a str, &'a str, Option<&'a str>, Option<u32>, u8);

/// Symbolized frames as a grouping key.
fn frames_key(frames: &[Frame]) -> Vec<FrameKey<'_>> {
    frames
        .iter()
        .map(|f| {
            (
                f.function.as_str(),
                f.module.as_str(),
                f.file.as_deref(),
                f.line,
                f.kind as u8,
            )
        })
        .collect()
}

/// The native series added up by symbolized stack and allocation kind;
/// each merged series carries the id of its first member, whose frames
/// stand for all. Unsymbolized stacks stay alone.
fn merge_by_frames(
    native: &NativeStream,
    frames_of: &HashMap<u32, Vec<Frame>>,
) -> Vec<StackSeries> {
    let mut groups: HashMap<(AllocKind, Vec<FrameKey>), usize> = HashMap::new();
    let mut members: Vec<Vec<&StackSeries>> = Vec::new();
    for s in &native.series {
        let Some(st) = native.stacks.get(s.stack as usize) else {
            members.push(vec![s]);
            continue;
        };
        match frames_of.get(&s.stack).filter(|f| !f.is_empty()) {
            Some(frames) => {
                let k = (st.kind, frames_key(frames));
                let i = *groups.entry(k).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                members[i].push(s);
            }
            None => members.push(vec![s]),
        }
    }
    members
        .into_iter()
        .map(|m| {
            if m.len() == 1 {
                return m[0].clone();
            }
            let mut idx: Vec<u32> = m
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .collect();
            idx.sort_unstable();
            idx.dedup();
            let points = idx
                .into_iter()
                .map(|i| {
                    let mut c = StackCounters::default();
                    for s in &m {
                        let x = s.at(i);
                        c.alloc_bytes += x.alloc_bytes;
                        c.alloc_count += x.alloc_count;
                        c.live_bytes += x.live_bytes;
                        c.live_count += x.live_count;
                        c.aged_live_bytes += x.aged_live_bytes;
                    }
                    (i, c)
                })
                .collect();
            StackSeries {
                stack: m[0].stack,
                points,
            }
        })
        .collect()
}

/// Notes on the streams whose last point is well before the recording's
/// end: /proc sampling stops when offheap itself is killed, while the
/// target and its agents may go on; the verdict then rests on the others.
fn streams_that_stopped_early(tl: &Timeline) -> Vec<String> {
    let streams = [
        ("rss", "/proc sampling (RSS)"),
        ("heap_used", "the JS agent's telemetry"),
        ("native_live", "the native agent's stream"),
    ];
    let ends: Vec<(&str, f64)> = streams
        .iter()
        .filter_map(|&(series, what)| {
            let last = tl.series(series)?.points.last()?.0;
            Some((what, last))
        })
        .collect();
    let latest = ends.iter().map(|e| e.1).fold(0.0, f64::max);
    let slack = (0.1 * latest).max(2.0);
    ends.iter()
        .filter(|e| e.1 + slack < latest)
        .map(|(what, last)| {
            format!(
                "{what} stopped at {last:.1} s while other streams went on to {latest:.1} s (offheap killed?): the verdict rests on the streams that cover the window"
            )
        })
        .collect()
}

/// The whole analysis.
pub fn analyze(rec: &Recording, opts: &Options) -> Model {
    // Symbolize every stack once, up front: the verdict must not count the
    // memory of offheap's own instrumentation (V8's allocation tracker and
    // heap profiler, switched on by --track-allocations / --snapshots).
    let native = rec.main_native_stream();
    let (mut frames_of, sym_notes) = match native {
        Some(n) => {
            let ids: Vec<u32> = n
                .series
                .iter()
                .map(|s| s.stack)
                .filter(|&id| (id as usize) < n.stacks.len())
                .collect();
            crate::symbolize::symbolize(rec, n, &ids)
        }
        None => Default::default(),
    };
    let instrumentation: HashSet<u32> = frames_of
        .iter()
        .filter(|(_, frames)| frames.iter().any(crate::suspects::is_instrumentation))
        .map(|(&id, _)| id)
        .collect();
    let (tl, post_gc, exit_gc) = timeline(rec, &instrumentation);
    // The verdict and the suspects end where the target was asked to stop:
    // a server stopped by --duration or Ctrl-C that closes its streams and
    // frees its caches on the way out would otherwise end flat, and its leak
    // would read as "no leak". The timeline drawn keeps everything.
    let stop = rec
        .end
        .as_ref()
        .and_then(|e| e.stop_ms)
        .map(|t| rel(t, rec.meta.start_ms))
        .filter(|&s| s > tl.warmup_end && s < tl.duration);
    let judged = stop.map(|s| until(&tl, s));
    let judged_tl = judged.as_ref().unwrap_or(&tl);
    let post_gc: Points = post_gc
        .into_iter()
        .filter(|p| stop.is_none_or(|s| p.0 <= s))
        .collect();
    let mut ev = Evidence::from_timeline(judged_tl, &post_gc, exit_gc, rec.meta.node);
    if let Some(n) = native {
        ev.native_sampling = n.sample_interval as f64;
    }
    let max_of = |name: &str| {
        tl.series(name)
            .map(|s| s.points.iter().map(|p| p.1).fold(0.0, f64::max) as u64)
    };
    let peak = Peak {
        rss: max_of("rss").unwrap_or(0),
        heap_used: max_of("heap_used").unwrap_or(0),
        external: max_of("external").unwrap_or(0),
        array_buffers: max_of("array_buffers").unwrap_or(0),
        native_live: max_of("native_live"),
    };
    let mut notes = rec.notes.clone();
    notes.extend(streams_that_stopped_early(&tl));
    if let Some(s) = stop
        && tl.duration - s >= 0.5
    {
        notes.push(format!(
            "the analysis ends at {s:.1} s, when the target was asked to stop; the {:.1} s of shutdown after it are left out",
            tl.duration - s
        ));
    }
    let (from, to) = opts.window.unwrap_or((tl.warmup_end, judged_tl.duration));
    let mut suspects = Vec::new();
    let mut profile = Profile {
        window: (from, to),
        sample_interval: rec.meta.sample_interval,
        ..Default::default()
    };
    if let Some(native) = rec.main_native_stream() {
        profile.sample_interval = native.sample_interval;
        profile.modules = native.modules.clone();
        for n in &native.agent_notes {
            notes.push(format!("native agent: {n}"));
        }
        let mut snaps = window_snapshots(native, rec.meta.start_ms, from, to);
        if snaps.len() < 2 {
            // Short run: use everything but the at-exit snapshot.
            snaps = window_snapshots(native, rec.meta.start_ms, 0.0, f64::MAX);
        }
        let min_age = rec
            .meta
            .settings
            .get("min_age_ms")
            .and_then(|v| v.as_f64())
            .map(|ms| ms / 1000.0)
            .unwrap_or(opts.min_age_s);
        // One suspect per symbolized stack: series whose frames read the
        // same (threadpool threads, a worker forked twice, one call site
        // reached through two return addresses) are added up first.
        let merged = merge_by_frames(native, &frames_of);
        let figures = stack_figures(native, &merged, &snaps, rec.meta.start_ms, min_age);
        let span = snaps
            .first()
            .zip(snaps.last())
            .map(|(&a, &b)| {
                (native.snapshot_times_ms[b as usize] - native.snapshot_times_ms[a as usize])
                    / 1000.0
            })
            .unwrap_or(0.0)
            .max(1e-9);
        let active: Vec<&StackFigures> = figures
            .iter()
            .filter(|f| {
                (f.stack as usize) < native.stacks.len() && (f.alloc_bytes > 0 || f.live_end > 0)
            })
            .collect();
        // Suspects: sustained growth of aged live bytes, at least 64 KiB over the window.
        let mut ranked: Vec<&StackFigures> = active
            .iter()
            .copied()
            .filter(|f| f.slope > 0.0 && f.slope * span >= 64.0 * 1024.0)
            .filter(|f| !instrumentation.contains(&f.stack))
            .collect();
        if active
            .iter()
            .any(|f| instrumentation.contains(&f.stack) && f.live_end > 0)
        {
            notes.push(
                "memory used by V8's heap profiler for offheap's snapshots/allocation tracking is left out of the native figures"
                    .into(),
            );
        }
        ranked.sort_by(|a, b| b.slope.total_cmp(&a.slope));
        ev.native_concentrated = !ranked.is_empty();
        for f in ranked.into_iter().take(opts.top) {
            let stack = &native.stacks[f.stack as usize];
            let frames = crate::suspects::collapse_allocator(
                frames_of.get(&f.stack).cloned().unwrap_or_default(),
            );
            suspects.push(crate::suspects::suspect(
                frames,
                stack.kind.into(),
                f.slope,
                f.live_peak,
                f.count_at_peak,
            ));
        }
        for f in active {
            profile.stacks.push(ProfileStack {
                frames: frames_of.remove(&f.stack).unwrap_or_default(),
                kind: native.stacks[f.stack as usize].kind,
                alloc_bytes: f.alloc_bytes,
                alloc_count: f.alloc_count,
                live_bytes: f.live_end,
                live_count: f.count_end,
                growth_bytes: f.growth,
                growth_bytes_per_s: f.growth as f64 / span,
            });
        }
        notes.extend(sym_notes);
    } else if rec.meta.native {
        notes.push(
            "the native agent was preloaded but wrote nothing (static or non-glibc target?)".into(),
        );
    }
    let verdict = decide(&ev);
    let growth = ev.growth();
    // V8-heap suspects from the sampling heap profiler of every isolate.
    let stop_abs = stop.map(|s| rec.meta.start_ms + s * 1000.0);
    let (js, js_notes) = crate::jsheap::suspects(
        rec,
        (from, to),
        stop_abs,
        verdict.kinds.contains(&Kind::JsHeap),
        opts.top,
    );
    suspects.extend(js);
    notes.extend(js_notes);
    suspects.sort_by(|a, b| b.bytes_per_s.total_cmp(&a.bytes_per_s));
    suspects.truncate(opts.top);
    for (i, s) in suspects.iter_mut().enumerate() {
        s.rank = i as u32 + 1;
    }
    let owners = crate::owners::owners(&suspects, rec.heap.as_ref());
    Model {
        meta: rec.meta.clone(),
        end: rec.end.clone(),
        timeline: tl,
        verdict: Some(verdict),
        growth,
        peak,
        suspects,
        profile,
        heap: rec.heap.clone(),
        owners,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offheap_format::native::{NativeStream, StackCounters, StackSeries};

    /// Regression: a suspect's live bytes were those of the window's last
    /// snapshot, which for a Node server stopped gracefully (the demo) came
    /// after its exit had freed what leaked: "+26 MiB/s, live 0 B in 0
    /// allocations". Suspects now carry the peak of the window.
    #[test]
    fn figures_keep_the_peak_live_bytes_of_the_window() {
        let mut n = NativeStream {
            snapshot_times_ms: (0..10).map(|i| 1000.0 * i as f64).collect(),
            ..Default::default()
        };
        let at = |live: u64| StackCounters {
            alloc_bytes: 100 << 20,
            alloc_count: 100,
            live_bytes: live,
            live_count: live >> 20,
            aged_live_bytes: live,
        };
        n.series.push(StackSeries {
            stack: 0,
            points: (0..9)
                .map(|i| (i, at((i as u64) << 20)))
                .chain([(9, at(0))])
                .collect(),
        });
        let snaps: Vec<u32> = (0..10).collect();
        let f = &stack_figures(&n, &n.series, &snaps, 0.0, 0.0)[0];
        assert_eq!((f.live_end, f.count_end), (0, 0));
        assert_eq!((f.live_peak, f.count_at_peak), (8 << 20, 8));
        assert!(f.slope > 0.0);
    }
}
