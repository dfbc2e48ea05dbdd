//! `offheap demo`: a bundled Node server with a deliberate native leak,
//! driven by a bundled load loop, recorded by `offheap run`.

use crate::cli::{DemoArgs, RecordOpts, RunArgs};
use crate::user_error;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::time::Duration;

const SERVER: &str = include_str!("../demo/server.js");
const LOAD: &str = include_str!("../demo/load.js");

pub fn demo(args: DemoArgs) -> Result<u8> {
    let node = ["node", "nodejs"]
        .into_iter()
        .find(|n| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|d| d.join(n).is_file())
        })
        .ok_or_else(|| user_error("the demo needs Node.js: no `node` in PATH (install nodejs)"))?;
    let scripts = std::env::temp_dir().join(format!("offheap-demo-{}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&scripts)
        .with_context(|| format!("cannot create {}", scripts.display()))?;
    fs::write(scripts.join("server.js"), SERVER)?;
    fs::write(scripts.join("load.js"), LOAD)?;
    eprintln!(
        "offheap demo: running a Node HTTP server whose /compress handler leaks zlib streams, under load, for {}s",
        args.duration.as_secs()
    );
    let result = crate::run::run(RunArgs {
        record: RecordOpts {
            out: args.out,
            duration: Some(args.duration),
            interval: Duration::from_millis(250),
            quiet: args.quiet,
            snapshots: false,
            track_allocations: false,
            min_age: Duration::from_secs(3),
            heap_sample_interval: offheap_node::HEAP_SAMPLE_BYTES,
            serve: None,
        },
        sample_interval: 512 * 1024,
        exact: false,
        no_native: false,
        follow_fork: true,
        follow_exec: false,
        max_depth: 64,
        grace: Duration::from_secs(3),
        load: Default::default(),
        command: vec![
            node.to_string(),
            scripts.join("server.js").to_string_lossy().into_owned(),
        ],
    });
    let _ = fs::remove_dir_all(&scripts);
    // The demo's server is stopped by --duration: that is success.
    result.map(|code| if code == 130 || code == 143 { 0 } else { code })
}
