//! The analysis's view of symbolization: one `Symbols` per recorded process,
//! caching frames per address. The work is done by offheap-symbols.

use offheap_format::Recording;
use offheap_format::native::NativeStream;
use offheap_symbols::{Frame, FrameKind};
use std::collections::HashMap;

pub struct Symbols<'a> {
    native: &'a NativeStream,
    cache: HashMap<u64, Vec<Frame>>,
    notes: Vec<String>,
}

impl<'a> Symbols<'a> {
    pub fn new(_rec: &Recording, native: &'a NativeStream) -> Self {
        Symbols { native, cache: HashMap::new(), notes: Vec::new() }
    }

    /// Frames for a stack of return addresses, innermost first.
    pub fn frames(&mut self, addrs: &[u64], _t_ms: f64) -> Vec<Frame> {
        let mut out = Vec::with_capacity(addrs.len());
        for &a in addrs {
            let native = self.native;
            let frames = self.cache.entry(a).or_insert_with(|| vec![unknown(native, a)]);
            out.extend(frames.iter().cloned());
        }
        out
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

fn unknown(native: &NativeStream, addr: u64) -> Frame {
    match native.modules.iter().find(|m| m.contains(addr)) {
        Some(m) => {
            let name = m.path.rsplit('/').next().unwrap_or(&m.path);
            Frame {
                function: format!("{name}+{:#x}", addr - m.bias),
                module: m.path.clone(),
                file: None,
                line: None,
                kind: FrameKind::Unknown,
                address: addr,
                inlined: false,
            }
        }
        None => Frame {
            function: format!("{addr:#x}"),
            module: "[anon]".into(),
            file: None,
            line: None,
            kind: FrameKind::Unknown,
            address: addr,
            inlined: false,
        },
    }
}
