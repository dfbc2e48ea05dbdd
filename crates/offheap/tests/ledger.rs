//! The RSS ledger (issue 13) on real processes: node programs and node HTTP
//! servers that leak each kind of memory, a steady node HTTP server, the
//! bundled demo, python3, a C program that mixes malloc, mmap and 8 threads,
//! a C program that fragments glibc's arenas, a forked child that leaks and
//! a C program whose anonymous mmaps come from two callers. At every moment
//! after warm-up the parts add up to RSS with little unexplained, and the
//! part that grows is the verdict's kind.

mod common;
use common::*;
use serde_json::Value;

const MIB: f64 = 1048576.0;

const JS_LEAK: &str = r#"const kept = (globalThis.kept = []); let t = 0;
const h = setInterval(() => { for (let k = 0; k < 1500; k++) kept.push({ k, s: 'leak-' + t + '-' + k }); if (++t >= 80) clearInterval(h); }, 100);"#;

const BUFFER_LEAK: &str = r#"const kept = (globalThis.kept = []); let t = 0;
const h = setInterval(() => { for (let k = 0; k < 5; k++) kept.push(Buffer.alloc(64 * 1024, t & 255)); if (++t >= 80) clearInterval(h); }, 100);"#;

const ZLIB_LEAK: &str = r#"const zlib = require('zlib'); const keep = (globalThis.keep = []); let i = 0;
const h = setInterval(() => { const z = zlib.createDeflate(); z.write('data ' + i); keep.push(z); if (++i >= 160) clearInterval(h); }, 50);"#;

const STEADY_SERVER: &str = r#"const http = require('http');
const server = http.createServer((req, res) => { const body = JSON.stringify({ url: req.url, rows: new Array(200).fill(req.url) }); res.end(body); });
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port; const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  let stop = Date.now() + 9000;
  const go = () => { if (Date.now() > stop) return; http.get({ port, host: '127.0.0.1', path: '/x' + (Date.now() % 97), agent }, (r) => { r.resume(); r.on('end', go); }); };
  for (let k = 0; k < 8; k++) go();
  setTimeout(() => { agent.destroy(); server.close(); }, 9500);
});"#;

const PYTHON: &str = r#"import time
keep = []
for i in range(70):
    keep.append([str(j) * 10 for j in range(20000)])
    keep.append(bytearray(300000))
    time.sleep(0.1)
"#;

const C_MIX: &str = r#"#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static void *work(void *arg) {
  long id = (long)arg;
  for (int i = 0; i < 70; i++) {
    void *p = malloc(100000 + id * 1000); memset(p, 1, 50000);
    if (i % 2) free(p);
    void *m = mmap(0, 256 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 2, 128 * 1024);
    if (i % 3) munmap(m, 256 * 1024);
    char *big = malloc(1 << 20); memset(big, 3, 1 << 19);
    if (i % 4) free(big);
    char *small = malloc(64); small[0] = 1;
    usleep(100000);
  }
  return 0;
}
int main(void) {
  pthread_t t[8];
  for (long i = 0; i < 8; i++) pthread_create(&t[i], 0, work, (void *)i);
  for (int i = 0; i < 8; i++) pthread_join(t[i], 0);
  return 0;
}
"#;

/// A node HTTP server on 127.0.0.1 that runs `leak` on every request,
/// with `loops` keep-alive client loops in the same process, each sending a
/// request `delay_ms` after the last one's response, for 8 s.
fn http_server(leak: &str, loops: u32, delay_ms: u32) -> String {
    format!(
        r#"const http = require('http'); const zlib = require('zlib');
const kept = (globalThis.kept = []); let served = 0;
const server = http.createServer((req, res) => {{ served++; {leak}; res.end('ok ' + served); }});
server.listen(0, '127.0.0.1', () => {{
  const port = server.address().port; const agent = new http.Agent({{ keepAlive: true, maxSockets: {loops} }});
  const stop = Date.now() + 8000;
  const go = () => {{ if (Date.now() > stop) return; http.get({{ port, host: '127.0.0.1', path: '/r' + served, agent }}, (r) => {{ r.resume(); r.on('end', () => setTimeout(go, {delay_ms})); }}); }};
  for (let k = 0; k < {loops}; k++) go();
  setTimeout(() => {{ agent.destroy(); server.close(); }}, 8500);
}});"#
    )
}

/// Per request: JS objects kept in an array (the V8 heap).
const HTTP_JS_LEAK: &str =
    "for (let k = 0; k < 100; k++) kept.push({ k, s: 'leak-' + served + '-' + k })";
/// Per request: a 24 KiB Buffer kept (external: its store is malloc'd).
const HTTP_BUFFER_LEAK: &str = "kept.push(Buffer.alloc(24 * 1024, served & 255))";
/// Per request: a deflate stream kept, never closed (~256 KiB of zlib state).
const HTTP_ZLIB_LEAK: &str =
    "{ const z = zlib.createDeflate(); z.write('data ' + served); kept.push(z); }";

/// Fragmentation, not a leak: threads started one after another (each
/// keeps its own glibc arena while it lives) fill their arena with small
/// blocks and free all but every 256th, which pins the pages between them;
/// then they keep churning small blocks in the holes. Live bytes stay
/// small; the allocator's free, resident bytes grow with every thread.
const C_FRAG: &str = r#"#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define THREADS 12
#define COUNT 24000
static volatile int stop = 0;
static void *worker(void *arg) {
  (void)arg;
  void **b = malloc(sizeof(void *) * COUNT);
  for (int i = 0; i < COUNT; i++) { b[i] = malloc(512); memset(b[i], 1, 512); }
  for (int i = 0; i < COUNT; i++) if (i % 256 != 255) free(b[i]);
  while (!stop) {
    void *c[16];
    for (int k = 0; k < 16; k++) { c[k] = malloc(300); memset(c[k], 2, 300); }
    for (int k = 0; k < 16; k++) free(c[k]);
    usleep(20000);
  }
  return 0;
}
int main(void) {
  pthread_t t[THREADS];
  for (long i = 0; i < THREADS; i++) { pthread_create(&t[i], 0, worker, 0); usleep(550000); }
  usleep(600000);
  stop = 1;
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], 0);
  return 0;
}
"#;

/// The parent forks and waits; the child mallocs and touches 40 MiB over
/// 4 s (1 MiB blocks: glibc's mmapped chunks, and 64 KiB blocks in its
/// heap) and keeps it.
const C_FORK: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static void *volatile sink;
__attribute__((noinline)) void *child_keep(size_t n) { void *p = malloc(n); memset(p, 1, n); return p; }
int main(void) {
  fflush(stdout);
  pid_t c = fork();
  if (c == 0) {
    for (int i = 0; i < 40; i++) {
      sink = child_keep(768 << 10);
      for (int k = 0; k < 4; k++) sink = child_keep(64 << 10);
      usleep(100000);
    }
    usleep(1500000);
    _exit(0);
  }
  int st;
  waitpid(c, &st, 0);
  return 0;
}
"#;

/// Two functions map anonymous memory and keep it: `map_fast` 1 MiB every
/// 100 ms, `map_slow` 256 KiB every 100 ms, each touching all of it.
const C_MMAP_CALLERS: &str = r#"#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define MAP(n) mmap(0, (n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
static void *volatile sink;
__attribute__((noinline)) void map_fast(void) { void *p = MAP(1 << 20); memset(p, 0x11, 1 << 20); sink = p; }
__attribute__((noinline)) void map_slow(void) { void *p = MAP(256 << 10); memset(p, 0x11, 256 << 10); sink = p; }
int main(void) {
  for (int i = 0; i < 60; i++) { map_fast(); map_slow(); usleep(100000); }
  usleep(500000);
  return 0;
}
"#;

/// What a case runs, and what it checks beyond the ledger's invariants.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Node(&'static str),
    /// A node HTTP server: the leak per request, client loops, their delay.
    Http(&'static str, u32, u32),
    Python(&'static str),
    C(&'static str),
    Demo,
}

struct Case {
    name: &'static str,
    target: Target,
    /// The kind of memory whose parts must grow most (see `kind_of`).
    growing: &'static [&'static str],
    verdict: &'static str,
}

/// The verdict kind a ledger part's growth speaks for.
fn kind_of(part: &str) -> &'static str {
    match part {
        "v8_old" | "v8_new" | "v8_large_objects" | "v8_other" | "jit_code" => "js-heap",
        "array_buffers" => "external",
        "native_malloc" | "anon_mmap" | "malloc_unsplit" => "native",
        "allocator_free" => "fragmentation",
        _ => "other",
    }
}

fn part(l: &Value, p: &str) -> f64 {
    l["parts"][p].as_f64().unwrap_or(0.0)
}

/// One ledger moment: no negative part, the parts plus `unexplained` are
/// RSS within 1%, `|unexplained|` at most 5% of RSS; the split of
/// `anon_mmap` by caller, if any, adds up to the part.
fn invariants(name: &str, l: &Value) -> Result<(), String> {
    let rss = l["rss"].as_f64().unwrap_or(0.0);
    if rss <= 0.0 {
        return Err(format!("{name}: no RSS: {l}"));
    }
    let parts: f64 = l["parts"]
        .as_object()
        .map(|m| m.values().map(|v| v.as_f64().unwrap_or(-1.0)).sum())
        .unwrap_or(0.0);
    if l["parts"]
        .as_object()
        .is_none_or(|m| m.values().any(|v| v.as_f64().is_none_or(|x| x < 0.0)))
    {
        return Err(format!("{name}: a negative part: {l}"));
    }
    let un = l["unexplained"].as_f64().unwrap_or(f64::NAN);
    if (parts + un - rss).abs() > 0.01 * rss {
        return Err(format!("{name}: parts + unexplained != RSS: {l}"));
    }
    if un.abs() > 0.05 * rss {
        return Err(format!(
            "{name}: unexplained {:.1} MiB of {:.1} MiB: {l}",
            un / MIB,
            rss / MIB
        ));
    }
    if let Some(by) = l["anon_mmap_by_caller"].as_object() {
        let sum: u64 = by.values().map(|v| v.as_u64().unwrap_or(0)).sum();
        if Some(sum) != l["parts"]["anon_mmap"].as_u64() {
            return Err(format!(
                "{name}: anon_mmap_by_caller adds up to {sum}, not the part: {l}"
            ));
        }
    }
    Ok(())
}

/// The ledger's invariants at every moment after warm-up; the parts that
/// grew most between the first such moment and the end of the window.
fn check(name: &str, s: &Value) -> Result<Vec<(String, f64)>, String> {
    let tl = s["rss_ledger_timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let end = &s["rss_ledger"];
    if tl.is_empty() || end.is_null() {
        return Err(format!("{name}: no ledger in summary.json"));
    }
    let dur = s["duration_s"].as_f64().unwrap_or(0.0);
    let warm = (dur * 0.2).clamp(1.0, 30.0);
    let after: Vec<&Value> = tl
        .iter()
        .filter(|l| l["at_s"].as_f64().unwrap_or(0.0) >= warm)
        .collect();
    if after.len() < 3 {
        return Err(format!(
            "{name}: {} ledger moments after warm-up",
            after.len()
        ));
    }
    for l in &after {
        invariants(name, l)?;
    }
    // Growth by kind: from the first moment after warm-up to the window's end.
    let a = after[0];
    let mut g: std::collections::BTreeMap<&str, f64> = Default::default();
    let names: std::collections::BTreeSet<String> = [end, a]
        .iter()
        .flat_map(|o| {
            o["parts"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    for p in &names {
        *g.entry(kind_of(p)).or_default() += part(end, p) - part(a, p);
    }
    let mut g: Vec<(String, f64)> = g.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    g.sort_by(|x, y| y.1.total_cmp(&x.1));
    Ok(g)
}

/// The ledger at the end of `s`'s window (or of a `processes` entry).
fn end_ledger<'a>(name: &str, s: &'a Value) -> Result<&'a Value, String> {
    let l = &s["rss_ledger"];
    if l.is_null() {
        return Err(format!("{name}: no rss_ledger"));
    }
    Ok(l)
}

/// The demo's native live figure (the agent's: allocated bytes) may exceed
/// its RSS only with the ledger saying why: at the end of the window its
/// native parts give their allocated bytes beside the resident ones (blocks
/// malloc'd and never touched, Buffer stores counted once, inside malloc's
/// blocks), of the same order as the native live figure, and the closing
/// table prints them. (The peaks are not compared with the ledger's own
/// figures: they come from other moments, and VmRSS from a read before
/// the ledger's.)
fn demo_native_live_is_explained(s: &Value, text: &str) -> Result<(), String> {
    let (live, rss) = (
        s["peak"]["native_live"].as_f64().unwrap_or(0.0),
        s["peak"]["rss"].as_f64().unwrap_or(0.0),
    );
    if live <= rss {
        return Ok(());
    }
    let l = end_ledger("demo", s)?;
    let (mut resident, mut allocated) = (0.0, 0.0);
    for p in ["native_malloc", "array_buffers", "anon_mmap"] {
        let r = part(l, p);
        resident += r;
        allocated += l["allocated"][p].as_f64().unwrap_or(r);
    }
    if l["allocated"]["native_malloc"].is_null()
        || allocated <= 1.01 * resident
        || allocated < 0.6 * live
    {
        return Err(format!(
            "demo: native live peaked at {:.0} MiB, over RSS {:.0} MiB, and the ledger's native parts say {:.0} MiB allocated, {:.0} MiB resident: {l}",
            live / MIB,
            rss / MIB,
            allocated / MIB,
            resident / MIB
        ));
    }
    if !text
        .lines()
        .any(|t| t.contains("native malloc in use") && t.contains("(allocated "))
    {
        return Err(format!(
            "demo: the closing ledger table does not give native malloc's allocated bytes:\n{text}"
        ));
    }
    Ok(())
}

/// A forked child that leaks: it is the focus, and `processes` gives it
/// (and its parent) a ledger of its own that satisfies the invariants.
fn forked_child_has_its_own_ledger(s: &Value) -> Result<(), String> {
    let root = s["pid"].as_u64().unwrap_or(0);
    let procs = s["processes"].as_array().cloned().unwrap_or_default();
    let child = procs
        .iter()
        .find(|p| p["ppid"].as_u64() == Some(root) && p["pid"].as_u64() != Some(root))
        .ok_or_else(|| format!("fork: no child of {root} in processes: {procs:?}"))?;
    if s["focus_pid"] != child["pid"] {
        return Err(format!(
            "fork: the focus is {}, not the leaking child {}",
            s["focus_pid"], child["pid"]
        ));
    }
    for p in [
        child,
        procs
            .iter()
            .find(|p| p["pid"].as_u64() == Some(root))
            .unwrap_or(child),
    ] {
        let name = format!("fork: pid {}", p["pid"]);
        invariants(&name, end_ledger(&name, p)?)?;
    }
    let l = end_ledger("fork child", child)?;
    let native = part(l, "native_malloc") + part(l, "anon_mmap");
    if native < 30.0 * MIB {
        return Err(format!(
            "fork: the child's ledger holds {:.1} MiB of native memory, not its ~40 MiB: {l}",
            native / MIB
        ));
    }
    Ok(())
}

/// The anonymous mmaps of two callers: the split names both, adds up to the
/// part (every moment: see `invariants`), gives the faster one more, and is
/// in the closing text and report.html.
fn mmap_split_by_caller(s: &Value, text: &str, html: &str) -> Result<(), String> {
    let l = end_ledger("mmap-callers", s)?;
    let by = l["anon_mmap_by_caller"]
        .as_object()
        .ok_or_else(|| format!("mmap-callers: no anon_mmap_by_caller: {l}"))?;
    let of = |f: &str| {
        by.iter()
            .filter(|(c, _)| c.starts_with(&format!("{f} (")))
            .map(|(_, v)| v.as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let (fast, slow) = (of("map_fast"), of("map_slow"));
    if fast <= 0.0 || slow <= 0.0 || fast <= 2.0 * slow {
        return Err(format!(
            "mmap-callers: map_fast {:.1} MiB, map_slow {:.1} MiB: {l}",
            fast / MIB,
            slow / MIB
        ));
    }
    // 60 MiB and 15 MiB were mapped and touched.
    if fast + slow < 0.8 * 75.0 * MIB {
        return Err(format!(
            "mmap-callers: the callers hold {:.1} MiB: {l}",
            (fast + slow) / MIB
        ));
    }
    let lines: Vec<&str> = text.lines().collect();
    let row = lines
        .iter()
        .position(|t| t.contains("anonymous mmaps"))
        .ok_or_else(|| format!("mmap-callers: no anon mmap row:\n{text}"))?;
    let under: Vec<&str> = lines[row + 1..]
        .iter()
        .take_while(|t| t.starts_with("    "))
        .copied()
        .collect();
    if !(under.iter().any(|t| t.contains("map_fast (mmapper)"))
        && under.iter().any(|t| t.contains("map_slow (mmapper)")))
    {
        return Err(format!(
            "mmap-callers: the callers are not under the anon mmap row:\n{text}"
        ));
    }
    if !(html.contains("by the caller that mapped them") && html.contains("map_fast (mmapper)")) {
        return Err("mmap-callers: no callers table in report.html".into());
    }
    Ok(())
}

/// Runs a case in its own sandbox: the run's output, summary.json, and what
/// its own checks found.
fn run_case(
    name: &'static str,
    target: Target,
) -> (std::process::Output, Value, Result<(), String>) {
    let sb = Sandbox::new();
    let cmd: Vec<String> = match target {
        Target::C(src) => {
            let exe = match name {
                "mmap-callers" => "mmapper",
                _ => "prog",
            };
            let exe = sb.gcc(&format!("{exe}.c"), src, exe, &["-O1", "-pthread"]);
            vec![exe.display().to_string()]
        }
        Target::Python(src) => {
            sb.write(name, src);
            // The interpreter itself, not a version manager's shell shim
            // (a shim's exec drops the agent).
            vec!["/usr/bin/python3".into(), name.into()]
        }
        Target::Node(src) => {
            sb.write(name, src);
            vec!["node".into(), name.into()]
        }
        Target::Http(leak, loops, delay) => {
            sb.write(name, &http_server(leak, loops, delay));
            vec!["node".into(), name.into()]
        }
        Target::Demo => Vec::new(),
    };
    let out = if target == Target::Demo {
        offheap()
            .current_dir(sb.dir.path())
            .args(["demo", "--quiet", "--duration", "10s", "--out", "rec"])
            .output()
            .unwrap()
    } else {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        sb.run("rec", &[], &args)
    };
    if !out.status.success() {
        return (out, Value::Null, Ok(()));
    }
    let s = summary(&sb.path("rec"));
    let text = || {
        let rep = offheap()
            .arg("report")
            .arg(sb.path("rec"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&rep.stdout).to_string() + &String::from_utf8_lossy(&rep.stderr)
    };
    let extra = match name {
        "demo" => demo_native_live_is_explained(&s, &text()),
        "fork" => forked_child_has_its_own_ledger(&s),
        "mmap-callers" => {
            let t = text();
            let html = std::fs::read_to_string(sb.path("rec/report.html")).unwrap_or_default();
            mmap_split_by_caller(&s, &t, &html)
        }
        _ => Ok(()),
    };
    (out, s, extra)
}

#[test]
fn the_ledger_explains_every_resident_byte() {
    let case = |name, target, growing, verdict| Case {
        name,
        target,
        growing,
        verdict,
    };
    let cases = [
        case("js-leak.js", Target::Node(JS_LEAK), &["js-heap"], "js-heap"),
        case(
            "buffer-leak.js",
            Target::Node(BUFFER_LEAK),
            &["external"],
            "external",
        ),
        case(
            "zlib-leak.js",
            Target::Node(ZLIB_LEAK),
            &["native"],
            "native",
        ),
        case("steady-server.js", Target::Node(STEADY_SERVER), &[], "none"),
        case(
            "http-js.js",
            Target::Http(HTTP_JS_LEAK, 4, 20),
            &["js-heap"],
            "js-heap",
        ),
        case(
            "http-buffer.js",
            Target::Http(HTTP_BUFFER_LEAK, 4, 20),
            &["external"],
            "external",
        ),
        case(
            "http-zlib.js",
            Target::Http(HTTP_ZLIB_LEAK, 2, 100),
            &["native"],
            "native",
        ),
        case("demo", Target::Demo, &["native"], "native"),
        case("mix.py", Target::Python(PYTHON), &["native"], ""),
        case("mix", Target::C(C_MIX), &["native"], "native"),
        case(
            "frag",
            Target::C(C_FRAG),
            &["fragmentation"],
            "fragmentation",
        ),
        case("fork", Target::C(C_FORK), &["native"], "native"),
        case(
            "mmap-callers",
            Target::C(C_MMAP_CALLERS),
            &["native"],
            "native",
        ),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|c| {
            let (name, target) = (c.name, c.target);
            std::thread::spawn(move || {
                let t0 = std::time::Instant::now();
                let r = run_case(name, target);
                (r, t0.elapsed())
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (c, r) in cases.iter().zip(runs) {
        let ((out, s, extra), took) = r.join().unwrap();
        eprintln!("{}: {:.1} s", c.name, took.as_secs_f64());
        if !out.status.success() {
            wrong.push(format!("{}: {out:?}", c.name));
            continue;
        }
        if let Err(e) = extra {
            wrong.push(e);
        }
        match check(c.name, &s) {
            Err(e) => wrong.push(e),
            Ok(g) => {
                let v = s["verdict"]["primary"].as_str().unwrap_or("");
                if !c.verdict.is_empty() && v != c.verdict {
                    wrong.push(format!("{}: verdict {v}: {}", c.name, describe(&out, &s)));
                }
                // The verdict and the ledger agree: the part that grew most
                // is the verdict's kind.
                if !c.growing.is_empty() && !c.growing.contains(&g[0].0.as_str()) {
                    wrong.push(format!(
                        "{}: the kind of memory that grew most is {} ({:.1} MiB), not {:?}: {g:?}\nledger timeline: {}\nat the end: {}",
                        c.name,
                        g[0].0,
                        g[0].1 / MIB,
                        c.growing,
                        s["rss_ledger_timeline"],
                        s["rss_ledger"]
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The ledger is in every output: the closing text's table, report.html's
/// chart, metrics.prom's series.
#[test]
fn the_ledger_is_in_every_output() {
    let sb = Sandbox::new();
    sb.write("b.js", BUFFER_LEAK);
    let out = sb.run("rec", &[], &["node", "b.js"]);
    assert!(out.status.success(), "{out:?}");
    let rep = offheap()
        .arg("report")
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&rep.stdout).to_string() + &String::from_utf8_lossy(&rep.stderr);
    assert!(text.contains("Where the RSS is"), "{text}");
    assert!(text.contains("Buffer/ArrayBuffer stores"), "{text}");
    let html = std::fs::read_to_string(sb.path("rec/report.html")).unwrap();
    assert!(html.contains("id=\"ledger\""), "no ledger section");
    let prom = std::fs::read_to_string(sb.path("rec/metrics.prom")).unwrap();
    assert!(
        prom.contains("offheap_rss_ledger_bytes{") && prom.contains("part=\"array_buffers\""),
        "{prom}"
    );
    assert!(
        prom.contains("offheap_rss_ledger_unexplained_bytes"),
        "{prom}"
    );
    // `offheap diff` says which parts grew.
    sb.write("s.js", "setTimeout(() => {}, 6000);");
    let out = sb.run("flat", &[], &["node", "s.js"]);
    assert!(out.status.success(), "{out:?}");
    let d = offheap()
        .args(["diff"])
        .arg(sb.path("flat"))
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&d.stdout).to_string() + &String::from_utf8_lossy(&d.stderr);
    assert!(
        text.contains("RSS ledger") && text.contains("grew: "),
        "{text}"
    );
}

/// `attach` has no native agent: the ledger comes from smaps and V8's
/// statistics alone, glibc's heap and arenas one part whose split into
/// blocks in use and free bytes is named unknown (`malloc_unsplit`), never
/// guessed; the V8 heap and the mapped files are parts as under `run`.
#[test]
fn attach_without_the_native_agent_names_the_malloc_split_unknown() {
    use std::io::BufRead;
    let sb = Sandbox::new();
    let script = sb.write(
        "grows.js",
        "const kept = (globalThis.kept = []);\n\
         setInterval(() => { for (let i = 0; i < 300; i++) kept.push({ i, s: 'k' + i }); \
         kept.push(Buffer.alloc(32 * 1024, 1)); }, 50);\n\
         console.log('ready');\n",
    );
    let mut child = std::process::Command::new("node")
        .arg("--inspect-port=0")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["attach", &child.0.id().to_string()])
        .args(["--duration", "6s", "--quiet", "--out", "rec"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    let end = &s["rss_ledger"];
    assert!(!end.is_null(), "no ledger: {s}");
    let parts = end["parts"].as_object().unwrap();
    assert!(parts.contains_key("malloc_unsplit"), "{end}");
    for p in ["native_malloc", "allocator_free", "anon_mmap"] {
        assert!(
            !parts.contains_key(p),
            "{p} guessed without the agent: {end}"
        );
    }
    assert!(
        parts.contains_key("v8_old") && parts.contains_key("file_backed"),
        "{end}"
    );
    assert!(parts.contains_key("array_buffers"), "{end}");
    // Every moment adds up to RSS; what nothing claims stays unexplained.
    for l in s["rss_ledger_timeline"].as_array().unwrap() {
        let rss = l["rss"].as_f64().unwrap();
        let sum: f64 = l["parts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let un = l["unexplained"].as_f64().unwrap();
        assert!((sum + un - rss).abs() <= 0.01 * rss, "{l}");
    }
}
