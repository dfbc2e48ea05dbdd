//! Prints the top native stacks of a recording by live bytes, symbolized.
//! A debugging aid for the symbolizer on real agent output.
//!
//! ```text
//! cargo run -p offheap-symbols --example symbolize_recording -- DIR [TOP]
//! ```

use std::path::Path;
use std::time::Instant;

use offheap_format::native::read_stream;
use offheap_symbols::{is_allocator_frame, symbolize_stream};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: symbolize_recording DIR [TOP]");
        std::process::exit(2);
    };
    let top: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = Path::new(&dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("{}: not a readable directory", dir.display());
        std::process::exit(1);
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("native-") && name.ends_with(".bin")) {
            continue;
        }
        let stream = match read_stream(&path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        let perf = dir.join(format!("perf-{}.map", stream.pid));
        let t0 = Instant::now();
        let (frames, notes) = symbolize_stream(&stream, perf.exists().then_some(perf.as_path()));
        println!(
            "{name}: pid {} | {} modules | {} stacks symbolized in {:.1} ms | perf map: {}",
            stream.pid,
            stream.modules.len(),
            stream.stacks.len(),
            t0.elapsed().as_secs_f64() * 1e3,
            if perf.exists() { "yes" } else { "no" }
        );
        let mut by_live: Vec<_> = stream
            .series
            .iter()
            .map(|s| {
                // SORT=alloc ranks by allocated bytes instead of live bytes.
                let c = s.last();
                let alloc = std::env::var("SORT").as_deref() == Ok("alloc");
                (
                    if alloc { c.alloc_bytes } else { c.live_bytes },
                    s.stack as usize,
                )
            })
            .collect();
        by_live.sort_unstable_by(|a, b| b.cmp(a));
        // ONLY=text keeps the stacks with a frame whose module or function contains it.
        let only = std::env::var("ONLY").ok();
        let keep = |i: &usize| {
            only.as_deref().is_none_or(|o| {
                frames[*i]
                    .iter()
                    .any(|f| f.module.contains(o) || f.function.contains(o))
            })
        };
        for (live, i) in by_live.into_iter().filter(|x| keep(&x.1)).take(top) {
            println!("\n  {live} bytes, stack {i}:");
            if std::env::var_os("SHOW_RAW").is_some() {
                println!("    raw: {:x?}", stream.stacks[i].frames);
                for m in &stream.modules {
                    println!(
                        "    module {} bias {:x} ranges {:x?}",
                        m.path, m.bias, m.ranges
                    );
                }
            }
            for f in &frames[i] {
                let loc = match (&f.file, f.line) {
                    (Some(file), Some(l)) => format!(" at {file}:{l}"),
                    _ => String::new(),
                };
                println!(
                    "    {}{:?} {}{} [{}]{}",
                    if is_allocator_frame(f) {
                        "(alloc) "
                    } else {
                        ""
                    },
                    f.kind,
                    f.function,
                    loc,
                    f.module,
                    if f.inlined { " (inlined)" } else { "" }
                );
            }
        }
        for n in &notes {
            println!("note: {n}");
        }
    }
}
