//! Offline heap-snapshot analysis against snapshots written by real node.
use std::path::{Path, PathBuf};
use std::process::Command;

use offheap_node::{AnalyzeOptions, Error, SnapshotError, analyze_file, compare_files};

/// Run `script` with node; it writes snapshots with `snap(name)` into `dir`.
fn node(dir: &Path, script: &str) {
    let prelude = format!(
        "const snap = (n) => require('v8').writeHeapSnapshot(require('path').join({:?}, n));\n",
        dir.display().to_string()
    );
    let out = Command::new("node")
        .arg("-e")
        .arg(format!("{prelude}{script}"))
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One snapshot shared by the error tests (written once per test binary run).
fn small_snapshot(dir: &Path) -> PathBuf {
    node(dir, "global.x = [1,2,3]; snap('small.heapsnapshot');");
    dir.join("small.heapsnapshot")
}

#[test]
fn buffer_slices_are_hostages() {
    let dir = tempfile::tempdir().unwrap();
    node(
        dir.path(),
        "global.kept = [];
         function keepHeader(i) { const big = Buffer.alloc(1 << 20, i); kept.push(big.subarray(0, 10)); }
         for (let i = 0; i < 20; i++) keepHeader(i);
         // a full-length Buffer referenced directly is not a hostage
         global.whole = new ArrayBuffer(1 << 20);
         setImmediate(() => snap('h.heapsnapshot'));",
    );
    let r = analyze_file(
        &dir.path().join("h.heapsnapshot"),
        &AnalyzeOptions::default(),
    )
    .unwrap();
    let text = r.to_text();
    let g = r
        .hostage_buffers
        .iter()
        .find(|g| g.held_by.starts_with("kept["))
        .unwrap_or_else(|| panic!("no hostage group held by kept[]:\n{text}"));
    assert_eq!(g.count, 20, "{text}");
    assert_eq!(g.parent_bytes, 20 << 20);
    assert!(!g.confirmed, "offline is an estimate");
    assert!(g.fix.contains("Buffer.from(buf.subarray"));
    let ex = &g.examples[0];
    assert_eq!(ex.parent_bytes, 1 << 20);
    assert_eq!(ex.view_count, 1);
    assert_eq!(ex.views[0].class, "Buffer");
    assert_eq!(
        ex.views[0].byte_length, None,
        "the snapshot has no view lengths"
    );
    assert!(ex.path_text.contains(".kept"), "{}", ex.path_text);
    // The directly referenced ArrayBuffer is not reported as a hostage.
    assert_eq!(
        r.hostage_buffers.iter().map(|g| g.count).sum::<u64>(),
        20,
        "{text}"
    );
    assert!(r.array_buffer_bytes >= 21 << 20);
    // The external memory group names the holder.
    assert!(
        r.external
            .iter()
            .any(|e| e.holder.contains(".kept") && e.bytes >= 20 << 20),
        "{text}"
    );
    // JSON shape used in summary.json.
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["hostage_buffers"].is_array() && v["top_retainers"].is_array());
    assert!(r.global_handles.is_some());
}

#[test]
fn compare_finds_growing_constructor() {
    let dir = tempfile::tempdir().unwrap();
    node(
        dir.path(),
        "class LeakyThing { constructor(i) { this.i = i; this.tags = ['t' + i]; } }
         global.registry = { leaks: [] };
         function onRequest(i) { registry.leaks.push(new LeakyThing(i)); }
         for (let i = 0; i < 1000; i++) onRequest(i);
         setImmediate(() => {
           snap('a.heapsnapshot');
           for (let i = 0; i < 20000; i++) onRequest(i);
           snap('b.heapsnapshot');
         });",
    );
    let r = compare_files(
        &dir.path().join("a.heapsnapshot"),
        &dir.path().join("b.heapsnapshot"),
        &AnalyzeOptions::default(),
    )
    .unwrap();
    let text = r.to_text();
    let c = r
        .growing
        .iter()
        .find(|g| g.kind == "constructor" && g.name == "LeakyThing")
        .unwrap_or_else(|| panic!("LeakyThing not growing:\n{text}"));
    assert_eq!(c.count_before, 1000, "{text}");
    assert_eq!(c.count_after, 21000, "{text}");
    assert_eq!(c.new_objects, 20000, "{text}");
    assert!(c.held_by.contains("leaks"), "{text}");
    let ret = r
        .growing
        .iter()
        .find(|g| g.kind == "retainer")
        .unwrap_or_else(|| panic!("no growing retainer:\n{text}"));
    assert_eq!(ret.held_by, "registry.leaks", "{text}");
    // The shape summary.json carries under "heap".
    let last = analyze_file(
        &dir.path().join("b.heapsnapshot"),
        &AnalyzeOptions::default(),
    )
    .unwrap();
    let heap = serde_json::to_value(offheap_node::HeapSummary::new(&last, Some(&r))).unwrap();
    for k in ["hostage_buffers", "top_retainers", "growing"] {
        assert!(heap[k].is_array(), "{k}");
    }
    assert_eq!(heap["growing"][0]["name"], "LeakyThing");
    assert_eq!(heap["top_retainers"][0]["held_by"], "registry.leaks");
    assert!(ret.bytes_after > ret.bytes_before + 20000 * 16, "{text}");
}

#[test]
fn truncated_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = small_snapshot(dir.path());
    let data = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.heapsnapshot");
    std::fs::write(&cut, &data[..data.len() / 3]).unwrap();
    let e = analyze_file(&cut, &AnalyzeOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            Error::Snapshot {
                source: SnapshotError::Truncated { .. },
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("truncated") && msg.contains("cut.heapsnapshot"),
        "{msg}"
    );
    // Cut inside the strings (the last section): analysed, with a warning.
    let pos = data.windows(10).position(|w| w == b"\"strings\":").unwrap();
    std::fs::write(&cut, &data[..pos + 2000]).unwrap();
    let r = analyze_file(&cut, &AnalyzeOptions::default()).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("truncated") && w.contains("strings")),
        "{:?}",
        r.warnings
    );
    // Empty file.
    std::fs::write(&cut, b"").unwrap();
    let e = analyze_file(&cut, &AnalyzeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn corrupt_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = small_snapshot(dir.path());
    let mut data = std::fs::read(&p).unwrap();
    // Garbage in the middle of the nodes array.
    let nodes = data.windows(8).position(|w| w == b"\"nodes\":").unwrap();
    data[nodes + 5000] = b'x';
    let bad = dir.path().join("bad.heapsnapshot");
    std::fs::write(&bad, &data).unwrap();
    let e = analyze_file(&bad, &AnalyzeOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            Error::Snapshot {
                source: SnapshotError::Corrupt { .. },
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("corrupt") && msg.contains("nodes"), "{msg}");
    // Not JSON at all.
    std::fs::write(&bad, b"hello world").unwrap();
    let e = analyze_file(&bad, &AnalyzeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a heap snapshot"), "{e}");
    // Valid JSON, wrong shape.
    std::fs::write(&bad, br#"{"nodes":[1,2,3],"edges":[]}"#).unwrap();
    let e = analyze_file(&bad, &AnalyzeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    // Missing file.
    let e = analyze_file(&dir.path().join("nope"), &AnalyzeOptions::default()).unwrap_err();
    assert!(matches!(e, Error::File { .. }), "{e}");
}

/// Rewrite a Node 20 snapshot into another layout (fields reordered, the
/// optional `trace_node_id`/`detachedness` dropped, node types reordered, an
/// `extra_native_bytes` header) as other V8 versions write it: the analysis
/// must not change.
#[test]
fn layout_is_read_from_meta() {
    use serde_json::{Value, json};
    let dir = tempfile::tempdir().unwrap();
    node(
        dir.path(),
        "global.kept = []; for (let i = 0; i < 5; i++) kept.push(Buffer.alloc(1 << 20).subarray(0, 4));
         setImmediate(() => snap('o.heapsnapshot'));",
    );
    let orig = dir.path().join("o.heapsnapshot");
    let v: Value = serde_json::from_slice(&std::fs::read(&orig).unwrap()).unwrap();
    let meta = &v["snapshot"]["meta"];
    let nf_names: Vec<String> = serde_json::from_value(meta["node_fields"].clone()).unwrap();
    let ef_names: Vec<String> = serde_json::from_value(meta["edge_fields"].clone()).unwrap();
    let types: Vec<String> = serde_json::from_value(meta["node_types"][0].clone()).unwrap();
    let (nf, ef) = (nf_names.len(), ef_names.len());
    let pos = |names: &[String], k: &str| names.iter().position(|x| x == k).unwrap();
    let new_nf = ["name", "type", "id", "edge_count", "self_size"];
    let new_ef = ["to_node", "type", "name_or_index"];
    let new_types: Vec<String> = types.iter().rev().cloned().collect();
    let nodes: Vec<u64> = serde_json::from_value(v["nodes"].clone()).unwrap();
    let edges: Vec<u64> = serde_json::from_value(v["edges"].clone()).unwrap();
    let mut nn = Vec::new();
    for rec in nodes.chunks(nf) {
        for f in new_nf {
            let x = rec[pos(&nf_names, f)];
            nn.push(if f == "type" {
                (types.len() - 1) as u64 - x
            } else {
                x
            });
        }
    }
    let mut ne = Vec::new();
    for rec in edges.chunks(ef) {
        for f in new_ef {
            let x = rec[pos(&ef_names, f)];
            ne.push(if f == "to_node" {
                x / nf as u64 * new_nf.len() as u64
            } else {
                x
            });
        }
    }
    let mut w = v.clone();
    w["snapshot"]["meta"]["node_fields"] = json!(new_nf);
    w["snapshot"]["meta"]["edge_fields"] = json!(new_ef);
    let mut nt = meta["node_types"].clone();
    nt[0] = json!(new_types);
    nt.as_array_mut().unwrap().truncate(new_nf.len());
    w["snapshot"]["meta"]["node_types"] = nt;
    w["snapshot"]["extra_native_bytes"] = json!(12345);
    w["nodes"] = json!(nn);
    w["edges"] = json!(ne);
    let other = dir.path().join("other.heapsnapshot");
    std::fs::write(&other, serde_json::to_vec(&w).unwrap()).unwrap();

    let a = analyze_file(&orig, &AnalyzeOptions::default()).unwrap();
    let b = analyze_file(&other, &AnalyzeOptions::default()).unwrap();
    assert_eq!(b.extra_native_bytes, Some(12345));
    assert_eq!(a.node_count, b.node_count);
    assert_eq!(a.total_bytes, b.total_bytes);
    assert_eq!(a.array_buffer_bytes, b.array_buffer_bytes);
    assert_eq!(a.global_handles, b.global_handles);
    let sizes = |r: &offheap_node::SnapshotReport| {
        r.top_retainers
            .iter()
            .map(|x| (x.node_id, x.retained_size, x.held_by.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(sizes(&a), sizes(&b));
    let h = |r: &offheap_node::SnapshotReport| {
        r.hostage_buffers
            .iter()
            .map(|g| (g.held_by.clone(), g.count, g.parent_bytes))
            .collect::<Vec<_>>()
    };
    assert_eq!(h(&a), h(&b));
    assert_eq!(h(&b), vec![("kept[]".to_string(), 5, 5 << 20)]);
}

/// Forgotten N-API references (a real C addon that never deletes its refs)
/// show up as growing global handles.
#[test]
fn forgotten_napi_references_grow_global_handles() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("refs.c");
    std::fs::write(
        &c,
        r#"
#include <node_api.h>
static napi_value remember(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1]; napi_ref ref;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_create_reference(env, argv[0], 1, &ref); /* never napi_delete_reference'd */
  return NULL;
}
NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "remember", NAPI_AUTO_LENGTH, remember, NULL, &fn);
  napi_set_named_property(env, exports, "remember", fn);
  return exports;
}
"#,
    )
    .unwrap();
    let so = dir.path().join("refs.node");
    let st = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-I/usr/include/node", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .expect("gcc runs");
    assert!(st.success());
    node(
        dir.path(),
        &format!(
            "const addon = require({:?});
             class Listener {{ constructor(i) {{ this.i = i; }} }}
             setImmediate(() => {{
               snap('a.heapsnapshot');
               for (let i = 0; i < 500; i++) addon.remember(new Listener(i));
               snap('b.heapsnapshot');
             }});",
            so.display().to_string()
        ),
    );
    let a = dir.path().join("a.heapsnapshot");
    let b = dir.path().join("b.heapsnapshot");
    let ra = analyze_file(&a, &AnalyzeOptions::default()).unwrap();
    let rb = analyze_file(&b, &AnalyzeOptions::default()).unwrap();
    let (ga, gb) = (ra.global_handles.unwrap(), rb.global_handles.unwrap());
    assert!(gb >= ga + 500, "global handles {ga} -> {gb}");
    let r = compare_files(&a, &b, &AnalyzeOptions::default()).unwrap();
    let text = r.to_text();
    let g = r
        .growing
        .iter()
        .find(|g| g.kind == "global_handles")
        .unwrap_or_else(|| panic!("no global-handle growth:\n{text}"));
    assert!(g.count_after >= g.count_before + 500, "{text}");
    // The objects held only by those references: new Listener objects held by a global handle.
    let l = r
        .growing
        .iter()
        .find(|g| g.kind == "constructor" && g.name == "Listener")
        .unwrap();
    assert_eq!(l.new_objects, 500, "{text}");
    assert!(l.held_by.contains("global handle"), "{text}");
}
