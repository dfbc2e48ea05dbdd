//! Reporter tests on a realistic Model (see common/mod.rs): pprof through
//! `go tool pprof`, report.html in headless Chromium, escaping of hostile
//! names, and snapshot tests of the text outputs.
//!
//! Snapshots live in tests/snapshots/; regenerate with
//! `OFFHEAP_BLESS=1 cargo test -p offheap-report --test reports`.
//! Artefacts (report.html, flamegraph.svg, screenshot) go to
//! `$CARGO_TARGET_TMPDIR/offheap-report-artifacts/`.

mod common;

use offheap_report::{
    Weight, escape, folded, pprof, render_html, render_text, top_text, write_all,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("offheap-report-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh directory, unique per call (tests run in parallel threads).
fn tempdir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a command with a deadline; returns (status ok, stdout, stderr).
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let out_dir = tempdir("cmd-out");
    let out_p = out_dir.join("stdout");
    let err_p = out_dir.join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let ok = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_p).unwrap_or_default();
    let err = std::fs::read_to_string(&err_p).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out_dir);
    (ok, out, err)
}

// ------------------------------------------------------------------ write_all

#[test]
fn write_all_writes_every_file() {
    let m = common::model();
    let dir = tempdir("write-all");
    let w = write_all(&m, &dir).unwrap();
    for p in w.paths() {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len > 100, "{} is {len} bytes", p.display());
    }
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    // Regenerating replaces the files.
    write_all(&m, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn empty_model_renders_everything() {
    let m = offheap_analysis::Model::default();
    let dir = tempdir("empty");
    write_all(&m, &dir).unwrap();
    assert!(render_text(&m).contains("Verdict: not available"));
    assert!(folded(&m, Weight::LiveBytes).is_empty());
    assert!(top_text(&m, Weight::LiveBytes, 10).starts_with("Total: 0 B live bytes in 0 stacks"));
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ pprof

fn go_pprof(file: &Path, args: &[&str]) -> Option<String> {
    if Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!(
            "SKIPPED: `go` is not installed (apt-get install golang-go); the pprof file was not checked with go tool pprof"
        );
        return None;
    }
    let tmp = tempdir("pprof-home");
    let mut cmd = Command::new("go");
    cmd.arg("tool")
        .arg("pprof")
        .args(args)
        .arg(file)
        .env("PPROF_TMPDIR", &tmp)
        .env("HOME", &tmp)
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOFLAGS", "-mod=mod");
    let (ok, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(ok, "go tool pprof {args:?} failed:\n{out}\n{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    Some(format!("{out}\n{err}"))
}

/// The function name of the first row of `go tool pprof -top` output.
fn first_top_row(out: &str) -> String {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"));
    lines.next();
    let row = lines.next().unwrap_or_default();
    // flat flat% sum% cum cum% NAME...
    row.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")
}

#[test]
fn pprof_loads_in_go_tool_pprof() {
    let m = common::model();
    let dir = artifacts();
    let file = dir.join("profile.pb.gz");
    std::fs::write(&file, pprof(&m)).unwrap();
    let Some(out) = go_pprof(&file, &["-top"]) else {
        return;
    };
    std::fs::write(dir.join("pprof-top.txt"), &out).unwrap();
    assert!(out.contains("Type: inuse_space"), "{out}");
    assert_eq!(first_top_row(&out), "leak_bytes", "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_end().ends_with(" leak_bytes") && l.contains("84MB 66.40%")),
        "{out}"
    );
    assert!(out.contains("deflateInit2_"), "{out}");

    let out = go_pprof(&file, &["-top", "-sample_index=alloc_space"]).unwrap();
    assert!(out.contains("Type: alloc_space"), "{out}");
    assert!(first_top_row(&out).starts_with("operator new"), "{out}");

    // Cumulative view: the JS caller of the addon is in the profile with the
    // leak under it, and the hostile name survives as plain data.
    let out = go_pprof(&file, &["-top", "-cum", "-nodecount=100"]).unwrap();
    assert!(out.contains("leakMore"), "{out}");
    assert!(out.contains("Builtins_CallApiCallback"), "{out}");
    assert!(
        out.contains("make_record (inline)"),
        "inlined frame missing:\n{out}"
    );

    // A profile without samples (no native agent) still loads.
    let empty = dir.join("profile-empty.pb.gz");
    std::fs::write(&empty, pprof(&offheap_analysis::Model::default())).unwrap();
    let out = go_pprof(&empty, &["-top"]).unwrap();
    assert!(out.contains("Type: inuse_space"), "{out}");

    // Without a module table (every frame unmapped) it still loads and ranks.
    let mut nomods = common::model();
    nomods.profile.modules.clear();
    let file2 = dir.join("profile-no-modules.pb.gz");
    std::fs::write(&file2, pprof(&nomods)).unwrap();
    let out = go_pprof(&file2, &["-top"]).unwrap();
    assert_eq!(first_top_row(&out), "leak_bytes", "{out}");

    // Mappings carry the build-ids, in hex.
    let raw = go_pprof(&file, &["-raw"]).unwrap();
    assert!(raw.contains("deadbeef0011"), "{raw}");
    assert!(
        raw.contains("9f2c11804be307aa10425d660102030405060708"),
        "{raw}"
    );
}

#[test]
fn pprof_message_shape() {
    let m = common::model();
    let p = offheap_report::pprof::pprof_message(&m);
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(s(0), "");
    let types: Vec<String> = p
        .sample_type
        .iter()
        .map(|t| format!("{}/{}", s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects/count",
            "alloc_space/bytes",
            "inuse_objects/count",
            "inuse_space/bytes"
        ]
    );
    assert_eq!(s(p.default_sample_type), "inuse_space");
    let pt = p.period_type.unwrap();
    assert_eq!((s(pt.r#type), s(pt.unit)), ("space", "bytes"));
    assert_eq!(p.period, 524_288);
    assert_eq!(p.mapping.len(), 5);
    assert!(
        p.mapping
            .iter()
            .all(|mp| mp.has_functions && mp.has_inline_frames)
    );
    // JS frames: no mapping. The inlined frame shares a Location with its caller.
    let js_fn = p.function.iter().find(|f| s(f.name) == "leakMore").unwrap();
    let loc = p
        .location
        .iter()
        .find(|l| l.line.iter().any(|ln| ln.function_id == js_fn.id))
        .unwrap();
    assert_eq!(loc.mapping_id, 0);
    let inl = p
        .function
        .iter()
        .find(|f| s(f.name) == "make_record")
        .unwrap();
    let outer = p
        .function
        .iter()
        .find(|f| s(f.name) == "LeakBytes")
        .unwrap();
    let loc = p
        .location
        .iter()
        .find(|l| l.line.iter().any(|ln| ln.function_id == inl.id))
        .unwrap();
    assert_eq!(loc.line.len(), 2);
    assert_eq!(loc.line[0].function_id, inl.id, "innermost first");
    assert_eq!(loc.line[1].function_id, outer.id);
    assert_eq!(loc.address, 0x7f3a_1b40_11c2);
    let addon = p
        .mapping
        .iter()
        .position(|mp| s(mp.filename) == common::ADDON)
        .unwrap();
    assert_eq!(loc.mapping_id, addon as u64 + 1);
    // gzip magic
    assert_eq!(&pprof(&m)[..2], &[0x1f, 0x8b]);
}

// ------------------------------------------------------------------ escaping

#[test]
fn hostile_names_are_escaped_in_html_and_svg() {
    let m = common::model();
    let html = render_html(&m);
    // Exactly our two script elements, and no raw markup from the name.
    assert_eq!(html.matches("<script").count(), 2, "extra <script in html");
    assert_eq!(
        html.matches("</script>").count(),
        2,
        "extra </script> in html"
    );
    assert!(!html.contains("alert(1)</"), "raw hostile markup in html");
    assert!(!html.contains("<!--"), "comment opener in html");
    assert!(
        html.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!--"),
        "escaped name missing from the suspects table"
    );
    // The name is in the embedded data, escaped for JSON-in-script.
    let data_start = html.find("id=\"offheap-data\">").unwrap();
    let data_end = data_start + html[data_start..].find("</script>").unwrap();
    let data = &html[data_start + "id=\"offheap-data\">".len()..data_end];
    assert!(data.contains("\\u003c/script\\u003e\\u003cscript\\u003ealert(1)"));
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert!(v.to_string().contains(common::EVIL));

    let svg = offheap_report::flamegraph_svg(&m, Weight::LiveBytes);
    assert_eq!(svg.matches("<script").count(), 1);
    assert!(!svg.contains("<script>alert"));
    assert!(!svg.contains("<!--"));
    assert!(svg.contains("&lt;/script&gt;&lt;script&gt;alert(1)"));
    // The CDATA section holds only our script.
    assert_eq!(svg.matches("]]>").count(), 1);
    // Well-formed enough for an XML reader: every < starts a tag we wrote.
    let markup = &svg[..svg.find("<script").unwrap()];
    for (i, _) in markup.match_indices('<') {
        let next = markup[i + 1..].chars().next().unwrap();
        assert!(
            next.is_ascii_alphabetic() || matches!(next, '/' | '?' | '!'),
            "stray < at {i}"
        );
    }
}

#[test]
fn folded_names_have_no_separators() {
    let mut m = common::model();
    m.profile.stacks[0].frames[1].function = "evil;name\nwith newline".into();
    let f = folded(&m, Weight::LiveBytes);
    for line in f.lines() {
        let (stack, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<u64>().is_ok(), "{line}");
        assert!(!stack.is_empty());
    }
    assert!(f.contains("evil:name with newline"));
    assert_eq!(escape::folded_frame("a;b"), "a:b");
}

#[test]
fn terminal_text_shows_control_characters_as_escapes_and_keeps_its_lines() {
    let mut m = common::model();
    let evil = "evil\x1b]0;TITLE\x07\x1b[2J\nnext\u{9b}2J";
    m.meta.command = vec!["node".into(), evil.into()];
    m.suspects[0].function = evil.into();
    m.suspects[0].module = format!("/tmp/{evil}.so");
    m.suspects[0].frames[0].function = evil.into();
    m.suspects[0].frames[0].file = Some(evil.into());
    m.profile.stacks[0].frames[0].function = evil.into();
    m.notes.push(format!("note about {evil}"));
    let plain_lines = |m: &offheap_analysis::Model| {
        (
            offheap_report::render_text(m).lines().count(),
            top_text(m, Weight::LiveBytes, 10).lines().count(),
        )
    };
    let mut tame = common::model();
    tame.notes.push("note about x".into());
    for text in [
        offheap_report::render_text(&m),
        top_text(&m, Weight::LiveBytes, 10),
    ] {
        for bad in ['\x1b', '\x07', '\u{9b}'] {
            assert!(!text.contains(bad), "raw {bad:?} in:\n{text}");
        }
        assert!(
            text.contains("evil\\e]0;TITLE\\x07\\e[2J\\nnext\\u{9b}2J"),
            "{text}"
        );
    }
    // A newline inside a name does not add a line.
    assert_eq!(plain_lines(&m), plain_lines(&tame));
}

// ------------------------------------------------------------------ snapshots

fn check_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("OFFHEAP_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {}; run with OFFHEAP_BLESS=1",
            path.display()
        )
    });
    if expected != actual {
        let new = path.with_extension("new");
        std::fs::write(&new, actual).unwrap();
        panic!(
            "snapshot {} differs; actual output written to {} (OFFHEAP_BLESS=1 to accept)",
            path.display(),
            new.display()
        );
    }
}

#[test]
fn snapshot_text() {
    let m = common::model();
    check_snapshot("text.txt", &render_text(&m));
}

/// A non-Node target (a C program): no V8 rows, no JS frames.
#[test]
fn snapshot_text_non_node() {
    let mut m = common::model();
    m.meta.node = false;
    m.meta.command = vec!["./leaky".into(), "--iterations".into(), "100".into()];
    m.timeline.series.retain(|s| {
        matches!(
            s.name.as_str(),
            "rss" | "native_live" | "allocator_retained"
        )
    });
    m.timeline.gc.clear();
    m.growth.heap_used = 0.0;
    m.growth.external = 0.0;
    m.growth.array_buffers = 0.0;
    m.peak.heap_used = 0;
    m.peak.external = 0;
    m.peak.array_buffers = 0;
    m.suspects.truncate(1);
    m.suspects[0]
        .frames
        .retain(|f| f.kind == offheap_symbols::FrameKind::Native);
    m.end = Some(offheap_format::End {
        end_ms: 0.0,
        exit_code: Some(0),
        signal: None,
        exit_status: 0,
        reason: "exited".into(),
        stop_ms: None,
    });
    m.heap = None;
    m.notes.clear();
    let text = render_text(&m);
    assert!(
        !text.contains("heap_used") && !text.contains("array_buffers"),
        "{text}"
    );
    check_snapshot("text-non-node.txt", &text);
    let html = render_html(&m);
    assert!(!html.contains("V8 heap used"));
}

#[test]
fn snapshot_top() {
    let m = common::model();
    check_snapshot("top-live.txt", &top_text(&m, Weight::LiveBytes, 12));
    check_snapshot("top-alloc.txt", &top_text(&m, Weight::AllocBytes, 8));
}

#[test]
fn snapshot_folded() {
    let m = common::model();
    check_snapshot("live.folded", &folded(&m, Weight::LiveBytes));
    check_snapshot("leaked.folded", &folded(&m, Weight::LeakedBytes));
}

#[test]
fn outputs_are_deterministic() {
    let m = common::model();
    assert_eq!(render_html(&m), render_html(&m));
    assert_eq!(pprof(&m), pprof(&m));
    assert_eq!(
        offheap_report::flamegraph_svg(&m, Weight::LiveBytes),
        offheap_report::flamegraph_svg(&m, Weight::LiveBytes)
    );
}

// ------------------------------------------------------------------ chromium

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(c).exists() {
            return Some(PathBuf::from(c));
        }
    }
    None
}

/// Loads `page` in headless Chromium; returns (DOM after load, console messages).
/// Console messages come from `--enable-logging=stderr`, one `CONSOLE` log line
/// each; the report logs nothing, so any message is a failure (uncaught
/// exceptions are logged as `"Uncaught ..."`).
fn load_in_chromium(chrome: &Path, page: &Path, extra: &[String]) -> (String, Vec<String>) {
    let profile = tempdir("chromium-profile");
    let mut cmd = Command::new(chrome);
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
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    let (_ok, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let _ = std::fs::remove_dir_all(&profile);
    let console = err
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    (out, console)
}

#[test]
fn report_html_opens_in_chromium_without_errors() {
    let Some(chrome) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed; report.html was not checked in a browser");
        return;
    };
    let mut m = common::model();
    // Heap findings shaped like offheap-node's (trimmed from a real run),
    // with the hostile name in them.
    let mut heap: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/heap.json")).unwrap();
    heap["growing"][1]["name"] = serde_json::Value::String(common::EVIL.into());
    m.heap = Some(heap);
    let dir = artifacts();
    let page = dir.join("report.html");
    let html = render_html(&m);
    std::fs::write(&page, &html).unwrap();
    std::fs::write(
        dir.join("flamegraph.svg"),
        offheap_report::flamegraph_svg(&m, Weight::LiveBytes),
    )
    .unwrap();

    // The detector works: an injected error and a console.error are caught,
    // and a page whose script dies early is not marked ready.
    let bad = dir.join("report-with-error.html");
    std::fs::write(
        &bad,
        html.replace(
            "</body>",
            "<script>console.error('injected'); noSuchFunction();</script></body>",
        ),
    )
    .unwrap();
    let (dom, console) = load_in_chromium(&chrome, &bad, &["--dump-dom".into()]);
    assert!(
        console
            .iter()
            .any(|l| l.contains("Uncaught ReferenceError")),
        "detector missed the injected exception: {console:?}"
    );
    assert!(
        console.iter().any(|l| l.contains("injected")),
        "detector missed console.error: {console:?}"
    );
    assert!(dom.contains("data-ready=\"1\""));
    let broken = dir.join("report-broken-data.html");
    std::fs::write(
        &broken,
        html.replace("id=\"offheap-data\">{", "id=\"offheap-data\">{oops"),
    )
    .unwrap();
    let (dom, console) = load_in_chromium(&chrome, &broken, &["--dump-dom".into()]);
    assert!(
        !console.is_empty() && !dom.contains("data-ready=\"1\""),
        "detector missed a broken script: {console:?}"
    );

    // The real report: no console output at all, and the script ran to the end.
    let (dom, console) = load_in_chromium(&chrome, &page, &["--dump-dom".into()]);
    assert!(
        console.is_empty(),
        "console messages from report.html: {console:#?}"
    );
    assert!(
        dom.contains("data-ready=\"1\""),
        "the report's script did not finish"
    );
    assert!(dom.contains("class=\"n"), "the flame graph was not drawn");
    assert!(!dom.contains("<script>alert"), "hostile name became markup");

    // The flame graph SVG alone, too.
    let (_dom, console) =
        load_in_chromium(&chrome, &dir.join("flamegraph.svg"), &["--dump-dom".into()]);
    assert!(
        console.is_empty(),
        "console messages from flamegraph.svg: {console:#?}"
    );

    // An empty Model (a recording with nothing in it) renders without errors too.
    let empty = dir.join("report-empty.html");
    std::fs::write(&empty, render_html(&offheap_analysis::Model::default())).unwrap();
    let (dom, console) = load_in_chromium(&chrome, &empty, &["--dump-dom".into()]);
    assert!(
        console.is_empty(),
        "console messages from an empty report: {console:#?}"
    );
    assert!(
        dom.contains("data-ready=\"1\""),
        "the empty report's script did not finish"
    );

    // The interactive parts work: zoom, tooltip, search, tabs, chart read-out.
    let driven = dir.join("report-selftest.html");
    std::fs::write(
        &driven,
        html.replace(
            "</body>",
            &format!("<script>{HTML_SELFTEST}</script></body>"),
        ),
    )
    .unwrap();
    let (dom, console) = load_in_chromium(
        &chrome,
        &driven,
        &["--dump-dom".into(), "--window-size=1400,2400".into()],
    );
    assert!(
        console.is_empty(),
        "console messages while driving report.html: {console:#?}"
    );
    assert!(
        dom.contains("data-selftest=\"ok\""),
        "interactive check failed: {}",
        selftest_result(&dom)
    );
    let driven = dir.join("flamegraph-selftest.svg");
    let svg = offheap_report::flamegraph_svg(&m, Weight::LiveBytes);
    std::fs::write(
        &driven,
        svg.replace(
            "</svg>",
            &format!("<script><![CDATA[{SVG_SELFTEST}]]></script></svg>"),
        ),
    )
    .unwrap();
    let (dom, console) = load_in_chromium(&chrome, &driven, &["--dump-dom".into()]);
    assert!(
        console.is_empty(),
        "console messages while driving flamegraph.svg: {console:#?}"
    );
    assert!(
        dom.contains("data-selftest=\"ok\""),
        "SVG interactive check failed: {}",
        selftest_result(&dom)
    );

    // Screenshot artefact.
    let shot = dir.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let (_, console) = load_in_chromium(
        &chrome,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,2400".into(),
            "--hide-scrollbars".into(),
        ],
    );
    assert!(console.is_empty(), "{console:#?}");
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 50_000, "screenshot {} is {len} bytes", shot.display());
    let shot = dir.join("flamegraph.png");
    load_in_chromium(
        &chrome,
        &dir.join("flamegraph.svg"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1220,560".into(),
            "--hide-scrollbars".into(),
        ],
    );
    eprintln!("artefacts in {}", dir.display());
}

fn selftest_result(dom: &str) -> &str {
    match dom.find("data-selftest=") {
        Some(i) => &dom[i..(i + 300).min(dom.len())],
        None => "no data-selftest attribute (the check did not run)",
    }
}

/// Drives report.html like a user and records what went wrong in
/// `data-selftest` on the root element ("ok" when nothing did).
const HTML_SELFTEST: &str = r#"(function () {
  var out = [];
  function fail(m) { out.push(m); }
  function nodes() { return Array.prototype.slice.call(document.querySelectorAll('#fgraph .n')); }
  function starts(e, t) { return e.textContent.indexOf(t) === 0; }
  try {
    if (!document.documentElement.getAttribute('data-ready')) fail('report script not ready');
    var leak = nodes().filter(function (e) { return starts(e, 'leakMore'); })[0];
    if (!leak) fail('no leakMore frame in the leaked-bytes flame graph');
    else {
      leak.dispatchEvent(new MouseEvent('click', { bubbles: true }));
      var info = document.getElementById('finfo').textContent;
      if (info.indexOf('zoomed into leakMore') < 0) fail('zoom info: ' + info);
      if (nodes().some(function (e) { return starts(e, 'deflateInit2_'); })) fail('zoom kept a sibling branch');
      if (!nodes().some(function (e) { return starts(e, 'leak_bytes'); })) fail('zoom lost the callee');
    }
    var n = nodes()[3];
    n.dispatchEvent(new MouseEvent('mousemove', { bubbles: true, clientX: 100, clientY: 100 }));
    var tip = document.getElementById('ftip');
    if (tip.hidden || tip.textContent.length < 5) fail('no tooltip');
    document.getElementById('freset').click();
    if (!nodes().some(function (e) { return starts(e, 'deflateInit2_'); })) fail('reset did not unzoom');
    var s = document.getElementById('fsearch');
    s.value = 'deflate';
    s.dispatchEvent(new Event('input'));
    if (document.querySelectorAll('#fgraph .n.hit').length < 1) fail('search found nothing');
    if (document.getElementById('finfo').textContent.indexOf('Matched') < 0) fail('no match summary');
    s.value = '';
    s.dispatchEvent(new Event('input'));
    document.querySelector('.tabs button[data-w="alloc"]').click();
    if (!nodes().some(function (e) { return starts(e, 'operator new'); })) fail('allocated-bytes tab lacks operator new');
    document.querySelector('.tabs button[data-w="live"]').click();
    if (document.getElementById('finfo').textContent.indexOf('live bytes') < 0) fail('live tab info');
    var hit = document.querySelector('figure.chart rect.hit');
    var r = hit.getBoundingClientRect();
    hit.dispatchEvent(new MouseEvent('mousemove', { clientX: r.left + r.width / 2, clientY: r.top + 5 }));
    var ro = document.querySelector('figure.chart .readout');
    if (ro.style.display !== 'block' || ro.textContent.indexOf('MiB') < 0) fail('no chart read-out: ' + ro.textContent);
  } catch (e) { fail('exception: ' + e); }
  document.documentElement.setAttribute('data-selftest', out.length ? out.join(' | ') : 'ok');
})();"#;

/// Drives flamegraph.svg: a click zooms (siblings hidden, the frame full
/// width), "Reset zoom" restores.
const SVG_SELFTEST: &str = r#"(function () {
  var out = [];
  function fail(m) { out.push(m); }
  try {
    var gs = Array.prototype.slice.call(document.querySelectorAll('.f'));
    var leak = gs.filter(function (g) { return g.getAttribute('data-n').indexOf('leakMore') === 0; })[0];
    var zlib = gs.filter(function (g) { return g.getAttribute('data-n') === 'deflateInit2_'; })[0];
    if (!leak || !zlib) fail('frames missing');
    else {
      leak.dispatchEvent(new MouseEvent('click', { bubbles: true }));
      if (!zlib.classList.contains('hide')) fail('sibling branch not hidden');
      var w = parseFloat(leak.querySelector('rect').getAttribute('width'));
      if (w < 1100) fail('zoomed frame not full width: ' + w);
      document.getElementById('reset').dispatchEvent(new MouseEvent('click', { bubbles: true }));
      if (zlib.classList.contains('hide')) fail('reset did not restore');
    }
  } catch (e) { fail('exception: ' + e); }
  document.documentElement.setAttribute('data-selftest', out.length ? out.join(' | ') : 'ok');
})();"#;

/// An owner finding (issue 12.3) with hostile names from the heap: shown in
/// the text under its suspect and in its own section, and in report.html
/// linked both ways, escaped everywhere.
#[test]
fn owner_findings_are_shown_linked_and_escaped() {
    let mut m = common::model();
    let rank = m.suspects[0].rank;
    let evil_term = "cache\x1b]0;T\x07\nx";
    m.owners.push(offheap_analysis::OwnerFinding {
        class: "zlib".into(),
        held_by: common::EVIL.into(),
        holder: "Map".into(),
        holder_allocated_by: None,
        wrapper: "DeflateRaw".into(),
        native: "Node / ZlibStream".into(),
        count: 410,
        count_before: Some(10),
        native_bytes: 110 << 20,
        bytes_per_s: 1e6,
        reported_bytes: 0,
        modules: Vec::new(),
        suspects: vec![rank],
        js: None,
        allocated_by: Some(evil_term.into()),
        path_text: format!("(root) --{}--> Map", common::EVIL),
        path: Vec::new(),
        text: format!(
            "`{}` (a Map) holds 410 DeflateRaw streams whose zlib state is 110.0 MiB live {evil_term}",
            common::EVIL
        ),
    });
    let html = render_html(&m);
    assert_eq!(html.matches("<script").count(), 2, "extra <script in html");
    assert!(!html.contains("alert(1)</"), "raw hostile markup in html");
    assert!(!html.contains("<!--"), "comment opener in html");
    assert!(html.contains("id=\"owner-0\""), "no owners section");
    assert!(
        html.contains("href=\"#owner-0\""),
        "suspect not linked to its owner"
    );
    assert!(
        html.contains(&format!("href=\"#suspect-{rank}\"")),
        "owner not linked to its suspect"
    );
    assert!(html.contains("<code>&lt;/script&gt;&lt;script&gt;alert(1)"));
    let text = render_text(&m);
    assert!(!text.contains(['\x1b', '\x07']), "{text:?}");
    assert!(text.contains("JS owners of native memory"), "{text}");
    assert!(text.contains("held in JS: `</script>"), "{text}");
    assert!(text.contains("cache\\e]0;T\\x07\\nx"), "{text}");
    // One line per fact: the hostile newline does not break lines.
    let plain = render_text(&common::model()).lines().count();
    assert_eq!(text.lines().count(), plain + 1 + 2 + 4, "{text}");
}

/// A recording of three processes: the target idle, a child that leaks (the
/// focus), and a short-lived child with a hostile command line. The text
/// names the leaking child first and lists every process; the HTML has a
/// section per process, with the command escaped.
fn three_processes() -> offheap_analysis::Model {
    use offheap_analysis::{Kind, ProcessModel};
    let mut m = common::model();
    m.meta.command = vec!["./server".into()];
    let leaking = ProcessModel {
        pid: 41_218,
        ppid: Some(41_217),
        command: "./server --worker".into(),
        root: false,
        native: true,
        start: 0.4,
        end: 60.0,
        timeline: m.timeline.clone(),
        verdict: m.verdict.clone().unwrap(),
        growth: m.growth.clone(),
        peak: m.peak.clone(),
        suspects: m.suspects.clone(),
        ..Default::default()
    };
    let mut idle_verdict = m.verdict.clone().unwrap();
    idle_verdict.kinds = vec![Kind::None];
    idle_verdict.primary = Kind::None;
    idle_verdict.explanation = "No leak: memory plateaus after warm-up.".into();
    idle_verdict.next_steps.clear();
    let root = ProcessModel {
        pid: 41_217,
        ppid: Some(100),
        command: "./server".into(),
        root: true,
        native: true,
        start: 0.0,
        end: 60.0,
        timeline: m.timeline.clone(),
        verdict: idle_verdict.clone(),
        ..Default::default()
    };
    let hostile = ProcessModel {
        pid: 41_300,
        ppid: Some(41_217),
        command: "sh -c \u{1b}]0;TITLE\u{7}<script>alert(1)</script>".into(),
        start: 2.0,
        end: 3.5,
        exited_early: true,
        verdict: idle_verdict,
        ..Default::default()
    };
    m.headline = format!("native leak in {}: +3.00 MiB/s", leaking.label());
    m.focus = leaking.pid;
    m.processes = vec![root, leaking, hostile];
    m
}

#[test]
fn snapshot_text_processes() {
    let m = three_processes();
    let text = render_text(&m);
    assert!(!text.contains('\u{1b}'), "raw escape in the text: {text}");
    check_snapshot("text-processes.txt", &text);
}

#[test]
fn every_process_has_an_html_section() {
    let m = three_processes();
    let html = render_html(&m);
    assert!(html.contains("id=\"process-41217\""), "target section");
    assert!(html.contains("id=\"process-41218\""), "focus row");
    assert!(html.contains("id=\"process-41300\""), "short child section");
    assert!(html.contains("exited early"));
    assert!(!html.contains("<script>alert(1)"), "raw hostile markup");
    assert!(html.contains("&lt;script&gt;alert(1)"));
    assert_eq!(html.matches("<details class=\"process\"").count(), 2);
}

// ------------------------------------------------------------------ metrics

/// The analysed `/metrics` series of `--serve`: the top suspects labelled,
/// a hostile function name escaped so that the line still parses, and
/// promtool's lint clean (skipped with a note without promtool).
#[test]
fn metrics_series_of_the_model() {
    let mut m = common::model();
    m.suspects[0].function = "a\"quoted\\name\nnext".into();
    let text = offheap_report::metrics::prometheus(&m);
    assert!(
        text.contains(r#"suspect="a\"quoted\\name\nnext""#),
        "{text}"
    );
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("offheap_suspect_live_bytes{"))
        .collect();
    assert_eq!(series.len(), m.suspects.len().min(10), "{text}");
    assert!(series[0].contains("rank=\"1\""), "{text}");
    assert!(text.contains("offheap_verdict{"), "{text}");
    assert!(text.contains("series=\"rss\""), "{text}");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
        assert!(l.starts_with("offheap_") && l.contains("pid=\""), "{l}");
    }
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
