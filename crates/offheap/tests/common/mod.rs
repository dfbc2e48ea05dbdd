//! Shared helpers for the end-to-end tests: they run the real offheap binary
//! on real targets (node, C programs compiled here) and read what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn offheap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_offheap"));
    c.stdin(Stdio::null());
    c
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Compiles a C program (or shared object with `-shared -fPIC`).
    pub fn gcc(&self, src_name: &str, src: &str, out: &str, extra: &[&str]) -> PathBuf {
        let src_path = self.write(src_name, src);
        let out_path = self.path(out);
        let st = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out_path)
            .arg(&src_path)
            .args(extra)
            .status()
            .expect("gcc");
        assert!(st.success(), "gcc failed for {src_name}");
        out_path
    }
    /// `offheap run --quiet --out REC ARGS... -- CMD...` in the sandbox.
    pub fn run(&self, rec: &str, opts: &[&str], cmd: &[&str]) -> Output {
        offheap()
            .current_dir(self.dir.path())
            .args(["run", "--quiet", "--out", rec])
            .args(opts)
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }
}

pub fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json"))
        .unwrap_or_else(|e| panic!("{}: no summary.json: {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn kinds(summary: &serde_json::Value) -> Vec<String> {
    summary["verdict"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

pub fn describe(out: &Output, summary: &serde_json::Value) -> String {
    format!(
        "status {:?}\nstderr:\n{}\nsummary:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        serde_json::to_string_pretty(&summary["verdict"]).unwrap()
    )
}
