//! Heap-snapshot benchmark: parse + dominators speed and peak memory against
//! the file size, side by side with memlab on the same file.
//!
//! ```text
//! cargo run --release -p offheap-node --example bench_snapshot -- \
//!     [--snapshot FILE | --generate N] [--memlab DIR_WITH_node_modules] [--keep]
//! ```
//! Without `--snapshot`, node writes a snapshot of a heap with N (default
//! 800000) records of small objects (about 500 MB) into a temp dir.
//! With `--memlab DIR`, `@memlab/heap-analysis` from DIR/node_modules parses
//! the same file (`getFullHeapFromFile`, which also computes dominators and
//! retained sizes) under `/usr/bin/time`, and its time and peak RSS are printed.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const GEN_JS: &str = r#"
const n = Number(process.argv[2]);
const root = [];
for (let i = 0; i < n; i++) {
  root.push({ id: i, name: 'n' + i, tags: [i, i + 1], child: { v: i, s: 'x' + (i % 1000) }, f: () => i });
}
globalThis.keep = root;
require('v8').writeHeapSnapshot(process.argv[1]);
"#;

const MEMLAB_JS: &str = r#"
const { getFullHeapFromFile } = require('@memlab/heap-analysis');
(async () => {
  const t0 = process.hrtime.bigint();
  const heap = await getFullHeapFromFile(process.argv[2]);
  const t1 = process.hrtime.bigint();
  let n = 0, maxRet = 0;
  heap.nodes.forEach(node => { n++; if (node.retainedSize > maxRet) maxRet = node.retainedSize; });
  console.log(JSON.stringify({ seconds: Number(t1 - t0) / 1e9, nodes: n, maxRetained: maxRet }));
})().catch(e => { console.error(e); process.exit(1); });
"#;

fn vm_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of this process (stable under a loaded machine).
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the valid pointer.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let tmp = std::env::temp_dir().join(format!("offheap-bench-{}", std::process::id()));
    let snapshot: PathBuf = match get("--snapshot") {
        Some(p) => PathBuf::from(p),
        None => {
            let n = get("--generate").unwrap_or_else(|| "800000".into());
            std::fs::create_dir_all(&tmp).expect("temp dir");
            let p = tmp.join("bench.heapsnapshot");
            eprintln!("generating a snapshot of {n} records with node …");
            let st = Command::new("node")
                .args(["--max-old-space-size=8192", "-e", GEN_JS])
                .arg(&p)
                .arg(&n)
                .status()
                .expect("run node");
            assert!(st.success(), "node failed to write the snapshot");
            p
        }
    };
    let size = std::fs::metadata(&snapshot).expect("snapshot file").len();
    // Warm the page cache so both tools read from memory.
    {
        let mut f = std::fs::File::open(&snapshot).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).unwrap_or(0) > 0 {}
    }
    let mb = size as f64 / 1e6;
    let rss0 = vm_kb("VmRSS:");
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let snap = offheap_node::HeapSnapshot::from_path(&snapshot).expect("parse");
    let t_parse_dom = t0.elapsed().as_secs_f64();
    let c_parse_dom = cpu_seconds() - c0;
    let hwm = vm_kb("VmHWM:");
    let t1 = Instant::now();
    let report = offheap_node::analysis::analyze(
        &snap,
        &snapshot.display().to_string(),
        &Default::default(),
        None,
    );
    let t_analysis = t1.elapsed().as_secs_f64();
    let hwm_all = vm_kb("VmHWM:");
    println!(
        "snapshot: {} ({:.1} MB, {} nodes, {} edges)",
        snapshot.display(),
        mb,
        snap.node_count(),
        snap.edge_count()
    );
    println!(
        "offheap: parse + dominators + retained sizes {:.2} s wall = {:.0} MB/s, {:.2} s CPU = {:.0} MB/s; peak RSS {:.1} MB = {:.2}x file (baseline RSS {:.1} MB)",
        t_parse_dom,
        mb / t_parse_dom,
        c_parse_dom,
        mb / c_parse_dom,
        hwm as f64 / 1024.0 * 1.048576,
        hwm as f64 * 1024.0 / size as f64,
        rss0 as f64 / 1024.0 * 1.048576
    );
    let t = snap.timings;
    println!(
        "offheap: phases: parse {:.2} s, index {:.2} s, dominators {:.2} s, distances {:.2} s",
        t.parse, t.index, t.dominators, t.distances
    );
    println!(
        "offheap: full analysis (retainers, external, hostages) {:.2} s more; peak RSS {:.2}x file; top retainer {} ({} bytes)",
        t_analysis,
        hwm_all as f64 * 1024.0 / size as f64,
        report
            .top_retainers
            .first()
            .map(|r| r.name.as_str())
            .unwrap_or("-"),
        report
            .top_retainers
            .first()
            .map(|r| r.retained_size)
            .unwrap_or(0)
    );
    drop(report);
    drop(snap);
    if let Some(dir) = get("--memlab") {
        run_memlab(Path::new(&dir), &snapshot, mb);
    }
    if !args.iter().any(|a| a == "--keep") && get("--snapshot").is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

fn run_memlab(dir: &Path, snapshot: &Path, mb: f64) {
    let script = dir.join("offheap-bench-memlab.js");
    std::fs::write(&script, MEMLAB_JS).expect("write memlab script");
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "MAXRSS_KB=%M"])
        .arg("node")
        .arg("--max-old-space-size=16384")
        .arg(&script)
        .arg(snapshot)
        .current_dir(dir)
        .output();
    let wall = t0.elapsed().as_secs_f64();
    match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let stderr = String::from_utf8_lossy(&o.stderr);
            let line = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or("{}");
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let secs = v.get("seconds").and_then(|x| x.as_f64()).unwrap_or(wall);
            let kb: f64 = stderr
                .lines()
                .find_map(|l| l.split("MAXRSS_KB=").nth(1))
                .and_then(|x| x.trim().parse().ok())
                .unwrap_or(0.0);
            println!(
                "memlab:  getFullHeapFromFile (parse + dominators + retained sizes) {:.2} s = {:.0} MB/s; \
                 process wall {:.2} s; peak RSS {:.1} MB = {:.2}x file; nodes {}",
                secs,
                mb / secs,
                wall,
                kb * 1024.0 / 1e6,
                kb * 1024.0 / (mb * 1e6),
                v.get("nodes").and_then(|x| x.as_u64()).unwrap_or(0)
            );
        }
        Ok(o) => println!(
            "memlab: failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        Err(e) => println!("memlab: could not run: {e}"),
    }
}
