//! Streaming `.heapsnapshot` parser, dominators and retained sizes.
//!
//! The file is read once through a `BufReader` with `serde_json`; the big
//! arrays go straight into compact vectors (`nodes: Vec<u32>`,
//! `edges: Vec<u32>`, all strings in one `String`), so the text is never held
//! in memory. The layout of node and edge records is taken from
//! `snapshot.meta` (Node 18/20/22 differ: `trace_node_id`, `detachedness`,
//! node types such as `object shape`), never hard-coded.
//!
//! Dominators follow the DevTools definition of essential edges: weak edges
//! are dropped, shortcut edges are dropped unless they leave the root. The
//! dominator tree is computed with the Cooper–Harvey–Kennedy iterative
//! algorithm over a post-order numbering.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

/// Sentinel for "no such type in this snapshot's meta".
const NONE: u32 = u32::MAX;

/// Most array values reserved up front from the header's declared counts
/// (16 MiB of `u32`s per array).
const MAX_RESERVE: usize = 1 << 22;

/// Largest sum of all self sizes accepted (8 PiB): no heap is that big, and
/// below it no sum (or double) of sizes the analysis makes can overflow.
pub const MAX_TOTAL_SIZE: u64 = 1 << 53;

/// Why a snapshot could not be read.
#[derive(Debug)]
pub enum SnapshotError {
    /// The file could not be opened or read.
    Io(std::io::Error),
    /// The file ended before the node and edge arrays were complete.
    Truncated {
        section: String,
        offset: u64,
        detail: String,
    },
    /// The JSON is malformed or does not have the heap-snapshot shape.
    Corrupt { section: String, detail: String },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "cannot read heap snapshot: {e}"),
            SnapshotError::Truncated {
                section,
                offset,
                detail,
            } => write!(
                f,
                "heap snapshot is truncated: the file ends inside `{section}` after {offset} bytes; {detail}"
            ),
            SnapshotError::Corrupt { section, detail } => {
                write!(f, "heap snapshot is corrupt (in `{section}`): {detail}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for SnapshotError {
    fn from(e: std::io::Error) -> Self {
        SnapshotError::Io(e)
    }
}

fn corrupt(section: &str, detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        section: section.to_string(),
        detail: detail.into(),
    }
}

/// Field positions and type names, read from `snapshot.meta`.
#[derive(Debug, Clone)]
pub struct Meta {
    pub node_fields: Vec<String>,
    pub node_types: Vec<String>,
    pub edge_fields: Vec<String>,
    pub edge_types: Vec<String>,
    /// `snapshot.node_count` as declared in the header.
    pub declared_node_count: u64,
    /// `snapshot.edge_count` as declared in the header.
    pub declared_edge_count: u64,
    /// `snapshot.extra_native_bytes` (newer V8 only).
    pub extra_native_bytes: Option<u64>,
    pub trace_function_count: u64,
    /// `trace_function_info_fields` (default: function_id, name, script_name, script_id, line, column).
    pub trace_function_info_fields: Vec<String>,
    pub(crate) nf: usize,
    pub(crate) ef: usize,
    pub(crate) n_type: usize,
    pub(crate) n_name: usize,
    pub(crate) n_id: usize,
    pub(crate) n_self: usize,
    pub(crate) n_edges: usize,
    pub(crate) n_trace: Option<usize>,
    pub(crate) e_type: usize,
    pub(crate) e_name: usize,
    pub(crate) e_to: usize,
    pub(crate) t_hidden: u32,
    pub(crate) t_array: u32,
    pub(crate) t_string: u32,
    pub(crate) t_object: u32,
    pub(crate) t_code: u32,
    pub(crate) t_closure: u32,
    pub(crate) t_native: u32,
    pub(crate) t_synthetic: u32,
    pub(crate) t_shape: u32,
    pub(crate) et_context: u32,
    pub(crate) et_element: u32,
    pub(crate) et_property: u32,
    pub(crate) et_internal: u32,
    pub(crate) et_hidden: u32,
    pub(crate) et_shortcut: u32,
    pub(crate) et_weak: u32,
}

fn str_list(v: Option<&Value>, what: &str) -> Result<Vec<String>, SnapshotError> {
    let arr = v.and_then(Value::as_array).ok_or_else(|| {
        corrupt(
            "snapshot.meta",
            format!("`{what}` is missing or not an array"),
        )
    })?;
    Ok(arr
        .iter()
        .map(|x| x.as_str().unwrap_or("").to_string())
        .collect())
}

impl Meta {
    fn from_header(header: &Value) -> Result<Meta, SnapshotError> {
        let meta = header
            .get("meta")
            .ok_or_else(|| corrupt("snapshot", "no `meta` object in the snapshot header"))?;
        let node_fields = str_list(meta.get("node_fields"), "node_fields")?;
        let edge_fields = str_list(meta.get("edge_fields"), "edge_fields")?;
        let node_types = str_list(
            meta.get("node_types").and_then(|t| t.get(0)),
            "node_types[0]",
        )?;
        let edge_types = str_list(
            meta.get("edge_types").and_then(|t| t.get(0)),
            "edge_types[0]",
        )?;
        let pos = |fields: &[String], name: &str, what: &str| {
            fields
                .iter()
                .position(|f| f == name)
                .ok_or_else(|| corrupt("snapshot.meta", format!("{what} has no `{name}` field")))
        };
        let ty = |types: &[String], name: &str| {
            types
                .iter()
                .position(|t| t == name)
                .map(|p| p as u32)
                .unwrap_or(NONE)
        };
        let num = |k: &str| header.get(k).and_then(Value::as_u64);
        Ok(Meta {
            nf: node_fields.len(),
            ef: edge_fields.len(),
            n_type: pos(&node_fields, "type", "node_fields")?,
            n_name: pos(&node_fields, "name", "node_fields")?,
            n_id: pos(&node_fields, "id", "node_fields")?,
            n_self: pos(&node_fields, "self_size", "node_fields")?,
            n_edges: pos(&node_fields, "edge_count", "node_fields")?,
            n_trace: node_fields.iter().position(|f| f == "trace_node_id"),
            e_type: pos(&edge_fields, "type", "edge_fields")?,
            e_name: pos(&edge_fields, "name_or_index", "edge_fields")?,
            e_to: pos(&edge_fields, "to_node", "edge_fields")?,
            t_hidden: ty(&node_types, "hidden"),
            t_array: ty(&node_types, "array"),
            t_string: ty(&node_types, "string"),
            t_object: ty(&node_types, "object"),
            t_code: ty(&node_types, "code"),
            t_closure: ty(&node_types, "closure"),
            t_native: ty(&node_types, "native"),
            t_synthetic: ty(&node_types, "synthetic"),
            t_shape: ty(&node_types, "object shape"),
            et_context: ty(&edge_types, "context"),
            et_element: ty(&edge_types, "element"),
            et_property: ty(&edge_types, "property"),
            et_internal: ty(&edge_types, "internal"),
            et_hidden: ty(&edge_types, "hidden"),
            et_shortcut: ty(&edge_types, "shortcut"),
            et_weak: ty(&edge_types, "weak"),
            declared_node_count: num("node_count").unwrap_or(0),
            declared_edge_count: num("edge_count").unwrap_or(0),
            extra_native_bytes: num("extra_native_bytes"),
            trace_function_count: num("trace_function_count").unwrap_or(0),
            trace_function_info_fields: str_list(
                meta.get("trace_function_info_fields"),
                "trace_function_info_fields",
            )
            .unwrap_or_else(|_| {
                [
                    "function_id",
                    "name",
                    "script_name",
                    "script_id",
                    "line",
                    "column",
                ]
                .map(String::from)
                .to_vec()
            }),
            node_fields,
            node_types,
            edge_fields,
            edge_types,
        })
    }
}

/// All strings of the snapshot, concatenated.
#[derive(Debug, Default)]
pub struct Strings {
    data: String,
    /// `ends[i]` is the end offset of string `i` in `data`.
    ends: Vec<usize>,
}

impl Strings {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// String `i`, or `""` when the index is out of range (e.g. a truncated file).
    pub fn get(&self, i: usize) -> &str {
        if i >= self.ends.len() {
            return "";
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// Parse state shared by the streaming visitors; on an error it holds what was read.
#[derive(Default)]
struct State {
    header: Option<Value>,
    nodes: Vec<u32>,
    nodes_done: bool,
    edges: Vec<u32>,
    edges_done: bool,
    strings: Strings,
    strings_done: bool,
    trace_function_infos: Vec<u32>,
    /// trace node id -> function_info_index, flattened from `trace_tree`.
    trace_func_of: HashMap<u32, u32>,
    locations: Vec<u32>,
    /// Node-array values that did not fit in u32 (index → value).
    overflow: HashMap<usize, u64>,
    section: &'static str,
}

/// A parse failure: `eof` when the input ended early.
struct PErr {
    eof: bool,
    offset: u64,
    msg: String,
}

/// Hand-written streaming JSON scanner for the heap-snapshot shape. The big
/// number arrays are scanned byte by byte straight from the read buffer; small
/// values (`snapshot`, `trace_tree`) are captured and handed to serde_json.
struct Scanner<R: BufRead> {
    r: R,
    /// Bytes consumed so far.
    pos: u64,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

impl<R: BufRead> Scanner<R> {
    fn err(&self, msg: impl Into<String>) -> PErr {
        PErr {
            eof: false,
            offset: self.pos,
            msg: msg.into(),
        }
    }
    fn eof(&self) -> PErr {
        PErr {
            eof: true,
            offset: self.pos,
            msg: "unexpected end of file".into(),
        }
    }
    fn io(&self, e: std::io::Error) -> PErr {
        PErr {
            eof: false,
            offset: self.pos,
            msg: format!("read error: {e}"),
        }
    }
    fn consume(&mut self, n: usize) {
        self.r.consume(n);
        self.pos += n as u64;
    }
    /// Next non-whitespace byte, not consumed; None at EOF.
    fn peek_nonws(&mut self) -> Result<Option<u8>, PErr> {
        loop {
            let buf = match self.r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            };
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|&b| !is_ws(b)) {
                Some(i) => {
                    let b = buf[i];
                    self.consume(i);
                    return Ok(Some(b));
                }
                None => {
                    let n = buf.len();
                    self.consume(n);
                }
            }
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), PErr> {
        match self.peek_nonws()? {
            Some(b) if b == c => {
                self.consume(1);
                Ok(())
            }
            Some(b) => Err(self.err(format!("expected `{}`, found `{}`", c as char, b as char))),
            None => Err(self.eof()),
        }
    }
    fn fill(&mut self) -> Result<&[u8], PErr> {
        loop {
            match self.r.fill_buf() {
                Ok(b) => {
                    if b.is_empty() {
                        return Err(PErr {
                            eof: true,
                            offset: self.pos,
                            msg: "unexpected end of file".into(),
                        });
                    }
                    // Borrow again to return the slice (a returned borrow inside the loop does not pass the borrow checker).
                    return match self.r.fill_buf() {
                        Ok(b) => Ok(b),
                        Err(e) => Err(PErr {
                            eof: false,
                            offset: self.pos,
                            msg: format!("read error: {e}"),
                        }),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// `[u, u, …]` of unsigned integers. Values above u32::MAX go to `overflow`.
    fn u32_array(
        &mut self,
        out: &mut Vec<u32>,
        mut overflow: Option<&mut HashMap<usize, u64>>,
    ) -> Result<(), PErr> {
        self.expect(b'[')?;
        let mut cur: u64 = 0;
        let mut digits = 0u32;
        // A number was completed since the last `,`.
        let mut had_num = false;
        // Whitespace followed a completed number: a digit now is an error.
        let mut ended = false;
        // A `,` was seen (so `]` right after it is an error).
        let mut need = false;
        loop {
            let pos = self.pos;
            let buf = self.fill()?;
            let n = buf.len();
            let mut i = 0;
            let mut fail: Option<(usize, &'static str)> = None;
            let mut done = false;
            while i < n {
                let b = buf[i];
                let d = b.wrapping_sub(b'0');
                if d < 10 {
                    if ended {
                        fail = Some((i, "missing `,` between numbers"));
                        break;
                    }
                    cur = cur.wrapping_mul(10).wrapping_add(d as u64);
                    digits += 1;
                    i += 1;
                    continue;
                }
                if digits > 0 {
                    if digits > 19 {
                        fail = Some((i, "number too large"));
                        break;
                    }
                    push_u32(out, &mut overflow, cur);
                    cur = 0;
                    digits = 0;
                    had_num = true;
                }
                match b {
                    b',' => {
                        if !had_num {
                            fail = Some((i, "expected a number before `,`"));
                            break;
                        }
                        had_num = false;
                        ended = false;
                        need = true;
                    }
                    b']' => {
                        if need && !had_num {
                            fail = Some((i, "expected a number after `,`"));
                            break;
                        }
                        i += 1;
                        done = true;
                        break;
                    }
                    b' ' | b'\n' | b'\r' | b'\t' => ended = had_num,
                    _ => {
                        fail = Some((i, "expected an unsigned integer"));
                        break;
                    }
                }
                i += 1;
            }
            if let Some((k, msg)) = fail {
                let found = buf[k];
                return Err(PErr {
                    eof: false,
                    offset: pos + k as u64,
                    msg: format!("{msg} (found `{}`)", found.escape_ascii()),
                });
            }
            self.consume(i);
            if done {
                return Ok(());
            }
        }
    }

    /// A JSON string (the opening quote not yet consumed), decoded into `out`.
    fn string_into(&mut self, out: &mut Vec<u8>) -> Result<(), PErr> {
        self.expect(b'"')?;
        loop {
            let buf = self.fill()?;
            match buf.iter().position(|&b| b == b'"' || b == b'\\') {
                None => {
                    out.extend_from_slice(buf);
                    let n = buf.len();
                    self.consume(n);
                }
                Some(i) => {
                    out.extend_from_slice(&buf[..i]);
                    let q = buf[i];
                    self.consume(i + 1);
                    if q == b'"' {
                        return Ok(());
                    }
                    let e = self.byte()?;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                // A low surrogate may follow; V8 also writes lone surrogates.
                                let next = self.fill()?;
                                if next.len() >= 2 && next[0] == b'\\' && next[1] == b'u' {
                                    self.consume(2);
                                    let lo = self.hex4()?;
                                    if (0xDC00..0xE000).contains(&lo) {
                                        char::from_u32(
                                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00),
                                        )
                                    } else {
                                        out.extend_from_slice("\u{FFFD}".as_bytes());
                                        char::from_u32(lo)
                                    }
                                } else {
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            let c = c.unwrap_or('\u{FFFD}');
                            let mut tmp = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                        }
                        other => {
                            return Err(
                                self.err(format!("bad escape `\\{}` in a string", other as char))
                            );
                        }
                    }
                }
            }
        }
    }
    fn byte(&mut self) -> Result<u8, PErr> {
        let b = self.fill()?[0];
        self.consume(1);
        Ok(b)
    }
    fn hex4(&mut self) -> Result<u32, PErr> {
        let mut v = 0u32;
        for _ in 0..4 {
            let b = self.byte()?;
            let d = (b as char)
                .to_digit(16)
                .ok_or_else(|| self.err("bad \\u escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn strings(&mut self, out: &mut Strings) -> Result<(), PErr> {
        self.expect(b'[')?;
        if self.peek_nonws()? == Some(b']') {
            self.consume(1);
            return Ok(());
        }
        let mut scratch = Vec::new();
        loop {
            scratch.clear();
            self.string_into(&mut scratch)?;
            match std::str::from_utf8(&scratch) {
                Ok(s) => out.data.push_str(s),
                Err(_) => out.data.push_str(&String::from_utf8_lossy(&scratch)),
            }
            out.ends.push(out.data.len());
            match self.peek_nonws()? {
                Some(b',') => self.consume(1),
                Some(b']') => {
                    self.consume(1);
                    return Ok(());
                }
                Some(b) => {
                    return Err(self.err(format!(
                        "expected `,` or `]` in strings, found `{}`",
                        b as char
                    )));
                }
                None => return Err(self.eof()),
            }
        }
    }

    /// Skip (or capture into `keep`) one JSON value.
    fn value(&mut self, mut keep: Option<&mut Vec<u8>>) -> Result<(), PErr> {
        let first = self.peek_nonws()?.ok_or_else(|| self.eof())?;
        if first != b'{' && first != b'[' && first != b'"' {
            // Scalar: up to the next delimiter.
            loop {
                let buf = self.fill()?;
                let end = buf
                    .iter()
                    .position(|&b| b == b',' || b == b'}' || b == b']' || is_ws(b));
                let k = end.unwrap_or(buf.len());
                if let Some(v) = keep.as_deref_mut() {
                    v.extend_from_slice(&buf[..k]);
                }
                self.consume(k);
                if end.is_some() {
                    return Ok(());
                }
            }
        }
        let mut depth = 0usize;
        let mut in_str = false;
        let mut esc = false;
        loop {
            let buf = self.fill()?;
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if in_str {
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'"' {
                        in_str = false;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                } else if b == b'"' {
                    in_str = true;
                } else if b == b'{' || b == b'[' {
                    depth += 1;
                } else if b == b'}' || b == b']' {
                    if depth == 0 {
                        return Err(self.err("unbalanced brackets"));
                    }
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
            }
            let k = end.unwrap_or(buf.len());
            if let Some(v) = keep.as_deref_mut() {
                v.extend_from_slice(&buf[..k]);
            }
            self.consume(k);
            if end.is_some() {
                return Ok(());
            }
        }
    }

    /// `trace_tree`: nested arrays of trace nodes, each `width` values wide with
    /// its children array inside. Walked without recursion (it is as deep as
    /// the deepest allocating call stack), recording id -> function_info_index.
    fn trace_tree(
        &mut self,
        out: &mut HashMap<u32, u32>,
        width: usize,
        id_pos: usize,
        fi_pos: usize,
    ) -> Result<(), PErr> {
        self.expect(b'[')?;
        // Per open array: values seen, and the id / function index of the record being read.
        struct Level {
            count: usize,
            id: Option<u32>,
            fi: Option<u32>,
        }
        fn advance(l: &mut Level, width: usize, out: &mut HashMap<u32, u32>) {
            l.count += 1;
            if l.count.is_multiple_of(width) {
                if let (Some(id), Some(fi)) = (l.id, l.fi) {
                    out.insert(id, fi);
                }
                l.id = None;
                l.fi = None;
            }
        }
        let new = || Level {
            count: 0,
            id: None,
            fi: None,
        };
        let mut stack: Vec<Level> = vec![new()];
        loop {
            let b = self.peek_nonws()?.ok_or_else(|| self.eof())?;
            match b {
                b'[' => {
                    self.consume(1);
                    if let Some(top) = stack.last_mut() {
                        advance(top, width, out);
                    }
                    stack.push(new());
                }
                b']' => {
                    self.consume(1);
                    stack.pop();
                    if stack.is_empty() {
                        return Ok(());
                    }
                }
                b',' => self.consume(1),
                b'0'..=b'9' => {
                    let mut v: u64 = 0;
                    let mut digits = 0;
                    loop {
                        let buf = self.fill()?;
                        let k = buf.iter().take_while(|c| c.is_ascii_digit()).count();
                        for &c in &buf[..k] {
                            v = v.wrapping_mul(10).wrapping_add((c - b'0') as u64);
                        }
                        digits += k;
                        let more = k == buf.len();
                        self.consume(k);
                        if !more {
                            break;
                        }
                    }
                    if digits > 19 {
                        return Err(self.err("number too large in trace_tree"));
                    }
                    let top = stack.last_mut().ok_or_else(|| self.err("bad trace_tree"))?;
                    let pos = top.count % width;
                    if pos == id_pos {
                        top.id = Some(v as u32);
                    } else if pos == fi_pos {
                        top.fi = Some(v as u32);
                    }
                    advance(top, width, out);
                }
                other => {
                    return Err(self.err(format!("unexpected `{}` in trace_tree", other as char)));
                }
            }
        }
    }

    fn json_value(&mut self) -> Result<Value, PErr> {
        let start = self.pos;
        let mut raw = Vec::new();
        self.value(Some(&mut raw))?;
        serde_json::from_slice(&raw).map_err(|e| PErr {
            eof: false,
            offset: start,
            msg: e.to_string(),
        })
    }

    fn top(&mut self, st: &mut State) -> Result<(), PErr> {
        st.section = "(start)";
        match self.peek_nonws()? {
            Some(b'{') => self.consume(1),
            Some(_) => {
                return Err(self.err("not a heap snapshot: the file does not start with `{`"));
            }
            None => return Err(self.err("the file is empty")),
        }
        let mut key = Vec::new();
        if self.peek_nonws()? == Some(b'}') {
            self.consume(1);
            return Ok(());
        }
        loop {
            key.clear();
            st.section = "(key)";
            self.string_into(&mut key)?;
            self.expect(b':')?;
            match &key[..] {
                b"snapshot" => {
                    st.section = "snapshot";
                    let v = self.json_value()?;
                    if let Ok(m) = Meta::from_header(&v) {
                        let n = (m.declared_node_count as usize).saturating_mul(m.nf);
                        let e = (m.declared_edge_count as usize).saturating_mul(m.ef);
                        // Cap the reservation so a lying header cannot
                        // claim memory the file does not fill: past it the
                        // arrays grow as they are read.
                        st.nodes.reserve(n.min(MAX_RESERVE));
                        st.edges.reserve(e.min(MAX_RESERVE));
                    }
                    st.header = Some(v);
                }
                b"nodes" => {
                    st.section = "nodes";
                    self.u32_array(&mut st.nodes, Some(&mut st.overflow))?;
                    st.nodes_done = true;
                }
                b"edges" => {
                    st.section = "edges";
                    self.u32_array(&mut st.edges, None)?;
                    st.edges_done = true;
                }
                b"strings" => {
                    st.section = "strings";
                    self.strings(&mut st.strings)?;
                    st.strings_done = true;
                }
                b"trace_function_infos" => {
                    st.section = "trace_function_infos";
                    self.u32_array(&mut st.trace_function_infos, None)?;
                }
                b"trace_tree" => {
                    st.section = "trace_tree";
                    // Layout from meta.trace_node_fields when the header came first.
                    let fields: Vec<String> = st
                        .header
                        .as_ref()
                        .and_then(|h| h.pointer("/meta/trace_node_fields"))
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_else(|| {
                            ["id", "function_info_index", "count", "size", "children"]
                                .map(String::from)
                                .to_vec()
                        });
                    let at = |k: &str| fields.iter().position(|f| f == k);
                    match (at("id"), at("function_info_index")) {
                        (Some(id), Some(fi)) if fields.len() > 1 => {
                            self.trace_tree(&mut st.trace_func_of, fields.len(), id, fi)?
                        }
                        _ => self.value(None)?,
                    }
                }
                b"locations" => {
                    st.section = "locations";
                    self.u32_array(&mut st.locations, None)?;
                }
                _ => {
                    st.section = "(other)";
                    self.value(None)?;
                }
            }
            match self.peek_nonws()? {
                Some(b',') => self.consume(1),
                Some(b'}') => {
                    self.consume(1);
                    break;
                }
                Some(b) => {
                    return Err(self.err(format!(
                        "expected `,` or `}}` after a value, found `{}`",
                        b as char
                    )));
                }
                None => return Err(self.eof()),
            }
        }
        st.section = "(end)";
        match self.peek_nonws()? {
            None => Ok(()),
            Some(_) => Err(self.err("trailing data after the snapshot object")),
        }
    }
}

fn push_u32(out: &mut Vec<u32>, overflow: &mut Option<&mut HashMap<usize, u64>>, v: u64) {
    if v > u32::MAX as u64 {
        if let Some(ov) = overflow.as_deref_mut() {
            ov.insert(out.len(), v);
        }
        // Without an overflow table (edges), the index check rejects it later.
        out.push(u32::MAX);
    } else {
        out.push(v as u32);
    }
}

/// A parsed heap snapshot with its dominator tree.
pub struct HeapSnapshot {
    pub meta: Meta,
    nodes: Vec<u32>,
    /// Edge records; the `to_node` field is rewritten to a node ordinal.
    edges: Vec<u32>,
    pub strings: Strings,
    overflow: HashMap<usize, u64>,
    /// `first_edge[i]..first_edge[i+1]` are node i's edge records.
    first_edge: Vec<u32>,
    /// Post-order index of each node ordinal, and its inverse (the root is last).
    po_of: Vec<u32>,
    ord_of: Vec<u32>,
    /// Essential retainers in post-order space: `first_ret[po]..first_ret[po+1]`
    /// index `retainers`, which holds post-order indices.
    first_ret: Vec<u32>,
    retainers: Vec<u32>,
    /// Immediate dominator, by post-order index (the root dominates itself).
    dom: Vec<u32>,
    /// Retained size, by post-order index.
    retained: Vec<u64>,
    /// BFS distance from the root over essential edges (u32::MAX: unreachable).
    distance: Vec<u32>,
    trace_func_of: HashMap<u32, u32>,
    trace_function_infos: Vec<u32>,
    locations: HashMap<u32, (u32, u32, u32)>,
    /// Bytes of snapshot text read.
    pub bytes_read: u64,
    /// What could not be read (e.g. strings of a truncated file).
    pub warnings: Vec<String>,
    /// Seconds spent in each phase.
    pub timings: Timings,
}

/// Seconds spent in each phase of [`HeapSnapshot::from_reader`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub parse: f64,
    pub index: f64,
    pub dominators: f64,
    pub distances: f64,
}

impl fmt::Debug for HeapSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapSnapshot")
            .field("nodes", &self.node_count())
            .field("edges", &self.edge_count())
            .field("strings", &self.strings.len())
            .finish()
    }
}

/// Node ordinal in the snapshot (0 is the synthetic root).
pub type NodeIx = u32;

/// One outgoing edge.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub ty: u32,
    pub name_or_index: u32,
    pub to: NodeIx,
}

impl HeapSnapshot {
    /// Parse a snapshot file and compute dominators.
    pub fn from_path(path: &Path) -> Result<HeapSnapshot, SnapshotError> {
        let f = std::fs::File::open(path)?;
        Self::from_reader(f)
    }

    /// Parse a snapshot from any reader (buffered internally) and compute dominators.
    pub fn from_reader<R: Read>(r: R) -> Result<HeapSnapshot, SnapshotError> {
        let t0 = std::time::Instant::now();
        let mut st = State::default();
        let mut sc = Scanner {
            r: BufReader::with_capacity(1 << 20, r),
            pos: 0,
        };
        let res = sc.top(&mut st);
        let bytes_read = sc.pos;
        drop(sc);
        let mut warnings = Vec::new();
        if let Err(e) = res {
            let section = st.section.to_string();
            let usable = st.header.is_some() && st.nodes_done && st.edges_done;
            if !usable {
                if e.eof {
                    return Err(SnapshotError::Truncated {
                        section,
                        offset: e.offset,
                        detail: "the node and edge arrays are incomplete, nothing can be analysed"
                            .into(),
                    });
                }
                return Err(SnapshotError::Corrupt {
                    section,
                    detail: format!("{} at byte {}", e.msg, e.offset),
                });
            }
            warnings.push(format!(
                "snapshot {} inside `{}` at byte {} ({}); {} strings were read{}; missing names are shown as empty",
                if e.eof { "is truncated" } else { "is corrupt" },
                section,
                e.offset,
                e.msg,
                st.strings.len(),
                if st.strings_done { "" } else { ", the rest are missing" }
            ));
        }
        let header = st
            .header
            .take()
            .ok_or_else(|| corrupt("snapshot", "no `snapshot` header object"))?;
        let meta = Meta::from_header(&header)?;
        if !st.strings_done && warnings.is_empty() {
            warnings.push("snapshot has no `strings` array; names are missing".into());
        }
        let mut snap = HeapSnapshot {
            meta,
            nodes: std::mem::take(&mut st.nodes),
            edges: std::mem::take(&mut st.edges),
            strings: std::mem::take(&mut st.strings),
            overflow: std::mem::take(&mut st.overflow),
            first_edge: Vec::new(),
            po_of: Vec::new(),
            ord_of: Vec::new(),
            first_ret: Vec::new(),
            retainers: Vec::new(),
            dom: Vec::new(),
            retained: Vec::new(),
            distance: Vec::new(),
            trace_func_of: std::mem::take(&mut st.trace_func_of),
            trace_function_infos: std::mem::take(&mut st.trace_function_infos),
            locations: HashMap::new(),
            bytes_read,
            warnings,
            timings: Timings::default(),
        };
        let t1 = std::time::Instant::now();
        snap.index(&st.locations)?;
        let t2 = std::time::Instant::now();
        snap.compute_dominators();
        let t3 = std::time::Instant::now();
        snap.compute_distances();
        let t4 = std::time::Instant::now();
        snap.timings = Timings {
            parse: (t1 - t0).as_secs_f64(),
            index: (t2 - t1).as_secs_f64(),
            dominators: (t3 - t2).as_secs_f64(),
            distances: (t4 - t3).as_secs_f64(),
        };
        Ok(snap)
    }

    /// Validate the arrays, build the edge index and rewrite `to_node` to ordinals.
    fn index(&mut self, locations: &[u32]) -> Result<(), SnapshotError> {
        let m = &self.meta;
        let (nf, ef) = (m.nf, m.ef);
        if nf == 0 || ef == 0 {
            return Err(corrupt("snapshot.meta", "empty node_fields or edge_fields"));
        }
        if !self.nodes.len().is_multiple_of(nf) {
            return Err(corrupt(
                "nodes",
                format!(
                    "{} values is not a multiple of {} node fields",
                    self.nodes.len(),
                    nf
                ),
            ));
        }
        if !self.edges.len().is_multiple_of(ef) {
            return Err(corrupt(
                "edges",
                format!(
                    "{} values is not a multiple of {} edge fields",
                    self.edges.len(),
                    ef
                ),
            ));
        }
        let n = self.nodes.len() / nf;
        let e = self.edges.len() / ef;
        if n == 0 {
            return Err(corrupt("nodes", "the snapshot has no nodes"));
        }
        if n >= u32::MAX as usize || e >= u32::MAX as usize {
            return Err(corrupt(
                "nodes",
                "too many nodes or edges for this analyser",
            ));
        }
        if m.declared_node_count != 0 && m.declared_node_count != n as u64 {
            self.warnings.push(format!(
                "header declares {} nodes, the file has {}",
                m.declared_node_count, n
            ));
        }
        let mut first_edge = Vec::with_capacity(n + 1);
        let mut acc: u64 = 0;
        for i in 0..n {
            first_edge.push(acc as u32);
            acc += self.nodes[i * nf + m.n_edges] as u64;
            if acc > e as u64 {
                return Err(corrupt(
                    "edges",
                    format!(
                        "node edge counts add up to more than the {e} edges in the file (at node {i})"
                    ),
                ));
            }
        }
        first_edge.push(acc as u32);
        if acc != e as u64 {
            return Err(corrupt(
                "edges",
                format!("node edge counts add up to {acc}, the file has {e} edges"),
            ));
        }
        let nlen = self.nodes.len() as u32;
        let (e_to, nf32) = (m.e_to, nf as u32);
        for rec in self.edges.chunks_exact_mut(ef) {
            let to = rec[e_to];
            if to >= nlen || to % nf32 != 0 {
                return Err(corrupt(
                    "edges",
                    format!("edge target {to} is not a node index"),
                ));
            }
            rec[e_to] = to / nf32;
        }
        let mut total: u64 = 0;
        for i in 0..n as u32 {
            total = total.saturating_add(self.self_size(i));
        }
        if total > MAX_TOTAL_SIZE {
            return Err(corrupt(
                "nodes",
                format!("node self sizes add up to {total} bytes, more than any heap holds"),
            ));
        }
        self.first_edge = first_edge;
        // locations: [object_index, script_id, line, column]
        for l in locations.chunks_exact(4) {
            if l[0] % nf32 == 0 && l[0] < nlen {
                self.locations.insert(l[0] / nf32, (l[1], l[2], l[3]));
            }
        }
        Ok(())
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len() / self.meta.nf
    }
    pub fn edge_count(&self) -> usize {
        self.edges.len() / self.meta.ef
    }
    #[inline]
    fn nfield(&self, i: NodeIx, f: usize) -> u32 {
        self.nodes[i as usize * self.meta.nf + f]
    }
    #[inline]
    pub fn node_type(&self, i: NodeIx) -> u32 {
        self.nfield(i, self.meta.n_type)
    }
    pub fn node_type_name(&self, i: NodeIx) -> &str {
        self.meta
            .node_types
            .get(self.node_type(i) as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }
    pub fn node_name(&self, i: NodeIx) -> &str {
        self.strings.get(self.nfield(i, self.meta.n_name) as usize)
    }
    pub fn node_id(&self, i: NodeIx) -> u64 {
        self.nfield(i, self.meta.n_id) as u64
    }
    #[inline]
    pub fn self_size(&self, i: NodeIx) -> u64 {
        let idx = i as usize * self.meta.nf + self.meta.n_self;
        let v = self.nodes[idx];
        if v == u32::MAX
            && let Some(&big) = self.overflow.get(&idx)
        {
            return big;
        }
        v as u64
    }
    pub fn retained_size(&self, i: NodeIx) -> u64 {
        self.retained[self.po_of[i as usize] as usize]
    }
    /// Immediate dominator (the root's is the root).
    pub fn idom(&self, i: NodeIx) -> NodeIx {
        self.ord_of[self.dom[self.po_of[i as usize] as usize] as usize]
    }
    pub fn distance(&self, i: NodeIx) -> u32 {
        self.distance[i as usize]
    }
    #[inline]
    pub fn edges(&self, i: NodeIx) -> impl Iterator<Item = Edge> + '_ {
        let m = &self.meta;
        let (a, b) = (
            self.first_edge[i as usize] as usize,
            self.first_edge[i as usize + 1] as usize,
        );
        self.edges[a * m.ef..b * m.ef]
            .chunks_exact(m.ef)
            .map(move |r| Edge {
                ty: r[m.e_type],
                name_or_index: r[m.e_name],
                to: r[m.e_to],
            })
    }
    /// Nodes that retain `i` through essential edges.
    pub fn retainers(&self, i: NodeIx) -> impl Iterator<Item = NodeIx> + '_ {
        let po = self.po_of[i as usize] as usize;
        self.retainers[self.first_ret[po] as usize..self.first_ret[po + 1] as usize]
            .iter()
            .map(|&r| self.ord_of[r as usize])
    }
    pub fn edge_type_name(&self, e: &Edge) -> &str {
        self.meta
            .edge_types
            .get(e.ty as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }
    /// The edge's name, for named edges.
    pub fn edge_name(&self, e: &Edge) -> Option<&str> {
        if e.ty == self.meta.et_element || e.ty == self.meta.et_hidden {
            None
        } else {
            Some(self.strings.get(e.name_or_index as usize))
        }
    }
    /// Function that allocated node `i`, when the snapshot has allocation traces.
    pub fn allocation_site(&self, i: NodeIx) -> Option<String> {
        let f = self.meta.n_trace?;
        let tid = self.nfield(i, f);
        if tid == 0 {
            return None;
        }
        let fi = *self.trace_func_of.get(&tid)? as usize;
        let fields = &self.meta.trace_function_info_fields;
        let w = fields.len().max(1);
        let rec = self.trace_function_infos.get(fi * w..fi * w + w)?;
        let field = |k: &str| {
            fields
                .iter()
                .position(|f| f == k)
                .and_then(|p| rec.get(p))
                .copied()
        };
        let name = field("name")
            .map(|i| self.strings.get(i as usize))
            .unwrap_or("");
        let script = field("script_name")
            .map(|i| self.strings.get(i as usize))
            .unwrap_or("");
        let name = if name.is_empty() { "(anonymous)" } else { name };
        let script = if script.is_empty() {
            "(unknown script)"
        } else {
            script
        };
        // V8 writes trace_function_infos' line and column 1-based already
        // (checked on node 20: an arrow function at 1-based 4:23 is written as 4, 23).
        Some(format!(
            "{name} {script}:{}:{}",
            field("line").unwrap_or(0),
            field("column").unwrap_or(0)
        ))
    }
    /// Script location of a closure: (script_id, line, column), 0-based line/column.
    pub fn location(&self, i: NodeIx) -> Option<(u32, u32, u32)> {
        self.locations.get(&i).copied()
    }
    #[inline]
    fn is_essential(&self, from: NodeIx, ty: u32) -> bool {
        ty != self.meta.et_weak && (ty != self.meta.et_shortcut || from == 0)
    }

    fn compute_dominators(&mut self) {
        let n = self.node_count();
        let ef = self.meta.ef;
        let (e_type, e_to) = (self.meta.e_type, self.meta.e_to);
        let (weak, shortcut) = (self.meta.et_weak, self.meta.et_shortcut);

        // Post-order DFS over essential edges: from the root first, then from
        // each node still unvisited (nodes held only weakly); the root is last.
        const UNSET: u32 = u32::MAX;
        let mut po_of = vec![UNSET; n];
        let mut ord_of: Vec<u32> = Vec::with_capacity(n);
        let mut stack: Vec<(u32, u32)> = Vec::new();
        let first_edge = &self.first_edge;
        let edges = &self.edges;
        let mut visit =
            |start: u32, po_of: &mut Vec<u32>, ord_of: &mut Vec<u32>, skip_root: bool| {
                // UNSET-1 marks "on the stack or visited, not yet numbered".
                po_of[start as usize] = UNSET - 1;
                stack.push((start, first_edge[start as usize]));
                while let Some(top) = stack.last_mut() {
                    let (u, cur) = *top;
                    let end = first_edge[u as usize + 1];
                    let mut next = None;
                    let mut c = cur;
                    while c < end {
                        let r = &edges[c as usize * ef..c as usize * ef + ef];
                        c += 1;
                        let ty = r[e_type];
                        if ty != weak && (ty != shortcut || u == 0) {
                            let v = r[e_to];
                            if po_of[v as usize] == UNSET {
                                next = Some(v);
                                break;
                            }
                        }
                    }
                    top.1 = c;
                    match next {
                        Some(v) => {
                            po_of[v as usize] = UNSET - 1;
                            stack.push((v, first_edge[v as usize]));
                        }
                        None => {
                            stack.pop();
                            if !(skip_root && u == 0) {
                                po_of[u as usize] = ord_of.len() as u32;
                                ord_of.push(u);
                            }
                        }
                    }
                }
            };
        visit(0, &mut po_of, &mut ord_of, true);
        for i in 1..n {
            if po_of[i] == UNSET {
                visit(i as u32, &mut po_of, &mut ord_of, false);
            }
        }
        po_of[0] = ord_of.len() as u32;
        ord_of.push(0);
        drop(stack);
        debug_assert_eq!(ord_of.len(), n);

        // Reverse graph of essential edges, in post-order space (CSR).
        let mut first_ret = vec![0u32; n + 1];
        for u in 0..n {
            let (a, b) = (first_edge[u] as usize, first_edge[u + 1] as usize);
            for r in edges[a * ef..b * ef].chunks_exact(ef) {
                let ty = r[e_type];
                if ty != weak && (ty != shortcut || u == 0) {
                    first_ret[po_of[r[e_to] as usize] as usize] += 1;
                }
            }
        }
        let mut acc = 0u32;
        for c in first_ret.iter_mut() {
            acc += *c;
            *c = acc;
        }
        let mut retainers = vec![0u32; acc as usize];
        for u in 0..n {
            let (a, b) = (first_edge[u] as usize, first_edge[u + 1] as usize);
            let pu = po_of[u];
            for r in edges[a * ef..b * ef].chunks_exact(ef) {
                let ty = r[e_type];
                if ty != weak && (ty != shortcut || u == 0) {
                    let v = po_of[r[e_to] as usize] as usize;
                    first_ret[v] -= 1;
                    retainers[first_ret[v] as usize] = pu;
                }
            }
        }
        // first_ret[po] is now the start of po's retainers; first_ret[n] == total.

        // Cooper–Harvey–Kennedy over post-order indices.
        let root_po = (n - 1) as u32;
        let no_entry = n as u32;
        let mut dom = vec![no_entry; n];
        dom[root_po as usize] = root_po;
        let mut affected = vec![1u8; n];
        let mut changed = true;
        while changed {
            changed = false;
            for po in (0..root_po).rev() {
                if affected[po as usize] == 0 {
                    continue;
                }
                affected[po as usize] = 0;
                if dom[po as usize] == root_po {
                    continue;
                }
                let rets = &retainers
                    [first_ret[po as usize] as usize..first_ret[po as usize + 1] as usize];
                let mut new_dom = no_entry;
                if rets.is_empty() {
                    new_dom = root_po;
                } else {
                    for &r in rets {
                        let mut rp = r;
                        if dom[rp as usize] == no_entry {
                            continue;
                        }
                        if new_dom == no_entry {
                            new_dom = rp;
                        } else {
                            while rp != new_dom {
                                while rp < new_dom {
                                    rp = dom[rp as usize];
                                }
                                while new_dom < rp {
                                    new_dom = dom[new_dom as usize];
                                }
                            }
                        }
                        if new_dom == root_po {
                            break;
                        }
                    }
                }
                if new_dom != no_entry && dom[po as usize] != new_dom {
                    dom[po as usize] = new_dom;
                    changed = true;
                    let ord = ord_of[po as usize] as usize;
                    let (a, b) = (first_edge[ord] as usize, first_edge[ord + 1] as usize);
                    for r in edges[a * ef..b * ef].chunks_exact(ef) {
                        let ty = r[e_type];
                        if ty != weak && (ty != shortcut || ord == 0) {
                            affected[po_of[r[e_to] as usize] as usize] = 1;
                        }
                    }
                }
            }
        }
        drop(affected);
        // Unreachable cycles never get a dominator: hang them off the root.
        for d in dom.iter_mut() {
            if *d == no_entry {
                *d = root_po;
            }
        }
        // Retained sizes, accumulated in post-order.
        let mut ret: Vec<u64> = ord_of.iter().map(|&o| self.self_size(o)).collect();
        for po in 0..root_po as usize {
            let mut d = dom[po] as usize;
            if d <= po {
                d = root_po as usize;
                dom[po] = root_po;
            }
            ret[d] += ret[po];
        }
        self.po_of = po_of;
        self.ord_of = ord_of;
        self.first_ret = first_ret;
        self.retainers = retainers;
        self.dom = dom;
        self.retained = ret;
    }

    fn compute_distances(&mut self) {
        let n = self.node_count();
        let mut dist = vec![u32::MAX; n];
        let mut queue: Vec<u32> = Vec::with_capacity(1024);
        dist[0] = 0;
        queue.push(0);
        let mut head = 0;
        while head < queue.len() {
            let u = queue[head];
            head += 1;
            let d = dist[u as usize] + 1;
            for e in self.edges(u) {
                if self.is_essential(u, e.ty) && dist[e.to as usize] == u32::MAX {
                    dist[e.to as usize] = d;
                    queue.push(e.to);
                }
            }
        }
        self.distance = dist;
    }

    /// Node ordinals of all nodes with the given type id.
    pub fn nodes_of_type(&self, ty: u32) -> impl Iterator<Item = NodeIx> + '_ {
        (0..self.node_count() as u32).filter(move |&i| self.node_type(i) == ty)
    }

    /// The synthetic `(Global handles)` root's edge count, if present.
    pub fn global_handle_count(&self) -> Option<u64> {
        let t = self.meta.t_synthetic;
        (0..self.node_count() as u32)
            .find(|&i| self.node_type(i) == t && self.node_name(i).starts_with("(Global handles"))
            .map(|i| self.edges(i).count() as u64)
    }

    /// Total of all self sizes (the root's retained size).
    pub fn total_size(&self) -> u64 {
        self.retained[self.po_of[0] as usize]
    }

    /// Retainer path from the root to `i`, following the retainer closest to
    /// the root at each step. Returns (retainer, edge) pairs, root side first.
    pub fn retainer_path(&self, i: NodeIx, max_len: usize) -> Vec<(NodeIx, Edge)> {
        self.retainer_path_by(i, max_len, &self.distance)
    }

    /// Distances from the root (as [`HeapSnapshot::distance`]) over the
    /// essential edges that do not leave a native (embedder) node: the
    /// JavaScript side of the graph. Node's own C++ objects (cleanup queues,
    /// handle wraps) reach every wrapper they own; these distances find the
    /// JS that holds it instead. `u32::MAX`: an embedder node (`native`, or
    /// `synthetic` named `Node / …`), or reachable only through them.
    pub fn js_distances(&self) -> Vec<u32> {
        let n = self.node_count();
        let native = self.meta.t_native;
        let synthetic = self.meta.t_synthetic;
        // Node reports active handles as synthetic roots named `Node / …`.
        let embedder = |i: u32| {
            let ty = self.node_type(i);
            ty == native || (ty == synthetic && self.node_name(i).starts_with("Node / "))
        };
        let mut dist = vec![u32::MAX; n];
        if n == 0 {
            return dist;
        }
        // `(Global handles)` last: what JS holds is named before what native
        // code holds through a persistent handle (an active socket's handle).
        let handles = (0..n as u32)
            .find(|&i| self.node_type(i) == synthetic && self.node_name(i) == "(Global handles)");
        let mut queue: Vec<u32> = Vec::with_capacity(1024);
        dist[0] = 0;
        queue.push(0);
        let mut head = 0;
        loop {
            while head < queue.len() {
                let u = queue[head];
                head += 1;
                let d = dist[u as usize].saturating_add(1);
                for e in self.edges(u) {
                    if self.is_essential(u, e.ty)
                        && dist[e.to as usize] == u32::MAX
                        && !embedder(e.to)
                        && Some(e.to) != handles
                    {
                        dist[e.to as usize] = d;
                        queue.push(e.to);
                    }
                }
            }
            match handles {
                Some(h) if dist[h as usize] == u32::MAX => {
                    let far = queue.iter().map(|&q| dist[q as usize]).max().unwrap_or(0);
                    dist[h as usize] = far.saturating_add(1);
                    queue.push(h);
                }
                _ => break,
            }
        }
        dist
    }

    /// [`HeapSnapshot::retainer_path`] along the distances `dist` (one per
    /// node, e.g. [`HeapSnapshot::js_distances`]).
    pub fn retainer_path_by(&self, i: NodeIx, max_len: usize, dist: &[u32]) -> Vec<(NodeIx, Edge)> {
        let mut out = Vec::new();
        let mut cur = i;
        let d = |x: NodeIx| dist.get(x as usize).copied().unwrap_or(u32::MAX);
        while cur != 0 && out.len() < max_len {
            let dcur = d(cur);
            let mut best: Option<NodeIx> = None;
            for r in self.retainers(cur) {
                let dr = d(r);
                if dr < dcur && best.is_none_or(|b| dr < d(b)) {
                    best = Some(r);
                }
            }
            let Some(r) = best else { break };
            // Prefer a named (property/context/element) edge over internal ones.
            let mut chosen: Option<Edge> = None;
            for e in self.edges(r) {
                if e.to == cur && self.is_essential(r, e.ty) {
                    let better = match chosen {
                        None => true,
                        Some(c) => c.ty == self.meta.et_internal || c.ty == self.meta.et_hidden,
                    };
                    if better {
                        chosen = Some(e);
                    }
                }
            }
            let Some(e) = chosen else { break };
            out.push((r, e));
            cur = r;
        }
        out.reverse();
        out
    }

    /// Type ids used by the analysis.
    pub fn types(&self) -> TypeIds {
        let m = &self.meta;
        TypeIds {
            hidden: m.t_hidden,
            array: m.t_array,
            string: m.t_string,
            object: m.t_object,
            code: m.t_code,
            closure: m.t_closure,
            native: m.t_native,
            synthetic: m.t_synthetic,
            object_shape: m.t_shape,
            e_context: m.et_context,
            e_element: m.et_element,
            e_property: m.et_property,
            e_internal: m.et_internal,
            e_hidden: m.et_hidden,
            e_shortcut: m.et_shortcut,
            e_weak: m.et_weak,
        }
    }
}

/// Node and edge type ids of one snapshot (`u32::MAX` when the type is absent).
#[derive(Debug, Clone, Copy)]
pub struct TypeIds {
    pub hidden: u32,
    pub array: u32,
    pub string: u32,
    pub object: u32,
    pub code: u32,
    pub closure: u32,
    pub native: u32,
    pub synthetic: u32,
    pub object_shape: u32,
    pub e_context: u32,
    pub e_element: u32,
    pub e_property: u32,
    pub e_internal: u32,
    pub e_hidden: u32,
    pub e_shortcut: u32,
    pub e_weak: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built snapshot: root -> A -> C, root -> B -> C, A -weak-> D.
    fn tiny() -> String {
        r#"{"snapshot":{"meta":{"node_fields":["type","name","id","self_size","edge_count"],
        "node_types":[["hidden","object","synthetic"],"string","number","number","number"],
        "edge_fields":["type","name_or_index","to_node"],
        "edge_types":[["element","property","weak","shortcut"],"string_or_number","node"]},
        "node_count":5,"edge_count":5},
        "nodes":[2,0,1,0,2, 1,1,3,10,2, 1,2,5,20,1, 1,3,7,30,0, 1,4,9,40,0],
        "edges":[1,1,5, 1,2,10, 1,3,15, 2,4,20, 1,3,15],
        "strings":["","A","B","C","D"]}"#
            .to_string()
    }

    #[test]
    fn dominators_tiny() {
        let s = HeapSnapshot::from_reader(tiny().as_bytes()).unwrap();
        assert_eq!(s.node_count(), 5);
        assert_eq!(s.idom(3), 0, "C is reachable from A and B");
        assert_eq!(s.idom(1), 0);
        // D is held only weakly: orphan, dominated by root.
        assert_eq!(s.idom(4), 0);
        assert_eq!(s.retained_size(1), 10);
        assert_eq!(s.retained_size(0), 100);
        let p = s.retainer_path(3, 10);
        assert_eq!(p.len(), 2);
    }

    fn scan(text: &str, cap: usize) -> Result<Vec<u32>, String> {
        let mut sc = Scanner {
            r: BufReader::with_capacity(cap, text.as_bytes()),
            pos: 0,
        };
        let mut v = Vec::new();
        let mut ov = HashMap::new();
        sc.u32_array(&mut v, Some(&mut ov)).map_err(|e| e.msg)?;
        if let Some((&k, &big)) = ov.iter().next() {
            assert_eq!(v[k], u32::MAX);
            assert!(big > u32::MAX as u64);
        }
        Ok(v)
    }

    #[test]
    fn number_arrays() {
        for cap in [1, 2, 3, 7, 1024] {
            assert_eq!(scan("[1, 23 ,456\n,7]", cap).unwrap(), vec![1, 23, 456, 7]);
            assert_eq!(scan(" [ ] ", cap).unwrap(), Vec::<u32>::new());
            assert_eq!(scan("[0]", cap).unwrap(), vec![0]);
            assert_eq!(scan("[4294967296,1]", cap).unwrap(), vec![u32::MAX, 1]);
            for bad in [
                "[1 2]",
                "[1,]",
                "[,1]",
                "[1,,2]",
                "[-1]",
                "[1.5]",
                "[99999999999999999999]",
                "[1",
            ] {
                assert!(scan(bad, cap).is_err(), "{bad} with capacity {cap}");
            }
        }
    }

    #[test]
    fn trace_tree_flattened() {
        // [id, function_info_index, count, size, children]; deeper than serde_json's limit.
        let mut t = String::from("[1,0,0,0,[2,1,0,0,[");
        for i in 0..300 {
            t.push_str(&format!("{},{},0,0,[", 10 + i, 2 + i % 3));
        }
        t.push_str(&"]".repeat(301));
        t.push_str("],3,2,0,0,[]]");
        for cap in [1, 5, 4096] {
            let mut sc = Scanner {
                r: BufReader::with_capacity(cap, t.as_bytes()),
                pos: 0,
            };
            let mut out = HashMap::new();
            sc.trace_tree(&mut out, 5, 0, 1).map_err(|e| e.msg).unwrap();
            assert_eq!(out.len(), 303);
            assert_eq!(out[&1], 0);
            assert_eq!(out[&2], 1);
            assert_eq!(out[&3], 2);
            assert_eq!(out[&309], 2 + 299 % 3);
            // Fields in another order (function index before id).
            let mut sc = Scanner {
                r: BufReader::with_capacity(cap, t.as_bytes()),
                pos: 0,
            };
            let mut out = HashMap::new();
            sc.trace_tree(&mut out, 5, 1, 0).map_err(|e| e.msg).unwrap();
            assert_eq!(out[&0], 1);
        }
    }

    #[test]
    fn strings_with_escapes() {
        let mut sc = Scanner {
            r: BufReader::with_capacity(
                3,
                r#"["a\"b", "\u00e9\ud83d\ude00", "\ud800x", ""]"#.as_bytes(),
            ),
            pos: 0,
        };
        let mut st = Strings::default();
        sc.strings(&mut st).map_err(|e| e.msg).unwrap();
        assert_eq!(st.len(), 4);
        assert_eq!(st.get(0), "a\"b");
        assert_eq!(st.get(1), "é😀");
        assert_eq!(st.get(2), "\u{FFFD}x");
        assert_eq!(st.get(3), "");
    }

    #[test]
    fn truncated_is_error() {
        let t = tiny();
        let cut = &t[..t.find("\"edges\"").unwrap() + 12];
        let e = HeapSnapshot::from_reader(cut.as_bytes()).unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        // Truncated in strings: analysed with a warning.
        let cut = &t[..t.len() - 8];
        let s = HeapSnapshot::from_reader(cut.as_bytes()).unwrap();
        assert!(!s.warnings.is_empty());
    }

    #[test]
    fn corrupt_is_error() {
        let t = tiny().replace("1,3,15, 2,4,20", "1,3,16, 2,4,20");
        let e = HeapSnapshot::from_reader(t.as_bytes()).unwrap_err();
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
        let e = HeapSnapshot::from_reader(&b"{\"nodes\":[1,2,x]}"[..]).unwrap_err();
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
        let e = HeapSnapshot::from_reader(&b"not json"[..]).unwrap_err();
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
    }
}
