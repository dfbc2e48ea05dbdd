//! A realistic Model for the reporter tests: a Node process whose C addon
//! leaks through a JS caller, a zlib stream never closed, Buffer backing
//! stores, allocation churn that is freed, V8 heap pages by mmap, an
//! unknown frame, a stack with no frames, and a JS function whose name
//! tries to break out of HTML.
#![allow(dead_code)]

use offheap_analysis::*;
use offheap_format::native::{AllocKind, ModuleRecord};
use offheap_format::{End, Meta};
use offheap_symbols::{Frame, FrameKind};

pub const EVIL: &str = "</script><script>alert(1)</script><!--";
pub const ADDON: &str = "/tmp/fixture/build/leak.node";
pub const NODE: &str = "/usr/bin/node";
pub const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
pub const LIBZ: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13";
const APP: &str = "/srv/app/server.js";

fn native(function: &str, module: &str, file: Option<&str>, line: u32, address: u64) -> Frame {
    Frame {
        function: function.into(),
        module: module.into(),
        file: file.map(String::from),
        line: if line > 0 { Some(line) } else { None },
        kind: FrameKind::Native,
        address,
        inlined: false,
    }
}

fn inlined(mut f: Frame) -> Frame {
    f.inlined = true;
    f
}

fn js(function: &str, file: &str, line: u32, address: u64) -> Frame {
    Frame {
        function: function.into(),
        module: file.into(),
        file: Some(file.into()),
        line: Some(line),
        kind: FrameKind::Js,
        address,
        inlined: false,
    }
}

fn builtin(function: &str, address: u64) -> Frame {
    Frame {
        function: function.into(),
        module: NODE.into(),
        file: None,
        line: None,
        kind: FrameKind::Builtin,
        address,
        inlined: false,
    }
}

fn unknown(module: &str, offset: u64, address: u64) -> Frame {
    let name = format!(
        "{}+{offset:#x}",
        module.rsplit('/').next().unwrap_or(module)
    );
    Frame {
        function: name,
        module: module.into(),
        file: None,
        line: None,
        kind: FrameKind::Unknown,
        address,
        inlined: false,
    }
}

/// The bottom of every JS-driven stack: the event loop down to main.
fn event_loop() -> Vec<Frame> {
    vec![
        builtin("Builtins_JSEntryTrampoline", 0x2a4_5c00),
        builtin("Builtins_JSEntry", 0x2a4_5a40),
        native(
            "v8::internal::Execution::Call(v8::internal::Isolate*, v8::internal::Handle<v8::internal::Object>, v8::internal::Handle<v8::internal::Object>, int, v8::internal::Handle<v8::internal::Object>*)",
            NODE,
            Some("../deps/v8/src/execution/execution.cc"),
            541,
            0x11a_2b30,
        ),
        native(
            "node::InternalCallbackScope::Close()",
            NODE,
            Some("../src/api/callback.cc"),
            152,
            0xd3_1e20,
        ),
        native(
            "uv__io_poll",
            NODE,
            Some("../deps/uv/src/unix/linux.c"),
            1526,
            0x1a0_9c10,
        ),
        native(
            "uv_run",
            NODE,
            Some("../deps/uv/src/unix/core.c"),
            447,
            0x1a0_4a20,
        ),
        native(
            "node::SpinEventLoop(node::Environment*)",
            NODE,
            Some("../src/api/embed_helpers.cc"),
            41,
            0xd4_5d90,
        ),
        native(
            "node::Start(int, char**)",
            NODE,
            Some("../src/node.cc"),
            1429,
            0xe0_5a70,
        ),
        native(
            "__libc_start_call_main",
            LIBC,
            Some("../sysdeps/nptl/libc_start_call_main.h"),
            58,
            0x7f3a_1c02_724a,
        ),
        unknown(NODE, 0x9a_4e15, 0x9a_4e15),
    ]
}

fn stack(mut top: Vec<Frame>) -> Vec<Frame> {
    top.extend(event_loop());
    top
}

pub fn leak_frames() -> Vec<Frame> {
    stack(vec![
        native(
            "leak_bytes",
            ADDON,
            Some("/tmp/fixture/leak.c"),
            14,
            0x7f3a_1b40_1139,
        ),
        inlined(native(
            "make_record",
            ADDON,
            Some("/tmp/fixture/leak.c"),
            22,
            0x7f3a_1b40_11c2,
        )),
        native(
            "LeakBytes",
            ADDON,
            Some("/tmp/fixture/leak.c"),
            31,
            0x7f3a_1b40_11c2,
        ),
        native(
            "v8impl::(anonymous namespace)::FunctionCallbackWrapper::Invoke(v8::FunctionCallbackInfo<v8::Value> const&)",
            NODE,
            Some("../src/js_native_api_v8.cc"),
            623,
            0xc6_7a10,
        ),
        builtin("Builtins_CallApiCallback", 0x2a3_1e80),
        js("leakMore", APP, 14, 0x3c1f_8a04_2e10),
        js(EVIL, APP, 22, 0x3c1f_8a04_3f00),
        js("", APP, 40, 0x3c1f_8a04_4100),
        js("emit", "node:events", 517, 0x3c1f_8a04_5200),
        js(
            "parserOnIncoming",
            "node:_http_server",
            1119,
            0x3c1f_8a04_6300,
        ),
    ])
}

pub fn model() -> Model {
    let mut series = Vec::new();
    let mut gc = Vec::new();
    let n = 121;
    let mut rss = Vec::new();
    let mut heap_used = Vec::new();
    let mut heap_total = Vec::new();
    let mut external = Vec::new();
    let mut abuf = Vec::new();
    let mut native_live = Vec::new();
    let mut retained = Vec::new();
    const MB: f64 = 1024.0 * 1024.0;
    for i in 0..n {
        let t = i as f64 * 0.5;
        let warm = (t / 5.0).min(1.0);
        let wobble = ((i * 37) % 11) as f64 / 11.0;
        rss.push((
            t,
            48.0 * MB + 30.0 * MB * warm + t * 1.6 * MB + wobble * 2.0 * MB,
        ));
        heap_used.push((
            t,
            9.0 * MB + 6.0 * MB * warm + ((i % 16) as f64) * 0.55 * MB,
        ));
        heap_total.push((t, 18.0 * MB + 6.0 * MB * warm));
        external.push((t, 2.1 * MB + wobble * 0.2 * MB));
        abuf.push((t, 0.6 * MB + wobble * 0.1 * MB));
        native_live.push((t, 4.0 * MB + 12.0 * MB * warm + t * 1.5 * MB));
        retained.push((t, 1.0 * MB + wobble * 0.8 * MB));
        if i % 3 == 1 {
            gc.push(GcMark {
                t: t + 0.1,
                kind: "minor".into(),
                duration_ms: 0.8 + wobble,
            });
        }
        if i % 16 == 15 {
            gc.push(GcMark {
                t: t + 0.2,
                kind: "major".into(),
                duration_ms: 6.5 + wobble * 4.0,
            });
        }
        if i % 32 == 10 {
            gc.push(GcMark {
                t: t + 0.3,
                kind: "incremental".into(),
                duration_ms: 1.2,
            });
        }
    }
    for (name, points) in [
        ("rss", rss),
        ("heap_used", heap_used),
        ("heap_total", heap_total),
        ("external", external),
        ("array_buffers", abuf),
        ("native_live", native_live),
        ("allocator_retained", retained),
    ] {
        series.push(Series {
            name: name.into(),
            points,
        });
    }

    let zlib_frames = stack(vec![
        native("deflateInit2_", LIBZ, None, 0, 0x7f3a_1c40_3a10),
        native(
            "node::(anonymous namespace)::ZlibContext::Init(int, int, int, int, int, std::vector<unsigned char, std::allocator<unsigned char> >&&)",
            NODE,
            Some("../src/node_zlib.cc"),
            1290,
            0xe7_1a00,
        ),
        native(
            "node::(anonymous namespace)::CompressionStream<node::(anonymous namespace)::ZlibContext>::Init(v8::FunctionCallbackInfo<v8::Value> const&)",
            NODE,
            Some("../src/node_zlib.cc"),
            640,
            0xe7_2b00,
        ),
        builtin("Builtins_CallApiCallback", 0x2a3_1e80),
        js("Zlib", "node:zlib", 684, 0x3c1f_8a05_0100),
        js("Deflate", "node:zlib", 736, 0x3c1f_8a05_0200),
        js("createDeflate", "node:zlib", 909, 0x3c1f_8a05_0300),
        js("compressChunk", APP, 58, 0x3c1f_8a05_0400),
    ]);
    let buffer_frames = stack(vec![
        native(
            "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
            NODE,
            Some("../src/api/environment.cc"),
            104,
            0xd1_0a00,
        ),
        native(
            "v8::internal::Heap::AllocateExternalBackingStore(std::function<void* (unsigned long)> const&, unsigned long)",
            NODE,
            Some("../deps/v8/src/heap/heap.cc"),
            3021,
            0x10f_0a00,
        ),
        builtin("Builtins_TypedArrayConstructor", 0x2a5_0a00),
        js("allocate", "node:buffer", 398, 0x3c1f_8a06_0100),
        js("from", "node:buffer", 320, 0x3c1f_8a06_0200),
        js("cacheResponse", APP, 77, 0x3c1f_8a06_0300),
    ]);
    let churn_frames = stack(vec![
        native(
            "operator new(unsigned long)",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
            None,
            0,
            0x7f3a_1c80_0a00,
        ),
        native(
            "node::StringBytes::Encode(v8::Isolate*, char const*, unsigned long, node::encoding)",
            NODE,
            Some("../src/string_bytes.cc"),
            701,
            0xe9_0a00,
        ),
        js("toString", "node:buffer", 851, 0x3c1f_8a07_0100),
        js("parseBody", APP, 90, 0x3c1f_8a07_0200),
    ]);
    let mmap_frames = vec![
        native(
            "v8::base::OS::Allocate(void*, unsigned long, unsigned long, v8::base::OS::MemoryPermission)",
            NODE,
            Some("../deps/v8/src/base/platform/platform-posix.cc"),
            428,
            0x1b0_0a00,
        ),
        native(
            "v8::internal::MemoryAllocator::AllocatePage(v8::internal::MemoryAllocator::AllocationMode, v8::internal::Space*, v8::internal::Executability)",
            NODE,
            Some("../deps/v8/src/heap/memory-allocator.cc"),
            588,
            0x111_0a00,
        ),
        unknown("[anon:v8]", 0x40, 0x1d00_0000_0040),
    ];

    let sample_interval = 524_288;
    let stacks = vec![
        ProfileStack {
            frames: leak_frames(),
            kind: AllocKind::Malloc,
            alloc_bytes: 92_274_688,
            alloc_count: 90_112,
            live_bytes: 88_080_384,
            live_count: 86_016,
            growth_bytes: 80_740_352,
            growth_bytes_per_s: 1_572_864.0,
        },
        ProfileStack {
            frames: zlib_frames.clone(),
            kind: AllocKind::Malloc,
            alloc_bytes: 15_204_352,
            alloc_count: 232,
            live_bytes: 14_680_064,
            live_count: 224,
            growth_bytes: 12_582_912,
            growth_bytes_per_s: 245_760.0,
        },
        ProfileStack {
            frames: buffer_frames.clone(),
            kind: AllocKind::Malloc,
            alloc_bytes: 41_943_040,
            alloc_count: 5_120,
            live_bytes: 3_145_728,
            live_count: 384,
            growth_bytes: 524_288,
            growth_bytes_per_s: 10_240.0,
        },
        ProfileStack {
            frames: churn_frames,
            kind: AllocKind::Malloc,
            alloc_bytes: 734_003_200,
            alloc_count: 1_433_600,
            live_bytes: 1_048_576,
            live_count: 2_048,
            growth_bytes: -524_288,
            growth_bytes_per_s: -8_738.0,
        },
        ProfileStack {
            frames: mmap_frames,
            kind: AllocKind::Mmap,
            alloc_bytes: 33_554_432,
            alloc_count: 128,
            live_bytes: 25_165_824,
            live_count: 96,
            growth_bytes: 0,
            growth_bytes_per_s: 0.0,
        },
        ProfileStack {
            frames: vec![],
            kind: AllocKind::Malloc,
            alloc_bytes: 2_097_152,
            alloc_count: 40,
            live_bytes: 524_288,
            live_count: 10,
            growth_bytes: 0,
            growth_bytes_per_s: 0.0,
        },
    ];

    let modules = vec![
        ModuleRecord {
            path: NODE.into(),
            build_id: Some(vec![
                0x9f, 0x2c, 0x11, 0x80, 0x4b, 0xe3, 0x07, 0xaa, 0x10, 0x42, 0x5d, 0x66, 0x01, 0x02,
                0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
            ]),
            bias: 0,
            ranges: vec![(0x40_0000, 0x2c0_0000, 0)],
            generation: 0,
            loaded_at_ms: 0.0,
            unloaded_at_ms: None,
        },
        ModuleRecord {
            path: LIBC.into(),
            build_id: Some(vec![0xc0, 0x47, 0x67, 0x2c]),
            bias: 0x7f3a_1c00_0000,
            ranges: vec![(0x7f3a_1c02_8000, 0x7f3a_1c1b_d000, 0x28000)],
            generation: 0,
            loaded_at_ms: 0.0,
            unloaded_at_ms: None,
        },
        ModuleRecord {
            path: LIBZ.into(),
            build_id: Some(vec![0x33, 0x44, 0x55, 0x66]),
            bias: 0x7f3a_1c40_0000,
            ranges: vec![(0x7f3a_1c40_2000, 0x7f3a_1c41_6000, 0x2000)],
            generation: 0,
            loaded_at_ms: 0.0,
            unloaded_at_ms: None,
        },
        ModuleRecord {
            path: "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30".into(),
            build_id: None,
            bias: 0x7f3a_1c80_0000,
            ranges: vec![(0x7f3a_1c80_0000, 0x7f3a_1c90_0000, 0)],
            generation: 0,
            loaded_at_ms: 0.0,
            unloaded_at_ms: None,
        },
        ModuleRecord {
            path: ADDON.into(),
            build_id: Some(vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x11]),
            bias: 0x7f3a_1b40_0000,
            ranges: vec![(0x7f3a_1b40_1000, 0x7f3a_1b40_2000, 0x1000)],
            generation: 1,
            loaded_at_ms: 1_795_000_000_250.0,
            unloaded_at_ms: None,
        },
    ];

    let suspects = vec![
        Suspect {
            rank: 1,
            bytes_per_s: 1_572_864.0,
            live_bytes: 88_080_384,
            allocations: 86_016,
            module: ADDON.into(),
            function: "leak_bytes".into(),
            hint: None,
            kind: SuspectKind::Malloc,
            js: None,
            thread: None,
            frames: leak_frames(),
        },
        Suspect {
            rank: 2,
            bytes_per_s: 245_760.0,
            live_bytes: 14_680_064,
            allocations: 224,
            module: LIBZ.into(),
            function: "deflateInit2_".into(),
            hint: Some("zlib stream state (deflateInit2_) is allocated per stream and freed only by `stream.close()` or `end()`: a stream that is never closed keeps about 256 KiB of native memory.".into()),
            kind: SuspectKind::Malloc,
            js: None,
            thread: None,
            frames: zlib_frames,
        },
        Suspect {
            rank: 3,
            bytes_per_s: 10_240.0,
            live_bytes: 3_145_728,
            allocations: 384,
            module: APP.into(),
            function: "cacheResponse".into(),
            hint: Some("Buffer/ArrayBuffer backing store allocated through node's ArrayBuffer allocator: something keeps these Buffers reachable (see the heap snapshot).".into()),
            kind: SuspectKind::Malloc,
            js: None,
            thread: None,
            frames: buffer_frames,
        },
        Suspect {
            rank: 4,
            bytes_per_s: 8_192.0,
            live_bytes: 2_097_152,
            allocations: 0,
            module: APP.into(),
            function: "remember".into(),
            hint: None,
            kind: SuspectKind::JsHeap,
            js: Some(JsOwner {
                function: "remember".into(),
                file: APP.into(),
                line: Some(12),
            }),
            thread: Some(1),
            frames: vec![Frame {
                function: "remember".into(),
                module: APP.into(),
                file: Some(APP.into()),
                line: Some(12),
                kind: FrameKind::Js,
                address: 0,
                inlined: false,
            }],
        },
    ];

    Model {
        meta: Meta {
            format_version: 1,
            offheap_version: "0.1.0".into(),
            mode: "run".into(),
            command: vec!["node".into(), "server.js".into(), "--port".into(), "8080".into()],
            pid: 41_217,
            start_ms: 1_795_000_000_000.0,
            interval_ms: 500,
            node: true,
            node_flags: vec!["--perf-basic-prof".into(), "--interpreted-frames-native-stack".into()],
            native: true,
            sample_interval,
            settings: Default::default(),
        },
        end: Some(End { end_ms: 1_795_000_060_000.0, exit_code: None, signal: Some(2), exit_status: 130, reason: "duration".into(), stop_ms: None }),
        timeline: Timeline { series, gc, warmup_end: 5.0, duration: 60.0 },
        verdict: Some(Verdict {
            kinds: vec![Kind::Native, Kind::External],
            primary: Kind::Native,
            confidence: 0.93,
            explanation: "RSS grows by 1.6 MiB/s after warm-up while the V8 heap stays flat; sampled native live bytes grow by 1.5 MiB/s, 94% of it from one stack in leak.node.".into(),
            next_steps: vec![
                "Look at the top suspect: `leak_bytes` in leak.node, called from JS `leakMore` (server.js:14).".into(),
                "Open `report.html` for the flame graph of leaked bytes, or `go tool pprof -top profile.pb.gz`.".into(),
                "Confirm the fix with `offheap diff` between two windows of a new recording.".into(),
            ],
        }),
        growth: Growth { rss: 1_677_721.6, heap_used: 1_228.8, external: 0.0, array_buffers: -12.5, native_live: Some(1_572_864.0), allocator_free: Some(3_276.8) },
        peak: Peak { rss: 201_326_592, heap_used: 23_592_960, external: 2_411_724, array_buffers: 734_003, native_live: Some(106_954_752) },
        suspects,
        profile: Profile { stacks, modules, sample_interval, window: (5.0, 60.0) },
        heap: Some(serde_json::json!({
            "snapshots": 2,
            "retained_growth_bytes": 1_048_576,
            "top_constructors": [
                {"name": "Buffer", "count_delta": 384, "self_size_delta": 24_576, "retained_size_delta": 3_170_304},
                {"name": EVIL, "count_delta": 3, "self_size_delta": 96, "retained_size_delta": 96},
                {"name": "Deflate", "count_delta": 224, "self_size_delta": 53_760, "retained_size_delta": 120_000}
            ],
            "retainer_paths": [["(GC roots)", "cache", "Map", "Buffer"]]
        })),
        owners: Vec::new(),
        notes: vec![
            "Skipped 1 truncated record at the end of native-41217.bin (the target was killed).".into(),
            "JS frames resolved from /tmp/perf-41217.map copied at 59.5 s.".into(),
        ],
         ..Default::default()
    }
}
