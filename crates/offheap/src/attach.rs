//! `offheap attach PID` and `offheap snapshot`: the inspector (CDP) side.
//!
//! Attach opens the target's inspector (SIGUSR1, same user, 127.0.0.1 only),
//! evaluates the same JS agent that `run` injects with `--require`, collects
//! `/proc` beside it, and on detach stops the agent and closes the inspector
//! it opened, leaving the target as it was.

use crate::cli::{AttachArgs, SnapshotArgs};
use crate::collect::{Collector, now_ms};
use crate::signals::Signals;
use crate::status::StatusLine;
use crate::{outdir, reporting, user_error};
use anyhow::{Context, Result};
use offheap_format::{End, FORMAT_VERSION, Meta, layout};
use offheap_node::{AnalyzeOptions, Inspector};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The JS agent, evaluated in the target: the same source `run` loads.
fn agent_expression(dir: &Path, interval: Duration) -> String {
    let cfg = serde_json::json!({"dir": dir, "intervalMs": interval.as_millis() as u64, "mode": "attach"});
    format!(
        "(function (module) {{ {src}\n; const s = module.exports.start({cfg}); return s && s.fd >= 0 ? 'started' : 'cannot-write'; }})({{ exports: {{}} }})",
        src = offheap_node::JS_AGENT
    )
}

const AGENT_TICK: &str = "(function () { const s = globalThis[Symbol.for('offheap.agent')]; if (s && s.tick) s.tick(); return 0; })()";

const AGENT_STOP: &str = "(function () { const s = globalThis[Symbol.for('offheap.agent')]; if (s && s.stop) { s.stop(); return 'stopped'; } return 'absent'; })()";

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

fn inspector_error(e: impl std::fmt::Display) -> anyhow::Error {
    user_error(e.to_string())
}

pub fn snapshot_into(
    insp: &mut Inspector,
    dir: &Path,
    name: &str,
) -> Result<offheap_node::LiveSnapshot> {
    // The JS agent's own pending records would show up in the heap: flush them first.
    let _ = insp.evaluate(AGENT_TICK);
    let path = dir.join(name);
    offheap_node::snapshot_session(insp, &path, &AnalyzeOptions::default()).map_err(inspector_error)
}

/// True if the recording so far says the JS heap or external memory grows:
/// the only verdicts an end-of-run heap snapshot can explain.
pub fn heap_grows(dir: &Path) -> bool {
    reporting::build_model(dir, 0.0)
        .ok()
        .and_then(|m| m.verdict)
        .is_some_and(|v| {
            v.kinds.iter().any(|k| {
                matches!(
                    k,
                    offheap_analysis::Kind::JsHeap | offheap_analysis::Kind::External
                )
            })
        })
}

/// Heap findings for the model's `heap` (summary.json, report.html): the
/// last snapshot's findings, and what grew since the first.
pub fn heap_findings(
    first: Option<&offheap_node::LiveSnapshot>,
    last: Option<&offheap_node::LiveSnapshot>,
) -> Option<serde_json::Value> {
    let latest = last.or(first)?;
    let compare = match (first, last) {
        (Some(a), Some(b)) => {
            offheap_node::compare_files(&a.path, &b.path, &AnalyzeOptions::default()).ok()
        }
        _ => None,
    };
    serde_json::to_value(offheap_node::analysis::HeapSummary::new(
        &latest.report,
        compare.as_ref(),
    ))
    .ok()
}

pub fn attach(args: AttachArgs) -> Result<u8> {
    let pid = args.pid;
    let rec = &args.record;
    // Opening the inspector checks: running, same user, Node, loopback only.
    let mut insp = Inspector::open(pid, Duration::from_secs(10)).map_err(inspector_error)?;
    let dir = match outdir::create(rec.out.as_deref(), &comm(pid)) {
        Ok(d) => d.path().to_path_buf(),
        Err(e) => {
            let _ = insp.close();
            return Err(e);
        }
    };
    let mut settings = BTreeMap::new();
    settings.insert("inspector_port".into(), insp.port().into());
    settings.insert(
        "inspector_opened_by_offheap".into(),
        insp.opened_by_us().into(),
    );
    let meta = Meta {
        format_version: FORMAT_VERSION,
        offheap_version: env!("CARGO_PKG_VERSION").into(),
        mode: "attach".into(),
        command: cmdline(pid),
        pid,
        start_ms: now_ms(),
        interval_ms: rec.interval.as_millis() as u64,
        node: true,
        node_flags: Vec::new(),
        native: false,
        sample_interval: 0,
        settings,
    };
    let result = record_attached(&mut insp, &dir, &meta, &args);
    // Detach whatever happened: stop the agent, close what we opened.
    let _ = insp.evaluate(AGENT_STOP);
    let closed = insp.close();
    let (end, first, last) = result?;
    if let Err(e) = closed {
        eprintln!(
            "offheap: warning: closing the inspector: {}",
            crate::terminal(&e.to_string())
        );
    }
    crate::run::write_json(&dir.join(layout::END), &end)?;
    let opts = reporting::AnalyzeOpts {
        min_age_s: rec.min_age.as_secs_f64(),
        top: 10,
        extra_notes: vec![
            "attach mode: the native split (live native bytes by stack, allocator state) needs `offheap run`; the verdict rests on /proc and the V8 telemetry".into(),
        ],
    };
    let heap = heap_findings(first.as_ref(), last.as_ref());
    reporting::finish_with_heap(&dir, &opts, rec.quiet, heap)?;
    Ok(0)
}

type Recorded = (
    End,
    Option<offheap_node::LiveSnapshot>,
    Option<offheap_node::LiveSnapshot>,
);

fn record_attached(
    insp: &mut Inspector,
    dir: &Path,
    meta: &Meta,
    args: &AttachArgs,
) -> Result<Recorded> {
    let rec = &args.record;
    let first = if rec.snapshots {
        Some(snapshot_into(insp, dir, "start.heapsnapshot")?)
    } else {
        None
    };
    if rec.track_allocations {
        insp.start_allocation_tracking().map_err(inspector_error)?;
    }
    let meta = Meta {
        start_ms: now_ms(),
        ..meta.clone()
    };
    let meta = &meta;
    crate::run::write_json(&dir.join(layout::META), meta)?;
    let started = insp
        .evaluate(&agent_expression(dir, rec.interval))
        .map_err(inspector_error)?;
    if started.as_str() != Some("started") {
        return Err(user_error(format!(
            "the agent could not start in process {} ({started}); is {} writable by it?",
            meta.pid,
            dir.display()
        )));
    }
    let signals = Signals::install().context("cannot install signal handlers")?;
    let mut collector = Collector::new(dir, meta.pid).context("cannot write the recording")?;
    let mut status = StatusLine::new(rec.quiet);
    let start = Instant::now();
    let mut next_tick = start;
    let mut reason = "detached";
    loop {
        if !Path::new(&format!("/proc/{}", meta.pid)).exists() {
            reason = "exited";
            break;
        }
        // Ctrl-C or SIGTERM ends the recording, never the target.
        if !signals.drain().is_empty() {
            break;
        }
        if rec.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let now = Instant::now();
        if now >= next_tick {
            collector.tick();
            status.show(&collector);
            next_tick = (next_tick + rec.interval).max(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = insp.evaluate(AGENT_TICK);
    collector.tick();
    collector.finish();
    status.clear();
    let mut last = None;
    if rec.snapshots && reason == "detached" {
        // Only worth its cost when the heap or external memory grows.
        let grows = heap_grows(dir);
        if grows {
            last = Some(snapshot_into(insp, dir, "end.heapsnapshot")?);
        }
    }
    if rec.track_allocations {
        // Leave the target as it was.
        let _ = insp.stop_allocation_tracking();
    }
    Ok((
        End {
            end_ms: now_ms(),
            exit_code: None,
            signal: None,
            exit_status: 0,
            reason: reason.into(),
            stop_ms: None,
        },
        first,
        last,
    ))
}

pub fn snapshot(args: SnapshotArgs) -> Result<u8> {
    let opts = AnalyzeOptions {
        top: args.top,
        ..Default::default()
    };
    if let Some(pair) = &args.compare {
        let report =
            offheap_node::compare_files(&pair[0], &pair[1], &opts).map_err(inspector_error)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        return Ok(0);
    }
    let target = args.target.as_deref().unwrap_or_default();
    let as_file = Path::new(target);
    let report = if as_file.exists() || target.parse::<u32>().is_err() {
        if !as_file.exists() {
            return Err(user_error(format!(
                "{target}: no such file (give a .heapsnapshot file or a Node process id)"
            )));
        }
        offheap_node::analyze_file(as_file, &opts).map_err(inspector_error)?
    } else {
        let pid: u32 = target.parse().unwrap_or_default();
        let dir = outdir::create(args.out.as_deref(), &format!("snapshot-{pid}"))?
            .path()
            .to_path_buf();
        let path = dir.join(format!("{pid}-{}.heapsnapshot", outdir::local_timestamp()));
        let live = offheap_node::snapshot_pid(pid, &path, &opts).map_err(inspector_error)?;
        let findings = dir.join("findings.json");
        fs::write(&findings, serde_json::to_string_pretty(&live.report)?)
            .with_context(|| format!("cannot write {}", findings.display()))?;
        eprintln!(
            "offheap: snapshot of {pid}: {} ({} MB)",
            crate::terminal(&path.display().to_string()),
            live.bytes / 1_000_000
        );
        live.report
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(0)
}
