//! The flame-graph tree shared by the SVG and HTML flame graphs: stacks
//! merged from the root (outermost frame) down, weighed by one [`Weight`].

use crate::Weight;
use crate::format::{self, frame_label};
use offheap_analysis::Model;
use offheap_symbols::{Frame, FrameKind};
use std::collections::HashMap;

/// A distinct frame of the tree (shared by all nodes that show it).
#[derive(Clone, Debug, PartialEq)]
pub struct FrameInfo {
    /// What the flame graph prints ([`frame_label`]).
    pub label: String,
    pub kind: FrameKind,
    pub module: String,
    /// `file:line` or empty.
    pub location: String,
}

/// One node: a frame reached through one path from the root.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Index into [`Tree::frames`]; `None` for the root.
    pub frame: Option<usize>,
    /// Total weight of the stacks through this node.
    pub value: u64,
    /// Children, heaviest first (ties by label), deterministic.
    pub children: Vec<Node>,
}

impl Node {
    /// Weight of stacks that end here.
    pub fn self_value(&self) -> u64 {
        self.value
            .saturating_sub(self.children.iter().map(|c| c.value).sum())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    pub weight: Weight,
    pub frames: Vec<FrameInfo>,
    pub root: Node,
}

impl Tree {
    pub fn total(&self) -> u64 {
        self.root.value
    }
    pub fn frame(&self, n: &Node) -> Option<&FrameInfo> {
        n.frame.map(|i| &self.frames[i])
    }
}

/// Label shown for a stack without frames.
pub const NO_STACK: &str = "[no stack]";

struct Arena {
    frame: Option<usize>,
    value: u64,
    children: Vec<usize>,
}

/// Builds the tree of `model.profile.stacks` weighed by `weight`. Stacks of
/// weight 0 are left out. Frames merge when label, kind and module agree.
pub fn build(model: &Model, weight: Weight) -> Tree {
    let mut frames: Vec<FrameInfo> = Vec::new();
    let mut frame_ids: HashMap<(String, FrameKind, String), usize> = HashMap::new();
    let mut arena = vec![Arena {
        frame: None,
        value: 0,
        children: Vec::new(),
    }];
    let mut edges: HashMap<(usize, usize), usize> = HashMap::new();
    let mut intern = |f: &Frame, frames: &mut Vec<FrameInfo>| -> usize {
        let label = frame_label(f);
        let key = (label.clone(), f.kind, f.module.clone());
        *frame_ids.entry(key).or_insert_with(|| {
            frames.push(FrameInfo {
                label,
                kind: f.kind,
                module: f.module.clone(),
                location: format::file_line(f),
            });
            frames.len() - 1
        })
    };
    let no_stack = Frame {
        function: NO_STACK.into(),
        module: String::new(),
        file: None,
        line: None,
        kind: FrameKind::Unknown,
        address: 0,
        inlined: false,
    };
    for s in &model.profile.stacks {
        let w = weight.of(s);
        if w == 0 {
            continue;
        }
        arena[0].value += w;
        let mut cur = 0usize;
        let path: Vec<&Frame> = if s.frames.is_empty() {
            vec![&no_stack]
        } else {
            s.frames.iter().rev().collect()
        };
        for f in path {
            let fid = intern(f, &mut frames);
            let next = match edges.get(&(cur, fid)) {
                Some(&n) => n,
                None => {
                    arena.push(Arena {
                        frame: Some(fid),
                        value: 0,
                        children: Vec::new(),
                    });
                    let n = arena.len() - 1;
                    arena[cur].children.push(n);
                    edges.insert((cur, fid), n);
                    n
                }
            };
            arena[next].value += w;
            cur = next;
        }
    }
    let root = materialize(&arena, 0, &frames);
    Tree {
        weight,
        frames,
        root,
    }
}

fn materialize(arena: &[Arena], i: usize, frames: &[FrameInfo]) -> Node {
    let mut children: Vec<Node> = arena[i]
        .children
        .iter()
        .map(|&c| materialize(arena, c, frames))
        .collect();
    children.sort_by(|a, b| {
        b.value.cmp(&a.value).then_with(|| {
            let la = a.frame.map(|f| frames[f].label.as_str()).unwrap_or("");
            let lb = b.frame.map(|f| frames[f].label.as_str()).unwrap_or("");
            la.cmp(lb)
        })
    });
    Node {
        frame: arena[i].frame,
        value: arena[i].value,
        children,
    }
}

/// Maximum depth of the tree (root = 0).
pub fn depth(n: &Node) -> usize {
    n.children.iter().map(|c| 1 + depth(c)).max().unwrap_or(0)
}
