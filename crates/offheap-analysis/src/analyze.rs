//! Recording -> Model.

use crate::model::*;
use crate::stats::trend;
use crate::verdict::{Evidence, decide};
use offheap_format::native::{AllocKind, AllocatorStats, NativeStream, StackCounters, StackSeries};
use offheap_format::{NodeStream, ProcSample, Recording};
use offheap_symbols::Frame;
use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt::Write;

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

/// The streams of one recorded process.
#[derive(Clone, Debug)]
pub struct ProcStreams<'a> {
    pub pid: u32,
    /// The process offheap started or attached to.
    pub root: bool,
    pub native: Option<&'a NativeStream>,
    /// Its main thread's JS stream.
    pub main_node: Option<&'a NodeStream>,
    /// Every isolate's JS stream (main thread first, then workers).
    pub isolates: Vec<&'a NodeStream>,
    pub proc: Vec<&'a ProcSample>,
}

impl ProcStreams<'_> {
    /// Unix ms of its first data.
    fn first_ms(&self) -> Option<f64> {
        let n = self.native.map(|n| {
            n.snapshot_times_ms
                .first()
                .copied()
                .unwrap_or(n.start_ms)
                .min(n.start_ms)
        });
        let js = self.isolates.iter().filter_map(|s| {
            s.hello
                .as_ref()
                .map(|h| h.t)
                .or_else(|| s.mem.first().map(|m| m.t))
        });
        let pr = self.proc.first().map(|p| p.t);
        n.into_iter()
            .chain(js)
            .chain(pr)
            .filter(|t| t.is_finite() && *t > 0.0)
            .reduce(f64::min)
    }

    /// Unix ms of its last data.
    fn last_ms(&self) -> Option<f64> {
        let n = self
            .native
            .and_then(|n| n.snapshot_times_ms.last().copied());
        let js = self.isolates.iter().filter_map(|s| {
            let mem = s.mem.last().map(|m| m.t);
            let bye = s.bye.as_ref().map(|b| b.t);
            mem.into_iter().chain(bye).reduce(f64::max)
        });
        let pr = self.proc.last().map(|p| p.t);
        n.into_iter()
            .chain(js)
            .chain(pr)
            .filter(|t| t.is_finite())
            .reduce(f64::max)
    }
}

/// The recording split by process: the target first, then every other
/// process that left a stream or `/proc` samples, by start time. In an
/// attached recording every agent stream is the target's (its agent may see
/// another pid namespace), and JS streams without a pid always are; `/proc`
/// samples carry offheap's own pids and are always their process's.
pub fn processes(rec: &Recording) -> Vec<ProcStreams<'_>> {
    let root = rec.meta.pid;
    let single = rec.meta.mode == "attach";
    let owner = |pid: Option<u32>| match pid {
        Some(p) if !single => p,
        _ => root,
    };
    let mut by_pid: std::collections::BTreeMap<u32, ProcStreams> = Default::default();
    fn entry<'m, 'a>(
        by_pid: &'m mut std::collections::BTreeMap<u32, ProcStreams<'a>>,
        pid: u32,
        root: u32,
    ) -> &'m mut ProcStreams<'a> {
        by_pid.entry(pid).or_insert_with(|| ProcStreams {
            pid,
            root: pid == root,
            native: None,
            main_node: None,
            isolates: Vec::new(),
            proc: Vec::new(),
        })
    }
    entry(&mut by_pid, root, root);
    for n in &rec.native {
        let e = entry(&mut by_pid, owner(Some(n.pid)), root);
        if e.native.is_none() {
            e.native = Some(n);
        }
    }
    for s in &rec.node {
        let e = entry(&mut by_pid, owner(s.pid()), root);
        if s.is_main_thread() && e.main_node.is_none() {
            e.main_node = Some(s);
            e.isolates.insert(0, s);
        } else {
            e.isolates.push(s);
        }
    }
    // /proc samples carry the pids offheap itself sees: always their own.
    for s in &rec.proc {
        entry(&mut by_pid, s.pid, root).proc.push(s);
    }
    let mut out: Vec<ProcStreams> = by_pid.into_values().collect();
    out.sort_by(|a, b| {
        b.root.cmp(&a.root).then(
            a.first_ms()
                .unwrap_or(f64::MAX)
                .total_cmp(&b.first_ms().unwrap_or(f64::MAX))
                .then(a.pid.cmp(&b.pid)),
        )
    });
    out
}

/// Builds the timeline of the target process from every stream of it.
/// Also returns heapUsed after natural major GCs, and after the agent's exit GC.
pub fn timeline(rec: &Recording, skip: &HashSet<u32>) -> (Timeline, Points, Option<(f64, f64)>) {
    let procs = processes(rec);
    match procs.first() {
        Some(p) => process_timeline(rec, p, skip),
        None => Default::default(),
    }
}

/// Builds the timeline of one process from every stream of it.
/// Also returns heapUsed after natural major GCs, and after the agent's exit GC.
fn process_timeline(
    rec: &Recording,
    p: &ProcStreams,
    skip: &HashSet<u32>,
) -> (Timeline, Points, Option<(f64, f64)>) {
    let start = rec.meta.start_ms;
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
        p.proc
            .iter()
            .filter_map(|s| Some((rel(s.t, start), s.rss()? as f64)))
            .collect(),
    );
    let mut post_gc = Vec::new();
    let mut exit_gc = None;
    if let Some(node) = p.main_node {
        // Every isolate of the process (main thread and workers) adds to
        // its V8 heap and external memory: the series are their sums, at
        // the main thread's sample times, each worker's value carried
        // forward (0 before it started).
        let isolates: Vec<&offheap_format::NodeStream> =
            std::iter::once(node)
                .chain(p.isolates.iter().copied().filter(|s| {
                    !std::ptr::eq(*s, node) && !s.is_main_thread() && !s.mem.is_empty()
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
        if node.mem.iter().any(|m| !m.spaces.is_empty()) {
            push("heap_young", summed(&|x| x.young_committed()));
        }
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
        // What major GCs retained (natural ones and those of profile reads;
        // not the forced ones), summed over the isolates that had one (each
        // isolate's last value carried forward). The old generation where
        // every point has it, else heapUsed: one measure per isolate.
        let per: Vec<Points> = isolates
            .iter()
            .map(|s| {
                let majors = || {
                    s.gc.iter()
                        .filter(|g| !g.forced() && g.heap_used_after.is_some())
                };
                let old = majors().all(|g| g.old_used_after.is_some());
                majors()
                    .filter_map(|g| {
                        let v = if old {
                            g.old_used_after
                        } else {
                            g.heap_used_after
                        };
                        Some((g.t, v? as f64))
                    })
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
    if let Some(native) = p.native {
        let (live, retained) = native_totals(native, start, |id| !skip.contains(&id));
        push("native_live", live);
        push("allocator_retained", retained);
    }
    let last_sample = tl
        .series
        .iter()
        .filter_map(|s| s.points.last().map(|p| p.0))
        .fold(0.0, f64::max);
    if p.root {
        tl.duration = rec
            .end
            .as_ref()
            .map(|e| rel(e.end_ms, start))
            .unwrap_or(last_sample)
            .max(last_sample);
        tl.warmup_end = warmup(tl.duration);
    } else {
        // A child's warm-up starts when it does.
        let last = p.last_ms().map_or(0.0, |t| rel(t, start));
        tl.duration = last.max(last_sample);
        let first = p
            .first_ms()
            .map_or(0.0, |t| rel(t, start))
            .clamp(0.0, tl.duration);
        tl.warmup_end = first + warmup(tl.duration - first);
    }
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
fn native_totals(
    native: &NativeStream,
    start: f64,
    include: impl Fn(u32) -> bool,
) -> (Points, Points) {
    let n = native.snapshot_times_ms.len();
    let mut live = vec![0f64; n];
    for s in &native.series {
        if !include(s.stack)
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
///
/// A window shorter than `min_age` has no aged series to speak of. Where
/// there is no young garbage (`young_garbage` false: no garbage-collected
/// heap whose Buffers wait for a GC, i.e. not Node), a stack whose live
/// bytes rise in nearly every snapshot of it (Kendall's tau at least 0.8, 5
/// snapshots or more) grows at that slope: a short-lived child that leaks
/// is still named.
fn stack_figures(
    native: &NativeStream,
    series: &[StackSeries],
    snaps: &[u32],
    start: f64,
    min_age: f64,
    young_garbage: bool,
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
                // Too short for the shift (a window under min_age plus a few
                // snapshots): the aged counter cannot tell kept memory from
                // young garbage yet, so the live bytes must rise steadily
                // instead, snapshot after snapshot, which churn does not (in
                // Node, where a rise can be garbage waiting for a GC, more
                // steadily still).
                let span = (t(last) - t_first).max(1e-9);
                let aged = (end.aged_live_bytes as f64 - begin.live_bytes as f64).max(0.0) / span;
                let tau_min = if young_garbage { 0.8 } else { SHORT_WINDOW_TAU };
                let steady = if snaps.len() >= 4 {
                    let step = (snaps.len() / 64).max(1);
                    let mut pts: Vec<(f64, f64)> = snaps
                        .iter()
                        .step_by(step)
                        .map(|&i| (t(i), s.at(i).live_bytes as f64))
                        .collect();
                    if step > 1 {
                        pts.push((t(last), end.live_bytes as f64));
                    }
                    let tr = trend(&pts);
                    if tr.tau >= tau_min {
                        tr.slope.max(0.0)
                    } else {
                        0.0
                    }
                } else {
                    0.0
                };
                aged.max(steady)
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
    let mut groups: HashMap<(AllocKind, Vec<FrameKey>), usize> =
        HashMap::with_capacity(native.series.len());
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

/// What the analysis of one process gives: its model, its profile (for
/// the flame graphs and pprof, if it becomes the focus).
struct Analysed {
    process: ProcessModel,
    profile: Profile,
}

/// The analysis of one process: timeline, verdict, suspects, profile.
fn analyze_process(rec: &Recording, p: &ProcStreams, opts: &Options) -> Analysed {
    // Symbolize every stack once, up front: the verdict must not count the
    // memory of offheap's own instrumentation (V8's allocation tracker and
    // heap profiler, switched on by --track-allocations / --snapshots).
    let native = p.native;
    // A process (not the target, not Node) whose stacks never held 64 KiB
    // live can have no suspect: it is not symbolized (a program that forks
    // a hundred short children would spend most of the report on them).
    let quiet = !p.root
        && p.isolates.is_empty()
        && native.is_some_and(|n| {
            n.series
                .iter()
                .all(|s| s.points.iter().all(|(_, c)| c.live_bytes < 64 * 1024))
        });
    let (mut frames_of, sym_notes) = match native {
        Some(_) if quiet => Default::default(),
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
    // The caller of each anonymous-mmap stack, for the ledger's split of
    // its `anon_mmap` part (taken before the profile consumes the frames).
    let mmap_callers = native
        .map(|n| mmap_callers(n, &frames_of))
        .unwrap_or_default();
    let instrumentation: HashSet<u32> = frames_of
        .iter()
        .filter(|(_, frames)| frames.iter().any(crate::suspects::is_instrumentation))
        .map(|(&id, _)| id)
        .collect();
    let (tl, post_gc, exit_gc) = process_timeline(rec, p, &instrumentation);
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
    let is_node = p.main_node.is_some() || (p.root && rec.meta.node);
    let mut ev = Evidence::from_timeline(judged_tl, &post_gc, exit_gc, is_node);
    // Buffer backing stores, which external counts exactly: a Node
    // process's native growth is judged on the rest.
    let backing: HashSet<u32> = if is_node {
        frames_of
            .iter()
            .filter(|(_, frames)| crate::suspects::is_backing_store(frames))
            .map(|(&id, _)| id)
            .collect()
    } else {
        HashSet::new()
    };
    // V8's own heap pages, mapped by V8: the JS heap, not a native suspect.
    let v8_pages: HashSet<u32> = match native {
        Some(n) if is_node => frames_of
            .iter()
            .filter(|(id, _)| {
                n.stacks
                    .get(**id as usize)
                    .is_some_and(|s| s.kind == AllocKind::Mmap)
            })
            .filter(|(_, frames)| crate::suspects::is_v8_heap_pages(frames))
            .map(|(&id, _)| id)
            .collect(),
        _ => HashSet::new(),
    };
    if let Some(n) = native {
        ev.native_sampling = n.sample_interval as f64;
        if is_node {
            let start = rec.meta.start_ms;
            let (other, _) = native_totals(n, start, |id| {
                !instrumentation.contains(&id) && !backing.contains(&id)
            });
            let (stores, _) = native_totals(n, start, |id| backing.contains(&id));
            ev.split_native(judged_tl, judged_tl.duration, &other, &stores);
        }
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
    let mut notes = Vec::new();
    if p.root {
        notes.extend(streams_that_stopped_early(&tl));
    }
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
    if let Some(native) = p.native {
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
        let figures = stack_figures(
            native,
            &merged,
            &snaps,
            rec.meta.start_ms,
            min_age,
            !p.isolates.is_empty() || (p.root && rec.meta.node),
        );
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
        let pages_rate: f64 = ranked
            .iter()
            .filter(|f| v8_pages.contains(&f.stack))
            .map(|f| f.slope)
            .sum();
        if pages_rate > 0.0 {
            ranked.retain(|f| !v8_pages.contains(&f.stack));
            notes.push(format!(
                "the V8 heap's own pages (mapped by V8's MemoryAllocator, {}) are left out of the native suspects: they are the JS heap, whose growth the verdict reads from V8's figures and whose allocation sites are the js-heap suspects",
                offheap_format::units::bytes_f(pages_rate) + "/s"
            ));
        }
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
        ev.native_concentrated = ranked.iter().any(|f| !backing.contains(&f.stack));
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
    } else if p.root && rec.meta.native {
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
        &p.isolates,
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
    let start = rec.meta.start_ms;
    let first = p.first_ms().map_or(0.0, |t| rel(t, start).max(0.0));
    let last = if p.root {
        tl.duration
    } else {
        p.last_ms().map_or(tl.duration, |t| rel(t, start))
    };
    let rec_end = rec.end.as_ref().map(|e| rel(e.end_ms, start));
    // Early: its data stopped more than two intervals (at least a second)
    // before the recording ended.
    let slack = (2.0 * rec.meta.interval_ms as f64 / 1000.0).max(1.0);
    let exited_early = !p.root && rec_end.is_some_and(|e| last < e - slack);
    let command = if p.root {
        rec.meta.command.join(" ")
    } else {
        p.proc
            .iter()
            .rev()
            .find(|s| !s.cmdline.is_empty())
            .map(|s| s.cmdline.join(" "))
            .or_else(|| p.native.map(|n| n.exe.clone()).filter(|e| !e.is_empty()))
            .unwrap_or_default()
    };
    // Nothing after the judged end is mixed into a moment before it.
    let cut_ms = judged.as_ref().map(|j| start + j.duration * 1000.0);
    let ledger = ledgers(p, start, cut_ms, &mmap_callers);
    // The end of the window, and before the native agent's final snapshot
    // (which describes teardown: an interpreter that frees everything on
    // its way out).
    let native_final = native
        .filter(|n| n.snapshot_times_ms.len() > 3)
        .and_then(|n| n.snapshot_times_ms.iter().rev().nth(1))
        .map(|&t| rel(t, start));
    // And not after a Node process's `exit` event (see `node_exit_ms`).
    let judged_end = [native_final, node_exit_ms(p).map(|t| rel(t, start))]
        .into_iter()
        .flatten()
        .fold(judged_tl.duration, f64::min);
    let rss_ledger = ledger
        .iter()
        .rev()
        .find(|l| l.at_s <= judged_end + 1e-6)
        .or(ledger.first())
        .cloned();
    let ppid = p.native.map(|n| n.ppid).filter(|&pp| pp != 0).or_else(|| {
        p.proc
            .iter()
            .rev()
            .find_map(|s| s.status.get("PPid").map(|&v| v as u32))
    });
    Analysed {
        process: ProcessModel {
            pid: p.pid,
            ppid,
            command,
            root: p.root,
            node: is_node || !p.isolates.is_empty(),
            native: p.native.is_some(),
            start: first,
            end: last,
            exited_early,
            timeline: tl,
            verdict,
            growth,
            peak,
            suspects,
            notes,
            ledger,
            rss_ledger,
        },
        profile,
    }
}

/// The memory figures the ledger reads at `t`, between two records:
/// arrayBuffers interpolated; each V8 space the larger of the two (what V8
/// committed at `t` lies between them, and it moves in steps of whole
/// semi-spaces; the ledger caps it by what the mappings hold).
fn interpolate(
    a: &offheap_format::NodeMem,
    b: &offheap_format::NodeMem,
    t: f64,
) -> offheap_format::NodeMem {
    let f = ((t - a.t) / (b.t - a.t).max(1e-9)).clamp(0.0, 1.0);
    let mix = |x: f64, y: f64| x + (y - x) * f;
    let mut m = a.clone();
    m.t = t;
    m.array_buffers = mix(a.array_buffers as f64, b.array_buffers as f64) as u64;
    for (name, sp) in m.spaces.iter_mut() {
        if let (Some(x), Some(y)) = (
            sp.get("physical_space_size").copied(),
            b.spaces
                .get(name)
                .and_then(|o| o.get("physical_space_size"))
                .copied(),
        ) {
            sp.insert("physical_space_size".into(), x.max(y));
        }
    }
    m
}

/// A native agent's figure at a smaps read, from the snapshots before (`x`)
/// and after (`y`) it, `f` of the way between them. A rise is spread
/// between the snapshots; a fall is taken at the later one. When the memory
/// went is unknown, and the mappings read before it may still hold it: a
/// fall spread back over the interval (an interpreter's teardown, taken by
/// the last periodic snapshot before the final one) would leave pages that
/// were still mapped unexplained.
fn between_snapshots(x: u64, y: u64, f: f64) -> u64 {
    if y < x {
        x
    } else {
        x + ((y - x) as f64 * f.clamp(0.0, 1.0)) as u64
    }
}

/// Unix ms at which a Node process's `exit` event began, if it exited:
/// the forced full GC the JS agent runs first in its exit handler (after
/// the last periodic record), else the agent's `bye`. From then on the
/// process is no longer the program's: offheap's exit GC maps fresh V8
/// pages that no record describes, and then Node tears its environment
/// down, giving back to the allocator what its handles held (zlib streams,
/// sockets) while the native agent may still take a periodic snapshot.
fn node_exit_ms(p: &ProcStreams) -> Option<f64> {
    let n = p.main_node?;
    let bye = n.bye.as_ref().map(|b| b.t).filter(|t| t.is_finite())?;
    // The exit handler's GC: the first forced one after the last periodic
    // record (the one before the handler's own).
    let periodic = n
        .mem
        .len()
        .checked_sub(2)
        .map_or(f64::NEG_INFINITY, |k| n.mem[k].t);
    let gc =
        n.gc.iter()
            .find(|g| g.forced() && g.t >= periodic && g.t <= bye)
            .map(|g| g.t);
    Some(gc.unwrap_or(bye))
}

/// The callers of the anonymous mmaps: a name for each of the stacks
/// (`function (module)`, the owner of its frames with the allocator's
/// collapsed, as a suspect would name it), and each mmap stack's index
/// among those names. A stack that was not symbolized is an unknown caller.
#[derive(Default)]
struct MmapCallers {
    names: Vec<String>,
    of_stack: HashMap<u32, usize>,
}

fn mmap_callers(n: &NativeStream, frames_of: &HashMap<u32, Vec<Frame>>) -> MmapCallers {
    let mut c = MmapCallers::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    for s in &n.series {
        if n.stacks
            .get(s.stack as usize)
            .is_none_or(|st| st.kind != AllocKind::Mmap)
            || c.of_stack.contains_key(&s.stack)
        {
            continue;
        }
        let name = match frames_of.get(&s.stack).filter(|f| !f.is_empty()) {
            Some(frames) => {
                let frames = crate::suspects::collapse_allocator(frames.clone());
                let (module, function) = crate::suspects::owner(&frames);
                let module = module.rsplit('/').next().unwrap_or(&module).to_string();
                match (function.trim(), module.is_empty()) {
                    ("", true) => "unknown caller".to_string(),
                    ("", false) => format!("? ({module})"),
                    (f, true) => f.to_string(),
                    (f, false) => format!("{f} ({module})"),
                }
            }
            None => "unknown caller".to_string(),
        };
        let k = *index.entry(name.clone()).or_insert_with(|| {
            c.names.push(name);
            c.names.len() - 1
        });
        c.of_stack.insert(s.stack, k);
    }
    c
}

/// The RSS ledger at every `/proc` sample that read the mappings, each
/// beside the latest figures of every isolate and the allocator's state of
/// the nearest native snapshot.
fn ledgers(
    p: &ProcStreams,
    start: f64,
    cut_ms: Option<f64>,
    callers: &MmapCallers,
) -> Vec<crate::ledger::Ledger> {
    let mut out = Vec::new();
    let exit_ms = node_exit_ms(p);
    // Live sampled bytes of anonymous mmaps at each native snapshot, in
    // all and by caller.
    let (mmap_live, mmap_by_caller): (Vec<u64>, Vec<Vec<u64>>) =
        p.native.map_or_else(Default::default, |n| {
            let snaps = n.snapshot_times_ms.len();
            let mut live = vec![0u64; snaps];
            let mut by = vec![vec![0u64; snaps]; callers.names.len()];
            for s in &n.series {
                if n.stacks
                    .get(s.stack as usize)
                    .is_none_or(|st| st.kind != AllocKind::Mmap)
                {
                    continue;
                }
                let caller = callers.of_stack.get(&s.stack).copied();
                for (k, &(idx, c)) in s.points.iter().enumerate() {
                    let next = s.points.get(k + 1).map_or(snaps, |p| p.0 as usize);
                    for i in (idx as usize)..next.min(snaps) {
                        live[i] += c.live_bytes;
                        if let Some(b) = caller {
                            by[b][i] += c.live_bytes;
                        }
                    }
                }
            }
            (live, by)
        });
    for s in &p.proc {
        let (Some(maps), Some(rss)) = (s.maps.as_ref(), s.rss()) else {
            continue;
        };
        // Records after this moment that may be used to interpolate: none
        // after the judged end or after a Node process's `exit` event
        // (teardown: a snapshot then has the allocator holding what the
        // handles freed), for a moment before them.
        let horizon = [cut_ms, exit_ms]
            .into_iter()
            .flatten()
            .filter(|&c| s.t <= c)
            .fold(f64::INFINITY, f64::min);
        // Once a source has written its last record, or a Node process's
        // `exit` event has begun (the process is exiting, its heap and
        // arenas going), nothing explains the mappings any more: no ledger.
        let js_over = p
            .main_node
            .and_then(|n| n.mem.last())
            .is_some_and(|m| s.t > m.t + 20.0)
            || exit_ms.is_some_and(|e| s.t > e);
        let native_over = p
            .native
            .and_then(|n| n.snapshot_times_ms.last())
            .is_some_and(|&t| s.t > t + 20.0);
        if js_over || native_over {
            continue;
        }
        // Each isolate's figures at the moment of the read: between the
        // records before and after it, interpolated (a heap that grows fast
        // moves by a MiB in an interval). Not towards the stream's last
        // record, which follows the exit's GC that the mappings did not see,
        // unless it is the main isolate's exit record and the moment came
        // before the exit began: V8's spaces then take the larger figure,
        // and a GC since the last periodic record (a heap-profile read's)
        // may have mapped pages that only the exit record describes.
        let latest: Vec<offheap_format::NodeMem> = p
            .isolates
            .iter()
            .filter_map(|iso| {
                let k = iso.mem.partition_point(|m| m.t <= s.t);
                let a = iso.mem.get(k.checked_sub(1)?)?;
                let last = k + 1 == iso.mem.len();
                let exit_record =
                    last && exit_ms.is_some() && p.main_node.is_some_and(|m| std::ptr::eq(m, *iso));
                let within = |t: f64| {
                    t <= horizon
                        || (exit_record && cut_ms.filter(|&c| s.t <= c).is_none_or(|c| t <= c))
                };
                match iso.mem.get(k) {
                    Some(b) if (!last || exit_record) && b.t - a.t <= 2000.0 && within(b.t) => {
                        Some(interpolate(a, b, s.t))
                    }
                    _ => Some(a.clone()),
                }
            })
            .collect();
        let latest: Vec<&offheap_format::NodeMem> = latest.iter().collect();
        // The native agent's figures at the moment of the read, between
        // the snapshots around it (within 2 s) that have them: the
        // allocator's state is read by periodic snapshots only. Never
        // towards the final snapshot, which follows teardown.
        let (allocator, mmap_live, live_by_caller) =
            p.native.map_or((None, None, Vec::new()), |n| {
                let times = &n.snapshot_times_ms;
                let last = times.len().saturating_sub(1);
                let around = |ok: &dyn Fn(usize) -> bool| {
                    let k = times.partition_point(|&t| t <= s.t);
                    let before = (0..k)
                        .rev()
                        .find(|&i| ok(i))
                        .filter(|&i| s.t - times[i] <= 2000.0);
                    let after = (k..last)
                        .find(|&i| ok(i))
                        .filter(|&i| times[i] - s.t <= 2000.0 && times[i] <= horizon);
                    match (before, after) {
                        (Some(a), Some(b)) => {
                            Some((a, b, (s.t - times[a]) / (times[b] - times[a]).max(1e-9)))
                        }
                        (Some(a), None) => Some((a, a, 0.0)),
                        (None, Some(b)) => Some((b, b, 0.0)),
                        (None, None) => None,
                    }
                };
                let mix = between_snapshots;
                let a = around(&|i| n.allocator.get(i).is_some_and(|a| a.is_some())).and_then(
                    |(i, j, f)| {
                        let (x, y) = (n.allocator[i]?, n.allocator[j]?);
                        Some(AllocatorStats {
                            in_use_bytes: mix(x.in_use_bytes, y.in_use_bytes, f),
                            mmapped_bytes: mix(x.mmapped_bytes, y.mmapped_bytes, f),
                            agent_mapped_bytes: mix(x.agent_mapped_bytes, y.agent_mapped_bytes, f),
                            free_bytes: mix(x.free_bytes, y.free_bytes, f),
                            ..x
                        })
                    },
                );
                let at = around(&|i| i < mmap_live.len());
                let m = at.map(|(i, j, f)| mix(mmap_live[i], mmap_live[j], f));
                let by: Vec<(String, u64)> = at
                    .map(|(i, j, f)| {
                        callers
                            .names
                            .iter()
                            .zip(&mmap_by_caller)
                            .map(|(name, v)| (name.clone(), mix(v[i], v[j], f)))
                            .collect()
                    })
                    .unwrap_or_default();
                (a, m, by)
            });
        let mut l = crate::ledger::build(&crate::ledger::Inputs {
            at_s: rel(s.t, start),
            rss,
            maps,
            isolates: &latest,
            allocator,
            mmap_live,
        });
        l.split_anon_mmap(&live_by_caller);
        out.push(l);
    }
    out
}

/// `f` of every item, in order, on up to as many threads as there are
/// cores: each recorded process is analysed (symbolized above all) on its
/// own, and a test suite under `offheap check` records one per test file.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            done.push((i, f(item)));
        }
        done
    };
    // The calling thread is one of the workers: its symbolizer's caches
    // stay warm for what follows (the leak check's stacks).
    let mut out: Vec<(usize, R)> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for w in others {
            match w.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The whole analysis: every recorded process in turn, and the focus (the
/// process that leaks fastest, else the target) for the top-level figures.
pub fn analyze(rec: &Recording, opts: &Options) -> Model {
    let procs = processes(rec);
    let mut analysed = in_parallel(&procs, |p| analyze_process(rec, p, opts));
    // Leaks outrank fragmentation, which outranks nothing; then the rate.
    let score = |p: &ProcessModel| {
        let class = if p.leaks() {
            2
        } else if p.verdict.primary == Kind::Fragmentation {
            1
        } else {
            0
        };
        (class, p.leak_rate())
    };
    let mut focus = 0;
    for (i, a) in analysed.iter().enumerate() {
        let (c, r) = score(&a.process);
        let (fc, fr) = score(&analysed[focus].process);
        if c > fc || (c == fc && c > 0 && r > fr) {
            focus = i;
        }
    }
    let headline = headline(
        &analysed.iter().map(|a| &a.process).collect::<Vec<_>>(),
        focus,
    );
    let profile = std::mem::take(&mut analysed[focus].profile);
    let processes: Vec<ProcessModel> = analysed.into_iter().map(|a| a.process).collect();
    let f = &processes[focus];
    let mut notes = rec.notes.clone();
    notes.extend(f.notes.iter().cloned());
    let owners = crate::owners::owners(&f.suspects, rec.heap.as_ref());
    let check = crate::check::outcome(rec, &processes);
    Model {
        meta: rec.meta.clone(),
        end: rec.end.clone(),
        timeline: f.timeline.clone(),
        verdict: Some(f.verdict.clone()),
        growth: f.growth.clone(),
        peak: f.peak.clone(),
        suspects: f.suspects.clone(),
        profile,
        heap: rec.heap.clone(),
        owners,
        notes,
        focus: f.pid,
        headline,
        ledger: f.ledger.clone(),
        rss_ledger: f.rss_ledger.clone(),
        processes,
        check,
    }
}

/// "native leak in child 124 (./worker): +10.0 MiB/s", "no leak found in any
/// of the 3 processes".
fn headline(procs: &[&ProcessModel], focus: usize) -> String {
    let f = procs[focus];
    let multi = procs.len() > 1;
    let what = match f.verdict.primary {
        Kind::JsHeap => "JS heap leak",
        Kind::External => "external memory leak",
        Kind::Native => "native leak",
        Kind::Fragmentation => "allocator fragmentation",
        Kind::None if multi => {
            return format!("no leak found in any of the {} processes", procs.len());
        }
        Kind::None => return "no leak found".into(),
    };
    let mut h = if multi {
        format!(
            "{what} in {}: {}",
            f.label(),
            offheap_format::units::rate(f.leak_rate())
        )
    } else {
        format!("{what}: {}", offheap_format::units::rate(f.leak_rate()))
    };
    let others = procs
        .iter()
        .enumerate()
        .filter(|(i, p)| *i != focus && p.leaks())
        .count();
    if others > 0 {
        let _ = write!(
            h,
            "; {others} other process{} leak{} too",
            if others == 1 { "" } else { "es" },
            if others == 1 { "s" } else { "" }
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use offheap_format::native::{NativeStream, StackCounters, StackSeries};

    /// A window shorter than the minimum age: a C child's steady rise of
    /// live bytes is growth; in Node, where a rise may be garbage awaiting
    /// a GC, only a very steady one (tau 0.8).
    #[test]
    fn a_short_steady_rise_is_growth_without_young_garbage() {
        let mut n = NativeStream {
            snapshot_times_ms: (0..8).map(|i| 500.0 * i as f64).collect(),
            ..Default::default()
        };
        let at = |live: u64| StackCounters {
            alloc_bytes: live,
            alloc_count: live >> 20,
            live_bytes: live,
            live_count: live >> 20,
            aged_live_bytes: 0,
        };
        n.series.push(StackSeries {
            stack: 0,
            points: (0..8).map(|i| (i, at((i as u64 + 1) << 20))).collect(),
        });
        let snaps: Vec<u32> = (0..8).collect();
        let c = &stack_figures(&n, &n.series, &snaps, 0.0, 5.0, false)[0];
        assert!((c.slope - 2.0 * 1048576.0).abs() < 1.0, "{}", c.slope);
        // In Node (young garbage), a perfectly steady rise counts too (a
        // short N-API leak run had no suspect), a wandering one does not.
        let node = &stack_figures(&n, &n.series, &snaps, 0.0, 5.0, true)[0];
        assert!((node.slope - 2.0 * 1048576.0).abs() < 1.0, "{}", node.slope);
        let wander = [1u64, 3, 2, 4, 3, 5, 2, 6];
        n.series[0].points = (0..8).map(|i| (i, at(wander[i as usize] << 20))).collect();
        let node = &stack_figures(&n, &n.series, &snaps, 0.0, 5.0, true)[0];
        assert_eq!(node.slope, 0.0);
    }

    /// A recording of `/proc` samples only: pid -> (first s, last s, RSS at s).
    /// pid, first s, last s, RSS at s.
    type ProcSpec<'a> = (u32, f64, f64, &'a dyn Fn(f64) -> f64);

    fn proc_only(mode: &str, procs: &[ProcSpec]) -> Recording {
        let start = 1.0e12;
        let mut proc = Vec::new();
        for &(pid, from, to, rss) in procs {
            let mut t = from;
            while t <= to {
                let mut s = ProcSample {
                    t: start + t * 1000.0,
                    pid,
                    ..Default::default()
                };
                s.status.insert("VmRSS".into(), rss(t) as u64);
                if pid != 10 {
                    s.status.insert("PPid".into(), 10);
                }
                if t == from {
                    s.cmdline = vec![format!("./p{pid}")];
                }
                proc.push(s);
                t += 0.5;
            }
        }
        proc.sort_by(|a, b| a.t.total_cmp(&b.t));
        Recording {
            dir: Default::default(),
            meta: offheap_format::Meta {
                mode: mode.into(),
                command: vec!["./p10".into()],
                pid: 10,
                start_ms: start,
                interval_ms: 500,
                ..Default::default()
            },
            end: Some(offheap_format::End {
                end_ms: start + 20_000.0,
                reason: "exited".into(),
                ..Default::default()
            }),
            proc,
            node: Vec::new(),
            native: Vec::new(),
            perf_maps: Default::default(),
            iterations: Vec::new(),
            heap: None,
            load: None,
            notes: Vec::new(),
        }
    }

    /// Every process is analysed on its own, and the headline and top-level
    /// figures are about the one whose memory grows: here a child seen only
    /// in /proc whose RSS rises 1 MiB/s beside an idle target and a child
    /// that exited after 3 s.
    #[test]
    fn the_growing_child_is_the_focus() {
        let flat = |_t: f64| 10.0 * 1048576.0;
        let grows = |t: f64| 5.0 * 1048576.0 + t * 1048576.0;
        let rec = proc_only(
            "run",
            &[
                (10, 0.0, 20.0, &flat),
                (11, 1.0, 20.0, &grows),
                (12, 2.0, 5.0, &flat),
            ],
        );
        let m = analyze(&rec, &Options::default());
        assert_eq!(m.processes.len(), 3);
        assert_eq!(
            m.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [10, 11, 12],
            "the target first, then by start"
        );
        assert_eq!(m.focus, 11, "{:#?}", m.processes);
        assert_eq!(m.verdict.as_ref().unwrap().primary, Kind::Native);
        assert!(m.growth.rss > 0.9e6, "{:?}", m.growth);
        assert!(
            m.headline
                .starts_with("native leak in child 11 (./p11): +1."),
            "{}",
            m.headline
        );
        let root = &m.processes[0];
        assert!(root.root && root.verdict.primary == Kind::None);
        assert_eq!(m.recording_duration(), 20.0);
        let early = &m.processes[2];
        assert_eq!(early.ppid, Some(10));
        assert!(early.exited_early && (early.start, early.end) == (2.0, 5.0));
        assert_eq!(early.verdict.primary, Kind::None);
        let js: serde_json::Value = serde_json::from_str(&m.summary_json()).unwrap();
        assert_eq!(js["focus_pid"], 11);
        assert_eq!(js["pid"], 10);
        assert_eq!(js["processes"].as_array().unwrap().len(), 3);
        assert_eq!(js["processes"][1]["focus"], true);
        assert_eq!(js["processes"][1]["timeline"], "report.html#process-11");
    }

    /// Nothing grows: the target is the focus, and the headline says no
    /// process leaks. In an attached recording the JS agent's stream is the
    /// target's whatever pid it carries (it may see another pid namespace).
    #[test]
    fn no_leak_anywhere_and_attach_is_one_process() {
        let flat = |_t: f64| 10.0 * 1048576.0;
        let rec = proc_only("run", &[(10, 0.0, 20.0, &flat), (11, 1.0, 20.0, &flat)]);
        let m = analyze(&rec, &Options::default());
        assert_eq!((m.focus, m.processes.len()), (10, 2));
        assert_eq!(m.headline, "no leak found in any of the 2 processes");
        let mut rec = proc_only("attach", &[(10, 0.0, 20.0, &flat)]);
        let mut ns = NodeStream {
            hello: Some(offheap_format::NodeHello {
                pid: 4,
                is_main_thread: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        ns.mem.push(offheap_format::NodeMem {
            t: rec.meta.start_ms + 1000.0,
            heap_used: 1 << 20,
            ..Default::default()
        });
        rec.node.push(ns);
        let m = analyze(&rec, &Options::default());
        assert_eq!(m.processes.len(), 1);
        assert!(m.processes[0].node);
        assert!(m.timeline.series("heap_used").is_some());
        assert_eq!(m.headline, "no leak found");
    }

    /// Regression: a suspect's live bytes were those of the window's last
    /// snapshot, which for a Node server stopped gracefully (the demo) came
    /// after its exit had freed what leaked: "+26 MiB/s, live 0 B in 0
    /// allocations". Suspects now carry the peak of the window.
    /// Between two native snapshots, a rise is spread and a fall waits
    /// for the later snapshot.
    #[test]
    fn a_fall_between_snapshots_is_taken_at_the_later_one() {
        assert_eq!(between_snapshots(100, 200, 0.25), 125);
        assert_eq!(between_snapshots(200, 100, 0.9), 200);
        assert_eq!(between_snapshots(7, 7, 0.5), 7);
    }

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
        let f = &stack_figures(&n, &n.series, &snaps, 0.0, 0.0, true)[0];
        assert_eq!((f.live_end, f.count_end), (0, 0));
        assert_eq!((f.live_peak, f.count_at_peak), (8 << 20, 8));
        assert!(f.slope > 0.0);
    }
}
