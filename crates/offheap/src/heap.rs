//! Heap snapshots, taken inside the target by its JS agent on request, and
//! the findings made from them once they are in the recording.
//!
//! No inspector port is opened for them: the CLI appends a request to the
//! recording's `control.jsonl`, the agent (polling it every interval) takes
//! the snapshot through an in-process `inspector.Session`, writes it and the
//! geometry of the views of big ArrayBuffers beside it, and acknowledges.
//! The recording loop never blocks on it; the findings are computed after
//! the target has ended, from the files alone (`heap.json`), so `report`
//! recomputes nothing it cannot read.

use crate::collect::Collector;
use offheap_format::layout;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Appends requests to `control.jsonl`.
pub struct Control {
    path: PathBuf,
    next: u64,
}

impl Control {
    pub fn new(dir: &Path) -> Control {
        Control {
            path: dir.join(layout::CONTROL),
            next: 1,
        }
    }

    /// Sends `op` (with `extra` fields) to the main thread of `pid`; its id.
    pub fn send(&mut self, pid: u32, op: &str, extra: serde_json::Value) -> Option<u64> {
        let id = self.next;
        self.next += 1;
        let mut req = serde_json::json!({"id": id, "op": op, "pid": pid, "thread": 0});
        if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        let line = format!("{req}\n");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .ok()?;
        f.write_all(line.as_bytes()).ok()?;
        Some(id)
    }
}

/// How long a heap snapshot may take before the run goes on without it.
pub const SNAPSHOT_BUDGET: Duration = Duration::from_secs(30);

/// `--snapshots`: a snapshot shortly after the start, and one at the end
/// when the JS heap, external memory or native memory grows.
pub struct Snapshots {
    enabled: bool,
    started: bool,
    /// The start snapshot's request.
    start_id: Option<u64>,
    /// The end snapshot was decided on (asked for, or not needed): once.
    end_decided: bool,
    /// The end snapshot's request, and when it was sent.
    end: Option<(u64, Instant)>,
    /// The end snapshot's request after its budget ran out: the target may
    /// still be taking it.
    end_overdue: Option<u64>,
    pub notes: Vec<String>,
}

impl Snapshots {
    pub fn new(enabled: bool) -> Snapshots {
        Snapshots {
            enabled,
            started: false,
            start_id: None,
            end_decided: false,
            end: None,
            end_overdue: None,
            notes: Vec::new(),
        }
    }

    /// Asks for the start snapshot (once).
    pub fn start(&mut self, control: &mut Control, pid: u32) {
        if !self.enabled || self.started {
            return;
        }
        self.started = true;
        let req = serde_json::json!({"name": "start", "file": layout::START_SNAPSHOT});
        self.start_id = control.send(pid, "snapshot", req);
        if self.start_id.is_none() {
            self.notes
                .push("no heap snapshots: cannot write the request into the recording".into());
        }
    }

    /// Before the target is stopped: asks for the end snapshot if the
    /// verdict so far calls for one. True if one was requested.
    pub fn request_end(&mut self, control: &mut Control, pid: u32, dir: &Path) -> bool {
        if !self.enabled || !self.started || self.end_decided {
            return false;
        }
        self.end_decided = true;
        if !heap_grows(dir) {
            self.notes.push(
                "no end heap snapshot: neither the JS heap, external memory nor native memory grows"
                    .into(),
            );
            return false;
        }
        let req = serde_json::json!({"name": "end", "file": layout::END_SNAPSHOT});
        match control.send(pid, "snapshot", req) {
            Some(id) => {
                self.end = Some((id, Instant::now()));
                true
            }
            None => false,
        }
    }

    /// True while the end snapshot is being taken (within its budget).
    pub fn end_pending(&mut self, c: &Collector) -> bool {
        let Some((id, since)) = self.end else {
            return false;
        };
        if c.acks.contains(&id) || c.agent_gone {
            return false;
        }
        if since.elapsed() >= SNAPSHOT_BUDGET {
            self.notes.push(format!(
                "the end heap snapshot took more than {} s: the target was stopped without waiting for it",
                SNAPSHOT_BUDGET.as_secs()
            ));
            self.end_overdue = Some(id);
            self.end = None;
            return false;
        }
        true
    }

    /// True while the target may be busy with a snapshot offheap asked for
    /// (the start one, or an end one past its budget): a signal sent to
    /// stop it waits until the snapshot is written, and its grace with it.
    pub fn in_flight(&self, c: &Collector) -> bool {
        // Only a JS agent that runs answers (it acks every request, done or
        // failed); without one nothing is being written.
        if c.agent_gone || c.last_node.is_none() {
            return false;
        }
        let pending = |id: Option<u64>| id.is_some_and(|id| !c.acks.contains(&id));
        pending(self.start_id) || pending(self.end_overdue) || pending(self.end.map(|e| e.0))
    }

    /// After the run: notes on what could not be taken.
    pub fn finish(&mut self, dir: &Path) {
        if self.enabled && !self.started {
            self.notes.push(
                "the target ended before the first heap snapshot (taken 1.5 s after start)".into(),
            );
        } else if self.enabled && !dir.join(layout::START_SNAPSHOT).exists() {
            self.notes
                .push("the start heap snapshot was not taken (the target ended first?)".into());
        }
    }
}

/// True if the recording so far says the JS heap, external memory or
/// native memory grows: the verdicts an end-of-run heap snapshot can
/// explain (native: by the JS that holds the native wrappers).
///
/// A run stopped early (a short `--duration`, a target stalled by the start
/// snapshot) may be too short for a verdict: then a plain rise of heapUsed
/// or external memory since the first half of the run, by 8 MiB and a
/// tenth, is enough (the same test the JS agent makes at exit).
pub fn heap_grows(dir: &Path) -> bool {
    let Ok(model) = crate::reporting::build_model(dir, 0.0) else {
        return false;
    };
    let by_verdict = model.verdict.as_ref().is_some_and(|v| {
        v.kinds.iter().any(|k| {
            matches!(
                k,
                offheap_analysis::Kind::JsHeap
                    | offheap_analysis::Kind::External
                    | offheap_analysis::Kind::Native
            )
        })
    });
    let rose = |name: &str| {
        model.timeline.series(name).is_some_and(|s| {
            let half = model.timeline.duration / 2.0;
            let early = s
                .points
                .iter()
                .filter(|p| p.0 <= half)
                .map(|p| p.1)
                .fold(f64::INFINITY, f64::min);
            let last = s.points.last().map_or(0.0, |p| p.1);
            early.is_finite() && last - early > (8.0 * 1024.0 * 1024.0f64).max(early / 10.0)
        })
    };
    by_verdict || rose("heap_used") || rose("external")
}

/// The findings of the snapshots in the recording (the last one's, and
/// what grew since the first), written to `heap.json`. Notes say what was
/// skipped.
pub fn write_findings(dir: &Path, notes: &mut Vec<String>) {
    let opts = offheap_node::AnalyzeOptions::default();
    let mut analyse = |name: &str| -> Option<offheap_node::SnapshotReport> {
        let path = dir.join(name);
        if !path.is_file() {
            return None;
        }
        let views = dir.join(format!("{name}{}", layout::VIEWS_SUFFIX));
        match offheap_node::analyze_recorded(&path, &views, &opts) {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("heap snapshot {name} skipped: {e}"));
                None
            }
        }
    };
    let first = analyse(layout::START_SNAPSHOT);
    let last = analyse(layout::END_SNAPSHOT);
    let Some(latest) = last.as_ref().or(first.as_ref()) else {
        return;
    };
    let compare = match (&first, &last) {
        (Some(_), Some(_)) => offheap_node::compare_files(
            &dir.join(layout::START_SNAPSHOT),
            &dir.join(layout::END_SNAPSHOT),
            &opts,
        )
        .ok(),
        _ => None,
    };
    let mut summary = offheap_node::analysis::HeapSummary::new(latest, compare.as_ref());
    if let (Some(f), Some(_)) = (&first, &last) {
        offheap_node::wrappers::with_baseline(&mut summary.native_wrappers, &f.native_wrappers);
    }
    match serde_json::to_vec_pretty(&summary) {
        Ok(bytes) => {
            if let Err(e) = crate::run::write_bytes(&dir.join(layout::HEAP), &bytes) {
                notes.push(format!("cannot write {}: {e}", layout::HEAP));
            }
        }
        Err(e) => notes.push(format!("heap findings not written: {e}")),
    }
}
