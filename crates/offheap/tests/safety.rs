//! What offheap does with hostile or odd surroundings (issue 18): output
//! directories other users could tamper with, symlinks planted where offheap
//! writes, terminal escapes in recorded strings, recording files that are not
//! regular files, commands a shell would refuse, and out-of-range options.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn is_root() -> bool {
    rustix_free_euid() == 0
}

fn rustix_free_euid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The error of a failed offheap: one line, `offheap: error: ...`, no panic.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("offheap: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn chown_nobody(p: &Path) {
    let st = std::process::Command::new("chown")
        .arg("nobody")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

// ---- 1. the output directory ----------------------------------------------

#[test]
fn an_empty_world_writable_out_dir_is_taken_over_as_0700() {
    let sb = Sandbox::new();
    let dir = sb.path("open");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let out = sb.run("open", &[], &["sleep", "0.6"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&dir), 0o700);
    assert!(dir.join("summary.json").exists());
    // The agent files are read-only and were created, not reused.
    assert_eq!(mode(&dir.join("liboffheap_agent.so")), 0o500);
}

#[test]
fn new_out_dirs_are_0700_whatever_the_umask() {
    let sb = Sandbox::new();
    // A umask of 0077 narrows nothing and 0 widens nothing.
    for (umask, rec) in [("000", "a/b/rec0"), ("077", "c/rec1")] {
        let out = std::process::Command::new("sh")
            .current_dir(sb.dir.path())
            .arg("-c")
            .arg(format!(
                "umask {umask}; exec \"$0\" run --quiet --out {rec} -- sleep 0.6"
            ))
            .arg(env!("CARGO_BIN_EXE_offheap"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut p = sb.path(rec);
        while p != sb.dir.path() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
            p.pop();
        }
    }
}

#[test]
fn an_out_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a directory to nobody");
        return;
    }
    let sb = Sandbox::new();
    let dir = sb.path("theirs");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    chown_nobody(&dir);
    let out = sb.run("theirs", &[], &["true"]);
    let e = one_line_error(&out);
    assert!(e.contains("belongs to another user"), "{e}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(mode(&dir), 0o777, "a refused directory is left as it was");
}

#[test]
fn an_out_dir_below_a_directory_others_can_rename_is_refused() {
    let sb = Sandbox::new();
    // World-writable without the sticky bit: anyone can rename entries away.
    let ww = sb.path("ww");
    fs::create_dir(&ww).unwrap();
    fs::set_permissions(&ww, fs::Permissions::from_mode(0o777)).unwrap();
    let e = one_line_error(&sb.run("ww/rec", &[], &["true"]));
    assert!(e.contains("writable by every user"), "{e}");
    assert!(!ww.join("rec").exists());
    // An existing empty directory there is refused too.
    fs::create_dir(ww.join("mine")).unwrap();
    let e = one_line_error(&sb.run("ww/mine", &[], &["true"]));
    assert!(e.contains("writable by every user"), "{e}");
    // Sticky like /tmp: fine.
    fs::set_permissions(&ww, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = sb.run("ww/rec", &[], &["sleep", "0.6"]);
    assert!(out.status.success(), "{out:?}");
    if is_root() {
        // Owned by another (non-root) user: they could rename it away.
        let theirs = sb.path("theirs");
        fs::create_dir(&theirs).unwrap();
        chown_nobody(&theirs);
        let e = one_line_error(&sb.run("theirs/rec", &[], &["true"]));
        assert!(e.contains("belongs to another user"), "{e}");
        assert!(!theirs.join("rec").exists());
    }
}

#[test]
fn a_symlink_planted_at_the_agent_name_is_never_followed() {
    let sb = Sandbox::new();
    let victim = sb.write("victim", "precious");
    let dir = sb.path("rec");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("liboffheap_agent.so")).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("offheap-agent.js")).unwrap();
    let e = one_line_error(&sb.run("rec", &[], &["node", "-e", "0"]));
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        fs::symlink_metadata(dir.join("liboffheap_agent.so"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // --out itself a symlink to an empty directory: refused, not followed.
    let real = sb.path("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, sb.path("link")).unwrap();
    let e = one_line_error(&sb.run("link", &[], &["true"]));
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
}

// ---- 2. temporary files ---------------------------------------------------

#[test]
fn report_never_writes_through_symlinks_planted_at_its_old_temporary_names() {
    let sb = Sandbox::new();
    let out = sb.run("rec", &[], &["sleep", "1"]);
    assert!(out.status.success(), "{out:?}");
    let victim = sb.write("victim", "precious");
    let rec = sb.path("rec");
    let names = [
        ".summary.json.tmp",
        ".report.html.tmp",
        ".flamegraph.svg.tmp",
        ".stacks.folded.tmp",
        ".profile.pb.gz.tmp",
        ".metrics.prom.tmp",
        "end.tmp",
        "recording.tmp",
        "summary.tmp",
    ];
    for n in names {
        std::os::unix::fs::symlink(&victim, rec.join(n)).unwrap();
    }
    let before = fs::metadata(rec.join("report.html"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let rep = offheap().arg("report").arg(&rec).output().unwrap();
    assert!(rep.status.success(), "{rep:?}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    for n in names {
        assert!(
            fs::symlink_metadata(rec.join(n))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
    for f in [
        "summary.json",
        "report.html",
        "flamegraph.svg",
        "stacks.folded",
        "profile.pb.gz",
    ] {
        let md = fs::symlink_metadata(rec.join(f)).unwrap();
        assert!(md.file_type().is_file(), "{f}");
        assert!(md.len() > 0 || f == "stacks.folded", "{f}");
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert!(
        fs::metadata(rec.join("report.html"))
            .unwrap()
            .modified()
            .unwrap()
            > before
    );
    // No temporary file is left behind.
    let left: Vec<String> = fs::read_dir(&rec)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") && !names.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---- 3. terminal escapes --------------------------------------------------

/// Fails if `bytes` hold anything a terminal would act on: ESC, BEL, or
/// the one-character CSI (U+009B, as UTF-8 or as a raw byte).
fn assert_no_terminal_controls(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !bytes.contains(&0x1b) && !bytes.contains(&0x07) && !text.contains('\u{9b}'),
        "{what} holds raw terminal controls:\n{text:?}"
    );
}

#[test]
fn escapes_in_the_command_line_never_reach_the_terminal() {
    let sb = Sandbox::new();
    let evil = "\x1b]0;TITLE\x07\x1b[2J";
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--out", "rec", "--", "/bin/sh", "-c", "sleep 0.6"])
        .arg(evil)
        .arg("two\nlines\u{9b}2J")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_no_terminal_controls("stderr of run", &out.stderr);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\\e]0;TITLE\\x07\\e[2J two\\nlines\\u{9b}2J"),
        "{err}"
    );
    let rep = offheap()
        .arg("report")
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    assert!(rep.status.success(), "{rep:?}");
    assert_no_terminal_controls("stdout of report", &rep.stdout);
    assert_no_terminal_controls("stderr of report", &rep.stderr);
    // The same with /bin/true, which may end before the first sample.
    let out = sb.run("rec2", &[], &["/bin/true", evil]);
    assert_no_terminal_controls("stderr of run /bin/true", &out.stderr);
    // An error that quotes a command or a path.
    let out = sb.run("rec3", &[], &[evil]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_no_terminal_controls("error message", &out.stderr);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\\e]0;TITLE"));
}

#[test]
fn a_library_whose_path_holds_escapes_is_shown_escaped() {
    let sb = Sandbox::new();
    let dir = sb.path("lib\x1b[2J\x07dir");
    fs::create_dir(&dir).unwrap();
    let lib_name = "lib\x1b[2J\x07dir/libleak\x1b]0;T\x07\u{9b}2J.so";
    sb.gcc(
        "leak.c",
        "#include <stdlib.h>\n#include <string.h>\n\
         static void *volatile keep[4096]; static int n;\n\
         __attribute__((noinline)) void leak_some(size_t sz) { void *p = malloc(sz); memset(p, 1, sz); keep[n++ % 4096] = p; }\n",
        lib_name,
        &["-shared", "-fPIC"],
    );
    let prog = sb.gcc(
        "main.c",
        "#include <dlfcn.h>\n#include <stdio.h>\n#include <unistd.h>\n\
         int main(int argc, char **argv) {\n\
           void *h = dlopen(argv[1], RTLD_NOW); if (!h) { fprintf(stderr, \"dlopen failed\\n\"); return 3; }\n\
           void (*f)(size_t) = (void (*)(size_t))dlsym(h, \"leak_some\");\n\
           for (int i = 0; i < 150; i++) { f(64 * 1024); usleep(10000); }\n\
           return 0; }\n",
        "main",
        &["-ldl"],
    );
    let lib = sb.path(lib_name);
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--out", "rec", "--sample-interval", "16KiB", "--"])
        .arg(&prog)
        .arg(&lib)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_no_terminal_controls("stderr of run", &out.stderr);
    let rep = offheap()
        .arg("report")
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    assert!(rep.status.success(), "{rep:?}");
    assert_no_terminal_controls("stdout of report", &rep.stdout);
    assert_no_terminal_controls("stderr of report", &rep.stderr);
    let text = String::from_utf8_lossy(&rep.stdout);
    // The library's frames are there, named by its escaped file name.
    assert!(
        text.contains("leak_some [libleak\\e]0;T\\x07\\u{9b}2J.so]"),
        "{text}"
    );
}

// ---- 4. recording files that are not what they seem ----------------------

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `offheap report DIR`, killed (and the test failed) after 20 s.
fn report_within_20s(dir: &Path) -> Output {
    output_within(
        offheap().arg("report").arg(dir),
        std::time::Duration::from_secs(20),
    )
}

fn native_stream(dir: &Path) -> std::path::PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("native-") && n.ends_with(".bin")
        })
        .expect("no native stream")
}

#[test]
fn report_finishes_when_a_module_the_recording_names_is_now_a_fifo() {
    let sb = Sandbox::new();
    let lib = sb.gcc(
        "leak.c",
        "#include <stdlib.h>\n#include <string.h>\n\
         static void *volatile keep[4096]; static int n;\n\
         __attribute__((noinline)) void leak_some(size_t sz) { void *p = malloc(sz); memset(p, 1, sz); keep[n++ % 4096] = p; }\n",
        "libleak.so",
        &["-shared", "-fPIC"],
    );
    let prog = sb.gcc(
        "main.c",
        "#include <dlfcn.h>\n#include <unistd.h>\n\
         int main(int argc, char **argv) {\n\
           void *h = dlopen(argv[1], RTLD_NOW); if (!h) return 3;\n\
           void (*f)(size_t) = (void (*)(size_t))dlsym(h, \"leak_some\");\n\
           for (int i = 0; i < 100; i++) { f(64 * 1024); usleep(10000); }\n\
           return 0; }\n",
        "main",
        &["-ldl"],
    );
    let out = sb.run(
        "rec",
        &["--sample-interval", "16KiB"],
        &[prog.to_str().unwrap(), lib.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    fs::remove_file(&lib).unwrap();
    mkfifo(&lib);
    let rep = report_within_20s(&sb.path("rec"));
    assert!(rep.status.success(), "{rep:?}");
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(
        text.contains("libleak.so: cannot read the module (not a regular file: a FIFO)"),
        "{text}"
    );
    assert!(text.contains("libleak.so+0x"), "{text}");
}

#[test]
fn report_finishes_when_a_recording_file_is_a_symlink_to_dev_zero() {
    let sb = Sandbox::new();
    let out = sb.run("rec", &[], &["sleep", "1"]);
    assert!(out.status.success(), "{out:?}");
    let rec = sb.path("rec");
    let native = native_stream(&rec);
    let name = native.file_name().unwrap().to_string_lossy().into_owned();
    fs::remove_file(&native).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &native).unwrap();
    fs::remove_file(rec.join("end.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", rec.join("end.json")).unwrap();
    let rep = report_within_20s(&rec);
    assert!(rep.status.success(), "{rep:?}");
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(
        text.contains(&format!(
            "{name}: unreadable (not a regular file: a symbolic link (not followed)); skipped"
        )),
        "{text}"
    );
    assert!(
        text.contains("end.json: unreadable (not a regular file"),
        "{text}"
    );
    // recording.json itself: one clear error, promptly.
    fs::remove_file(rec.join("recording.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", rec.join("recording.json")).unwrap();
    let rep = report_within_20s(&rec);
    let e = one_line_error(&rep);
    assert!(e.contains("recording.json: not a regular file"), "{e}");
}

#[test]
fn report_finishes_when_proc_jsonl_is_a_fifo() {
    let sb = Sandbox::new();
    let out = sb.run("rec", &[], &["sleep", "1"]);
    assert!(out.status.success(), "{out:?}");
    let rec = sb.path("rec");
    fs::remove_file(rec.join("proc.jsonl")).unwrap();
    mkfifo(&rec.join("proc.jsonl"));
    let rep = report_within_20s(&rec);
    assert!(rep.status.success(), "{rep:?}");
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(
        text.contains("proc.jsonl: unreadable (not a regular file: a FIFO); skipped"),
        "{text}"
    );
}

// ---- 5. starting the command like a shell ---------------------------------

fn executable(sb: &Sandbox, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let p = sb.write(name, text);
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_script_without_a_shebang_runs_through_sh() {
    let sb = Sandbox::new();
    executable(
        &sb,
        "script",
        "echo \"from sh: $1\"\nsleep 0.6\nexit 4\n",
        0o755,
    );
    let out = sb.run("rec", &[], &["./script", "an arg"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from sh: an arg\n");
    assert!(sb.path("rec/summary.json").exists());
}

#[test]
fn a_command_found_but_not_executable_exits_126() {
    let sb = Sandbox::new();
    executable(&sb, "plain", "echo hi\n", 0o644);
    fs::create_dir(sb.path("adir")).unwrap();
    let out = sb.run("rec", &[], &["./plain"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(one_line_error(&out).contains("./plain: permission denied"));
    let out = sb.run("rec", &[], &["./adir"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(one_line_error(&out).contains("./adir: is a directory"));
    // Found through PATH, but not executable: permission denied, not "not found".
    let out = offheap()
        .current_dir(sb.dir.path())
        .env("PATH", sb.dir.path())
        .args(["run", "--quiet", "--out", "rec", "--", "plain"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(one_line_error(&out).contains("plain: permission denied"));
    assert!(!sb.path("rec").exists());
}

#[test]
fn a_missing_command_exits_127() {
    let sb = Sandbox::new();
    let out = sb.run("rec", &[], &["./nowhere"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(one_line_error(&out).contains("./nowhere: no such file or directory"));
    let out = sb.run("rec", &[], &["no-such-command-xyz"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(one_line_error(&out).contains("command not found: no-such-command-xyz"));
    assert!(!sb.path("rec").exists());
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let sb = Sandbox::new();
    // Executable, but its interpreter does not exist: found, cannot start.
    executable(&sb, "bad", "#!/nonexistent/interpreter\n", 0o755);
    let before = entries(sb.dir.path());
    // Created directories (and their parents) are removed again...
    let out = sb.run("new/a/rec", &[], &["./bad"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(one_line_error(&out).contains("cannot start ./bad"));
    // ... the default one too ...
    let out = offheap()
        .current_dir(sb.dir.path())
        .args(["run", "--quiet", "--", "./bad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert_eq!(entries(sb.dir.path()), before);
    // ... and an adopted empty directory is kept, empty, as it was.
    let mine = sb.path("mine");
    fs::create_dir(&mine).unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o755)).unwrap();
    let out = sb.run("mine", &[], &["./bad"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(entries(&mine).is_empty(), "{:?}", entries(&mine));
    assert_eq!(mode(&mine), 0o755);
    // The same for a node target (the JS agent is written too).
    executable(&sb, "badnode", "#!/nonexistent/node\n", 0o755);
    let out = sb.run("mine", &[], &["./badnode"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(entries(&mine).is_empty(), "{:?}", entries(&mine));
}

// ---- 6. out-of-range options ----------------------------------------------

#[test]
fn out_of_range_options_are_refused_with_a_message() {
    let sb = Sandbox::new();
    for (opt, value, says) in [
        ("--sample-interval", "99999999999GiB", "at most 1GiB"),
        ("--interval", "999999999h", "at most 1h"),
        ("--duration", "0", "longer than 0"),
        (
            "--duration",
            "99999999999999999999h",
            "too long to be a duration",
        ),
    ] {
        let out = offheap()
            .current_dir(sb.dir.path())
            .args(["run", "--quiet", "--out", "rec", opt, value, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{opt} {value}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(opt) && err.contains(says),
            "{opt} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!sb.path("rec").exists());
    }
}

// ---- 7. the environment of the target's descendants ------------------------

/// The environment `env` printed by a grandchild of `offheap run` (node
/// starts `env` through child_process), and node's own NODE_OPTIONS.
fn descendant_env(sb: &Sandbox, opts: &[&str]) -> (String, Output) {
    let script = sb.write(
        "spawn-env.js",
        "const cp = require('child_process');\n\
         const env = cp.execFileSync('env', { encoding: 'utf8' });\n\
         require('fs').writeFileSync('env.txt', env + 'NODE_SAYS_NODE_OPTIONS=' + process.env.NODE_OPTIONS + '\\n');\n",
    );
    let out = offheap()
        .current_dir(sb.dir.path())
        .env("NODE_OPTIONS", "--max-old-space-size=300")
        .args(["run", "--quiet", "--out", "rec"])
        .args(opts)
        .arg("--")
        .arg("node")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (fs::read_to_string(sb.path("env.txt")).unwrap(), out)
}

/// Issue 18.8: OFFHEAP_* (the writable recording path among them) reached
/// every descendant of the target.
#[test]
fn descendants_get_no_offheap_variables_and_no_agent_unless_followed() {
    let sb = Sandbox::new();
    let (env, out) = descendant_env(&sb, &[]);
    for line in env.lines() {
        assert!(!line.starts_with("OFFHEAP_"), "{line}\n{env}\n{out:?}");
        if let Some(v) = line.strip_prefix("LD_PRELOAD=") {
            assert!(!v.contains("liboffheap_agent"), "{line}");
        }
        if let Some(v) = line.strip_prefix("NODE_OPTIONS=") {
            assert_eq!(
                v, "--max-old-space-size=300",
                "the user's NODE_OPTIONS, untouched"
            );
        }
    }
    assert!(
        env.contains("NODE_SAYS_NODE_OPTIONS=--max-old-space-size=300\n"),
        "{env}"
    );
    // The recording still has the target's streams.
    let names: Vec<String> = fs::read_dir(sb.path("rec"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("native-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("node-")), "{names:?}");

    // --follow-exec: asked for, so the descendants keep the agent.
    let sb = Sandbox::new();
    let (env, out) = descendant_env(&sb, &["--follow-exec"]);
    assert!(
        env.lines().any(|l| l.starts_with("OFFHEAP_DIR=")),
        "{env}\n{out:?}"
    );
    assert!(
        env.lines()
            .any(|l| l.starts_with("LD_PRELOAD=") && l.contains("liboffheap_agent")),
        "{env}"
    );
}
