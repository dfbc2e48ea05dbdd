//! `offheap check`: the leak gate, on real programs and addons compiled
//! here and on real node processes.

mod common;

use common::{Sandbox, offheap, output_within, summary};
use std::process::Output;
use std::time::Duration;

const GATE_FAILED: i32 = 23;

fn check(sb: &Sandbox, rec: &str, opts: &[&str], cmd: &[&str]) -> Output {
    let mut c = offheap();
    c.current_dir(sb.dir.path())
        .env_remove("GITHUB_ACTIONS")
        .args(["check", "--out", rec])
        .args(opts)
        .arg("--")
        .args(cmd);
    output_within(&mut c, Duration::from_secs(120))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The lost groups of summary.json's check section.
fn lost(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["check"]["leaks_at_exit"]["lost"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn gate<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["check"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no gate {name}: {}", s["check"]))
}

const C_LEAKS: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
static void *table[64];
struct node { struct node *next; char pad[56]; };
/* Loses every block: the pointer is dropped on return. */
__attribute__((noinline)) void lose_them(int n) {
  for (int i = 0; i < n; i++) { char *volatile p = malloc(100); memset(p, 1, 100); }
}
/* Keeps every block in a static table: reachable at exit. */
__attribute__((noinline)) void keep_them(int n) {
  for (int i = 0; i < n; i++) { table[i] = malloc(200); memset(table[i], 2, 200); }
}
/* A lost list: its head is lost directly, its tail indirectly. */
__attribute__((noinline)) void lose_list(void) {
  struct node *volatile a = malloc(sizeof *a);
  a->next = malloc(sizeof *a->next);
  a->next->next = 0;
}
int main(int argc, char **argv) {
  int mode = argc > 1 ? atoi(argv[1]) : 0;
  if (mode & 1) lose_them(10);
  if (mode & 2) keep_them(20);
  if (mode & 4) lose_list();
  char *tmp = malloc(10); free(tmp);
  printf("ok\n");
  return argc > 2 ? atoi(argv[2]) : 0;
}
"#;

/// Compiled without optimisation: GCC removes stores to a static that is
/// never read, and to heap memory that never escapes, which would change
/// what is reachable at exit.
fn c_program(sb: &Sandbox) -> String {
    sb.gcc("leaks.c", C_LEAKS, "leaks", &["-O0"])
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_program_that_loses_its_pointers_fails_the_gate_naming_its_function() {
    let sb = Sandbox::new();
    let prog = c_program(&sb);
    let junit = sb.path("leaks.xml");
    let out = check(
        &sb,
        "rec",
        &["--junit", junit.to_str().unwrap()],
        &[&prog, "5"],
    );
    assert_eq!(out.status.code(), Some(GATE_FAILED), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    assert_eq!(s["check"]["passed"], false);
    let g = lost(&s);
    let direct: Vec<&serde_json::Value> = g
        .iter()
        .filter(|g| g["class"] == "definitely-lost")
        .collect();
    let lose = direct
        .iter()
        .find(|g| g["function"] == "lose_them")
        .unwrap_or_else(|| panic!("no lose_them group: {}", s["check"]));
    assert_eq!(lose["blocks"], 10);
    assert_eq!(lose["bytes"], 1000);
    assert!(
        lose["frames"][0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("leaks.c")),
        "{lose}"
    );
    // The list: head directly, tail indirectly lost, both from lose_list.
    assert!(
        direct
            .iter()
            .any(|g| g["function"] == "lose_list" && g["blocks"] == 1)
    );
    assert!(
        g.iter()
            .any(|g| g["class"] == "indirectly-lost" && g["function"] == "lose_list"),
        "{}",
        s["check"]
    );
    // The gate's figures are summary.json's: 1000 + 64 + 64 bytes in 12 blocks.
    let l = &s["check"]["leaks_at_exit"];
    assert_eq!(l["definitely_lost"]["bytes"], 1064);
    assert_eq!(l["indirectly_lost"]["bytes"], 64);
    let gl = gate(&s, "leaks-at-exit");
    assert_eq!(gl["passed"], false);
    assert_eq!(gl["measured"], 1128.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAIL leaks-at-exit"), "{stderr}");
    assert!(stderr.contains(gl["message"].as_str().unwrap()), "{stderr}");
    assert!(stderr.contains("lose_them (leaks.c:"), "{stderr}");
    // JUnit: well-formed, a failing case per lost stack and for the gate.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let cases: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let failed: Vec<&str> = cases
        .iter()
        .filter(|c| c.children().any(|x| x.has_tag_name("failure")))
        .map(|c| c.attribute("name").unwrap())
        .collect();
    assert!(failed.contains(&"leaks-at-exit"), "{xml}");
    assert!(
        failed
            .iter()
            .any(|n| n.starts_with("definitely-lost from lose_them")),
        "{xml}"
    );
    assert_eq!(failed.len(), 4, "{xml}");
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite.attribute("failures"), Some("4"));
    assert_eq!(
        suite.attribute("tests"),
        Some(cases.len().to_string().as_str())
    );
    // `offheap report` recomputes the same gate from the recording.
    let rep = offheap()
        .args(["report", "--json"])
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert_eq!(again["check"], s["check"]);
}

#[test]
fn blocks_kept_in_a_static_table_pass_and_are_reported_as_still_reachable() {
    let sb = Sandbox::new();
    let prog = c_program(&sb);
    let out = check(&sb, "rec", &[], &[&prog, "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    assert_eq!(s["check"]["passed"], true, "{}", s["check"]);
    assert!(lost(&s).is_empty(), "{}", s["check"]);
    let reach = s["check"]["leaks_at_exit"]["reachable_top"]
        .as_array()
        .unwrap();
    let keep = reach
        .iter()
        .find(|g| g["function"] == "keep_them")
        .unwrap_or_else(|| panic!("{}", s["check"]));
    assert_eq!(keep["blocks"], 20);
    assert_eq!(keep["bytes"], 4000);
    assert_eq!(keep["class"], "reachable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass leaks-at-exit"), "{stderr}");
    assert!(stderr.contains("still reachable at exit"), "{stderr}");
}

#[test]
fn a_clean_program_passes_and_a_failing_command_keeps_its_status() {
    let sb = Sandbox::new();
    let prog = c_program(&sb);
    let out = check(&sb, "clean", &[], &[&prog, "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(summary(&sb.path("clean"))["check"]["passed"], true);
    // The command fails (exit 3) and leaks: its status wins.
    let out = check(&sb, "failing", &[], &[&prog, "1", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s = summary(&sb.path("failing"));
    assert_eq!(s["exit_status"], 3);
    assert_eq!(s["check"]["passed"], false);
    // A command that is not found: 127, as a shell says; the JUnit file
    // says so too.
    let junit = sb.path("missing.xml");
    let out = check(
        &sb,
        "missing",
        &["--junit", junit.to_str().unwrap()],
        &["./no-such-program"],
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let err = doc.descendants().find(|n| n.has_tag_name("error")).unwrap();
    assert!(
        err.attribute("message")
            .unwrap()
            .contains("no such file or directory"),
        "{xml}"
    );
}

#[test]
fn suppressions_let_a_lost_stack_pass_and_bad_input_is_one_clear_error() {
    let sb = Sandbox::new();
    let prog = c_program(&sb);
    let supp = sb.write(
        "offheap.supp",
        "# third-party code we cannot fix\nfunction:lose_*\n",
    );
    let out = check(
        &sb,
        "rec",
        &["--suppressions", supp.to_str().unwrap()],
        &[&prog, "5"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    let l = &s["check"]["leaks_at_exit"];
    assert_eq!(l["suppressed"]["blocks"], 12, "{l}");
    assert_eq!(l["definitely_lost"]["blocks"], 0, "{l}");
    assert!(
        lost(&s)
            .iter()
            .all(|g| g["suppressed_by"] == "function:lose_*")
    );
    // Bad input: one line, exit 2, nothing run.
    let bad = sb.write("bad.supp", "function:ok\nfunc:lose_*\n");
    for (opts, want) in [
        (vec!["--suppressions", bad.to_str().unwrap()], "line 2"),
        (vec!["--suppressions", "/nonexistent.supp"], "cannot read"),
        (vec!["--max-growth", "disk=1MiB"], "unknown kind"),
        (vec!["--max-growth", "native=lots"], "not a size"),
    ] {
        let out = check(&sb, "bad", &opts, &[&prog, "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opts:?}: {err}");
        assert!(err.contains(want), "{opts:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!sb.path("bad").join("summary.json").exists());
    }
}

#[test]
fn github_actions_get_an_annotation_at_the_allocating_line() {
    let sb = Sandbox::new();
    let prog = c_program(&sb);
    let mut c = offheap();
    c.current_dir(sb.dir.path())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_WORKSPACE", sb.dir.path())
        .args(["check", "--quiet", "--out", "rec", "--", &prog, "1"]);
    let out = output_within(&mut c, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(GATE_FAILED), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.starts_with("::error title=offheap check%3A definitely-lost,file=leaks.c,line="),
        "{line}"
    );
    assert!(line.contains("::definitely lost: 1000 B in 10 blocks from lose_them"));
    assert!(line.contains("%0A  at lose_them"), "{line}");
}

const CACHE: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* A cache that only grows: every entry stays reachable. */
struct entry { struct entry *next; char data[4000]; };
static struct entry *cache;
__attribute__((noinline)) void remember(void) {
  struct entry *e = malloc(sizeof *e);
  memset(e->data, 3, sizeof e->data);
  e->next = cache;
  cache = e;
}
int main(void) {
  for (int i = 0; i < 60; i++) { for (int j = 0; j < 25; j++) remember(); usleep(50000); }
  return 0;
}
"#;

#[test]
fn a_cache_that_only_grows_passes_the_leak_check_but_fails_max_growth() {
    let sb = Sandbox::new();
    let prog = sb.gcc("cache.c", CACHE, "cache", &[]);
    let out = check(
        &sb,
        "rec",
        &[
            "--interval",
            "100ms",
            "--max-growth",
            "native=1MiB",
            "--max-growth",
            "rss=1GiB",
        ],
        &[prog.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(GATE_FAILED), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    assert_eq!(gate(&s, "leaks-at-exit")["passed"], true, "{}", s["check"]);
    let g = gate(&s, "max-growth native");
    assert_eq!(g["passed"], false, "{g}");
    // About 6 MB were added in 3 s; the warm-up is left out.
    let grew = g["measured"].as_f64().unwrap();
    assert!(grew > 2e6 && grew < 8e6, "{g}");
    assert_eq!(g["limit"], 1048576.0);
    // The same figure as the verdict's growth rate over the window.
    let rate = s["growth_bytes_per_s"]["native_live"].as_f64().unwrap();
    assert!(
        rate > 0.0 && (grew / rate) > 1.0 && (grew / rate) < 3.0,
        "{rate} {grew}"
    );
    assert_eq!(gate(&s, "max-growth rss")["passed"], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAIL max-growth native: native grew by"),
        "{stderr}"
    );
}

/// An N-API addon: `loseBlocks(n)` loses n blocks of 64 bytes,
/// `keepBlocks(n)` keeps n blocks of 4 KiB in a static table, `churn(n)`
/// frees what it allocates.
const ADDON: &str = r#"
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
static void *kept[1024];
static size_t nkept;
__attribute__((noinline)) void lose_blocks(size_t n) {
  for (size_t i = 0; i < n; i++) { char *volatile p = malloc(64); memset(p, 1, 64); }
}
__attribute__((noinline)) void keep_blocks(size_t n) {
  for (size_t i = 0; i < n && nkept < 1024; i++) { kept[nkept] = malloc(4096); memset(kept[nkept++], 2, 4096); }
}
__attribute__((noinline)) void churn(size_t n) {
  for (size_t i = 0; i < n; i++) { char *volatile p = malloc(64); memset(p, 3, 64); free(p); }
}
static size_t arg(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1]; double n = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_double(env, argv[0], &n);
  return (size_t)n;
}
static napi_value js_lose(napi_env env, napi_callback_info info) { lose_blocks(arg(env, info)); return NULL; }
static napi_value js_keep(napi_env env, napi_callback_info info) { keep_blocks(arg(env, info)); return NULL; }
static napi_value js_churn(napi_env env, napi_callback_info info) { churn(arg(env, info)); return NULL; }
NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "loseBlocks", NAPI_AUTO_LENGTH, js_lose, NULL, &f);
  napi_set_named_property(env, exports, "loseBlocks", f);
  napi_create_function(env, "keepBlocks", NAPI_AUTO_LENGTH, js_keep, NULL, &f);
  napi_set_named_property(env, exports, "keepBlocks", f);
  napi_create_function(env, "churn", NAPI_AUTO_LENGTH, js_churn, NULL, &f);
  napi_set_named_property(env, exports, "churn", f);
  return exports;
}
"#;

/// A package with the addon and a `node --test` suite calling it.
fn addon_package(sb: &Sandbox, body: &str) {
    std::fs::create_dir_all(sb.path("pkg/test")).unwrap();
    sb.gcc(
        "pkg/blocks.c",
        ADDON,
        "pkg/blocks.node",
        &[
            "-shared",
            "-fPIC",
            "-I/usr/include/node",
            "-DNODE_GYP_MODULE_NAME=blocks",
            "-O0",
        ],
    );
    sb.write(
        "pkg/test/blocks.test.js",
        &format!(
            "const test = require('node:test');\nconst assert = require('node:assert');\n\
             const blocks = require('../blocks.node');\n{body}\n"
        ),
    );
}

#[test]
fn an_addon_that_loses_its_pointers_fails_naming_its_function_and_js_caller() {
    let sb = Sandbox::new();
    addon_package(
        &sb,
        "function leakyCaller() { blocks.loseBlocks(8); }\n\
         test('loses', () => { for (let i = 0; i < 4; i++) leakyCaller(); assert.ok(true); });\n\
         test('churns', () => { blocks.churn(1000); });",
    );
    let out = check(&sb, "rec", &[], &["node", "--test", "pkg/"]);
    assert_eq!(out.status.code(), Some(GATE_FAILED), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    let g = lost(&s);
    let lose = g
        .iter()
        .find(|g| g["function"] == "lose_blocks")
        .unwrap_or_else(|| panic!("{}", s["check"]));
    assert_eq!(lose["class"], "definitely-lost");
    // 32 lost; the scan is conservative, and a stale copy of a pointer
    // (a dead stack slot of a thread that was running, a V8 worklist) can
    // keep one or two reachable when the machine is busy.
    let n = lose["blocks"].as_u64().unwrap();
    assert!((29..=32).contains(&n), "{lose}");
    assert_eq!(lose["bytes"].as_u64().unwrap(), n * 64);
    assert!(lose["module"].as_str().unwrap().ends_with("blocks.node"));
    assert_eq!(lose["js"]["function"], "leakyCaller", "{lose}");
    assert!(
        lose["js"]["file"]
            .as_str()
            .unwrap()
            .ends_with("blocks.test.js")
    );
    // Nothing else is lost: node's own start-up and shutdown, the test
    // runner and its child process leave nothing, with no suppressions.
    assert_eq!(g.len(), 1, "{}", serde_json::to_string_pretty(&g).unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("from lose_blocks (blocks.c:") && stderr.contains("from JS leakyCaller"),
        "{stderr}"
    );
}

#[test]
fn an_addon_that_keeps_its_blocks_passes_with_them_still_reachable() {
    let sb = Sandbox::new();
    addon_package(
        &sb,
        "test('keeps', () => { blocks.keepBlocks(100); blocks.churn(1000); assert.ok(true); });",
    );
    let out = check(&sb, "rec", &[], &["node", "--test", "pkg/"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    assert!(lost(&s).is_empty(), "{}", s["check"]);
    let reach = s["check"]["leaks_at_exit"]["reachable_top"]
        .as_array()
        .unwrap();
    // 100 blocks of 4 KiB: one of the ten largest reachable stacks.
    let keep = reach
        .iter()
        .find(|g| g["function"] == "keep_blocks")
        .unwrap_or_else(|| panic!("{}", s["check"]["leaks_at_exit"]));
    assert_eq!(keep["blocks"], 100);
    assert_eq!(keep["bytes"], 409600);
}

#[test]
fn node_test_of_a_pure_js_package_and_node_e_pass_with_no_suppressions() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("pkg/test")).unwrap();
    sb.write(
        "pkg/package.json",
        r#"{"name": "pure", "version": "1.0.0", "main": "index.js"}"#,
    );
    sb.write(
        "pkg/index.js",
        "const zlib = require('node:zlib');\n\
         exports.add = (a, b) => a + b;\n\
         exports.roundTrip = (s) => zlib.gunzipSync(zlib.gzipSync(Buffer.from(s))).toString();\n\
         exports.later = () => new Promise((r) => setTimeout(() => r(Buffer.alloc(100000).length), 20));\n",
    );
    sb.write(
        "pkg/test/index.test.js",
        "const test = require('node:test');\nconst assert = require('node:assert');\n\
         const m = require('..');\n\
         test('add', () => assert.strictEqual(m.add(1, 2), 3));\n\
         test('zlib', () => assert.strictEqual(m.roundTrip('hello'.repeat(100)), 'hello'.repeat(100)));\n\
         test('timer', async () => assert.strictEqual(await m.later(), 100000));\n",
    );
    let out = check(&sb, "rec", &[], &["node", "--test", "pkg/"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    let l = &s["check"]["leaks_at_exit"];
    let checked = l["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["checked"] == true)
        .count();
    // The runner and the test file's own node process.
    assert!(checked >= 2, "{l}");
    assert!(
        lost(&s).is_empty(),
        "{}",
        serde_json::to_string_pretty(l).unwrap()
    );
    assert!(l["reachable"]["blocks"].as_u64().unwrap() > 1000, "{l}");
    for cmd in [
        vec!["node", "-e", "1"],
        vec!["node", "-e", "process.exit(0)"],
    ] {
        let out = check(&sb, "e", &[], &cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {}", text(&out));
        let s = summary(&sb.path("e"));
        assert!(lost(&s).is_empty(), "{cmd:?}: {}", s["check"]);
        std::fs::remove_dir_all(sb.path("e")).unwrap();
    }
}

/// What tests commonly touch: a worker thread, an HTTP server and client,
/// crypto on the threadpool (OpenSSL's per-thread error state lives in the
/// pool threads' TLS until libuv joins them in a destructor, after the
/// check), zlib, fs, a child process, a TLS context. Nothing of it is lost.
#[test]
fn node_builtins_on_threads_and_the_threadpool_leave_nothing_lost() {
    let sb = Sandbox::new();
    sb.write(
        "broad.js",
        r#"
const { Worker } = require('node:worker_threads');
const http = require('node:http');
const crypto = require('node:crypto');
const fs = require('node:fs/promises');
const zlib = require('node:zlib');
const cp = require('node:child_process');
async function main() {
  await new Promise((res) => {
    const w = new Worker('require("node:worker_threads").parentPort.postMessage(Buffer.alloc(1000).length)', { eval: true });
    w.on('message', () => w.terminate().then(res));
  });
  const srv = http.createServer((q, r) => r.end('hi'));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const port = srv.address().port;
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => http.get(`http://127.0.0.1:${port}/`, (res) => { res.resume(); res.on('end', r); }));
  }
  await new Promise((r) => srv.close(r));
  crypto.createHash('sha256').update('x').digest('hex');
  await new Promise((r) => crypto.pbkdf2('a', 'b', 1000, 32, 'sha256', r));
  await fs.writeFile('scratch.txt', 'hello');
  await fs.readFile('scratch.txt');
  await new Promise((r) => zlib.gzip(Buffer.alloc(100000), r));
  cp.execFileSync('/bin/true');
  require('node:tls').createSecureContext();
  console.log('done');
}
main();
"#,
    );
    let out = check(&sb, "rec", &[], &["node", "broad.js"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&sb.path("rec"));
    assert!(
        lost(&s).is_empty(),
        "{}",
        serde_json::to_string_pretty(&s["check"]["leaks_at_exit"]).unwrap()
    );
}

const SERVER: &str = r#"
const http = require('node:http');
const leak = process.argv[2] === 'leak';
const kept = [];
const srv = http.createServer((req, res) => {
  if (leak) kept.push(Buffer.alloc(4096, 1));   // 4 KiB per request, kept for good
  const scratch = Buffer.alloc(4096, 2);        // 4 KiB per request, garbage
  res.end('ok ' + scratch.length);
});
// Starts listening only after a while: the load must wait for it.
setTimeout(() => srv.listen(+process.argv[3], '127.0.0.1'), 300);
process.on('SIGINT', () => srv.close(() => process.exit(0)));
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn load_a_server_that_leaks_per_request_fails_the_per_request_gate_and_a_steady_one_passes() {
    let sb = Sandbox::new();
    sb.write("server.js", SERVER);
    for (mode, want) in [("leak", GATE_FAILED), ("steady", 0)] {
        let port = free_port().to_string();
        let url = format!("http://127.0.0.1:{port}/");
        let out = check(
            &sb,
            mode,
            &[
                "--load",
                &url,
                "--load-requests",
                "15000",
                "--max-growth",
                "native=2KiB/request",
            ],
            &["node", "server.js", mode, &port],
        );
        assert_eq!(out.status.code(), Some(want), "{mode}: {}", text(&out));
        let s = summary(&sb.path(mode));
        let load = gate(&s, "load");
        assert_eq!(load["passed"], true, "{load}");
        assert_eq!(load["measured"], 15000.0, "{load}");
        let g = gate(&s, "max-growth native/request");
        let per = g["measured"].as_f64().unwrap();
        if mode == "leak" {
            assert_eq!(g["passed"], false, "{g}");
            // 4 KiB kept per request (and some of node's own, more when the
            // machine is busy and garbage waits longer for a GC).
            assert!(per > 3500.0 && per < 16384.0, "{g}");
        } else {
            assert_eq!(g["passed"], true, "{g}");
            assert!(per < 1024.0, "{g}");
        }
        // The server exits on SIGINT: it was checked at exit too.
        assert_eq!(gate(&s, "leaks-at-exit")["passed"], true, "{}", s["check"]);
        assert_eq!(s["exit_status"], 0);
        // The analysis ends where the load did.
        let end: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sb.path(mode).join("end.json")).unwrap())
                .unwrap();
        assert_eq!(end["reason"], "load");
        assert!(end["stop_ms"].is_number());
    }
}

#[test]
fn load_refuses_what_it_cannot_do_in_one_line() {
    let sb = Sandbox::new();
    for (opts, want) in [
        (vec!["--load", "https://127.0.0.1:1/"], "only http://"),
        (
            vec!["--load", "http://192.0.2.1:80/"],
            "not a loopback address",
        ),
        (vec!["--max-growth", "native=2KiB/request"], "needs --load"),
        (vec!["--load-requests", "10"], "--load"),
    ] {
        let out = check(&sb, "bad", &opts, &["/bin/true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opts:?}: {err}");
        assert!(err.contains(want), "{opts:?}: {err}");
        assert!(!sb.path("bad").exists(), "{opts:?}");
    }
}

#[test]
fn run_load_drives_a_server_then_stops_it_and_notes_what_it_sent() {
    let sb = Sandbox::new();
    sb.write("server.js", SERVER);
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}/");
    let out = sb.run(
        "rec",
        &[
            "--load",
            &url,
            "--load-requests",
            "2000",
            "--load-concurrency",
            "2",
        ],
        &["node", "server.js", "steady", &port],
    );
    // The server exits with 0 on the SIGINT that ends the load.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path("rec").join("load.json")).unwrap()).unwrap();
    assert_eq!(load["requests"], 2000, "{load}");
    assert_eq!(load["errors"], 0, "{load}");
    assert_eq!(load["concurrency"], 2);
    let s = summary(&sb.path("rec"));
    assert!(
        s["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("--load: 2000 GET requests")),
        "{}",
        s["notes"]
    );
    assert!(s.get("check").is_none());
}

/// A test loop that reports its iterations by appending a line per
/// iteration to `$OFFHEAP_ITERATIONS`: "leak" keeps 4 KiB each time,
/// "steady" frees what it allocates.
const ITERATIONS: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void *kept[400];
int main(int argc, char **argv) {
  int leak = argc > 1 && strcmp(argv[1], "leak") == 0;
  const char *f = getenv("OFFHEAP_ITERATIONS");
  int fd = f ? open(f, O_WRONLY | O_APPEND) : -1;
  for (int i = 0; i < 400; i++) {
    char *p = malloc(4096); memset(p, 1, 4096);
    if (leak) kept[i] = p; else free(p);
    if (fd >= 0 && write(fd, "\n", 1) != 1) return 3;
    usleep(10000);
  }
  return fd >= 0 ? 0 : 4;
}
"#;

#[test]
fn growth_per_iteration_reported_by_the_command_is_gated() {
    let sb = Sandbox::new();
    let prog = sb.gcc("iter.c", ITERATIONS, "iter", &["-O0"]);
    for (mode, want) in [("leak", GATE_FAILED), ("steady", 0)] {
        let out = check(
            &sb,
            mode,
            &["--max-growth", "native=1KiB/iteration"],
            &[prog.to_str().unwrap(), mode],
        );
        assert_eq!(out.status.code(), Some(want), "{mode}: {}", text(&out));
        let s = summary(&sb.path(mode));
        let g = gate(&s, "max-growth native/iteration");
        let per = g["measured"].as_f64().unwrap();
        if mode == "leak" {
            assert_eq!(g["passed"], false, "{g}");
            // 4 KiB kept per iteration (malloc's header on top).
            assert!(per > 3000.0 && per < 6000.0, "{g}");
            assert!(text(&out).contains("per iteration"), "{}", text(&out));
        } else {
            assert_eq!(g["passed"], true, "{g}");
            assert!(per < 512.0, "{g}");
        }
    }
    // A command that reports nothing cannot pass a per-iteration gate.
    let out = check(
        &sb,
        "silent",
        &["--max-growth", "native=1KiB/iteration"],
        &["/bin/true"],
    );
    assert_eq!(out.status.code(), Some(GATE_FAILED), "{}", text(&out));
    let s = summary(&sb.path("silent"));
    let g = gate(&s, "max-growth native/iteration");
    assert!(
        g["message"]
            .as_str()
            .unwrap()
            .contains("reported no iteration"),
        "{g}"
    );
}

#[test]
fn load_rate_spreads_the_requests_over_time() {
    let sb = Sandbox::new();
    sb.write("server.js", SERVER);
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}/");
    let out = sb.run(
        "rec",
        &[
            "--load",
            &url,
            "--load-requests",
            "300",
            "--load-rate",
            "150",
        ],
        &["node", "server.js", "steady", &port],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path("rec").join("load.json")).unwrap()).unwrap();
    assert_eq!(load["requests"], 300, "{load}");
    assert_eq!(load["rate_limit"], 150.0, "{load}");
    // 300 requests at 150/s cannot take less than 2 s (the last leaves at
    // 299/150 s); without the limit they take a fraction of that.
    let took = load["end_ms"].as_f64().unwrap() - load["start_ms"].as_f64().unwrap();
    assert!(took >= 1990.0, "{load}");
    let bad = offheap()
        .args(["run", "--load", &url, "--load-rate", "0", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("requests per second"));
}
