//! Offline symbolization of the stacks a recording holds.
//!
//! OWNER: the symbolization work. Never runs inside the target.
//!
//! # API
//!
//! One [`ProcessSymbols`] per recorded process:
//!
//! ```no_run
//! # use offheap_symbols::*;
//! # let stream = offheap_format::native::NativeStream::default();
//! # let perf_map: Option<&std::path::Path> = None;
//! let mut syms = ProcessSymbols::new(&stream.modules, perf_map);
//! // Best: all stacks of the process in one call (each unique address is
//! // symbolized once, per module in one batch).
//! let stacks: Vec<(&[u64], f64)> = stream.stacks.iter().map(|s| (&s.frames[..], stream.start_ms)).collect();
//! let frames: Vec<Vec<Frame>> = syms.symbolize_stacks(&stacks);
//! // Or one stack at a time (results are cached across calls).
//! let one: Vec<Frame> = syms.symbolize(&[0x401234, 0x7f00_0000_1000], stream.start_ms);
//! for note in syms.notes() { eprintln!("note: {note}"); }
//! // Or a whole native stream in one call:
//! let (frames, notes) = symbolize_stream(&stream, perf_map);
//! ```
//!
//! * Input addresses are raw return addresses, innermost first, as the agent
//!   recorded them; each is looked up at `addr - 1` (inside the call
//!   instruction), but [`Frame::address`] keeps the raw value.
//! * `t_ms` is a Unix time in ms (e.g. when the stack was first seen); it
//!   only matters for JIT code, to pick the perf-map entry live at that time.
//! * Output frames are innermost first. An address inside inlined code
//!   yields several frames: the inlined callees first (`inlined: true`),
//!   then the function they were inlined into.
//! * Nothing is dropped: an address that cannot be named becomes one
//!   [`FrameKind::Unknown`] frame named `module+0xVADDR` (the ELF virtual
//!   address, as `addr2line -e module` takes it) or `0xADDR` outside any
//!   module.
//!
//! # Sources
//!
//! * **Native**: ELF `.symtab`/`.dynsym` plus DWARF (file:line, inlined
//!   frames) through blazesym, with split debug info found by
//!   `.gnu_debuglink` and `/usr/lib/debug/.build-id/xx/yyyy.debug`. Lookups
//!   go through the recorded mapping's file offset, so a module mapped twice
//!   (V8 remaps node's embedded builtins with a second file-backed mapping of
//!   the node binary) resolves in both places. The on-disk file's build-id
//!   is checked against the recorded one; on mismatch frames are still
//!   symbolized and a note says so. C++ and Rust names are demangled (once
//!   per unique symbol).
//! * **JS**: the recording's copy of V8's perf map (`perf-PID.map`, plus
//!   `perf-PID.map.times`). `JS:`/`LazyCompile:`/`Function:`/`Eval:`/
//!   `Script:` → [`FrameKind::Js`] with function (`(anonymous)` or
//!   `(script)` when unnamed), script file (also the frame's module; `"[jit]"`
//!   if none) and line; the tier marker (`~ ^ + *`) is dropped so that one
//!   function's tiers aggregate. `RegExp:` → Js. `Builtin:X` →
//!   [`FrameKind::Builtin`] `Builtins_X`; `BytecodeHandler:` and other V8
//!   stubs → Builtin. A JIT address resolves against the entry live at
//!   `t_ms`: the latest line covering it whose first-seen time (from
//!   `.times`) is ≤ `t_ms`; if none was seen by then, the covering line seen
//!   soonest after `t_ms` (the copier lags the writer). Without `.times`
//!   every line counts as live from the start, so the latest line wins.
//!   Lines with absurd sizes (> 256 MiB) or unparsable ones are skipped and
//!   counted in a note; a cut last line is ignored.
//! * **Builtins remapped into anonymous memory** (V8 "short builtin
//!   calls"; node 20 maps a second copy of its embedded blob near the JIT
//!   code range, and the agent's `dl_iterate_phdr` module table does not
//!   include it): addresses in no module and no perf-map entry vote for
//!   every page-aligned copy start that puts them inside node's embedded
//!   blob (`v8_Default_embedded_blob_code_`, from node's `.symtab`) right
//!   after a call instruction (a `call rel32` must target a `Builtins_*`
//!   entry). A start with ≥ 2 votes, strictly more than any overlapping
//!   start, no failing addresses to speak of, and no overlap with a module
//!   is accepted; its addresses resolve to `Builtins_*` names and
//!   a note says so. One lone address is ambiguous and stays Unknown (never
//!   named wrongly); later calls reuse what was found. If the module table
//!   does record the second mapping (as [`modules_from_proc_maps`] does), it
//!   resolves through the file offset instead.
//!
//! # Allocator frames
//!
//! [`is_allocator_frame`] tells which frames reports should collapse:
//! malloc and friends, glibc internals, `operator new/delete`, std
//! allocators, mmap, libuv/OpenSSL/zlib wrappers, V8/node ArrayBuffer
//! backing-store glue, and offheap's own agent.

mod elf;
mod perf_map;

/// Entry points for the fuzz targets (`crates/offheap-fuzz`) into the
/// parsers of files a recording names, which are private otherwise. Not an
/// API: nothing else calls them.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// Parses a perf map (`text`) with its `.times` companion (`times`),
    /// then looks up the addresses around every entry's bounds and `addrs`
    /// at a few times, and splits the names found. The number of hits.
    pub fn perf_map(text: &[u8], times: &[u8], addrs: &[u64]) -> usize {
        let times = crate::perf_map::parse_times(&String::from_utf8_lossy(times));
        let m = crate::perf_map::PerfMap::parse(text.to_vec(), Some(&times));
        let _ = (m.bad_lines, m.truncated_tail, m.len());
        let bounds = m.bounds();
        let mut hits = 0;
        for a in addrs.iter().copied().chain(bounds) {
            for t in [f64::NEG_INFINITY, 0.0, 1.7e12, f64::INFINITY, f64::NAN] {
                if let Some(e) = m.lookup(a, t) {
                    assert!(e.start <= a && a < e.end, "{a:#x} outside its entry");
                    let name = m.name(e.seq);
                    let _ = crate::perf_map::parse_name(&name);
                    hits += 1;
                }
            }
        }
        // Without a .times file.
        let m = crate::perf_map::PerfMap::parse(text.to_vec(), None);
        hits + addrs
            .iter()
            .filter(|&&a| m.lookup(a, 0.0).is_some())
            .count()
    }

    /// Reads `path` as a module file the way symbolization does: V8's
    /// embedded blob (and the return-address check at `offsets` inside
    /// it), and the PT_LOAD segments. The number of things found.
    pub fn module_file(path: &Path, offsets: &[u64]) -> usize {
        let mut found = 0;
        if let Some(b) = crate::elf::find_embedded_blob(path) {
            assert_eq!(b.code.len() as u64, b.size);
            found += 1 + b.starts.len();
            for &o in offsets.iter().chain(&b.starts) {
                for o in [o, o.wrapping_add(5), b.size, b.size.wrapping_sub(1)] {
                    found += b.call_precedes(o) as usize;
                }
            }
        }
        if let Some(segs) = crate::elf::load_segments(path) {
            found += segs.len();
        }
        found
    }
}

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use offheap_format::native::ModuleRecord;
use serde::{Deserialize, Serialize};

/// What kind of code a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Compiled code from an ELF module (executable, library, addon).
    Native,
    /// JavaScript (V8 JIT or interpreter frame named from the perf map).
    Js,
    /// A V8 builtin or bytecode handler.
    Builtin,
    /// An address that could not be resolved; `function` is `module+0xoffset` or the raw address.
    Unknown,
    /// Not code: the seam of a stitched stack. The frames after it are the
    /// stack that queued the work (libuv threadpool) the frames before it ran in.
    Queued,
}

/// `Frame::function` of the seam of a stitched stack.
pub const QUEUED_FROM: &str = "[queued from]";
/// `Frame::module` of the seam of a stitched stack.
pub const QUEUED_MODULE: &str = "[threadpool]";

impl Frame {
    /// The seam between the frames of threadpool work and the stack that queued it.
    pub fn queued_from() -> Frame {
        Frame {
            function: QUEUED_FROM.into(),
            module: QUEUED_MODULE.into(),
            file: None,
            line: None,
            kind: FrameKind::Queued,
            address: 0,
            inlined: false,
        }
    }
}

/// One symbolized frame. Inlined functions become several frames, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    /// Module path (for JS frames: the script, if known, else `"[jit]"`).
    pub module: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kind: FrameKind,
    /// The raw address the frame came from.
    pub address: u64,
    /// True for a frame that is an inlined call inside the next frame's function.
    #[serde(default)]
    pub inlined: bool,
}

/// `Frame::module` of a frame outside every module and every perf-map entry.
pub const UNKNOWN_MODULE: &str = "[unknown]";
/// `Frame::module` of a JS frame whose script is not known.
pub const JIT_MODULE: &str = "[jit]";

/// Multiply-rotate hasher for the integer-keyed caches (addresses are not
/// attacker-chosen keys worth SipHash's cost here).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// State of a module's file on disk, checked on first use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileState {
    Unchecked,
    Ok,
    /// Symbolized, but the file on disk has another build-id.
    Mismatch,
    /// Unreadable or not ELF: frames stay `module+0xoffset`.
    Missing,
}

struct Module {
    rec: ModuleRecord,
    name: String,
    state: FileState,
    /// PT_LOAD segments, read on first need (for naming unknown frames).
    segments: Option<Option<Vec<elf::LoadSegment>>>,
}

/// A remapped copy of node's embedded builtins found in anonymous memory.
#[derive(Clone, Copy, Debug)]
struct BlobCopy {
    start: u64,
    end: u64,
    /// Index of the module whose blob it copies.
    module: usize,
}

/// Symbolizes the stacks of one recorded process. Not `Send` (blazesym's
/// caches are single-threaded); create one per thread if needed.
pub struct ProcessSymbols {
    modules: Vec<Module>,
    /// (start, end, file_offset, module index), sorted by start.
    ranges: Vec<(u64, u64, u64, usize)>,
    /// Prefix maximum of the range ends (bounds the backward scan).
    ranges_max_end: Vec<u64>,
    perf: Option<perf_map::PerfMap>,
    /// (module, raw address) -> frames.
    native: FastMap<(usize, u64), Vec<Frame>>,
    /// Perf-map line number -> its frame (address not filled in).
    js: FastMap<u32, Frame>,
    /// (address, time bits) -> perf-map line, memoized lookups.
    js_lookups: FastMap<(u64, u64), Option<u32>>,
    demangled: HashMap<String, String>,
    notes: Vec<String>,
    /// Lazily found: node's embedded blob (module index, blob).
    blob: Option<Option<(usize, elf::EmbeddedBlob)>>,
    blob_copies: Vec<BlobCopy>,
    /// Addresses in no module and no perf-map entry, not yet explained.
    unresolved: BTreeSet<u64>,
    /// Size of `unresolved` when the remap search last ran.
    unresolved_at_last_search: usize,
}

thread_local! {
    /// One blazesym symbolizer per thread for every process it symbolizes:
    /// its caches of parsed files (node's symbol table above all, tens of
    /// MiB) are filled once per file and thread, not once per recorded
    /// process and again for the leak check's stacks. (blazesym's
    /// symbolizer cannot move between threads.) It re-reads a file that
    /// changed on disk.
    static SYMBOLIZER: Symbolizer = Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(false)
        .enable_auto_reload(true)
        .build();
}

impl ProcessSymbols {
    /// Prepares symbolization for one process: its recorded modules and,
    /// for node targets, the recording's copy of its perf map (a missing or
    /// unreadable map gives a note, not an error). Files are opened lazily.
    pub fn new(modules: &[ModuleRecord], perf_map: Option<&Path>) -> Self {
        let mut notes = Vec::new();
        let modules: Vec<Module> = modules
            .iter()
            .map(|m| Module {
                name: Path::new(&m.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| m.path.clone()),
                rec: m.clone(),
                state: FileState::Unchecked,
                segments: None,
            })
            .collect();
        let mut ranges: Vec<(u64, u64, u64, usize)> = modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.rec
                    .ranges
                    .iter()
                    .filter(|r| r.1 > r.0)
                    .map(move |&(s, e, o)| (s, e, o, i))
            })
            .collect();
        ranges.sort_unstable();
        let mut max = 0;
        let ranges_max_end = ranges
            .iter()
            .map(|r| {
                max = max.max(r.1);
                max
            })
            .collect();
        let perf = perf_map.and_then(|p| match perf_map::PerfMap::open(p) {
            Ok((map, note)) => {
                notes.extend(note);
                if map.bad_lines > 0 {
                    notes.push(format!(
                        "{}: {} unparsable line(s) skipped",
                        p.display(),
                        map.bad_lines
                    ));
                }
                if map.truncated_tail {
                    notes.push(format!("{}: last line cut short; skipped", p.display()));
                }
                Some(map)
            }
            Err(e) => {
                notes.push(format!(
                    "{}: unreadable ({e}); JS frames stay unnamed",
                    p.display()
                ));
                None
            }
        });
        ProcessSymbols {
            modules,
            ranges,
            ranges_max_end,
            perf,
            native: FastMap::default(),
            js: FastMap::default(),
            js_lookups: FastMap::default(),
            demangled: HashMap::new(),
            notes,
            blob: None,
            blob_copies: Vec::new(),
            unresolved: BTreeSet::new(),
            unresolved_at_last_search: 0,
        }
    }

    fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// Number of perf-map entries loaded (0 without a map).
    pub fn perf_map_entries(&self) -> usize {
        self.perf.as_ref().map_or(0, |p| p.len())
    }

    /// Things the user should know: missing module files, build-id
    /// mismatches, perf-map problems, remapped builtins found. Each note is
    /// one self-contained sentence; no duplicates.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Symbolizes one stack (raw return addresses, innermost first) seen
    /// at Unix time `t_ms`. Returns frames innermost first.
    pub fn symbolize(&mut self, addrs: &[u64], t_ms: f64) -> Vec<Frame> {
        self.symbolize_stacks(&[(addrs, t_ms)])
            .pop()
            .unwrap_or_default()
    }

    /// Symbolizes many stacks at once: `(addresses innermost first, Unix ms)`.
    /// Faster than one call per stack (one blazesym batch per module) and
    /// better at finding remapped builtins (more addresses to fit).
    pub fn symbolize_stacks(&mut self, stacks: &[(&[u64], f64)]) -> Vec<Vec<Frame>> {
        // Pass 1: native addresses not yet cached, per module; and anonymous
        // addresses that the perf map does not explain.
        let mut pending: HashMap<usize, BTreeSet<u64>> = HashMap::new();
        let mut new_unresolved = false;
        for &(addrs, t) in stacks {
            for &a in addrs {
                if let Some(m) = self.module_for(a, t) {
                    if !self.native.contains_key(&(m, a)) {
                        pending.entry(m).or_default().insert(a);
                    }
                } else if self.copy_for(a).is_none()
                    && self.perf_lookup(a, t).is_none()
                    && self.unresolved.insert(a)
                {
                    new_unresolved = true;
                }
            }
        }
        let mut pending: Vec<_> = pending.into_iter().collect();
        pending.sort_unstable_by_key(|p| p.0);
        for (m, addrs) in pending {
            self.symbolize_module(m, &addrs.into_iter().collect::<Vec<_>>());
        }
        if new_unresolved
            && (stacks.len() > 1
                || self.unresolved.len() >= 2 * self.unresolved_at_last_search.max(1))
        {
            self.find_blob_copies();
        }
        // Pass 2: assemble.
        stacks
            .iter()
            .map(|&(addrs, t)| {
                let mut out = Vec::with_capacity(addrs.len() + 4);
                for &a in addrs {
                    self.frames_for(a, t, &mut out);
                }
                out
            })
            .collect()
    }

    fn frames_for(&mut self, a: u64, t: f64, out: &mut Vec<Frame>) {
        if let Some(m) = self.module_for(a, t) {
            if let Some(f) = self.native.get(&(m, a)) {
                out.extend_from_slice(f);
            } else {
                out.push(self.unknown_in_module(m, a));
            }
            return;
        }
        if let Some(copy) = self.copy_for(a) {
            out.extend(self.blob_copy_frames(copy, a));
            return;
        }
        if let Some(seq) = self.perf_lookup(a, t) {
            if let Some(f) = self.js.get(&seq) {
                out.push(Frame {
                    address: a,
                    ..f.clone()
                });
                return;
            }
            let name = self.perf.as_ref().map(|p| p.name(seq)).unwrap_or_default();
            let n = perf_map::parse_name(&name);
            let module = if n.builtin {
                // V8's builtins live in node's binary; name that module if known.
                self.blob_module_path()
                    .unwrap_or_else(|| JIT_MODULE.to_string())
            } else {
                n.file.clone().unwrap_or_else(|| JIT_MODULE.to_string())
            };
            let f = Frame {
                function: n.function,
                module,
                file: n.file,
                line: n.line,
                kind: if n.builtin {
                    FrameKind::Builtin
                } else {
                    FrameKind::Js
                },
                address: a,
                inlined: false,
            };
            self.js.insert(seq, f.clone());
            out.push(f);
            return;
        }
        out.push(Frame {
            function: format!("{a:#x}"),
            module: UNKNOWN_MODULE.to_string(),
            file: None,
            line: None,
            kind: FrameKind::Unknown,
            address: a,
            inlined: false,
        });
    }

    /// The perf-map line for return address `a` at time `t`, memoized.
    fn perf_lookup(&mut self, a: u64, t: f64) -> Option<u32> {
        let perf = self.perf.as_ref()?;
        *self
            .js_lookups
            .entry((a, t.to_bits()))
            .or_insert_with(|| perf.lookup(a.saturating_sub(1), t).map(|e| e.seq))
    }

    /// The module mapping `a`: among the modules whose ranges contain it,
    /// the one loaded at `t` (else the latest generation).
    fn module_for(&self, a: u64, t: f64) -> Option<usize> {
        let mut i = self.ranges.partition_point(|r| r.0 <= a);
        let mut best: Option<(bool, u32, usize)> = None;
        while i > 0 {
            i -= 1;
            if self.ranges_max_end[i] <= a {
                break;
            }
            let (s, e, _, m) = self.ranges[i];
            if a >= s && a < e {
                let rec = &self.modules[m].rec;
                let live = rec.loaded_at_ms <= t && rec.unloaded_at_ms.is_none_or(|u| t < u);
                let key = (live, rec.generation, m);
                if best.is_none_or(|b| key > b) {
                    best = Some(key);
                }
            }
        }
        best.map(|b| b.2)
    }

    fn file_offset(&self, m: usize, a: u64) -> u64 {
        self.modules[m]
            .rec
            .ranges
            .iter()
            .find(|r| a >= r.0 && a < r.1)
            .map_or_else(
                || a.wrapping_sub(self.modules[m].rec.bias),
                |r| (a - r.0).wrapping_add(r.2),
            )
    }

    /// The module's ELF virtual address of `a` (what addr2line takes),
    /// through the mapping's file offset when the file can be read (right
    /// for a second mapping too), else `a - bias`.
    fn vaddr(&mut self, m: usize, a: u64) -> u64 {
        let fo = self.file_offset(m, a);
        let module = &mut self.modules[m];
        let path = &module.rec.path;
        let segs = module
            .segments
            .get_or_insert_with(|| elf::load_segments(Path::new(path)));
        segs.as_ref()
            .and_then(|s| s.iter().find(|&&(_, off, sz)| fo >= off && fo < off + sz))
            .map_or_else(
                || a.wrapping_sub(module.rec.bias),
                |&(va, off, _)| va + (fo - off),
            )
    }

    fn unknown_in_module(&mut self, m: usize, a: u64) -> Frame {
        let vaddr = self.vaddr(m, a);
        let module = &self.modules[m];
        Frame {
            function: format!("{}+{:#x}", module.name, vaddr),
            module: module.rec.path.clone(),
            file: None,
            line: None,
            kind: FrameKind::Unknown,
            address: a,
            inlined: false,
        }
    }

    fn check_file(&mut self, m: usize) -> FileState {
        if self.modules[m].state != FileState::Unchecked {
            return self.modules[m].state;
        }
        let path = self.modules[m].rec.path.clone();
        let state = if !path.starts_with('/') {
            // "linux-vdso.so.1", "[anon]", "": nothing on disk to read; frames
            // stay module+offset without a note.
            FileState::Missing
        } else if let Err(e) = offheap_format::io::open_module_file(Path::new(&path)) {
            // Checked before blazesym opens it by name (which would block
            // on a FIFO and read a device without end).
            self.note(format!(
                "{path}: cannot read the module ({e}); its frames are shown as {}+offset",
                self.modules[m].name
            ));
            FileState::Missing
        } else {
            match blazesym::helper::read_elf_build_id(Path::new(&path)) {
                Err(e) => {
                    self.note(format!(
                        "{path}: cannot read the module ({e}); its frames are shown as {}+offset",
                        self.modules[m].name
                    ));
                    FileState::Missing
                }
                Ok(on_disk) => match (&self.modules[m].rec.build_id, on_disk) {
                    (Some(rec), Some(disk)) if rec.as_slice() != &*disk => {
                        self.note(format!(
                            "{path}: build-id on disk ({}) differs from the one that ran ({}); the file was replaced \
                             after the recording, so its frames may be named wrongly",
                            hex(&disk),
                            hex(rec)
                        ));
                        FileState::Mismatch
                    }
                    _ => FileState::Ok,
                },
            }
        };
        self.modules[m].state = state;
        state
    }

    /// Symbolizes `addrs` (raw, sorted, unique) of module `m` into the cache.
    fn symbolize_module(&mut self, m: usize, addrs: &[u64]) {
        if self.check_file(m) == FileState::Missing {
            for &a in addrs {
                let f = self.unknown_in_module(m, a);
                self.native.insert((m, a), vec![f]);
            }
            return;
        }
        let offsets: Vec<u64> = addrs
            .iter()
            .map(|&a| self.file_offset(m, a.saturating_sub(1)))
            .collect();
        let path = PathBuf::from(&self.modules[m].rec.path);
        let src = Source::Elf(Elf::new(path.clone()));
        let symbolized = SYMBOLIZER.with(|symbolizer| {
            symbolizer
                .symbolize(&src, Input::FileOffset(&offsets))
                .map(|r| r.into_iter().map(|s| owned(s)).collect::<Vec<_>>())
        });
        let results = match symbolized {
            Ok(r) => r,
            Err(e) => {
                self.note(format!(
                    "{}: symbolization failed ({e}); its frames are shown as {}+offset",
                    path.display(),
                    self.modules[m].name
                ));
                self.modules[m].state = FileState::Missing;
                vec![None; addrs.len()]
            }
        };
        let module_path = self.modules[m].rec.path.clone();
        for (&a, sym) in addrs.iter().zip(results) {
            let frames = match sym {
                Some(sym) => self.sym_frames(&sym, a, &module_path),
                None => vec![self.unknown_in_module(m, a)],
            };
            self.native.insert((m, a), frames);
        }
    }

    fn demangle(&mut self, raw: &str) -> String {
        if let Some(d) = self.demangled.get(raw) {
            return d.clone();
        }
        let d = demangle(raw);
        self.demangled.insert(raw.to_string(), d.clone());
        d
    }

    /// Frames for one blazesym symbol: inlined callees (innermost first),
    /// then the outer function.
    fn sym_frames(&mut self, sym: &OwnedSym, a: u64, module: &str) -> Vec<Frame> {
        let outer = self.demangle(&sym.name);
        let kind = if sym.name.starts_with("Builtins_") {
            FrameKind::Builtin
        } else {
            FrameKind::Native
        };
        let mut out = Vec::with_capacity(sym.inlined.len() + 1);
        for (name, file, line) in sym.inlined.iter().rev() {
            out.push(Frame {
                function: self.demangle(name),
                module: module.to_string(),
                file: file.clone(),
                line: *line,
                kind,
                address: a,
                inlined: true,
            });
        }
        out.push(Frame {
            function: outer,
            module: module.to_string(),
            file: sym.file.clone(),
            line: sym.line,
            kind,
            address: a,
            inlined: false,
        });
        out
    }

    // ---- V8 builtins remapped into anonymous memory -------------------------

    fn copy_for(&self, a: u64) -> Option<BlobCopy> {
        self.blob_copies
            .iter()
            .copied()
            .find(|c| a >= c.start && a < c.end)
    }

    fn blob_module_path(&mut self) -> Option<String> {
        self.load_blob();
        self.blob
            .as_ref()
            .and_then(|b| b.as_ref())
            .map(|(m, _)| self.modules[*m].rec.path.clone())
    }

    /// Finds node's embedded blob among the modules (once).
    fn load_blob(&mut self) {
        if self.blob.is_some() {
            return;
        }
        // The main executable (first module) and anything named like node.
        let mut candidates: Vec<usize> = (0..self.modules.len())
            .filter(|&i| {
                let n = &self.modules[i].name;
                (n.starts_with("node") || n.starts_with("libnode")) && !n.ends_with(".node")
            })
            .collect();
        if !self.modules.is_empty() && !candidates.contains(&0) {
            candidates.insert(0, 0);
        }
        let mut seen = BTreeSet::new();
        self.blob = Some(None);
        for m in candidates {
            if !seen.insert(self.modules[m].rec.path.clone()) {
                continue;
            }
            if let Some(b) = elf::find_embedded_blob(Path::new(&self.modules[m].rec.path)) {
                self.blob = Some(Some((m, b)));
                return;
            }
        }
    }

    /// Searches the unresolved addresses for remapped copies of the blob.
    ///
    /// Every unresolved address votes for each page-aligned copy start that
    /// puts it right after a call instruction inside the blob (about 0.7% of
    /// blob offsets pass on node 20, so a random address votes for ~3 of the
    /// ~400 starts that could contain it; the true start gets every vote of
    /// the copy's addresses). A start is accepted when it has ≥ 2 votes,
    /// strictly more than any overlapping start, nearly no address in its
    /// window fails the test, and it overlaps no module. Cost:
    /// O(unresolved × blob pages), capped at 16k addresses.
    fn find_blob_copies(&mut self) {
        self.unresolved_at_last_search = self.unresolved.len();
        self.load_blob();
        let Some(Some((bm, blob))) = &self.blob else {
            return;
        };
        let bm = *bm;
        const PAGE: u64 = 4096;
        let size = blob.size;
        let mut residues = vec![blob.vaddr % PAGE];
        if blob.vaddr % PAGE != 0 {
            residues.push(0);
        }
        // User-space addresses only (x86-64/arm64 canonical lower half), so
        // a copy's end never overflows.
        let addrs: Vec<u64> = self
            .unresolved
            .iter()
            .copied()
            .filter(|&x| x < 1 << 56)
            .take(1 << 14)
            .collect();
        let mut votes: FastMap<u64, u32> = FastMap::default();
        for &x in &addrs {
            let lo = x.saturating_sub(size - 1);
            for &res in &residues {
                let mut start = (lo / PAGE) * PAGE + res;
                if start < lo {
                    start += PAGE;
                }
                while start <= x {
                    if blob.call_precedes(x - start) {
                        *votes.entry(start).or_default() += 1;
                    }
                    start += PAGE;
                }
            }
        }
        let mut cands: Vec<(u64, u32)> = votes.into_iter().filter(|c| c.1 >= 2).collect();
        cands.sort_unstable();
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_unstable_by_key(|&k| (std::cmp::Reverse(cands[k].1), cands[k].0));
        let mut found: Vec<BlobCopy> = Vec::new();
        for k in order {
            let (start, v) = cands[k];
            let end = start + size;
            if found.iter().any(|c| start < c.end && c.start < end) {
                continue;
            }
            // Strictly better than every start whose window overlaps.
            let lo = cands.partition_point(|c| c.0 + size <= start);
            let hi = cands.partition_point(|c| c.0 < end);
            if cands[lo..hi].iter().any(|c| c.0 != start && c.1 >= v) {
                continue;
            }
            let inside =
                addrs.partition_point(|&x| x < end) - addrs.partition_point(|&x| x < start);
            let fails = inside - v as usize;
            if fails * 10 > v as usize || self.overlaps_known_code(start, end) {
                continue;
            }
            found.push(BlobCopy {
                start,
                end,
                module: bm,
            });
        }
        for c in found {
            let n = self.unresolved.range(c.start..c.end).count();
            self.unresolved.retain(|&x| x < c.start || x >= c.end);
            let path = self.modules[bm].rec.path.clone();
            self.note(format!(
                "V8 builtins remapped to anonymous memory at {:#x}-{:#x} (short builtin calls) resolved against \
                 {path}'s embedded blob ({n} addresses)",
                c.start, c.end
            ));
            self.blob_copies.push(c);
        }
    }

    /// True if `[start, end)` overlaps a module range (a blob copy cannot
    /// sit on top of one). JIT entries of the perf map are not used: when
    /// worker isolates come and go, a new copy may land where an old
    /// worker's code was, and stale lines would hide it.
    fn overlaps_known_code(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.0 < end);
        i > 0 && self.ranges[..i].iter().any(|r| r.1 > start)
    }

    fn blob_copy_frames(&mut self, c: BlobCopy, a: u64) -> Vec<Frame> {
        let key = (usize::MAX - c.module, a);
        if let Some(f) = self.native.get(&key) {
            return f.clone();
        }
        let Some(Some((_, blob))) = &self.blob else {
            return Vec::new();
        };
        let vaddr = blob.vaddr + (a - c.start);
        let module_path = self.modules[c.module].rec.path.clone();
        let src = Source::Elf(Elf::new(PathBuf::from(&module_path)));
        let symbolized = SYMBOLIZER.with(|symbolizer| {
            symbolizer
                .symbolize_single(&src, Input::VirtOffset(vaddr.saturating_sub(1)))
                .map(owned)
        });
        let frames = match symbolized {
            Ok(Some(sym)) => self.sym_frames(&sym, a, &module_path),
            _ => Vec::new(),
        };
        let frames = if frames.is_empty() {
            vec![Frame {
                function: format!("Builtins+{:#x}", a - c.start),
                module: module_path,
                file: None,
                line: None,
                kind: FrameKind::Builtin,
                address: a,
                inlined: false,
            }]
        } else {
            frames
        };
        self.native.insert(key, frames.clone());
        frames
    }
}

/// Symbolizes every stack of one native stream: `result[i]` are the
/// frames of `stream.stacks[i]`, innermost first. Each stack is resolved at
/// the time of its first snapshot point (when it first had counters; the
/// stream's start if it never had any), which picks the perf-map entries
/// live then. Returns the frames and the notes to show the user.
pub fn symbolize_stream(
    stream: &offheap_format::native::NativeStream,
    perf_map: Option<&Path>,
) -> (Vec<Vec<Frame>>, Vec<String>) {
    let mut first_seen = vec![stream.start_ms; stream.stacks.len()];
    for s in &stream.series {
        if let (Some(slot), Some(p)) = (first_seen.get_mut(s.stack as usize), s.points.first())
            && let Some(&t) = stream.snapshot_times_ms.get(p.0 as usize)
        {
            *slot = t;
        }
    }
    let input: Vec<(&[u64], f64)> = stream
        .stacks
        .iter()
        .zip(&first_seen)
        .map(|(s, &t)| (&s.frames[..], t))
        .collect();
    let mut syms = ProcessSymbols::new(&stream.modules, perf_map);
    let frames = syms.symbolize_stacks(&input);
    (frames, syms.notes)
}

/// Builds module records from the text of a `/proc/PID/maps` file: every
/// file-backed mapping of an ELF file becomes a range of that file's record
/// (so a second mapping of the same file, like V8's remapped builtins,
/// resolves through its file offset), with the load bias derived from the
/// ELF program headers and the build-id read from disk. For attaching to a
/// live process, and for tests; the native agent records the same fields.
pub fn modules_from_proc_maps(maps: &str) -> Vec<ModuleRecord> {
    let mut out: Vec<ModuleRecord> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut segs: HashMap<String, Option<Vec<elf::LoadSegment>>> = HashMap::new();
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(_perms), Some(off), Some(_dev), Some(_inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let path = it.collect::<Vec<_>>().join(" ");
        if !path.starts_with('/') {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(off)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        let Some(loads) = segs
            .entry(path.clone())
            .or_insert_with(|| elf::load_segments(Path::new(&path)))
        else {
            continue;
        };
        let i = *index.entry(path.clone()).or_insert_with(|| {
            out.push(ModuleRecord {
                build_id: offheap_format::io::open_module_file(Path::new(&path))
                    .ok()
                    .and_then(|_| blazesym::helper::read_elf_build_id(Path::new(&path)).ok())
                    .flatten()
                    .map(|b| b.to_vec()),
                path: path.clone(),
                bias: u64::MAX,
                ..Default::default()
            });
            out.len() - 1
        });
        let rec = &mut out[i];
        if rec.bias == u64::MAX
            && let Some(&(vaddr, offset, _)) = loads
                .iter()
                .find(|&&(_, offset, filesz)| off >= offset && off - offset < filesz.max(1))
        {
            rec.bias = start.wrapping_sub(vaddr.wrapping_add(off - offset));
        }
        rec.ranges.push((start, end, off));
    }
    for r in &mut out {
        if r.bias == u64::MAX {
            r.bias = r.ranges.first().map_or(0, |x| x.0.wrapping_sub(x.2));
        }
    }
    out
}

/// A blazesym symbol reduced to what frames need, with owned strings.
#[derive(Clone, Debug)]
struct OwnedSym {
    name: String,
    file: Option<String>,
    line: Option<u32>,
    /// Outermost first, as blazesym reports them: (name, file, line).
    inlined: Vec<(String, Option<String>, Option<u32>)>,
}

fn owned(s: Symbolized<'_>) -> Option<OwnedSym> {
    let Symbolized::Sym(sym) = s else { return None };
    let loc = |ci: Option<&blazesym::symbolize::CodeInfo<'_>>| -> (Option<String>, Option<u32>) {
        match ci {
            Some(ci) => (
                Some(normalize_path(&ci.to_path().to_string_lossy())),
                ci.line,
            ),
            None => (None, None),
        }
    };
    let (file, line) = loc(sym.code_info.as_deref());
    let inlined = sym
        .inlined
        .iter()
        .map(|f| {
            let (file, line) = loc(f.code_info.as_ref());
            (f.name.to_string(), file, line)
        })
        .collect();
    Some(OwnedSym {
        name: sym.name.into_owned(),
        file,
        line,
        inlined,
    })
}

/// Lexically removes `.` and `dir/..` from a source path for display
/// (`/build/out/../deps/uv/src/timer.c` -> `/build/deps/uv/src/timer.c`).
fn normalize_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            _ => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Demangles a C++ (Itanium) or Rust (legacy or v0) symbol; anything else
/// is returned as is. Rust's legacy mangling looks like C++'s, so Rust is
/// tried first (it only accepts names with its hash suffix).
pub fn demangle(raw: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(raw) {
        return format!("{d:#}");
    }
    if raw.starts_with("_Z")
        && let Ok(sym) = cpp_demangle::Symbol::new(raw)
    {
        let opts = cpp_demangle::DemangleOptions::new();
        if let Ok(d) = sym.demangle_with_options(&opts) {
            return d;
        }
    }
    raw.to_string()
}

/// True for frames that are allocator internals or thin allocation
/// wrappers, which reports collapse so that a stack starts at the code that
/// asked for memory: malloc and friends, glibc's internals, `operator
/// new`/`delete`, std allocators, mmap, V8/node ArrayBuffer allocator glue,
/// libuv/OpenSSL/zlib allocation wrappers, and offheap's own agent.
pub fn is_allocator_frame(f: &Frame) -> bool {
    if matches!(f.kind, FrameKind::Js) {
        return false;
    }
    let module = f.module.rsplit('/').next().unwrap_or(&f.module);
    if module.starts_with("liboffheap_agent") {
        return true;
    }
    if f.kind == FrameKind::Unknown {
        return false;
    }
    let name = f.function.as_str();
    // Strip a parameter list for exact matching of C names.
    let base = name.split('(').next().unwrap_or(name).trim();
    const EXACT: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "cfree",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "malloc_usable_size",
        "mmap",
        "mmap64",
        "munmap",
        "mremap",
        "__mmap",
        "__munmap",
        "__mremap",
        "_int_malloc",
        "_int_free",
        "_int_realloc",
        "_int_memalign",
        "_mid_memalign",
        "sysmalloc",
        "sysmalloc_mmap",
        "tcache_init",
        "tcache_get",
        "tcache_put",
        "malloc_consolidate",
        "alloc_perturb",
        "arena_get2",
        "_int_new_arena",
        "new_heap",
        "alloc_new_heap",
        "grow_heap",
        "malloc_hook_ini",
        "realloc_hook_ini",
        "memalign_hook_ini",
        "zcalloc",
        "zcfree",
        "CRYPTO_malloc",
        "CRYPTO_zalloc",
        "CRYPTO_realloc",
        "CRYPTO_clear_realloc",
        "CRYPTO_free",
        "uv__malloc",
        "uv__calloc",
        "uv__realloc",
        "uv__reallocf",
        "uv__free",
        "uv__strdup",
        "uv__strndup",
        "napi_create_buffer",
        "strdup",
        "strndup",
        "__strdup",
        "__strndup",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
        "__libc_free",
        "__libc_memalign",
        "__libc_valloc",
        "__libc_pvalloc",
        "__posix_memalign",
        "__malloc_arena_thread_freeres",
    ];
    if EXACT.contains(&base) {
        return true;
    }
    const PREFIXES: &[&str] = &[
        "operator new",
        "operator delete",
        "__gnu_cxx::new_allocator<",
        "__gnu_cxx::__new_allocator<",
        "std::__new_allocator<",
        "std::allocator<",
        "std::allocator_traits<",
        "std::__allocate_guarded",
        "node::NodeArrayBufferAllocator::",
        "node::DebuggingArrayBufferAllocator::",
        "node::ArrayBufferAllocator::",
        "v8::ArrayBuffer::Allocator::",
        "v8::ArrayBuffer::NewBackingStore",
        "v8::SharedArrayBuffer::NewBackingStore",
        "v8::internal::BackingStore::Allocate",
        "v8::internal::Heap::AllocateExternalBackingStore",
        "v8::internal::Malloced::",
        "v8::internal::AlignedAllocWithRetry",
        "v8::internal::AllocWithRetry",
        "v8::base::Malloc",
        "v8::base::Calloc",
        "v8::base::Realloc",
        "v8::base::AlignedAlloc",
        "v8::base::OS::Allocate",
        "alloc::alloc::",
        "alloc::raw_vec::",
        "__rust_alloc",
        "__rust_realloc",
        "__rdl_alloc",
        "__rdl_realloc",
        "__rg_alloc",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(
            normalize_path("/home/iojs/build/ws/out/../deps/uv/src/timer.c"),
            "/home/iojs/build/ws/deps/uv/src/timer.c"
        );
        assert_eq!(
            normalize_path("./csu/../sysdeps/nptl/x.h"),
            "sysdeps/nptl/x.h"
        );
        assert_eq!(normalize_path("../a/./b.c"), "../a/b.c");
        assert_eq!(normalize_path("/../a.c"), "/a.c");
        assert_eq!(normalize_path("a.c"), "a.c");
    }

    #[test]
    fn demangles_cpp_and_rust() {
        assert_eq!(
            demangle("_ZN4node6Buffer3NewEPN2v87IsolateEm"),
            "node::Buffer::New(v8::Isolate*, unsigned long)"
        );
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE"), "foo::bar");
        assert_eq!(demangle("_RNvCs1234_7mycrate4func"), "mycrate::func");
        assert_eq!(demangle("malloc"), "malloc");
        assert_eq!(demangle("_Znwm"), "operator new(unsigned long)");
    }

    #[test]
    fn allocator_frames() {
        let f = |function: &str, module: &str| Frame {
            function: function.into(),
            module: module.into(),
            file: None,
            line: None,
            kind: FrameKind::Native,
            address: 0,
            inlined: false,
        };
        assert!(is_allocator_frame(&f(
            "malloc",
            "/lib/x86_64-linux-gnu/libc.so.6"
        )));
        assert!(is_allocator_frame(&f(
            "operator new(unsigned long)",
            "/usr/lib/libstdc++.so.6"
        )));
        assert!(is_allocator_frame(&f(
            "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
            "/usr/bin/node"
        )));
        assert!(is_allocator_frame(&f(
            "anything",
            "/tmp/rec/liboffheap_agent.so"
        )));
        assert!(is_allocator_frame(&f(
            "v8::internal::Heap::AllocateExternalBackingStore(std::function<void* (unsigned long)> const&, unsigned long)",
            "/usr/bin/node"
        )));
        assert!(is_allocator_frame(&f(
            "v8::ArrayBuffer::NewBackingStoreForNodeLTS(v8::Isolate*, unsigned long)",
            "/usr/bin/node"
        )));
        assert!(!is_allocator_frame(&f(
            "node::Buffer::(anonymous namespace)::CreateUnsafeArrayBuffer(v8::FunctionCallbackInfo<v8::Value> const&)",
            "/usr/bin/node"
        )));
        assert!(!is_allocator_frame(&f("leak_bytes", "/tmp/leak.node")));
        assert!(!is_allocator_frame(&f("deflateInit2_", "/usr/bin/node")));
        let mut js = f("malloc", "/a.js");
        js.kind = FrameKind::Js;
        assert!(!is_allocator_frame(&js));
    }

    #[test]
    fn unknown_frames_are_kept() {
        let m = ModuleRecord {
            path: "/nonexistent/libgone.so".into(),
            bias: 0x7f00_0000_0000,
            ranges: vec![(0x7f00_0000_1000, 0x7f00_0000_9000, 0x1000)],
            ..Default::default()
        };
        let mut s = ProcessSymbols::new(&[m], None);
        let fr = s.symbolize(&[0x7f00_0000_1234, 0x1234], 0.0);
        assert_eq!(fr.len(), 2);
        assert_eq!(fr[0].function, "libgone.so+0x1234");
        assert_eq!(fr[0].module, "/nonexistent/libgone.so");
        assert_eq!(fr[0].kind, FrameKind::Unknown);
        assert_eq!(fr[1].function, "0x1234");
        assert_eq!(fr[1].module, UNKNOWN_MODULE);
        assert_eq!(s.notes().len(), 1, "{:?}", s.notes());
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn garbage_inputs_give_unknown_frames_and_notes() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("libjunk.so");
        let bytes: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&junk, &bytes).unwrap();
        let mut elfish = b"\x7fELF\x02\x01\x01".to_vec();
        elfish.extend_from_slice(&bytes[..5000]);
        let trunc = dir.path().join("libtrunc.so");
        std::fs::write(&trunc, &elfish).unwrap();
        let perf = dir.path().join("perf-1.map");
        std::fs::write(
            &perf,
            b"zz zz zz\n\xff\xfe 10 JS:~x\n7000 ffffffffffffffff JS:~big /a.js:1:1\n7000 10 JS:\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("perf-1.map.times"), b"garbage\n0 nan\n").unwrap();
        let modules = vec![
            ModuleRecord {
                path: junk.to_string_lossy().into_owned(),
                bias: u64::MAX - 10,
                ranges: vec![(0x1000, 0x2000, u64::MAX), (0x3000, 0x2000, 0)],
                build_id: Some(vec![]),
                ..Default::default()
            },
            ModuleRecord {
                path: trunc.to_string_lossy().into_owned(),
                bias: 0x4000,
                ranges: vec![(0x4000, 0x5000, 0)],
                ..Default::default()
            },
            ModuleRecord {
                path: "".into(),
                ranges: vec![(0x5000, 0x6000, 0)],
                ..Default::default()
            },
        ];
        let mut s = ProcessSymbols::new(&modules, Some(&perf));
        let addrs = [0, 1, 0x1800, 0x4800, 0x5800, 0x7005, u64::MAX, 1 << 60];
        let out = s.symbolize_stacks(&[(&addrs, f64::NAN), (&addrs, 0.0)]);
        for frames in &out {
            assert_eq!(frames.len(), addrs.len(), "{frames:?}");
            assert_eq!(frames[5].kind, FrameKind::Js);
            assert_eq!(frames[5].function, "(anonymous)");
            for (f, &a) in frames.iter().zip(&addrs) {
                assert_eq!(f.address, a);
            }
        }
        assert!(
            s.notes().iter().any(|n| n.contains("libjunk.so")),
            "{:?}",
            s.notes()
        );
        assert!(
            s.notes().iter().any(|n| n.contains("unparsable")),
            "{:?}",
            s.notes()
        );
    }
}
