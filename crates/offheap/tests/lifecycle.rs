//! How `offheap run` treats the target: exit status, signals, output
//! passthrough, killed targets and killed offheap, and bad input (issue 2).

mod common;
use common::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn exit_status_and_output_pass_through() {
    let sb = Sandbox::new();
    sb.write(
        "fail.js",
        "console.log('to stdout'); console.error('to stderr'); setTimeout(() => process.exit(3), 1200);",
    );
    let out = sb.run("rec", &[], &["node", "fail.js"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to stdout\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("to stderr\n"),
        "{out:?}"
    );
    let s = summary(&sb.path("rec"));
    assert_eq!(s["exit_status"], 3);
    assert!(s["verdict"]["kinds"].is_array());
    // Prometheus text format, for node_exporter's textfile collector.
    let prom = std::fs::read_to_string(sb.path("rec/metrics.prom")).unwrap();
    assert!(
        prom.contains("# TYPE offheap_rss_bytes gauge\noffheap_rss_bytes{pid="),
        "{prom}"
    );
    assert!(prom.contains("offheap_heap_used_bytes{pid="), "{prom}");
}

#[test]
fn stdin_passes_through() {
    let sb = Sandbox::new();
    let mut child = offheap()
        .current_dir(sb.dir.path())
        .args([
            "run",
            "--quiet",
            "--out",
            "rec",
            "--",
            "node",
            "-e",
            "process.stdin.pipe(process.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello through offheap\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello through offheap\n");
}

#[test]
fn silent_target_prints_nothing_on_stdout() {
    let sb = Sandbox::new();
    sb.write("quiet.js", "setTimeout(() => {}, 1500);");
    let out = sb.run("rec", &[], &["node", "quiet.js"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.is_empty(), "--quiet must print nothing: {out:?}");
    assert!(sb.path("rec/summary.json").exists());
}

#[test]
fn verdict_goes_to_stderr_without_quiet() {
    let sb = Sandbox::new();
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--out", "rec", "--", "sleep", "1.5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Verdict:"), "{err}");
    // Not a terminal: plain status lines, not redraws.
    assert!(
        err.lines()
            .any(|l| l.starts_with("offheap ") && l.contains("rss")),
        "{err}"
    );
    assert!(!err.contains('\r'), "{err}");
}

#[test]
fn worker_threads_get_their_own_stream() {
    let sb = Sandbox::new();
    sb.write(
        "w.js",
        "const { Worker, isMainThread } = require('worker_threads');\n\
         if (isMainThread) { const w = new Worker(__filename); w.on('exit', () => console.log('main done')); }\n\
         else { const a = []; for (let i = 0; i < 50; i++) a.push(Buffer.alloc(1e5)); setTimeout(() => console.log('worker done'), 1200); }",
    );
    let plain = std::process::Command::new("node")
        .arg(sb.path("w.js"))
        .output()
        .unwrap();
    let out = sb.run("rec", &[], &["node", "w.js"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, plain.stdout);
    let names: Vec<String> = std::fs::read_dir(sb.path("rec"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("node-"))
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("-0.jsonl"))
            && names.iter().any(|n| n.ends_with("-1.jsonl")),
        "{names:?}"
    );
}

#[test]
fn the_target_carries_on_when_the_js_agent_cannot_write() {
    // The agent injected by hand with a directory it cannot write to.
    let agent = Sandbox::new();
    let js = agent.write("agent.js", &offheap_agent_js());
    let out = std::process::Command::new("node")
        .args(["-e", "console.log(JSON.stringify([1,2,3].map(x => x * 2)))"])
        .env("NODE_OPTIONS", format!("--require {}", js.display()))
        .env("OFFHEAP_DIR", "/nonexistent/offheap")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"[2,4,6]\n");
    assert!(out.stderr.is_empty(), "{out:?}");
}

fn offheap_agent_js() -> String {
    // The agent as `run` installs it.
    let sb = Sandbox::new();
    let out = sb.run("rec", &[], &["node", "-e", "0"]);
    assert!(out.status.success());
    std::fs::read_to_string(sb.path("rec/offheap-agent.js")).unwrap()
}

#[test]
fn duration_stops_a_server_and_sigint_is_forwarded() {
    let sb = Sandbox::new();
    sb.write(
        "server.js",
        "require('http').createServer((q, r) => r.end('ok')).listen(0, '127.0.0.1');\n\
         process.on('SIGINT', () => { console.log('got SIGINT'); process.exit(0); });",
    );
    let t = Instant::now();
    let out = sb.run("rec", &["--duration", "2s"], &["node", "server.js"]);
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got SIGINT\n");
    let end: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.path("rec/end.json")).unwrap()).unwrap();
    assert_eq!(end["reason"], "duration");
}

#[test]
fn duration_escalates_to_sigkill() {
    let sb = Sandbox::new();
    sb.write(
        "stubborn.js",
        "process.on('SIGINT', () => {}); process.on('SIGTERM', () => {}); setInterval(() => {}, 1000);",
    );
    let out = sb.run(
        "rec",
        &["--duration", "1s", "--grace", "500ms"],
        &["node", "stubborn.js"],
    );
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    assert_eq!(summary(&sb.path("rec"))["exit_status"], 137);
}

#[test]
fn sigterm_to_offheap_is_forwarded() {
    let sb = Sandbox::new();
    sb.write("t.js", "process.on('SIGTERM', () => { console.log('term'); process.exit(7); }); setInterval(() => {}, 1000);");
    let child = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--quiet", "--out", "rec", "--", "node", "t.js"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(out.stdout, b"term\n");
}

#[test]
fn target_killed_with_sigkill_leaves_an_analysable_recording() {
    let sb = Sandbox::new();
    sb.write(
        "leak.js",
        "const a = []; setInterval(() => { for (let i = 0; i < 2000; i++) a.push({ i }); }, 50);",
    );
    let child = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--quiet", "--out", "rec", "--", "node", "leak.js"])
        .spawn()
        .unwrap();
    let pid = wait_for_pid(&sb);
    std::thread::sleep(Duration::from_millis(3000));
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let s = summary(&sb.path("rec"));
    assert_eq!(s["exit_status"], 137);
    // And `report` re-reads it.
    let rep = offheap()
        .args(["report", "--json"])
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    assert!(rep.status.success(), "{rep:?}");
    let again: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert_eq!(again["verdict"]["primary"], s["verdict"]["primary"]);
}

#[test]
fn offheap_killed_with_sigkill_leaves_a_readable_recording() {
    let sb = Sandbox::new();
    sb.write(
        "leak.js",
        "const a = []; setInterval(() => { for (let i = 0; i < 2000; i++) a.push({ i }); }, 50);",
    );
    let mut child = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--quiet", "--out", "rec", "--", "node", "leak.js"])
        .spawn()
        .unwrap();
    let pid = wait_for_pid(&sb);
    std::thread::sleep(Duration::from_millis(3500));
    child.kill().unwrap(); // SIGKILL to offheap itself
    child.wait().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    // Cut the last line of a stream in half, as a crash mid-write would.
    let proc_path = sb.path("rec/proc.jsonl");
    let mut text = std::fs::read(&proc_path).unwrap();
    text.truncate(text.len() - 7);
    std::fs::write(&proc_path, text).unwrap();
    let rep = report(&sb.path("rec"));
    let out = String::from_utf8_lossy(&rep.stdout);
    assert!(out.contains("Verdict:"), "{out}");
    assert!(out.contains("end.json is missing"), "{out}");
    assert!(out.contains("truncated"), "{out}");
}

/// Issue 18.3: offheap killed. The target it launched gets SIGTERM (the
/// parent-death signal) instead of running on unwatched; one that ignores
/// SIGTERM goes on leaking with its native agent writing, and `report`
/// judges from the streams that cover the window (it said "none", "too
/// short", beside a +9 MiB/s suspect) and says which stream stopped early.
#[test]
fn offheap_killed_the_target_gets_sigterm_and_report_judges_the_streams_that_went_on() {
    let sb = Sandbox::new();
    let obedient = sb.gcc(
        "obedient.c",
        r#"#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static void on(int s) { FILE *f = fopen("got-sigterm", "w"); if (f) fclose(f); _exit(0); }
int main(void) { signal(SIGTERM, on); for (int i = 0; i < 600; i++) usleep(50000); return 0; }
"#,
        "obedient",
        &[],
    );
    let mut child = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--quiet", "--out", "rec", "--"])
        .arg(&obedient)
        .spawn()
        .unwrap();
    wait_for_pid(&sb);
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    while !sb.path("got-sigterm").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the target never got SIGTERM when offheap died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let stubborn = sb.gcc(
        "stubborn.c",
        r#"#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) void *keep_record(size_t n) { void *p = malloc(n); memset(p, 1, n); return p; }
int main(void) {
  signal(SIGTERM, SIG_IGN);
  for (int i = 0; i < 320; i++) { keep_record(256 << 10); usleep(25000); }
  return 0;
}
"#,
        "stubborn",
        &[],
    );
    let mut child = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--quiet", "--out", "rec2", "--"])
        .arg(&stubborn)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sb.path("rec2/recording.json").exists() {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    child.wait().unwrap();
    let pid: u32 = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(sb.path("rec2/recording.json")).unwrap(),
    )
    .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    // It ignores SIGTERM and finishes its 8 s of leaking.
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/exe")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "target still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rep = offheap()
        .args(["report", "--json"])
        .arg(sb.path("rec2"))
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert_eq!(s["verdict"]["primary"], "native", "{:#}", s["verdict"]);
    assert!(
        s["suspects"][0]["function"] == "keep_record",
        "{:#}",
        s["suspects"]
    );
    assert!(
        s["notes"]
            .to_string()
            .contains("/proc sampling (RSS) stopped at"),
        "{:#}",
        s["notes"]
    );
}

fn wait_for_pid(sb: &Sandbox) -> u32 {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(sb.path("rec/recording.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return v["pid"].as_u64().unwrap() as u32;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no recording.json");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("offheap: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_input_gets_one_line_and_non_zero_exit() {
    let sb = Sandbox::new();
    let run = |args: &[&str]| {
        offheap()
            .current_dir(sb.dir.path())
            .args(args)
            .output()
            .unwrap()
    };

    let e = one_line_error(&run(&["run", "--"]));
    assert!(e.contains("no command"), "{e}");
    let out = run(&["run", "--quiet", "--", "definitely-not-a-command-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(one_line_error(&out).contains("command not found"));

    // An --out that cannot be written.
    let ro = sb.path("readonly");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    if unsafe_is_root() {
        // root writes anywhere; use a path under a file instead
        sb.write("afile", "x");
        let e = one_line_error(&run(&["run", "--out", "afile/sub", "--", "true"]));
        assert!(e.contains("afile"), "{e}");
    } else {
        let e = one_line_error(&run(&["run", "--out", "readonly/sub", "--", "true"]));
        assert!(e.contains("readonly"), "{e}");
    }
    // A non-empty --out is never written into.
    std::fs::create_dir(sb.path("full")).unwrap();
    std::fs::write(sb.path("full/keep.txt"), "precious").unwrap();
    let e = one_line_error(&run(&["run", "--out", "full", "--", "true"]));
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(sb.path("full/keep.txt")).unwrap(),
        "precious"
    );

    // report on a missing, an empty, and a corrupt recording.
    let e = one_line_error(&run(&["report", "nope"]));
    assert!(e.contains("no such recording"), "{e}");
    std::fs::create_dir(sb.path("empty")).unwrap();
    let e = one_line_error(&run(&["report", "empty"]));
    assert!(e.contains("not an offheap recording"), "{e}");
    std::fs::create_dir(sb.path("corrupt")).unwrap();
    std::fs::write(
        sb.path("corrupt/recording.json"),
        "{\"format_version\": 1, \"pid\": \"x",
    )
    .unwrap();
    let e = one_line_error(&run(&["report", "corrupt"]));
    assert!(e.contains("corrupt"), "{e}");
    let e = one_line_error(&run(&["report", "afile_or_missing/x"]));
    assert!(!e.is_empty());
}

fn unsafe_is_root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn truncated_recording_is_analysed_up_to_its_last_record() {
    let sb = Sandbox::new();
    sb.write("leak.js", "const a = []; const t = setInterval(() => { for (let i = 0; i < 2000; i++) a.push({ i }); }, 50); setTimeout(() => clearInterval(t), 3000);");
    let out = sb.run("rec", &[], &["node", "leak.js"]);
    assert!(out.status.success());
    // Truncate the JS stream mid-record.
    let node_file = std::fs::read_dir(sb.path("rec"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("node-"))
        .unwrap()
        .path();
    let mut bytes = Vec::new();
    std::fs::File::open(&node_file)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes.truncate(bytes.len() * 2 / 3);
    std::fs::write(&node_file, &bytes).unwrap();
    let rep = report(&sb.path("rec"));
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(text.contains("truncated; skipped"), "{text}");
    assert!(text.contains("Verdict:"), "{text}");
}

#[test]
fn children_do_not_inherit_the_injection_unless_asked() {
    let sb = Sandbox::new();
    sb.write(
        "spawn.js",
        "const out = require('child_process').execFileSync('sh', ['-c', 'echo \"[$LD_PRELOAD][$NODE_OPTIONS]\"']);\n\
         process.stdout.write(out);",
    );
    let out = sb.run("rec", &[], &["node", "spawn.js"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[][]\n");
    // The user's own NODE_OPTIONS is kept for children.
    let out = offheap()
        .current_dir(sb.dir.path())
        .env("NODE_OPTIONS", "--max-old-space-size=300")
        .args(["run", "--quiet", "--out", "rec2", "--", "node", "spawn.js"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[][--max-old-space-size=300]\n",
        "{out:?}"
    );
    // With --follow-exec, children are profiled too.
    let out = sb.run("rec3", &["--follow-exec"], &["node", "spawn.js"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("liboffheap_agent.so") && text.contains("offheap-agent.js"),
        "{text}"
    );
}

/// `offheap report DIR`, which must succeed.
fn report(dir: &std::path::Path) -> std::process::Output {
    let rep = offheap().arg("report").arg(dir).output().unwrap();
    assert!(rep.status.success(), "{rep:?}");
    rep
}
