//! Reader-side types for the JSON streams, and [`Recording::open`].

use crate::native::NativeStream;
use crate::{io, layout};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// `recording.json`: what was recorded, how, and when.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Always [`crate::FORMAT_VERSION`] for files this version writes.
    pub format_version: u32,
    pub offheap_version: String,
    /// "run" or "attach".
    pub mode: String,
    /// The command as the user gave it (for attach: the target's cmdline).
    pub command: Vec<String>,
    /// The target's pid.
    pub pid: u32,
    /// Unix time in ms when recording started.
    pub start_ms: f64,
    /// Sampling period of the telemetry, in ms.
    pub interval_ms: u64,
    /// True if the target was recognised as Node.
    pub node: bool,
    /// Node flags offheap added (e.g. `--perf-basic-prof`).
    #[serde(default)]
    pub node_flags: Vec<String>,
    /// True if the native agent was preloaded.
    #[serde(default)]
    pub native: bool,
    /// Native sampling interval in bytes (1 = exact).
    #[serde(default)]
    pub sample_interval: u64,
    /// Free-form settings worth keeping (follow-fork, depth, ...).
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// `end.json`: how the target ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// Unix time in ms when the target ended (or recording stopped).
    pub end_ms: f64,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// offheap's own exit status: the code, or 128+signal.
    pub exit_status: i32,
    /// Why recording stopped: "exited", "killed", "duration", "detached".
    pub reason: String,
    /// Unix time in ms when the target was first asked to stop (the SIGINT
    /// of `--duration`, or a SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to offheap
    /// or the terminal), if it was. The analysis ends there: what a program
    /// frees while it shuts down says nothing about what it kept running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<f64>,
}

/// One `/proc` sample of one process. Sizes in bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// Unix time in ms.
    pub t: f64,
    pub pid: u32,
    /// From `/proc/PID/status`: VmRSS, RssAnon, RssFile, RssShmem, VmSwap, VmData, VmHWM...
    pub status: BTreeMap<String, u64>,
    /// From `/proc/PID/smaps_rollup`: Rss, Pss, Private_Dirty, Anonymous, Swap...
    #[serde(default)]
    pub smaps_rollup: BTreeMap<String, u64>,
    /// `/proc/PID/cmdline`, in the first sample of a process and whenever it
    /// changed (an exec); absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    /// `/proc/PID/smaps` sorted into classes, for the RSS ledger; absent in
    /// samples between two reads (spaced to cost under 1% of a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps: Option<MapClasses>,
}

/// Resident bytes of one process's mappings by class, from
/// `/proc/PID/smaps` (the CLI's reading; see docs/FORMAT.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapClasses {
    /// Sum of every mapping's Rss.
    pub rss: u64,
    /// Mappings of files (the program, its libraries, mapped data) and of
    /// the kernel (vdso).
    pub file: u64,
    /// The main thread's `[stack]` and pthread stacks (a read-write mapping
    /// right above its guard).
    pub stacks: u64,
    pub stack_count: u64,
    /// glibc's brk heap (`[heap]`: the main arena).
    pub brk_heap: u64,
    /// glibc's thread arenas (64 MiB-aligned heaps with a `heap_info`).
    pub arenas: u64,
    /// Bytes mapped (not only resident) of the brk heap and the arenas.
    pub arena_size: u64,
    /// glibc's mmapped chunks (blocks above the mmap threshold), resident
    /// and mapped.
    pub malloc_mmap: u64,
    pub malloc_mmap_size: u64,
    /// The zero-filled data (.bss) of offheap's own agent library.
    pub agent: u64,
    /// Every other anonymous mapping (the V8 heap, JIT code, mmaps of
    /// libraries and addons, offheap's agent's own mappings).
    pub anon: u64,
    /// Number of mappings, and what reading and sorting them cost.
    pub vmas: u64,
    pub cost_us: u64,
}

impl ProcSample {
    pub fn rss(&self) -> Option<u64> {
        self.status.get("VmRSS").copied()
    }
}

/// One line of a JS agent stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeRecord {
    /// First line of every stream.
    Hello(NodeHello),
    /// `process.memoryUsage()` and V8 heap statistics.
    Mem(NodeMem),
    /// One GC event from `perf_hooks`.
    Gc(NodeGc),
    /// A JS call frame of V8's sampling heap profiler, defined once.
    HeapFrame(HeapFrame),
    /// A JS stack of the sampling heap profiler (frame ids), defined once.
    HeapStack(HeapStack),
    /// Live sampled JS heap bytes per stack, at one moment.
    HeapProfile(HeapProfile),
    /// A heap snapshot the agent took (or failed to take) in the target.
    Snapshot(NodeSnapshot),
    /// The agent's answer to a request of `control.jsonl`.
    Ack(NodeAck),
    /// Something the agent wants the user to know.
    Note(NodeNote),
    /// The agent stopped (detach, exit, or offheap gone).
    Bye(NodeBye),
    /// The process is exiting: the agent's own exit work (a full GC, the
    /// last heap profile, perhaps the end snapshot) starts now.
    Exiting(NodeExiting),
    /// A record type this version does not know (a newer agent): skipped.
    #[serde(other)]
    Unknown,
}

/// `heap_frame`: one call frame of V8's sampling heap profiler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapFrame {
    /// Dense from 0 in the order of definition.
    pub id: u32,
    /// The JS function (empty for an anonymous one).
    pub function: String,
    /// The script (a path, `file://` URL or `node:` module; empty for V8's own).
    pub url: String,
    /// 1-based line and column of the function in the script (0: unknown).
    pub line: u32,
    #[serde(default)]
    pub column: u32,
}

/// `heap_stack`: frame ids, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapStack {
    pub id: u32,
    pub frames: Vec<u32>,
}

/// `heap_profile`: V8's estimate of the live bytes allocated at each stack
/// (objects sampled by bytes, Poisson, scaled: unbiased), at time `t`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapProfile {
    /// Unix time in ms.
    pub t: f64,
    /// Mean sampling interval in bytes.
    pub interval: u64,
    /// `[stack id, live bytes, live samples]`.
    pub sites: Vec<(u32, u64, u64)>,
    /// Taken at the process's normal exit, after its forced GC: it
    /// describes teardown (timers cleared, module state let go).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exit: bool,
}

/// `snapshot`: a heap snapshot written by the agent into the recording.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// Unix time in ms when it was started.
    pub t: f64,
    /// "start", "end", or another name the CLI asked for.
    pub name: String,
    /// The request id from `control.jsonl` (none for the agent's own at exit).
    #[serde(default)]
    pub request: Option<u64>,
    /// File name in the recording (absent when it failed).
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub bytes: u64,
    /// Views of big ArrayBuffers recorded beside it (`FILE.views.json`).
    #[serde(default)]
    pub views: u64,
    #[serde(default)]
    pub views_truncated: bool,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub heap_used: u64,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `ack`: a request was handled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeAck {
    pub t: f64,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub ok: bool,
}

/// `note`: free text from the agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeNote {
    pub t: f64,
    pub text: String,
}

/// `exiting`: the process's `exit` event reached the agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeExiting {
    pub t: f64,
}

/// `bye`: the agent's last record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeBye {
    pub t: f64,
    /// `process.exitCode` when the process was exiting.
    #[serde(default)]
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeHello {
    pub t: f64,
    pub pid: u32,
    pub thread_id: u32,
    pub node_version: String,
    pub v8_version: String,
    pub is_main_thread: bool,
    /// Version of the JS agent's stream.
    pub version: u32,
    #[serde(default)]
    pub exec_argv: Vec<String>,
    /// Mean sampling interval of V8's sampling heap profiler (0: off).
    #[serde(default)]
    pub heap_sample_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMem {
    pub t: f64,
    pub rss: u64,
    pub heap_total: u64,
    pub heap_used: u64,
    pub external: u64,
    pub array_buffers: u64,
    /// `v8.getHeapStatistics()`, keys as V8 names them.
    #[serde(default)]
    pub heap: BTreeMap<String, f64>,
    /// `v8.getHeapSpaceStatistics()`: space name -> its numbers.
    #[serde(default)]
    pub spaces: BTreeMap<String, BTreeMap<String, f64>>,
}

impl NodeMem {
    /// Bytes V8 committed to the young generation (`new_space` and
    /// `new_large_object_space`): bounded by V8's semi-space limit, it grows
    /// while a busy program warms up and is no leak.
    pub fn young_committed(&self) -> u64 {
        ["new_space", "new_large_object_space"]
            .iter()
            .filter_map(|n| self.spaces.get(*n)?.get("space_size"))
            .map(|v| v.max(0.0) as u64)
            .sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeGc {
    /// Unix time in ms when the GC started.
    pub t: f64,
    /// `detail.kind` (perf_hooks constants): 1 minor (scavenge), 4 major
    /// (mark-sweep-compact), 8 incremental marking, 16 weak callbacks.
    pub kind: u32,
    pub flags: u32,
    pub duration_ms: f64,
    /// heapUsed measured right after a major GC (kind 4), if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_used_after: Option<u64>,
    /// Bytes used in every space but the young generation, measured with
    /// `heap_used_after` (agents before 2026-12 did not record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_used_after: Option<u64>,
    /// The full GC of a heap-profile read: its figures were measured right
    /// after the read, so they are the retained heap exactly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

impl NodeGc {
    /// True for the full GC the JS agent runs when the target exits.
    pub fn forced(&self) -> bool {
        self.flags & 4 != 0
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "minor",
            2 => "minor-mc",
            4 => "major",
            8 => "incremental",
            16 => "weakcb",
            _ => "other",
        }
    }
}

/// One JS agent stream: one isolate (main thread or a worker) of one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStream {
    pub file: String,
    pub hello: Option<NodeHello>,
    pub mem: Vec<NodeMem>,
    pub gc: Vec<NodeGc>,
    /// Sampling heap profiler frames and stacks, indexed by id.
    pub heap_frames: Vec<HeapFrame>,
    pub heap_stacks: Vec<HeapStack>,
    pub heap_profiles: Vec<HeapProfile>,
    pub snapshots: Vec<NodeSnapshot>,
    pub acks: Vec<NodeAck>,
    pub notes: Vec<NodeNote>,
    pub bye: Option<NodeBye>,
}

impl NodeStream {
    pub fn pid(&self) -> Option<u32> {
        self.hello.as_ref().map(|h| h.pid)
    }
    pub fn is_main_thread(&self) -> bool {
        self.hello.as_ref().is_some_and(|h| h.is_main_thread)
    }
    /// The JS thread id (0 for the main thread).
    pub fn thread_id(&self) -> u32 {
        self.hello.as_ref().map_or(0, |h| h.thread_id)
    }

    /// Adds one record of the stream.
    pub fn push(&mut self, r: NodeRecord) {
        fn put<T>(v: &mut Vec<T>, id: u32, x: T, empty: impl Fn() -> T) {
            let i = id as usize;
            // Ids are dense; a corrupt huge id must not allocate without bound.
            if i > v.len() + 1_000_000 {
                return;
            }
            if v.len() <= i {
                v.resize_with(i + 1, empty);
            }
            v[i] = x;
        }
        match r {
            NodeRecord::Hello(h) => self.hello = Some(h),
            NodeRecord::Mem(m) => self.mem.push(m),
            NodeRecord::Gc(g) => self.gc.push(g),
            NodeRecord::HeapFrame(f) => put(&mut self.heap_frames, f.id, f, HeapFrame::default),
            NodeRecord::HeapStack(s) => put(&mut self.heap_stacks, s.id, s, HeapStack::default),
            NodeRecord::HeapProfile(p) => self.heap_profiles.push(p),
            NodeRecord::Snapshot(s) => self.snapshots.push(s),
            NodeRecord::Ack(a) => self.acks.push(a),
            NodeRecord::Note(n) => self.notes.push(n),
            NodeRecord::Bye(b) => self.bye = Some(b),
            NodeRecord::Exiting(_) => {}
            NodeRecord::Unknown => {}
        }
    }
}

/// The command's iteration count at a moment (`iterations.jsonl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationCount {
    /// Unix ms.
    pub t: f64,
    pub n: u64,
}

/// A whole recording, as read back.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub dir: PathBuf,
    pub meta: Meta,
    pub end: Option<End>,
    pub proc: Vec<ProcSample>,
    pub node: Vec<NodeStream>,
    pub native: Vec<NativeStream>,
    /// Copies of V8 perf maps: pid -> path in the recording.
    pub perf_maps: BTreeMap<u32, PathBuf>,
    /// Heap-snapshot findings (`heap.json`), if snapshots were taken.
    pub heap: Option<serde_json::Value>,
    /// The load `check --load` sent (`load.json`), if any.
    pub load: Option<serde_json::Value>,
    /// Iterations the command reported, over time (`iterations.jsonl`).
    pub iterations: Vec<IterationCount>,
    /// What was skipped or looked odd while reading; shown to the user.
    pub notes: Vec<String>,
}

/// Why a recording could not be read at all.
#[derive(Debug)]
pub enum OpenError {
    Missing(PathBuf),
    NotADirectory(PathBuf),
    Empty(PathBuf),
    BadMeta(PathBuf, String),
    TooNew(u32),
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Missing(p) => write!(f, "{}: no such recording directory", p.display()),
            OpenError::NotADirectory(p) => {
                write!(
                    f,
                    "{}: not a directory (give the recording directory that `offheap run` wrote)",
                    p.display()
                )
            }
            OpenError::Empty(p) => write!(
                f,
                "{}: not an offheap recording (no {} in it)",
                p.display(),
                layout::META
            ),
            OpenError::BadMeta(p, e) => {
                write!(f, "{}: corrupt recording metadata: {e}", p.display())
            }
            OpenError::TooNew(v) => write!(
                f,
                "recording format version {v} is newer than this offheap understands ({}); upgrade offheap",
                crate::FORMAT_VERSION
            ),
            OpenError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for OpenError {}

/// Reads a JSON-lines file leniently: every complete, parseable line is
/// returned; a truncated last line or a corrupt line is skipped and noted.
/// Only a regular file is read, never through a symlink; a line longer than
/// [`io::MAX_LINE`] is skipped, and reading stops after [`io::MAX_STREAM`]
/// bytes; both are noted.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path, notes: &mut Vec<String>) -> Vec<T> {
    read_jsonl_bounded(path, notes, io::MAX_LINE, io::MAX_STREAM)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_jsonl_bounded<T: serde::de::DeserializeOwned>(
    path: &Path,
    notes: &mut Vec<String>,
    max_line: usize,
    max_total: u64,
) -> Vec<T> {
    let name = file_name(path);
    let file = match io::open_recording_file(path) {
        Ok(f) => f,
        Err(e) => {
            notes.push(format!("{name}: unreadable ({e}); skipped"));
            return Vec::new();
        }
    };
    let (out, total) = read_lines(&name, &file, notes, max_line, max_total);
    if total >= max_total
        && let Ok(md) = file.metadata()
        && md.len() > max_total
    {
        notes.push(format!(
            "{name}: only the first {} of {} read; the rest skipped",
            io::human_size(max_total),
            io::human_size(md.len())
        ));
    }
    out
}

/// [`read_jsonl`] over any reader (`name` is the stream's name in notes):
/// a line longer than `max_line` is skipped, reading stops after
/// `max_total` bytes. What [`read_jsonl`] does once the file is open.
pub fn read_jsonl_from<T: serde::de::DeserializeOwned, R: Read>(
    name: &str,
    reader: R,
    notes: &mut Vec<String>,
    max_line: usize,
    max_total: u64,
) -> Vec<T> {
    read_lines(name, reader, notes, max_line, max_total).0
}

/// The records of a JSON-lines stream, and the bytes read.
fn read_lines<T: serde::de::DeserializeOwned, R: Read>(
    name: &str,
    reader: R,
    notes: &mut Vec<String>,
    max_line: usize,
    max_total: u64,
) -> (Vec<T>, u64) {
    let mut out = Vec::new();
    let mut reader = BufReader::new(reader.take(max_total));
    let mut line = Vec::new();
    let mut lineno = 0usize;
    let mut corrupt = 0usize;
    let mut long = 0usize;
    let mut total = 0u64;
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                notes.push(format!(
                    "{name}: read error after line {lineno} ({e}); rest skipped"
                ));
                break;
            }
        };
        total += n as u64;
        lineno += 1;
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > max_line {
            // Too long to be a record of ours: skip to the end of the line.
            long += 1;
            match skip_line(&mut reader) {
                Ok(n) => total += n,
                Err(_) => break,
            }
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice::<T>(text) {
            Ok(v) => out.push(v),
            Err(_) if !complete && total >= max_total => {}
            Err(_) if !complete => {
                notes.push(format!(
                    "{name}: last record (line {lineno}) is truncated; skipped"
                ));
            }
            Err(_) => corrupt += 1,
        }
    }
    if long > 0 {
        notes.push(format!(
            "{name}: {long} line(s) longer than {} skipped",
            io::human_size(max_line as u64)
        ));
    }
    if corrupt > 0 {
        notes.push(format!("{name}: {corrupt} corrupt line(s) skipped"));
    }
    (out, total)
}

/// Consumes up to and including the next newline; returns the bytes skipped.
fn skip_line<R: BufRead>(r: &mut R) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(skipped);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(skipped + i as u64 + 1);
            }
            None => {
                let n = buf.len();
                r.consume(n);
                skipped += n as u64;
            }
        }
    }
}

/// Reads a single-object JSON file of the recording (regular file only,
/// at most [`io::MAX_JSON`]).
fn read_json_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let (bytes, cut) = io::read_recording_file(path, io::MAX_JSON)?;
    match cut {
        None => Ok(bytes),
        Some(size) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is larger than the {} offheap reads",
                io::human_size(size),
                io::human_size(io::MAX_JSON)
            ),
        )),
    }
}

impl Recording {
    /// Opens a recording directory, reading everything that is readable.
    pub fn open(dir: &Path) -> Result<Recording, OpenError> {
        let md = fs::metadata(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OpenError::Missing(dir.to_path_buf()),
            _ => OpenError::Io(dir.to_path_buf(), e),
        })?;
        if !md.is_dir() {
            return Err(OpenError::NotADirectory(dir.to_path_buf()));
        }
        let meta_path = dir.join(layout::META);
        let meta_text = match read_json_file(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenError::Empty(dir.to_path_buf()));
            }
            Err(e) => return Err(OpenError::Io(meta_path, e)),
        };
        let meta: Meta = serde_json::from_slice(&meta_text)
            .map_err(|e| OpenError::BadMeta(meta_path.clone(), e.to_string()))?;
        if meta.format_version > crate::FORMAT_VERSION {
            return Err(OpenError::TooNew(meta.format_version));
        }
        let mut rec = Recording {
            dir: dir.to_path_buf(),
            meta,
            ..Default::default()
        };
        let mut notes = Vec::new();

        let end_path = dir.join(layout::END);
        match read_json_file(&end_path) {
            Ok(t) => match serde_json::from_slice::<End>(&t) {
                Ok(e) => rec.end = Some(e),
                Err(e) => notes.push(format!("{}: corrupt ({e}); treated as missing", layout::END)),
            },
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => notes.push(format!(
                "{}: unreadable ({e}); treated as missing",
                layout::END
            )),
            Err(_) => notes.push(format!(
                "{} is missing: the recording was cut short (offheap itself was killed?); analysing what was recorded",
                layout::END
            )),
        }

        let heap_path = dir.join(layout::HEAP);
        if heap_path.exists() {
            match fs::read(&heap_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                Some(v) => rec.heap = Some(v),
                None => notes.push(format!("{}: unreadable; skipped", layout::HEAP)),
            }
        }

        let load_path = dir.join(layout::LOAD);
        if fs::symlink_metadata(&load_path).is_ok() {
            match read_json_file(&load_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                Some(v) => rec.load = Some(v),
                None => notes.push(format!("{}: unreadable; skipped", layout::LOAD)),
            }
        }

        let it_path = dir.join(layout::ITERATIONS);
        if fs::symlink_metadata(&it_path).is_ok() {
            rec.iterations = read_jsonl(&it_path, &mut notes);
        }

        let proc_path = dir.join(layout::PROC);
        if fs::symlink_metadata(&proc_path).is_ok() {
            rec.proc = read_jsonl(&proc_path, &mut notes);
        }

        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| OpenError::Io(dir.to_path_buf(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with(layout::NODE_PREFIX) && name.ends_with(layout::NODE_SUFFIX) {
                let mut stream = NodeStream {
                    file: name.to_string(),
                    ..Default::default()
                };
                for r in read_jsonl::<NodeRecord>(&path, &mut notes) {
                    stream.push(r);
                }
                rec.node.push(stream);
            } else if name.starts_with(layout::NATIVE_PREFIX)
                && name.ends_with(layout::NATIVE_SUFFIX)
            {
                match crate::native::read_stream(&path) {
                    Ok(s) => {
                        for n in &s.notes {
                            notes.push(format!("{name}: {n}"));
                        }
                        rec.native.push(s)
                    }
                    Err(e) => notes.push(format!("{name}: unreadable ({e}); skipped")),
                }
            } else if let Some(pid) = name
                .strip_prefix(layout::PERF_MAP_PREFIX)
                .and_then(|s| s.strip_suffix(layout::PERF_MAP_SUFFIX))
                .and_then(|s| s.parse::<u32>().ok())
            {
                rec.perf_maps.insert(pid, path.clone());
            }
        }
        rec.notes = notes;
        Ok(rec)
    }

    /// The main-thread JS stream of the target process, if any.
    pub fn main_node_stream(&self) -> Option<&NodeStream> {
        self.node
            .iter()
            .find(|s| s.is_main_thread() && s.pid() == Some(self.meta.pid))
            .or_else(|| self.node.iter().find(|s| s.is_main_thread()))
    }

    /// The native stream of the target process, if any.
    pub fn main_native_stream(&self) -> Option<&NativeStream> {
        self.native
            .iter()
            .find(|s| s.pid == self.meta.pid)
            .or_else(|| self.native.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_skipped_and_reading_stops_at_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.jsonl");
        let long = format!("[{}]\n", "1,".repeat(100) + "1");
        fs::write(&p, format!("[1]\n{long}[2]\n{long}[3]\n[4]\n")).unwrap();
        let mut notes = Vec::new();
        let v: Vec<Vec<u32>> = read_jsonl_bounded(&p, &mut notes, 64, 1 << 20);
        assert_eq!(v, vec![vec![1], vec![2], vec![3], vec![4]]);
        assert_eq!(notes, vec!["s.jsonl: 2 line(s) longer than 64 B skipped"]);
        // Cut after 10 bytes: the first two short records only.
        fs::write(&p, "[1]\n[2]\n[3]\n[4]\n").unwrap();
        let mut notes = Vec::new();
        let v: Vec<Vec<u32>> = read_jsonl_bounded(&p, &mut notes, 64, 10);
        assert_eq!(v, vec![vec![1], vec![2]]);
        assert_eq!(
            notes,
            vec!["s.jsonl: only the first 10 B of 16 B read; the rest skipped"]
        );
    }

    #[test]
    fn a_stream_that_is_not_a_regular_file_is_skipped_with_a_note() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("proc.jsonl");
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let mut notes = Vec::new();
        let v: Vec<ProcSample> = read_jsonl(&p, &mut notes);
        assert!(v.is_empty());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("symbolic link"), "{notes:?}");
    }
}
