//! Number and frame formatting shared by every reporter, deterministic so
//! that snapshot tests hold.

use offheap_symbols::{Frame, FrameKind};

pub use offheap_format::units::{bytes, bytes_f, rate};

/// `1234567` -> `"1,234,567"`.
pub fn count(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds for humans: `"12.3 s"`, `"4 min 05 s"`.
pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        let t = s.round() as u64;
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        let t = s.round() as u64;
        format!("{} h {:02} min", t / 3600, (t % 3600) / 60)
    }
}

/// True if the Model has the figure `name` ("heap_used", "external",
/// "array_buffers"): a series of that name, or a non-zero growth or peak.
/// Keeps Node-only rows out of reports on non-Node targets.
pub fn has_js_figure(m: &offheap_analysis::Model, name: &str) -> bool {
    let (g, p) = match name {
        "heap_used" => (m.growth.heap_used, m.peak.heap_used),
        "external" => (m.growth.external, m.peak.external),
        "array_buffers" => (m.growth.array_buffers, m.peak.array_buffers),
        _ => return true,
    };
    m.meta.node || m.timeline.series(name).is_some() || g != 0.0 || p != 0
}

/// `part/total` as a percentage with one decimal.
pub fn pct(part: u64, total: u64) -> String {
    if total == 0 {
        "0.0%".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / total as f64)
    }
}

/// Last path component (`/a/b/leak.node` -> `leak.node`); the input when it has none.
pub fn basename(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    match t.rfind('/') {
        Some(i) if i + 1 < t.len() => &t[i + 1..],
        _ => path,
    }
}

/// The short tag of a frame kind: `native`, `js`, `builtin`, `unknown`, `queued`.
pub fn kind_str(k: FrameKind) -> &'static str {
    match k {
        FrameKind::Native => "native",
        FrameKind::Js => "js",
        FrameKind::Builtin => "builtin",
        FrameKind::Unknown => "unknown",
        FrameKind::Queued => "queued",
    }
}

/// The name a frame goes by in flame graphs, folded stacks and top lists.
/// JS functions carry their script's base name and line, since many are
/// anonymous or share a name; an empty name becomes something visible.
pub fn frame_label(f: &Frame) -> String {
    let name = function_name(f);
    match (f.kind, &f.file) {
        (FrameKind::Js, Some(file)) if !file.is_empty() => {
            // Node's own modules keep their full id (`node:internal/...`).
            let short = if file.starts_with("node:") {
                file.as_str()
            } else {
                basename(file)
            };
            match f.line {
                Some(l) if l > 0 => format!("{name} {short}:{l}"),
                _ => format!("{name} {short}"),
            }
        }
        _ => name,
    }
}

/// The frame's function, never empty: `(anonymous)` for a nameless JS
/// function, `module+0xaddr` for an unnamed native frame.
pub fn function_name(f: &Frame) -> String {
    if !f.function.trim().is_empty() {
        return f.function.clone();
    }
    match f.kind {
        FrameKind::Js => "(anonymous)".into(),
        _ if !f.module.is_empty() => format!("{}+{:#x}", basename(&f.module), f.address),
        _ => format!("{:#x}", f.address),
    }
}

/// `file:line`, `file`, or empty.
pub fn file_line(f: &Frame) -> String {
    match (&f.file, f.line) {
        (Some(file), Some(l)) if !file.is_empty() && l > 0 => format!("{file}:{l}"),
        (Some(file), _) if !file.is_empty() => file.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(15 * 1024 * 1024), "15.0 MiB");
        assert_eq!(bytes(300 * 1024 * 1024), "300 MiB");
        assert_eq!(rate(-2048.0), "-2.00 KiB/s");
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(seconds(125.0), "2 min 05 s");
        assert_eq!(basename("/a/b/leak.node"), "leak.node");
        assert_eq!(basename("[jit]"), "[jit]");
        let f = Frame {
            function: "Readable.read".into(),
            module: "node:internal/streams/readable".into(),
            file: Some("node:internal/streams/readable".into()),
            line: Some(12),
            kind: FrameKind::Js,
            address: 1,
            inlined: false,
        };
        assert_eq!(
            frame_label(&f),
            "Readable.read node:internal/streams/readable:12"
        );
    }
}
