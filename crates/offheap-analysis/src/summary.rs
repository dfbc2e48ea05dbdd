//! `summary.json`: the stable, documented digest of a Model. Later work adds
//! fields; the names here do not change.

use crate::model::{Growth, Kind, Model, Peak, ProcessModel, Suspect, Verdict};
use serde::Serialize;

#[derive(Serialize)]
pub struct Summary<'a> {
    pub offheap_version: &'a str,
    pub command: &'a [String],
    pub pid: u32,
    /// The target's exit status (128+signal if a signal killed it); null if unknown.
    pub exit_status: Option<i32>,
    pub duration_s: f64,
    /// Which process leaks, how and how fast, or that none does.
    pub headline: &'a str,
    /// The process `verdict`, `growth_bytes_per_s`, `peak` and `suspects`
    /// describe: the one that leaks fastest, else the target (`pid`).
    pub focus_pid: u32,
    pub verdict: SummaryVerdict<'a>,
    pub growth_bytes_per_s: &'a Growth,
    pub peak: &'a Peak,
    pub suspects: Vec<SummarySuspect<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap: Option<&'a serde_json::Value>,
    /// Native bytes tied to the JS that holds them; present when heap
    /// snapshots were taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<&'a [crate::owners::OwnerFinding]>,
    pub notes: &'a [String],
    /// Every resident byte of the focus process by part, at the end of the
    /// analysis window (docs/FORMAT.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_ledger: Option<crate::ledger::Ledger>,
    /// The same over the run, at most 200 moments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_ledger_timeline: Vec<crate::ledger::Ledger>,
    /// Every recorded process, the target first.
    pub processes: Vec<SummaryProcess<'a>>,
    /// `offheap check`'s gate (see `check.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<serde_json::Value>,
}

/// One recorded process (`summary.json` `processes`).
#[derive(Serialize)]
pub struct SummaryProcess<'a> {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub command: &'a str,
    /// The process offheap started or attached to.
    pub root: bool,
    /// The process the top-level figures describe.
    pub focus: bool,
    pub node: bool,
    pub native: bool,
    /// Seconds since the recording started.
    pub start_s: f64,
    pub end_s: f64,
    /// It ended well before the recording did.
    pub exited_early: bool,
    pub verdict: SummaryVerdict<'a>,
    pub growth_bytes_per_s: &'a Growth,
    pub peak: &'a Peak,
    /// Its first suspects (all of them for the focus: top-level `suspects`).
    pub suspects: Vec<SummarySuspect<'a>>,
    /// Where its timeline is drawn.
    pub timeline: String,
    pub notes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_ledger: Option<crate::ledger::Ledger>,
}

/// How many suspects each entry of `processes` lists.
pub const PROCESS_SUSPECTS: usize = 5;

#[derive(Serialize)]
pub struct SummaryVerdict<'a> {
    pub kinds: Vec<&'static str>,
    pub primary: &'static str,
    pub confidence: f64,
    pub explanation: &'a str,
    pub next_steps: &'a [String],
}

#[derive(Serialize)]
pub struct SummarySuspect<'a> {
    pub rank: u32,
    pub bytes_per_s: f64,
    pub live_bytes: u64,
    pub allocations: u64,
    pub module: &'a str,
    pub function: &'a str,
    pub hint: Option<&'a str>,
    /// `malloc`, `mmap` or `js-heap`.
    pub kind: &'static str,
    /// The application's own JS function on the stack (for threadpool work:
    /// the stack that queued it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub js: Option<&'a crate::model::JsOwner>,
    /// The JS thread (0: main) whose heap a js-heap suspect is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<u32>,
    /// Indices into `owners` of the findings that explain this suspect's bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<usize>,
    pub frames: Vec<SummaryFrame<'a>>,
}

#[derive(Serialize)]
pub struct SummaryFrame<'a> {
    pub function: &'a str,
    pub module: &'a str,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    pub kind: offheap_symbols::FrameKind,
}

static NO_STEPS: Vec<String> = Vec::new();

fn verdict_of(v: Option<&Verdict>) -> SummaryVerdict<'_> {
    match v {
        Some(v) => SummaryVerdict {
            kinds: v.kinds.iter().map(|k| k.as_str()).collect(),
            primary: v.primary.as_str(),
            confidence: v.confidence,
            explanation: &v.explanation,
            next_steps: &v.next_steps,
        },
        None => SummaryVerdict {
            kinds: vec![Kind::None.as_str()],
            primary: Kind::None.as_str(),
            confidence: 0.0,
            explanation: "no verdict",
            next_steps: &NO_STEPS,
        },
    }
}

fn suspect_of(s: &Suspect) -> SummarySuspect<'_> {
    SummarySuspect {
        rank: s.rank,
        bytes_per_s: s.bytes_per_s,
        live_bytes: s.live_bytes,
        allocations: s.allocations,
        module: &s.module,
        function: &s.function,
        hint: s.hint.as_deref(),
        kind: s.kind.as_str(),
        js: s.js.as_ref(),
        thread: s.thread,
        owners: Vec::new(),
        frames: s
            .frames
            .iter()
            .map(|f| SummaryFrame {
                function: &f.function,
                module: &f.module,
                file: f.file.as_deref(),
                line: f.line,
                kind: f.kind,
            })
            .collect(),
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn process_of(p: &ProcessModel, focus: bool) -> SummaryProcess<'_> {
    SummaryProcess {
        pid: p.pid,
        ppid: p.ppid,
        command: &p.command,
        root: p.root,
        focus,
        node: p.node,
        native: p.native,
        start_s: round3(p.start),
        end_s: round3(p.end),
        exited_early: p.exited_early,
        verdict: verdict_of(Some(&p.verdict)),
        growth_bytes_per_s: &p.growth,
        peak: &p.peak,
        suspects: p
            .suspects
            .iter()
            .take(PROCESS_SUSPECTS)
            .map(suspect_of)
            .collect(),
        timeline: format!("report.html#process-{}", p.pid),
        notes: &p.notes,
        rss_ledger: p.rss_ledger.as_ref().map(rounded),
    }
}

fn rounded(l: &crate::ledger::Ledger) -> crate::ledger::Ledger {
    crate::ledger::Ledger {
        at_s: round3(l.at_s),
        ..l.clone()
    }
}

impl Model {
    pub fn summary(&self) -> Summary<'_> {
        Summary {
            offheap_version: env!("CARGO_PKG_VERSION"),
            command: &self.meta.command,
            pid: self.meta.pid,
            // Attach detaches from a process that keeps running: no exit status.
            exit_status: self
                .end
                .as_ref()
                .filter(|e| e.reason != "detached")
                .map(|e| e.exit_status),
            duration_s: round3(self.recording_duration()),
            headline: &self.headline,
            focus_pid: if self.processes.is_empty() {
                self.meta.pid
            } else {
                self.focus
            },
            verdict: verdict_of(self.verdict.as_ref()),
            growth_bytes_per_s: &self.growth,
            peak: &self.peak,
            suspects: self
                .suspects
                .iter()
                .map(|s| {
                    let mut x = suspect_of(s);
                    x.owners = self
                        .owners
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| o.suspects.contains(&s.rank))
                        .map(|(i, _)| i)
                        .collect();
                    x
                })
                .collect(),
            heap: self.heap.as_ref(),
            owners: self.heap.as_ref().map(|_| self.owners.as_slice()),
            notes: &self.notes,
            rss_ledger: self.rss_ledger.as_ref().map(rounded),
            rss_ledger_timeline: crate::ledger::thin(&self.ledger, 200)
                .iter()
                .map(rounded)
                .collect(),
            processes: self
                .processes
                .iter()
                .map(|p| process_of(p, p.pid == self.focus))
                .collect(),
            check: self.check.as_ref().map(|c| c.to_json()),
        }
    }

    pub fn summary_json(&self) -> String {
        serde_json::to_string_pretty(&self.summary()).unwrap_or_else(|_| "{}".into())
    }
}
