//! Command-line interface: the clap definitions and the dispatch to each
//! subcommand.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "offheap",
    version,
    about = "Find the memory a Node.js heap snapshot cannot see, and explain every byte of a process's RSS.",
    long_about = "offheap runs the whole memory-leak checklist in one command: it watches RSS, the V8 heap, \
external and arrayBuffers, samples native allocations by call stack (C++ and JavaScript frames side by side), \
tells a leak from allocator fragmentation, and names the culprit.",
    after_help = "Examples:\n  offheap demo                          run the bundled leaky server and show the verdict\n  offheap run -- node server.js         record a Node service until it exits (Ctrl-C stops it)\n  offheap run --duration 60s -- node server.js\n  offheap run -- ./my-native-program    works on any dynamically linked glibc program\n  offheap attach 4242 --duration 30s    watch a running Node process\n  offheap report offheap-node-20261124-101500/\n  offheap diff before/ after/"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch a program and record its memory until it ends; then print the verdict.
    #[command(
        after_help = "Examples:\n  offheap run -- node server.js\n  offheap run --duration 2m --out leak-1 -- node server.js --port 8080\n  offheap run --exact -- ./test-binary        every allocation, for CI and small programs\n  offheap run --quiet --interval 250ms -- node job.js"
    )]
    Run(RunArgs),
    /// Run a test command under exact tracking and fail on leaks: a gate for CI (exit 23 on a leak).
    #[command(
        after_help = "Exit status: the command's own status when it fails (128+signal if a signal killed it); \
else 23 when a gate fails (a block lost at exit, a --max-growth limit exceeded); else 0. 2: bad arguments.\n\n\
Examples:\n  offheap check -- node --test\n  offheap check --suppressions offheap.supp --junit leaks.xml -- npm test\n  \
offheap check --max-growth native=1MiB --max-growth rss=20MiB -- ./test-binary"
    )]
    Check(crate::check::CheckArgs),
    /// Watch a running Node process through its inspector (SIGUSR1), then detach.
    #[command(
        after_help = "Examples:\n  offheap attach 4242\n  offheap attach 4242 --duration 5m --out prod-leak\n  offheap attach 4242 --snapshots    take heap snapshots at the start and the end"
    )]
    Attach(AttachArgs),
    /// Take a heap snapshot of a Node process (or read a .heapsnapshot) and find what holds memory.
    #[command(
        after_help = "Examples:\n  offheap snapshot 4242\n  offheap snapshot app.heapsnapshot\n  offheap snapshot --compare before.heapsnapshot after.heapsnapshot"
    )]
    Snapshot(SnapshotArgs),
    /// Re-read a recording (also a partial one from a killed run) and regenerate the verdict and reports.
    #[command(
        after_help = "Examples:\n  offheap report offheap-node-20261124-101500/\n  offheap report --json DIR    print summary.json to stdout"
    )]
    Report(ReportArgs),
    /// Growth per stack between two recordings, or two time windows of one.
    #[command(
        after_help = "Examples:\n  offheap diff before/ after/\n  offheap diff run/ --from 10s --to 60s"
    )]
    Diff(DiffArgs),
    /// Run a bundled leaky Node server under offheap and show the verdict (under a minute).
    #[command(after_help = "Examples:\n  offheap demo\n  offheap demo --out /tmp/demo-recording")]
    Demo(DemoArgs),
}

/// Options shared by everything that records.
#[derive(Args, Debug, Clone)]
pub struct RecordOpts {
    /// Output directory (created 0700; never an existing non-empty one).
    /// Default: offheap-<program>-<YYYYmmdd-HHMMSS>/ in the current directory.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Stop after this long (e.g. 30s, 5m): SIGINT, then SIGTERM, then SIGKILL.
    #[arg(long, value_parser = parse_stop_after)]
    pub duration: Option<Duration>,
    /// Sampling period of the telemetry (e.g. 500ms, 1s; at most 1h).
    #[arg(long, value_parser = parse_interval, default_value = "500ms")]
    pub interval: Duration,
    /// No live status line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Take heap snapshots at the start and the end when the verdict is js-heap, external or native.
    #[arg(long)]
    pub snapshots: bool,
    /// With --snapshots: record allocation stacks between the snapshots, so the findings name the JS
    /// function that allocated each object (costs CPU and memory in the target while on).
    #[arg(long, requires = "snapshots")]
    pub track_allocations: bool,
    /// Ignore allocations younger than this when ranking suspects (e.g. 5s).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub min_age: Duration,
    /// Mean bytes between samples of V8's sampling heap profiler, which names the JS functions
    /// whose objects accumulate in the JS heap (Node targets; 0 turns it off).
    #[arg(long, default_value = "512KiB", value_parser = parse_size_or_zero)]
    pub heap_sample_interval: u64,
    /// While recording, serve /metrics (Prometheus), /debug/pprof/heap (pprof), /summary.json and /
    /// (the live report) over HTTP. PORT alone listens on 127.0.0.1; another address only when
    /// named (0.0.0.0:PORT: every interface, unauthenticated).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = crate::serve::parse_addr)]
    pub serve: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub record: RecordOpts,
    /// Mean bytes between native allocation samples (Poisson by bytes, as in jemalloc; 1 byte to 1GiB).
    #[arg(long, default_value = "512KiB", value_parser = parse_size)]
    pub sample_interval: u64,
    /// Track every allocation instead of sampling (CI, small programs). Each block gets a 16-byte
    /// header in front of it; OFFHEAP_HEADERS=0 in the environment tracks blocks in a table instead
    /// (slower, the program's heap layout untouched).
    #[arg(long)]
    pub exact: bool,
    /// Do not preload the native agent (only /proc and Node telemetry).
    #[arg(long)]
    pub no_native: bool,
    /// Forked children get their own recording stream (default) or are skipped.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub follow_fork: bool,
    /// Also profile programs the target execs (LD_PRELOAD and NODE_OPTIONS are otherwise removed from children).
    #[arg(long)]
    pub follow_exec: bool,
    /// Maximum unwind depth (1-256).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_depth: u32,
    /// Time between SIGINT, SIGTERM and SIGKILL when --duration ends the target.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,
    #[command(flatten)]
    pub load: crate::load::LoadOpts,
    /// The program to run and its arguments (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Process id of a running Node process (same user).
    pub pid: u32,
    #[command(flatten)]
    pub record: RecordOpts,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// A Node process id, or a .heapsnapshot file.
    #[arg(required_unless_present = "compare")]
    pub target: Option<String>,
    /// Compare two snapshots: what grew from A to B.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "target")]
    pub compare: Option<Vec<PathBuf>>,
    /// Output directory for the snapshot and the findings.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many entries per table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A recording directory written by `offheap run` or `offheap attach`.
    pub dir: PathBuf,
    /// Print summary.json to stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Ignore allocations younger than this when ranking suspects.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub min_age: Duration,
    /// How many suspects to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the timeline series (t, bytes) used by the verdict.
    #[arg(long, hide = true)]
    pub debug_timeline: bool,
    /// Print every native stack's counters at the last snapshots.
    #[arg(long, hide = true)]
    pub debug_stacks: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The baseline recording.
    pub a: PathBuf,
    /// The later recording (omit to compare two windows of A with --from/--to).
    pub b: Option<PathBuf>,
    /// Start of the comparison (seconds since start, e.g. 10s) when diffing windows of one recording.
    #[arg(long, value_parser = parse_duration)]
    pub from: Option<Duration>,
    /// End of the comparison window.
    #[arg(long, value_parser = parse_duration)]
    pub to: Option<Duration>,
    /// Output directory for the diff reports (folded stacks, pprof, flame graph).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// How many stacks to list.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory for the demo's recording.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// How long the demo runs.
    #[arg(long, value_parser = parse_stop_after, default_value = "20s")]
    pub duration: Duration,
    /// No live status line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses `500ms`, `2s`, `1.5s`, `5m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is too long to be a duration"))
}

/// `--duration`: how long to record before stopping the target; not zero
/// (that would stop it at once).
pub fn parse_stop_after(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "{s:?}: the duration must be longer than 0 (leave --duration out to record until the program exits)"
        ));
    }
    Ok(d)
}

/// Longest sampling period accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// A sampling period: at least 10 ms, at most an hour.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "{s:?} is too short: the interval must be at least 10ms"
        ));
    }
    if d > MAX_INTERVAL {
        return Err(format!(
            "{s:?} is too long: the interval must be at most 1h"
        ));
    }
    Ok(d)
}

/// A size that may be 0 (off).
pub fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

/// Largest native sampling interval accepted (beyond it nothing would
/// ever be sampled).
pub const MAX_SAMPLE_INTERVAL: u64 = 1 << 30;

/// Parses `524288`, `512KiB`, `512k`, `1MiB`, `4M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let i = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let n: f64 = t[..i]
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 512KiB)"))?;
    let mult = match t[i..].to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit {u:?}")),
    };
    let bytes = n * mult;
    if bytes > MAX_SAMPLE_INTERVAL as f64 {
        return Err(format!(
            "{s:?} is too large: the sampling interval must be at most 1GiB"
        ));
    }
    let v = bytes as u64;
    if v == 0 {
        return Err("the sampling interval must be at least 1 byte".into());
    }
    Ok(v)
}

pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => crate::run::run(args),
        Command::Check(args) => crate::check::check(args),
        Command::Demo(args) => crate::demo::demo(args),
        Command::Report(args) => crate::reporting::report(args),
        Command::Diff(args) => crate::reporting::diff(args),
        Command::Attach(args) => crate::attach::attach(args),
        Command::Snapshot(args) => crate::attach::snapshot(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_interval("1ms").is_err());
        assert!(parse_interval("250ms").is_ok());
        assert_eq!(parse_interval("1h").unwrap(), MAX_INTERVAL);
        let e = parse_interval("999999999h").unwrap_err();
        assert!(e.contains("at most 1h"), "{e}");
        // Beyond what a Duration holds: an error, not a panic.
        let e = parse_duration("99999999999999999999h").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse_duration("inf").is_err());
        let e = parse_stop_after("0").unwrap_err();
        assert!(e.contains("longer than 0"), "{e}");
        assert!(parse_stop_after("0ms").is_err());
        assert_eq!(parse_stop_after("1ms").unwrap(), Duration::from_millis(1));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB").unwrap(), 524288);
        assert_eq!(parse_size("1").unwrap(), 1);
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_size("1GiB").unwrap(), MAX_SAMPLE_INTERVAL);
        let e = parse_size("99999999999GiB").unwrap_err();
        assert!(e.contains("at most 1GiB"), "{e}");
        assert!(parse_size("1025MiB").is_err());
        assert!(parse_size("inf").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("nan").is_err());
    }
}
