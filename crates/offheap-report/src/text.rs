//! Text for the terminal: the verdict with its suspects and their stacks
//! ([`render_text`]), and a top list like `jeprof --text` ([`top_text`]).
//! Output is deterministic (no clock, no hash order) for snapshot tests.
//! Every string that came from the target or the recording goes through
//! [`t`] ([`crate::escape::terminal`]): no control character reaches the
//! terminal and none breaks a line.

use crate::Weight;
use crate::format::{self, basename, file_line, frame_label, kind_str};
use offheap_analysis::{Kind, Model, ProcessModel, Suspect, SuspectKind};
use offheap_symbols::FrameKind;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;

/// Terminal-safe text of a recorded string.
fn t(s: &str) -> Cow<'_, str> {
    crate::escape::terminal(s)
}

/// A headline for a verdict kind.
pub fn kind_headline(k: Kind) -> &'static str {
    match k {
        Kind::JsHeap => "JS heap leak: the V8 heap retained after GC grows",
        Kind::External => "External memory leak: Buffer/ArrayBuffer backing stores grow",
        Kind::Native => "Native memory leak: malloc/mmap live bytes grow outside the V8 heap",
        Kind::Fragmentation => {
            "Allocator fragmentation: RSS grows while live native bytes stay flat"
        }
        Kind::None => "No leak: memory plateaus after warm-up",
    }
}

/// How many frames of a suspect's stack the terminal shows.
pub const TEXT_STACK_DEPTH: usize = 16;
/// How many suspects the terminal shows.
pub const TEXT_SUSPECTS: usize = 5;

/// The verdict, growth rates, top suspects with their stacks, and notes.
pub fn render_text(model: &Model) -> String {
    let mut o = String::new();
    let cmd = if model.meta.command.is_empty() {
        "(unknown command)".to_string()
    } else {
        model
            .meta
            .command
            .iter()
            .map(|a| t(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(o, "offheap: {cmd}");
    let mut facts = Vec::new();
    if model.meta.pid != 0 {
        facts.push(format!("pid {}", model.meta.pid));
    }
    facts.push(format::seconds(model.recording_duration()));
    if let Some(end) = &model.end {
        facts.push(match (end.exit_code, end.signal) {
            (_, Some(sig)) => format!("killed by signal {sig}"),
            (Some(c), None) => format!("exit {c}"),
            (None, None) => t(&end.reason).into_owned(),
        });
    }
    let _ = writeln!(o, "  ({})", facts.join(", "));
    o.push('\n');
    let multi = model.processes.len() > 1;
    if multi {
        let _ = writeln!(o, "{}\n", t(&model.headline));
    }
    verdict_text(&mut o, model);
    owners_text(&mut o, model);
    if multi {
        processes_text(&mut o, model);
    }
    if model.check.is_some() {
        o.push('\n');
        o.push_str(&crate::check::text(model));
    }

    if !model.notes.is_empty() {
        o.push_str("\nNotes:\n");
        for n in &model.notes {
            let _ = writeln!(o, "  - {}", t(n.trim_end()));
        }
    }
    o
}

/// The JS owners of native memory (issue 12.3), when snapshots were taken.
fn owners_text(o: &mut String, model: &Model) {
    if !model.owners.is_empty() {
        let _ = writeln!(
            o,
            "\nJS owners of native memory (heap snapshot joined with the native stacks by mechanism):"
        );
        for f in &model.owners {
            let ranks: Vec<String> = f.suspects.iter().map(|r| format!("#{r}")).collect();
            let _ = writeln!(o, "  {}", t(&f.text));
            let _ = writeln!(
                o,
                "    {} {} in the snapshot{}; native bytes of suspect{} {}",
                t(&f.class),
                t(&f.native),
                if f.reported_bytes > 0 {
                    format!(", {} reported by Node", format::bytes(f.reported_bytes))
                } else {
                    String::new()
                },
                if ranks.len() == 1 { "" } else { "s" },
                ranks.join(", ")
            );
            if let Some(js) = &f.js {
                let _ = writeln!(o, "    your code: {}", t(&js_owner_text(js)));
            }
            if let Some(a) = &f.allocated_by {
                let _ = writeln!(o, "    allocated in {}", t(a));
            }
            if !f.path_text.is_empty() {
                let _ = writeln!(o, "    path: {}", t(&f.path_text));
            }
        }
    }
}

/// How many other processes get a section of their own in the terminal.
pub const TEXT_PROCESS_SECTIONS: usize = 8;
/// How many processes with no finding the terminal lists.
pub const TEXT_QUIET_PROCESSES: usize = 10;

/// One line per process; then a section for each other notable one.
fn processes_text(o: &mut String, model: &Model) {
    let _ = writeln!(o, "\nProcesses ({} recorded):", model.processes.len());
    // Every process with a finding, and the first quiet ones.
    let mut quiet = 0;
    for p in &model.processes {
        let focus = p.pid == model.focus;
        if !(focus || p.root || p.notable()) {
            quiet += 1;
            if quiet > TEXT_QUIET_PROCESSES {
                continue;
            }
        }
        let _ = writeln!(o, "  {}", t(&process_line(p, focus)));
    }
    if quiet > TEXT_QUIET_PROCESSES {
        let _ = writeln!(
            o,
            "  ... and {} more processes with no finding (summary.json and report.html list them all)",
            quiet - TEXT_QUIET_PROCESSES
        );
    }
    let others: Vec<&ProcessModel> = model
        .processes
        .iter()
        .filter(|p| p.pid != model.focus && p.notable())
        .collect();
    for p in others.iter().take(TEXT_PROCESS_SECTIONS) {
        let _ = writeln!(o, "\n== {} ==", t(&p.label()));
        let view = model.process_view(p);
        verdict_text(o, &view);
    }
    if others.len() > TEXT_PROCESS_SECTIONS {
        let _ = writeln!(
            o,
            "\n... and {} more processes with a finding in report.html",
            others.len() - TEXT_PROCESS_SECTIONS
        );
    }
}

/// `child 124 (./worker), parent 123: native +1.00 MiB/s, 0.2-6.1 s (exited early)`.
pub fn process_line(p: &ProcessModel, focus: bool) -> String {
    let mut l = p.label();
    if !p.root
        && let Some(pp) = p.ppid
    {
        let _ = write!(l, ", parent {pp}");
    }
    let _ = write!(l, ": {}", p.verdict.primary.as_str());
    if p.verdict.primary != Kind::None {
        let _ = write!(l, " {}", format::rate(p.leak_rate()));
    }
    let _ = write!(l, ", {:.1}-{:.1} s", p.start, p.end);
    if p.exited_early {
        let life = p.end - p.start;
        let life = if life < 1.0 {
            format!("{:.0} ms", life.max(0.0) * 1000.0)
        } else {
            format::seconds(life)
        };
        let _ = write!(l, " (exited early, lived {life})");
    }
    if focus {
        l.push_str("  <- the figures above");
    }
    l
}

/// The verdict, growth rates and top suspects of a Model (the focus, or a
/// process view).
fn verdict_text(o: &mut String, model: &Model) {
    match &model.verdict {
        Some(v) => {
            let _ = writeln!(
                o,
                "Verdict: {} (confidence {:.0}%)",
                v.primary.as_str(),
                v.confidence.clamp(0.0, 1.0) * 100.0
            );
            let _ = writeln!(o, "  {}", kind_headline(v.primary));
            let others: Vec<&str> = v
                .kinds
                .iter()
                .filter(|k| **k != v.primary)
                .map(|k| k.as_str())
                .collect();
            if !others.is_empty() {
                let _ = writeln!(o, "  Also: {}", others.join(", "));
            }
            for line in v.explanation.lines().filter(|l| !l.trim().is_empty()) {
                let _ = writeln!(o, "  {}", t(line.trim_end()));
            }
            if !v.next_steps.is_empty() {
                o.push_str("\nNext steps:\n");
                for (i, s) in v.next_steps.iter().enumerate() {
                    let _ = writeln!(o, "  {}. {}", i + 1, t(s.trim_end()));
                }
            }
        }
        None => o.push_str("Verdict: not available (too little data was recorded)\n"),
    }

    let _ = writeln!(
        o,
        "\nGrowth after warm-up (from {}):",
        format::seconds(model.timeline.warmup_end)
    );
    let g = &model.growth;
    let p = &model.peak;
    let mut row = |name: &str, rate: Option<f64>, peak: Option<u64>| {
        if rate.is_none() && peak.is_none() {
            return;
        }
        let r = rate.map(format::rate).unwrap_or_else(|| "-".into());
        let pk = peak
            .map(|v| format!("peak {}", format::bytes(v)))
            .unwrap_or_default();
        let line = format!("  {name:<15}{r:>14}   {pk}");
        let _ = writeln!(o, "{}", line.trim_end());
    };
    row("rss", Some(g.rss), Some(p.rss));
    for (name, rate, peak) in [
        ("heap_used", g.heap_used, p.heap_used),
        ("external", g.external, p.external),
        ("array_buffers", g.array_buffers, p.array_buffers),
    ] {
        if format::has_js_figure(model, name) {
            row(name, Some(rate), Some(peak));
        }
    }
    row("native_live", g.native_live, p.native_live);
    row("allocator_free", g.allocator_free, None);
    if let Some(l) = &model.rss_ledger {
        ledger_text(o, l);
    }

    if !model.suspects.is_empty() {
        let _ = writeln!(
            o,
            "\nTop suspects (ranked by sustained growth of live bytes):"
        );
        for s in model.suspects.iter().take(TEXT_SUSPECTS) {
            suspect_text(o, s);
            for f in model.owners.iter().filter(|f| f.suspects.contains(&s.rank)) {
                let _ = writeln!(o, "     held in JS: {}", t(&f.text));
            }
        }
        if model.suspects.len() > TEXT_SUSPECTS {
            let _ = writeln!(
                o,
                "\n  ... and {} more suspects in report.html",
                model.suspects.len() - TEXT_SUSPECTS
            );
        }
    }
}

/// The RSS ledger at the end of the analysis window: the parts of at least
/// 0.5% of RSS, largest first, then the rest together and `unexplained`.
fn ledger_text(o: &mut String, l: &offheap_analysis::ledger::Ledger) {
    let _ = writeln!(
        o,
        "\nWhere the RSS is (at {}, RSS {}):",
        format::seconds(l.at_s),
        format::bytes(l.rss)
    );
    let pct = |v: f64| {
        if l.rss == 0 {
            0.0
        } else {
            100.0 * v / l.rss as f64
        }
    };
    let mut parts: Vec<(offheap_analysis::ledger::Part, u64)> =
        l.parts.iter().map(|(p, v)| (*p, *v)).collect();
    parts.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
    let (mut rest, mut n_rest) = (0u64, 0);
    for (p, v) in parts {
        if pct(v as f64) < 0.5 {
            rest += v;
            n_rest += 1;
            continue;
        }
        let alloc = l
            .allocated
            .get(&p)
            .map(|a| format!("  (allocated {})", format::bytes(*a)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<40}{:>11} {:>5.1}%{alloc}",
            p.label(),
            format::bytes(v),
            pct(v as f64)
        );
        if p == offheap_analysis::ledger::Part::AnonMmap {
            anon_mmap_callers(o, l, &pct);
        }
    }
    if n_rest > 0 {
        let _ = writeln!(
            o,
            "  {:<40}{:>11} {:>5.1}%",
            format!("{n_rest} smaller parts"),
            format::bytes(rest),
            pct(rest as f64)
        );
    }
    let u = l.unexplained;
    let _ = writeln!(
        o,
        "  {:<40}{:>11} {:>5.1}%",
        "unexplained",
        format!(
            "{}{}",
            if u < 0 { "-" } else { "" },
            format::bytes(u.unsigned_abs())
        ),
        pct(u as f64)
    );
}

/// The largest callers of the anonymous mmaps, under their part's row:
/// three, then how many more.
fn anon_mmap_callers(
    o: &mut String,
    l: &offheap_analysis::ledger::Ledger,
    pct: &dyn Fn(f64) -> f64,
) {
    let mut callers: Vec<(&String, u64)> =
        l.anon_mmap_by_caller.iter().map(|(c, v)| (c, *v)).collect();
    callers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (c, v) in callers.iter().take(3) {
        let _ = writeln!(
            o,
            "    {:<38}{:>11} {:>5.1}%",
            t(&ellipsize(c, 38)),
            format::bytes(*v),
            pct(*v as f64)
        );
    }
    if callers.len() > 3 {
        let rest: u64 = callers[3..].iter().map(|(_, v)| v).sum();
        let _ = writeln!(
            o,
            "    {:<38}{:>11} {:>5.1}%",
            format!("{} more callers", callers.len() - 3),
            format::bytes(rest),
            pct(rest as f64)
        );
    }
}

/// `s` cut to `n` characters, the cut marked with `...`.
fn ellipsize(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n.saturating_sub(3)).collect();
        o.push_str("...");
        o
    }
}

/// `handle (server.js:28)`.
pub(crate) fn js_owner_text(js: &offheap_analysis::JsOwner) -> String {
    match js.line {
        Some(l) => format!("{} ({}:{l})", js.function, basename(&js.file)),
        None => format!("{} ({})", js.function, basename(&js.file)),
    }
}

fn suspect_text(o: &mut String, s: &Suspect) {
    let kind = match s.thread {
        Some(0) | None => s.kind.as_str().to_string(),
        Some(t) => format!("{}, worker thread {t}", s.kind.as_str()),
    };
    let count = if s.kind == SuspectKind::JsHeap {
        String::new()
    } else {
        format!(" in {} allocations", format::count(s.allocations))
    };
    let _ = writeln!(
        o,
        "\n#{:<3}{}  peak live {}{count}  [{kind}]",
        s.rank,
        format::rate(s.bytes_per_s),
        format::bytes(s.live_bytes),
    );
    let module = if s.module.is_empty() {
        "?"
    } else {
        basename(&s.module)
    };
    let function = if s.function.is_empty() {
        "?"
    } else {
        s.function.as_str()
    };
    match &s.js {
        Some(js) if js.function == s.function && js.file == s.module => {
            let _ = writeln!(o, "     in {}", t(&js_owner_text(js)));
        }
        Some(js) => {
            let _ = writeln!(o, "     in {} ({})", t(function), t(module));
            let _ = writeln!(o, "     your code: {}", t(&js_owner_text(js)));
        }
        None => {
            let _ = writeln!(o, "     in {} ({})", t(function), t(module));
        }
    }
    // The native mechanism beside the JS owner: the innermost native frame.
    // Said once: not when the owner line above already names it.
    if s.js.is_some()
        && let Some(f) = s.frames.first().filter(|f| f.kind == FrameKind::Native)
        && !(f.function == s.function && f.module == s.module)
    {
        let _ = writeln!(
            o,
            "     allocates in: {} ({})",
            t(&format::function_name(f)),
            t(basename(&f.module))
        );
    }
    if let Some(h) = &s.hint {
        let _ = writeln!(o, "     hint: {}", t(h.trim_end()));
    }
    for (i, f) in s.frames.iter().enumerate().take(TEXT_STACK_DEPTH) {
        let mut line = format!(
            "       #{i:<2} {:<8}{}",
            kind_str(f.kind),
            t(&format::function_name(f))
        );
        let fl = file_line(f);
        if !fl.is_empty() {
            let _ = write!(line, "  at {}", t(&fl));
        }
        if !f.module.is_empty()
            && f.module != "[jit]"
            && f.file.as_deref() != Some(f.module.as_str())
        {
            let _ = write!(line, "  [{}]", t(basename(&f.module)));
        }
        if f.inlined {
            line.push_str("  (inlined)");
        }
        let _ = writeln!(o, "{line}");
    }
    if s.frames.len() > TEXT_STACK_DEPTH {
        let _ = writeln!(
            o,
            "       ... {} more frames",
            s.frames.len() - TEXT_STACK_DEPTH
        );
    }
}

/// A top list like `jeprof --text`: per function, `flat` (weight of stacks
/// whose innermost frame it is) and `cum` (weight of stacks it appears in),
/// heaviest flat first, at most `limit` rows.
pub fn top_text(model: &Model, weight: Weight, limit: usize) -> String {
    struct Row {
        name: String,
        flat: u64,
        cum: u64,
        /// Index of the last stack counted in `cum` (+1; 0 = none).
        seen: usize,
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut by_frame: crate::flame::FastMap<&offheap_symbols::Frame, usize> = Default::default();
    let mut row_of = |name: String, rows: &mut Vec<Row>| -> usize {
        *by_name.entry(name).or_insert_with_key(|k| {
            rows.push(Row {
                name: k.clone(),
                flat: 0,
                cum: 0,
                seen: 0,
            });
            rows.len() - 1
        })
    };
    let mut total = 0u64;
    let mut nstacks = 0usize;
    for (si, s) in model.profile.stacks.iter().enumerate() {
        let w = weight.of(s);
        if w == 0 {
            continue;
        }
        total += w;
        nstacks += 1;
        for (i, f) in s.frames.iter().enumerate() {
            let r = match by_frame.get(f) {
                Some(&r) => r,
                None => {
                    let mut name = frame_label(f);
                    if f.kind != offheap_symbols::FrameKind::Js && !f.module.is_empty() {
                        let _ = write!(name, " [{}]", basename(&f.module));
                    }
                    let r = row_of(name, &mut rows);
                    by_frame.insert(f, r);
                    r
                }
            };
            let row = &mut rows[r];
            if i == 0 {
                row.flat += w;
            }
            if row.seen != si + 1 {
                row.cum += w;
                row.seen = si + 1;
            }
        }
        if s.frames.is_empty() {
            let r = row_of(crate::flame::NO_STACK.to_string(), &mut rows);
            rows[r].flat += w;
            rows[r].cum += w;
        }
    }
    let mut list: Vec<(String, Row)> = rows.into_iter().map(|r| (r.name.clone(), r)).collect();
    list.sort_by(|a, b| {
        b.1.flat
            .cmp(&a.1.flat)
            .then(b.1.cum.cmp(&a.1.cum))
            .then(a.0.cmp(&b.0))
    });

    let mut o = String::new();
    let interval = match model.profile.sample_interval {
        0 | 1 => "exact".to_string(),
        n => format!("sampling interval {}", format::bytes(n)),
    };
    let _ = writeln!(
        o,
        "Total: {} {} in {} stacks ({interval})",
        weight.fmt_value(total),
        weight.title(),
        format::count(nstacks as u64)
    );
    let _ = writeln!(
        o,
        "{:>11} {:>6} {:>6} {:>11} {:>6}  function",
        "flat", "flat%", "sum%", "cum", "cum%"
    );
    let mut sum = 0u64;
    for (name, r) in list.iter().take(limit) {
        sum += r.flat;
        let _ = writeln!(
            o,
            "{:>11} {:>6} {:>6} {:>11} {:>6}  {}",
            weight.fmt_value(r.flat),
            format::pct(r.flat, total),
            format::pct(sum, total),
            weight.fmt_value(r.cum),
            format::pct(r.cum, total),
            t(name)
        );
    }
    if list.len() > limit {
        let _ = writeln!(o, "({} more functions not shown)", list.len() - limit);
    }
    o
}
