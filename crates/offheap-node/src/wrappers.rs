//! Native objects and the JavaScript that holds them: the snapshot's side of
//! "native bytes tied to their JS owners".
//!
//! Node's C++ objects that wrap a JS object appear in a heap snapshot as
//! embedder (`native`) nodes, `Node / ZlibStream`, `Node / SecureContext`,
//! `Node / TLSWrap`, `Node / TCPWrap`, with a `native_to_javascript` edge to
//! their JS handle (whose `owner_symbol` is the stream or socket the program
//! sees). N-API objects carry the wrapped pointer under a private
//! `node:napi:wrapper` symbol, and ArrayBuffer backing stores are
//! `system / JSArrayBufferData` nodes. Every such object is a *wrapper*,
//! classed by the mechanism that allocates its native memory (`zlib`,
//! `brotli`, `tls-context`, `tls-socket`, `socket`, `napi`, `array-buffer`:
//! the names offheap-analysis gives native stacks).
//!
//! Wrappers are grouped by the JS that holds them: the retainer path from a
//! GC root along JavaScript edges only ([`HeapSnapshot::js_distances`]), since
//! Node's own cleanup queues and handle lists reach every wrapper too and
//! would otherwise be the shortest path. The group's name is the path's
//! [`held_by`](crate::analysis::held_by) with indices folded (`compressors`,
//! `kept[]`, `sessions[].zlib`); its holder is the nearest object on the path
//! (the Map, array or object, or a closure's context).
//!
//! Byte figures here are only what Node reports to the snapshot; the live
//! bytes come from the native agent and are joined in offheap-analysis.

use std::collections::HashMap;

use serde::Serialize;

use crate::analysis::{
    AnalyzeOptions, PathStep, fold_indices, held_by, node_label, path_text, steps, view_buffer,
};
use crate::heapsnapshot::{HeapSnapshot, NodeIx};

/// The mechanism class of an embedder node, from its name.
/// Node 20 names them `ZlibStream`, `BrotliCompressionStream`,
/// `SecureContext`, `TLSWrap`, `TCPSocketWrap`, `TCPServerWrap`, …
pub fn class_of_native(name: &str) -> Option<&'static str> {
    let n = name.strip_prefix("Node / ")?;
    if n == "ZlibStream" {
        Some("zlib")
    } else if n.starts_with("Brotli") && n.ends_with("Stream") {
        Some("brotli")
    } else if n == "SecureContext" {
        Some("tls-context")
    } else if n == "TLSWrap" {
        Some("tls-socket")
    } else if (n.starts_with("TCP") || n.starts_with("Pipe") || n.starts_with("UDP"))
        && n.ends_with("Wrap")
    {
        Some("socket")
    } else {
        None
    }
}

/// An embedder node: `native`, or `synthetic` with a `Node / ` name (Node
/// reports active handles, such as sockets, as roots of the embedder graph).
pub fn is_embedder(s: &HeapSnapshot, i: NodeIx) -> bool {
    let t = s.types();
    let ty = s.node_type(i);
    ty == t.native || (ty == t.synthetic && s.node_name(i).starts_with("Node / "))
}

/// Wrappers of one mechanism held by the same JS (`summary.json`
/// `heap.native_wrappers`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WrapperGroup {
    /// `zlib`, `brotli`, `tls-context`, `tls-socket`, `socket`, `napi`, `array-buffer`.
    pub class: String,
    /// The native node's name (`Node / ZlibStream`), `napi_wrap` or `system / JSArrayBufferData`.
    pub native: String,
    /// Constructor of the wrapper objects the program sees (`DeflateRaw`, `TLSSocket`, `Buffer`).
    pub wrapper: String,
    pub count: u64,
    /// In the start snapshot, the wrappers of the same class held by the same name.
    pub count_before: Option<u64>,
    /// Native bytes Node reported for them in the snapshot (a lower bound:
    /// N-API memory and part of zlib's are not reported).
    pub reported_bytes: u64,
    /// The JS name that holds them, indices folded: `compressors`, `kept[]`.
    pub held_by: String,
    /// The nearest object on the path holding them: `Map`, `Array`, `Object`, `a closure variable`.
    pub holder: String,
    pub holder_type: String,
    pub holder_id: u64,
    /// Where the holder was allocated (snapshots with allocation traces).
    pub holder_allocated_by: Option<String>,
    /// Where the example wrapper was allocated (snapshots with allocation traces).
    pub allocated_by: Option<String>,
    pub example_id: u64,
    /// Retainer path from a GC root to the example wrapper.
    pub path_text: String,
    pub path: Vec<PathStep>,
}

/// Most wrappers whose retainer paths are traced; the rest are counted in
/// an `(other holders)` group of their class.
const MAX_TRACED: usize = 20_000;

/// Smallest ArrayBuffer backing store counted.
const MIN_BACKING_STORE: u64 = 4096;

/// Label of the `(other holders)` group.
pub const OTHER_HOLDERS: &str = "(other holders)";

/// The private symbol under which N-API keeps a wrapped object's pointer
/// (`<symbol node:napi:wrapper>`), not the registry of private symbols
/// that names it (`napi_wrapper`).
fn is_napi_wrapper_key(name: Option<&str>) -> bool {
    name.is_some_and(|n| {
        n.starts_with("<symbol") && (n.contains("napi:wrapper") || n.contains("napi_wrapper"))
    })
}

struct Item {
    class: &'static str,
    native: String,
    wrapper: NodeIx,
    /// The wrapper is a bare handle (no `owner_symbol`): the object that
    /// holds it as `.context`/`._handle` is the one the program sees.
    bare_handle: bool,
    reported: u64,
}

/// Properties through which Node's JS classes hold their native handle.
fn is_handle_property(name: Option<&str>) -> bool {
    name.is_some_and(|n| {
        matches!(n, "context" | "_handle" | "handle" | "_context")
            || (n.starts_with("<symbol") && n.contains("kHandle"))
    })
}

/// The JS object a native wrapper serves: its handle's `owner_symbol` (the
/// stream or socket), else the handle.
fn owner_of_handle(s: &HeapSnapshot, handle: NodeIx) -> NodeIx {
    let t = s.types();
    s.edges(handle)
        .find(|e| {
            e.ty == t.e_property
                && s.edge_name(e).is_some_and(|n| n.contains("owner_symbol"))
                && s.node_type(e.to) == t.object
        })
        .map(|e| e.to)
        .unwrap_or(handle)
}

/// Bytes Node reports for a native wrapper: its own and its native
/// children's (`zlib_memory`, the compression context), two levels deep.
fn reported_bytes(s: &HeapSnapshot, i: NodeIx) -> u64 {
    let mut total = s.self_size(i);
    for e in s.edges(i) {
        if !is_embedder(s, e.to) || s.edge_name(&e) == Some("native_to_javascript") {
            continue;
        }
        total = total.saturating_add(s.self_size(e.to));
        for e2 in s.edges(e.to) {
            if is_embedder(s, e2.to)
                && e2.to != i
                && s.edge_name(&e2) != Some("native_to_javascript")
                && class_of_native(s.node_name(e2.to)).is_none()
            {
                total = total.saturating_add(s.self_size(e2.to));
            }
        }
    }
    total
}

fn collect(s: &HeapSnapshot) -> Vec<Item> {
    let t = s.types();
    let mut out = Vec::new();
    for i in 1..s.node_count() as u32 {
        let ty = s.node_type(i);
        if is_embedder(s, i) {
            let name = s.node_name(i);
            if let Some(class) = class_of_native(name) {
                let Some(handle) = s
                    .edges(i)
                    .find(|e| {
                        s.edge_name(e) == Some("native_to_javascript") && !is_embedder(s, e.to)
                    })
                    .map(|e| e.to)
                else {
                    continue;
                };
                let wrapper = owner_of_handle(s, handle);
                out.push(Item {
                    class,
                    native: name.to_string(),
                    wrapper,
                    bare_handle: wrapper == handle,
                    reported: reported_bytes(s, i),
                });
            } else if name == "system / JSArrayBufferData" && s.self_size(i) >= MIN_BACKING_STORE {
                let Some(ab) = s.retainers(i).find(|&r| s.node_name(r) == "ArrayBuffer") else {
                    continue;
                };
                let view = s.retainers(ab).find(|&v| view_buffer(s, v) == Some(ab));
                out.push(Item {
                    class: "array-buffer",
                    native: name.to_string(),
                    wrapper: view.unwrap_or(ab),
                    bare_handle: false,
                    reported: s.self_size(i),
                });
            }
        } else if ty == t.object
            && s.edges(i).any(|e| {
                e.ty == t.e_property
                    && s.node_type(e.to) == t.object
                    && is_napi_wrapper_key(s.edge_name(&e))
            })
        {
            out.push(Item {
                class: "napi",
                native: "napi_wrap".into(),
                wrapper: i,
                bare_handle: false,
                reported: 0,
            });
        }
    }
    out
}

/// The nearest object holding the end of `path`: (label, node type, id,
/// its index in `path`).
fn holder_of(path: &[PathStep]) -> (String, String, u64, Option<usize>) {
    for (k, st) in path.iter().enumerate().rev().skip(1) {
        let internal = st.node.starts_with("system / ") || st.node.starts_with('(');
        if st.node == "system / Context" {
            return (
                "a closure variable".into(),
                st.node_type.clone(),
                st.node_id,
                Some(k),
            );
        }
        if st.node_type == "synthetic" {
            break;
        }
        if (st.node_type == "object" || st.node_type == "closure") && !internal {
            return (st.node.clone(), st.node_type.clone(), st.node_id, Some(k));
        }
    }
    ("(a GC root)".into(), "synthetic".into(), 0, None)
}

/// The name a group is known by: the path's `held_by`, indices folded, and
/// when that is only a property of an object held without a name of its own
/// (a Map's value, a stream's `_outBuffer`), prefixed with the name that
/// holds that object: `compressors → DeflateRaw._outBuffer`.
fn group_name(path: &[PathStep]) -> String {
    let held = fold_indices(&held_by(path));
    let (holder, _, _, at) = holder_of(path);
    let Some(at) = at else {
        return held;
    };
    if holder == "a closure variable" || holder == "global" {
        return held;
    }
    let outer = fold_indices(&held_by(&path[..=at]));
    // Not when the holder is held by a GC root itself (`a global handle
    // (native code)`): its name says nothing more.
    if outer == "(internal)"
        || held.starts_with(&outer)
        || outer.starts_with("a ")
        || outer.contains(" (in ")
        || held.contains(" (in ")
    {
        return held;
    }
    format!("{outer} → {holder}.{held}")
}

/// Groups the snapshot's wrappers by mechanism and by the JS that holds them,
/// largest first: at most `opts.top` per class, the rest in an
/// [`OTHER_HOLDERS`] group.
pub fn wrapper_groups(s: &HeapSnapshot, opts: &AnalyzeOptions) -> Vec<WrapperGroup> {
    let items = collect(s);
    if items.is_empty() {
        return Vec::new();
    }
    let t = s.types();
    let dist = s.js_distances();
    struct G {
        group: WrapperGroup,
        wrappers: HashMap<String, u64>,
    }
    let mut groups: HashMap<(&'static str, String), G> = HashMap::new();
    let mut untraced: HashMap<&'static str, G> = HashMap::new();
    for (k, it) in items.iter().enumerate() {
        let mut wrapper = it.wrapper;
        let mut raw = Vec::new();
        if k < MAX_TRACED {
            raw = s.retainer_path_by(wrapper, opts.max_path, &dist);
            if raw.is_empty() {
                // Held by native code only (an active handle, a pending request).
                raw = s.retainer_path(wrapper, opts.max_path);
            }
            if it.bare_handle
                && let Some(&(r, e)) = raw.last()
                && e.ty == t.e_property
                && is_handle_property(s.edge_name(&e))
                && s.node_type(r) == t.object
            {
                wrapper = r;
                raw.pop();
            }
        }
        let wname = node_label(s, wrapper);
        let new_group = |held: String, path: Vec<PathStep>| {
            let (holder, holder_type, holder_id) = if path.is_empty() {
                (OTHER_HOLDERS.to_string(), String::new(), 0)
            } else {
                let (h, ty, id, _) = holder_of(&path);
                (h, ty, id)
            };
            G {
                group: WrapperGroup {
                    class: it.class.to_string(),
                    native: it.native.clone(),
                    wrapper: String::new(),
                    count: 0,
                    count_before: None,
                    reported_bytes: 0,
                    held_by: held,
                    holder,
                    holder_type,
                    holder_id,
                    holder_allocated_by: None,
                    allocated_by: s.allocation_site(wrapper),
                    example_id: s.node_id(wrapper),
                    path_text: if path.is_empty() {
                        String::new()
                    } else {
                        path_text(&path)
                    },
                    path,
                },
                wrappers: HashMap::new(),
            }
        };
        let g = if k < MAX_TRACED {
            let path = steps(s, std::mem::take(&mut raw));
            let held = if path.is_empty() {
                "(unreachable from the roots)".to_string()
            } else {
                group_name(&path)
            };
            groups
                .entry((it.class, held.clone()))
                .or_insert_with(|| new_group(held, path))
        } else {
            untraced
                .entry(it.class)
                .or_insert_with(|| new_group(OTHER_HOLDERS.into(), Vec::new()))
        };
        g.group.count += 1;
        g.group.reported_bytes = g.group.reported_bytes.saturating_add(it.reported);
        *g.wrappers.entry(wname).or_default() += 1;
        if g.group.allocated_by.is_none()
            && let Some(a) = s.allocation_site(wrapper)
        {
            g.group.allocated_by = Some(a);
        }
    }
    let mut by_class: HashMap<&'static str, Vec<G>> = HashMap::new();
    for ((class, _), g) in groups {
        by_class.entry(class).or_default().push(g);
    }
    let mut out = Vec::new();
    for (class, mut gs) in by_class {
        gs.sort_by(|a, b| {
            b.group
                .count
                .cmp(&a.group.count)
                .then(a.group.held_by.cmp(&b.group.held_by))
        });
        let rest: Vec<G> = if gs.len() > opts.top {
            gs.split_off(opts.top)
        } else {
            Vec::new()
        };
        if !rest.is_empty() || untraced.contains_key(class) {
            let mut other = untraced.remove(class).unwrap_or_else(|| G {
                group: WrapperGroup {
                    held_by: OTHER_HOLDERS.into(),
                    holder: OTHER_HOLDERS.into(),
                    holder_type: String::new(),
                    holder_id: 0,
                    holder_allocated_by: None,
                    allocated_by: None,
                    count: 0,
                    reported_bytes: 0,
                    path_text: String::new(),
                    path: Vec::new(),
                    ..rest[0].group.clone()
                },
                wrappers: HashMap::new(),
            });
            for r in rest {
                other.group.count += r.group.count;
                other.group.reported_bytes = other
                    .group
                    .reported_bytes
                    .saturating_add(r.group.reported_bytes);
                for (w, c) in r.wrappers {
                    *other.wrappers.entry(w).or_default() += c;
                }
            }
            gs.push(other);
        }
        out.extend(gs);
    }
    for g in untraced.into_values() {
        out.push(g);
    }
    let mut out: Vec<WrapperGroup> = out
        .into_iter()
        .map(|mut g| {
            g.group.wrapper = g
                .wrappers
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|x| x.0)
                .unwrap_or_default();
            g.group
        })
        .collect();
    // Holders' allocation sites, by node id.
    let want: Vec<u64> = out
        .iter()
        .map(|g| g.holder_id)
        .filter(|&id| id != 0)
        .collect();
    if !want.is_empty() && s.meta.n_trace.is_some() {
        let mut site: HashMap<u64, Option<String>> = HashMap::new();
        for i in 0..s.node_count() as u32 {
            let id = s.node_id(i);
            if want.contains(&id) && !site.contains_key(&id) {
                site.insert(id, s.allocation_site(i));
            }
        }
        for g in &mut out {
            g.holder_allocated_by = site.get(&g.holder_id).cloned().flatten();
        }
    }
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.class.cmp(&b.class))
            .then(a.held_by.cmp(&b.held_by))
    });
    out
}

/// Fills `count_before` of the end snapshot's groups from the start
/// snapshot's: the wrappers of the same class held by the same name.
pub fn with_baseline(end: &mut [WrapperGroup], start: &[WrapperGroup]) {
    for g in end.iter_mut() {
        g.count_before = Some(
            start
                .iter()
                .filter(|b| b.class == g.class && b.held_by == g.held_by)
                .map(|b| b.count)
                .sum(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot built from (type, name, self size) nodes and
    /// (from, edge type, name or index, to) edges, node 0 the root.
    fn snapshot(nodes: &[(&str, &str, u64)], edges: &[(usize, &str, &str, usize)]) -> String {
        let node_types = [
            "hidden",
            "array",
            "object",
            "closure",
            "native",
            "synthetic",
        ];
        let edge_types = [
            "context", "element", "property", "internal", "hidden", "weak",
        ];
        let mut strings: Vec<String> = vec![String::new()];
        let mut sid = |s: &str| match strings.iter().position(|x| x == s) {
            Some(i) => i,
            None => {
                strings.push(s.to_string());
                strings.len() - 1
            }
        };
        let mut ns = Vec::new();
        for (i, (ty, name, size)) in nodes.iter().enumerate() {
            let count = edges.iter().filter(|e| e.0 == i).count();
            let t = node_types.iter().position(|x| x == ty).unwrap();
            ns.push(format!("{t},{},{},{size},{count}", sid(name), i * 2 + 1));
        }
        let mut es = Vec::new();
        for i in 0..nodes.len() {
            for e in edges.iter().filter(|e| e.0 == i) {
                let t = edge_types.iter().position(|x| *x == e.1).unwrap();
                let name = if e.1 == "element" || e.1 == "hidden" {
                    e.2.parse::<usize>().unwrap()
                } else {
                    sid(e.2)
                };
                es.push(format!("{t},{name},{}", e.3 * 5));
            }
        }
        let strings: Vec<String> = strings
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect();
        format!(
            r#"{{"snapshot":{{"meta":{{"node_fields":["type","name","id","self_size","edge_count"],
            "node_types":[{:?},"string","number","number","number"],
            "edge_fields":["type","name_or_index","to_node"],
            "edge_types":[{:?},"string_or_number","node"]}},
            "node_count":{},"edge_count":{}}},
            "nodes":[{}],"edges":[{}],"strings":[{}]}}"#,
            node_types,
            edge_types,
            nodes.len(),
            es.len(),
            ns.join(","),
            es.join(","),
            strings.join(",")
        )
    }

    /// Three DeflateRaw streams in a Map held by a closure variable, each
    /// also reached (more directly) from Node's cleanup queue through its
    /// native ZlibStream; two N-API-wrapped objects in an array.
    fn zlib_and_napi() -> String {
        let mut nodes: Vec<(&str, &str, u64)> = vec![
            ("synthetic", "", 0),                  // 0 root
            ("synthetic", "(GC roots)", 0),        // 1
            ("object", "system / Context", 40),    // 2
            ("object", "Map", 32),                 // 3
            ("array", "", 100),                    // 4 the Map's table
            ("native", "Node / CleanupQueue", 64), // 5
            ("object", "Array", 32),               // 6 blocks
        ];
        let mut edges: Vec<(usize, &str, &str, usize)> = vec![
            (0, "element", "1", 1),
            (0, "element", "2", 5),
            (1, "element", "1", 2),
            (2, "context", "compressors", 3),
            (2, "context", "blocks", 6),
            (3, "internal", "table", 4),
        ];
        let idx = ["0", "1", "2"];
        for k in idx {
            let base = nodes.len();
            nodes.push(("object", "DeflateRaw", 200)); // base
            nodes.push(("object", "Zlib", 56)); // base+1
            nodes.push(("native", "Node / ZlibStream", 464)); // base+2
            nodes.push(("native", "Node / zlib_memory", 284_672)); // base+3
            edges.push((4, "internal", k, base));
            edges.push((base, "property", "_handle", base + 1));
            edges.push((base + 1, "property", "<symbol owner_symbol>", base));
            edges.push((base + 1, "internal", "javascript_to_native", base + 2));
            edges.push((base + 2, "internal", "native_to_javascript", base + 1));
            edges.push((base + 2, "internal", "zlib_memory", base + 3));
            edges.push((5, "element", k, base + 2));
        }
        for k in &idx[..2] {
            let base = nodes.len();
            nodes.push(("object", "Block", 24));
            nodes.push(("object", "Object", 32)); // the External
            edges.push((6, "element", k, base));
            edges.push((base, "property", "<symbol node:napi:wrapper>", base + 1));
        }
        // The registry of private symbols names the key: not a wrapper.
        let base = nodes.len();
        nodes.push(("object", "Object", 56));
        nodes.push(("object", "Object", 24));
        edges.push((2, "context", "privateSymbols", base));
        edges.push((base, "property", "napi_wrapper", base + 1));
        snapshot(&nodes, &edges)
    }

    #[test]
    fn wrappers_are_grouped_by_the_js_that_holds_them() {
        let s = HeapSnapshot::from_reader(zlib_and_napi().as_bytes()).unwrap();
        let g = wrapper_groups(&s, &AnalyzeOptions::default());
        assert_eq!(g.len(), 2, "{g:#?}");
        let z = g.iter().find(|g| g.class == "zlib").unwrap();
        assert_eq!(
            (
                z.count,
                z.held_by.as_str(),
                z.holder.as_str(),
                z.wrapper.as_str()
            ),
            (3, "compressors", "Map", "DeflateRaw"),
            "{z:#?}"
        );
        assert_eq!(z.reported_bytes, 3 * (464 + 284_672));
        assert!(z.path_text.contains("compressors"), "{}", z.path_text);
        assert!(!z.path_text.contains("CleanupQueue"), "{}", z.path_text);
        let n = g.iter().find(|g| g.class == "napi").unwrap();
        assert_eq!(
            (
                n.count,
                n.held_by.as_str(),
                n.holder.as_str(),
                n.wrapper.as_str()
            ),
            (2, "blocks[]", "Array", "Block")
        );
        // Against a start snapshot that held one of each.
        let mut end = g.clone();
        let mut start = g.clone();
        for x in &mut start {
            x.count = 1;
        }
        with_baseline(&mut end, &start);
        assert!(end.iter().all(|x| x.count_before == Some(1)));
    }

    #[test]
    fn odd_wrappers_never_panic() {
        // A ZlibStream whose native_to_javascript edge leads to a native
        // node, one with no such edge, a backing store with no ArrayBuffer,
        // and a wrapper reachable only through native nodes.
        let nodes = [
            ("synthetic", "", 0),
            ("native", "Node / ZlibStream", 10),
            ("native", "Node / ZlibStream", 10),
            ("native", "system / JSArrayBufferData", 1 << 20),
            ("synthetic", "Node / TCPSocketWrap", 10),
            ("object", "TCP", 10),
            ("object", "Socket", 10),
        ];
        let edges = [
            (0, "element", "1", 1),
            (0, "element", "2", 2),
            (0, "element", "3", 3),
            (0, "element", "4", 4),
            (1, "internal", "native_to_javascript", 2),
            (4, "internal", "native_to_javascript", 5),
            (5, "property", "<symbol owner_symbol>", 6),
            (6, "property", "_handle", 5),
        ];
        let s = HeapSnapshot::from_reader(snapshot(&nodes, &edges).as_bytes()).unwrap();
        let g = wrapper_groups(&s, &AnalyzeOptions::default());
        assert_eq!(g.len(), 1, "{g:#?}");
        assert_eq!((g[0].class.as_str(), g[0].count), ("socket", 1));
        assert_eq!(g[0].wrapper, "Socket");
        // Empty and tiny snapshots.
        let s = HeapSnapshot::from_reader(snapshot(&nodes[..1], &[]).as_bytes()).unwrap();
        assert!(wrapper_groups(&s, &AnalyzeOptions::default()).is_empty());
    }
}
