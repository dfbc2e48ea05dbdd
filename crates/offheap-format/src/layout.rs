//! File names inside a recording directory.

/// Metadata written by the CLI when the recording starts.
pub const META: &str = "recording.json";
/// `/proc` samples of every watched process.
pub const PROC: &str = "proc.jsonl";
/// Written by the CLI when the target has ended.
pub const END: &str = "end.json";
/// Prefix of the JS agent's streams: `node-PID-THREADID.jsonl`.
pub const NODE_PREFIX: &str = "node-";
/// Suffix of the JS agent's streams.
pub const NODE_SUFFIX: &str = ".jsonl";
/// Prefix of the native agent's streams: `native-PID.bin`.
pub const NATIVE_PREFIX: &str = "native-";
/// Suffix of the native agent's streams.
pub const NATIVE_SUFFIX: &str = ".bin";
/// Prefix of the copies of V8's perf maps: `perf-PID.map`.
pub const PERF_MAP_PREFIX: &str = "perf-";
/// Suffix of the copies of V8's perf maps.
pub const PERF_MAP_SUFFIX: &str = ".map";
/// The JS agent, as written into the recording for the target to load.
pub const JS_AGENT: &str = "offheap-agent.js";
/// The native agent, as written into the recording for the target to preload.
pub const NATIVE_AGENT: &str = "liboffheap_agent.so";
/// Summary written by `run` and `report`.
pub const SUMMARY: &str = "summary.json";
/// Requests from the CLI to the JS agents (heap snapshots, a full GC,
/// detach), JSON lines appended by the CLI and read by every agent.
pub const CONTROL: &str = "control.jsonl";
/// The target's heap snapshot shortly after start (`--snapshots`).
pub const START_SNAPSHOT: &str = "start.heapsnapshot";
/// The target's heap snapshot at the end, when the heap or external memory grew.
pub const END_SNAPSHOT: &str = "end.heapsnapshot";
/// Suffix of the view geometry the JS agent writes beside each snapshot.
pub const VIEWS_SUFFIX: &str = ".views.json";
/// What `check --load` sent: requests, errors, when (written by the CLI).
pub const LOAD: &str = "load.json";
/// Where `offheap check`'s command reports its iterations: one line per
/// iteration, appended by the command (`$OFFHEAP_ITERATIONS`).
pub const ITERATIONS_LOG: &str = "iterations.log";
/// The iteration count over time, as the CLI read `iterations.log`.
pub const ITERATIONS: &str = "iterations.jsonl";
/// Heap-snapshot findings, computed from the snapshots in the recording.
pub const HEAP: &str = "heap.json";
/// The latest figures in Prometheus' text format.
pub const METRICS: &str = "metrics.prom";
