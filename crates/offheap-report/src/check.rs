//! `offheap check`'s outputs: the short text summary, JUnit XML (one test
//! case per gate and per lost allocation stack), GitHub Actions
//! annotations, and the section of `report.html`. They render
//! `Model::check` and compute nothing.

use crate::escape;
use crate::format::{file_line, frame_label};
use offheap_analysis::Model;
use offheap_analysis::check::{CheckOutcome, LeakGroup};
use offheap_format::units;
use offheap_symbols::{Frame, FrameKind};
use std::fmt::Write;

/// How many frames of a lost group the text and JUnit show.
const FRAMES_SHOWN: usize = 12;
/// How many lost groups the text lists (JUnit and summary.json list all).
const TEXT_GROUPS: usize = 10;

fn t(s: &str) -> std::borrow::Cow<'_, str> {
    escape::terminal(s)
}

/// "definitely lost: 1000 B in 10 blocks".
fn group_figure(g: &LeakGroup) -> String {
    format!(
        "{}: {} in {} block{}",
        g.class.replace('-', " "),
        units::bytes(g.bytes),
        g.blocks,
        if g.blocks == 1 { "" } else { "s" }
    )
}

/// Who allocated it: "lose (leak.c:6), called from JS run (test.js:4)".
pub fn group_origin(g: &LeakGroup) -> String {
    let mut s = if g.function.is_empty() {
        "an unknown stack".to_string()
    } else {
        let own = g
            .frames
            .iter()
            .find(|f| f.function == g.function && f.module == g.module);
        match own.map(file_line).filter(|l| !l.is_empty()) {
            Some(l) => format!("{} ({})", g.function, crate::format::basename(&l)),
            None => format!("{} in {}", g.function, crate::format::basename(&g.module)),
        }
    };
    if let Some(js) = &g.js
        && js.function != g.function
    {
        let _ = write!(s, ", from JS {}", js.function);
        match js.line {
            Some(l) => {
                let _ = write!(s, " ({}:{l})", crate::format::basename(&js.file));
            }
            None => {
                let _ = write!(s, " ({})", crate::format::basename(&js.file));
            }
        }
    }
    s
}

fn frame_line(f: &Frame) -> String {
    let fl = file_line(f);
    let what = frame_label(f);
    if fl.is_empty() || f.kind == FrameKind::Js {
        format!("{what} [{}]", crate::format::basename(&f.module))
    } else {
        format!("{what} ({fl})")
    }
}

/// The terminal summary of the gate (empty without a check).
pub fn text(model: &Model) -> String {
    let Some(c) = &model.check else {
        return String::new();
    };
    let mut o = String::new();
    let cmd = model
        .meta
        .command
        .iter()
        .map(|a| t(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let status = model.end.as_ref().map(|e| e.exit_status);
    let _ = writeln!(
        o,
        "offheap check: {} — {cmd}",
        if !c.passed {
            "FAILED"
        } else if status.is_some_and(|s| s != 0) {
            "gates passed, the command failed"
        } else {
            "passed"
        }
    );
    if let Some(e) = &model.end {
        let _ = writeln!(
            o,
            "  {} command: {}",
            if e.exit_status == 0 { "pass" } else { "FAIL" },
            match (e.exit_code, e.signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), _) => format!("exit {code}"),
                _ => format!("status {}", e.exit_status),
            }
        );
    }
    for g in &c.gates {
        let _ = writeln!(
            o,
            "  {} {}: {}",
            if g.passed { "pass" } else { "FAIL" },
            g.name,
            t(&g.message)
        );
        if g.name == "leaks-at-exit" {
            let shown: Vec<&LeakGroup> = c
                .leaks
                .lost
                .iter()
                .filter(|g| g.suppressed_by.is_none())
                .collect();
            for lg in shown.iter().take(TEXT_GROUPS) {
                let _ = writeln!(
                    o,
                    "      {} from {}",
                    group_figure(lg),
                    t(&group_origin(lg))
                );
                for f in lg.frames.iter().take(FRAMES_SHOWN) {
                    let _ = writeln!(o, "          at {}", t(&frame_line(f)));
                }
                if lg.frames.len() > FRAMES_SHOWN {
                    let _ = writeln!(
                        o,
                        "          ... {} more frames",
                        lg.frames.len() - FRAMES_SHOWN
                    );
                }
            }
            if shown.len() > TEXT_GROUPS {
                let _ = writeln!(
                    o,
                    "      ... and {} more lost stacks (summary.json, report.html)",
                    shown.len() - TEXT_GROUPS
                );
            }
        }
    }
    let l = &c.leaks;
    if l.reachable.blocks > 0 {
        let _ = writeln!(
            o,
            "  still reachable at exit (not a failure): {} in {} blocks",
            units::bytes(l.reachable.bytes),
            l.reachable.blocks
        );
    }
    if l.suppressed.blocks > 0 {
        let _ = writeln!(
            o,
            "  suppressed: {} in {} lost blocks{}",
            units::bytes(l.suppressed.bytes),
            l.suppressed.blocks,
            c.config
                .suppressions_file
                .as_deref()
                .map(|f| format!(" (by {})", t(f)))
                .unwrap_or_default()
        );
    }
    let unchecked: Vec<&str> = l
        .processes
        .iter()
        .filter(|p| !p.checked)
        .filter_map(|p| p.note.as_deref())
        .collect();
    for n in unchecked.iter().take(5) {
        let _ = writeln!(o, "  note: {}", t(n));
    }
    o
}

/// Escapes text for XML content and attributes (invalid characters become U+FFFD).
fn xml(s: &str) -> String {
    escape::html(s)
}

/// One JUnit test case: class, name, failure (message, body), skipped.
struct Case {
    class: String,
    name: String,
    failure: Option<(String, String)>,
    skipped: bool,
}

/// JUnit XML: one test suite, a test case for the command, for each gate,
/// and for each lost allocation stack (failures; suppressed ones skipped).
pub fn junit(model: &Model) -> String {
    let mut cases: Vec<Case> = Vec::new();
    if let Some(e) = &model.end {
        let failed = e.exit_status != 0;
        cases.push(Case {
            class: "offheap.check".into(),
            name: "command exits 0".into(),
            failure: failed.then(|| {
                let m = format!("the command exited with status {}", e.exit_status);
                (m.clone(), m)
            }),
            skipped: false,
        });
    }
    let empty = CheckOutcome::default();
    let c = model.check.as_ref().unwrap_or(&empty);
    for g in &c.gates {
        cases.push(Case {
            class: "offheap.check".into(),
            name: g.name.clone(),
            failure: (!g.passed).then(|| (g.message.clone(), g.message.clone())),
            skipped: false,
        });
    }
    for lg in &c.leaks.lost {
        let mut body = String::new();
        let _ = writeln!(body, "{} from {}", group_figure(lg), group_origin(lg));
        if lg.pids.len() == 1 {
            let _ = writeln!(body, "in pid {}", lg.pids[0]);
        } else {
            let _ = writeln!(body, "in {} processes", lg.pids.len());
        }
        for f in &lg.frames {
            let _ = writeln!(body, "    at {}", frame_line(f));
        }
        let name = format!("{} from {}", lg.class, group_origin(lg));
        let skipped = lg.suppressed_by.is_some();
        cases.push(Case {
            class: "offheap.check.leaks".into(),
            name,
            failure: Some((
                match &lg.suppressed_by {
                    Some(s) => format!("suppressed by {s}"),
                    None => group_figure(lg),
                },
                body,
            )),
            skipped,
        });
    }
    let failures = cases
        .iter()
        .filter(|c| c.failure.is_some() && !c.skipped)
        .count();
    let skipped = cases.iter().filter(|c| c.skipped).count();
    let time = model.recording_duration();
    let suite = format!("offheap check: {}", model.meta.command.join(" "));
    let mut o = String::new();
    o.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        o,
        "<testsuites name=\"offheap check\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        o,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"0\" time=\"{time:.3}\">",
        xml(&suite),
        cases.len()
    );
    for Case {
        class,
        name,
        failure,
        skipped: skip,
    } in &cases
    {
        let _ = write!(
            o,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"0\"",
            xml(class),
            xml(name)
        );
        match failure {
            None => o.push_str("/>\n"),
            Some((msg, body)) if *skip => {
                let _ = writeln!(
                    o,
                    ">\n      <skipped message=\"{}\"/>\n      <system-out>{}</system-out>\n    </testcase>",
                    xml(msg),
                    xml(body)
                );
            }
            Some((msg, body)) => {
                let _ = writeln!(
                    o,
                    ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                    xml(msg),
                    if class.ends_with("leaks") {
                        "leak"
                    } else {
                        "gate"
                    },
                    xml(body)
                );
            }
        }
    }
    o.push_str("  </testsuite>\n</testsuites>\n");
    o
}

/// JUnit XML for a check whose command could not run at all.
pub fn junit_error(message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"offheap check\" tests=\"1\" failures=\"0\" errors=\"1\">\n  \
<testsuite name=\"offheap check\" tests=\"1\" failures=\"0\" errors=\"1\">\n    \
<testcase classname=\"offheap.check\" name=\"command runs\" time=\"0\">\n      \
<error message=\"{m}\" type=\"error\">{m}</error>\n    </testcase>\n  </testsuite>\n</testsuites>\n",
        m = xml(message)
    )
}

/// Escapes a GitHub workflow command's message.
fn gh_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a GitHub workflow command's property value.
fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// The source position to annotate for a lost group: the JS owner, else
/// the innermost frame with a file that is not under /usr.
fn position(g: &LeakGroup) -> Option<(String, Option<u32>)> {
    if let Some(js) = &g.js {
        return Some((js.file.clone(), js.line));
    }
    g.frames.iter().find_map(|f| {
        let file = f.file.as_deref()?;
        (!file.is_empty() && !file.starts_with("/usr/")).then(|| (file.to_string(), f.line))
    })
}

/// GitHub Actions workflow commands (`::error ...::`), one per failed gate
/// and per lost allocation stack. Paths under `workspace` are made relative
/// to it, so GitHub can place them on the diff.
pub fn github_annotations(model: &Model, workspace: Option<&str>) -> String {
    let Some(c) = &model.check else {
        return String::new();
    };
    let mut o = String::new();
    let rel = |p: &str| -> String {
        let p = p.trim_start_matches("file://");
        match workspace {
            Some(w) if !w.is_empty() => p
                .strip_prefix(w)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| p.to_string()),
            _ => p.to_string(),
        }
    };
    for lg in c.leaks.lost.iter().filter(|g| g.suppressed_by.is_none()) {
        let mut props = format!("title={}", gh_prop(&format!("offheap check: {}", lg.class)));
        if let Some((file, line)) = position(lg) {
            let _ = write!(props, ",file={}", gh_prop(&rel(&file)));
            if let Some(l) = line {
                let _ = write!(props, ",line={l}");
            }
        }
        let mut msg = format!("{} from {}", group_figure(lg), group_origin(lg));
        for f in lg.frames.iter().take(FRAMES_SHOWN) {
            let _ = write!(msg, "\n  at {}", frame_line(f));
        }
        let _ = writeln!(o, "::error {props}::{}", gh_data(&msg));
    }
    for g in c
        .gates
        .iter()
        .filter(|g| !g.passed && g.name != "leaks-at-exit")
    {
        let _ = writeln!(
            o,
            "::error title={}::{}",
            gh_prop(&format!("offheap check: {}", g.name)),
            gh_data(&g.message)
        );
    }
    if let Some(g) = c
        .gates
        .iter()
        .find(|g| !g.passed && g.name == "leaks-at-exit")
        && c.leaks.lost.iter().all(|g| g.suppressed_by.is_some())
    {
        let _ = writeln!(
            o,
            "::error title={}::{}",
            gh_prop("offheap check: leaks-at-exit"),
            gh_data(&g.message)
        );
    }
    o
}

/// The `report.html` section of the gate (empty without a check).
pub fn html(model: &Model) -> String {
    let Some(c) = &model.check else {
        return String::new();
    };
    let e = escape::html;
    let mut o = String::new();
    let _ = write!(
        o,
        "<section id=\"check\"><h2>offheap check: {}</h2><table class=\"procs\"><tr><th>gate</th><th>result</th><th></th></tr>",
        if c.passed { "passed" } else { "FAILED" }
    );
    for g in &c.gates {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&g.name),
            if g.passed { "pass" } else { "<b>FAIL</b>" },
            e(&g.message)
        );
    }
    o.push_str("</table>");
    let groups = |o: &mut String, title: &str, gs: &[LeakGroup]| {
        if gs.is_empty() {
            return;
        }
        let _ = write!(o, "<h3>{}</h3>", e(title));
        for g in gs {
            let _ = write!(
                o,
                "<details><summary>{} from {}{}</summary><ol class=\"frames\">",
                e(&group_figure(g)),
                e(&group_origin(g)),
                g.suppressed_by
                    .as_deref()
                    .map(|s| format!(" — suppressed by <code>{}</code>", e(s)))
                    .unwrap_or_default()
            );
            for f in &g.frames {
                let _ = write!(o, "<li><code>{}</code></li>", e(&frame_line(f)));
            }
            o.push_str("</ol></details>");
        }
    };
    groups(&mut o, "Lost at exit", &c.leaks.lost);
    groups(
        &mut o,
        &format!(
            "Still reachable at exit (largest; {} in {} blocks in all)",
            units::bytes(c.leaks.reachable.bytes),
            c.leaks.reachable.blocks
        ),
        &c.leaks.reachable_top,
    );
    o.push_str("</section>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_escapes() {
        assert_eq!(gh_data("a%b\nc"), "a%25b%0Ac");
        assert_eq!(gh_prop("a:b,c"), "a%3Ab%2Cc");
    }
}
