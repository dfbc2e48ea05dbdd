//! What is specific to Node.js: the JS agent injected with `--require`,
//! the inspector (CDP) client used by `attach` and `snapshot`, and the
//! streaming `.heapsnapshot` analyser.
//!
//! Entry points for the CLI:
//! - [`analyze_file`]: one snapshot file, offline (hostage buffers are estimates);
//! - [`compare_files`]: what grew between two snapshots of one process;
//! - [`snapshot_pid`]: open the inspector of a running process (SIGUSR1), stream a
//!   snapshot to disk, analyse it, confirm hostage buffers live, close the inspector;
//! - [`snapshot_session`]: the same over an [`Inspector`] the caller keeps open
//!   (e.g. `attach`, which also polls telemetry through [`Inspector::evaluate`]).
//!
//! Reports serialize (serde) with the names `summary.json` uses under `"heap"`:
//! [`SnapshotReport::hostage_buffers`], [`SnapshotReport::top_retainers`] and
//! [`CompareReport::growing`]; [`HeapSummary::new`] puts them together in that
//! shape. `to_text()` renders them for the terminal.

/// The JS agent, embedded in the binary and written into each recording.
pub const JS_AGENT: &str = include_str!("agent.js");

/// What the JS agent is told when it starts (`start(cfg)` in agent.js).
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// The recording directory.
    pub dir: PathBuf,
    /// Telemetry period.
    pub interval_ms: u64,
    /// "run" or "attach".
    pub mode: String,
    /// Children keep offheap's NODE_OPTIONS (`--follow-exec`).
    pub follow_exec: bool,
    /// The user's NODE_OPTIONS before offheap added its own (None: unset),
    /// restored for children unless `follow_exec`.
    pub node_options: Option<String>,
    /// Mean sampling interval of V8's sampling heap profiler (0: off).
    pub heap_sample_bytes: u64,
    /// The longest gap between two reads of the heap profile when nothing
    /// suggests the heap grew (agent.js `heapDue`).
    pub heap_profile_ms: u64,
    /// `--snapshots`: the agent takes the end snapshot at exit when the heap grew.
    pub snapshots: bool,
    pub track_allocations: bool,
    /// Largest heap the agent snapshots at exit (bytes).
    pub exit_snapshot_max_heap: u64,
    /// offheap's pid: the agent stops recording when it is gone.
    pub cli_pid: u32,
    /// Under attach: connect the in-process session only once the TCP
    /// inspector offheap opened is closed again.
    pub wait_inspector_close: bool,
}

/// Default mean sampling interval of V8's sampling heap profiler.
pub const HEAP_SAMPLE_BYTES: u64 = 512 * 1024;

/// The agent's source as `run` writes it into the recording: its
/// configuration in front, so the agent needs no environment variables.
pub fn js_agent_source(cfg: &AgentConfig) -> String {
    let json = serde_json::to_string(cfg).unwrap_or_else(|_| "null".into());
    format!("const OFFHEAP_CONFIG = {json};\n{JS_AGENT}")
}

/// The expression `attach` evaluates in the target: the agent, started.
pub fn js_agent_expression(cfg: &AgentConfig) -> String {
    let json = serde_json::to_string(cfg).unwrap_or_else(|_| "null".into());
    format!(
        "(function (module) {{ {JS_AGENT}\n; const s = module.exports.start({json}); return s && s.fd >= 0 ? 'started' : 'cannot-write'; }})({{ exports: {{}} }})"
    )
}

pub mod analysis;
pub mod heapsnapshot;
pub mod inspector;
pub mod wrappers;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use analysis::{
    AnalyzeOptions, CompareReport, Growing, HeapSummary, HostageGroup, RetainerFinding,
    SnapshotReport,
};
pub use heapsnapshot::{HeapSnapshot, SnapshotError};
pub use inspector::{Inspector, InspectorError};
pub use wrappers::WrapperGroup;

/// Errors of the public entry points.
#[derive(Debug)]
pub enum Error {
    /// A file could not be opened, created or written.
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The snapshot could not be parsed.
    Snapshot {
        path: PathBuf,
        source: SnapshotError,
    },
    /// Talking to the live process failed.
    Inspector(InspectorError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::File { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Snapshot { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Inspector(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::File { source, .. } => Some(source),
            Error::Snapshot { source, .. } => Some(source),
            Error::Inspector(e) => Some(e),
        }
    }
}

impl From<InspectorError> for Error {
    fn from(e: InspectorError) -> Self {
        Error::Inspector(e)
    }
}

fn load(path: &Path) -> Result<HeapSnapshot, Error> {
    let f = std::fs::File::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    HeapSnapshot::from_reader(f).map_err(|source| Error::Snapshot {
        path: path.to_path_buf(),
        source,
    })
}

/// Analyse a `.heapsnapshot` file offline (hostage buffers are estimates).
pub fn analyze_file(path: &Path, opts: &AnalyzeOptions) -> Result<SnapshotReport, Error> {
    let s = load(path)?;
    Ok(analysis::analyze(
        &s,
        &path.display().to_string(),
        opts,
        None,
    ))
}

/// The view geometry the JS agent recorded beside a snapshot it took
/// (`FILE.views.json`: `{"views": [[heap id, byte offset, byte length,
/// parent bytes], ...]}`), by heap object id. Empty if the file is missing
/// or unreadable.
pub fn recorded_views(path: &Path) -> std::collections::HashMap<u64, analysis::ViewGeometry> {
    #[derive(serde::Deserialize)]
    struct Views {
        views: Vec<(u64, u64, u64, u64)>,
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    let v: Views = serde_json::from_slice(&bytes).unwrap_or(Views { views: Vec::new() });
    v.views
        .into_iter()
        .map(|(id, off, len, parent)| {
            (
                id,
                analysis::ViewGeometry {
                    byte_offset: off,
                    byte_length: len,
                    parent_bytes: parent,
                },
            )
        })
        .collect()
}

/// Analyse a snapshot the JS agent took inside the target, with the view
/// geometry it recorded beside it (`views`): hostage buffers are confirmed
/// as if read from the live process, without a round trip to it.
pub fn analyze_recorded(
    path: &Path,
    views: &Path,
    opts: &AnalyzeOptions,
) -> Result<SnapshotReport, Error> {
    let s = load(path)?;
    let geo = recorded_views(views);
    let mut lookup = |ids: &[u64]| {
        ids.iter()
            .filter_map(|id| geo.get(id).map(|g| (*id, *g)))
            .collect()
    };
    let geometry: Option<&mut analysis::GeometryFn<'_>> = if views.exists() {
        Some(&mut lookup)
    } else {
        None
    };
    Ok(analysis::analyze(
        &s,
        &path.display().to_string(),
        opts,
        geometry,
    ))
}

/// Compare two snapshots of one process (`a` taken before `b`). Only one
/// snapshot is in memory at a time.
pub fn compare_files(a: &Path, b: &Path, opts: &AnalyzeOptions) -> Result<CompareReport, Error> {
    let base = {
        let s = load(a)?;
        analysis::Baseline::of(&s, &a.display().to_string())
    };
    let s = load(b)?;
    Ok(analysis::compare(&base, &s, &b.display().to_string(), opts))
}

/// Result of [`snapshot_pid`].
#[derive(Debug)]
pub struct LiveSnapshot {
    /// Where the snapshot was written.
    pub path: PathBuf,
    pub bytes: u64,
    /// Analysis, with hostage buffers confirmed against the live process.
    pub report: SnapshotReport,
}

/// Create `path` for writing with mode 0600 (snapshots contain the process's data).
pub fn create_private(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })
}

/// Take a snapshot over an open session, write it to `out_path`, analyse it
/// and confirm hostage buffers live. The session stays open.
pub fn snapshot_session(
    insp: &mut Inspector,
    out_path: &Path,
    opts: &AnalyzeOptions,
) -> Result<LiveSnapshot, Error> {
    let f = create_private(out_path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let bytes = insp
        .take_heap_snapshot(&mut w, &mut |_, _| {})
        .map_err(|e| match e {
            InspectorError::Io(source) => Error::File {
                path: out_path.to_path_buf(),
                source,
            },
            e => Error::Inspector(e),
        })?;
    w.flush().map_err(|source| Error::File {
        path: out_path.to_path_buf(),
        source,
    })?;
    drop(w);
    let report = analyze_live(insp, out_path, opts)?;
    Ok(LiveSnapshot {
        path: out_path.to_path_buf(),
        bytes,
        report,
    })
}

/// Analyse a snapshot file taken from the process behind `insp`, confirming
/// hostage buffers with the live view geometry (the process must still hold
/// the objects: call it right after taking the snapshot).
pub fn analyze_live(
    insp: &mut Inspector,
    path: &Path,
    opts: &AnalyzeOptions,
) -> Result<SnapshotReport, Error> {
    let s = load(path)?;
    let mut live_err: Option<InspectorError> = None;
    let mut geo = |ids: &[u64]| match insp.query_view_geometry(ids) {
        Ok(m) => m,
        Err(e) => {
            live_err = Some(e);
            Default::default()
        }
    };
    let mut report = analysis::analyze(&s, &path.display().to_string(), opts, Some(&mut geo));
    if let Some(e) = live_err {
        report.warnings.push(format!(
            "could not read view geometry from the live process: {e}"
        ));
    }
    Ok(report)
}

/// Open the inspector of process `pid` (SIGUSR1), stream a heap snapshot to
/// `out_path`, analyse it, confirm hostage buffers live, and close the
/// inspector again if offheap opened it.
pub fn snapshot_pid(
    pid: u32,
    out_path: &Path,
    opts: &AnalyzeOptions,
) -> Result<LiveSnapshot, Error> {
    let mut insp = Inspector::open(pid, Duration::from_secs(10))?;
    let r = snapshot_session(&mut insp, out_path, opts);
    let closed = insp.close();
    let r = r?;
    closed?;
    Ok(r)
}
