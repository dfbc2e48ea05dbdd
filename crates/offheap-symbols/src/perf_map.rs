//! V8's perf map (`/tmp/perf-PID.map`, copied into the recording as
//! `perf-PID.map`) and its companion `perf-PID.map.times`.
//!
//! The map is a text file with one `START SIZE name` line per code object
//! (hex without `0x`). It is append-only; when V8 reuses code space, a later
//! line covers the same range as an earlier one and wins from the time it was
//! written. The `.times` file (lines `BYTE_OFFSET UNIX_MS`) says when the
//! bytes of the map from `BYTE_OFFSET` on were first seen by the copier, so
//! each entry gets a "live from" time.

use std::path::Path;

/// Entries larger than this are treated as corrupt lines.
const MAX_ENTRY_SIZE: u64 = 256 << 20;

/// One perf-map line.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub start: u64,
    pub end: u64,
    /// Position of the line in the file (later lines win).
    pub seq: u32,
    /// Unix ms from which the entry was live (`-inf` when unknown).
    pub live_from_ms: f64,
}

/// The parsed map, sorted by start address for lookups.
#[derive(Debug, Default)]
pub(crate) struct PerfMap {
    /// Sorted by `start`, then `seq`.
    entries: Vec<Entry>,
    /// `max_end[i]` = the largest `end` among `entries[..=i]`; bounds the
    /// backward scan of a lookup.
    max_end: Vec<u64>,
    /// The map's bytes, and each line's name as a byte range, by `seq`.
    text: Vec<u8>,
    names: Vec<(usize, usize)>,
    /// Lines that could not be parsed (reported to the user).
    pub bad_lines: usize,
    /// True if the last line was cut (no newline) and skipped.
    pub truncated_tail: bool,
}

impl PerfMap {
    /// Reads `path` and, if present, `path.times`. Errors only when the map
    /// itself cannot be read. Both are files of the recording: read only
    /// when they are regular files (never through a symlink), at most
    /// [`offheap_format::io::MAX_STREAM`] bytes each.
    pub fn open(path: &Path) -> std::io::Result<(PerfMap, Option<String>)> {
        use offheap_format::io;
        let (text, cut) = io::read_recording_file(path, io::MAX_STREAM)?;
        let mut notes = Vec::new();
        if let Some(size) = cut {
            notes.push(format!(
                "{}: only the first {} of {} read; the rest skipped",
                path.display(),
                io::human_size(io::MAX_STREAM),
                io::human_size(size)
            ));
        }
        let mut times_path = path.as_os_str().to_owned();
        times_path.push(".times");
        let times_text = io::read_recording_file(Path::new(&times_path), io::MAX_STREAM)
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned());
        let (times, note) = match times_text {
            Ok(t) => (Some(parse_times(&t)), None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => (
                None,
                Some(format!(
                    "{}: unreadable ({e}); every perf-map entry treated as live from the start",
                    Path::new(&times_path).display()
                )),
            ),
        };
        notes.extend(note);
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok((PerfMap::parse(text, times.as_deref()), note))
    }

    /// Parses map bytes; `times` is the sorted `(byte offset, unix ms)` list.
    pub fn parse(text: Vec<u8>, times: Option<&[(u64, f64)]>) -> PerfMap {
        let mut map = PerfMap::default();
        let mut offset = 0usize;
        let mut seq = 0u32;
        while offset < text.len() {
            let rest = &text[offset..];
            let (line, next, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(n) => (&rest[..n], offset + n + 1, true),
                None => (rest, text.len(), false),
            };
            let line_offset = offset;
            offset = next;
            if !complete {
                // A copy taken while V8 was writing: the last line may be cut.
                if !line.iter().all(u8::is_ascii_whitespace) {
                    map.truncated_tail = true;
                }
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some((start, size, name)) = parse_line(line) else {
                map.bad_lines += 1;
                continue;
            };
            if size == 0 {
                continue;
            }
            if size > MAX_ENTRY_SIZE {
                // No code object is that big: a corrupt line. Keeping it
                // would also make every lookup scan back to it.
                map.bad_lines += 1;
                continue;
            }
            let live_from_ms = match times {
                Some(t) => match t.partition_point(|&(o, _)| o <= line_offset as u64) {
                    0 => f64::NEG_INFINITY,
                    n => t[n - 1].1,
                },
                None => f64::NEG_INFINITY,
            };
            map.entries.push(Entry {
                start,
                end: start.saturating_add(size),
                seq,
                live_from_ms,
            });
            map.names
                .push((line_offset + name.start, line_offset + name.end));
            seq += 1;
        }
        map.text = text;
        map.entries.sort_unstable_by_key(|e| (e.start, e.seq));
        let mut m = 0u64;
        map.max_end = map
            .entries
            .iter()
            .map(|e| {
                m = m.max(e.end);
                m
            })
            .collect();
        map
    }

    /// The name of the line with sequence number `seq`.
    pub fn name(&self, seq: u32) -> String {
        let (a, b) = self.names[seq as usize];
        String::from_utf8_lossy(&self.text[a..b]).into_owned()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Addresses at and around every entry's bounds (for the fuzz target).
    pub fn bounds(&self) -> Vec<u64> {
        self.entries
            .iter()
            .flat_map(|e| {
                [
                    e.start,
                    e.start.wrapping_sub(1),
                    e.end,
                    e.end.wrapping_sub(1),
                ]
            })
            .collect()
    }

    /// The entry covering `addr` that was live at `t_ms`: the latest line
    /// whose live-from time is ≤ `t_ms`. If none was live yet (the copier
    /// saw the line only after the sample, as happens for code written just
    /// before it), the covering line first seen soonest after `t_ms`.
    pub fn lookup(&self, addr: u64, t_ms: f64) -> Option<&Entry> {
        let mut i = self.entries.partition_point(|e| e.start <= addr);
        let mut best_live: Option<&Entry> = None;
        let mut best_next: Option<&Entry> = None;
        while i > 0 {
            i -= 1;
            if self.max_end[i] <= addr {
                break;
            }
            let e = &self.entries[i];
            if addr < e.end {
                if e.live_from_ms <= t_ms {
                    if best_live.is_none_or(|b| e.seq > b.seq) {
                        best_live = Some(e);
                    }
                } else if best_next
                    .is_none_or(|b| (e.live_from_ms, e.seq) < (b.live_from_ms, b.seq))
                {
                    best_next = Some(e);
                }
            }
        }
        best_live.or(best_next)
    }
}

/// `START SIZE name` -> (start, size, byte range of the trimmed name).
fn parse_line(line: &[u8]) -> Option<(u64, u64, std::ops::Range<usize>)> {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < line.len() && (line[*i] == b' ' || line[*i] == b'\t') {
            *i += 1;
        }
    };
    let hex = |i: &mut usize| -> Option<u64> {
        if line[*i..].starts_with(b"0x") {
            *i += 2;
        }
        let s = *i;
        let mut v = 0u64;
        while *i < line.len() && line[*i].is_ascii_hexdigit() {
            v = v.checked_mul(16)? + (line[*i] as char).to_digit(16)? as u64;
            *i += 1;
        }
        (*i > s && (*i == line.len() || line[*i] == b' ' || line[*i] == b'\t')).then_some(v)
    };
    skip_ws(&mut i);
    let start = hex(&mut i)?;
    skip_ws(&mut i);
    let size = hex(&mut i)?;
    skip_ws(&mut i);
    let mut end = line.len();
    while end > i && line[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    Some((start, size, i..end))
}

/// Parses `BYTE_OFFSET UNIX_MS` lines (sorted by offset on return).
pub(crate) fn parse_times(text: &str) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let o = it.next()?.parse::<u64>().ok()?;
            let t = it.next()?.parse::<f64>().ok()?;
            t.is_finite().then_some((o, t))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    out
}

/// What a perf-map name says about a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JsName {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// `~` interpreted, `^` Sparkplug, `+` Maglev, `*` TurboFan.
    pub tier: Option<char>,
    pub builtin: bool,
}

/// Splits a V8 perf-map name (`JS:*fn /path/x.js:3:10`, `Builtin:Foo`,
/// `BytecodeHandler:Bar`, `RegExp:a+b`, `Eval:~ file:1:1`, ...).
pub(crate) fn parse_name(name: &str) -> JsName {
    let (prefix, rest) = match name.split_once(':') {
        Some((p, r)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_alphabetic()) => (p, r),
        _ => ("", name),
    };
    match prefix {
        "Builtin" => JsName {
            function: format!("Builtins_{rest}"),
            file: None,
            line: None,
            column: None,
            tier: None,
            builtin: true,
        },
        "BytecodeHandler"
        | "Stub"
        | "Handler"
        | "BytecodeHandlerStub"
        | "KeyedLoadIC"
        | "KeyedStoreIC"
        | "LoadIC"
        | "StoreIC"
        | "CallIC"
        | "Callback"
        | "WasmToJS"
        | "JSToWasm" => JsName {
            function: name.to_string(),
            file: None,
            line: None,
            column: None,
            tier: None,
            builtin: true,
        },
        "RegExp" => JsName {
            function: format!("RegExp:{rest}"),
            file: None,
            line: None,
            column: None,
            tier: None,
            builtin: false,
        },
        _ => {
            // JS:, LazyCompile:, Function:, Eval:, Script:, or no prefix.
            // Code-kind markers: `~` Ignition, `^` Sparkplug, `+` Maglev,
            // `*` TurboFan; Node 24's V8 adds a `'` after one of them
            // (`JS:+'name`). The first is the tier; all are peeled.
            let mut rest = rest;
            let mut tier = None;
            for _ in 0..2 {
                match rest.chars().next() {
                    Some(c @ ('~' | '^' | '+' | '*' | '\'')) => {
                        tier.get_or_insert(c);
                        rest = &rest[1..];
                    }
                    _ => break,
                }
            }
            let (func, file, line, column) = split_location(rest);
            let func = func.trim();
            let function = if !func.is_empty() {
                func.to_string()
            } else if matches!(prefix, "Eval" | "Script") {
                "(script)".to_string()
            } else {
                "(anonymous)".to_string()
            };
            JsName {
                function,
                file,
                line,
                column,
                tier,
                builtin: false,
            }
        }
    }
}

/// `fn name /path/file.js:12:5` -> (`fn name`, file, line, column). The
/// location is the last space-separated token ending in `:LINE:COL` (or
/// `:LINE`); a function name may itself contain spaces (`get foo`).
fn split_location(s: &str) -> (&str, Option<String>, Option<u32>, Option<u32>) {
    let s = s.trim_end();
    // Peel `:COL` and `:LINE` off the end.
    let mut nums = Vec::new();
    let mut head = s;
    for _ in 0..2 {
        match head.rsplit_once(':') {
            Some((h, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(v) = n.parse::<u32>() {
                    nums.push(v);
                    head = h;
                } else {
                    break;
                }
            }
            _ => break,
        }
    }
    if nums.is_empty() {
        // No location: the whole thing may be `fn file` or just `fn`.
        return (s, None, None, None);
    }
    nums.reverse();
    let (line, column) = (nums.first().copied(), nums.get(1).copied());
    // `head` is now `fn name file`. The file starts at the last space, unless
    // the path has spaces: prefer a ` /`, ` node:`, ` file:` boundary.
    let file_start = [" /", " node:", " file:", " [", " http:", " https:"]
        .iter()
        .filter_map(|m| head.find(m).map(|i| i + 1))
        .min()
        .or_else(|| head.rfind(' ').map(|i| i + 1))
        .unwrap_or(0);
    let func = if file_start == 0 {
        ""
    } else {
        &head[..file_start - 1]
    };
    let file = &head[file_start..];
    (
        func,
        (!file.is_empty()).then(|| file.to_string()),
        line,
        column,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = parse_name("JS:*namedLeaky /tmp/x y/hot.js:1:28");
        assert_eq!(n.function, "namedLeaky");
        assert_eq!(n.file.as_deref(), Some("/tmp/x y/hot.js"));
        assert_eq!((n.line, n.column, n.tier), (Some(1), Some(28), Some('*')));
        let n = parse_name("JS:~ node:internal/main/run_main_module:1:1");
        assert_eq!(n.function, "(anonymous)");
        assert_eq!(
            n.file.as_deref(),
            Some("node:internal/main/run_main_module")
        );
        let n = parse_name("JS:^get foo /a.js:3:4");
        assert_eq!(n.function, "get foo");
        assert_eq!(n.tier, Some('^'));
        let n = parse_name("JS:~get value file:///tmp/symexp/esm.mjs:2:24");
        assert_eq!(n.function, "get value");
        assert_eq!(n.file.as_deref(), Some("file:///tmp/symexp/esm.mjs"));
        assert_eq!(n.line, Some(2));
        let n = parse_name("Eval:~ /a.js:1:1");
        assert_eq!(n.function, "(script)");
        let n = parse_name("Builtin:ArrayPrototypePush");
        assert!(n.builtin);
        assert_eq!(n.function, "Builtins_ArrayPrototypePush");
        let n = parse_name("BytecodeHandler:LdaZero");
        assert!(n.builtin);
        let n = parse_name("RegExp:a+b");
        assert!(!n.builtin);
        assert_eq!(n.function, "RegExp:a+b");
        let n = parse_name("JS:+fn [eval]:1:10");
        assert_eq!(
            (n.function.as_str(), n.file.as_deref(), n.tier),
            ("fn", Some("[eval]"), Some('+'))
        ); // Node 24 (V8 13): a second marker after the tier.
        let n = parse_name("JS:+'isPosixPathSeparator node:path:69:30");
        assert_eq!(
            (n.function.as_str(), n.tier),
            ("isPosixPathSeparator", Some('+'))
        );
        let n = parse_name("JS:+' /tmp/jo/logsvc.js:6:23");
        assert_eq!(n.function, "(anonymous)");
    }

    #[test]
    fn later_entries_win_by_time() {
        let text =
            b"1000 100 JS:~a /a.js:1:1\n2000 10 JS:~x /x.js:1:1\n1000 100 JS:*b /a.js:2:1\n1050 1";
        // Second copy of 1000 seen at t=200.
        let second = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(1)
            .unwrap()
            .0 as u64
            + 1;
        let times = [(0, 100.0), (second, 200.0)];
        let m = PerfMap::parse(text.to_vec(), Some(&times));
        assert!(m.truncated_tail);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.name(m.lookup(0x1010, 150.0).unwrap().seq),
            "JS:~a /a.js:1:1"
        );
        assert_eq!(
            m.name(m.lookup(0x1010, 250.0).unwrap().seq),
            "JS:*b /a.js:2:1"
        );
        // Before anything was live: the entry seen first after the sample.
        assert_eq!(
            m.name(m.lookup(0x1010, 50.0).unwrap().seq),
            "JS:~a /a.js:1:1"
        );
        assert!(m.lookup(0x1100, 250.0).is_none());
        assert_eq!(
            m.name(m.lookup(0x2005, 0.0).unwrap().seq),
            "JS:~x /x.js:1:1"
        );
        assert!(m.lookup(0x2010, 0.0).is_none());
        let m = PerfMap::parse(text.to_vec(), None);
        let bad = PerfMap::parse(
            b"0 ffffffffffff JS:~huge /a.js:1:1\nzz 10 x\n1000 10 JS:~ok /a.js:1:1\n".to_vec(),
            None,
        );
        assert_eq!((bad.len(), bad.bad_lines), (1, 2));
        assert_eq!(
            m.name(m.lookup(0x1010, 0.0).unwrap().seq),
            "JS:*b /a.js:2:1"
        );
    }
}
