//! Benchmark: renders every report for a synthetic Model the size of a
//! 10-minute recording of a busy server, and prints the time and size of
//! each output. Figures, not assertions (see docs/BENCHMARKS.md).
//!
//!     cargo run --release -p offheap-report --example bench_reports [-- STACKS]
//!
//! Shape: 600 s at 0.5 s telemetry (1,200 points x 7 series), a minor GC
//! every 100 ms and a major GC every 10 s (6,060 marks), STACKS distinct
//! stacks (default 20,000) 20-60 frames deep drawn from 4,000 functions
//! (native, JS, builtin, unknown), 40 modules, 10 suspects.

use offheap_analysis::*;
use offheap_format::native::{AllocKind, ModuleRecord};
use offheap_format::{End, Meta};
use offheap_report::Weight;
use offheap_symbols::{Frame, FrameKind};
use std::time::Instant;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn model(nstacks: usize) -> Model {
    let mut r = Lcg(42);
    let modules: Vec<ModuleRecord> = (0..40u64)
        .map(|i| ModuleRecord {
            path: format!("/usr/lib/x86_64-linux-gnu/libmod{i}.so.1"),
            build_id: Some(
                (0..20)
                    .map(|b| (b as u8).wrapping_mul(i as u8 + 7))
                    .collect(),
            ),
            bias: 0x7f00_0000_0000 + i * 0x100_0000,
            ranges: vec![(
                0x7f00_0000_0000 + i * 0x100_0000,
                0x7f00_0000_0000 + i * 0x100_0000 + 0x80_0000,
                0,
            )],
            generation: 0,
            loaded_at_ms: 0.0,
            unloaded_at_ms: None,
        })
        .collect();
    let functions: Vec<Frame> = (0..4000u64)
        .map(|i| {
            let m = (i % 40) as usize;
            let base = modules[m].ranges[0].0;
            match i % 10 {
                0..=4 => Frame {
                    function: format!("ns{}::Class{}::method_{}(std::vector<int, std::allocator<int> > const&, unsigned long)", i % 13, i % 97, i),
                    module: modules[m].path.clone(),
                    file: Some(format!("../src/file_{}.cc", i % 211)),
                    line: Some((i % 2000) as u32 + 1),
                    kind: FrameKind::Native,
                    address: base + i * 64,
                    inlined: i % 17 == 0,
                },
                5..=7 => Frame {
                    function: format!("handler{i}"),
                    module: format!("/srv/app/lib/module{}.js", i % 150),
                    file: Some(format!("/srv/app/lib/module{}.js", i % 150)),
                    line: Some((i % 900) as u32 + 1),
                    kind: FrameKind::Js,
                    address: 0x3c00_0000_0000 + i * 128,
                    inlined: false,
                },
                8 => Frame {
                    function: format!("Builtins_Builtin{i}"),
                    module: "/usr/bin/node".into(),
                    file: None,
                    line: None,
                    kind: FrameKind::Builtin,
                    address: 0x2a0_0000 + i * 32,
                    inlined: false,
                },
                _ => Frame {
                    function: format!("node+{:#x}", i * 4096),
                    module: "/usr/bin/node".into(),
                    file: None,
                    line: None,
                    kind: FrameKind::Unknown,
                    address: i * 4096,
                    inlined: false,
                },
            }
        })
        .collect();
    // Stacks share prefixes, as real ones do: a few roots, branching deeper.
    let mut stacks = Vec::with_capacity(nstacks);
    for _ in 0..nstacks {
        let depth = 20 + r.below(41) as usize;
        let mut frames: Vec<Frame> = Vec::with_capacity(depth);
        let mut key = r.below(8);
        for d in 0..depth {
            key = key * 31 + if d < 8 { 0 } else { r.below(3 + d as u64 / 8) };
            frames.push(functions[(key % 4000) as usize].clone());
        }
        frames.reverse(); // innermost first
        let alloc = 4096 + r.below(50_000_000);
        let live = r.below(alloc / 2 + 1);
        stacks.push(ProfileStack {
            frames,
            kind: if r.below(20) == 0 {
                AllocKind::Mmap
            } else {
                AllocKind::Malloc
            },
            alloc_bytes: alloc,
            alloc_count: alloc / 64,
            live_bytes: live,
            live_count: live / 64,
            growth_bytes: live as i64 - r.below(live + 1) as i64 - (live as i64 / 4),
            growth_bytes_per_s: 0.0,
        });
    }
    let series = [
        "rss",
        "heap_used",
        "heap_total",
        "external",
        "array_buffers",
        "native_live",
        "allocator_retained",
    ]
    .iter()
    .enumerate()
    .map(|(k, n)| Series {
        name: n.to_string(),
        points: (0..1200)
            .map(|i| {
                (
                    i as f64 * 0.5,
                    1e8 + (k as f64 + 1.0) * i as f64 * 1e5 + r.below(1_000_000) as f64,
                )
            })
            .collect(),
    })
    .collect();
    let mut gc = Vec::new();
    for i in 0..6000 {
        gc.push(GcMark {
            t: i as f64 * 0.1,
            kind: "minor".into(),
            duration_ms: 0.8,
        });
    }
    for i in 0..60 {
        gc.push(GcMark {
            t: i as f64 * 10.0 + 0.05,
            kind: "major".into(),
            duration_ms: 12.0,
        });
    }
    gc.sort_by(|a, b| a.t.total_cmp(&b.t));
    let suspects = (0..10)
        .map(|i| Suspect {
            rank: i + 1,
            bytes_per_s: 1e6 / (i + 1) as f64,
            live_bytes: 1 << 26,
            allocations: 1 << 16,
            module: stacks[i as usize].frames[0].module.clone(),
            function: stacks[i as usize].frames[0].function.clone(),
            hint: None,
            kind: SuspectKind::Malloc,
            js: None,
            thread: None,
            frames: stacks[i as usize].frames.clone(),
        })
        .collect();
    Model {
        meta: Meta {
            command: vec!["node".into(), "server.js".into()],
            pid: 4242,
            start_ms: 1.795e12,
            interval_ms: 500,
            node: true,
            native: true,
            sample_interval: 524_288,
            offheap_version: "bench".into(),
            ..Default::default()
        },
        end: Some(End {
            end_ms: 1.795e12 + 600_000.0,
            exit_code: Some(0),
            signal: None,
            exit_status: 0,
            reason: "duration".into(),
            stop_ms: None,
        }),
        timeline: Timeline {
            series,
            gc,
            warmup_end: 10.0,
            duration: 600.0,
        },
        verdict: Some(Verdict {
            kinds: vec![Kind::Native],
            primary: Kind::Native,
            confidence: 0.9,
            explanation: "synthetic".into(),
            next_steps: vec!["none".into()],
        }),
        growth: Growth {
            rss: 2e5,
            heap_used: 0.0,
            external: 0.0,
            array_buffers: 0.0,
            native_live: Some(1.9e5),
            allocator_free: Some(0.0),
        },
        peak: Peak {
            rss: 300 << 20,
            heap_used: 50 << 20,
            external: 1 << 20,
            array_buffers: 1 << 20,
            native_live: Some(200 << 20),
        },
        suspects,
        profile: Profile {
            stacks,
            modules,
            sample_interval: 524_288,
            window: (10.0, 600.0),
        },
        heap: None,
        owners: Vec::new(),
        notes: vec![],
        ..Default::default()
    }
}

/// CPU time of this thread in ms: unlike wall time, it does not count the
/// time other processes on a busy machine take.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

fn time<T>(name: &str, f: impl FnOnce() -> T, size: impl Fn(&T) -> usize) -> T {
    let t = Instant::now();
    let c = cpu_ms();
    let v = f();
    let cpu = cpu_ms() - c;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{name:<24}{cpu:>9.0} ms{ms:>9.0} ms{:>11.0} KiB",
        size(&v) as f64 / 1024.0
    );
    v
}

fn main() {
    let nstacks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let t = Instant::now();
    let m = model(nstacks);
    let frames: usize = m.profile.stacks.iter().map(|s| s.frames.len()).sum();
    println!(
        "model: {} stacks, {} frames, {} GC marks, built in {:.0} ms",
        m.profile.stacks.len(),
        frames,
        m.timeline.gc.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!("{:<24}{:>12}{:>12}{:>15}", "output", "cpu", "wall", "size");
    time(
        "render_html",
        || offheap_report::render_html(&m),
        |s| s.len(),
    );
    time(
        "flamegraph_svg (live)",
        || offheap_report::flamegraph_svg(&m, Weight::LiveBytes),
        |s| s.len(),
    );
    time(
        "folded (live)",
        || offheap_report::folded(&m, Weight::LiveBytes),
        |s| s.len(),
    );
    time("pprof (gzipped)", || offheap_report::pprof(&m), |s| s.len());
    time(
        "render_text",
        || offheap_report::render_text(&m),
        |s| s.len(),
    );
    time(
        "top_text (live, 30)",
        || offheap_report::top_text(&m, Weight::LiveBytes, 30),
        |s| s.len(),
    );
    let dir = std::env::temp_dir().join(format!("offheap-bench-reports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let size = |w: &offheap_report::Written| {
        w.paths()
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0))
            .sum()
    };
    time(
        "write_all (4 files)",
        || offheap_report::write_all(&m, &dir).unwrap(),
        size,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
