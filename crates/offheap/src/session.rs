//! The recording loop, shared by `run` (a launched target) and `attach`
//! (a running one): the collector's tick, the status line, signals,
//! `--duration`, and the heap snapshots' requests. Nothing in it waits on
//! the target: snapshots are taken by the JS agent in the target, and the
//! loop only watches for their acknowledgement.

use crate::cli::RecordOpts;
use crate::collect::{Collector, now_ms};
use crate::heap::{Control, Snapshots};
use crate::signals::Signals;
use crate::status::StatusLine;
use anyhow::{Context, Result};
use offheap_format::{End, FORMAT_VERSION, Meta, layout};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// What is being recorded.
pub enum Target {
    /// A child offheap launched: signals are forwarded to it, and
    /// `--duration` stops it (SIGINT, then SIGTERM, then SIGKILL, `grace`
    /// apart).
    Launched { child: Child, grace: Duration },
    /// A process offheap attached to: signals and `--duration` end the
    /// recording, never the process.
    Attached { pid: u32 },
}

impl Target {
    pub fn pid(&self) -> u32 {
        match self {
            Target::Launched { child, .. } => child.id(),
            Target::Attached { pid } => *pid,
        }
    }
}

/// Sends `sig` to `pid`.
pub fn send(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid; no memory is involved.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// The recording's metadata, written at the start.
pub struct MetaSpec<'a> {
    pub mode: &'a str,
    pub command: Vec<String>,
    pub pid: u32,
    pub start_ms: f64,
    pub interval: Duration,
    pub node: bool,
    pub node_flags: Vec<String>,
    pub native: bool,
    pub sample_interval: u64,
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// Writes `recording.json`.
pub fn write_meta(dir: &Path, m: MetaSpec<'_>) -> Result<Meta> {
    let meta = Meta {
        format_version: FORMAT_VERSION,
        offheap_version: env!("CARGO_PKG_VERSION").into(),
        mode: m.mode.into(),
        command: m.command,
        pid: m.pid,
        start_ms: m.start_ms,
        interval_ms: m.interval.as_millis() as u64,
        node: m.node,
        node_flags: m.node_flags,
        native: m.native,
        sample_interval: m.sample_interval,
        settings: m.settings,
    };
    crate::run::write_json(&dir.join(layout::META), &meta)?;
    Ok(meta)
}

/// Set by `check --load` when the load is over: the recording ends as at
/// the end of `--duration` (SIGINT, then SIGTERM, then SIGKILL).
pub static STOP_REQUESTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Records until the target ends (launched) or the recording is ended
/// (attached: `--duration`, a signal, or the process gone). The heap
/// snapshots of `snapshots` are requested `snapshot_delay` after the start
/// and before the stop. Returns how it ended.
pub fn record(
    target: &mut Target,
    dir: &Path,
    rec: &RecordOpts,
    signals: &Signals,
    control: &mut Control,
    snapshots: &mut Snapshots,
    snapshot_delay: Duration,
) -> Result<End> {
    let pid = target.pid();
    let start = Instant::now();
    let mut collector = Collector::new(dir, pid).context("cannot write the recording")?;
    collector.interval = rec.interval;
    let mut status = StatusLine::new(rec.quiet);
    let mut next_tick = start;
    let mut next_poll = start;
    // Launched: when the stop began, and the signals sent so far.
    let mut stopping: Option<(Instant, u8)> = None;
    // The grace was held back while a snapshot was being written.
    let mut held = false;
    // The recording is to end (duration, or a signal under attach); the
    // end snapshot may still be on its way.
    let mut ending = false;
    let mut reason = match target {
        Target::Launched { .. } => "exited",
        Target::Attached { .. } => "detached",
    };
    let mut stop_ms = None;
    let mut exit = None;
    loop {
        match target {
            Target::Launched { child, .. } => {
                if let Some(st) = child.try_wait()? {
                    exit = Some(st);
                    break;
                }
            }
            Target::Attached { pid } => {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    reason = "exited";
                    break;
                }
            }
        }
        let mut detach_now = false;
        for s in signals.drain() {
            match target {
                Target::Launched { .. } => {
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
                // Ctrl-C or SIGTERM ends the recording, never the target: a
                // first one after the end snapshot, a second one at once.
                Target::Attached { .. } => {
                    if ending {
                        detach_now = true;
                    }
                    ending = true;
                }
            }
        }
        if detach_now {
            break;
        }
        let now = Instant::now();
        if let Some(d) = rec.duration
            && !ending
            && now.duration_since(start) >= d
        {
            ending = true;
            if let Target::Launched { .. } = target {
                reason = "duration";
            }
        }
        // `check --load`: the load is over; stop the target as --duration does.
        if !ending && STOP_REQUESTED.load(std::sync::atomic::Ordering::Acquire) {
            ending = true;
            reason = "load";
        }
        if ending && snapshots.request_end(control, pid, dir) {
            collector.poll_agent();
        }
        if now >= next_poll {
            collector.poll_agent();
            next_poll = now + Duration::from_millis(50);
        }
        if ending && stopping.is_none() && !snapshots.end_pending(&collector) {
            match target {
                Target::Launched { .. } => {
                    stop_ms.get_or_insert_with(now_ms);
                    send(pid, libc::SIGINT);
                    stopping = Some((now, 1));
                }
                Target::Attached { .. } => break,
            }
        }
        // A target busy writing a snapshot offheap asked for handles the
        // stop signal only afterwards: its grace starts then (up to a bound),
        // so that watching it never turns its clean exit into a SIGTERM.
        // Likewise a target already exiting (its `exit` event reached the
        // JS agent, whose exit work, a full GC and the last heap profile or
        // snapshot, takes seconds on a large heap).
        if let Some((since, sent)) = stopping
            && sent == 1
            && (snapshots.in_flight(&collector) || collector.target_exiting())
            && now.duration_since(since) < 2 * crate::heap::SNAPSHOT_BUDGET
        {
            if !held {
                held = true;
                snapshots.notes.push(
                    "the stop signal reached the target while it wrote a heap snapshot or was exiting: SIGTERM waited until it was done (at most 60 s)".into(),
                );
            }
            stopping = Some((now, sent));
        }
        if let (Some((since, sent)), Target::Launched { grace, .. }) = (stopping, &*target)
            && now.duration_since(since) >= *grace
        {
            let sig = if sent == 1 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            send(pid, sig);
            stopping = Some((now, sent + 1));
        }
        if now.duration_since(start) >= snapshot_delay {
            snapshots.start(control, pid);
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
    }
    if let Target::Attached { pid } = target
        && reason == "detached"
    {
        collector.tick();
        stop_agent(control, &mut collector, *pid);
    }
    collector.finish();
    status.clear();
    let (exit_code, signal) = match exit {
        Some(st) => (st.code(), st.signal()),
        None => (None, None),
    };
    if signal.is_some() && reason == "exited" {
        reason = "killed";
    }
    Ok(End {
        end_ms: now_ms(),
        exit_code,
        signal,
        exit_status: match exit {
            Some(_) => exit_code.unwrap_or_else(|| 128 + signal.unwrap_or(0)),
            None => 0,
        },
        reason: reason.into(),
        stop_ms,
    })
}

/// How long a detaching agent may take for its last full GC and records.
const STOP_BUDGET: Duration = Duration::from_secs(15);

/// Asks the attached JS agent to stop (a full GC, so the final retained
/// heap is known, a last sample, then it removes itself) and waits for it.
fn stop_agent(control: &mut Control, collector: &mut Collector, pid: u32) {
    if control.send(pid, "stop", serde_json::json!({})).is_none() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < STOP_BUDGET && !collector.agent_gone {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        collector.poll_agent();
    }
}
