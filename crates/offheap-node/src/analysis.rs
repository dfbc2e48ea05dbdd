//! Findings from one heap snapshot (top retainers, external memory, hostage
//! buffers, global handles) and the comparison of two snapshots.

use offheap_format::units::bytes as human;
use std::collections::HashMap;
use std::fmt::Write as _;

use offheap_format::escape_terminal as t;

use serde::Serialize;

use crate::heapsnapshot::{Edge, HeapSnapshot, NodeIx};

/// Knobs of the analysis.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// How many top retainers / groups to report.
    pub top: usize,
    /// Smallest backing store considered for hostage buffers (bytes).
    pub hostage_min_parent: u64,
    /// Smallest native node (other than array-buffer data) reported as external memory.
    pub native_min: u64,
    /// Longest retainer path reported.
    pub max_path: usize,
    /// In a comparison, the byte growth from which engine internals (code,
    /// maps, feedback vectors) are reported.
    pub min_growth_internal: u64,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            top: 20,
            hostage_min_parent: 64 * 1024,
            native_min: 4096,
            max_path: 24,
            min_growth_internal: 1 << 20,
        }
    }
}

/// One step of a retainer path: the edge taken from the previous node, and the node reached.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathStep {
    /// Edge type (`property`, `element`, `context`, `internal`, …).
    pub edge_type: String,
    /// Edge rendered the JS way: `.name`, `[3]`, `kept (closure variable)`, `{backing_store}`.
    pub edge: String,
    pub node: String,
    pub node_type: String,
    pub node_id: u64,
}

/// A node that keeps a lot of memory alive.
#[derive(Debug, Clone, Serialize)]
pub struct RetainerFinding {
    pub node_id: u64,
    pub name: String,
    pub node_type: String,
    pub self_size: u64,
    pub retained_size: u64,
    /// Bytes of ArrayBuffer backing stores and native nodes inside the retained set.
    pub retained_external: u64,
    /// The JS variable or property that holds it, e.g. `kept` or `cache.entries[3]`.
    pub held_by: String,
    pub path_text: String,
    pub path: Vec<PathStep>,
    /// Allocating function (when the snapshot carries allocation traces).
    pub allocated_by: Option<String>,
}

/// External (off-V8-heap) memory grouped by what retains it.
#[derive(Debug, Clone, Serialize)]
pub struct ExternalGroup {
    /// `ArrayBuffer backing store` or the native node's name (e.g. `Node / zlib_memory`).
    pub kind: String,
    /// Retainer path pattern (element indices folded to `[]`).
    pub holder: String,
    pub count: u64,
    pub bytes: u64,
    pub example_id: u64,
    pub example_path: Vec<PathStep>,
}

/// Geometry of a view, read from the live process.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ViewGeometry {
    pub byte_offset: u64,
    pub byte_length: u64,
    pub parent_bytes: u64,
}

/// One typed-array / Buffer / DataView on a suspected hostage ArrayBuffer.
#[derive(Debug, Clone, Serialize)]
pub struct HostageView {
    pub node_id: u64,
    /// Constructor: `Buffer`, `Uint8Array`, `DataView`, …
    pub class: String,
    pub byte_offset: Option<u64>,
    pub byte_length: Option<u64>,
    pub allocated_by: Option<String>,
}

/// An ArrayBuffer kept alive only by views.
#[derive(Debug, Clone, Serialize)]
pub struct HostageBuffer {
    pub array_buffer_id: u64,
    /// Byte length of the backing store kept alive.
    pub parent_bytes: u64,
    pub view_count: u64,
    pub views: Vec<HostageView>,
    /// Bytes the views actually cover (union of their ranges); live only.
    pub view_bytes: Option<u64>,
    /// `parent_bytes - view_bytes` (live), or `parent_bytes` as an upper bound (offline).
    pub wasted_bytes: u64,
    /// True when the view geometry was read from the live process.
    pub confirmed: bool,
    pub held_by: String,
    pub path_text: String,
    pub path: Vec<PathStep>,
}

/// Hostage buffers with the same retainer path pattern.
#[derive(Debug, Clone, Serialize)]
pub struct HostageGroup {
    /// Who holds the views, e.g. `kept[]` (the JS variable / property).
    pub held_by: String,
    /// Retainer path pattern of the views.
    pub holder: String,
    pub count: u64,
    pub parent_bytes: u64,
    /// Live only: total bytes the views cover.
    pub view_bytes: Option<u64>,
    pub wasted_bytes: u64,
    pub confirmed: bool,
    /// `live` (exact view geometry) or `offline-estimate` (upper bound: the snapshot has no view lengths).
    pub evidence: String,
    pub fix: String,
    /// Up to five examples, largest first.
    pub examples: Vec<HostageBuffer>,
}

/// Objects per constructor.
#[derive(Debug, Clone, Serialize)]
pub struct ConstructorStat {
    pub name: String,
    pub node_type: String,
    pub count: u64,
    pub self_bytes: u64,
}

/// Everything found in one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub source: String,
    pub file_bytes: u64,
    pub node_count: u64,
    pub edge_count: u64,
    /// Sum of all self sizes (V8 heap objects plus native entries).
    pub total_bytes: u64,
    /// Self sizes of non-native nodes (roughly the V8 heap).
    pub js_heap_bytes: u64,
    /// ArrayBuffer backing stores (`system / JSArrayBufferData`).
    pub array_buffer_bytes: u64,
    /// Other native nodes (`Node / …` memory retainers and addon-reported memory).
    pub native_bytes: u64,
    pub extra_native_bytes: Option<u64>,
    /// Edges of the synthetic `(Global handles)` root; growth means forgotten persistent/napi references.
    pub global_handles: Option<u64>,
    pub top_retainers: Vec<RetainerFinding>,
    pub external: Vec<ExternalGroup>,
    pub hostage_buffers: Vec<HostageGroup>,
    /// Native objects (zlib streams, TLS contexts, sockets, N-API wraps,
    /// backing stores) grouped by the JS that holds them.
    pub native_wrappers: Vec<crate::wrappers::WrapperGroup>,
    pub constructors: Vec<ConstructorStat>,
    pub warnings: Vec<String>,
}

/// The text given as the fix for hostage buffers.
pub const HOSTAGE_FIX: &str = "copy instead of slice: keep `Buffer.from(buf.subarray(a, b))` or \
`Uint8Array.prototype.slice` (a copy) instead of `buf.subarray()`/`buf.slice()` (a view that pins the whole parent buffer)";

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Display name of a node.
pub(crate) fn node_label(s: &HeapSnapshot, i: NodeIx) -> String {
    let t = s.types();
    let ty = s.node_type(i);
    let name = s.node_name(i);
    if i == 0 {
        return "(root)".into();
    }
    if ty == t.string {
        return format!("\"{}\"", short(name, 40));
    }
    if ty == t.closure {
        let n = if name.is_empty() { "(anonymous)" } else { name };
        return match s.location(i) {
            // 0-based in the snapshot; any u32 (a corrupt one too) shows.
            Some((sid, line, col)) => format!(
                "{n}() [script {sid}:{}:{}]",
                u64::from(line) + 1,
                u64::from(col) + 1
            ),
            None => format!("{n}()"),
        };
    }
    let name = name.trim_end_matches(" / ").trim_end();
    if name.is_empty() {
        return format!("({})", s.node_type_name(i));
    }
    short(name, 80)
}

fn edge_label(s: &HeapSnapshot, e: &Edge) -> String {
    let t = s.types();
    match s.edge_name(e) {
        None if e.ty == t.e_element => format!("[{}]", e.name_or_index),
        None => format!("{{{}}}", e.name_or_index),
        Some(n) if e.ty == t.e_property => format!(".{}", short(n, 60)),
        Some(n) if e.ty == t.e_context => format!("{} (closure variable)", short(n, 60)),
        // Root -> user global shortcuts are named by an index ("2"): show just `~`.
        Some(n) if e.ty == t.e_shortcut && n.bytes().all(|b| b.is_ascii_digit()) => "~".to_string(),
        Some(n) if e.ty == t.e_shortcut => format!("~{}", short(n, 60)),
        Some(n) => format!("{{{}}}", short(n, 60)),
    }
}

fn build_path(s: &HeapSnapshot, i: NodeIx, max: usize) -> Vec<PathStep> {
    steps(s, s.retainer_path(i, max))
}

pub(crate) fn steps(s: &HeapSnapshot, path: Vec<(NodeIx, Edge)>) -> Vec<PathStep> {
    path.into_iter()
        .map(|(_, e)| PathStep {
            edge_type: s.edge_type_name(&e).to_string(),
            edge: edge_label(s, &e),
            node: node_label(s, e.to),
            node_type: s.node_type_name(e.to).to_string(),
            node_id: s.node_id(e.to),
        })
        .collect()
}

/// `(root) --~global--> global --.kept--> Array --[3]--> Buffer`
pub fn path_text(path: &[PathStep]) -> String {
    let mut out = String::from("(root)");
    for st in path {
        let _ = write!(out, " --{}--> {}", st.edge, st.node);
    }
    out
}

/// Path pattern used for grouping: element indices folded, last steps only.
fn path_pattern(path: &[PathStep]) -> String {
    let from = path.len().saturating_sub(8);
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    } else {
        out.push_str("(root)");
    }
    for st in &path[from..] {
        let numeric = st.edge.starts_with('{')
            && st.edge[1..]
                .trim_end_matches('}')
                .bytes()
                .all(|b| b.is_ascii_digit());
        let e = if st.edge_type == "element" || st.edge_type == "hidden" || numeric {
            "[]".to_string()
        } else {
            st.edge.clone()
        };
        let _ = write!(out, " --{e}--> {}", st.node);
    }
    out
}

/// The JS name that holds the end of the path, e.g. `kept[3]` or `server.cache.buf`.
pub fn held_by(path: &[PathStep]) -> String {
    let join = |name: &str, suffix: &str| {
        if suffix.is_empty() || suffix.starts_with('[') {
            format!("{name}{suffix}")
        } else {
            format!("{name}.{suffix}")
        }
    };
    let mut suffix = String::new();
    for k in (0..path.len()).rev() {
        let st = &path[k];
        let (owner, owner_ty) = if k == 0 {
            ("(root)", "synthetic")
        } else {
            (path[k - 1].node.as_str(), path[k - 1].node_type.as_str())
        };
        match st.edge_type.as_str() {
            "element" if owner_ty != "synthetic" => {
                suffix = if suffix.is_empty() || suffix.starts_with('[') {
                    format!("{}{suffix}", st.edge)
                } else {
                    format!("{}.{suffix}", st.edge)
                };
                continue;
            }
            "property" => {
                suffix = join(st.edge.trim_start_matches('.'), &suffix);
                continue;
            }
            "context" => return join(st.edge.trim_end_matches(" (closure variable)"), &suffix),
            "shortcut" => {
                return if suffix.is_empty() {
                    st.node.clone()
                } else {
                    suffix
                };
            }
            _ => {}
        }
        // An unnamed (internal, hidden, or GC-root) edge.
        if owner_ty == "synthetic" {
            let what = match owner {
                "(Stack roots)" => "a local variable of a running function".to_string(),
                "(Global handles)" => "a global handle (native code)".to_string(),
                "(Handle scope)" => "a handle scope (native code)".to_string(),
                "(root)" | "(GC roots)" => st.node.clone(),
                o => o.to_string(),
            };
            return if suffix.is_empty() {
                what
            } else if suffix.starts_with('[') {
                format!("{}{suffix} (in {what})", st.node)
            } else {
                format!("{suffix} (in {what})")
            };
        }
        if !suffix.is_empty() {
            return if suffix.starts_with('[') {
                format!("{}{suffix}", st.node)
            } else {
                suffix
            };
        }
    }
    if suffix.is_empty() {
        "(internal)".into()
    } else {
        suffix
    }
}

/// `kept[3]` → `kept[]`.
pub(crate) fn fold_indices(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_idx = false;
    for c in s.chars() {
        if in_idx {
            if c == ']' {
                in_idx = false;
                out.push(']');
            } else if !c.is_ascii_digit() {
                in_idx = false;
                out.push(c);
            }
            continue;
        }
        out.push(c);
        if c == '[' {
            in_idx = true;
        }
    }
    out
}

fn is_external_node(s: &HeapSnapshot, i: NodeIx) -> bool {
    s.node_type(i) == s.types().native
}

/// Sum of native self sizes in the dominator subtree of every node, bottom-up.
fn retained_external(s: &HeapSnapshot) -> Vec<u64> {
    // Order nodes so children come before their dominators: by decreasing distance
    // does not work for dominators; use an explicit child-count topological pass.
    let n = s.node_count();
    let mut ext: Vec<u64> = (0..n as u32)
        .map(|i| {
            if is_external_node(s, i) {
                s.self_size(i)
            } else {
                0
            }
        })
        .collect();
    let mut pending = vec![0u32; n];
    for i in 1..n as u32 {
        pending[s.idom(i) as usize] += 1;
    }
    let mut stack: Vec<u32> = (1..n as u32)
        .filter(|&i| pending[i as usize] == 0)
        .collect();
    while let Some(i) = stack.pop() {
        let d = s.idom(i);
        if d == i {
            continue;
        }
        ext[d as usize] += ext[i as usize];
        pending[d as usize] -= 1;
        if pending[d as usize] == 0 && d != 0 {
            stack.push(d);
        }
    }
    ext
}

/// A view: an object with an internal `buffer` edge to an ArrayBuffer.
pub(crate) fn view_buffer(s: &HeapSnapshot, v: NodeIx) -> Option<NodeIx> {
    let t = s.types();
    if s.node_type(v) != t.object {
        return None;
    }
    s.edges(v).find_map(|e| {
        (e.ty == t.e_internal
            && s.edge_name(&e) == Some("buffer")
            && s.node_name(e.to) == "ArrayBuffer")
            .then_some(e.to)
    })
}

struct Candidate {
    ab: NodeIx,
    parent_bytes: u64,
    views: Vec<NodeIx>,
}

/// ArrayBuffers with a big backing store whose only essential retainers are views.
fn hostage_candidates(s: &HeapSnapshot, opts: &AnalyzeOptions) -> Vec<Candidate> {
    let t = s.types();
    let mut out = Vec::new();
    for d in 0..s.node_count() as u32 {
        if s.node_type(d) != t.native || s.self_size(d) < opts.hostage_min_parent {
            continue;
        }
        if s.node_name(d) != "system / JSArrayBufferData" {
            continue;
        }
        for ab in s.retainers(d) {
            if s.node_name(ab) != "ArrayBuffer" {
                continue;
            }
            let rets: Vec<NodeIx> = s.retainers(ab).collect();
            if rets.is_empty() {
                continue;
            }
            let mut views = Vec::new();
            let mut only_views = true;
            for r in rets {
                if view_buffer(s, r) == Some(ab) {
                    // A view may also hold it via another (named) edge: then it is not a hostage.
                    let direct = s.edges(r).any(|e| {
                        e.to == ab
                            && (e.ty == t.e_property || e.ty == t.e_element || e.ty == t.e_context)
                    });
                    if direct {
                        only_views = false;
                        break;
                    }
                    if !views.contains(&r) {
                        views.push(r);
                    }
                } else {
                    only_views = false;
                    break;
                }
            }
            if only_views && !views.is_empty() {
                out.push(Candidate {
                    ab,
                    parent_bytes: s.self_size(d),
                    views,
                });
            }
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.parent_bytes));
    out
}

/// Union length of byte ranges.
fn union_len(mut r: Vec<(u64, u64)>) -> u64 {
    r.sort();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in r {
        match cur {
            Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    if let Some((a, b)) = cur {
        total += b - a;
    }
    total
}

/// Reads view geometry from the live process, by snapshot node id.
pub type GeometryFn<'a> = dyn FnMut(&[u64]) -> HashMap<u64, ViewGeometry> + 'a;

/// Most candidate views queried live.
const MAX_LIVE_VIEWS: usize = 2000;

/// Analyse a parsed snapshot. With `geometry`, hostage candidates are confirmed
/// against the live process; without it they are offline estimates.
pub fn analyze(
    s: &HeapSnapshot,
    source: &str,
    opts: &AnalyzeOptions,
    geometry: Option<&mut GeometryFn<'_>>,
) -> SnapshotReport {
    let t = s.types();
    let n = s.node_count();
    let mut js_heap = 0u64;
    let mut ab_bytes = 0u64;
    let mut native = 0u64;
    let mut ctor: HashMap<(u32, &str), (u64, u64)> = HashMap::new();
    for i in 0..n as u32 {
        let ty = s.node_type(i);
        let sz = s.self_size(i);
        if ty == t.native {
            if s.node_name(i) == "system / JSArrayBufferData" {
                ab_bytes += sz;
            } else {
                native += sz;
            }
        } else {
            js_heap += sz;
        }
        if ty == t.object
            || ty == t.closure
            || ty == t.native
            || ty == t.array
            || ty == t.string
            || ty == t.code
        {
            let name = if ty == t.string {
                "(string)"
            } else {
                s.node_name(i)
            };
            let c = ctor.entry((ty, name)).or_default();
            c.0 += 1;
            c.1 += sz;
        }
    }
    let mut constructors: Vec<ConstructorStat> = ctor
        .into_iter()
        .map(|((ty, name), (count, bytes))| ConstructorStat {
            name: short(name, 100),
            node_type: s
                .meta
                .node_types
                .get(ty as usize)
                .cloned()
                .unwrap_or_default(),
            count,
            self_bytes: bytes,
        })
        .collect();
    constructors.sort_by(|a, b| b.self_bytes.cmp(&a.self_bytes).then(a.name.cmp(&b.name)));
    constructors.truncate(opts.top.max(30));

    let ext = retained_external(s);
    let top_retainers = top_retainers(s, opts, &ext);
    let external = external_groups(s, opts);
    let hostage_buffers = hostages(s, opts, geometry);
    let native_wrappers = crate::wrappers::wrapper_groups(s, opts);

    SnapshotReport {
        source: source.to_string(),
        file_bytes: s.bytes_read,
        node_count: n as u64,
        edge_count: s.edge_count() as u64,
        total_bytes: s.total_size(),
        js_heap_bytes: js_heap,
        array_buffer_bytes: ab_bytes,
        native_bytes: native,
        extra_native_bytes: s.meta.extra_native_bytes,
        global_handles: s.global_handle_count(),
        top_retainers,
        external,
        hostage_buffers,
        native_wrappers,
        constructors,
        warnings: s.warnings.clone(),
    }
}

/// Whether a node is interesting as a "retainer" finding.
fn reportable(s: &HeapSnapshot, i: NodeIx) -> bool {
    let t = s.types();
    let ty = s.node_type(i);
    if i == 0
        || ty == t.synthetic
        || ty == t.hidden
        || ty == t.code
        || ty == t.object_shape
        || ty == t.array
    {
        return false;
    }
    let name = s.node_name(i);
    !(name.starts_with("system / ") && name != "system / Context")
}

/// Pick disjoint big retainers: walking down the dominator tree, a node replaces
/// its selected ancestor when it holds at least half of it.
fn select_disjoint(
    s: &HeapSnapshot,
    candidates: &[NodeIx],
    weight: &dyn Fn(NodeIx) -> u64,
    top: usize,
) -> Vec<NodeIx> {
    let mut selected: Vec<NodeIx> = Vec::new();
    let mut slot_of: HashMap<NodeIx, usize> = HashMap::new();
    for &c in candidates {
        let w = weight(c);
        if w == 0 {
            break;
        }
        // Find a selected ancestor on the dominator chain.
        let mut a = s.idom(c);
        let mut steps = 0;
        let mut anc = None;
        while a != 0 && steps < 10_000 {
            if let Some(&slot) = slot_of.get(&a) {
                anc = Some((a, slot));
                break;
            }
            a = s.idom(a);
            steps += 1;
        }
        match anc {
            Some((a, slot)) => {
                if w * 2 >= weight(a) {
                    slot_of.remove(&a);
                    selected[slot] = c;
                    slot_of.insert(c, slot);
                }
            }
            None => {
                if selected.len() < top {
                    slot_of.insert(c, selected.len());
                    selected.push(c);
                }
            }
        }
    }
    selected.sort_by_key(|&c| std::cmp::Reverse(weight(c)));
    selected
}

fn top_by<F: Fn(NodeIx) -> u64>(s: &HeapSnapshot, k: usize, key: F) -> Vec<NodeIx> {
    let mut v: Vec<NodeIx> = (1..s.node_count() as u32)
        .filter(|&i| reportable(s, i) && key(i) > 0)
        .collect();
    if v.len() > k {
        v.select_nth_unstable_by_key(k, |&i| std::cmp::Reverse(key(i)));
        v.truncate(k);
    }
    v.sort_by_key(|&i| std::cmp::Reverse(key(i)));
    v
}

fn top_retainers(s: &HeapSnapshot, opts: &AnalyzeOptions, ext: &[u64]) -> Vec<RetainerFinding> {
    let cands = top_by(s, 4000, |i| s.retained_size(i));
    let picked = select_disjoint(s, &cands, &|i| s.retained_size(i), opts.top);
    picked
        .into_iter()
        .map(|i| {
            let path = build_path(s, i, opts.max_path);
            RetainerFinding {
                node_id: s.node_id(i),
                name: node_label(s, i),
                node_type: s.node_type_name(i).to_string(),
                self_size: s.self_size(i),
                retained_size: s.retained_size(i),
                retained_external: ext[i as usize],
                held_by: held_by(&path),
                path_text: path_text(&path),
                path,
                allocated_by: s.allocation_site(i),
            }
        })
        .collect()
}

fn external_groups(s: &HeapSnapshot, opts: &AnalyzeOptions) -> Vec<ExternalGroup> {
    let t = s.types();
    struct G {
        kind: String,
        holder: String,
        count: u64,
        bytes: u64,
        ex: NodeIx,
        ex_size: u64,
    }
    let mut groups: HashMap<(String, String), G> = HashMap::new();
    let mut small = (0u64, 0u64);
    let mut paths_left = 200_000usize;
    for i in 0..s.node_count() as u32 {
        if s.node_type(i) != t.native {
            continue;
        }
        let sz = s.self_size(i);
        let name = s.node_name(i);
        let is_ab = name == "system / JSArrayBufferData";
        let min = if is_ab { 1024 } else { opts.native_min };
        if sz == 0 {
            continue;
        }
        if sz < min || paths_left == 0 {
            small.0 += 1;
            small.1 += sz;
            continue;
        }
        paths_left -= 1;
        let kind = if is_ab {
            "ArrayBuffer backing store".to_string()
        } else {
            short(name, 100)
        };
        let path = build_path(s, i, opts.max_path);
        let holder = if path.is_empty() {
            "(unreachable from the roots)".to_string()
        } else {
            path_pattern(&path)
        };
        let g = groups.entry((kind.clone(), holder.clone())).or_insert(G {
            kind,
            holder,
            count: 0,
            bytes: 0,
            ex: i,
            ex_size: 0,
        });
        g.count += 1;
        g.bytes += sz;
        if sz > g.ex_size {
            g.ex = i;
            g.ex_size = sz;
        }
    }
    let mut v: Vec<G> = groups.into_values().collect();
    v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.holder.cmp(&b.holder)));
    v.truncate(opts.top);
    let mut out: Vec<ExternalGroup> = v
        .into_iter()
        .map(|g| ExternalGroup {
            kind: g.kind,
            holder: g.holder,
            count: g.count,
            bytes: g.bytes,
            example_id: s.node_id(g.ex),
            example_path: build_path(s, g.ex, opts.max_path),
        })
        .collect();
    if small.0 > 0 {
        out.push(ExternalGroup {
            kind: "(small native entries, not grouped)".into(),
            holder: String::new(),
            count: small.0,
            bytes: small.1,
            example_id: 0,
            example_path: Vec::new(),
        });
    }
    out
}

fn hostages(
    s: &HeapSnapshot,
    opts: &AnalyzeOptions,
    geometry: Option<&mut GeometryFn<'_>>,
) -> Vec<HostageGroup> {
    let cands = hostage_candidates(s, opts);
    let live = geometry.is_some();
    let mut geo: HashMap<u64, ViewGeometry> = HashMap::new();
    if let Some(g) = geometry {
        let mut ids = Vec::new();
        for c in &cands {
            for &v in &c.views {
                if ids.len() < MAX_LIVE_VIEWS {
                    ids.push(s.node_id(v));
                }
            }
        }
        if !ids.is_empty() {
            geo = g(&ids);
        }
    }
    let mut groups: HashMap<String, HostageGroup> = HashMap::new();
    for c in cands {
        let mut views = Vec::new();
        let mut ranges = Vec::new();
        let mut all_known = true;
        for &v in &c.views {
            let id = s.node_id(v);
            let g = geo.get(&id);
            match g {
                Some(g) => ranges.push((g.byte_offset, g.byte_offset + g.byte_length)),
                None => all_known = false,
            }
            views.push(HostageView {
                node_id: id,
                class: s.node_name(v).to_string(),
                byte_offset: g.map(|g| g.byte_offset),
                byte_length: g.map(|g| g.byte_length),
                allocated_by: s.allocation_site(v).or_else(|| s.allocation_site(c.ab)),
            });
        }
        let confirmed = live && all_known;
        let (view_bytes, wasted) = if confirmed {
            let covered = union_len(ranges).min(c.parent_bytes);
            (Some(covered), c.parent_bytes - covered)
        } else {
            (None, c.parent_bytes)
        };
        if live && confirmed && wasted * 2 < c.parent_bytes {
            // The views cover most of the buffer: not a hostage.
            continue;
        }
        if live && !confirmed && !geo.is_empty() {
            // Could not read all views (e.g. collected since): keep as an estimate.
        }
        let first_view = c.views[0];
        let path = build_path(s, first_view, opts.max_path);
        let holder = path_pattern(&path);
        let hb = HostageBuffer {
            array_buffer_id: s.node_id(c.ab),
            parent_bytes: c.parent_bytes,
            view_count: c.views.len() as u64,
            views: views.into_iter().take(8).collect(),
            view_bytes,
            wasted_bytes: wasted,
            confirmed,
            held_by: held_by(&path),
            path_text: path_text(&path),
            path,
        };
        let key = format!("{holder}|{confirmed}");
        let g = groups.entry(key).or_insert_with(|| HostageGroup {
            held_by: fold_indices(&hb.held_by),
            holder: holder.clone(),
            count: 0,
            parent_bytes: 0,
            view_bytes: if confirmed { Some(0) } else { None },
            wasted_bytes: 0,
            confirmed,
            evidence: if confirmed {
                "live".into()
            } else {
                "offline-estimate: the ArrayBuffer is reachable only through views; view lengths are not in the \
                 snapshot, so the waste is an upper bound (run `offheap snapshot PID` on the live process to measure it)"
                    .into()
            },
            fix: HOSTAGE_FIX.into(),
            examples: Vec::new(),
        });
        g.count += 1;
        g.parent_bytes += hb.parent_bytes;
        if let (Some(a), Some(b)) = (g.view_bytes.as_mut(), hb.view_bytes) {
            *a += b;
        }
        g.wasted_bytes += hb.wasted_bytes;
        if g.examples.len() < 5 {
            g.examples.push(hb);
        }
    }
    let mut v: Vec<HostageGroup> = groups.into_values().collect();
    v.sort_by(|a, b| {
        b.wasted_bytes
            .cmp(&a.wasted_bytes)
            .then(a.holder.cmp(&b.holder))
    });
    v.truncate(opts.top);
    v
}

impl SnapshotReport {
    /// Human-readable report. Names from the heap (and the source's path)
    /// are terminal-safe: no control character, no line break of their own.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Heap snapshot {} ({}, {} nodes, {} edges)",
            t(&self.source),
            human(self.file_bytes),
            self.node_count,
            self.edge_count
        );
        let _ = writeln!(
            o,
            "  total {}: JS heap {}, ArrayBuffer backing stores {}, other native {}",
            human(self.total_bytes),
            human(self.js_heap_bytes),
            human(self.array_buffer_bytes),
            human(self.native_bytes)
        );
        if let Some(x) = self.extra_native_bytes.filter(|&x| x > 0) {
            let _ = writeln!(
                o,
                "  extra native bytes reported by V8 (not attributed to objects): {}",
                human(x)
            );
        }
        if let Some(g) = self.global_handles {
            let _ = writeln!(
                o,
                "  global handles: {g} (compare two snapshots: growth means forgotten napi/persistent references)"
            );
        }
        for w in &self.warnings {
            let _ = writeln!(o, "  warning: {}", t(w));
        }
        let _ = writeln!(
            o,
            "\nHostage buffers (small views keeping a big ArrayBuffer alive):"
        );
        if self.hostage_buffers.is_empty() {
            let _ = writeln!(o, "  none found");
        }
        for g in &self.hostage_buffers {
            let _ = writeln!(
                o,
                "  {} held by `{}`: {} buffer(s), {} kept alive{}, {} wasted [{}]",
                if g.confirmed {
                    "CONFIRMED"
                } else {
                    "suspected"
                },
                t(&g.held_by),
                g.count,
                human(g.parent_bytes),
                g.view_bytes
                    .map(|v| format!(" by views covering {}", human(v)))
                    .unwrap_or_default(),
                human(g.wasted_bytes),
                if g.confirmed {
                    "live"
                } else {
                    "offline estimate, upper bound"
                }
            );
            if let Some(e) = g.examples.first() {
                let _ = writeln!(o, "    path: {}", t(&e.path_text));
                for v in e.views.iter().take(3) {
                    let _ = writeln!(
                        o,
                        "    view {}@{}: offset {}, length {} of a {} parent{}",
                        t(&v.class),
                        v.node_id,
                        v.byte_offset
                            .map(|x| x.to_string())
                            .unwrap_or_else(|| "?".into()),
                        v.byte_length
                            .map(|x| x.to_string())
                            .unwrap_or_else(|| "?".into()),
                        human(e.parent_bytes),
                        v.allocated_by
                            .as_ref()
                            .map(|a| format!(", allocated in {}", t(a)))
                            .unwrap_or_default()
                    );
                }
            }
            let _ = writeln!(o, "    fix: {}", t(&g.fix));
        }
        let _ = writeln!(o, "\nTop retainers (by retained size):");
        for r in &self.top_retainers {
            let _ = writeln!(
                o,
                "  {:>10}  {} @{} held by `{}` (self {}, external {}){}",
                human(r.retained_size),
                t(&r.name),
                r.node_id,
                t(&r.held_by),
                human(r.self_size),
                human(r.retained_external),
                r.allocated_by
                    .as_ref()
                    .map(|a| format!(", allocated in {}", t(a)))
                    .unwrap_or_default()
            );
            let _ = writeln!(o, "              {}", t(&r.path_text));
        }
        let _ = writeln!(o, "\nExternal memory by retainer:");
        for g in &self.external {
            let _ = writeln!(
                o,
                "  {:>10}  {} x{}  {}",
                human(g.bytes),
                t(&g.kind),
                g.count,
                t(&g.holder)
            );
        }
        if !self.native_wrappers.is_empty() {
            let _ = writeln!(o, "\nNative objects by JS holder:");
            for g in self.native_wrappers.iter().take(15) {
                let _ = writeln!(
                    o,
                    "  {:>8}  {} {} ({}) held by `{}` ({}){}{}",
                    g.count,
                    t(&g.wrapper),
                    t(&g.class),
                    t(&g.native),
                    t(&g.held_by),
                    t(&g.holder),
                    if g.reported_bytes > 0 {
                        format!(", {} reported", human(g.reported_bytes))
                    } else {
                        String::new()
                    },
                    g.allocated_by
                        .as_ref()
                        .map(|a| format!(", allocated in {}", t(a)))
                        .unwrap_or_default()
                );
                if !g.path_text.is_empty() {
                    let _ = writeln!(o, "            {}", t(&g.path_text));
                }
            }
        }
        let _ = writeln!(o, "\nConstructors (by self size):");
        for c in self.constructors.iter().take(15) {
            let _ = writeln!(
                o,
                "  {:>10}  {:>8}  {} ({})",
                human(c.self_bytes),
                c.count,
                t(&c.name),
                t(&c.node_type)
            );
        }
        o
    }
}

// ---------------------------------------------------------------- compare

/// Something that grew between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Growing {
    /// `constructor`, `retainer` or `global_handles`.
    pub kind: String,
    pub name: String,
    pub count_before: u64,
    pub count_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Objects of this constructor present only in the second snapshot (stable ids).
    pub new_objects: u64,
    pub new_bytes: u64,
    pub node_id: Option<u64>,
    /// For retainers: who holds it; for constructors: who holds the largest new object.
    pub held_by: String,
    pub path_text: String,
    pub path: Vec<PathStep>,
    pub allocated_by: Option<String>,
}

/// The comparison of two snapshots of one process.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub before: String,
    pub after: String,
    pub total_before: u64,
    pub total_after: u64,
    pub global_handles_before: Option<u64>,
    pub global_handles_after: Option<u64>,
    pub growing: Vec<Growing>,
    pub warnings: Vec<String>,
}

/// What is kept of the first snapshot while the second is analysed.
pub struct Baseline {
    source: String,
    /// (id, retained), sorted by id.
    ids: Vec<(u32, u64)>,
    ctor: HashMap<(String, String), (u64, u64)>,
    total: u64,
    global_handles: Option<u64>,
    warnings: Vec<String>,
}

fn ctor_key(s: &HeapSnapshot, i: NodeIx) -> Option<(String, String)> {
    let t = s.types();
    let ty = s.node_type(i);
    if ty == t.object
        || ty == t.closure
        || ty == t.native
        || ty == t.array
        || ty == t.string
        || ty == t.code
    {
        let name = if ty == t.string {
            "(string)"
        } else {
            s.node_name(i)
        };
        Some((s.node_type_name(i).to_string(), short(name, 100)))
    } else {
        None
    }
}

impl Baseline {
    pub fn of(s: &HeapSnapshot, source: &str) -> Baseline {
        let n = s.node_count();
        let mut ids: Vec<(u32, u64)> = (0..n as u32)
            .map(|i| (s.node_id(i) as u32, s.retained_size(i)))
            .collect();
        ids.sort_unstable_by_key(|x| x.0);
        let mut ctor: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for i in 0..n as u32 {
            if let Some(k) = ctor_key(s, i) {
                let c = ctor.entry(k).or_default();
                c.0 += 1;
                c.1 += s.self_size(i);
            }
        }
        Baseline {
            source: source.to_string(),
            ids,
            ctor,
            total: s.total_size(),
            global_handles: s.global_handle_count(),
            warnings: s.warnings.clone(),
        }
    }
    fn retained_of(&self, id: u32) -> Option<u64> {
        self.ids
            .binary_search_by_key(&id, |x| x.0)
            .ok()
            .map(|k| self.ids[k].1)
    }
}

/// Compare a baseline with a later snapshot of the same process.
pub fn compare(
    a: &Baseline,
    s: &HeapSnapshot,
    after: &str,
    opts: &AnalyzeOptions,
) -> CompareReport {
    let n = s.node_count();
    // Per constructor: count, bytes, new count, new bytes, biggest new object.
    #[derive(Default)]
    struct C {
        count: u64,
        bytes: u64,
        new_count: u64,
        new_bytes: u64,
        /// New objects per holder (immediate dominator): (count, bytes, one of them).
        /// The example is taken from the holder of most new objects, not from
        /// the single biggest one, which is often an unrelated one-off.
        holders: HashMap<NodeIx, (u64, u64, NodeIx)>,
    }
    let mut ctor: HashMap<(String, String), C> = HashMap::new();
    let mut retained_delta: Vec<(NodeIx, u64)> = Vec::new();
    for i in 0..n as u32 {
        let id = s.node_id(i) as u32;
        let before = a.retained_of(id);
        if let Some(k) = ctor_key(s, i) {
            let c = ctor.entry(k).or_default();
            c.count += 1;
            c.bytes += s.self_size(i);
            if before.is_none() {
                c.new_count += 1;
                c.new_bytes += s.self_size(i);
                let h = c.holders.entry(s.idom(i)).or_insert((0, 0, i));
                h.0 += 1;
                h.1 += s.retained_size(i);
                // Prefer an example whose allocating function is known.
                if h.2 != i && s.allocation_site(h.2).is_none() && s.allocation_site(i).is_some() {
                    h.2 = i;
                }
            }
        }
        if let Some(b) = before {
            let r = s.retained_size(i);
            if r > b && reportable(s, i) {
                retained_delta.push((i, r - b));
            }
        }
    }
    let mut growing = Vec::new();
    let mut cs: Vec<(&(String, String), &C)> = ctor
        .iter()
        .filter(|(k, c)| {
            let (bc, bb) = a.ctor.get(*k).copied().unwrap_or((0, 0));
            let (dc, db) = (c.count.saturating_sub(bc), c.bytes.saturating_sub(bb));
            // Engine internals (code, maps, feedback) grow as code warms up: only
            // large growth counts. Objects count from 10 new ones or 16 KiB.
            let internal = k.0 == "code"
                || k.0 == "hidden"
                || k.0 == "object shape"
                || k.1.starts_with('(')
                || (k.1.starts_with("system / ") && k.1 != "system / JSArrayBufferData");
            c.new_count > 0
                && if internal {
                    db >= opts.min_growth_internal
                } else {
                    dc >= 10 || db >= 16 * 1024
                }
        })
        .collect();
    let delta = |k: &(String, String), c: &C| {
        let (_, bb) = a.ctor.get(k).copied().unwrap_or((0, 0));
        c.bytes.saturating_sub(bb)
    };
    cs.sort_by(|x, y| {
        delta(y.0, y.1)
            .cmp(&delta(x.0, x.1))
            .then(y.1.new_count.cmp(&x.1.new_count))
    });
    for (k, c) in cs.into_iter().take(opts.top) {
        let (bc, bb) = a.ctor.get(k).copied().unwrap_or((0, 0));
        let example = c.holders.values().max_by_key(|h| (h.0, h.1)).map(|h| h.2);
        let (path, node_id, alloc) = match example {
            Some(i) => (
                build_path(s, i, opts.max_path),
                Some(s.node_id(i)),
                s.allocation_site(i),
            ),
            None => (Vec::new(), None, None),
        };
        growing.push(Growing {
            kind: "constructor".into(),
            name: k.1.clone(),
            count_before: bc,
            count_after: c.count,
            bytes_before: bb,
            bytes_after: c.bytes,
            new_objects: c.new_count,
            new_bytes: c.new_bytes,
            node_id,
            held_by: held_by(&path),
            path_text: path_text(&path),
            path,
            allocated_by: alloc,
        });
    }
    // Retainers whose retained size grew (same id in both snapshots).
    retained_delta.retain(|x| x.1 >= 16 * 1024);
    retained_delta.sort_by_key(|x| std::cmp::Reverse(x.1));
    retained_delta.truncate(4000);
    let dmap: HashMap<NodeIx, u64> = retained_delta.iter().copied().collect();
    let cands: Vec<NodeIx> = retained_delta.iter().map(|x| x.0).collect();
    let picked = select_disjoint(
        s,
        &cands,
        &|i| dmap.get(&i).copied().unwrap_or(0),
        opts.top.min(10),
    );
    for i in picked {
        let path = build_path(s, i, opts.max_path);
        let after_r = s.retained_size(i);
        let d = dmap[&i];
        growing.push(Growing {
            kind: "retainer".into(),
            name: node_label(s, i),
            count_before: 1,
            count_after: 1,
            bytes_before: after_r - d,
            bytes_after: after_r,
            new_objects: 0,
            new_bytes: 0,
            node_id: Some(s.node_id(i)),
            held_by: held_by(&path),
            path_text: path_text(&path),
            path,
            allocated_by: s.allocation_site(i),
        });
    }
    let gh_after = s.global_handle_count();
    if let (Some(x), Some(y)) = (a.global_handles, gh_after)
        && y > x
    {
        // First: the clearest sign of a native-side leak.
        growing.insert(
            0,
            Growing {
                kind: "global_handles".into(),
                name: "(Global handles)".into(),
                count_before: x,
                count_after: y,
                bytes_before: 0,
                bytes_after: 0,
                new_objects: y - x,
                new_bytes: 0,
                node_id: None,
                held_by: "native code (napi_create_reference / v8::Persistent)".into(),
                path_text: String::new(),
                path: Vec::new(),
                allocated_by: None,
            },
        );
    }
    let mut warnings = a.warnings.clone();
    warnings.extend(s.warnings.iter().cloned());
    CompareReport {
        before: a.source.clone(),
        after: after.to_string(),
        total_before: a.total,
        total_after: s.total_size(),
        global_handles_before: a.global_handles,
        global_handles_after: gh_after,
        growing,
        warnings,
    }
}

impl CompareReport {
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "Compare {} -> {}", t(&self.before), t(&self.after));
        let _ = writeln!(
            o,
            "  total {} -> {}",
            human(self.total_before),
            human(self.total_after)
        );
        if let (Some(a), Some(b)) = (self.global_handles_before, self.global_handles_after) {
            let _ = writeln!(
                o,
                "  global handles {a} -> {b}{}",
                if b > a {
                    "  (growing: forgotten napi references?)"
                } else {
                    ""
                }
            );
        }
        for w in &self.warnings {
            let _ = writeln!(o, "  warning: {}", t(w));
        }
        let _ = writeln!(o, "\nGrowing:");
        if self.growing.is_empty() {
            let _ = writeln!(o, "  nothing grew");
        }
        for g in &self.growing {
            match g.kind.as_str() {
                "constructor" => {
                    let _ = writeln!(
                        o,
                        "  constructor {}: {} -> {} objects (+{} new), {} -> {}",
                        t(&g.name),
                        g.count_before,
                        g.count_after,
                        g.new_objects,
                        human(g.bytes_before),
                        human(g.bytes_after)
                    );
                }
                "retainer" => {
                    let _ = writeln!(
                        o,
                        "  retainer {} @{}: retains {} -> {}",
                        t(&g.name),
                        g.node_id.unwrap_or(0),
                        human(g.bytes_before),
                        human(g.bytes_after)
                    );
                }
                _ => {
                    let _ = writeln!(
                        o,
                        "  {}: {} -> {}",
                        t(&g.name),
                        g.count_before,
                        g.count_after
                    );
                }
            }
            if !g.path_text.is_empty() {
                let _ = writeln!(o, "      held by `{}`: {}", t(&g.held_by), t(&g.path_text));
            }
            if let Some(a) = &g.allocated_by {
                let _ = writeln!(o, "      allocated in {}", t(a));
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_text_shows_names_from_the_heap_escaped() {
        let g = Growing {
            kind: "constructor".into(),
            name: "Evil\x1b]0;T\x07\nName".into(),
            count_before: 1,
            count_after: 2,
            bytes_before: 10,
            bytes_after: 20,
            new_objects: 1,
            new_bytes: 10,
            node_id: None,
            held_by: "cache\x1b[2J".into(),
            path_text: "(root) --.cache--> Map\u{9b}2J".into(),
            path: Vec::new(),
            allocated_by: Some("alloc\r\n".into()),
        };
        let r = CompareReport {
            before: "a.heapsnapshot".into(),
            after: "b\x1b.heapsnapshot".into(),
            total_before: 0,
            total_after: 0,
            global_handles_before: None,
            global_handles_after: None,
            growing: vec![g],
            warnings: vec!["w\x07".into()],
        };
        let text = r.to_text();
        assert!(!text.contains(['\x1b', '\x07', '\r', '\u{9b}']), "{text:?}");
        assert!(text.contains("Evil\\e]0;T\\x07\\nName"), "{text}");
        // Header, total, warning, "Growing:" (after a blank), one line per fact.
        assert_eq!(text.lines().count(), 8, "{text}");
    }

    #[test]
    fn union() {
        assert_eq!(union_len(vec![(0, 10), (5, 20), (30, 31)]), 21);
        assert_eq!(union_len(vec![]), 0);
    }

    fn step(ty: &str, edge: &str, node: &str) -> PathStep {
        PathStep {
            edge_type: ty.into(),
            edge: edge.into(),
            node: node.into(),
            node_type: "object".into(),
            node_id: 1,
        }
    }

    #[test]
    fn held_by_names() {
        let p = vec![
            step("shortcut", "~global", "global"),
            step("property", ".kept", "Array"),
            step("element", "[3]", "Buffer"),
        ];
        assert_eq!(held_by(&p), "kept[3]");
        let mut q = p.clone();
        q.push(step("property", "._outBuffer", "Buffer"));
        assert_eq!(held_by(&q), "kept[3]._outBuffer");
        let p = vec![
            step("context", "cache (closure variable)", "Map"),
            step("internal", "{table}", "x"),
        ];
        assert_eq!(held_by(&p), "cache");
        let p = vec![
            PathStep {
                node_type: "synthetic".into(),
                ..step("element", "[1]", "(GC roots)")
            },
            PathStep {
                node_type: "synthetic".into(),
                ..step("element", "[7]", "(Stack roots)")
            },
            step("hidden", "{26}", "Array"),
            step("element", "[0]", "Buffer"),
        ];
        assert_eq!(
            held_by(&p),
            "Array[0] (in a local variable of a running function)"
        );
        assert_eq!(fold_indices("kept[12].x[3]"), "kept[].x[]");
    }
}

// ---------------------------------------------------------------- summary.json

/// What `summary.json` carries under `"heap"`: the findings of the last
/// snapshot plus, when two were taken, what grew between them.
#[derive(Debug, Clone, Serialize)]
pub struct HeapSummary {
    /// Snapshot files the findings come from (first, last).
    pub snapshots: Vec<String>,
    pub hostage_buffers: Vec<HostageGroup>,
    pub top_retainers: Vec<RetainerFinding>,
    pub external: Vec<ExternalGroup>,
    /// Native objects by the JS that holds them (last snapshot; `count_before`
    /// from the first).
    pub native_wrappers: Vec<crate::wrappers::WrapperGroup>,
    pub growing: Vec<Growing>,
    pub global_handles: Option<u64>,
    pub global_handles_before: Option<u64>,
    pub js_heap_bytes: u64,
    pub array_buffer_bytes: u64,
    pub native_bytes: u64,
    pub warnings: Vec<String>,
}

impl HeapSummary {
    /// Combine the report of the last snapshot with the comparison against the first.
    pub fn new(last: &SnapshotReport, compare: Option<&CompareReport>) -> HeapSummary {
        let mut snapshots = Vec::new();
        if let Some(c) = compare {
            snapshots.push(c.before.clone());
        }
        snapshots.push(last.source.clone());
        let mut warnings = last.warnings.clone();
        if let Some(c) = compare {
            for w in &c.warnings {
                if !warnings.contains(w) {
                    warnings.push(w.clone());
                }
            }
        }
        HeapSummary {
            snapshots,
            hostage_buffers: last.hostage_buffers.clone(),
            top_retainers: last.top_retainers.clone(),
            external: last.external.clone(),
            native_wrappers: last.native_wrappers.clone(),
            growing: compare.map(|c| c.growing.clone()).unwrap_or_default(),
            global_handles: last.global_handles,
            global_handles_before: compare.and_then(|c| c.global_handles_before),
            js_heap_bytes: last.js_heap_bytes,
            array_buffer_bytes: last.array_buffer_bytes,
            native_bytes: last.native_bytes,
            warnings,
        }
    }

    /// Terminal rendering: the last snapshot's findings, then what grew.
    pub fn to_text(&self, last: &SnapshotReport, compare: Option<&CompareReport>) -> String {
        let mut o = last.to_text();
        if let Some(c) = compare {
            o.push('\n');
            o.push_str(&c.to_text());
        }
        o
    }
}
