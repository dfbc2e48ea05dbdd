//! The fuzz targets: bytes in, and whatever they are, a value or an error
//! out. Beyond not panicking, each checks a few facts of what it got back
//! that hold for any input.

use offheap_format::native::{self, MAGIC, MAX_RECORD, NativeStream};
use offheap_format::{End, Meta, NodeRecord, NodeStream, ProcSample, Recording};
use offheap_node::analysis::{self, AnalyzeOptions, HeapSummary, ViewGeometry};
use offheap_node::heapsnapshot::HeapSnapshot;
use std::collections::HashMap;
use std::time::Duration;

/// One fuzz target.
pub struct Target {
    /// Also the name of its directory under `tests/__fuzz__/`.
    pub name: &'static str,
    /// True when the input was accepted (parsed, opened): how deep the
    /// mutations get.
    pub run: fn(&[u8]) -> bool,
    /// Mutated inputs are cut to this length.
    pub max_len: usize,
    /// One input taking longer than this fails the mutation pass.
    pub slow: Duration,
}

const SLOW: Duration = Duration::from_secs(5);

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "native_decode",
        run: native_decode,
        max_len: 64 << 10,
        slow: SLOW,
    },
    Target {
        name: "native_records",
        run: native_records,
        max_len: 64 << 10,
        slow: SLOW,
    },
    Target {
        name: "jsonl_proc",
        run: jsonl_proc,
        max_len: 64 << 10,
        slow: SLOW,
    },
    Target {
        name: "jsonl_node",
        run: jsonl_node,
        max_len: 64 << 10,
        slow: SLOW,
    },
    Target {
        name: "recording",
        run: recording,
        max_len: 128 << 10,
        slow: SLOW,
    },
    Target {
        name: "recording_analysis",
        run: recording_analysis,
        max_len: 128 << 10,
        slow: SLOW,
    },
    Target {
        name: "heap_snapshot",
        run: heap_snapshot,
        max_len: 256 << 10,
        slow: SLOW,
    },
    Target {
        name: "perf_map",
        run: perf_map,
        max_len: 64 << 10,
        slow: SLOW,
    },
    Target {
        name: "elf",
        run: elf,
        max_len: 64 << 10,
        slow: SLOW,
    },
    Target {
        name: "proc_maps",
        run: proc_maps,
        max_len: 32 << 10,
        slow: SLOW,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

// ------------------------------------------------------------ native stream

/// What holds for any stream the decoder returns.
fn check_native(s: &NativeStream) {
    let n = s.snapshot_times_ms.len();
    assert_eq!(s.allocator.len(), n, "one allocator entry per snapshot");
    let mut last = None;
    for series in &s.series {
        assert!(
            (series.stack as usize) < s.stacks.len(),
            "series of an unknown stack"
        );
        assert!(
            last < Some(series.stack),
            "series sorted by stack, once each"
        );
        last = Some(series.stack);
        for w in series.points.windows(2) {
            assert!(w[0].0 < w[1].0, "points in snapshot order");
        }
        for &(i, _) in &series.points {
            assert!((i as usize) < n, "point of an unknown snapshot");
            let _ = series.at(i);
        }
        let _ = series.last();
    }
    for st in &s.stacks {
        if let Some(o) = st.origin {
            assert!((o as usize) < s.stacks.len());
        }
    }
    for m in &s.modules {
        for &(a, _, _) in m.ranges.iter().take(4) {
            let _ = m.contains(a);
        }
    }
}

/// `native::decode` on the bytes as they are: almost every mutation ends
/// at the magic or a checksum, which is what a corrupt file does.
pub fn native_decode(data: &[u8]) -> bool {
    match native::decode(data) {
        Ok(s) => {
            check_native(&s);
            !s.snapshot_times_ms.is_empty()
        }
        Err(_) => false,
    }
}

/// Rewrites every record's checksum to match its bytes (and puts the magic
/// in front), so that mutations reach the payload decoder.
pub fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + MAGIC.len());
    if !data.starts_with(&MAGIC) {
        v.extend_from_slice(&MAGIC);
    }
    v.extend_from_slice(data);
    let mut pos = MAGIC.len();
    while pos + 9 <= v.len() {
        let len = u32::from_le_bytes(v[pos..pos + 4].try_into().unwrap_or_default());
        if len > MAX_RECORD || v.len() - pos - 9 < len as usize {
            break;
        }
        let body = pos + 4..pos + 5 + len as usize;
        let mut h: u32 = 0x811c_9dc5;
        for &b in &v[body.clone()] {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        v[body.end..body.end + 4].copy_from_slice(&h.to_le_bytes());
        pos = body.end + 4;
    }
    v
}

/// `native::decode` after [`fix_checksums`]: the record decoder proper.
pub fn native_records(data: &[u8]) -> bool {
    let fixed = fix_checksums(data);
    match native::decode(&fixed) {
        Ok(s) => {
            check_native(&s);
            !s.snapshot_times_ms.is_empty()
        }
        Err(e) => panic!("a stream with the magic is never an error: {e}"),
    }
}

// ------------------------------------------------------------- JSON lines

/// Small bounds, so that the long-line and stop-at-the-bound paths run.
const SMALL_LINE: usize = 300;

/// `proc.jsonl`: `/proc` samples, with the default bounds and small ones.
pub fn jsonl_proc(data: &[u8]) -> bool {
    let mut notes = Vec::new();
    let v: Vec<ProcSample> =
        offheap_format::read_jsonl_from("proc.jsonl", data, &mut notes, 1 << 24, 4 << 30);
    for p in &v {
        let _ = p.rss();
    }
    let cut = (data.len() as u64).saturating_sub(data.len() as u64 / 8);
    let w: Vec<ProcSample> =
        offheap_format::read_jsonl_from("proc.jsonl", data, &mut notes, SMALL_LINE, cut);
    // Tighter bounds drop records, except that the line cut at the bound
    // may parse where the whole one did not (`{...}garbage`).
    assert!(w.len() <= v.len() + 1, "tighter bounds, more records");
    !v.is_empty()
}

/// `node-PID-TID.jsonl`: the JS agent's records (hello, mem, gc, heap
/// profile frames/stacks/profiles, snapshot, ack, note, bye), pushed into a
/// stream as the recording loader does.
pub fn jsonl_node(data: &[u8]) -> bool {
    let mut any = false;
    for (max_line, max_total) in [(1usize << 24, 4u64 << 30), (SMALL_LINE, data.len() as u64)] {
        let mut notes = Vec::new();
        let mut s = NodeStream::default();
        for r in offheap_format::read_jsonl_from::<NodeRecord, _>(
            "node-1-0.jsonl",
            data,
            &mut notes,
            max_line,
            max_total,
        ) {
            s.push(r);
        }
        // Ids are dense: a huge one is dropped, not grown into.
        assert!(s.heap_frames.len() <= data.len() + 1_000_001);
        assert!(s.heap_stacks.len() <= data.len() + 1_000_001);
        let _ = (s.pid(), s.is_main_thread(), s.thread_id());
        for g in &s.gc {
            let _ = (g.forced(), g.kind_name());
        }
        any |= s.hello.is_some() || !s.mem.is_empty();
    }
    any
}

// --------------------------------------------------------------- recording

/// Separates the files of a recording in a `recording`/`recording_analysis`
/// input.
pub const FILE_SEPARATOR: &[u8] = b"\n=====\n";

/// Which file each part of a recording input becomes (`{pid}` is the pid
/// of `recording.json`, 7 when it has none).
pub const RECORDING_FILES: &[&str] = &[
    "recording.json",
    "end.json",
    "proc.jsonl",
    "node-{pid}-0.jsonl",
    "native-{pid}.bin",
    "perf-{pid}.map",
    "perf-{pid}.map.times",
    "heap.json",
    "node-{pid}-1.jsonl",
    "native-{pid}-1.bin",
];

fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < RECORDING_FILES.len() {
        match rest
            .windows(FILE_SEPARATOR.len())
            .position(|w| w == FILE_SEPARATOR)
        {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// Writes the parts of `data` as a recording directory; the directory
/// lives as long as the returned value.
pub fn write_recording(data: &[u8]) -> tempfile::TempDir {
    let parts = split_parts(data);
    let pid = serde_json::from_slice::<serde_json::Value>(parts[0])
        .ok()
        .and_then(|v| v.get("pid")?.as_u64())
        .unwrap_or(7);
    let dir = tempfile::tempdir().expect("temporary directory");
    for (part, name) in parts.iter().zip(RECORDING_FILES) {
        let name = name.replace("{pid}", &pid.to_string());
        std::fs::write(dir.path().join(name), part).expect("write a recording file");
    }
    dir
}

fn open_recording(data: &[u8]) -> Option<(tempfile::TempDir, Recording)> {
    let dir = write_recording(data);
    let rec = Recording::open(dir.path()).ok()?;
    Some((dir, rec))
}

/// `Recording::open` on a directory made of the input's parts (see
/// [`RECORDING_FILES`]), plus the single-object files on their own.
pub fn recording(data: &[u8]) -> bool {
    let parts = split_parts(data);
    let _ = serde_json::from_slice::<Meta>(parts[0]);
    if let Some(p) = parts.get(1) {
        let _ = serde_json::from_slice::<End>(p);
    }
    let Some((_dir, rec)) = open_recording(data) else {
        return false;
    };
    for s in &rec.native {
        check_native(s);
    }
    let _ = (rec.main_node_stream(), rec.main_native_stream());
    true
}

/// What the CLI does with a recording: open it, analyse it (symbolization
/// included, with the modules' paths emptied so that no file of this
/// machine is read), write the summary.
pub fn recording_analysis(data: &[u8]) -> bool {
    let Some((_dir, mut rec)) = open_recording(data) else {
        return false;
    };
    for s in &mut rec.native {
        for m in &mut s.modules {
            m.path.clear();
        }
    }
    let model = offheap_analysis::analyze(&rec, &offheap_analysis::Options::default());
    let _ = model.summary_json();
    let _ = model.summary();
    if let Some(p) = model.processes.first() {
        let _ = model.process_view(p);
    }
    let _ = offheap_analysis::diff::diff_models(&model, &model, 5);
    true
}

// ----------------------------------------------------------- heap snapshot

/// View geometry made up from the ids: offsets and lengths anywhere,
/// including past their buffer and near `u64::MAX`.
fn made_up_geometry(ids: &[u64]) -> HashMap<u64, ViewGeometry> {
    ids.iter()
        .map(|&id| {
            let h = offheap_format_hash(id);
            let pick = |k: u32| match (h >> k) & 3 {
                0 => 0,
                1 => (h >> 16) & 0xffff,
                2 => 1 << 20,
                _ => u64::MAX - (h & 0xff),
            };
            (
                id,
                ViewGeometry {
                    byte_offset: pick(0),
                    byte_length: pick(2),
                    parent_bytes: pick(4),
                },
            )
        })
        .collect()
}

fn offheap_format_hash(x: u64) -> u64 {
    crate::mutate::hash(&x.to_le_bytes())
}

/// `HeapSnapshot::from_reader`, then what the CLI runs on a parsed
/// snapshot: the findings (offline, and with view geometry), the comparison
/// with a baseline (itself), the summary and their text.
pub fn heap_snapshot(data: &[u8]) -> bool {
    let Ok(s) = HeapSnapshot::from_reader(data) else {
        return false;
    };
    let n = s.node_count();
    let mut total = 0u128;
    for i in 0..n as u32 {
        let own = s.self_size(i);
        total += own as u128;
        assert!(s.retained_size(i) >= own, "retained size below self size");
        assert!((s.idom(i) as usize) < n);
        assert!(s.retained_size(s.idom(i)) >= s.retained_size(i) || s.idom(i) == i);
    }
    assert_eq!(s.total_size() as u128, total, "the root retains everything");
    let js = s.js_distances();
    for i in (0..n as u32).take(64) {
        let _ = (s.node_name(i), s.node_type_name(i), s.node_id(i));
        let _ = (s.allocation_site(i), s.location(i), s.distance(i));
        for e in s.edges(i).take(16) {
            let _ = (s.edge_name(&e), s.edge_type_name(&e));
        }
        let _ = s.retainers(i).count();
        let _ = s.retainer_path(i, 24);
        let _ = s.retainer_path_by(i, 24, &js);
    }
    let _ = s.global_handle_count();
    let opts = AnalyzeOptions::default();
    let everything = AnalyzeOptions {
        top: 5,
        hostage_min_parent: 0,
        native_min: 0,
        max_path: 4,
        min_growth_internal: 0,
    };
    let report = analysis::analyze(&s, "fuzz", &opts, None);
    let _ = report.to_text();
    let mut geometry = |ids: &[u64]| made_up_geometry(ids);
    let live = analysis::analyze(&s, "fuzz", &everything, Some(&mut geometry));
    let _ = live.to_text();
    let _ = serde_json::to_string(&live);
    let base = analysis::Baseline::of(&s, "before");
    let cmp = analysis::compare(&base, &s, "after", &everything);
    let summary = HeapSummary::new(&report, Some(&cmp));
    let _ = summary.to_text(&report, Some(&cmp));
    let _ = serde_json::to_string(&summary);
    let _ = offheap_node::wrappers::wrapper_groups(&s, &everything);
    true
}

// ------------------------------------------------- perf map, ELF, /proc maps

/// A perf map and its `.times` companion, separated by the first NUL byte.
pub fn perf_map(data: &[u8]) -> bool {
    let (text, times) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let addrs = [0, 0x1000, u64::MAX, crate::mutate::hash(data)];
    offheap_symbols::fuzzing::perf_map(text, times, &addrs) > 0
}

/// `Elf::parse` and symbol lookup (what the native agent does in the
/// target), then the same bytes as a module file named by a recording
/// (V8's embedded blob, PT_LOAD segments).
pub fn elf(data: &[u8]) -> bool {
    let parsed = offheap_format::elf::Elf::parse(data);
    if let Some(e) = parsed {
        let _ = e.kind;
        for i in 0..64 {
            let _ = e.section(i);
        }
        let _ = e.symbol(b"main");
        let _ = e.symbol(b"v8_Default_embedded_blob_code_");
        let _ = e.symbol_in(offheap_format::elf::SHT_DYNSYM, b"malloc");
    }
    let mut f = tempfile::NamedTempFile::new().expect("temporary file");
    std::io::Write::write_all(&mut f, data).expect("write the module file");
    let found = offheap_symbols::fuzzing::module_file(f.path(), &[0, 1, 5, 6, 1 << 12]);
    parsed.is_some() || found > 0
}

/// `/proc/PID/maps` text into module records (attach mode).
pub fn proc_maps(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let modules = offheap_symbols::modules_from_proc_maps(&text);
    for m in &modules {
        for &(a, _, _) in m.ranges.iter().take(4) {
            let _ = m.contains(a);
        }
    }
    !modules.is_empty()
}
