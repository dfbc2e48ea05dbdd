//! The analysed part of `/metrics` (`offheap run --serve`): the verdict so
//! far, the growth rates and the top suspects as labelled series, in
//! Prometheus' text exposition format (version 0.0.4). The telemetry and the
//! RSS ledger come from `metrics.prom`, which the CLI writes each interval;
//! this adds what only an analysis knows.
//!
//! Names follow Prometheus' conventions: base units (`_bytes`,
//! `_bytes_per_second`, `_ratio`), gauges only (nothing here is a counter).
//! The cardinality is bounded: at most [`MAX_SUSPECTS`] suspect series, one
//! per rank, and label values cut at [`MAX_LABEL`] characters.

use offheap_analysis::Model;
use std::fmt::Write;

/// Suspects exported, at most.
pub const MAX_SUSPECTS: usize = 10;

/// Label values longer than this (C++ templates) are cut, with `…`.
pub const MAX_LABEL: usize = 200;

/// A label value escaped for the exposition format: `\` as `\\`, `"` as
/// `\"`, a newline as `\n`; cut at [`MAX_LABEL`] characters.
pub fn label_value(s: &str) -> String {
    let mut o = String::with_capacity(s.len().min(MAX_LABEL) + 2);
    for (i, c) in s.chars().enumerate() {
        if i == MAX_LABEL {
            o.push('…');
            break;
        }
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            // Other control characters are legal but unreadable: dropped.
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn family(o: &mut String, name: &str, help: &str) {
    let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n");
}

/// A float as the exposition format writes it (`NaN`, `+Inf`, or a number).
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Whole bytes print without a fraction.
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// The verdict, the growth rates and the top suspects of `model`, labelled
/// with the pid the figures describe (the Model's focus).
pub fn prometheus(model: &Model) -> String {
    let pid = if model.focus != 0 {
        model.focus
    } else {
        model.meta.pid
    };
    let mut o = String::new();
    if let Some(v) = &model.verdict {
        family(
            &mut o,
            "offheap_verdict",
            "The verdict so far: 1 for each kind of growth found (js-heap, external, native, fragmentation, none).",
        );
        for k in &v.kinds {
            let _ = writeln!(
                o,
                "offheap_verdict{{pid=\"{pid}\",kind=\"{}\"}} 1",
                k.as_str()
            );
        }
        family(
            &mut o,
            "offheap_verdict_confidence_ratio",
            "Confidence of the verdict so far, 0 to 1.",
        );
        let _ = writeln!(
            o,
            "offheap_verdict_confidence_ratio{{pid=\"{pid}\"}} {}",
            num(v.confidence)
        );
    }
    family(
        &mut o,
        "offheap_growth_bytes_per_second",
        "Sustained growth after warm-up, by series (robust slope of the floors after GC).",
    );
    let g = &model.growth;
    let series = [
        ("rss", Some(g.rss)),
        ("heap_used", Some(g.heap_used)),
        ("external", Some(g.external)),
        ("array_buffers", Some(g.array_buffers)),
        ("native_live", g.native_live),
        ("allocator_free", g.allocator_free),
    ];
    for (name, v) in series {
        if let Some(v) = v {
            let _ = writeln!(
                o,
                "offheap_growth_bytes_per_second{{pid=\"{pid}\",series=\"{name}\"}} {}",
                num(v)
            );
        }
    }
    if model.suspects.is_empty() {
        return o;
    }
    let labels = |s: &offheap_analysis::Suspect| {
        let module = s.module.rsplit('/').next().unwrap_or(&s.module);
        let mut l = format!(
            "pid=\"{pid}\",rank=\"{}\",kind=\"{}\",suspect=\"{}\",module=\"{}\"",
            s.rank,
            s.kind.as_str(),
            label_value(&s.function),
            label_value(module)
        );
        if let Some(js) = &s.js {
            let _ = write!(l, ",js_function=\"{}\"", label_value(&js.function));
        }
        l
    };
    let top = &model.suspects[..model.suspects.len().min(MAX_SUSPECTS)];
    family(
        &mut o,
        "offheap_suspect_live_bytes",
        "Live bytes of each top suspect (peak in the analysis window; sampled, scaled to bytes).",
    );
    for s in top {
        let _ = writeln!(
            o,
            "offheap_suspect_live_bytes{{{}}} {}",
            labels(s),
            s.live_bytes
        );
    }
    family(
        &mut o,
        "offheap_suspect_growth_bytes_per_second",
        "Sustained growth of the live bytes of each top suspect.",
    );
    for s in top {
        let _ = writeln!(
            o,
            "offheap_suspect_growth_bytes_per_second{{{}}} {}",
            labels(s),
            num(s.bytes_per_s)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label_value("x\ny"), "x\\ny");
        assert_eq!(label_value("t\u{1b}[31m"), "t [31m");
        let long = "f".repeat(500);
        let cut = label_value(&long);
        assert_eq!(cut.chars().count(), MAX_LABEL + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn numbers() {
        assert_eq!(num(1048576.0), "1048576");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(f64::NEG_INFINITY), "-Inf");
    }
}
