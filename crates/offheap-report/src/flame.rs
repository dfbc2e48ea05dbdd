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

/// A small fast hasher (FxHash's mixing) for the hot maps keyed by ids
/// and frames; the keys come from our own Model, so hash flooding is moot.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A HashMap with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// Label shown for a stack without frames.
pub const NO_STACK: &str = "[no stack]";

struct Arena {
    frame: Option<usize>,
    value: u64,
    children: Vec<usize>,
}

/// The stacks of a Model with their frames interned once, so that several
/// trees (one per weight) are built without looking at strings again.
pub struct Interned<'a> {
    pub frames: Vec<FrameInfo>,
    /// Per stack of `model.profile.stacks`: frame ids, outermost first.
    stacks: Vec<Vec<u32>>,
    model: &'a Model,
}

/// Interns the frames of `model.profile.stacks`. Frames merge when label,
/// kind and module agree. A stack without frames gets [`NO_STACK`].
pub fn intern(model: &Model) -> Interned<'_> {
    let mut frames: Vec<FrameInfo> = Vec::new();
    let mut frame_ids: HashMap<(String, FrameKind, String), u32> = HashMap::new();
    // Most frames repeat: look them up by content first, without allocating.
    let mut by_frame: FastMap<&Frame, u32> = FastMap::default();
    let mut intern_one = |f: &Frame, frames: &mut Vec<FrameInfo>| -> u32 {
        let label = frame_label(f);
        let key = (label.clone(), f.kind, f.module.clone());
        *frame_ids.entry(key).or_insert_with(|| {
            frames.push(FrameInfo {
                label,
                kind: f.kind,
                module: f.module.clone(),
                location: format::file_line(f),
            });
            (frames.len() - 1) as u32
        })
    };
    let mut no_stack_id = None;
    let mut stacks = Vec::with_capacity(model.profile.stacks.len());
    for s in &model.profile.stacks {
        if s.frames.is_empty() {
            let id = *no_stack_id.get_or_insert_with(|| {
                frames.push(FrameInfo {
                    label: NO_STACK.into(),
                    kind: FrameKind::Unknown,
                    module: String::new(),
                    location: String::new(),
                });
                (frames.len() - 1) as u32
            });
            stacks.push(vec![id]);
            continue;
        }
        let mut ids = Vec::with_capacity(s.frames.len());
        for f in s.frames.iter().rev() {
            let id = match by_frame.get(f) {
                Some(&id) => id,
                None => {
                    let id = intern_one(f, &mut frames);
                    by_frame.insert(f, id);
                    id
                }
            };
            ids.push(id);
        }
        stacks.push(ids);
    }
    Interned {
        frames,
        stacks,
        model,
    }
}

impl Interned<'_> {
    /// Frame ids of stack `i` of `model.profile.stacks`, outermost first.
    pub fn stack(&self, i: usize) -> &[u32] {
        &self.stacks[i]
    }
}

/// Builds the tree of `model.profile.stacks` weighed by `weight`. Stacks of
/// weight 0 are left out.
pub fn build(model: &Model, weight: Weight) -> Tree {
    build_from(&intern(model), weight)
}

/// Like [`build`], from interned stacks.
pub fn build_from(interned: &Interned, weight: Weight) -> Tree {
    let mut arena = vec![Arena {
        frame: None,
        value: 0,
        children: Vec::new(),
    }];
    let mut edges: FastMap<(usize, u32), usize> = FastMap::default();
    for (s, ids) in interned.model.profile.stacks.iter().zip(&interned.stacks) {
        let w = weight.of(s);
        if w == 0 {
            continue;
        }
        arena[0].value += w;
        let mut cur = 0usize;
        for &fid in ids {
            let next = match edges.get(&(cur, fid)) {
                Some(&n) => n,
                None => {
                    arena.push(Arena {
                        frame: Some(fid as usize),
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
    let frames = interned.frames.clone();
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
    depth_above(n, 0)
}

/// Maximum depth counting only nodes of value `min` or more.
pub fn depth_above(n: &Node, min: u64) -> usize {
    n.children
        .iter()
        .filter(|c| c.value >= min)
        .map(|c| 1 + depth_above(c, min))
        .max()
        .unwrap_or(0)
}

/// The smallest node value to keep so that at most about `max_nodes` nodes
/// remain, and never below `floor`: the lightest nodes are dropped first.
pub fn threshold(root: &Node, floor: u64, max_nodes: usize) -> u64 {
    fn count(n: &Node, min: u64, left: &mut usize) {
        if *left == 0 {
            return;
        }
        *left -= 1;
        for c in n.children.iter().filter(|c| c.value >= min) {
            count(c, min, left);
        }
    }
    let mut min = floor.max(1);
    loop {
        let mut left = max_nodes + 1;
        count(root, min, &mut left);
        if left > 0 || min >= root.value.max(1) {
            return min;
        }
        min = min.saturating_mul(2);
    }
}
