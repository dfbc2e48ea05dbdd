//! `offheap attach PID` and `offheap snapshot`: the inspector (CDP) side.
//!
//! Attach opens the target's inspector (SIGUSR1, same user, 127.0.0.1 only),
//! evaluates the same JS agent that `run` injects with `--require`, collects
//! `/proc` beside it, and on detach stops the agent and closes the inspector
//! it opened, leaving the target as it was.

use crate::cli::{AttachArgs, SnapshotArgs};
use crate::collect::now_ms;
use crate::heap::{self, Control, Snapshots};
use crate::session::{self, Target};
use crate::signals::Signals;
use crate::{outdir, reporting, user_error};
use anyhow::{Context, Result};
use offheap_format::layout;
use offheap_node::{AnalyzeOptions, Inspector};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

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

/// The inspector is open for as long as it takes to start the JS agent:
/// then it is closed (if offheap opened it), and the agent works through an
/// in-process session, the recording directory and `control.jsonl`.
pub fn attach(args: AttachArgs) -> Result<u8> {
    let pid = args.pid;
    let rec = &args.record;
    let bound = match rec.serve {
        Some(addr) => Some(crate::serve::bind(addr, rec.quiet)?),
        None => None,
    };
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
    let meta = session::write_meta(
        &dir,
        session::MetaSpec {
            mode: "attach",
            command: cmdline(pid),
            pid,
            start_ms: now_ms(),
            interval: rec.interval,
            node: true,
            node_flags: Vec::new(),
            native: false,
            sample_interval: 0,
            settings,
        },
    );
    let cfg = offheap_node::AgentConfig {
        dir: dir.clone(),
        interval_ms: rec.interval.as_millis().max(10) as u64,
        mode: "attach".into(),
        follow_exec: true,
        node_options: None,
        heap_sample_bytes: rec.heap_sample_interval,
        heap_profile_ms: 30_000,
        snapshots: false,
        track_allocations: rec.track_allocations,
        exit_snapshot_max_heap: 0,
        cli_pid: std::process::id(),
        wait_inspector_close: insp.opened_by_us(),
    };
    let started = meta.and_then(|_| {
        insp.evaluate(&offheap_node::js_agent_expression(&cfg))
            .map_err(inspector_error)
    });
    // The agent needs the inspector no more: close what offheap opened.
    let closed = insp.close();
    let started = started?;
    if started.as_str() != Some("started") {
        return Err(user_error(format!(
            "the agent could not start in process {pid} ({started}); is {} writable by it?",
            dir.display()
        )));
    }
    if let Err(e) = closed {
        eprintln!(
            "offheap: warning: closing the inspector: {}",
            crate::terminal(&e.to_string())
        );
    }
    let signals = Signals::install().context("cannot install signal handlers")?;
    let mut control = Control::new(&dir);
    let mut snapshots = Snapshots::new(rec.snapshots);
    let mut attached = Target::Attached { pid };
    let serving = bound.map(|b| b.start(&dir, rec.min_age.as_secs_f64()));
    let end = session::record(
        &mut attached,
        &dir,
        rec,
        &signals,
        &mut control,
        &mut snapshots,
        Duration::ZERO,
    )?;
    drop(serving);
    snapshots.finish(&dir);
    let mut notes = vec![
        "attach mode: the native split (live native bytes by stack, allocator state) needs `offheap run`; the verdict rests on /proc and the V8 telemetry".into(),
    ];
    notes.append(&mut snapshots.notes);
    heap::write_findings(&dir, &mut notes);
    crate::run::write_json(&dir.join(layout::END), &end)?;
    let opts = reporting::AnalyzeOpts {
        min_age_s: rec.min_age.as_secs_f64(),
        top: 10,
        extra_notes: notes,
    };
    reporting::finish(&dir, &opts, rec.quiet)?;
    Ok(0)
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
        offheap_format::write_atomic(
            &findings,
            serde_json::to_string_pretty(&live.report)?.as_bytes(),
        )
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
