//! Prints a summary of a `native-PID.bin` file: `cargo run -p offheap-agent --example native_dump -- FILE [N]`.
use offheap_format::native::read_stream;
use std::io::Write;

fn main() {
    if let Err(e) = run()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("native_dump: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: native_dump FILE [TOP]");
        std::process::exit(2);
    };
    let top: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let s = match read_stream(std::path::Path::new(&path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    writeln!(
        out,
        "pid={} ppid={} exe={} interval={} exact={} modules={} stacks={} snapshots={}",
        s.pid,
        s.ppid,
        s.exe,
        s.sample_interval,
        s.exact,
        s.modules.len(),
        s.stacks.len(),
        s.snapshot_times_ms.len()
    )?;
    for n in &s.agent_notes {
        writeln!(out, "agent: {n}")?;
    }
    for n in &s.notes {
        writeln!(out, "reader: {n}")?;
    }
    if let Some(Some(a)) = s.allocator.last() {
        writeln!(out, "allocator(last): {a:?}")?;
    }
    let mut series: Vec<_> = s.series.iter().collect();
    if args.next().as_deref() == Some("alloc") {
        series.sort_by_key(|x| std::cmp::Reverse(x.last().alloc_bytes));
    } else {
        series.sort_by_key(|x| std::cmp::Reverse(x.last().live_bytes));
    }
    for x in series.iter().take(top) {
        let st = &s.stacks[x.stack as usize];
        let c = x.last();
        let mods: Vec<String> = st
            .frames
            .iter()
            .take(if std::env::var_os("ALLFRAMES").is_some() {
                64
            } else {
                4
            })
            .map(|&f| {
                let m = s.modules.iter().find(|m| m.contains(f));
                format!(
                    "{:#x}({})",
                    f,
                    m.map(|m| m.path.rsplit('/').next().unwrap_or(""))
                        .unwrap_or("?")
                )
            })
            .collect();
        writeln!(
            out,
            "stack {} {:?} depth={}{} live={} live_n={} aged={} alloc={} alloc_n={} | {}",
            x.stack,
            st.kind,
            st.frames.len(),
            if st.truncated { "+" } else { "" },
            c.live_bytes,
            c.live_count,
            c.aged_live_bytes,
            c.alloc_bytes,
            c.alloc_count,
            mods.join(" ")
        )?;
    }
    Ok(())
}
