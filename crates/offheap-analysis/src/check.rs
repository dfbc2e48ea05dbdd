//! `offheap check`: the leak gate. From the agents' leak checks at exit
//! (`LEAKS` records: blocks still allocated, classed by reachability) and
//! the growth figures of the verdict, the gate's findings and whether it
//! passed (`summary.json` `check`).
//!
//! The gate's configuration (suppressions, growth limits) is recorded in
//! `recording.json` (`settings.check`), so `offheap report DIR` recomputes
//! exactly the figures `offheap check` judged.

use crate::model::{JsOwner, ProcessModel};
use offheap_format::native::{NativeStream, leak_class};
use offheap_format::{IterationCount, Recording};
use offheap_symbols::Frame;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a suppression's pattern is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// A frame's function name.
    Function,
    /// A frame's module path (or, for JS frames, its script).
    Module,
    /// Either, or a frame's source file (LeakSanitizer's `leak:`).
    Any,
}

/// One line of a suppressions file: a glob (`*`, `?`) on the frames of a
/// lost block's allocation stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub field: Field,
    pub pattern: String,
}

impl Suppression {
    /// The text of its line.
    pub fn text(&self) -> String {
        let f = match self.field {
            Field::Function => "function",
            Field::Module => "module",
            Field::Any => "leak",
        };
        format!("{f}:{}", self.pattern)
    }

    fn matches(&self, f: &Frame) -> bool {
        let m = |s: &str| glob(&self.pattern, s);
        match self.field {
            Field::Function => m(&f.function),
            Field::Module => m(&f.module),
            Field::Any => m(&f.function) || m(&f.module) || f.file.as_deref().is_some_and(m),
        }
    }
}

/// Parses a suppressions file: one `function:GLOB`, `module:GLOB` or
/// `leak:GLOB` (function, module or file; a line without a prefix is the
/// same) per line; `#` starts a comment, blank lines are skipped. A
/// pattern without `*` matches anywhere in the name, as in LeakSanitizer.
pub fn parse_suppressions(text: &str) -> Result<Vec<Suppression>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // `::` in a C++ name is not a prefix.
        let prefixed = line
            .split_once(':')
            .filter(|(_, rest)| !rest.starts_with(':'));
        let (field, pat) = match prefixed {
            Some(("function" | "fun", p)) => (Field::Function, p),
            Some(("module" | "mod" | "lib", p)) => (Field::Module, p),
            Some(("leak", p)) => (Field::Any, p),
            Some((pre, _)) if pre.chars().all(|c| c.is_ascii_alphabetic()) && !pre.is_empty() => {
                return Err(format!(
                    "line {}: unknown kind {pre:?} (use function:, module: or leak:)",
                    i + 1
                ));
            }
            _ => (Field::Any, line),
        };
        let pat = pat.trim();
        if pat.is_empty() {
            return Err(format!("line {}: empty pattern", i + 1));
        }
        let pattern = if pat.contains('*') || pat.contains('?') {
            pat.to_string()
        } else {
            format!("*{pat}*")
        };
        out.push(Suppression { field, pattern });
    }
    Ok(out)
}

/// Glob match: `*` any run of characters, `?` one character.
pub fn glob(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// A figure `--max-growth` limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrowthKind {
    /// Live native bytes (malloc/new, anonymous mmap): `native_live`.
    Native,
    /// `external` (Buffer/ArrayBuffer backing stores).
    External,
    /// `heapUsed` after GC.
    JsHeap,
    /// Resident set size.
    Rss,
}

impl GrowthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrowthKind::Native => "native",
            GrowthKind::External => "external",
            GrowthKind::JsHeap => "js-heap",
            GrowthKind::Rss => "rss",
        }
    }
}

/// `--max-growth KIND=SIZE`: the most KIND may grow over the analysis
/// window; `KIND=SIZE/request`: per request of `check --load`;
/// `KIND=SIZE/iteration`: per iteration the command reported (a line
/// appended to `$OFFHEAP_ITERATIONS` each).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrowthLimit {
    pub kind: GrowthKind,
    pub bytes: u64,
    #[serde(default)]
    pub per_request: bool,
    #[serde(default)]
    pub per_iteration: bool,
}

/// What `check --load` sent (`load.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    pub url: String,
    pub method: String,
    pub concurrency: u32,
    /// Requests answered with a 2xx or 3xx status.
    pub requests: u64,
    /// Requests that failed (connection errors, 4xx, 5xx).
    pub errors: u64,
    /// Unix ms when the load started and ended.
    pub start_ms: f64,
    pub end_ms: f64,
    /// Why the load did not run, if it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// The rate asked for (`--load-rate`), requests per second in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
}

impl LoadStats {
    pub fn of(rec: &Recording) -> Option<LoadStats> {
        serde_json::from_value(rec.load.clone()?).ok()
    }
    /// Requests per second while the load ran.
    pub fn rate(&self) -> f64 {
        let s = (self.end_ms - self.start_ms) / 1000.0;
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }
}

/// Parses `native=1MiB` (units B, KiB, MiB, GiB; k/M/G and KB/MB/GB are
/// read as the binary units too).
pub fn parse_growth_limit(s: &str) -> Result<GrowthLimit, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        format!(
            "{s:?}: expected KIND=SIZE, e.g. native=1MiB (kinds: native, external, js-heap, rss)"
        )
    })?;
    let kind = match k.trim() {
        "native" => GrowthKind::Native,
        "external" => GrowthKind::External,
        "js-heap" | "heap" => GrowthKind::JsHeap,
        "rss" => GrowthKind::Rss,
        other => {
            return Err(format!(
                "unknown kind {other:?} in {s:?} (kinds: native, external, js-heap, rss)"
            ));
        }
    };
    let mut v = v.trim();
    let mut per_request = false;
    let mut per_iteration = false;
    if let Some((size, per)) = v.split_once('/') {
        match per.trim() {
            "request" | "req" | "requests" => per_request = true,
            "iteration" | "iter" | "iterations" => per_iteration = true,
            _ => {
                return Err(format!(
                    "{s:?}: growth is per run (native=1MiB), per request (native=2KiB/request) or per iteration (native=1KiB/iteration)"
                ));
            }
        }
        v = size.trim();
    }
    let i = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let n: f64 = v[..i]
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a size (try native=1MiB)"))?;
    let mult = match v[i..].to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "{s:?}: unknown size unit {u:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?}: not a size"));
    }
    Ok(GrowthLimit {
        kind,
        bytes: bytes as u64,
        per_request,
        per_iteration,
    })
}

/// The gate's configuration, as recorded in `recording.json`
/// (`settings.check`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckConfig {
    #[serde(default)]
    pub suppressions: Vec<Suppression>,
    /// The file the suppressions came from, for the report.
    #[serde(default)]
    pub suppressions_file: Option<String>,
    #[serde(default)]
    pub max_growth: Vec<GrowthLimit>,
}

impl CheckConfig {
    /// The configuration recorded in a recording, if it is one of `check`.
    pub fn of(rec: &Recording) -> Option<CheckConfig> {
        let v = rec.meta.settings.get("check")?;
        serde_json::from_value(v.clone()).ok()
    }
}

/// Blocks and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub blocks: u64,
    pub bytes: u64,
}

impl Totals {
    fn add(&mut self, blocks: u64, bytes: u64) {
        self.blocks += blocks;
        self.bytes += bytes;
    }
}

/// One allocation stack's blocks of one class at exit, in every process
/// that had them (`summary.json` `check.leaks.lost[]`, `reachable[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakGroup {
    /// `definitely-lost`, `indirectly-lost` or `reachable`.
    pub class: String,
    pub blocks: u64,
    pub bytes: u64,
    /// The processes whose exit left them.
    pub pids: Vec<u32>,
    /// The module and function that own the stack (as for suspects).
    pub module: String,
    pub function: String,
    /// The application's own JS function on the stack.
    pub js: Option<JsOwner>,
    /// The suppression that matched (the group then does not fail the gate).
    pub suppressed_by: Option<String>,
    /// Innermost first, allocator frames collapsed.
    pub frames: Vec<Frame>,
}

/// The leak check of one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessLeaks {
    pub pid: u32,
    pub command: String,
    /// False when the agent could not run the check (`note` says why) or
    /// the process ended without calling `exit` (a signal, `_exit`, exec).
    pub checked: bool,
    pub note: Option<String>,
    /// Blocks still allocated at exit.
    pub live: Totals,
    pub definitely_lost: Totals,
    pub indirectly_lost: Totals,
    pub reachable: Totals,
    /// Lost blocks a suppression matched (counted in the two above too).
    pub suppressed: Totals,
    pub root_bytes: u64,
    pub elapsed_ms: f64,
}

/// Every process's leak check at exit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaksAtExit {
    pub processes: Vec<ProcessLeaks>,
    /// Unsuppressed lost blocks, all processes.
    pub definitely_lost: Totals,
    pub indirectly_lost: Totals,
    pub reachable: Totals,
    pub suppressed: Totals,
    /// Lost groups (suppressed ones too, marked), largest first.
    pub lost: Vec<LeakGroup>,
    /// The largest reachable groups (at most [`REACHABLE_SHOWN`]).
    pub reachable_top: Vec<LeakGroup>,
}

/// How many reachable groups are listed.
pub const REACHABLE_SHOWN: usize = 10;
/// How many lost stacks are symbolized per process (the rest are counted).
const LOST_SYMBOLIZED: usize = 500;

/// One judgement of the gate (`summary.json` `check.gates[]`): a JUnit test case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// `leaks-at-exit`, `max-growth native`, ...
    pub name: String,
    pub passed: bool,
    /// What was measured and the limit, in bytes (leaks: lost bytes, limit 0).
    pub measured: f64,
    pub limit: f64,
    /// The process the figure is of (the worst one), if any.
    pub pid: Option<u32>,
    /// One line for people.
    pub message: String,
}

/// The gate's outcome (`summary.json` `check`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Every gate passed.
    pub passed: bool,
    pub gates: Vec<Gate>,
    pub leaks: LeaksAtExit,
    pub config: CheckConfig,
}

fn class_name(c: u8) -> &'static str {
    match c {
        leak_class::DIRECT => "definitely-lost",
        leak_class::INDIRECT => "indirectly-lost",
        _ => "reachable",
    }
}

/// Frames as the grouping key: function and module of each.
fn key(frames: &[Frame]) -> Vec<(String, String)> {
    frames
        .iter()
        .map(|f| (f.function.clone(), f.module.clone()))
        .collect()
}

/// The check's outcome, or None when the recording is not one of `check`
/// and no agent ran a leak check.
pub fn outcome(rec: &Recording, processes: &[ProcessModel]) -> Option<CheckOutcome> {
    let config = CheckConfig::of(rec);
    let any_scan = rec.native.iter().any(|n| n.leaks.is_some());
    if config.is_none() && !any_scan {
        return None;
    }
    let config = config.unwrap_or_default();
    let leaks = leaks_at_exit(rec, processes, &config.suppressions);
    let mut gates = Vec::new();
    let checked = leaks.processes.iter().filter(|p| p.checked).count();
    let lost = leaks.definitely_lost.bytes + leaks.indirectly_lost.bytes;
    let lost_blocks = leaks.definitely_lost.blocks + leaks.indirectly_lost.blocks;
    let worst = leaks
        .processes
        .iter()
        .filter(|p| p.definitely_lost.blocks + p.indirectly_lost.blocks > p.suppressed.blocks)
        .max_by_key(|p| p.definitely_lost.bytes + p.indirectly_lost.bytes)
        .map(|p| p.pid);
    let leaks_gate = if checked == 0 {
        Gate {
            name: "leaks-at-exit".into(),
            passed: false,
            measured: 0.0,
            limit: 0.0,
            pid: None,
            message: match leaks.processes.iter().find_map(|p| p.note.clone()) {
                Some(why) => format!("no process was leak-checked at exit ({why})"),
                None => "no process was leak-checked at exit (no native agent stream, or none ended through exit())".into(),
            },
        }
    } else if lost_blocks > 0 {
        let groups = leaks
            .lost
            .iter()
            .filter(|g| g.suppressed_by.is_none())
            .count();
        Gate {
            name: "leaks-at-exit".into(),
            passed: false,
            measured: lost as f64,
            limit: 0.0,
            pid: worst,
            message: format!(
                "{} lost in {} block{} from {} allocation stack{} ({} definitely, {} indirectly)",
                offheap_format::units::bytes(lost),
                lost_blocks,
                if lost_blocks == 1 { "" } else { "s" },
                groups,
                if groups == 1 { "" } else { "s" },
                offheap_format::units::bytes(leaks.definitely_lost.bytes),
                offheap_format::units::bytes(leaks.indirectly_lost.bytes),
            ),
        }
    } else {
        Gate {
            name: "leaks-at-exit".into(),
            passed: true,
            measured: 0.0,
            limit: 0.0,
            pid: None,
            message: format!(
                "no leak at exit in {checked} process{} ({} in {} blocks still reachable{})",
                if checked == 1 { "" } else { "es" },
                offheap_format::units::bytes(leaks.reachable.bytes),
                leaks.reachable.blocks,
                if leaks.suppressed.blocks > 0 {
                    format!(
                        "; {} in {} lost blocks suppressed",
                        offheap_format::units::bytes(leaks.suppressed.bytes),
                        leaks.suppressed.blocks
                    )
                } else {
                    String::new()
                }
            ),
        }
    };
    gates.push(leaks_gate);
    let stop_s = rec
        .end
        .as_ref()
        .and_then(|e| e.stop_ms)
        .map(|t| (t - rec.meta.start_ms) / 1000.0);
    let load = LoadStats::of(rec);
    if let Some(l) = &load {
        // With --load, a server that offheap stopped by a signal cannot be
        // checked at exit: the growth gates judge it.
        if checked == 0 && rec.end.as_ref().is_some_and(|e| e.reason == "load") {
            let g = &mut gates[0];
            g.passed = true;
            g.message = format!(
                "not judged: no process ended through exit() after the load (stopped by a signal); {}",
                "make the server exit on SIGINT to have it checked"
            );
        }
        gates.push(load_gate(l));
    }
    for lim in &config.max_growth {
        gates.push(growth_gate(
            lim,
            processes,
            stop_s,
            load.as_ref(),
            &rec.iterations,
            rec.meta.start_ms,
        ));
    }
    Some(CheckOutcome {
        passed: gates.iter().all(|g| g.passed),
        gates,
        leaks,
        config,
    })
}

/// Growth of `kind` in process `p` over its analysis window: the verdict's
/// robust growth rate times the window's length (warm-up end to the end of
/// the run, or to the moment the target was asked to stop). None when the
/// process has no such figure.
pub fn growth_over_window(p: &ProcessModel, kind: GrowthKind, stop_s: Option<f64>) -> Option<f64> {
    let g = &p.growth;
    let rate = match kind {
        GrowthKind::Native => g.native_live?,
        GrowthKind::External => {
            p.node.then_some(())?;
            g.external
        }
        GrowthKind::JsHeap => {
            p.node.then_some(())?;
            g.heap_used
        }
        GrowthKind::Rss => g.rss,
    };
    let end = window_end(p, stop_s);
    Some(rate * (end - p.timeline.warmup_end).max(0.0))
}

/// Where a process's analysis window ends: at the stop, if the target was
/// asked to stop inside it, else at the end of its timeline.
fn window_end(p: &ProcessModel, stop_s: Option<f64>) -> f64 {
    stop_s
        .filter(|&s| s > p.timeline.warmup_end && s < p.timeline.duration)
        .unwrap_or(p.timeline.duration)
}

/// A byte figure that may be negative, for people.
fn signed_bytes(b: f64) -> String {
    if b < 0.0 {
        format!("-{}", offheap_format::units::bytes((-b) as u64))
    } else {
        offheap_format::units::bytes(b as u64)
    }
}

/// The load itself: it must have run and been answered.
fn load_gate(l: &LoadStats) -> Gate {
    let (passed, message) = match &l.error {
        Some(e) => (false, format!("the load did not run: {e}")),
        None if l.requests == 0 => (
            false,
            format!("no request to {} succeeded ({} failed)", l.url, l.errors),
        ),
        None => (
            l.errors == 0,
            format!(
                "{} {} requests to {} in {:.1} s ({:.0}/s, {} connections){}",
                l.requests,
                l.method,
                l.url,
                (l.end_ms - l.start_ms) / 1000.0,
                l.rate(),
                l.concurrency,
                if l.errors > 0 {
                    format!(", {} failed", l.errors)
                } else {
                    String::new()
                }
            ),
        ),
    };
    Gate {
        name: "load".into(),
        passed,
        measured: l.requests as f64,
        limit: 0.0,
        pid: None,
        message,
    }
}

fn growth_gate(
    lim: &GrowthLimit,
    processes: &[ProcessModel],
    stop_s: Option<f64>,
    load: Option<&LoadStats>,
    iterations: &[IterationCount],
    start_ms: f64,
) -> Gate {
    if lim.per_request {
        return per_request_gate(lim, processes, load);
    }
    if lim.per_iteration {
        return per_iteration_gate(lim, processes, stop_s, iterations, start_ms);
    }
    let name = format!("max-growth {}", lim.kind.as_str());
    let worst = processes
        .iter()
        .filter_map(|p| Some((p, growth_over_window(p, lim.kind, stop_s)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let limit = offheap_format::units::bytes(lim.bytes);
    match worst {
        None => Gate {
            name,
            passed: false,
            measured: 0.0,
            limit: lim.bytes as f64,
            pid: None,
            message: format!(
                "no {} figure was recorded (needs {}), so the limit of {limit} cannot be checked",
                lim.kind.as_str(),
                match lim.kind {
                    GrowthKind::Native => "the native agent",
                    GrowthKind::External | GrowthKind::JsHeap => "a Node target",
                    GrowthKind::Rss => "/proc samples",
                }
            ),
        },
        Some((p, grew)) => {
            let passed = grew <= lim.bytes as f64;
            let shown = signed_bytes(grew);
            Gate {
                name,
                passed,
                measured: grew,
                limit: lim.bytes as f64,
                pid: Some(p.pid),
                message: format!(
                    "{} grew by {shown} over {:.1} s in {} (limit {limit})",
                    lim.kind.as_str(),
                    (p.timeline.duration - p.timeline.warmup_end).max(0.0),
                    p.label()
                ),
            }
        }
    }
}

/// Iterations the command reported between `from` and `to` (seconds of
/// the recording), and over how long they came: the count is a step
/// series, read at each end.
pub fn iterations_between(iterations: &[IterationCount], start_ms: f64, from: f64, to: f64) -> u64 {
    let at = |s: f64| {
        let t = start_ms + s * 1000.0;
        iterations
            .iter()
            .take_while(|c| c.t <= t)
            .last()
            .map_or(0, |c| c.n)
    };
    at(to).saturating_sub(at(from))
}

/// Growth of `kind` per iteration in the analysis window: the growth
/// over the window over the iterations reported in it.
pub fn growth_per_iteration(
    p: &ProcessModel,
    kind: GrowthKind,
    stop_s: Option<f64>,
    iterations: &[IterationCount],
    start_ms: f64,
) -> Option<(f64, u64)> {
    let grew = growth_over_window(p, kind, stop_s)?;
    let n = iterations_between(
        iterations,
        start_ms,
        p.timeline.warmup_end,
        window_end(p, stop_s),
    );
    (n > 0).then(|| (grew / n as f64, n))
}

fn per_iteration_gate(
    lim: &GrowthLimit,
    processes: &[ProcessModel],
    stop_s: Option<f64>,
    iterations: &[IterationCount],
    start_ms: f64,
) -> Gate {
    let name = format!("max-growth {}/iteration", lim.kind.as_str());
    let limit = offheap_format::units::bytes(lim.bytes);
    let worst = processes
        .iter()
        .filter_map(|p| {
            Some((
                p,
                growth_per_iteration(p, lim.kind, stop_s, iterations, start_ms)?,
            ))
        })
        .max_by(|a, b| a.1.0.total_cmp(&b.1.0));
    let Some((p, (per, n))) = worst else {
        let reported = iterations.last().map_or(0, |c| c.n);
        return Gate {
            name,
            passed: false,
            measured: 0.0,
            limit: lim.bytes as f64,
            pid: None,
            message: if reported == 0 {
                format!(
                    "the command reported no iteration (append one line per iteration to the file named by $OFFHEAP_ITERATIONS), so the limit of {limit}/iteration cannot be checked"
                )
            } else {
                format!(
                    "no {} figure, or none of the {reported} iterations fell in the analysis window, so the limit of {limit}/iteration cannot be checked",
                    lim.kind.as_str()
                )
            },
        };
    };
    let shown = signed_bytes(per);
    Gate {
        name,
        passed: per <= lim.bytes as f64,
        measured: per,
        limit: lim.bytes as f64,
        pid: Some(p.pid),
        message: format!(
            "{} grew by {shown} per iteration in {} ({n} iterations after warm-up; limit {limit}/iteration)",
            lim.kind.as_str(),
            p.label(),
        ),
    }
}

/// Growth of `kind` per request of the load: the verdict's growth rate
/// over the request rate while the load ran.
pub fn growth_per_request(p: &ProcessModel, kind: GrowthKind, load: &LoadStats) -> Option<f64> {
    let rate = growth_over_window(p, kind, None)?
        / (p.timeline.duration - p.timeline.warmup_end).max(1e-9);
    let rps = load.rate();
    (rps > 0.0).then(|| rate / rps)
}

fn per_request_gate(
    lim: &GrowthLimit,
    processes: &[ProcessModel],
    load: Option<&LoadStats>,
) -> Gate {
    let name = format!("max-growth {}/request", lim.kind.as_str());
    let limit = offheap_format::units::bytes(lim.bytes);
    let fail = |message: String| Gate {
        name: name.clone(),
        passed: false,
        measured: 0.0,
        limit: lim.bytes as f64,
        pid: None,
        message,
    };
    let Some(load) = load.filter(|l| l.requests > 0) else {
        return fail(format!(
            "growth per request needs a load that was answered (--load URL); the limit of {limit}/request cannot be checked"
        ));
    };
    let worst = processes
        .iter()
        .filter_map(|p| Some((p, growth_per_request(p, lim.kind, load)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let Some((p, per)) = worst else {
        return fail(format!(
            "no {} figure was recorded, so the limit of {limit}/request cannot be checked",
            lim.kind.as_str()
        ));
    };
    let shown = signed_bytes(per);
    Gate {
        name,
        passed: per <= lim.bytes as f64,
        measured: per,
        limit: lim.bytes as f64,
        pid: Some(p.pid),
        message: format!(
            "{} grew by {shown} per request in {} ({:.0} requests/s; limit {limit}/request)",
            lim.kind.as_str(),
            p.label(),
            load.rate()
        ),
    }
}

/// Per process, its check's figures and its symbolized groups.
fn leaks_at_exit(
    rec: &Recording,
    processes: &[ProcessModel],
    suppressions: &[Suppression],
) -> LeaksAtExit {
    let mut out = LeaksAtExit::default();
    let mut lost: Vec<LeakGroup> = Vec::new();
    let mut reach: Vec<LeakGroup> = Vec::new();
    let mut lost_at: HashMap<(String, Vec<(String, String)>), usize> = HashMap::new();
    let mut reach_at: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    for n in &rec.native {
        let command = processes
            .iter()
            .find(|p| p.pid == n.pid)
            .map(|p| p.command.clone())
            .unwrap_or_else(|| n.exe.clone());
        let mut pl = ProcessLeaks {
            pid: n.pid,
            command,
            ..Default::default()
        };
        let Some(scan) = &n.leaks else {
            if n.exact {
                pl.note = Some(format!(
                    "pid {} ended without calling exit() (killed by a signal, _exit or exec): not checked",
                    n.pid
                ));
                out.processes.push(pl);
            }
            continue;
        };
        if scan.head.status != 0 {
            pl.note = n
                .agent_notes
                .iter()
                .find(|t| t.starts_with("leak check:"))
                .cloned()
                .or_else(|| Some("leak check: not possible".into()));
            out.processes.push(pl);
            continue;
        }
        pl.checked = true;
        pl.note = n
            .agent_notes
            .iter()
            .find(|t| t.starts_with("leak check:"))
            .cloned();
        pl.live = Totals {
            blocks: scan.head.blocks,
            bytes: scan.head.block_bytes,
        };
        pl.root_bytes = scan.head.root_bytes;
        pl.elapsed_ms = scan.head.elapsed_us as f64 / 1000.0;
        // Which stacks to symbolize: every lost one (up to a bound), the
        // largest reachable ones.
        let mut lost_ids: Vec<(u32, u8, u64, u64)> = scan
            .entries
            .iter()
            .copied()
            .filter(|e| e.1 != leak_class::REACHABLE)
            .collect();
        lost_ids.sort_by_key(|e| std::cmp::Reverse(e.3));
        let mut reach_ids: Vec<(u32, u8, u64, u64)> = scan
            .entries
            .iter()
            .copied()
            .filter(|e| e.1 == leak_class::REACHABLE)
            .collect();
        for e in &reach_ids {
            pl.reachable.add(e.2, e.3);
        }
        reach_ids.sort_by_key(|e| std::cmp::Reverse(e.3));
        reach_ids.truncate(REACHABLE_SHOWN);
        let ids: Vec<u32> = lost_ids
            .iter()
            .take(LOST_SYMBOLIZED)
            .chain(reach_ids.iter())
            .map(|e| e.0)
            .filter(|&id| (id as usize) < n.stacks.len())
            .collect();
        let (frames_of, _notes) = crate::symbolize::symbolize(rec, n, &ids);
        let frames = |id: u32| -> Vec<Frame> {
            crate::suspects::collapse_allocator(frames_of.get(&id).cloned().unwrap_or_default())
        };
        for (k, &(id, class, count, bytes)) in lost_ids.iter().enumerate() {
            let fr = if k < LOST_SYMBOLIZED {
                frames(id)
            } else {
                Vec::new()
            };
            let suppressed_by = suppressions
                .iter()
                .find(|s| fr.iter().any(|f| s.matches(f)))
                .map(|s| s.text());
            if suppressed_by.is_some() {
                pl.suppressed.add(count, bytes);
            } else if class == leak_class::DIRECT {
                pl.definitely_lost.add(count, bytes);
            } else {
                pl.indirectly_lost.add(count, bytes);
            }
            let k = (class_name(class).to_string(), key(&fr));
            let at = *lost_at.entry(k).or_insert_with(|| {
                lost.push(group(class, &fr, suppressed_by.clone()));
                lost.len() - 1
            });
            let g = &mut lost[at];
            g.blocks += count;
            g.bytes += bytes;
            if !g.pids.contains(&n.pid) {
                g.pids.push(n.pid);
            }
        }
        for &(id, class, count, bytes) in &reach_ids {
            let fr = frames(id);
            let at = *reach_at.entry(key(&fr)).or_insert_with(|| {
                reach.push(group(class, &fr, None));
                reach.len() - 1
            });
            let g = &mut reach[at];
            g.blocks += count;
            g.bytes += bytes;
            if !g.pids.contains(&n.pid) {
                g.pids.push(n.pid);
            }
        }
        out.definitely_lost
            .add(pl.definitely_lost.blocks, pl.definitely_lost.bytes);
        out.indirectly_lost
            .add(pl.indirectly_lost.blocks, pl.indirectly_lost.bytes);
        out.reachable.add(pl.reachable.blocks, pl.reachable.bytes);
        out.suppressed
            .add(pl.suppressed.blocks, pl.suppressed.bytes);
        out.processes.push(pl);
    }
    // Unsuppressed first, then by bytes.
    lost.sort_by(|a, b| {
        a.suppressed_by
            .is_some()
            .cmp(&b.suppressed_by.is_some())
            .then(b.bytes.cmp(&a.bytes))
    });
    reach.sort_by_key(|g| std::cmp::Reverse(g.bytes));
    reach.truncate(REACHABLE_SHOWN);
    out.lost = lost;
    out.reachable_top = reach;
    out
}

fn group(class: u8, frames: &[Frame], suppressed_by: Option<String>) -> LeakGroup {
    let (module, function) = crate::suspects::owner(frames);
    LeakGroup {
        class: class_name(class).into(),
        blocks: 0,
        bytes: 0,
        pids: Vec::new(),
        module,
        function,
        js: crate::suspects::js_owner(frames),
        suppressed_by,
        frames: frames.to_vec(),
    }
}

/// The stream's leak check, for a reader that has no Model.
pub fn scanned(n: &NativeStream) -> bool {
    n.leaks.as_ref().is_some_and(|s| s.head.status == 0)
}

impl CheckOutcome {
    /// `summary.json` `check`: frames as in `suspects`.
    pub fn to_json(&self) -> serde_json::Value {
        let frames = |g: &LeakGroup| -> Vec<serde_json::Value> {
            g.frames
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "function": f.function, "module": f.module, "file": f.file,
                        "line": f.line, "kind": f.kind,
                    })
                })
                .collect()
        };
        let group = |g: &LeakGroup| {
            serde_json::json!({
                "class": g.class, "blocks": g.blocks, "bytes": g.bytes, "pids": g.pids,
                "module": g.module, "function": g.function, "js": g.js,
                "suppressed_by": g.suppressed_by, "frames": frames(g),
            })
        };
        serde_json::json!({
            "passed": self.passed,
            "gates": self.gates,
            "leaks_at_exit": {
                "definitely_lost": self.leaks.definitely_lost,
                "indirectly_lost": self.leaks.indirectly_lost,
                "reachable": self.leaks.reachable,
                "suppressed": self.leaks.suppressed,
                "processes": self.leaks.processes,
                "lost": self.leaks.lost.iter().map(group).collect::<Vec<_>>(),
                "reachable_top": self.leaks.reachable_top.iter().map(group).collect::<Vec<_>>(),
            },
            "config": self.config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("png_*", "png_create_read_struct"));
        assert!(!glob("png_*", "xpng_create"));
        assert!(glob("*libfoo.so*", "/usr/lib/libfoo.so.1"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b", "xxaxxbxx"));
    }

    #[test]
    fn suppression_files() {
        let s = parse_suppressions(
            "# third-party\nfunction:png_*\nmodule:*/libssl.so*\nleak:v8::internal\n\nstd::__cxx11::basic_string  # no prefix\n",
        )
        .unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].field, Field::Function);
        assert_eq!(s[1].field, Field::Module);
        assert_eq!(s[2].pattern, "*v8::internal*");
        assert_eq!(s[3].field, Field::Any);
        assert_eq!(s[3].pattern, "*std::__cxx11::basic_string*");
        let e = parse_suppressions("ok\nfunc:x\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_suppressions("function:\n").is_err());
    }

    #[test]
    fn growth_limits() {
        let g = parse_growth_limit("native=1MiB").unwrap();
        assert_eq!((g.kind, g.bytes), (GrowthKind::Native, 1 << 20));
        assert_eq!(parse_growth_limit("rss=512k").unwrap().bytes, 512 << 10);
        assert_eq!(parse_growth_limit("js-heap=0").unwrap().bytes, 0);
        assert_eq!(parse_growth_limit("external=10").unwrap().bytes, 10);
        assert!(parse_growth_limit("native").is_err());
        assert!(parse_growth_limit("disk=1MiB").is_err());
        assert!(parse_growth_limit("native=lots").is_err());
        assert!(parse_growth_limit("native=1XB").is_err());
        assert!(parse_growth_limit("native=-1MiB").is_err());
        assert!(parse_growth_limit("native=inf").is_err());
        let g = parse_growth_limit("native=2KiB/request").unwrap();
        assert_eq!((g.bytes, g.per_request), (2048, true));
        assert!(!parse_growth_limit("native=2KiB").unwrap().per_request);
        let g = parse_growth_limit("external=1KiB/iteration").unwrap();
        assert_eq!(
            (g.bytes, g.per_iteration, g.per_request),
            (1024, true, false)
        );
        assert!(parse_growth_limit("native=1KiB/minute").is_err());
        let it = [
            IterationCount { t: 1000.0, n: 10 },
            IterationCount { t: 2000.0, n: 30 },
            IterationCount { t: 3000.0, n: 60 },
        ];
        // Recording started at 0 ms: from 1.5 s (10 done) to 3 s (60).
        assert_eq!(iterations_between(&it, 0.0, 1.5, 3.0), 50);
        assert_eq!(iterations_between(&it, 0.0, 0.0, 0.5), 0);
        assert!(parse_growth_limit("native=2KiB/second").is_err());
    }
}
