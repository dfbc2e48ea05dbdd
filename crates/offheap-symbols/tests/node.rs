//! Real node: a C N-API addon walks the frame pointers of the JS -> native
//! call (through V8's builtins and JIT frames) and returns the return
//! addresses; the script copies its perf map and /proc/self/maps while it
//! runs. We then resolve the addon, node, builtin and JS frames offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use offheap_format::native::ModuleRecord;
use offheap_symbols::{
    Frame, FrameKind, ProcessSymbols, is_allocator_frame, modules_from_proc_maps,
};

const ADDON: &str = r#"
#include <node_api.h>
#include <stdio.h>
#include <stdint.h>

/* Walks frame pointers from its caller up; validates each step. */
__attribute__((noinline)) static int walk(uintptr_t *out, int max) {
    void **fp = (void **)__builtin_frame_address(0);
    uintptr_t lo = (uintptr_t)fp;
    int n = 0;
    while (n < max && fp) {
        uintptr_t ret = (uintptr_t)fp[1];
        if (!ret) break;
        out[n++] = ret;
        void **next = (void **)fp[0];
        if ((uintptr_t)next <= (uintptr_t)fp || (uintptr_t)next - lo > (8u << 20) || ((uintptr_t)next & 7)) break;
        fp = next;
    }
    return n;
}

__attribute__((noinline)) static napi_value Capture(napi_env env, napi_callback_info info) {
    (void)info;
    uintptr_t rets[128];
    int n = walk(rets, 128);
    napi_value arr;
    napi_create_array_with_length(env, n, &arr);
    for (int i = 0; i < n; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%lx", (unsigned long)rets[i]);
        napi_value s;
        napi_create_string_utf8(env, buf, NAPI_AUTO_LENGTH, &s);
        napi_set_element(env, arr, i, s);
    }
    return arr;
}

NAPI_MODULE_INIT() {
    napi_value fn;
    napi_create_function(env, "capture", NAPI_AUTO_LENGTH, Capture, NULL, &fn);
    napi_set_named_property(env, exports, "capture", fn);
    return exports;
}
"#;

// Line numbers are asserted: namedJsCaller's call is on line 4.
const SCRIPT: &str = r#"const fs = require('fs');
const [addonPath, out] = process.argv.slice(2);
const addon = require(addonPath);
function namedJsCaller(n) { return addon.capture(n); }
const stacks = [];
stacks.push(namedJsCaller(1));
stacks.push([1].map(() => namedJsCaller(2))[0]);
stacks.push(namedJsCaller.call(null, 3));
stacks.push(Reflect.apply(namedJsCaller, null, [4]));
// Warm up so that baseline/optimized code calls the builtins (short calls
// go to V8's remapped copy of them).
function hotLoop() { let last; for (let i = 0; i < 20000; i++) last = namedJsCaller(i); return last; }
function hotCall() { let last; for (let i = 0; i < 20000; i++) last = namedJsCaller.call(null, i); return last; }
function hotApply() { let last; for (let i = 0; i < 20000; i++) last = Reflect.apply(namedJsCaller, null, [i]); return last; }
function hotMap() { let last; for (let i = 0; i < 20000; i++) last = [i].map(namedJsCaller)[0]; return last; }
stacks.push(hotLoop(), hotCall(), hotApply(), hotMap());
// A worker isolate: its own code range, so its own copy of the builtins.
const { Worker } = require('worker_threads');
const worker = new Worker(
  `const { parentPort } = require('worker_threads');
   const addon = require(${JSON.stringify(addonPath)});
   function namedJsCaller(n) { return addon.capture(n); }
   parentPort.postMessage(namedJsCaller(6));
   parentPort.once('message', () => process.exit(0));`,
  { eval: true });
worker.once('message', (workerStack) => {
  stacks.push(namedJsCaller(5), workerStack);
  const t = Date.now();
  fs.copyFileSync(`/tmp/perf-${process.pid}.map`, `${out}/perf.map`);
  fs.writeFileSync(`${out}/maps`, fs.readFileSync('/proc/self/maps'));
  fs.writeFileSync(`${out}/stacks.json`, JSON.stringify({ pid: process.pid, t, stacks }));
  worker.postMessage('done');
});
"#;

struct Captured {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    script: PathBuf,
    t: f64,
    stacks: Vec<Vec<u64>>,
    maps: String,
}

fn capture(perf_flag: &str) -> Captured {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(d.join("addon.c"), ADDON).unwrap();
    std::fs::write(d.join("script.js"), SCRIPT).unwrap();
    let st = Command::new("gcc")
        .args([
            "-g",
            "-O1",
            "-fno-omit-frame-pointer",
            "-shared",
            "-fPIC",
            "-I/usr/include/node",
            "-o",
        ])
        .arg(d.join("capture.node"))
        .arg(d.join("addon.c"))
        .status()
        .unwrap();
    assert!(st.success());
    // In the temp dir: --perf-basic-prof makes V8 write isolate-*-v8.log
    // files into the working directory.
    let out = Command::new("node")
        .current_dir(&d)
        .args([perf_flag, "--interpreted-frames-native-stack"])
        .arg(d.join("script.js"))
        .arg(d.join("capture.node"))
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("stacks.json")).unwrap()).unwrap();
    // The map in /tmp is ours: remove it (we work on the copy).
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", j["pid"]));
    let stacks = j["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|a| u64::from_str_radix(a.as_str().unwrap(), 16).unwrap())
                .collect()
        })
        .collect();
    Captured {
        script: d.join("script.js"),
        maps: std::fs::read_to_string(d.join("maps")).unwrap(),
        t: j["t"].as_f64().unwrap(),
        dir: d,
        _dir: dir,
        stacks,
    }
}

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| {
            format!(
                "{:x} {:?} {} [{}] {:?}:{:?}\n",
                f.address, f.kind, f.function, f.module, f.file, f.line
            )
        })
        .collect()
}

fn check_stack(frames: &[Frame], script: &Path) {
    let s = show(frames);
    assert_eq!(frames[0].function, "Capture", "{s}");
    assert!(frames[0].module.ends_with("capture.node"), "{s}");
    assert!(
        frames[0].file.as_deref().unwrap().ends_with("addon.c"),
        "{s}"
    );
    // The first JS frame is namedJsCaller, or the hot loop it was inlined
    // into by TurboFan (the perf map cannot show JS inlining).
    let js = frames
        .iter()
        .find(|f| f.kind == FrameKind::Js)
        .unwrap_or_else(|| panic!("no JS frame:\n{s}"));
    assert!(
        matches!(
            js.function.as_str(),
            "namedJsCaller" | "hotLoop" | "hotCall" | "hotApply" | "hotMap"
        ),
        "{s}"
    );
    // The worker's script is an eval string.
    let want = if js.file.as_deref() == Some("[worker eval]") {
        "[worker eval]"
    } else {
        script.to_str().unwrap()
    };
    assert_eq!(js.file.as_deref(), Some(want), "{s}");
    assert_eq!(js.module, want);
    if js.function == "namedJsCaller" && want != "[worker eval]" {
        assert_eq!(js.line, Some(4));
    }
    // node's API glue between the addon and JS is named.
    assert!(
        frames
            .iter()
            .any(|f| f.kind == FrameKind::Native && f.function.starts_with("v8::")),
        "{s}"
    );
    // Builtins (CEntry, JSEntry, ...) resolve to their names.
    assert!(
        frames
            .iter()
            .any(|f| f.kind == FrameKind::Builtin && f.function.starts_with("Builtins_")),
        "{s}"
    );
    assert!(!frames.iter().any(is_allocator_frame), "{s}");
    // Nothing inside V8's code range is left unnamed.
    let unknown: Vec<_> = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Unknown)
        .collect();
    assert!(unknown.is_empty(), "unknown frames:\n{s}");
}

#[test]
fn js_addon_and_builtin_frames_from_real_node() {
    let c = capture("--perf-basic-prof");
    let modules = modules_from_proc_maps(&c.maps);
    let node = modules
        .iter()
        .find(|m| m.path.ends_with("/node"))
        .expect("node module");
    // V8's short builtin calls: node's blob is mapped a second time.
    let remapped: Vec<_> = node
        .ranges
        .iter()
        .filter(|r| r.0 >= 0x1_0000_0000)
        .collect();
    eprintln!("node ranges: {:x?}", node.ranges);

    let mut syms = ProcessSymbols::new(&modules, Some(&c.dir.join("perf.map")));
    assert!(syms.perf_map_entries() > 1000);
    let stacks: Vec<(&[u64], f64)> = c.stacks.iter().map(|s| (&s[..], c.t)).collect();
    let all = syms.symbolize_stacks(&stacks);
    for frames in &all {
        eprintln!("----\n{}", show(frames));
        check_stack(frames, &c.script);
    }
    if !remapped.is_empty() {
        // Builtin frames inside the second mapping resolved through it.
        let in_copy = all
            .iter()
            .flatten()
            .filter(|f| {
                f.kind == FrameKind::Builtin
                    && remapped.iter().any(|r| f.address >= r.0 && f.address < r.1)
            })
            .count();
        assert!(in_copy > 0, "no frame in the remapped builtins");
    }
    // One stack at a time gives the same frames (cache across calls).
    assert_eq!(syms.symbolize(&c.stacks[0], c.t), all[0]);
}

/// The agent records only the ELF's PT_LOAD segments (dl_iterate_phdr):
/// then the remapped builtins (one copy per isolate: main thread and
/// worker) sit in "no module" and are found by fitting node's embedded blob.
#[test]
fn remapped_builtins_without_the_second_mapping() {
    // The map without Builtin:/BytecodeHandler: lines (and without the
    // isolate-*-v8.log files): builtins come from node's ELF symbols anyway.
    let c = capture("--perf-basic-prof-only-functions");
    let full_modules = modules_from_proc_maps(&c.maps);
    let node = full_modules
        .iter()
        .find(|m| m.path.ends_with("/node"))
        .unwrap();
    let bias = node.bias;
    // The copies: ranges whose address the ELF layout does not explain.
    let copies: Vec<(u64, u64, u64)> = node
        .ranges
        .iter()
        .copied()
        .filter(|r| r.0.wrapping_sub(bias) >= 0x1_0000_0000)
        .collect();
    if copies.is_empty() {
        eprintln!(
            "node did not remap its builtins here (short builtin calls off?); nothing to test"
        );
        return;
    }
    eprintln!("copies: {copies:x?}");
    let perf = c.dir.join("perf.map");
    let stacks: Vec<(&[u64], f64)> = c.stacks.iter().map(|s| (&s[..], c.t)).collect();
    let reference = ProcessSymbols::new(&full_modules, Some(&perf)).symbolize_stacks(&stacks);

    // More return addresses in each copy: the real builtin return addresses
    // the stacks hold at node's own mapping, moved into the copy (the same
    // code, called through the copy, returns there).
    let mut moved: Vec<(u64, String)> = Vec::new();
    for f in reference.iter().flatten() {
        if f.kind != FrameKind::Builtin || !f.module.ends_with("/node") {
            continue;
        }
        let a = f.address;
        if copies.iter().any(|r| a >= r.0 && a < r.1) {
            moved.push((a, f.function.clone()));
        } else if let Some(r) = node.ranges.iter().find(|r| a >= r.0 && a < r.1) {
            let off = a - r.0 + r.2;
            for copy in &copies {
                if off >= copy.2 && off < copy.2 + (copy.1 - copy.0) {
                    moved.push((copy.0 + off - copy.2, f.function.clone()));
                }
            }
        }
    }
    moved.sort();
    moved.dedup();
    eprintln!("addresses in the copies: {moved:x?}");
    assert!(moved.len() >= 3 * copies.len(), "{moved:x?}");

    let mut modules: Vec<ModuleRecord> = full_modules.clone();
    let node = modules
        .iter_mut()
        .find(|m| m.path.ends_with("/node"))
        .unwrap();
    node.ranges.retain(|r| !copies.contains(r));
    let moved_addrs: Vec<u64> = moved.iter().map(|m| m.0).collect();

    // One address alone fits several places: it must stay unknown, not be
    // named wrongly.
    let mut syms = ProcessSymbols::new(&modules, Some(&perf));
    let lone = syms.symbolize(&moved_addrs[..1], c.t);
    assert!(
        lone[0].kind == FrameKind::Unknown || lone[0].function == moved[0].1,
        "{lone:?}"
    );

    // All of them together fit in exactly one place per copy.
    let mut syms = ProcessSymbols::new(&modules, Some(&perf));
    let mut all_stacks = stacks.clone();
    all_stacks.push((&moved_addrs[..], c.t));
    let all = syms.symbolize_stacks(&all_stacks);
    eprintln!("{:?}", syms.notes());
    assert_eq!(
        syms.notes()
            .iter()
            .filter(|n| n.contains("remapped"))
            .count(),
        copies.len(),
        "{:?}",
        syms.notes()
    );
    let last = all.last().unwrap();
    eprintln!("{}", show(last));
    let got: Vec<(u64, String)> = last
        .iter()
        .map(|f| (f.address, f.function.clone()))
        .collect();
    assert_eq!(got, moved);
    assert!(
        last.iter()
            .all(|f| f.kind == FrameKind::Builtin && f.module.ends_with("/node"))
    );
    // The real stacks come out as with the second mappings recorded.
    assert_eq!(&all[..all.len() - 1], &reference[..]);
    for frames in &all[..all.len() - 1] {
        check_stack(frames, &c.script);
    }
    // Later single stacks in a copy resolve through what was found.
    assert_eq!(
        syms.symbolize(&moved_addrs[..1], c.t)[0].function,
        moved[0].1
    );
}
