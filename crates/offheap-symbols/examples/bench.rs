//! Symbolization speed on a real node process.
//!
//! Starts `node --perf-basic-prof --interpreted-frames-native-stack`, lets it
//! JIT some code, copies its perf map and `/proc/PID/maps`, then builds
//! STACKS unique stacks of DEPTH frames from a pool of UNIQUE addresses
//! (60% node's text, 10% libc, 30% JIT code from the perf map) and
//! symbolizes them offline, cold (fresh `ProcessSymbols`) and warm (second
//! pass, all cached).
//!
//! ```text
//! cargo run --release -p offheap-symbols --example bench [STACKS [DEPTH [UNIQUE]]]
//! ```
//! Defaults: 5000 stacks, 40 frames, 20000 unique addresses.
//! `BENCH_PERF_REPEAT=N` makes the perf map N times longer (overlapping
//! entries, as a long-running server's map).

use std::process::Command;
use std::time::Instant;

use offheap_symbols::{FrameKind, ProcessSymbols, modules_from_proc_maps};

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`):
/// unlike wall time, it does not count waiting for a core on a busy machine.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Wall and CPU time of `f`, in ms.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (w, c) = (Instant::now(), cpu_ns());
    let out = f();
    (
        out,
        w.elapsed().as_secs_f64() * 1e3,
        (cpu_ns() - c) as f64 / 1e6,
    )
}

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

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let stacks_n = args.first().copied().unwrap_or(5000);
    let depth = args.get(1).copied().unwrap_or(40);
    let unique = args.get(2).copied().unwrap_or(20000);

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let script = r#"
const fs = require('fs');
const out = process.argv[1];
// Some JIT work so the perf map has JS entries of every tier.
function work(n) { let s = 0; for (let i = 0; i < n; i++) s += JSON.stringify({ i, a: [i, i + 1] }).length; return s; }
for (let k = 0; k < 200; k++) { new Function('x', `return x + ${k}`)(k); work(2000); }
fs.copyFileSync(`/tmp/perf-${process.pid}.map`, `${out}/perf.map`);
fs.writeFileSync(`${out}/maps`, fs.readFileSync('/proc/self/maps'));
fs.writeFileSync(`${out}/pid`, String(process.pid));
"#;
    // In the temp dir: --perf-basic-prof makes V8 write isolate-*-v8.log
    // files into the working directory.
    let st = Command::new("node")
        .current_dir(d)
        .args([
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            "-e",
            script,
        ])
        .arg(d)
        .status()
        .expect("run node");
    assert!(st.success(), "node failed");
    let pid = std::fs::read_to_string(d.join("pid")).unwrap();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let maps = std::fs::read_to_string(d.join("maps")).unwrap();
    let perf_path = d.join("perf.map");
    let mut perf = std::fs::read_to_string(&perf_path).unwrap();
    // BENCH_PERF_REPEAT=N appends the map N-1 more times, as a long-running
    // server's map grows when V8 recompiles and reuses code space.
    let repeat: usize = std::env::var("BENCH_PERF_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if repeat > 1 {
        perf = perf.repeat(repeat);
        std::fs::write(&perf_path, &perf).unwrap();
    }

    // Executable file-backed ranges of node and libc.
    let mut node_x = Vec::new();
    let mut libc_x = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') {
            continue;
        }
        let (s, e) = f[0].split_once('-').unwrap();
        let r = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        if f[5].ends_with("/node") {
            node_x.push(r);
        } else if f[5].contains("libc.so") {
            libc_x.push(r);
        }
    }
    let jit: Vec<(u64, u64)> = perf
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let s = u64::from_str_radix(it.next()?, 16).ok()?;
            let z = u64::from_str_radix(it.next()?, 16).ok()?;
            (it.next()?.starts_with("JS:") && s > 0x1_0000_0000).then_some((s, z))
        })
        .collect();
    let mut rng = Lcg(42);
    let pick = |rng: &mut Lcg, rs: &[(u64, u64)]| {
        let total: u64 = rs.iter().map(|r| r.1 - r.0).sum();
        let mut x = rng.below(total);
        for r in rs {
            if x < r.1 - r.0 {
                return r.0 + x;
            }
            x -= r.1 - r.0;
        }
        rs[0].0
    };
    let pool: Vec<u64> = (0..unique)
        .map(|i| match i % 10 {
            0..=5 => pick(&mut rng, &node_x),
            6 => pick(&mut rng, &libc_x),
            _ => {
                let (s, z) = jit[rng.below(jit.len() as u64) as usize];
                s + 1 + rng.below(z.saturating_sub(1))
            }
        })
        .collect();
    let stacks: Vec<Vec<u64>> = (0..stacks_n)
        .map(|_| {
            (0..depth)
                .map(|_| pool[rng.below(pool.len() as u64) as usize])
                .collect()
        })
        .collect();
    let t = 0.0;
    let input: Vec<(&[u64], f64)> = stacks.iter().map(|s| (&s[..], t)).collect();

    let modules = modules_from_proc_maps(&maps);
    println!(
        "node {} | {} modules | perf map {} lines ({} JS) | {} stacks x {} frames, {} unique addresses",
        Command::new("node")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        modules.len(),
        perf.lines().count(),
        jit.len(),
        stacks_n,
        depth,
        unique
    );

    let (mut syms, setup_w, setup_c) = timed(|| ProcessSymbols::new(&modules, Some(&perf_path)));
    let (out, cold_w, cold_c) = timed(|| syms.symbolize_stacks(&input));
    let (out2, warm_w, warm_c) = timed(|| syms.symbolize_stacks(&input));
    assert_eq!(out, out2);

    // Per-stack API, fresh instance.
    let (n, per_w, per_c) = timed(|| {
        let mut syms1 = ProcessSymbols::new(&modules, Some(&perf_path));
        stacks
            .iter()
            .map(|s| syms1.symbolize(s, t).len())
            .sum::<usize>()
    });

    // Worst case for the remapped-builtins search: the agent's module table
    // (PT_LOAD segments only, no second mapping) and no perf map, so every
    // JIT address is unresolved and votes.
    let mut agent_like = modules.clone();
    for m in &mut agent_like {
        let bias = m.bias;
        m.ranges.retain(|r| r.0.wrapping_sub(bias) < 0x1_0000_0000);
    }
    let ((out3, notes3), nomap_w, nomap_c) = timed(|| {
        let mut syms2 = ProcessSymbols::new(&agent_like, None);
        let o = syms2.symbolize_stacks(&input);
        (o, syms2.notes().len())
    });
    let unknown3 = out3
        .iter()
        .flatten()
        .filter(|f| f.kind == FrameKind::Unknown)
        .count();

    let frames: Vec<_> = out.iter().flatten().collect();
    let count = |k: FrameKind| frames.iter().filter(|f| f.kind == k).count();
    println!(
        "frames out: {} (native {}, js {}, builtin {}, unknown {}; {} inlined)",
        frames.len(),
        count(FrameKind::Native),
        count(FrameKind::Js),
        count(FrameKind::Builtin),
        count(FrameKind::Unknown),
        frames.iter().filter(|f| f.inlined).count()
    );
    println!("                                  wall ms    cpu ms");
    println!("setup (perf map parse):          {setup_w:8.1}  {setup_c:8.1}");
    println!("symbolize_stacks, cold:          {cold_w:8.1}  {cold_c:8.1}");
    println!("symbolize_stacks, warm (cached): {warm_w:8.1}  {warm_c:8.1}");
    println!("symbolize() per stack, cold:     {per_w:8.1}  {per_c:8.1}   ({n} frames)");
    println!(
        "no perf map, agent's modules:    {nomap_w:8.1}  {nomap_c:8.1}   ({unknown3} unknown, {notes3} notes)"
    );
    println!(
        "cold cpu per unique address:     {:8.2} us",
        (setup_c + cold_c) * 1e3 / unique as f64
    );
    if std::env::var_os("BENCH_SHOW_UNKNOWN").is_some() {
        for f in frames
            .iter()
            .filter(|f| f.kind == FrameKind::Unknown)
            .take(20)
        {
            println!("unknown: {} {}", f.function, f.module);
        }
    }
    for n in syms.notes() {
        println!("note: {n}");
    }
}
