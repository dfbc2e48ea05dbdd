//! Real node (v20) under the agent: worker_threads, child_process, cluster,
//! and the native-leak scenario with a C N-API addon built in the test.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const PROCS_JS: &str = r#"
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
const cp = require('child_process');
const cluster = require('cluster');
const zlib = require('zlib');
const crypto = require('crypto');

function work(seed) {
  let h = crypto.createHash('sha256');
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.alloc(1024 + ((i * 31 + seed) % 4096), i & 255);
    h.update(zlib.deflateSync(b));
  }
  return h.digest('hex').slice(0, 16);
}

if (cluster.isPrimary && isMainThread && !process.env.OH_CHILD) {
  const out = [];
  out.push('main ' + work(1));
  const workers = [0, 1, 2].map(i => new Promise((res, rej) => {
    const w = new Worker(__filename, { workerData: i });
    w.on('message', m => res(m));
    w.on('error', rej);
  }));
  Promise.all(workers).then(ws => {
    ws.forEach(w => out.push('worker ' + w));
    const child = cp.execFileSync(process.execPath, [__filename], { env: { ...process.env, OH_CHILD: '1' } }).toString().trim();
    out.push('child ' + child);
    cluster.setupPrimary({ exec: __filename, silent: true });
    let done = 0;
    const msgs = [];
    for (let i = 0; i < 2; i++) {
      const c = cluster.fork({ OH_CLUSTER: String(i) });
      c.on('message', m => { msgs.push(m); c.kill(); if (++done === 2) { msgs.sort(); msgs.forEach(m => out.push('cluster ' + m)); console.log(out.join('\n')); } });
    }
  });
} else if (!isMainThread) {
  parentPort.postMessage(workerData + ' ' + work(10 + workerData));
} else if (process.env.OH_CHILD) {
  console.log(work(99) + ' preload=' + (process.env.LD_PRELOAD || '').includes('offheap'));
} else {
  process.send(process.env.OH_CLUSTER + ' ' + work(50) + ' preload=' + (process.env.LD_PRELOAD || '').includes('offheap'));
}
"#;

#[test]
fn node_workers_child_process_and_cluster_run_unchanged() {
    let sb = Sandbox::new();
    let js = sb.path().join("procs.js");
    std::fs::write(&js, PROCS_JS).unwrap();
    let mut c = Command::new("node");
    c.arg(&js);
    let plain = run(c, None, &[]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let rec = sb.rec("rec");
    let mut c = Command::new("node");
    c.arg(&js);
    let o = run(c, Some(&rec), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&plain), stdout(&o));
    assert!(stdout(&o).contains("preload=false"));
    assert!(
        !stdout(&o).contains("preload=true"),
        "LD_PRELOAD leaked into children"
    );
    let ss = streams(&rec);
    assert_eq!(ss.len(), 1, "exec'd children are not followed by default");
    let s = &ss[0].1;
    assert!(s.notes.is_empty(), "{:?}", s.notes);
    assert!(!s.snapshot_times_ms.is_empty());
    // Stacks are deep: they go through V8 into node's main loop.
    let deepest = s.stacks.iter().map(|st| st.frames.len()).max().unwrap_or(0);
    assert!(deepest >= 15, "deepest stack {deepest}");

    // With follow-exec, the children write their own streams.
    let rec = sb.rec("follow");
    let mut c = Command::new("node");
    c.arg(&js);
    let o = run(c, Some(&rec), &[("OFFHEAP_FOLLOW_EXEC", "1")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ss = streams(&rec);
    assert!(
        ss.len() >= 4,
        "parent + execFileSync child + 2 cluster workers, got {}",
        ss.len()
    );
    for (_, s) in &ss {
        assert!(s.notes.is_empty(), "{:?}", s.notes);
    }

    // Exact mode in every process (allocation headers in front of every
    // block of the parent, its workers, the exec'd child and the cluster
    // workers): the same output as with sampling.
    let rec = sb.rec("exact");
    let mut c = Command::new("node");
    c.arg(&js);
    let e = run(
        c,
        Some(&rec),
        &[("OFFHEAP_FOLLOW_EXEC", "1"), ("OFFHEAP_EXACT", "1")],
    );
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert_eq!(stdout(&o), stdout(&e));
    let ss = streams(&rec);
    assert!(ss.len() >= 4, "got {} streams", ss.len());
    for (_, s) in &ss {
        assert!(s.exact);
        assert!(s.notes.is_empty(), "{:?}", s.notes);
    }
}

const ADDON_C: &str = r#"
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
/* Mallocs on every call and never frees. */
void *volatile last_leak;
__attribute__((noinline)) void *keep_forever(size_t n) { void *p = malloc(n); memset(p, 7, n); last_leak = p; return p; }
static napi_value Leak(napi_env env, napi_callback_info info) {
  keep_forever(2048);
  napi_value r; napi_get_undefined(env, &r); return r;
}
NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "leak", NAPI_AUTO_LENGTH, Leak, NULL, &fn);
  napi_set_named_property(env, exports, "leak", fn);
  return exports;
}
"#;

const LEAK_JS: &str = r#"
const addon = require(process.argv[2]);
const zlib = require('zlib');
let rounds = 0, churned = 0;
function step() {
  for (let k = 0; k < 40; k++) {
    addon.leak();
    // Legitimate churn: far more bytes, all released.
    for (let j = 0; j < 4; j++) { const b = Buffer.alloc(64 * 1024, k); churned += b.length; }
    if (k % 10 === 0) churned += zlib.deflateSync(Buffer.alloc(32 * 1024, j2(k))).length;
  }
  if (++rounds < 300) setImmediate(step); else console.log('rounds', rounds, 'churned>leaked', churned > rounds * 40 * 2048 * 10);
}
function j2(k) { return k & 7; }
step();
"#;

#[test]
fn napi_addon_leak_is_top_by_live_growth_beside_heavy_churn() {
    let sb = Sandbox::new();
    let src = sb.path().join("addon.c");
    std::fs::write(&src, ADDON_C).unwrap();
    let addon = sb.path().join("leaky.node");
    let o = Command::new("gcc")
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-g",
            "-fno-builtin",
            "-I/usr/include/node",
            "-o",
        ])
        .arg(&addon)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let js = sb.path().join("leak.js");
    std::fs::write(&js, LEAK_JS).unwrap();
    let cmd = || {
        let mut c = Command::new("node");
        c.arg(&js).arg(&addon);
        c
    };
    let plain = run(cmd(), None, &[]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let rec = sb.rec("rec");
    let o = run(
        cmd(),
        Some(&rec),
        &[
            ("OFFHEAP_INTERVAL_MS", "100"),
            ("OFFHEAP_MIN_AGE_MS", "200"),
            // ~190 samples of the leak: the estimate is within ~7%.
            ("OFFHEAP_SAMPLE_INTERVAL", "131072"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&plain), stdout(&o));
    let s = &streams(&rec)[0].1;
    assert!(s.notes.is_empty(), "{:?}", s.notes);
    assert!(
        s.snapshot_times_ms.len() >= 3,
        "{} snapshots",
        s.snapshot_times_ms.len()
    );
    let growth = |x: &offheap_format::native::StackSeries| {
        x.last().live_bytes as i128 - x.at(0).live_bytes as i128
    };
    let top = top_by(s, growth)[0];
    let st = &s.stacks[top as usize];
    let canon = std::fs::canonicalize(&addon).unwrap();
    let m = s
        .modules
        .iter()
        .find(|m| Path::new(&m.path) == canon)
        .expect("addon module recorded");
    assert!(
        m.contains(st.frames[0]),
        "top growth stack's first frame {:#x} is not in the addon",
        st.frames[0]
    );
    let (lo, hi) = symbol_range(s, &addon, "keep_forever");
    assert!(st.frames[0] > lo && st.frames[0] <= hi);
    // The stack continues through V8 into node (deep, resolved to modules where not JIT).
    assert!(st.frames.len() >= 10, "depth {}", st.frames.len());
    let node_mod = s
        .modules
        .iter()
        .find(|m| m.path.ends_with("/node"))
        .expect("node module");
    assert!(st.frames.iter().any(|&f| node_mod.contains(f)));
    // Churn allocated far more than the leak.
    let leak_alloc = s
        .series
        .iter()
        .find(|x| x.stack == top)
        .unwrap()
        .last()
        .alloc_bytes;
    let total_alloc: u64 = s.series.iter().map(|x| x.last().alloc_bytes).sum();
    assert!(
        total_alloc > 5 * leak_alloc,
        "total {total_alloc} vs leak {leak_alloc}"
    );
    // 12000 leaks of 2048 bytes.
    // The leak may be split over a few stacks (the JS caller runs in
    // different V8 tiers over time); together they estimate 12000 x 2048 B.
    let live: u64 = series_starting_in(s, &addon, "keep_forever")
        .map(|x| x.last().live_bytes)
        .sum();
    assert!(
        (15_000_000..=35_000_000).contains(&live),
        "estimated leak {live} (true 24576000)"
    );
}

#[test]
fn node_runs_unchanged_with_the_agent_preloaded_but_disabled() {
    let mut c = Command::new("node");
    c.args([
        "-e",
        "console.log(require('zlib').deflateSync(Buffer.alloc(1e6)).length)",
    ]);
    let plain = run(c, None, &[]);
    let mut c = Command::new("node");
    c.args([
        "-e",
        "console.log(require('zlib').deflateSync(Buffer.alloc(1e6)).length)",
    ]);
    c.env("LD_PRELOAD", agent_so()).env_remove("OFFHEAP_DIR");
    let o = c.output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&plain), stdout(&o));
}

/// An HTTP server on 127.0.0.1 under a bounded keep-alive load, whose
/// handlers use the libuv threadpool (zlib, pbkdf2), beside a worker thread.
const HTTP_JS: &str = r#"
const http = require('http'), zlib = require('zlib'), crypto = require('crypto');
const { Worker } = require('worker_threads');
const srv = http.createServer((q, r) => {
  zlib.gzip(Buffer.alloc(8192, 'a'), (e, z) => crypto.pbkdf2('pw', 'salt', 10, 32, 'sha256', (e2, k) => { r.end(z.length + ':' + k.length); }));
});
srv.listen(0, '127.0.0.1', async () => {
  const port = srv.address().port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const w = new Worker('let s=0; for (let i=0;i<20000;i++) s+=Buffer.alloc(10000).length; require("worker_threads").parentPort.postMessage(s)', { eval: true });
  const wp = new Promise(r => w.on('message', r));
  let ok = 0; const N = 4000; let inflight = 0, sent = 0;
  await new Promise(done => {
    const go = () => { while (inflight < 16 && sent < N) { sent++; inflight++; http.get({ port, host: '127.0.0.1', agent }, res => { let b=''; res.on('data', d => b += d); res.on('end', () => { if (b.includes(':32')) ok++; inflight--; if (ok + (sent - ok - inflight) >= N && inflight === 0) done(); else go(); }); }); } };
    go();
  });
  console.log('ok', ok, 'worker', await wp);
  agent.destroy(); srv.close();
});
"#;

#[test]
fn http_server_with_threadpool_work_under_exact_tracking() {
    let sb = Sandbox::new();
    let js = sb.path().join("http.js");
    std::fs::write(&js, HTTP_JS).unwrap();
    let mut c = Command::new("node");
    c.arg(&js);
    let plain = run(c, None, &[]);
    assert_eq!(stdout(&plain), "ok 4000 worker 200000000\n");
    for exact in ["0", "1"] {
        let rec = sb.rec(&format!("rec{exact}"));
        let mut c = Command::new("node");
        c.arg(&js);
        let o = run(c, Some(&rec), &[("OFFHEAP_EXACT", exact)]);
        assert_eq!(stdout(&plain), stdout(&o), "exact={exact}");
        let s = &streams(&rec)[0].1;
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        assert!(s.agent_notes.iter().any(|n| n.starts_with("final:")));
    }
}
