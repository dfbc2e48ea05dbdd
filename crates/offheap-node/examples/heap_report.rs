//! Print the analysis of a `.heapsnapshot` file, or compare two, or snapshot a live pid.
//! `cargo run -p offheap-node --example heap_report -- FILE [--json]`
//! `cargo run -p offheap-node --example heap_report -- --compare A B`
//! `cargo run -p offheap-node --example heap_report -- --pid PID OUT`
//! `cargo run -p offheap-node --example heap_report -- --dump-retained FILE`
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = offheap_node::AnalyzeOptions::default();
    let json = args.iter().any(|a| a == "--json");
    if args.first().map(String::as_str) == Some("--dump-retained") {
        // `id retained_size idom_id` per node, for cross-checking with other tools.
        let s = offheap_node::HeapSnapshot::from_path(Path::new(&args[1])).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
        for i in 0..s.node_count() as u32 {
            println!(
                "{} {} {}",
                s.node_id(i),
                s.retained_size(i),
                s.node_id(s.idom(i))
            );
        }
        return;
    }
    let r = match args.first().map(String::as_str) {
        Some("--compare") if args.len() >= 3 => {
            offheap_node::compare_files(Path::new(&args[1]), Path::new(&args[2]), &opts).map(|r| {
                if json {
                    serde_json::to_string_pretty(&r).unwrap()
                } else {
                    r.to_text()
                }
            })
        }
        Some("--pid") if args.len() >= 3 => {
            let pid: u32 = args[1].parse().unwrap_or(0);
            offheap_node::snapshot_pid(pid, Path::new(&args[2]), &opts).map(|r| {
                if json {
                    serde_json::to_string_pretty(&r.report).unwrap()
                } else {
                    r.report.to_text()
                }
            })
        }
        Some(f) => offheap_node::analyze_file(Path::new(f), &opts).map(|r| {
            if json {
                serde_json::to_string_pretty(&r).unwrap()
            } else {
                r.to_text()
            }
        }),
        None => {
            eprintln!("usage: heap_report FILE [--json] | --compare A B | --pid PID OUT");
            std::process::exit(2);
        }
    };
    match r {
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
