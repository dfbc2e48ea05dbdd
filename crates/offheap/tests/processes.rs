//! Every recorded process is reported (issue 18.2): a forked child that
//! leaks is named in the headline with its own verdict and suspects, a
//! leaking node cluster worker under `--follow-exec` is named among its
//! siblings, and a multi-process program that leaks nothing gets no leak
//! verdict for anyone.

mod common;
use common::*;
use serde_json::Value;

/// The entry of `processes` for `pid`.
fn process(s: &Value, pid: u64) -> &Value {
    s["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no process {pid} in {:#}", s["processes"]))
}

/// The pid after `tag` on the target's stdout.
fn pid_after(out: &std::process::Output, tag: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(tag)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{tag}' line in stdout: {stdout}"))
}

fn processes_text(s: &Value) -> String {
    s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} (parent {}) {:?}: {} {:#}\n",
                p["pid"], p["ppid"], p["command"], p["verdict"]["primary"], p["growth_bytes_per_s"]
            )
        })
        .collect()
}

/// The parent forks, then waits idle; the child mallocs 1 MiB every 100 ms
/// (60 MiB in 6 s: shorter than the default minimum age of 5 s plus the
/// warm-up) and never frees it.
const FORK_LEAK: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
static void *volatile sink;
__attribute__((noinline)) void *child_leak(size_t n) { void *p = malloc(n); memset(p, 1, n); return p; }
int main(void) {
  fflush(stdout);
  pid_t c = fork();
  if (c == 0) {
    for (int i = 0; i < 60; i++) { sink = child_leak(1 << 20); usleep(100000); }
    _exit(0);
  }
  printf("CHILD %d\n", (int)c);
  fflush(stdout);
  int st;
  waitpid(c, &st, 0);
  usleep(300000);
  return 0;
}
"#;

#[test]
fn a_forked_child_that_leaks_is_named() {
    let sb = Sandbox::new();
    sb.gcc("fork.c", FORK_LEAK, "forkleak", &[]);
    let out = sb.run("rec", &[], &["./forkleak"]);
    assert!(out.status.success(), "{out:?}");
    let child = pid_after(&out, "CHILD ");
    let s = summary(&sb.path("rec"));
    let ctx = format!("{}\n{}", describe(&out, &s), processes_text(&s));
    let root = s["pid"].as_u64().unwrap();
    assert_ne!(root, child);
    // The headline and the top-level figures are about the child.
    let headline = s["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("native leak in child ") && headline.contains(&child.to_string()),
        "headline {headline:?}\n{ctx}"
    );
    assert_eq!(s["focus_pid"].as_u64(), Some(child), "{ctx}");
    assert_eq!(s["verdict"]["primary"], "native", "{ctx}");
    // Both processes, each with its own verdict.
    assert_eq!(s["processes"].as_array().unwrap().len(), 2, "{ctx}");
    let p = process(&s, root);
    assert_eq!(p["root"], true);
    assert_ne!(p["verdict"]["primary"], "native", "the idle parent: {ctx}");
    let c = process(&s, child);
    assert_eq!(c["ppid"].as_u64(), Some(root), "{ctx}");
    assert_eq!(c["focus"], true);
    assert_eq!(c["verdict"]["primary"], "native", "{ctx}");
    let rate = c["growth_bytes_per_s"]["native_live"].as_f64().unwrap();
    assert!(rate > 5e6 && rate < 20e6, "about 10 MiB/s: {rate}\n{ctx}");
    assert_eq!(
        c["suspects"][0]["function"], "child_leak",
        "the child's top suspect: {:#}",
        c["suspects"]
    );
    assert_eq!(s["suspects"][0]["function"], "child_leak");
    // The text report says so too, and has a line per process.
    let report = offheap()
        .args(["report"])
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains(headline), "{text}");
    assert!(text.contains("Processes (2 recorded)"), "{text}");
    assert!(text.contains(&format!("child {child} (")), "{text}");
    let html = std::fs::read_to_string(sb.path("rec/report.html")).unwrap();
    assert!(html.contains(&format!("id=\"process-{child}\"")));
    assert!(html.contains(&format!("id=\"process-{root}\"")));
}

/// A cluster of two workers: worker 1 keeps 64 KiB Buffers (about 2.5 MB/s),
/// worker 2 only churns. The primary stops both after about 9 s.
const CLUSTER: &str = r#"
const cluster = require('cluster');
if (cluster.isPrimary) {
  const a = cluster.fork({ ROLE: 'leak' });
  const b = cluster.fork({ ROLE: 'idle' });
  setTimeout(() => { a.kill(); b.kill(); }, 9000);
} else if (process.env.ROLE === 'leak') {
  console.log('LEAKER ' + process.pid);
  const kept = [];
  setInterval(() => { for (let k = 0; k < 4; k++) kept.push(Buffer.alloc(64 * 1024, k)); }, 100);
} else {
  console.log('IDLE ' + process.pid);
  setInterval(() => { const b = []; for (let k = 0; k < 4; k++) b.push(Buffer.alloc(64 * 1024, k)); }, 100);
}
"#;

#[test]
fn the_leaking_cluster_worker_is_named() {
    let sb = Sandbox::new();
    sb.write("cluster.js", CLUSTER);
    let out = sb.run("rec", &["--follow-exec"], &["node", "cluster.js"]);
    let leaker = pid_after(&out, "LEAKER ");
    let idle = pid_after(&out, "IDLE ");
    let s = summary(&sb.path("rec"));
    let ctx = format!("{}\n{}", describe(&out, &s), processes_text(&s));
    assert!(s["processes"].as_array().unwrap().len() >= 3, "{ctx}");
    assert_eq!(s["focus_pid"].as_u64(), Some(leaker), "{ctx}");
    let headline = s["headline"].as_str().unwrap();
    assert!(
        headline.contains(&format!("child {leaker} ")) && headline.contains("leak in"),
        "headline {headline:?}\n{ctx}"
    );
    let l = process(&s, leaker);
    assert!(
        ["external", "native"].contains(&l["verdict"]["primary"].as_str().unwrap()),
        "{ctx}"
    );
    assert_eq!(l["node"], true, "{ctx}");
    for pid in [idle, s["pid"].as_u64().unwrap()] {
        let p = process(&s, pid);
        assert!(
            !["external", "native", "js-heap"].contains(&p["verdict"]["primary"].as_str().unwrap()),
            "process {pid} leaks nothing: {ctx}"
        );
    }
}

/// Three forked children churn (malloc and free) for about 6 s, and a shell
/// runs `sleep` (not followed: no agent there, only /proc).
const NO_LEAK: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
static void *volatile sink;
int main(void) {
  for (int c = 0; c < 3; c++) {
    if (fork() == 0) {
      for (int i = 0; i < 60; i++) {
        for (int k = 0; k < 50; k++) { void *p = malloc(64 * 1024); memset(p, k, 64 * 1024); sink = p; free(p); }
        usleep(100000);
      }
      _exit(0);
    }
  }
  if (system("sleep 3") != 0) return 1;
  while (wait(NULL) > 0) {}
  return 0;
}
"#;

#[test]
fn processes_that_leak_nothing_get_no_leak_verdict() {
    let sb = Sandbox::new();
    sb.gcc("noleak.c", NO_LEAK, "noleak", &[]);
    let out = sb.run("rec", &[], &["./noleak"]);
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    let ctx = format!("{}\n{}", describe(&out, &s), processes_text(&s));
    let procs = s["processes"].as_array().unwrap();
    // The target, its three children, and sh/sleep seen in /proc.
    assert!(procs.len() >= 5, "{ctx}");
    for p in procs {
        assert!(
            !["external", "native", "js-heap"].contains(&p["verdict"]["primary"].as_str().unwrap()),
            "{ctx}"
        );
    }
    assert!(
        procs
            .iter()
            .any(|p| p["command"].as_str().unwrap_or("").contains("sleep") && p["native"] == false),
        "the unfollowed sleep, from /proc alone: {ctx}"
    );
    assert_eq!(s["focus_pid"], s["pid"], "{ctx}");
    assert_eq!(
        s["headline"].as_str().unwrap(),
        format!("no leak found in any of the {} processes", procs.len()),
        "{ctx}"
    );
}
