//! Issue 4 end to end: the native-leak fixture recorded by `offheap run`,
//! symbolized (C and JS frames by name), and every report readable by the
//! tools users have: go tool pprof, a browser, flame-graph tools.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn record_fixture() -> (Sandbox, serde_json::Value) {
    let sb = Sandbox::new();
    build_addon(&sb);
    let out = sb.run("rec", &["--min-age", "2s"], &["node", "app.js"]);
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    (sb, s)
}

fn frames_of(s: &serde_json::Value) -> Vec<(String, String)> {
    s["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("").to_string(),
                f["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn native_leak_fixture_names_the_c_and_js_frames_and_every_report_loads() {
    let (sb, s) = record_fixture();
    let top = &s["suspects"][0];
    let frames = frames_of(top);
    // The leaking C function, by name, with its source line, in the addon.
    let leak = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "leak_bytes");
    let leak = leak.unwrap_or_else(|| panic!("leak_bytes not in the top suspect: {top:#}"));
    assert_eq!(leak["kind"], "native");
    assert!(leak["module"].as_str().unwrap().ends_with("leak.node"));
    assert!(
        leak["file"].as_str().unwrap().ends_with("leak.c"),
        "{leak:#}"
    );
    assert!(leak["line"].as_u64().unwrap() > 0);
    // ... and the JavaScript function that called it.
    assert!(
        frames.iter().any(|(f, k)| f == "leakNative" && k == "js"),
        "{frames:?}"
    );
    assert!(
        top["module"].as_str().unwrap().ends_with("leak.node"),
        "{top:#}"
    );
    assert_eq!(top["function"], "leak_bytes");
    assert!(top["hint"].as_str().unwrap().contains("addon"), "{top:#}");

    let rec = sb.path("rec");
    check_pprof(&rec);
    check_folded(&rec);
    check_html(&rec);
    check_text_report(&rec);
}

fn check_pprof(rec: &Path) {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED: go is not installed; profile.pb.gz was not loaded in go tool pprof");
        return;
    }
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(rec.join("profile.pb.gz"))
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Type: inuse_space"), "{text}");
    assert!(text.contains("leak_bytes"), "{text}");
}

fn check_folded(rec: &Path) {
    let folded = std::fs::read_to_string(rec.join("stacks.folded")).unwrap();
    let line = folded
        .lines()
        .find(|l| l.contains("leak_bytes") && l.contains("leakNative"))
        .expect("leakNative;...;leak_bytes in stacks.folded");
    let (stack, value) = line.rsplit_once(' ').unwrap();
    assert!(value.parse::<u64>().unwrap() > 0);
    // Root first: the JS caller comes before the C function.
    let js = stack
        .find("leakNative")
        .expect("JS caller in the folded stack");
    assert!(js < stack.find("leak_bytes").unwrap(), "{line}");
    // The hostile JS name survives as text in folded stacks...
    assert!(
        folded.contains("<script>alert(1)</script>"),
        "hostile frame missing from folded stacks"
    );
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn check_html(rec: &Path) {
    let html = std::fs::read_to_string(rec.join("report.html")).unwrap();
    // ... but never as markup in the HTML or the SVG.
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "unescaped target-controlled name in report.html"
    );
    let svg = std::fs::read_to_string(rec.join("flamegraph.svg")).unwrap();
    assert!(
        !svg.contains("<script>alert(1)</script>"),
        "unescaped name in flamegraph.svg"
    );
    assert!(html.contains("leak_bytes") && html.contains("leakNative"));
    assert!(
        !html.contains("http://") && !html.contains("https://")
            || html.contains("Content-Security-Policy")
    );
    let Some(chrome) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed; report.html was not opened in a browser");
        return;
    };
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("report.png");
    let profile = tempfile::tempdir().unwrap();
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut cmd = Command::new(&chrome);
    base(&mut cmd);
    cmd.arg("--dump-dom")
        .arg(format!("file://{}", rec.join("report.html").display()));
    let (dom, err) = run_with_timeout(cmd, Duration::from_secs(90));
    let console: Vec<&str> = err.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages in report.html: {console:#?}"
    );
    assert!(
        dom.contains("data-ready=\"1\""),
        "the report's script did not finish"
    );
    let mut cmd = Command::new(&chrome);
    base(&mut cmd);
    cmd.args(["--hide-scrollbars", "--window-size=1400,2600"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", rec.join("report.html").display()));
    let _ = run_with_timeout(cmd, Duration::from_secs(90));
    assert!(shot.exists(), "no screenshot");
    eprintln!("screenshot: {}", shot.display());
}

fn run_with_timeout(mut cmd: Command, limit: Duration) -> (String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let out = std::thread::spawn({
        let mut so = child.stdout.take().unwrap();
        move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut so, &mut s).ok();
            s
        }
    });
    let err = std::thread::spawn({
        let mut se = child.stderr.take().unwrap();
        move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut se, &mut s).ok();
            s
        }
    });
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    (out.join().unwrap(), err.join().unwrap())
}

fn check_text_report(rec: &Path) {
    let out = offheap().arg("report").arg(rec).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verdict: native"), "{text}");
    assert!(
        text.contains("leak_bytes") && text.contains("leakNative"),
        "{text}"
    );
}

#[test]
fn diff_of_two_windows_shows_the_leak_growing() {
    let (sb, _) = record_fixture();
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["diff", "rec", "--from", "2s", "--to", "7s", "--out", "d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leak_bytes"), "{text}");
    let d = summary(&sb.path("d"));
    assert!(
        d["suspects"]
            .as_array()
            .unwrap()
            .iter()
            .take(3)
            .any(|x| x["function"] == "leak_bytes"),
        "{d:#}"
    );
    for f in [
        "report.html",
        "profile.pb.gz",
        "stacks.folded",
        "flamegraph.svg",
    ] {
        assert!(sb.path("d").join(f).exists(), "{f}");
    }
    // Two recordings: the same program against itself grows by about nothing per stack.
    let again = sb.run("rec2", &["--min-age", "2s"], &["node", "app.js"]);
    assert!(again.status.success());
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["diff", "rec", "rec2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Bad input: one line, non-zero.
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["diff", "rec"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--from"),
        "{out:?}"
    );
}
