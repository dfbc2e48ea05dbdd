//! `profile.pb.gz`: a pprof profile (github.com/google/pprof
//! `proto/profile.proto`) following Go's heap-profile convention, so that
//! `go tool pprof`, Pyroscope and Parca read it:
//! sample types `alloc_objects/count, alloc_space/bytes, inuse_objects/count,
//! inuse_space/bytes` (inuse_space last and the default), period type
//! `space/bytes`, period = the sampling interval. Frames come symbolized:
//! Function and Line rows, inlined frames as several Lines of one Location
//! (innermost first), native frames in Mappings with their build-ids, JS
//! frames without a mapping (mapping_id 0).

use crate::format::function_name;
use flate2::Compression;
use flate2::write::GzEncoder;
use offheap_analysis::Model;
use offheap_format::native::AllocKind;
use offheap_symbols::{Frame, FrameKind};
use prost::Message;
use std::collections::HashMap;
use std::io::Write;

/// Hand-written `perftools.profiles` messages (field numbers from profile.proto).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

use proto::*;

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.id("");
        s
    }
    fn id(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.ids.get(v) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.ids.insert(v.to_string(), i);
        i
    }
}

/// The profile as a message (not encoded), for inspection and tests.
pub fn pprof_message(model: &Model) -> Profile {
    let mut st = Strings::new();
    let vt = |st: &mut Strings, t: &str, u: &str| ValueType {
        r#type: st.id(t),
        unit: st.id(u),
    };
    let sample_type = vec![
        vt(&mut st, "alloc_objects", "count"),
        vt(&mut st, "alloc_space", "bytes"),
        vt(&mut st, "inuse_objects", "count"),
        vt(&mut st, "inuse_space", "bytes"),
    ];
    let period_type = Some(vt(&mut st, "space", "bytes"));
    let default_sample_type = st.id("inuse_space");

    // Mappings: every module of the profile, ids from 1 in the Model's order.
    let modules = &model.profile.modules;
    let mut mapping = Vec::with_capacity(modules.len());
    for (i, m) in modules.iter().enumerate() {
        let start = m.ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let limit = m.ranges.iter().map(|r| r.1).max().unwrap_or(0);
        let offset = m
            .ranges
            .iter()
            .min_by_key(|r| r.0)
            .map(|r| r.2)
            .unwrap_or(0);
        let build_id = m.build_id.as_ref().map(|b| hex(b)).unwrap_or_default();
        mapping.push(Mapping {
            id: i as u64 + 1,
            memory_start: start,
            memory_limit: limit,
            file_offset: offset,
            filename: st.id(&m.path),
            build_id: st.id(&build_id),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
    }
    let mapping_of = |f: &Frame| -> u64 {
        if f.kind == FrameKind::Js {
            return 0;
        }
        // The module that held the address (a reloaded module has several
        // records), else the one with the frame's path.
        modules
            .iter()
            .position(|m| m.path == f.module && m.contains(f.address))
            .or_else(|| {
                modules
                    .iter()
                    .position(|m| !f.module.is_empty() && m.path == f.module)
            })
            .or_else(|| {
                if f.module.is_empty() {
                    modules.iter().position(|m| m.contains(f.address))
                } else {
                    None
                }
            })
            .map(|i| i as u64 + 1)
            .unwrap_or(0)
    };

    let nf = Frame {
        function: crate::flame::NO_STACK.into(),
        module: String::new(),
        file: None,
        line: None,
        kind: FrameKind::Unknown,
        address: 0,
        inlined: false,
    };
    let mut b = Builder {
        st,
        by_frame: Default::default(),
        functions: Vec::new(),
        function_ids: HashMap::new(),
        locations: Vec::new(),
        location_ids: Default::default(),
    };
    let mut samples = Vec::with_capacity(model.profile.stacks.len());
    let kind_key = b.st.id("alloc_kind");
    let kind_malloc = b.st.id("malloc");
    let kind_mmap = b.st.id("mmap");
    let mapping_of = &mapping_of;

    for s in &model.profile.stacks {
        if s.alloc_bytes == 0 && s.alloc_count == 0 && s.live_bytes == 0 && s.live_count == 0 {
            continue;
        }
        let mut loc_ids = Vec::new();
        // Group frames into locations: inlined frames (innermost first) end
        // with the frame they were inlined into.
        let mut group: Vec<&Frame> = Vec::new();
        for f in &s.frames {
            group.push(f);
            if f.inlined {
                continue;
            }
            loc_ids.push(b.location(&group, mapping_of));
            group.clear();
        }
        if !group.is_empty() {
            loc_ids.push(b.location(&group, mapping_of));
        }
        if loc_ids.is_empty() {
            loc_ids.push(b.location(&[&nf], &|_| 0));
        }
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        samples.push(Sample {
            location_id: loc_ids,
            value: vec![
                clamp(s.alloc_count),
                clamp(s.alloc_bytes),
                clamp(s.live_count),
                clamp(s.live_bytes),
            ],
            label: vec![Label {
                key: kind_key,
                str: if s.kind == AllocKind::Mmap {
                    kind_mmap
                } else {
                    kind_malloc
                },
                num: 0,
                num_unit: 0,
            }],
        });
    }

    let Builder {
        mut st,
        functions,
        locations,
        ..
    } = b;
    let mut comment = Vec::new();
    if !model.meta.command.is_empty() {
        comment.push(st.id(&format!("offheap: {}", model.meta.command.join(" "))));
    }
    let (w0, w1) = model.profile.window;
    let duration_s = if w1 > w0 {
        w1 - w0
    } else {
        model.timeline.duration
    };
    Profile {
        sample_type,
        sample: samples,
        mapping,
        location: locations,
        function: functions,
        string_table: st.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: (model.meta.start_ms.max(0.0) * 1e6) as i64,
        duration_nanos: (duration_s.max(0.0) * 1e9) as i64,
        period_type,
        period: model.profile.sample_interval.max(1) as i64,
        comment,
        default_sample_type,
    }
}

/// (address, mapping id, lines as (function id, line)) of a Location.
type LocationKey = (u64, u64, Vec<(u64, i64)>);

struct Builder<'a> {
    st: Strings,
    /// Frame (by content) -> Function id, to skip building keys for repeats.
    by_frame: crate::flame::FastMap<&'a Frame, u64>,
    functions: Vec<Function>,
    /// (name, file, start line) -> Function id.
    function_ids: HashMap<(String, String, i64), u64>,
    locations: Vec<Location>,
    location_ids: crate::flame::FastMap<LocationKey, u64>,
}

impl<'a> Builder<'a> {
    /// The Location of a frame group: inlined frames innermost first, then
    /// the frame they were inlined into (whose address and mapping it takes).
    fn location(&mut self, group: &[&'a Frame], mapping_of: &dyn Fn(&Frame) -> u64) -> u64 {
        let outer = group[group.len() - 1];
        let mut lines = Vec::with_capacity(group.len());
        for &f in group {
            if let Some(&fid) = self.by_frame.get(f) {
                lines.push(Line {
                    function_id: fid,
                    line: f.line.unwrap_or(0) as i64,
                });
                continue;
            }
            let name = function_name(f);
            let file = f.file.clone().unwrap_or_default();
            // JS functions of the same name in different scripts stay apart.
            let start = if f.kind == FrameKind::Js {
                f.line.unwrap_or(0) as i64
            } else {
                0
            };
            let key = (name, file, start);
            let fid = match self.function_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.functions.len() as u64 + 1;
                    let n = self.st.id(&key.0);
                    let filename = self.st.id(&key.1);
                    self.functions.push(Function {
                        id,
                        name: n,
                        system_name: n,
                        filename,
                        start_line: start,
                    });
                    self.function_ids.insert(key, id);
                    id
                }
            };
            self.by_frame.insert(f, fid);
            lines.push(Line {
                function_id: fid,
                line: f.line.unwrap_or(0) as i64,
            });
        }
        let mapping_id = mapping_of(outer);
        let key = (
            outer.address,
            mapping_id,
            lines.iter().map(|l| (l.function_id, l.line)).collect(),
        );
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id,
            address: outer.address,
            line: lines,
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }
}

/// The encoded profile, not compressed.
pub fn pprof_raw(model: &Model) -> Vec<u8> {
    pprof_message(model).encode_to_vec()
}

/// The gzipped profile, the content of `profile.pb.gz`.
pub fn pprof(model: &Model) -> Vec<u8> {
    let raw = pprof_raw(model);
    let mut enc = GzEncoder::new(
        Vec::with_capacity(raw.len() / 3 + 64),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(&raw);
    enc.finish().unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
