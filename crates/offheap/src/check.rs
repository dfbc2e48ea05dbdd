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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    #[arg(long, value_name = "KIND=SIZE", value_parser = parse_growth_limit)]
    pub max_growth: Vec<GrowthLimit>,
    /// Write a JUnit XML report to FILE (one test case per gate and per lost allocation stack).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Put the command, a server, under HTTP/1.1 keep-alive load once it listens on URL (loopback
    /// only), then stop it (SIGINT, then SIGTERM, then SIGKILL) and judge the run up to the stop.
    /// Enables per-request limits: --max-growth native=2KiB/request.
    #[arg(long, value_name = "URL")]
    pub load: Option<String>,
    /// With --load: how many requests in all.
    #[arg(long, default_value_t = 5000, value_name = "N", requires = "load")]
    pub load_requests: u64,
    /// With --load: connections sending requests at once.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "load",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub load_concurrency: u32,
    /// With --load: stop the load after this long even if requests are left (e.g. 30s).
    #[arg(long, value_name = "DURATION", requires = "load", value_parser = crate::cli::parse_stop_after)]
    pub load_duration: Option<Duration>,
    /// With --load: the request method.
    #[arg(long, default_value = "GET", value_name = "METHOD", requires = "load")]
    pub load_method: String,
    /// With --load: the request body.
    #[arg(long, value_name = "TEXT", requires = "load")]
    pub load_body: Option<String>,
    /// With --load: a request header, 'Name: value' (repeatable).
    #[arg(long, value_name = "HEADER", requires = "load", value_parser = crate::load::parse_header)]
    pub load_header: Vec<(String, String)>,
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
    if config.max_growth.iter().any(|g| g.per_request) && args.load.is_none() {
        return Err(user_error(
            "--max-growth KIND=SIZE/request needs --load URL (the requests to count)",
        ));
    }
    let load = match &args.load {
        Some(url) => {
            let addr = crate::load::loopback_addr(url).map_err(|e| user_error(e.to_string()))?;
            if ureq::http::Method::from_bytes(args.load_method.as_bytes()).is_err() {
                return Err(user_error(format!(
                    "--load-method {:?}: not an HTTP method",
                    args.load_method
                )));
            }
            Some((
                crate::load::LoadSpec {
                    url: url.clone(),
                    requests: args.load_requests,
                    concurrency: args.load_concurrency,
                    duration: args.load_duration,
                    method: args.load_method.to_ascii_uppercase(),
                    body: args.load_body.clone(),
                    headers: args.load_header.clone(),
                },
                addr,
            ))
        }
        None => None,
    };
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
        on_start: None,
        on_end: None,
    };
    let mut extra = extra;
    if let Some((spec, addr)) = load {
        // The load runs from the target's start until it is done or the
        // target ends; load.json is written before the analysis reads it.
        let done = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(Mutex::new(None));
        let (d, h) = (done.clone(), handle.clone());
        extra.on_start = Some(Box::new(move |dir: &std::path::Path| {
            let t = crate::load::start(spec, addr, dir.to_path_buf(), d);
            if let Ok(mut slot) = h.lock() {
                *slot = Some(t);
            }
        }));
        extra.on_end = Some(Box::new(move || {
            done.store(true, Ordering::Release);
            if let Some(t) = handle.lock().ok().and_then(|mut s| s.take()) {
                let _ = t.join();
            }
        }));
    }
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
