//! `offheap run`: launch the target with the agents, collect until it ends,
//! then hand the recording to the analysis and the reporters.

use crate::cli::RunArgs;
use crate::collect::now_ms;
use crate::elf::{self, Linkage};
use crate::heap::{self, Control, Snapshots};
use crate::session::{self, Target as Session};
use crate::signals::Signals;
use crate::{outdir, reporting, user_error};
use anyhow::{Context, Result};
use offheap_format::layout;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

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
    js_agent: Option<&str>,
    native: bool,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let js = out.path().join(layout::JS_AGENT);
    if let Some(src) = js_agent {
        out.create_file(layout::JS_AGENT, 0o400, src.as_bytes())?;
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
    run_with(args, Extra::default()).map(|f| f.status)
}

/// Without `check`, what the load did goes into the notes.
fn load_note(dir: &Path, is_check: bool) -> Option<String> {
    if is_check {
        None
    } else {
        crate::load::note(dir)
    }
}

/// A hook `check` runs with the recording directory once the target runs.
pub type OnStart = Box<dyn FnOnce(&Path)>;

/// What `check` adds to a run: environment for the agents, settings for
/// `recording.json`, no verdict text at the end.
#[derive(Default)]
pub struct Extra {
    pub env: Vec<(&'static str, String)>,
    pub settings: Vec<(String, serde_json::Value)>,
    pub no_report_text: bool,
    /// Give the command `$OFFHEAP_ITERATIONS`, a file to append a line to
    /// per iteration (for `--max-growth KIND=SIZE/iteration`).
    pub iterations: bool,
}

/// A run that ended: its exit status, the recording and its Model.
pub struct Finished {
    pub status: u8,
    pub dir: PathBuf,
    pub model: offheap_analysis::Model,
}

pub fn run_with(args: RunArgs, extra: Extra) -> Result<Finished> {
    let load = args
        .load
        .spec()
        .map_err(|e| crate::user_error(e.to_string()))?;
    let (on_start, on_end) = match load {
        Some((spec, addr)) => {
            let (s, e) = crate::load::hooks(spec, addr);
            (Some(s), Some(e))
        }
        None => (None, None),
    };
    let is_check = extra.settings.iter().any(|(k, _)| k == "check");
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
    // Bound before anything is created or started: a port in use is an
    // error with nothing left behind.
    let bound = match args.record.serve {
        Some(addr) => Some(crate::serve::bind(addr, args.record.quiet)?),
        None => None,
    };
    let mut out = outdir::create(args.record.out.as_deref(), &program_name(&args.command))?;
    let dir = out.path().to_path_buf();
    let user_node_options = std::env::var("NODE_OPTIONS").ok();
    let js_source = target.node.then(|| {
        offheap_node::js_agent_source(&offheap_node::AgentConfig {
            dir: dir.clone(),
            interval_ms: args.record.interval.as_millis().max(10) as u64,
            mode: "run".into(),
            follow_exec: args.follow_exec,
            node_options: user_node_options.clone(),
            heap_sample_bytes: args.record.heap_sample_interval,
            heap_profile_ms: 30_000,
            snapshots: args.record.snapshots,
            track_allocations: args.record.track_allocations,
            exit_snapshot_max_heap: 256 << 20,
            cli_pid: std::process::id(),
            wait_inspector_close: false,
        })
    });
    // Until the target runs, a failure undoes what offheap put on disk.
    let (js_agent, native_agent) = match install_agents(&mut out, js_source.as_deref(), native) {
        Ok(agents) => agents,
        Err(e) => {
            out.remove_created();
            return Err(e);
        }
    };

    let iterations = if extra.iterations {
        match out.create_file(layout::ITERATIONS_LOG, 0o600, b"") {
            Ok(p) => Some(p),
            Err(e) => {
                out.remove_created();
                return Err(e);
            }
        }
    } else {
        None
    };
    let mut cmd = Command::new(&target.exe);
    cmd.arg0(&args.command[0]).args(&args.command[1..]);
    if let Some(p) = &iterations {
        cmd.env("OFFHEAP_ITERATIONS", p);
    }
    cmd.env("OFFHEAP_DIR", &dir).env(
        "OFFHEAP_INTERVAL_MS",
        args.record.interval.as_millis().max(10).to_string(),
    );
    if args.follow_exec {
        cmd.env("OFFHEAP_FOLLOW_EXEC", "1");
    }
    let mut node_flags = Vec::new();
    if target.node {
        // The JS agent's configuration is in its file; it restores the
        // user's NODE_OPTIONS for children.
        let mut opts = user_node_options.clone().unwrap_or_default();
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
        for (k, v) in &extra.env {
            cmd.env(k, v);
        }
    }

    supervised_by_us(&mut cmd);
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
    if let Some(f) = on_start {
        f(&dir);
    }

    let mut settings = BTreeMap::new();
    settings.insert("follow_fork".into(), args.follow_fork.into());
    settings.insert("follow_exec".into(), args.follow_exec.into());
    settings.insert("max_depth".into(), args.max_depth.into());
    settings.insert(
        "min_age_ms".into(),
        (args.record.min_age.as_millis() as u64).into(),
    );
    settings.insert("exact".into(), args.exact.into());
    settings.extend(extra.settings);
    session::write_meta(
        &dir,
        session::MetaSpec {
            mode: "run",
            command: args.command.clone(),
            pid,
            start_ms,
            interval: args.record.interval,
            node: target.node,
            node_flags,
            native: native_agent.is_some(),
            sample_interval: if args.exact { 1 } else { args.sample_interval },
            settings,
        },
    )?;

    let mut control = Control::new(&dir);
    let mut snapshots = Snapshots::new(args.record.snapshots && target.node);
    if args.record.snapshots && !target.node {
        notes.push("--snapshots needs a Node target: no heap snapshots taken".into());
    }
    let mut launched = Session::Launched {
        child,
        grace: args.grace,
    };
    let serving = bound.map(|b| b.start(&dir, args.record.min_age.as_secs_f64()));
    let outcome = session::record(
        &mut launched,
        &dir,
        &args.record,
        &signals,
        &mut control,
        &mut snapshots,
        Duration::from_millis(1500),
    )?;
    // The target has ended: the live endpoints with it.
    drop(serving);
    if let Some(f) = on_end {
        f();
    }
    notes.extend(load_note(&dir, is_check));
    snapshots.finish(&dir);
    notes.append(&mut snapshots.notes);
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
    if target.node {
        let asked: Vec<&str> = args
            .command
            .iter()
            .map(String::as_str)
            .chain(user_node_options.iter().flat_map(|o| o.split_whitespace()))
            .collect();
        if let Ok(cwd) = std::env::current_dir() {
            collect_v8_logs(&dir, &cwd, start_ms, &asked, &mut notes);
        }
    }
    heap::write_findings(&dir, &mut notes);
    write_json(&dir.join(layout::END), &outcome)?;
    let opts = reporting::AnalyzeOpts {
        min_age_s: args.record.min_age.as_secs_f64(),
        top: 10,
        extra_notes: notes,
    };
    let model = reporting::finish(&dir, &opts, args.record.quiet || extra.no_report_text)?;
    Ok(Finished {
        status: outcome.exit_status.clamp(0, 255) as u8,
        dir,
        model,
    })
}

/// If offheap dies, the target it launched is asked to stop as if offheap
/// had forwarded a SIGTERM: a target outliving its supervisor would run on
/// unrecorded (a CI job's server holding its port forever).
fn supervised_by_us(cmd: &mut Command) {
    let parent = std::process::id() as i32;
    // SAFETY: prctl, getppid and raise are async-signal-safe and touch no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
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
            supervised_by_us(&mut sh);
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
    write_bytes(path, &text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a file of the recording whole (a unique temporary file, then renamed).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    offheap_format::write_atomic(path, bytes)
}

/// Node 24's V8 answers offheap's `--perf-basic-prof-only-functions` with an
/// `isolate-0x…-PID-v8.log` in the target's working directory too (Node 20
/// and 22 do not, and `--logfile` is not allowed in NODE_OPTIONS). Those
/// files are offheap's doing: they are moved into the recording, unless the
/// user asked V8 for a log (`--prof`, `--log*`). Only regular files named
/// after a recorded node process and written since the start are touched.
fn collect_v8_logs(dir: &Path, cwd: &Path, start_ms: f64, asked: &[&str], notes: &mut Vec<String>) {
    if asked
        .iter()
        .any(|a| a.starts_with("--prof") || a.starts_with("--log"))
    {
        return;
    }
    // The node processes recorded: node-PID-THREAD.jsonl.
    let pids: std::collections::HashSet<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("node-")?.strip_suffix(".jsonl")?;
            Some(rest.split_once('-')?.0.to_string())
        })
        .collect();
    let (mut moved, mut left) = (0, 0);
    for e in fs::read_dir(cwd).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("isolate-0x")
            .and_then(|r| r.strip_suffix("-v8.log"))
            .and_then(|r| r.rsplit_once('-'))
            .map(|(_, pid)| pid)
        else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let recent = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|m| m.as_secs_f64() * 1000.0 >= start_ms - 1000.0);
        if !pids.contains(pid) || !meta.file_type().is_file() || !recent {
            continue;
        }
        let to = dir.join(&name);
        let ok = fs::rename(e.path(), &to).is_ok()
            || (fs::copy(e.path(), &to).is_ok() && fs::remove_file(e.path()).is_ok());
        if ok {
            moved += 1;
        } else {
            left += 1;
        }
    }
    if moved > 0 {
        notes.push(format!(
            "node wrote {moved} V8 log file(s) (isolate-…-v8.log) into its working directory because of \
             offheap's perf-map flag (Node 24): moved into the recording"
        ));
    }
    if left > 0 {
        notes.push(format!(
            "node wrote {left} V8 log file(s) (isolate-…-v8.log) into {} because of offheap's perf-map \
             flag (Node 24), which could not be moved",
            cwd.display()
        ));
    }
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
