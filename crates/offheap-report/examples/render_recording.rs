//! Renders every report of a recording directory, for looking at real data:
//!
//!     cargo run -p offheap-report --example render_recording -- REC_DIR OUT_DIR
//!
//! Prints the terminal text and the top list; writes report.html,
//! flamegraph.svg, stacks.folded and profile.pb.gz into OUT_DIR.

use offheap_report::Weight;
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(rec), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: render_recording REC_DIR OUT_DIR");
        std::process::exit(2);
    };
    let rec = match offheap_format::Recording::open(&PathBuf::from(rec)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("render_recording: {e}");
            std::process::exit(1);
        }
    };
    let model = offheap_analysis::analyze(&rec, &Default::default());
    let out = PathBuf::from(out);
    let t = std::time::Instant::now();
    let written =
        std::fs::create_dir_all(&out).and_then(|_| offheap_report::write_all(&model, &out));
    if let Err(e) = written {
        eprintln!("render_recording: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "render_recording: {} stacks, {} frames: write_all took {:.1} ms",
        model.profile.stacks.len(),
        model
            .profile
            .stacks
            .iter()
            .map(|s| s.frames.len())
            .sum::<usize>(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    print!("{}", offheap_report::render_text(&model));
    println!();
    print!(
        "{}",
        offheap_report::top_text(&model, Weight::LiveBytes, 15)
    );
}
