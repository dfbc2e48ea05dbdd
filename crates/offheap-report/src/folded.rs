//! `stacks.folded`: collapsed stacks, `root;...;leaf value` per line
//! (outermost frame first), as flamegraph.pl, inferno and speedscope read them.

use crate::Weight;
use crate::escape::folded_frame;
use crate::flame::NO_STACK;
use crate::format::frame_label;
use offheap_analysis::Model;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Collapsed stacks of `model.profile.stacks` weighed by `weight`. Lines are
/// sorted, identical stacks merged, zero weights left out. Frame names are
/// [`frame_label`]s with `;` and line breaks removed.
pub fn folded(model: &Model, weight: Weight) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for s in &model.profile.stacks {
        let w = weight.of(s);
        if w == 0 {
            continue;
        }
        let key = if s.frames.is_empty() {
            NO_STACK.to_string()
        } else {
            let names: Vec<String> = s
                .frames
                .iter()
                .rev()
                .map(|f| folded_frame(&frame_label(f)))
                .collect();
            names.join(";")
        };
        *lines.entry(key).or_default() += w;
    }
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{k} {v}");
    }
    out
}
