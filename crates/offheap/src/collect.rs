//! What the CLI collects beside the target while it runs: `/proc` samples,
//! copies of V8's perf maps, and the latest JS agent figures for the status
//! line. Everything is appended to the recording and flushed each interval.

use offheap_format::{NodeMem, NodeRecord, ProcSample, layout};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Prometheus text-format metrics file in the recording directory.
pub const METRICS: &str = "metrics.prom";

/// Unix time in milliseconds.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Opens a file of the recording for appending, 0600.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Reads `/proc/PID/status` and `/proc/PID/smaps_rollup`. None once the process is gone.
pub fn sample_proc(pid: u32) -> Option<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut s = ProcSample {
        t: now_ms(),
        pid,
        ..Default::default()
    };
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if matches!(
            k,
            "VmRSS"
                | "RssAnon"
                | "RssFile"
                | "RssShmem"
                | "VmSwap"
                | "VmData"
                | "VmHWM"
                | "VmSize"
                | "Threads"
                | "PPid"
        ) && let Some(n) = parse_kb(v, matches!(k, "Threads" | "PPid"))
        {
            s.status.insert(k.to_string(), n);
        }
    }
    if !s.status.contains_key("VmRSS") {
        return None; // zombie (or kernel thread): no memory left to describe
    }
    if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        for line in rollup.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':')
                && let Some(n) = parse_kb(v, false)
            {
                s.smaps_rollup.insert(k.trim().to_string(), n);
            }
        }
    }
    Some(s)
}

/// `/proc/PID/cmdline` as arguments (empty for a kernel thread, a zombie or
/// a process gone), at most 64 arguments of 4 KiB together.
pub fn cmdline(pid: u32) -> Vec<String> {
    let Ok(f) = File::open(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if f.take(4096).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    buf.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .take(64)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The children of `pid`: `/proc/PID/task/TID/children` of each of its threads.
fn children(pid: u32, out: &mut Vec<u32>) {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for e in rd.flatten() {
        if let Ok(text) = fs::read_to_string(e.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
}

/// Every live descendant of `root` (not `root` itself), at most `limit`.
pub fn descendants(root: u32, limit: usize) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let mut queue = vec![root];
    let mut kids = Vec::new();
    while let Some(p) = queue.pop() {
        kids.clear();
        children(p, &mut kids);
        for &k in &kids {
            if k != root && found.len() < limit && found.insert(k) {
                queue.push(k);
            }
        }
    }
    found
}

fn parse_kb(v: &str, plain: bool) -> Option<u64> {
    let mut it = v.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    Some(if plain || it.next() != Some("kB") {
        n
    } else {
        n * 1024
    })
}

/// Copies `/tmp/perf-PID.map` into the recording incrementally while the
/// target runs (the map may vanish), noting when each chunk was first seen
/// in `perf-PID.map.times` (`BYTE_OFFSET UNIX_MS` lines).
struct PerfMapCopy {
    src: PathBuf,
    dst: PathBuf,
    times: PathBuf,
    copied: u64,
}

impl PerfMapCopy {
    fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.src) else {
            return;
        };
        let Ok(md) = f.metadata() else { return };
        if md.len() <= self.copied || f.seek(SeekFrom::Start(self.copied)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.take(md.len() - self.copied)
            .read_to_end(&mut buf)
            .is_err()
        {
            return;
        }
        // Only whole lines: V8 may be mid-write.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let chunk = &buf[..=end];
        let (Ok(mut out), Ok(mut times)) = (open_append(&self.dst), open_append(&self.times))
        else {
            return;
        };
        if out.write_all(chunk).is_ok()
            && writeln!(times, "{} {:.0}", self.copied, now_ms()).is_ok()
        {
            self.copied += chunk.len() as u64;
        }
    }
}

/// Follows the main-thread JS stream of the target for the status line.
struct NodeTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// The agent wrote `exiting`: the process is on its way out.
    exiting: bool,
}

impl NodeTail {
    /// New records: the last memory figures, and the ids of acknowledged requests.
    fn poll(&mut self, acks: &mut BTreeSet<u64>, bye: &mut bool) -> Option<NodeMem> {
        let mut f = File::open(&self.path).ok()?;
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let end = self.partial.iter().rposition(|&b| b == b'\n')?;
        let mut last = None;
        for line in self.partial[..end].split(|&b| b == b'\n') {
            match serde_json::from_slice::<NodeRecord>(line) {
                Ok(NodeRecord::Mem(m)) => last = Some(m),
                Ok(NodeRecord::Ack(a)) => {
                    acks.extend(a.id);
                }
                Ok(NodeRecord::Bye(_)) => *bye = true,
                Ok(NodeRecord::Exiting(_)) => self.exiting = true,
                _ => {}
            }
        }
        self.partial.drain(..=end);
        last
    }
}

/// Everything collected per interval.
pub struct Collector {
    dir: PathBuf,
    target: u32,
    proc_out: File,
    perf_maps: BTreeMap<u32, PerfMapCopy>,
    node_tail: Option<NodeTail>,
    /// Latest figures, for the status line.
    pub last_proc: Option<ProcSample>,
    pub last_node: Option<NodeMem>,
    /// Requests of `control.jsonl` the target's main-thread JS agent answered.
    pub acks: BTreeSet<u64>,
    /// The target's main-thread JS agent said goodbye (stopped, or exiting).
    pub agent_gone: bool,
    gone: BTreeSet<u32>,
    /// The last command line written for each process.
    cmdlines: BTreeMap<u32, Vec<String>>,
    /// The recording interval, and when each process's smaps is next read.
    pub interval: std::time::Duration,
    maps_due: BTreeMap<u32, std::time::Instant>,
    /// The target's latest classes of mappings, for the live ledger.
    last_maps: Option<offheap_format::MapClasses>,
    /// `iterations.log` as far as it was read: (file, bytes read, lines).
    iterations: Option<(File, u64, u64)>,
}

/// At most this many descendants of the target are sampled each interval.
const MAX_DESCENDANTS: usize = 1024;

impl Collector {
    pub fn new(dir: &Path, target: u32) -> std::io::Result<Collector> {
        Ok(Collector {
            dir: dir.to_path_buf(),
            target,
            proc_out: open_append(&dir.join(layout::PROC))?,
            perf_maps: BTreeMap::new(),
            node_tail: None,
            last_proc: None,
            last_node: None,
            acks: BTreeSet::new(),
            agent_gone: false,
            gone: BTreeSet::new(),
            cmdlines: BTreeMap::new(),
            interval: std::time::Duration::from_millis(500),
            maps_due: BTreeMap::new(),
            last_maps: None,
            iterations: None,
        })
    }

    /// The target, and every process that wrote a stream into the recording
    /// (forked or exec'd children that offheap follows, perhaps reparented).
    fn stream_pids(&self) -> BTreeSet<u32> {
        let mut pids = BTreeSet::from([self.target]);
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let pid = if let Some(rest) = name.strip_prefix(layout::NODE_PREFIX) {
                    rest.split('-').next().and_then(|p| p.parse().ok())
                } else if let Some(rest) = name.strip_prefix(layout::NATIVE_PREFIX) {
                    rest.strip_suffix(layout::NATIVE_SUFFIX)
                        .and_then(|p| p.parse().ok())
                } else {
                    None
                };
                if let Some(pid) = pid {
                    pids.insert(pid);
                }
            }
        }
        pids
    }

    /// The target's main-thread JS agent saw the process's `exit` event:
    /// it is exiting, perhaps still busy with the agent's exit work.
    pub fn target_exiting(&self) -> bool {
        self.node_tail.as_ref().is_some_and(|t| t.exiting)
    }

    /// Reads what the target's JS agent wrote since the last look (acks
    /// of requests), without sampling anything.
    pub fn poll_agent(&mut self) {
        if let Some(t) = self.node_tail.as_mut()
            && let Some(m) = t.poll(&mut self.acks, &mut self.agent_gone)
        {
            self.last_node = Some(m);
        }
    }

    /// Counts the lines the command appended to `iterations.log` since the
    /// last look and, when the count moved, appends it with the time to
    /// `iterations.jsonl` (the file exists only under `offheap check`).
    fn poll_iterations(&mut self) {
        if self.iterations.is_none() {
            let path = self.dir.join(layout::ITERATIONS_LOG);
            if let Ok(f) = offheap_format::io::open_recording_file(&path) {
                self.iterations = Some((f, 0, 0));
            } else {
                return;
            }
        }
        let Some((f, read, lines)) = self.iterations.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        let before = *lines;
        // At most 64 MiB a look: a command that floods the file cannot
        // hold the collector.
        for _ in 0..1024 {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    *read += k as u64;
                    *lines += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
                }
            }
        }
        if *lines != before {
            let rec = offheap_format::IterationCount {
                t: now_ms(),
                n: *lines,
            };
            if let (Ok(mut out), Ok(line)) = (
                open_append(&self.dir.join(layout::ITERATIONS)),
                serde_json::to_string(&rec),
            ) {
                let _ = writeln!(out, "{line}");
            }
        }
    }

    /// One interval: sample /proc, copy perf maps, read the latest JS figures.
    pub fn tick(&mut self) {
        self.poll_iterations();
        let mut lines = String::new();
        // /proc is sampled for the target's live descendants too, whether
        // offheap's agents follow them or not (their RSS alone can show a
        // leak); perf maps are copied only for the processes with a stream.
        let streamed = self.stream_pids();
        let mut pids = streamed.clone();
        pids.extend(descendants(self.target, MAX_DESCENDANTS));
        for pid in pids {
            if self.gone.contains(&pid) {
                continue;
            }
            match sample_proc(pid) {
                Some(mut s) => {
                    // The command line when it is new or changed (an exec).
                    let cmd = cmdline(pid);
                    if !cmd.is_empty() && self.cmdlines.get(&pid) != Some(&cmd) {
                        self.cmdlines.insert(pid, cmd.clone());
                        s.cmdline = cmd;
                    }
                    let now = std::time::Instant::now();
                    if self.maps_due.get(&pid).is_none_or(|d| now >= *d) {
                        s.maps = crate::smaps::sample(pid);
                        let cost = s.maps.map_or(0, |m| m.cost_us);
                        let interval = self.interval.as_millis() as u64;
                        let gap = crate::smaps::next_gap_ms(cost, interval);
                        // A read costing under 1% is made at every tick
                        // (due a little early); a costlier one is spaced.
                        let gap = if gap > interval {
                            std::time::Duration::from_millis(gap)
                        } else {
                            self.interval.mul_f64(0.8)
                        };
                        self.maps_due.insert(pid, now + gap);
                    }
                    if let Ok(l) = serde_json::to_string(&s) {
                        lines.push_str(&l);
                        lines.push('\n');
                    }
                    if pid == self.target {
                        if s.maps.is_some() {
                            self.last_maps = s.maps;
                        }
                        self.last_proc = Some(s);
                    }
                }
                None if pid != self.target => {
                    self.gone.insert(pid);
                }
                None => {}
            }
            if !streamed.contains(&pid) {
                continue;
            }
            let dir = &self.dir;
            let copy = self.perf_maps.entry(pid).or_insert_with(|| PerfMapCopy {
                src: PathBuf::from(format!("/tmp/perf-{pid}.map")),
                dst: dir.join(format!(
                    "{}{pid}{}",
                    layout::PERF_MAP_PREFIX,
                    layout::PERF_MAP_SUFFIX
                )),
                times: dir.join(format!(
                    "{}{pid}{}.times",
                    layout::PERF_MAP_PREFIX,
                    layout::PERF_MAP_SUFFIX
                )),
                copied: 0,
            });
            copy.poll();
        }
        if !lines.is_empty() {
            let _ = self.proc_out.write_all(lines.as_bytes());
        }
        if self.node_tail.is_none() {
            let path = self.dir.join(format!(
                "{}{}-0{}",
                layout::NODE_PREFIX,
                self.target,
                layout::NODE_SUFFIX
            ));
            if path.exists() {
                self.node_tail = Some(NodeTail {
                    path,
                    offset: 0,
                    partial: Vec::new(),
                    exiting: false,
                });
            }
        }
        if let Some(t) = self.node_tail.as_mut()
            && let Some(m) = t.poll(&mut self.acks, &mut self.agent_gone)
        {
            self.last_node = Some(m);
        }
        self.write_metrics();
    }

    /// `metrics.prom`: the latest figures in Prometheus' text format,
    /// replaced atomically each interval (node_exporter's textfile collector
    /// can scrape the recording directory).
    fn write_metrics(&self) {
        let mut out = String::new();
        let pid = self.target;
        let mut gauge = |name: &str, help: &str, v: Option<u64>| {
            if let Some(v) = v {
                out.push_str(&format!(
                    "# HELP offheap_{name} {help}\n# TYPE offheap_{name} gauge\noffheap_{name}{{pid=\"{pid}\"}} {v}\n"
                ));
            }
        };
        let p = self.last_proc.as_ref();
        let st = |k: &str| p.and_then(|p| p.status.get(k).copied());
        gauge("rss_bytes", "Resident set size of the target.", st("VmRSS"));
        gauge(
            "rss_anon_bytes",
            "Anonymous resident memory of the target.",
            st("RssAnon"),
        );
        gauge(
            "rss_file_bytes",
            "File-backed resident memory of the target.",
            st("RssFile"),
        );
        gauge(
            "swap_bytes",
            "Swapped-out memory of the target.",
            st("VmSwap"),
        );
        let n = self.last_node.as_ref();
        gauge(
            "heap_used_bytes",
            "V8 heapUsed of the main thread.",
            n.map(|n| n.heap_used),
        );
        gauge(
            "heap_total_bytes",
            "V8 heapTotal of the main thread.",
            n.map(|n| n.heap_total),
        );
        gauge(
            "external_bytes",
            "process.memoryUsage().external.",
            n.map(|n| n.external),
        );
        gauge(
            "array_buffers_bytes",
            "process.memoryUsage().arrayBuffers.",
            n.map(|n| n.array_buffers),
        );
        // The ledger as the CLI alone can draw it (no allocator split).
        if let (Some(maps), Some(rss)) = (self.last_maps, st("VmRSS")) {
            let isolates: Vec<&NodeMem> = n.into_iter().collect();
            let l = offheap_analysis::ledger::build(&offheap_analysis::ledger::Inputs {
                at_s: 0.0,
                rss,
                maps: &maps,
                isolates: &isolates,
                allocator: None,
                mmap_live: None,
            });
            out.push_str(&offheap_analysis::ledger::prometheus(pid, &l));
        }
        if out.is_empty() {
            return;
        }
        let _ = offheap_format::write_atomic(&self.dir.join(METRICS), out.as_bytes());
    }

    /// Last copy of the perf maps once the target has ended.
    pub fn finish(&mut self) {
        self.poll_iterations();
        for copy in self.perf_maps.values_mut() {
            copy.poll();
        }
        let _ = self.proc_out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_self() {
        let s = sample_proc(std::process::id()).unwrap();
        assert!(s.rss().unwrap() > 0);
        assert!(s.status.contains_key("RssAnon"));
        assert!(sample_proc(u32::MAX - 1).is_none());
        assert_eq!(
            s.status.get("PPid"),
            Some(&std::os::unix::process::parent_id().into())
        );
        assert!(!cmdline(std::process::id()).is_empty());
    }

    #[test]
    fn finds_descendants() {
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 1 & sleep 1 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut found = BTreeSet::new();
        while std::time::Instant::now() < deadline {
            found = descendants(me, 100);
            if found.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = c.wait();
        assert!(found.contains(&c.id()), "{found:?}");
        assert!(found.len() >= 3, "sh and its two sleeps: {found:?}");
        assert!(descendants(me, 1).len() <= 1);
    }
}
