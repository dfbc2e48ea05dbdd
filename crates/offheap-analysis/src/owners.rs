//! Native bytes tied to their JS owners: the join of the native agent's
//! suspects with the heap snapshot's native wrappers.
//!
//! Both sides are classed by mechanism. A native suspect's stack says how
//! its bytes were allocated (zlib's `AllocForZlib`/`deflateInit2_`,
//! `SSL_CTX_new`, an addon's own function, Node's ArrayBuffer allocator);
//! the snapshot says which JS objects own memory of that mechanism
//! (`heap.native_wrappers`, grouped by the JS that holds them: see
//! offheap-node's `wrappers`). The live bytes of a class, summed over its
//! suspects, are apportioned to the groups of that class by their count of
//! wrappers. The pointer values that would join them object by object are
//! in neither recording: the join is by mechanism, and says so.

use crate::model::{JsOwner, Suspect, SuspectKind};
use offheap_format::units::bytes as human;
use offheap_symbols::{Frame, FrameKind};
use serde::{Deserialize, Serialize};

/// One step of a retainer path, as offheap-node writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathStep {
    pub edge_type: String,
    pub edge: String,
    pub node: String,
    pub node_type: String,
    pub node_id: u64,
}

/// A group of `heap.native_wrappers` (the fields the join reads).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct WrapperGroup {
    class: String,
    native: String,
    wrapper: String,
    count: u64,
    count_before: Option<u64>,
    reported_bytes: u64,
    held_by: String,
    holder: String,
    holder_allocated_by: Option<String>,
    allocated_by: Option<String>,
    path_text: String,
    path: Vec<PathStep>,
}

/// JS that holds native memory (`summary.json` `owners`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OwnerFinding {
    /// The mechanism: `zlib`, `brotli`, `tls-context`, `tls-socket`,
    /// `socket`, `napi`, `array-buffer`.
    pub class: String,
    /// The JS name that holds the wrappers (`compressors`, `kept[]`).
    pub held_by: String,
    /// The object holding them: `Map`, `Array`, `Object`, `a closure variable`.
    pub holder: String,
    /// Where the holder was created (snapshots with `--track-allocations`).
    pub holder_allocated_by: Option<String>,
    /// Constructor of the wrappers (`DeflateRaw`, `Block`).
    pub wrapper: String,
    /// The native node in the snapshot (`Node / ZlibStream`, `napi_wrap`).
    pub native: String,
    /// Wrappers held, in the last snapshot.
    pub count: u64,
    /// The same in the first snapshot, when two were taken.
    pub count_before: Option<u64>,
    /// Live native bytes attributed to them: the peak live bytes of the
    /// class's suspects, times this group's share of the class's wrappers.
    pub native_bytes: u64,
    /// Growth attributed the same way, bytes per second.
    pub bytes_per_s: f64,
    /// What Node itself reported for them in the snapshot (a lower bound).
    pub reported_bytes: u64,
    /// For `napi`: the addon(s) whose stacks hold the bytes.
    pub modules: Vec<String>,
    /// Ranks of the suspects whose bytes these are.
    pub suspects: Vec<u32>,
    /// The application's JS on those suspects' stacks (queued-from for
    /// threadpool work), else where the wrappers were allocated.
    pub js: Option<JsOwner>,
    /// Where an example wrapper was allocated (snapshots with `--track-allocations`).
    pub allocated_by: Option<String>,
    /// Retainer path from a GC root to an example wrapper.
    pub path_text: String,
    pub path: Vec<PathStep>,
    /// The finding in one sentence.
    pub text: String,
}

/// The mechanism that allocates a native stack's bytes, from the native
/// frames on it (the JS queued-from part is not looked at), or None.
pub fn mechanism(frames: &[Frame]) -> Option<String> {
    let native = || {
        frames
            .iter()
            .filter(|f| matches!(f.kind, FrameKind::Native | FrameKind::Unknown))
    };
    let has = |pat: &str| native().any(|f| f.function.contains(pat));
    let class =
        if has("AllocForZlib") || has("deflateInit") || has("inflateInit") || has("ZlibContext") {
            "zlib"
        } else if has("AllocForBrotli") || has("BrotliEncoder") || has("BrotliDecoder") {
            "brotli"
        } else if has("SSL_CTX_new") || has("SecureContext") {
            "tls-context"
        } else if has("SSL_new") || has("TLSWrap") {
            "tls-socket"
        } else if has("TCPWrap") || has("PipeWrap") || has("UDPWrap") {
            "socket"
        } else if crate::suspects::is_backing_store(frames) {
            "array-buffer"
        } else if let Some(f) = native().find(|f| f.module.ends_with(".node")) {
            return Some(format!("napi:{}", f.module));
        } else {
            return None;
        };
    Some(class.to_string())
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// `a Map`, `an Array`, `a closure variable`.
fn with_article(holder: &str) -> String {
    if holder.starts_with("a ") || holder.starts_with('(') {
        return holder.to_string();
    }
    let vowel = holder
        .chars()
        .next()
        .is_some_and(|c| "AEIOUaeiou".contains(c));
    format!("{} {holder}", if vowel { "an" } else { "a" })
}

/// What the wrappers are called (`284 DeflateRaw streams`) and what their
/// memory is (`whose zlib state is`).
fn words(class: &str, wrapper: &str, count: u64, modules: &[String]) -> (String, String) {
    let w = if wrapper.is_empty() || wrapper == "Object" {
        String::new()
    } else {
        format!("{wrapper} ")
    };
    let (noun, memory) = match class {
        "zlib" => ("streams", "zlib state is"),
        "brotli" => ("streams", "Brotli state is"),
        "tls-context" => ("TLS contexts", "OpenSSL state (SSL_CTX) is"),
        "tls-socket" => ("TLS sockets", "OpenSSL state is"),
        "socket" => ("sockets", "native handle state is"),
        "array-buffer" => {
            let n = if w.is_empty() {
                "buffers".to_string()
            } else if count == 1 {
                wrapper.to_string()
            } else {
                format!("{wrapper}s")
            };
            return (
                n,
                if count == 1 {
                    "backing store is".into()
                } else {
                    "backing stores are".into()
                },
            );
        }
        _ => {
            let m: Vec<&str> = modules.iter().map(|m| basename(m)).collect();
            return (
                format!("{w}objects wrapped by {}", m.join(" or ")),
                "native memory is".into(),
            );
        }
    };
    (format!("{w}{noun}"), memory.into())
}

struct Class {
    bytes: u64,
    rate: f64,
    ranks: Vec<u32>,
    js: Option<JsOwner>,
    modules: Vec<String>,
}

/// Most findings per class.
const PER_CLASS: usize = 5;

/// The findings: native suspects (ranked) joined with the wrappers of the
/// snapshot's `heap` findings, largest first. Empty without either.
pub fn owners(suspects: &[Suspect], heap: Option<&serde_json::Value>) -> Vec<OwnerFinding> {
    let Some(groups) = heap.and_then(|h| h.get("native_wrappers")) else {
        return Vec::new();
    };
    let groups: Vec<WrapperGroup> = match serde_json::from_value(groups.clone()) {
        Ok(g) => g,
        Err(_) => return Vec::new(),
    };
    // Class totals over the native suspects.
    let mut classes: Vec<(String, Class)> = Vec::new();
    for s in suspects {
        if s.kind == SuspectKind::JsHeap {
            continue;
        }
        let Some(m) = mechanism(&s.frames) else {
            continue;
        };
        let (class, module) = match m.strip_prefix("napi:") {
            Some(module) => ("napi".to_string(), Some(module.to_string())),
            None => (m, None),
        };
        let k = match classes.iter().position(|c| c.0 == class) {
            Some(k) => k,
            None => {
                classes.push((
                    class,
                    Class {
                        bytes: 0,
                        rate: 0.0,
                        ranks: Vec::new(),
                        js: None,
                        modules: Vec::new(),
                    },
                ));
                classes.len() - 1
            }
        };
        let c = &mut classes[k].1;
        c.bytes = c.bytes.saturating_add(s.live_bytes);
        c.rate += s.bytes_per_s;
        c.ranks.push(s.rank);
        if c.js.is_none() {
            c.js = s.js.clone();
        }
        if let Some(m) = module
            && !c.modules.contains(&m)
        {
            c.modules.push(m);
        }
    }
    let mut out = Vec::new();
    for (class, c) in &classes {
        if c.bytes == 0 {
            continue;
        }
        let mut gs: Vec<&WrapperGroup> = groups
            .iter()
            .filter(|g| &g.class == class && g.count > 0)
            .collect();
        // Saturating: heap.json is read back from the recording.
        let total: u64 = gs.iter().fold(0u64, |a, g| a.saturating_add(g.count));
        if total == 0 {
            continue;
        }
        gs.sort_by(|a, b| b.count.cmp(&a.count).then(a.held_by.cmp(&b.held_by)));
        for g in gs.into_iter().take(PER_CLASS) {
            // Groups with a small share of the wrappers explain little; and
            // wrappers no JS name holds (`(other holders)`, `(internal)`,
            // `(unreachable from the roots)`) make no finding of their own.
            if g.count.saturating_mul(20) < total
                || g.held_by.starts_with('(')
                || g.held_by.is_empty()
            {
                continue;
            }
            let share = g.count as f64 / total as f64;
            let native_bytes =
                (c.bytes as u128 * g.count.min(total) as u128 / total as u128) as u64;
            let (noun, memory) = words(class, &g.wrapper, g.count, &c.modules);
            let created = g
                .holder_allocated_by
                .as_ref()
                .map(|a| format!(", created in {a}"))
                .unwrap_or_default();
            let grew = match g.count_before {
                Some(b) if g.count > b => format!(" (+{} since the first snapshot)", g.count - b),
                _ => String::new(),
            };
            let text = format!(
                "`{}` ({}{created}) holds {} {noun}{grew} whose {memory} {} live",
                g.held_by,
                with_article(&g.holder),
                g.count,
                human(native_bytes),
            );
            out.push(OwnerFinding {
                class: class.clone(),
                held_by: g.held_by.clone(),
                holder: g.holder.clone(),
                holder_allocated_by: g.holder_allocated_by.clone(),
                wrapper: g.wrapper.clone(),
                native: g.native.clone(),
                count: g.count,
                count_before: g.count_before,
                native_bytes,
                bytes_per_s: c.rate * share,
                reported_bytes: g.reported_bytes,
                modules: c.modules.clone(),
                suspects: c.ranks.clone(),
                js: c.js.clone(),
                allocated_by: g.allocated_by.clone(),
                path_text: g.path_text.clone(),
                path: g.path.clone(),
                text,
            });
        }
    }
    out.sort_by(|a, b| {
        b.native_bytes
            .cmp(&a.native_bytes)
            .then(a.held_by.cmp(&b.held_by))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, module: &str, kind: FrameKind) -> Frame {
        Frame {
            function: function.into(),
            module: module.into(),
            file: None,
            line: None,
            kind,
            address: 0,
            inlined: false,
        }
    }

    fn suspect(rank: u32, frames: Vec<Frame>, live: u64) -> Suspect {
        let mut s = crate::suspects::suspect(frames, SuspectKind::Malloc, 1000.0, live, 10);
        s.rank = rank;
        s
    }

    #[test]
    fn mechanisms_from_native_frames() {
        let zlib = vec![
            f("AllocForZlib", "/usr/bin/node", FrameKind::Native),
            f("deflateInit2_", "/usr/bin/node", FrameKind::Native),
            f("getCompressor", "/app/app.js", FrameKind::Js),
        ];
        assert_eq!(mechanism(&zlib).as_deref(), Some("zlib"));
        let addon = vec![
            f("alloc_block", "/tmp/wrap.node", FrameKind::Native),
            f("keep", "/app/app.js", FrameKind::Js),
        ];
        assert_eq!(mechanism(&addon).as_deref(), Some("napi:/tmp/wrap.node"));
        // A JS function named like a mechanism is not one.
        let js = vec![
            f("malloc", "/lib/libc.so.6", FrameKind::Native),
            f("AllocForZlib", "/app/app.js", FrameKind::Js),
        ];
        assert_eq!(mechanism(&js), None);
    }

    #[test]
    fn bytes_are_apportioned_by_count_and_bad_input_is_ignored() {
        let zlib = vec![f("AllocForZlib", "/usr/bin/node", FrameKind::Native)];
        let suspects = vec![
            suspect(1, zlib.clone(), 900 << 10),
            suspect(2, zlib, 100 << 10),
        ];
        let heap = serde_json::json!({"native_wrappers": [
            {"class": "zlib", "wrapper": "DeflateRaw", "count": 300, "count_before": 0,
             "held_by": "compressors", "holder": "Map", "path_text": "(root) --compressors--> Map"},
            {"class": "zlib", "wrapper": "Gzip", "count": 100, "held_by": "old[]", "holder": "Array"},
            {"class": "zlib", "wrapper": "Gzip", "count": 1, "held_by": "x", "holder": "Object"},
            {"class": "zlib", "wrapper": "Gzip", "count": 100, "held_by": "(other holders)", "holder": "(other holders)"},
            {"class": "tls-context", "count": 5, "held_by": "ctx", "holder": "Object"}
        ]});
        let o = owners(&suspects, Some(&heap));
        assert_eq!(o.len(), 2, "{o:#?}");
        assert_eq!(o[0].held_by, "compressors");
        assert_eq!(o[0].native_bytes, (1000u64 << 10) * 300 / 501);
        assert_eq!(o[0].suspects, vec![1, 2]);
        assert!(
            o[0].text
                .starts_with("`compressors` (a Map) holds 300 DeflateRaw streams (+300 since"),
            "{}",
            o[0].text
        );
        assert_eq!(o[1].holder, "Array");
        // No suspect of the class: no finding; malformed groups: none.
        assert!(owners(&[], Some(&heap)).is_empty());
        let bad = serde_json::json!({"native_wrappers": [{"class": 3}]});
        let s1 = suspects[..1].to_vec();
        assert!(owners(&s1, Some(&bad)).is_empty());
        assert!(owners(&s1, Some(&serde_json::json!({"native_wrappers": "x"}))).is_empty());
        assert!(owners(&s1, None).is_empty());
        // Absurd counts read back from a damaged heap.json do not overflow.
        let huge = serde_json::json!({"native_wrappers": [
            {"class": "zlib", "count": u64::MAX, "count_before": 1, "held_by": "a", "holder": "Map"},
            {"class": "zlib", "count": u64::MAX, "held_by": "b", "holder": "Map"}
        ]});
        let o = owners(&s1, Some(&huge));
        assert_eq!(o.len(), 2);
        assert!(o.iter().all(|x| x.native_bytes <= 900 << 10));
    }
}
