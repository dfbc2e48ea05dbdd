//! The Model: the one structure that flows from the analysis to every
//! reporter. A number that two outputs show is computed once, here.

use offheap_format::native::{AllocKind, ModuleRecord};
use offheap_format::{End, Meta};
use offheap_symbols::Frame;
use serde::{Deserialize, Serialize};

/// Verdict categories (`summary.json` `verdict.kinds`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The V8 heap retained after GC grows.
    JsHeap,
    /// `external` or `arrayBuffers` grow.
    External,
    /// Native (malloc/mmap) live bytes grow, or RSS grows with the V8 heap and external flat.
    Native,
    /// RSS grows while live native bytes stay flat and the allocator retains free memory.
    Fragmentation,
    /// Memory plateaus.
    #[default]
    None,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::JsHeap => "js-heap",
            Kind::External => "external",
            Kind::Native => "native",
            Kind::Fragmentation => "fragmentation",
            Kind::None => "none",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub kinds: Vec<Kind>,
    pub primary: Kind,
    /// 0.0-1.0
    pub confidence: f64,
    pub explanation: String,
    pub next_steps: Vec<String>,
}

/// Robust growth rates in bytes per second, after warm-up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    pub rss: f64,
    pub heap_used: f64,
    pub external: f64,
    pub array_buffers: f64,
    /// Sampled live native bytes (native agent); absent without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_live: Option<f64>,
    /// Free bytes the allocator retains (mallinfo2 fordblks); absent without the native agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator_free: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub rss: u64,
    pub heap_used: u64,
    pub external: u64,
    pub array_buffers: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_live: Option<u64>,
}

/// One named series of the timeline. `t` in seconds since the recording started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// "rss", "heap_used", "heap_total", "external", "array_buffers", "native_live", "allocator_retained"
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcMark {
    pub t: f64,
    /// "minor", "major", "incremental", "weakcb"
    pub kind: String,
    pub duration_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub series: Vec<Series>,
    pub gc: Vec<GcMark>,
    /// Seconds since start where the warm-up ends (analysis starts there).
    pub warmup_end: f64,
    pub duration: f64,
}

impl Timeline {
    pub fn series(&self, name: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.name == name)
    }
}

/// Which memory a suspect's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspectKind {
    /// malloc/new and friends (native agent).
    Malloc,
    /// Anonymous mmap (native agent).
    Mmap,
    /// Objects in the V8 heap (V8's sampling heap profiler, JS agent).
    JsHeap,
}

impl SuspectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SuspectKind::Malloc => "malloc",
            SuspectKind::Mmap => "mmap",
            SuspectKind::JsHeap => "js-heap",
        }
    }
}

impl From<AllocKind> for SuspectKind {
    fn from(k: AllocKind) -> Self {
        match k {
            AllocKind::Malloc => SuspectKind::Malloc,
            AllocKind::Mmap => SuspectKind::Mmap,
        }
    }
}

/// The user's own JavaScript on a suspect's stack: the function to change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsOwner {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
}

/// A suspect stack (`summary.json` `suspects`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    pub rank: u32,
    /// Sustained growth of live bytes (aged), bytes per second.
    pub bytes_per_s: f64,
    /// Peak live bytes in the analysis window (at its end, a Node target's
    /// exit has often freed what leaked).
    pub live_bytes: u64,
    /// Live allocations at that peak.
    pub allocations: u64,
    /// Module that owns it: the first frame in user code or an addon.
    pub module: String,
    /// The function in that module ("focus on your addon").
    pub function: String,
    /// A known culprit's explanation, if one matched.
    pub hint: Option<String>,
    pub kind: SuspectKind,
    /// The application's own JS function on the stack (for threadpool
    /// work: on the stack that queued it), if any.
    pub js: Option<JsOwner>,
    /// The JS thread (0: main) of a js-heap suspect from a worker's heap.
    pub thread: Option<u32>,
    /// Frames innermost first, allocator-internal frames collapsed.
    pub frames: Vec<Frame>,
}

/// One symbolized stack with its counters, for flame graphs, folded stacks and pprof.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileStack {
    /// Innermost first.
    pub frames: Vec<Frame>,
    pub kind: AllocKind,
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    /// Live at the end of the window.
    pub live_bytes: u64,
    pub live_count: u64,
    /// Growth of live bytes across the window ("leaked"), may be negative.
    pub growth_bytes: i64,
    pub growth_bytes_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub stacks: Vec<ProfileStack>,
    pub modules: Vec<ModuleRecord>,
    /// Mean sampling interval in bytes (1 = exact).
    pub sample_interval: u64,
    /// Analysis window, seconds since start.
    pub window: (f64, f64),
}

/// One recorded process (the target, or a child or descendant of it that
/// left a stream or was sampled in `/proc`): its own timeline, verdict and
/// suspects (`summary.json` `processes`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessModel {
    pub pid: u32,
    /// The parent's pid, if the recording knows it (native agent, `/proc`).
    pub ppid: Option<u32>,
    /// The command line (`/proc/PID/cmdline`), else the executable (native
    /// agent); for the target, the command as given. Empty if unknown.
    pub command: String,
    /// The process offheap started or attached to.
    pub root: bool,
    /// A JS agent stream of it was recorded.
    pub node: bool,
    /// A native agent stream of it was recorded.
    pub native: bool,
    /// Seconds since the recording started of its first and last data.
    pub start: f64,
    pub end: f64,
    /// Its data stopped well before the recording did: it exited early.
    pub exited_early: bool,
    pub timeline: Timeline,
    pub verdict: Verdict,
    pub growth: Growth,
    pub peak: Peak,
    pub suspects: Vec<Suspect>,
    /// What was skipped or looks odd in this process's streams.
    pub notes: Vec<String>,
    /// The RSS ledger at every interval that read the mappings.
    #[serde(default)]
    pub ledger: Vec<crate::ledger::Ledger>,
    /// The ledger at the end of the analysis window (before the shutdown
    /// that a stop asked for).
    #[serde(default)]
    pub rss_ledger: Option<crate::ledger::Ledger>,
}

impl ProcessModel {
    /// "pid 123 (node app.js)" for the target, "child 124 (./worker)" for a
    /// child of a recorded process, "process 125 (...)" otherwise (raw: a
    /// reporter escapes it).
    pub fn label(&self) -> String {
        let who = if self.root {
            "pid"
        } else if self.ppid.is_some() {
            "child"
        } else {
            "process"
        };
        if self.command.is_empty() {
            format!("{who} {}", self.pid)
        } else {
            format!("{who} {} ({})", self.pid, self.command)
        }
    }

    /// The growth rate behind its primary verdict, bytes per second (0 for none).
    pub fn leak_rate(&self) -> f64 {
        primary_rate(self.verdict.primary, &self.growth)
    }

    /// A leak (js-heap, external or native) is its primary verdict.
    pub fn leaks(&self) -> bool {
        matches!(
            self.verdict.primary,
            Kind::JsHeap | Kind::External | Kind::Native
        )
    }

    /// Worth a section of its own: a verdict other than none, or suspects.
    pub fn notable(&self) -> bool {
        self.verdict.primary != Kind::None || !self.suspects.is_empty()
    }
}

/// The growth rate that a verdict kind rests on.
pub fn primary_rate(kind: Kind, g: &Growth) -> f64 {
    match kind {
        Kind::JsHeap => g.heap_used,
        Kind::External => g.external.max(g.array_buffers),
        Kind::Native => g.native_live.filter(|&r| r > 0.0).unwrap_or(g.rss),
        Kind::Fragmentation => g.rss,
        Kind::None => 0.0,
    }
}

/// Everything a reporter needs.
///
/// With several recorded processes, `timeline`, `verdict`, `growth`,
/// `peak`, `suspects` and `profile` describe the *focus* process
/// (`focus`): the one that leaks fastest, else the target. `processes`
/// holds every process, the focus included.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Model {
    pub meta: Meta,
    pub end: Option<End>,
    pub timeline: Timeline,
    pub verdict: Option<Verdict>,
    pub growth: Growth,
    pub peak: Peak,
    pub suspects: Vec<Suspect>,
    pub profile: Profile,
    /// Heap-snapshot findings (`summary.json` `heap`), if snapshots were taken.
    pub heap: Option<serde_json::Value>,
    /// Native bytes tied to the JS that holds them (suspects joined with
    /// the snapshot's native wrappers), largest first.
    #[serde(default)]
    pub owners: Vec<crate::owners::OwnerFinding>,
    /// What was skipped or looks odd; shown to the user.
    pub notes: Vec<String>,
    /// Every recorded process, the target first, then by start time.
    #[serde(default)]
    pub processes: Vec<ProcessModel>,
    /// The pid the top-level figures describe.
    #[serde(default)]
    pub focus: u32,
    /// One line: which process leaks, how, how fast ("native leak in child
    /// 124 (./worker): +10.0 MiB/s"), or that none does.
    #[serde(default)]
    pub headline: String,
    /// The focus process's RSS ledger over the run, and at the end of the
    /// analysis window.
    #[serde(default)]
    pub ledger: Vec<crate::ledger::Ledger>,
    #[serde(default)]
    pub rss_ledger: Option<crate::ledger::Ledger>,
    /// `offheap check`'s gate: leaks at exit and growth limits, if this is
    /// a recording of `check` or an agent ran a leak check.
    #[serde(default)]
    pub check: Option<crate::check::CheckOutcome>,
}

impl Model {
    /// The focus process (see [`Model`]), if processes were analysed.
    pub fn focus_process(&self) -> Option<&ProcessModel> {
        self.processes.iter().find(|p| p.pid == self.focus)
    }

    /// How long the recording ran, in seconds (the target's timeline: the
    /// focus may be a child that ended earlier).
    pub fn recording_duration(&self) -> f64 {
        self.processes
            .iter()
            .find(|p| p.root)
            .map_or(self.timeline.duration, |p| p.timeline.duration)
    }

    /// A Model of one process alone, for rendering its section with the
    /// same code as the top level (no profile, no heap findings).
    pub fn process_view(&self, p: &ProcessModel) -> Model {
        let mut meta = self.meta.clone();
        meta.pid = p.pid;
        meta.node = p.node;
        meta.native = p.native;
        if !p.root {
            meta.command = vec![p.command.clone()];
        }
        Model {
            meta,
            end: if p.root { self.end.clone() } else { None },
            timeline: p.timeline.clone(),
            verdict: Some(p.verdict.clone()),
            growth: p.growth.clone(),
            peak: p.peak.clone(),
            suspects: p.suspects.clone(),
            profile: Profile::default(),
            heap: None,
            owners: Vec::new(),
            notes: p.notes.clone(),
            processes: Vec::new(),
            focus: p.pid,
            headline: String::new(),
            ledger: p.ledger.clone(),
            rss_ledger: p.rss_ledger.clone(),
            check: None,
        }
    }
}
