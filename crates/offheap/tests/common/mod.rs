//! Shared helpers for the end-to-end tests: they run the real offheap binary
//! on real targets (node, C programs compiled here) and read what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn offheap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_offheap"));
    c.stdin(Stdio::null());
    c
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Compiles a C program (or shared object with `-shared -fPIC`).
    pub fn gcc(&self, src_name: &str, src: &str, out: &str, extra: &[&str]) -> PathBuf {
        let src_path = self.write(src_name, src);
        let out_path = self.path(out);
        let st = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out_path)
            .arg(&src_path)
            .args(extra)
            .status()
            .expect("gcc");
        assert!(st.success(), "gcc failed for {src_name}");
        out_path
    }
    /// `offheap run --quiet --out REC ARGS... -- CMD...` in the sandbox.
    pub fn run(&self, rec: &str, opts: &[&str], cmd: &[&str]) -> Output {
        offheap()
            .current_dir(self.dir.path())
            .args(["run", "--quiet", "--out", rec])
            .args(opts)
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }
}

pub fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json"))
        .unwrap_or_else(|e| panic!("{}: no summary.json: {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn kinds(summary: &serde_json::Value) -> Vec<String> {
    summary["verdict"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

pub fn describe(out: &Output, summary: &serde_json::Value) -> String {
    format!(
        "status {:?}\nstderr:\n{}\nsummary:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        serde_json::to_string_pretty(&summary["verdict"]).unwrap()
    )
}

/// A C N-API addon: `leakBytes(n)` mallocs n bytes and never frees them,
/// `churnBytes(n)` mallocs and frees.
pub const ADDON: &str = r#"
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;

/* Leaks n bytes on every call. */
__attribute__((noinline)) void *leak_bytes(size_t n) {
  void *p = malloc(n);
  memset(p, 7, n);
  sink = p;
  return p;
}

/* Legitimate churn: allocates n bytes and frees them. */
__attribute__((noinline)) void churn_bytes(size_t n) {
  void *p = malloc(n);
  memset(p, 1, n);
  sink = p;
  free(p);
}

static size_t arg_size(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double n = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_double(env, argv[0], &n);
  return (size_t)n;
}

static napi_value js_leak(napi_env env, napi_callback_info info) {
  leak_bytes(arg_size(env, info));
  return NULL;
}

static napi_value js_churn(napi_env env, napi_callback_info info) {
  churn_bytes(arg_size(env, info));
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "leakBytes", NAPI_AUTO_LENGTH, js_leak, NULL, &f);
  napi_set_named_property(env, exports, "leakBytes", f);
  napi_create_function(env, "churnBytes", NAPI_AUTO_LENGTH, js_churn, NULL, &f);
  napi_set_named_property(env, exports, "churnBytes", f);
  return exports;
}
"#;

/// The native-leak scenario: a leak through the addon beside far more churn.
/// The leaking JS function has a hostile name, to check escaping end to end.
pub const APP: &str = r#"
const addon = require('./leak.node');
function leakNative() { addon.leakBytes(64 * 1024); }          // up to 3.2 MB/s, never freed
// A literal key: V8 names the function after it, so the name reaches the perf map.
const hostile = { '<script>alert(1)</script>': function () { addon.leakBytes(16 * 1024); } };
const evil = hostile['<script>alert(1)</script>'];
function churnNative() { for (let i = 0; i < 40; i++) addon.churnBytes(256 * 1024); } // 200 MB/s, freed
function churnJs() { const b = []; for (let i = 0; i < 20; i++) b.push(Buffer.alloc(32 * 1024)); return b.length; }
let ticks = 0;
const t = setInterval(() => {
  leakNative();
  evil();
  churnNative();
  churnJs();
  if (++ticks >= 400) clearInterval(t);
}, 20);
"#;

/// Compiles the addon and writes the app into the sandbox.
pub fn build_addon(sb: &Sandbox) {
    sb.gcc(
        "leak.c",
        ADDON,
        "leak.node",
        &[
            "-shared",
            "-fPIC",
            "-I/usr/include/node",
            "-DNODE_GYP_MODULE_NAME=leak",
        ],
    );
    sb.write("app.js", APP);
}

/// Runs `cmd` to completion with its output captured, killing it and
/// failing the test if it takes longer than `limit` (a hang guard).
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
