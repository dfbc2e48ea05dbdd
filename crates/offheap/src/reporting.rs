//! `report`, `diff` and `snapshot`, and the end of `run`: read a recording,
//! analyse it, write summary.json and the reports, print the verdict.

use crate::cli::{DiffArgs, ReportArgs};
use crate::user_error;
use anyhow::{Context, Result};
use offheap_analysis::{Model, Options, analyze};
use offheap_format::{Recording, layout};

use std::path::Path;

pub struct AnalyzeOpts {
    pub min_age_s: f64,
    pub top: usize,
    /// Notes from the recording side (e.g. "static binary: no native data").
    pub extra_notes: Vec<String>,
}

fn open(dir: &Path) -> Result<Recording> {
    Recording::open(dir).map_err(|e| user_error(e.to_string()))
}

/// Opens a recording that holds at least one sample.
fn open_with_samples(dir: &Path) -> Result<Recording> {
    let rec = open(dir)?;
    if rec.proc.is_empty() && rec.node.is_empty() && rec.native.is_empty() {
        return Err(user_error(format!(
            "{}: the recording holds no samples (the target ended before the first interval?)",
            dir.display()
        )));
    }
    Ok(rec)
}

/// Analyses a recording (writes nothing).
pub fn build_model(dir: &Path, min_age_s: f64) -> Result<Model> {
    let rec = open_with_samples(dir)?;
    Ok(analyze(
        &rec,
        &Options {
            min_age_s,
            top: 10,
            window: None,
        },
    ))
}

/// Analyses a recording and writes summary.json and every report into it.
/// Only offheap's own outputs are (re)written; the recording is never touched.
pub fn build(dir: &Path, opts: &AnalyzeOpts) -> Result<Model> {
    let rec = open_with_samples(dir)?;
    let mut model = analyze(
        &rec,
        &Options {
            min_age_s: opts.min_age_s,
            top: opts.top,
            window: None,
        },
    );
    model.notes.extend(opts.extra_notes.iter().cloned());
    write_outputs(dir, &model)?;
    Ok(model)
}

fn write_outputs(dir: &Path, model: &Model) -> Result<()> {
    offheap_format::write_atomic(&dir.join(layout::SUMMARY), model.summary_json().as_bytes())
        .context("cannot write the summary")?;
    offheap_report::write_all(model, dir)
        .with_context(|| format!("cannot write the reports into {}", dir.display()))?;
    // metrics.prom ends with the analysed ledger (the live one could not
    // split malloc's regions).
    if let Some(l) = &model.rss_ledger {
        let path = dir.join(crate::collect::METRICS);
        let old = offheap_format::io::read_recording_file(&path, 1 << 20)
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let new = offheap_analysis::ledger::replace_prometheus(
            &old,
            &offheap_analysis::ledger::prometheus(model.focus, l),
        );
        offheap_format::write_atomic(&path, new.as_bytes()).context("cannot write metrics.prom")?;
    }
    Ok(())
}

/// Prints the verdict (and suspects) to stderr: stdout belongs to the target.
pub fn finish(dir: &Path, opts: &AnalyzeOpts, quiet: bool) -> Result<Model> {
    let model = build(dir, opts)?;
    if !quiet {
        eprint!("{}", render_text(&model));
        eprintln!(
            "report: {}",
            crate::terminal(&dir.join(offheap_report::HTML_FILE).display().to_string())
        );
    }
    Ok(model)
}

/// Dies quietly on a closed stdout (`offheap report DIR | head`), like other
/// command-line tools, instead of panicking.
pub fn restore_sigpipe() {
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn render_text(model: &Model) -> String {
    offheap_report::render_text(model)
}

pub fn report(args: ReportArgs) -> Result<u8> {
    let opts = AnalyzeOpts {
        min_age_s: args.min_age.as_secs_f64(),
        top: args.top,
        extra_notes: Vec::new(),
    };
    let model = build(&args.dir, &opts)?;
    if args.debug_stacks {
        let rec = open(&args.dir)?;
        for native in &rec.native {
            let n = native.snapshot_times_ms.len() as u32;
            println!(
                "pid {} snapshots {n} stacks {} modules {}",
                native.pid,
                native.stacks.len(),
                native.modules.len()
            );
            for m in &native.modules {
                let r: Vec<String> = m
                    .ranges
                    .iter()
                    .map(|(s, e, _)| format!("{s:#x}-{e:#x}"))
                    .collect();
                println!(
                    "  module {} bias {:#x} gen {} {}",
                    crate::terminal(&m.path),
                    m.bias,
                    m.generation,
                    r.join(" ")
                );
            }
            for s in &native.series {
                let st = &native.stacks[s.stack as usize];
                let mods: Vec<String> = st
                    .frames
                    .iter()
                    .take(64)
                    .map(|&a| {
                        native
                            .modules
                            .iter()
                            .find(|m| m.contains(a))
                            .map(|m| {
                                format!(
                                    "{}+{:#x}",
                                    crate::terminal(m.path.rsplit('/').next().unwrap_or("")),
                                    a - m.bias
                                )
                            })
                            .unwrap_or_else(|| format!("{a:#x}"))
                    })
                    .collect();
                let at = |i: u32| s.at(i);
                let (a, b) = (at(n.saturating_sub(2)), at(n / 2));
                println!(
                    "  stack {} {:?} alloc {} live(mid) {} live(end-1) {} aged(mid) {} aged(end-1) {} [{}]",
                    s.stack,
                    st.kind,
                    a.alloc_bytes,
                    b.live_bytes,
                    a.live_bytes,
                    b.aged_live_bytes,
                    a.aged_live_bytes,
                    mods.join(" ")
                );
            }
        }
    }
    if args.debug_timeline {
        for series in &model.timeline.series {
            let pts: Vec<String> = series
                .points
                .iter()
                .map(|(t, v)| format!("{t:.1}:{:.1}", v / 1048576.0))
                .collect();
            println!("{} (MiB) {}", series.name, pts.join(" "));
        }
        println!(
            "warmup_end {:.1} duration {:.1}",
            model.timeline.warmup_end, model.timeline.duration
        );
    }
    if args.json {
        println!("{}", model.summary_json());
    } else {
        print!("{}", render_text(&model));
        if !model.profile.stacks.is_empty() {
            println!();
            print!(
                "{}",
                offheap_report::top_text(&model, offheap_report::Weight::LiveBytes, args.top)
            );
        }
    }
    Ok(0)
}

pub fn diff(args: DiffArgs) -> Result<u8> {
    let with_native = |dir: &Path| -> Result<Recording> {
        let rec = open(dir)?;
        if rec.native.is_empty() {
            return Err(user_error(format!(
                "{}: no native allocation data to diff (recorded with --no-native, by attach, or a static/musl target)",
                dir.display()
            )));
        }
        Ok(rec)
    };
    let a = with_native(&args.a)?;
    let opts = |window| Options {
        min_age_s: 0.0,
        top: args.top,
        window,
    };
    let model = match &args.b {
        Some(b_dir) => {
            if args.from.is_some() || args.to.is_some() {
                return Err(user_error(
                    "--from/--to compare two windows of ONE recording; give either two recordings or one with --from/--to",
                ));
            }
            let b = with_native(b_dir)?;
            let ma = analyze(&a, &opts(None));
            let mb = analyze(&b, &opts(None));
            offheap_analysis::diff::diff_models(&ma, &mb, args.top)
        }
        None => {
            let (Some(from), Some(to)) = (args.from, args.to) else {
                return Err(user_error(
                    "give two recordings (offheap diff A B), or one with --from and --to",
                ));
            };
            let (from, to) = (from.as_secs_f64(), to.as_secs_f64());
            if to <= from {
                return Err(user_error("--to must be later than --from"));
            }
            let ma = analyze(&a, &opts(Some((0.0, from))));
            let mut mb = analyze(&a, &opts(Some((0.0, to))));
            mb.profile.window = (from, to);
            offheap_analysis::diff::diff_models(&ma, &mb, args.top)
        }
    };
    print!(
        "{}",
        offheap_report::top_text(&model, offheap_report::Weight::LeakedBytes, args.top)
    );
    for n in &model.notes {
        println!("note: {}", crate::terminal(n));
    }
    if let Some(out) = &args.out {
        let dir = crate::outdir::create(Some(out), "diff")?
            .path()
            .to_path_buf();
        write_outputs(&dir, &model)?;
        eprintln!(
            "diff reports: {}",
            crate::terminal(&dir.display().to_string())
        );
    }
    Ok(0)
}
