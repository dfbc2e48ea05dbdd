//! `stacks.folded`: collapsed stacks, `root;...;leaf value` per line
//! (outermost frame first), as flamegraph.pl, inferno and speedscope read them.

use crate::Weight;
use crate::escape::folded_frame;
use crate::flame;
use offheap_analysis::Model;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Collapsed stacks of `model.profile.stacks` weighed by `weight`. Lines are
/// sorted, identical stacks merged, zero weights left out. Frame names are
/// [`frame_label`]s with `;` and line breaks removed.
pub fn folded(model: &Model, weight: Weight) -> String {
    folded_with(model, &flame::intern(model), weight)
}

/// [`folded`] with the frames already interned.
pub fn folded_with(model: &Model, interned: &flame::Interned<'_>, weight: Weight) -> String {
    let names: Vec<String> = interned
        .frames
        .iter()
        .map(|f| folded_frame(&f.label))
        .collect();
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    let mut key = String::new();
    for (i, s) in model.profile.stacks.iter().enumerate() {
        let w = weight.of(s);
        if w == 0 {
            continue;
        }
        key.clear();
        for (j, &id) in interned.stack(i).iter().enumerate() {
            if j > 0 {
                key.push(';');
            }
            key.push_str(&names[id as usize]);
        }
        match lines.get_mut(key.as_str()) {
            Some(v) => *v += w,
            None => {
                lines.insert(key.clone(), w);
            }
        }
    }
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{k} {v}");
    }
    out
}
