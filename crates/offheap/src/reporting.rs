//! `report`, `diff` and `snapshot`, and the end of `run`: read a recording,
//! analyse it, write summary.json and the reports, print the verdict.

use crate::cli::{DiffArgs, ReportArgs, SnapshotArgs};
use crate::user_error;
use anyhow::{Context, Result};
use offheap_analysis::{Model, Options, analyze};
use offheap_format::{Recording, layout};
use std::fs;
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

/// Analyses a recording and writes summary.json and every report into it.
pub fn build(dir: &Path, opts: &AnalyzeOpts) -> Result<Model> {
    let rec = open(dir)?;
    if rec.proc.is_empty() && rec.node.is_empty() && rec.native.is_empty() {
        return Err(user_error(format!(
            "{}: the recording holds no samples (the target ended before the first interval?)",
            dir.display()
        )));
    }
    let mut model = analyze(&rec, &Options { min_age_s: opts.min_age_s, top: opts.top, window: None });
    model.notes.extend(opts.extra_notes.iter().cloned());
    // The recording may belong to someone else's directory listing; never
    // overwrite anything but our own outputs.
    write_outputs(dir, &model)?;
    Ok(model)
}

fn write_outputs(dir: &Path, model: &Model) -> Result<()> {
    let path = dir.join(layout::SUMMARY);
    let tmp = dir.join(".summary.json.tmp");
    fs::write(&tmp, model.summary_json()).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Prints the verdict (and suspects) to stderr: stdout belongs to the target.
pub fn finish(dir: &Path, opts: &AnalyzeOpts, quiet: bool) -> Result<Model> {
    let model = build(dir, opts)?;
    if !quiet {
        eprint!("{}", render_text(&model));
        eprintln!("recording and reports: {}", dir.display());
    }
    Ok(model)
}

pub fn render_text(model: &Model) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(v) = &model.verdict {
        let kinds: Vec<&str> = v.kinds.iter().map(|k| k.as_str()).collect();
        let _ = writeln!(s, "\nverdict: {} (confidence {:.0}%)", kinds.join(", "), v.confidence * 100.0);
        let _ = writeln!(s, "  {}", v.explanation);
        if !model.suspects.is_empty() {
            let _ = writeln!(s, "top suspects (growth of live native bytes):");
            for sus in model.suspects.iter().take(5) {
                let _ = writeln!(
                    s,
                    "  #{} {}/s  live {}  {} in {}",
                    sus.rank,
                    crate::status::human_bytes(sus.bytes_per_s),
                    crate::status::human_bytes(sus.live_bytes as f64),
                    sus.function,
                    sus.module
                );
                for f in sus.frames.iter().take(12) {
                    let loc = match (&f.file, f.line) {
                        (Some(file), Some(line)) => format!(" ({file}:{line})"),
                        _ => String::new(),
                    };
                    let _ = writeln!(s, "      {:?} {}{}", f.kind, f.function, loc);
                }
                if let Some(h) = &sus.hint {
                    let _ = writeln!(s, "      hint: {h}");
                }
            }
        }
        let _ = writeln!(s, "next steps:");
        for step in &v.next_steps {
            let _ = writeln!(s, "  - {step}");
        }
    }
    for n in &model.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

pub fn report(args: ReportArgs) -> Result<u8> {
    let opts = AnalyzeOpts { min_age_s: args.min_age.as_secs_f64(), top: args.top, extra_notes: Vec::new() };
    let model = build(&args.dir, &opts)?;
    if args.debug_timeline {
        for series in &model.timeline.series {
            let pts: Vec<String> =
                series.points.iter().map(|(t, v)| format!("{t:.1}:{:.1}", v / 1e6)).collect();
            println!("{} (MB) {}", series.name, pts.join(" "));
        }
        println!("warmup_end {:.1} duration {:.1}", model.timeline.warmup_end, model.timeline.duration);
    }
    if args.json {
        println!("{}", model.summary_json());
    } else {
        print!("{}", render_text(&model));
    }
    Ok(0)
}

pub fn diff(_args: DiffArgs) -> Result<u8> {
    Err(user_error("diff is not available in this build"))
}

pub fn snapshot(_args: SnapshotArgs) -> Result<u8> {
    Err(user_error("snapshot is not available in this build"))
}
