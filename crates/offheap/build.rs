//! Builds the native agent (crates/offheap-agent) in release mode and embeds
//! it in the offheap binary, so users install nothing else.
//!
//! `OFFHEAP_AGENT_SO=/path/liboffheap_agent.so` at build time embeds a
//! prebuilt agent instead (and `OFFHEAP_AGENT` at run time overrides the
//! embedded one, for agent development).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let dest = out_dir.join("liboffheap_agent.so");

    println!("cargo:rerun-if-env-changed=OFFHEAP_AGENT_SO");
    for p in [
        "crates/offheap-agent/src",
        "crates/offheap-agent/Cargo.toml",
        "crates/offheap-format/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }

    if let Ok(prebuilt) = env::var("OFFHEAP_AGENT_SO") {
        std::fs::copy(&prebuilt, &dest)
            .unwrap_or_else(|e| panic!("OFFHEAP_AGENT_SO={prebuilt}: {e}"));
        return;
    }

    // OUT_DIR is <target>/<profile>/build/offheap-<hash>/out: the agent gets
    // its own target directory beside the profiles, shared by all of them.
    let target = out_dir
        .ancestors()
        .nth(4)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let agent_target = target.join("agent");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "offheap-agent",
            "--target-dir",
        ])
        .arg(&agent_target)
        // The shipped agent carries no debug info and no local symbols: its
        // own frames are skipped by the unwinder, never symbolized.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("could not run cargo to build the native agent");
    if !status.success() {
        panic!("building the native agent (crates/offheap-agent) failed");
    }
    let built = agent_target.join("release").join("liboffheap_agent.so");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
}
