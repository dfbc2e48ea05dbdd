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

pub mod analysis;
pub mod heapsnapshot;
pub mod inspector;

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
