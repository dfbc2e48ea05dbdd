//! The RSS ledger (issue 13) on real processes: node programs that leak
//! each kind of memory, a steady node HTTP server, python3 and a C program
//! that mixes malloc, mmap and 8 threads. At every moment after warm-up the
//! parts add up to RSS with little unexplained, and the part that grows is
//! the verdict's kind.

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

struct Case {
    name: &'static str,
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
        let rss = l["rss"].as_f64().unwrap_or(0.0);
        let parts: f64 = l["parts"]
            .as_object()
            .map(|m| m.values().map(|v| v.as_f64().unwrap_or(-1.0)).sum())
            .unwrap_or(0.0);
        if l["parts"]
            .as_object()
            .is_some_and(|m| m.values().any(|v| v.as_f64().is_none_or(|x| x < 0.0)))
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

#[test]
fn the_ledger_explains_every_resident_byte() {
    let cases = [
        Case {
            name: "js-leak.js",
            growing: &["js-heap"],
            verdict: "js-heap",
        },
        Case {
            name: "buffer-leak.js",
            growing: &["external"],
            verdict: "external",
        },
        Case {
            name: "zlib-leak.js",
            growing: &["native"],
            verdict: "native",
        },
        Case {
            name: "steady-server.js",
            growing: &[],
            verdict: "none",
        },
        Case {
            name: "mix.py",
            growing: &["native"],
            verdict: "",
        },
        Case {
            name: "mix",
            growing: &["native"],
            verdict: "native",
        },
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|c| {
            let name = c.name;
            std::thread::spawn(move || {
                let sb = Sandbox::new();
                let cmd: Vec<String> = match name {
                    "mix" => {
                        let exe = sb.gcc("mix.c", C_MIX, "mix", &["-O1", "-pthread"]);
                        vec![exe.display().to_string()]
                    }
                    "mix.py" => {
                        sb.write(name, PYTHON);
                        // The interpreter itself, not a version manager's
                        // shell shim (a shim's exec drops the agent).
                        vec!["/usr/bin/python3".into(), name.into()]
                    }
                    _ => {
                        let src = match name {
                            "js-leak.js" => JS_LEAK,
                            "buffer-leak.js" => BUFFER_LEAK,
                            "zlib-leak.js" => ZLIB_LEAK,
                            _ => STEADY_SERVER,
                        };
                        sb.write(name, src);
                        vec!["node".into(), name.into()]
                    }
                };
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let out = sb.run("rec", &[], &args);
                let s = summary(&sb.path("rec"));
                (out, s)
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (c, r) in cases.iter().zip(runs) {
        let (out, s) = r.join().unwrap();
        if !out.status.success() {
            wrong.push(format!("{}: {out:?}", c.name));
            continue;
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
                        "{}: the kind of memory that grew most is {} ({:.1} MiB), not {:?}: {g:?}",
                        c.name,
                        g[0].0,
                        g[0].1 / MIB,
                        c.growing
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
