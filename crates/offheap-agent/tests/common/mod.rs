//! Shared helpers for the agent's process-level tests: build (or find) the
//! agent cdylib once, compile C fixtures with gcc, run programs with and
//! without the agent, decode what the agent wrote.

#![allow(dead_code)]

use offheap_format::native::{NativeStream, read_stream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The release agent `.so`: `$OFFHEAP_AGENT_SO` if set, else built once with
/// `cargo build -p offheap-agent --release` into the same target dir as
/// the test binary.
pub fn agent_so() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        if let Some(p) = std::env::var_os("OFFHEAP_AGENT_SO") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test-exe>
        let exe = std::env::current_exe().expect("current_exe");
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "offheap-agent", "--release", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the agent");
        assert!(st.success(), "building the agent failed");
        let so = target.join("release").join("liboffheap_agent.so");
        assert!(so.exists(), "{} missing", so.display());
        so
    })
    .clone()
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// A fresh recording directory inside the sandbox.
    pub fn rec(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    /// Writes `src` to `name.c` and compiles it with gcc.
    pub fn gcc(&self, name: &str, src: &str, args: &[&str]) -> PathBuf {
        let c = self.path().join(format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        let out = self.path().join(name);
        let o = Command::new("gcc")
            .arg("-O2")
            .arg("-g")
            .arg("-fno-builtin")
            .arg("-o")
            .arg(&out)
            .arg(&c)
            .args(args)
            .output()
            .expect("gcc");
        assert!(
            o.status.success(),
            "gcc failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }
}

/// Runs `cmd` plainly (`rec` None) or under the agent writing into `rec`.
pub fn run(
    mut cmd: impl std::borrow::BorrowMut<Command>,
    rec: Option<&Path>,
    env: &[(&str, &str)],
) -> Output {
    let cmd = cmd.borrow_mut();
    for k in ["LD_PRELOAD", "OFFHEAP_DIR"] {
        cmd.env_remove(k);
    }
    if let Some(dir) = rec {
        cmd.env("LD_PRELOAD", agent_so()).env("OFFHEAP_DIR", dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every native stream in `dir`, decoded (panics on undecodable files).
pub fn streams(dir: &Path) -> Vec<(PathBuf, NativeStream)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("native-") && name.ends_with(".bin") {
            let s = read_stream(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            v.push((p, s));
        }
    }
    v.sort_by_key(|(_, s)| s.pid);
    v
}

/// Runtime address range of `sym` in the module whose path ends with `module`.
pub fn symbol_range(s: &NativeStream, module: &Path, sym: &str) -> (u64, u64) {
    let out = Command::new("nm")
        .arg("-S")
        .arg("--defined-only")
        .arg(module)
        .output()
        .expect("nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let (addr, size) = text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == sym).then(|| {
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    u64::from_str_radix(f[1], 16).unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("{sym} not in {}", module.display()));
    let canon = std::fs::canonicalize(module).unwrap();
    let m = s
        .modules
        .iter()
        .find(|m| Path::new(&m.path) == canon || Path::new(&m.path) == module)
        .unwrap_or_else(|| {
            panic!(
                "module {} not recorded: {:?}",
                module.display(),
                s.modules.iter().map(|m| &m.path).collect::<Vec<_>>()
            )
        });
    (m.bias + addr, m.bias + addr + size)
}

/// The series of the stacks whose innermost frame lies in `sym` of `module`.
pub fn series_starting_in<'a>(
    s: &'a NativeStream,
    module: &Path,
    sym: &str,
) -> impl Iterator<Item = &'a offheap_format::native::StackSeries> {
    let (lo, hi) = symbol_range(s, module, sym);
    s.series.iter().filter(move |x| {
        s.stacks[x.stack as usize]
            .frames
            .first()
            .is_some_and(|&f| f > lo && f <= hi)
    })
}

/// Series index sorted by a key, largest first.
pub fn top_by(
    s: &NativeStream,
    key: impl Fn(&offheap_format::native::StackSeries) -> i128,
) -> Vec<u32> {
    let mut v: Vec<_> = s.series.iter().map(|x| (key(x), x.stack)).collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    v.into_iter().map(|x| x.1).collect()
}
