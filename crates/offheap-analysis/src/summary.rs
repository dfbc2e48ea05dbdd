//! `summary.json`: the stable, documented digest of a Model. Later work adds
//! fields; the names here do not change.

use crate::model::{Growth, Kind, Model, Peak};
use serde::Serialize;

#[derive(Serialize)]
pub struct Summary<'a> {
    pub offheap_version: &'a str,
    pub command: &'a [String],
    pub pid: u32,
    /// The target's exit status (128+signal if a signal killed it); null if unknown.
    pub exit_status: Option<i32>,
    pub duration_s: f64,
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
}

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

impl Model {
    pub fn summary(&self) -> Summary<'_> {
        let verdict = match &self.verdict {
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
        };
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
            duration_s: (self.timeline.duration * 1000.0).round() / 1000.0,
            verdict,
            growth_bytes_per_s: &self.growth,
            peak: &self.peak,
            suspects: self
                .suspects
                .iter()
                .map(|s| SummarySuspect {
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
                    owners: self
                        .owners
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| o.suspects.contains(&s.rank))
                        .map(|(i, _)| i)
                        .collect(),
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
                })
                .collect(),
            heap: self.heap.as_ref(),
            owners: self.heap.as_ref().map(|_| self.owners.as_slice()),
            notes: &self.notes,
        }
    }

    pub fn summary_json(&self) -> String {
        serde_json::to_string_pretty(&self.summary()).unwrap_or_else(|_| "{}".into())
    }
}
