//! `offheap run`: launch the target with the agents, collect until it ends,
//! then hand the recording to the analysis and the reporters.

use crate::cli::{RecordOpts, RunArgs};
use crate::collect::{Collector, now_ms};
use crate::elf::{self, Linkage};
use crate::signals::Signals;
use crate::status::StatusLine;
use crate::{outdir, reporting, user_error};
use anyhow::{Context, Result};
use offheap_format::{End, FORMAT_VERSION, Meta, layout};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The native agent, built from crates/offheap-agent by build.rs.
static NATIVE_AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/liboffheap_agent.so"));

/// Node flags offheap adds through NODE_OPTIONS (all allowed there): a perf
/// map of JS functions, with interpreted functions given their own code
/// address. (`--perf-basic-prof` would also make node write isolate-*.log
/// files into the target's working directory; builtins resolve from node's
/// own symbols anyway.)
pub const NODE_FLAGS: [&str; 2] = [
    "--perf-basic-prof-only-functions",
    "--interpreted-frames-native-stack",
];

/// Why a command cannot be run, as a shell reports it.
#[derive(Debug, PartialEq, Eq)]
enum Unrunnable {
    /// Exit 127.
    NotFound,
    /// Exit 126: found, but not something we may execute.
    NotExecutable(PathBuf, &'static str),
}

/// True if `p` is a file the effective user may execute.
fn may_execute(p: &Path) -> bool {
    rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

/// Finds CMD the way execvp and a shell do: a name with a `/` is taken as
/// it is; otherwise the first executable regular file named CMD in `$PATH`
/// wins, and a non-executable one found on the way makes it "permission
/// denied" rather than "not found".
fn locate(cmd: &str) -> Result<PathBuf, Unrunnable> {
    if cmd.is_empty() {
        return Err(Unrunnable::NotFound);
    }
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Unrunnable::NotFound),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                Err(Unrunnable::NotExecutable(p, "not a directory"))
            }
            Err(_) => Err(Unrunnable::NotExecutable(p, "permission denied")),
            Ok(m) if m.is_dir() => Err(Unrunnable::NotExecutable(p, "is a directory")),
            Ok(m) if m.is_file() && may_execute(&p) => Ok(p),
            Ok(_) => Err(Unrunnable::NotExecutable(p, "permission denied")),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = None;
    for d in std::env::split_paths(&path) {
        let p = d.join(cmd);
        match fs::metadata(&p) {
            Ok(m) if m.is_file() && may_execute(&p) => return Ok(p),
            Ok(m) if !m.is_dir() => {
                denied.get_or_insert(p);
            }
            _ => {}
        }
    }
    Err(match denied {
        Some(p) => Unrunnable::NotExecutable(p, "permission denied"),
        None => Unrunnable::NotFound,
    })
}

/// Finds CMD the way execvp would (None if it cannot be run).
fn resolve_command(cmd: &str) -> Option<PathBuf> {
    locate(cmd).ok()
}

/// The interpreter named by a `#!` line, resolved (`/usr/bin/env node` -> node's path).
fn shebang_interpreter(path: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let mut file = offheap_format::io::open_module_file(path).ok()?;
    let n = std::io::Read::read(&mut file, &mut head).ok()?;
    let text = std::str::from_utf8(head.get(..n)?.strip_prefix(b"#!")?).ok()?;
    let line = text.lines().next()?;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if first.ends_with("/env") {
        let prog = words.find(|w| !w.starts_with('-'))?;
        resolve_command(prog)
    } else {
        Some(PathBuf::from(first))
    }
}

/// Node is recognised by its executable's name (node, nodejs, node20...).
fn is_node_executable(path: &Path) -> bool {
    let names = [Some(path.to_path_buf()), fs::canonicalize(path).ok()];
    names.iter().flatten().any(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            let rest = n.strip_prefix("nodejs").or_else(|| n.strip_prefix("node"));
            rest.is_some_and(|r| r.chars().all(|c| c.is_ascii_digit() || c == '.'))
        })
    })
}

/// What the target is, as far as offheap cares.
struct Target {
    exe: PathBuf,
    /// The ELF that will actually run (the interpreter for scripts).
    elf: PathBuf,
    node: bool,
}

fn inspect_target(cmd: &str) -> Result<Target> {
    let exe = locate(cmd).map_err(|why| match why {
        Unrunnable::NotFound if cmd.contains('/') => crate::UserError {
            message: format!("{cmd}: no such file or directory"),
            code: 127,
        },
        Unrunnable::NotFound => crate::UserError {
            message: format!("command not found: {cmd}"),
            code: 127,
        },
        Unrunnable::NotExecutable(p, reason) => crate::UserError {
            message: format!("{}: {reason}", p.display()),
            code: 126,
        },
    })?;
    let interp = shebang_interpreter(&exe);
    let elf = interp.clone().unwrap_or_else(|| exe.clone());
    let node = is_node_executable(&exe) || interp.as_deref().is_some_and(is_node_executable);
    Ok(Target { exe, elf, node })
}

fn program_name(cmd: &[String]) -> String {
    let base = |s: &str| {
        Path::new(s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let prog = base(&cmd[0]);
    // `node server.js` reads better as offheap-node-...; keep it short.
    if prog.is_empty() {
        "target".into()
    } else {
        prog
    }
}

/// Writes the agents into the recording, where the target loads them from:
/// new files (never through anything already there), read-only.
fn install_agents(
    out: &mut outdir::OutDir,
    node: bool,
    native: bool,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let js = out.path().join(layout::JS_AGENT);
    if node {
        out.create_file(layout::JS_AGENT, 0o400, offheap_node::JS_AGENT.as_bytes())?;
    }
    let so = if native {
        let path = match std::env::var_os("OFFHEAP_AGENT") {
            // Agent development: a freshly built agent instead of the embedded one.
            Some(p) => PathBuf::from(p),
            None => out.create_file(layout::NATIVE_AGENT, 0o500, NATIVE_AGENT)?,
        };
        Some(path)
    } else {
        None
    };
    Ok((js, so))
}

fn quote_node_option(s: &str) -> String {
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

pub fn run(args: RunArgs) -> Result<u8> {
    if args.command.is_empty() {
        return Err(user_error(
            "no command given; usage: offheap run [OPTIONS] -- CMD [ARGS...]",
        ));
    }
    let target = inspect_target(&args.command[0])?;
    let mut notes = Vec::new();
    let linkage = elf::linkage(&target.elf);
    let native = !args.no_native
        && match linkage {
            Linkage::Glibc => true,
            Linkage::Musl => {
                notes.push(format!(
                    "{} is linked against musl: native allocation profiling needs glibc; recording /proc{} only",
                    target.elf.display(),
                    if target.node { " and Node telemetry" } else { "" }
                ));
                false
            }
            Linkage::Static => {
                notes.push(format!(
                    "{} is statically linked: LD_PRELOAD cannot reach its allocator; recording /proc{} only",
                    target.elf.display(),
                    if target.node { " and Node telemetry" } else { "" }
                ));
                false
            }
            Linkage::NotElf => true,
        };
    let mut out = outdir::create(args.record.out.as_deref(), &program_name(&args.command))?;
    let dir = out.path().to_path_buf();
    // Until the target runs, a failure undoes what offheap put on disk.
    let (js_agent, native_agent) = match install_agents(&mut out, target.node, native) {
        Ok(agents) => agents,
        Err(e) => {
            out.remove_created();
            return Err(e);
        }
    };

    let mut cmd = Command::new(&target.exe);
    cmd.arg0(&args.command[0]).args(&args.command[1..]);
    cmd.env("OFFHEAP_DIR", &dir).env(
        "OFFHEAP_INTERVAL_MS",
        args.record.interval.as_millis().max(10).to_string(),
    );
    if args.follow_exec {
        cmd.env("OFFHEAP_FOLLOW_EXEC", "1");
    }
    let mut node_flags = Vec::new();
    if target.node {
        let orig = std::env::var("NODE_OPTIONS").ok();
        cmd.env(
            "OFFHEAP_HAD_NODE_OPTIONS",
            if orig.is_some() { "1" } else { "0" },
        );
        cmd.env(
            "OFFHEAP_ORIG_NODE_OPTIONS",
            orig.clone().unwrap_or_default(),
        );
        let mut opts = orig.unwrap_or_default();
        let require = format!(
            "--require {}",
            quote_node_option(&js_agent.to_string_lossy())
        );
        for flag in std::iter::once(require.as_str()).chain(NODE_FLAGS) {
            if !opts.is_empty() {
                opts.push(' ');
            }
            opts.push_str(flag);
        }
        node_flags.extend(NODE_FLAGS.iter().map(|s| s.to_string()));
        if args.record.snapshots {
            // SIGUSR1 then opens the inspector on a free port (found through
            // /proc), not on 9229, which another process may hold.
            opts.push_str(" --inspect-port=0");
            node_flags.push("--inspect-port=0".into());
        }
        cmd.env("NODE_OPTIONS", opts);
    }
    if let Some(so) = &native_agent {
        let mut preload = so.to_string_lossy().into_owned();
        if let Ok(prev) = std::env::var("LD_PRELOAD")
            && !prev.is_empty()
        {
            preload = format!("{preload}:{prev}");
        }
        cmd.env("LD_PRELOAD", preload)
            .env("OFFHEAP_SAMPLE_INTERVAL", args.sample_interval.to_string())
            .env("OFFHEAP_MAX_DEPTH", args.max_depth.to_string())
            .env(
                "OFFHEAP_MIN_AGE_MS",
                args.record.min_age.as_millis().to_string(),
            )
            .env(
                "OFFHEAP_FOLLOW_FORK",
                if args.follow_fork { "1" } else { "0" },
            );
        if args.exact {
            cmd.env("OFFHEAP_EXACT", "1");
        }
    }

    let started = Signals::install()
        .context("cannot install signal handlers")
        .and_then(|signals| {
            Ok((
                signals,
                now_ms(),
                spawn(&mut cmd, &target.exe, &args.command)?,
            ))
        });
    let (signals, start_ms, child) = match started {
        Ok(s) => s,
        Err(e) => {
            out.remove_created();
            return Err(e);
        }
    };
    drop(out);
    let pid = child.id();

    let mut settings = BTreeMap::new();
    settings.insert("follow_fork".into(), args.follow_fork.into());
    settings.insert("follow_exec".into(), args.follow_exec.into());
    settings.insert("max_depth".into(), args.max_depth.into());
    settings.insert(
        "min_age_ms".into(),
        (args.record.min_age.as_millis() as u64).into(),
    );
    settings.insert("exact".into(), args.exact.into());
    let meta = Meta {
        format_version: FORMAT_VERSION,
        offheap_version: env!("CARGO_PKG_VERSION").into(),
        mode: "run".into(),
        command: args.command.clone(),
        pid,
        start_ms,
        interval_ms: args.record.interval.as_millis() as u64,
        node: target.node,
        node_flags,
        native: native_agent.is_some(),
        sample_interval: if args.exact { 1 } else { args.sample_interval },
        settings,
    };
    write_json(&dir.join(layout::META), &meta)?;

    let snapshots = HeapSnapshots::new(
        args.record.snapshots && target.node,
        args.record.track_allocations,
        &dir,
    );
    if args.record.snapshots && !target.node {
        notes.push("--snapshots needs a Node target: no heap snapshots taken".into());
    }
    let (outcome, heap, snap_notes) =
        supervise(child, &dir, &args.record, args.grace, &signals, snapshots)?;
    notes.extend(snap_notes);
    if target.node {
        // The map is V8's answer to our flag: take it away with us.
        let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        if dir
            .join(format!(
                "{}{pid}{}",
                layout::PERF_MAP_PREFIX,
                layout::PERF_MAP_SUFFIX
            ))
            .exists()
        {
            let _ = fs::remove_file(map);
        }
    }
    write_json(&dir.join(layout::END), &outcome)?;
    let opts = reporting::AnalyzeOpts {
        min_age_s: args.record.min_age.as_secs_f64(),
        top: 10,
        extra_notes: notes,
    };
    reporting::finish_with_heap(&dir, &opts, args.record.quiet, heap)?;
    Ok(outcome.exit_status.clamp(0, 255) as u8)
}

/// Starts the target as execvp would: a file the kernel refuses as not
/// executable (`ENOEXEC`: a text file without `#!`) is run by `/bin/sh`.
/// A failure to start exits 126, like a shell.
fn spawn(cmd: &mut Command, exe: &Path, argv: &[String]) -> Result<Child> {
    let failed = |e: std::io::Error| -> anyhow::Error {
        crate::UserError {
            message: format!("cannot start {}: {e}", argv[0]),
            code: 126,
        }
        .into()
    };
    match cmd.spawn() {
        Ok(child) => Ok(child),
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let mut sh = Command::new("/bin/sh");
            sh.arg(exe).args(&argv[1..]);
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => sh.env(k, v),
                    None => sh.env_remove(k),
                };
            }
            sh.spawn().map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)?;
    offheap_format::write_atomic(path, &text).context("cannot write the recording")?;
    Ok(())
}

fn send(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Collects until the child ends, forwarding signals and enforcing --duration.
/// `--snapshots` in `run`: a heap snapshot shortly after start, and one at
/// the end (before --duration stops the target) when the heap or external
/// memory grows. The inspector is opened with SIGUSR1, like `attach`.
struct HeapSnapshots {
    enabled: bool,
    track_allocations: bool,
    dir: PathBuf,
    insp: Option<offheap_node::Inspector>,
    first: Option<offheap_node::LiveSnapshot>,
    last: Option<offheap_node::LiveSnapshot>,
    tried: bool,
    notes: Vec<String>,
}

impl HeapSnapshots {
    fn new(enabled: bool, track_allocations: bool, dir: &Path) -> Self {
        HeapSnapshots {
            enabled,
            track_allocations,
            dir: dir.to_path_buf(),
            insp: None,
            first: None,
            last: None,
            tried: false,
            notes: Vec::new(),
        }
    }

    fn start(&mut self, pid: u32) {
        if !self.enabled || self.tried {
            return;
        }
        self.tried = true;
        match offheap_node::Inspector::open(pid, Duration::from_secs(10)) {
            Ok(mut insp) => {
                match crate::attach::snapshot_into(&mut insp, &self.dir, "start.heapsnapshot") {
                    Ok(s) => {
                        self.first = Some(s);
                        if self.track_allocations
                            && let Err(e) = insp.start_allocation_tracking()
                        {
                            self.notes
                                .push(format!("allocation tracking could not start: {e}"));
                        }
                        self.insp = Some(insp);
                    }
                    Err(e) => {
                        self.notes.push(format!("start heap snapshot failed: {e}"));
                        let _ = insp.close();
                    }
                }
            }
            Err(e) => self.notes.push(format!("no heap snapshots: {e}")),
        }
    }

    /// Before the target is stopped: the end snapshot, if the verdict so far calls for one.
    fn finish(&mut self) {
        let Some(mut insp) = self.insp.take() else {
            return;
        };
        let grows = crate::attach::heap_grows(&self.dir);
        if grows {
            match crate::attach::snapshot_into(&mut insp, &self.dir, "end.heapsnapshot") {
                Ok(s) => self.last = Some(s),
                Err(e) => self.notes.push(format!("end heap snapshot failed: {e}")),
            }
        } else {
            self.notes
                .push("no end heap snapshot: neither the JS heap nor external memory grows".into());
        }
        if self.track_allocations {
            let _ = insp.stop_allocation_tracking();
        }
        let _ = insp.close();
    }

    fn findings(&mut self) -> Option<serde_json::Value> {
        if self.enabled && !self.tried {
            self.notes.push(
                "the target ended before the first heap snapshot (taken 1.5 s after start)".into(),
            );
        }
        if self.insp.take().is_some() {
            self.notes.push(
                "the target ended before the end heap snapshot (use --duration to get one)".into(),
            );
        }
        crate::attach::heap_findings(self.first.as_ref(), self.last.as_ref())
    }
}

type Supervised = (End, Option<serde_json::Value>, Vec<String>);

fn supervise(
    mut child: Child,
    dir: &Path,
    rec: &RecordOpts,
    grace: Duration,
    signals: &Signals,
    mut snapshots: HeapSnapshots,
) -> Result<Supervised> {
    let pid = child.id();
    let start = Instant::now();
    let mut collector = Collector::new(dir, pid).context("cannot write the recording")?;
    let mut status = StatusLine::new(rec.quiet);
    let mut next_tick = start;
    // (when the stop began, signals sent so far)
    let mut stopping: Option<(Instant, u8)> = None;
    let mut reason = "exited";
    let mut stop_ms = None;
    let exit = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        for s in signals.drain() {
            if !s.from_terminal {
                send(pid, s.signo);
            }
            if matches!(
                s.signo,
                libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT
            ) {
                stop_ms.get_or_insert_with(now_ms);
            }
        }
        let now = Instant::now();
        if let Some(d) = rec.duration
            && stopping.is_none()
            && now.duration_since(start) >= d
        {
            reason = "duration";
            snapshots.finish();
            stop_ms.get_or_insert_with(now_ms);
            send(pid, libc::SIGINT);
            stopping = Some((now, 1));
        }
        if let Some((since, sent)) = stopping
            && now.duration_since(since) >= grace
        {
            let sig = if sent == 1 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            send(pid, sig);
            stopping = Some((now, sent + 1));
        }
        if now.duration_since(start) >= Duration::from_millis(1500) && child.try_wait()?.is_none() {
            snapshots.start(pid);
        }
        if now >= next_tick {
            collector.tick();
            status.show(&collector);
            next_tick += rec.interval;
            if next_tick < now {
                next_tick = now + rec.interval;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    collector.finish();
    status.clear();
    let (exit_code, signal) = (exit.code(), exit.signal());
    if signal.is_some() && reason == "exited" {
        reason = "killed";
    }
    let heap = snapshots.findings();
    let end = End {
        end_ms: now_ms(),
        exit_code,
        signal,
        exit_status: exit_code.unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        reason: reason.into(),
        stop_ms,
    };
    Ok((end, heap, snapshots.notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(is_node_executable(Path::new("/usr/bin/node")));
        assert!(is_node_executable(Path::new("/opt/node20")));
        assert!(!is_node_executable(Path::new("/usr/bin/nodemon")));
        assert!(!is_node_executable(Path::new("/bin/sh")));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_node_option("/a/b.js"), "/a/b.js");
        assert_eq!(quote_node_option("/a b/c.js"), "\"/a b/c.js\"");
    }
}
