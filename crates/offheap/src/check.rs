//! `offheap check`: `run --exact` with the agent's leak check at exit, then
//! the gate. The figures it judges are the Model's (`summary.json`
//! `check`): the gate's configuration goes into `recording.json`, so
//! `offheap report DIR` shows the same numbers.
//!
//! Exit status: CMD's own when CMD fails (non-zero, or 128+signal); else
//! [`GATE_FAILED`] when a gate fails; else 0. offheap's own errors keep
//! theirs (2: bad arguments).

use crate::cli::{RecordOpts, RunArgs};
use crate::run::{self, Extra};
use crate::user_error;
use anyhow::{Context, Result};
use clap::Args;
use offheap_analysis::check::{CheckConfig, GrowthLimit, parse_growth_limit, parse_suppressions};
use std::path::PathBuf;
use std::time::Duration;

/// Exit status of a failed gate when CMD itself succeeded (LeakSanitizer's
/// default exit code).
pub const GATE_FAILED: u8 = 23;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub record: RecordOpts,
    /// Lost blocks whose allocation stack has a frame matching a line of FILE do not fail the gate.
    /// One pattern per line: `function:GLOB`, `module:GLOB` or `leak:GLOB` (function, module or
    /// file; also a line without a prefix); `#` comments. A pattern without `*` matches anywhere.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Option<PathBuf>,
    /// Fail when KIND grows by more than SIZE over the run (KIND: native, external, js-heap, rss;
    /// SIZE like 1MiB, 512KiB). Repeatable. Measured as the verdict measures growth.
    /// SIZE/request: per request of --load. SIZE/iteration: per iteration the command reports, by
    /// appending one line per iteration to the file named by $OFFHEAP_ITERATIONS.
    #[arg(long, value_name = "KIND=SIZE", value_parser = parse_growth_limit)]
    pub max_growth: Vec<GrowthLimit>,
    /// Write a JUnit XML report to FILE (one test case per gate and per lost allocation stack).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub load: crate::load::LoadOpts,
    /// Do not check programs the command execs (by default every exec'd glibc program, such as the
    /// node processes of `node --test` or `npm test`, is tracked and checked too).
    #[arg(long)]
    pub no_follow_exec: bool,
    /// Maximum unwind depth (1-256).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_depth: u32,
    /// Time between SIGINT, SIGTERM and SIGKILL when --duration ends the command.
    #[arg(long, value_parser = crate::cli::parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// The test command and its arguments (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

pub fn check(args: CheckArgs) -> Result<u8> {
    if args.command.is_empty() {
        return Err(user_error(
            "no command given; usage: offheap check [OPTIONS] -- CMD [ARGS...]",
        ));
    }
    let mut config = CheckConfig {
        max_growth: args.max_growth.clone(),
        ..Default::default()
    };
    if let Some(path) = &args.suppressions {
        let text = std::fs::read_to_string(path).map_err(|e| {
            user_error(format!(
                "cannot read the suppressions file {}: {e}",
                path.display()
            ))
        })?;
        config.suppressions = parse_suppressions(&text)
            .map_err(|e| user_error(format!("{}: {e}", path.display())))?;
        config.suppressions_file = Some(path.display().to_string());
    }
    if config.max_growth.iter().any(|g| g.per_request) && args.load.load.is_none() {
        return Err(user_error(
            "--max-growth KIND=SIZE/request needs --load URL (the requests to count)",
        ));
    }
    // Bad load options fail before anything runs.
    args.load.spec().map_err(|e| user_error(e.to_string()))?;
    // The JUnit file is created up front, so that a path that cannot be
    // written fails before the tests run.
    if let Some(j) = &args.junit {
        std::fs::write(j, b"")
            .map_err(|e| user_error(format!("cannot write {}: {e}", j.display())))?;
    }
    let quiet = args.record.quiet;
    let mut record = args.record;
    // Test runs are short: sample every 100 ms unless --interval says
    // otherwise (its default is run's 500 ms), so the growth figures of a
    // few seconds have points enough.
    if record.interval == Duration::from_millis(500) {
        record.interval = Duration::from_millis(100);
    }
    let run_args = RunArgs {
        record,
        sample_interval: 1,
        exact: true,
        no_native: false,
        follow_fork: true,
        follow_exec: !args.no_follow_exec,
        max_depth: args.max_depth,
        grace: args.grace,
        load: args.load.clone(),
        command: args.command,
    };
    let extra = Extra {
        env: vec![
            ("OFFHEAP_LEAKS", "1".into()),
            // The leak check walks the address table (header mode keeps none).
            ("OFFHEAP_HEADERS", "0".into()),
        ],
        settings: vec![("check".into(), serde_json::to_value(&config)?)],
        no_report_text: true,
        iterations: true,
    };
    let finished = match run::run_with(run_args, extra) {
        Ok(f) => f,
        Err(e) => {
            // The command could not run: the JUnit file says so too.
            if let Some(j) = &args.junit {
                let _ = std::fs::write(j, offheap_report::check::junit_error(&e.to_string()));
            }
            return Err(e);
        }
    };
    let model = &finished.model;
    if let Some(j) = &args.junit {
        std::fs::write(j, offheap_report::check::junit(model))
            .with_context(|| format!("cannot write {}", j.display()))?;
    }
    if std::env::var_os("GITHUB_ACTIONS").is_some_and(|v| v == "true") {
        let ws = std::env::var("GITHUB_WORKSPACE").ok();
        // Workflow commands are read from stdout.
        print!(
            "{}",
            offheap_report::check::github_annotations(model, ws.as_deref())
        );
    }
    let passed = model.check.as_ref().is_some_and(|c| c.passed);
    if !quiet {
        eprint!("{}", offheap_report::check::text(model));
        eprintln!(
            "report: {}",
            crate::terminal(
                &finished
                    .dir
                    .join(offheap_report::HTML_FILE)
                    .display()
                    .to_string()
            )
        );
    }
    // A server offheap stopped after the load ends by that signal: not a failure.
    let stopped_by_us = model.end.as_ref().is_some_and(|e| {
        e.reason == "load" && matches!(e.signal, Some(libc::SIGINT) | Some(libc::SIGTERM))
    });
    Ok(if finished.status != 0 && !stopped_by_us {
        finished.status
    } else if !passed {
        GATE_FAILED
    } else {
        0
    })
}
