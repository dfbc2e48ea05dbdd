//! The bounded mutation pass that `cargo test` runs for every target.

use crate::guard;
use crate::mutate::{Rng, hash, mutate};
use crate::targets::Target;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How much one pass may do: whichever bound comes first.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub iterations: usize,
    pub time: Duration,
    /// `OFFHEAP_FUZZ_SEED` (0 by default); mixed with the target's name.
    pub seed: u64,
}

impl Budget {
    /// The CI budget (`iterations`, `millis`), unless the environment says
    /// otherwise: `OFFHEAP_FUZZ_ITERS`, `OFFHEAP_FUZZ_SECS` (both for a long
    /// run), `OFFHEAP_FUZZ_SEED` (another sequence than the fixed default).
    pub fn from_env(iterations: usize, millis: u64) -> Budget {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Budget {
            iterations: var("OFFHEAP_FUZZ_ITERS").map_or(iterations, |v| v as usize),
            time: var("OFFHEAP_FUZZ_SECS")
                .map_or(Duration::from_millis(millis), Duration::from_secs),
            seed: var("OFFHEAP_FUZZ_SEED").unwrap_or(0),
        }
    }
}

/// The inputs of a target's `corpus/` and `crashes/` directories, sorted
/// by name (crashes first).
pub fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = guard::target_dir(name);
    let mut out = Vec::new();
    for sub in ["crashes", "corpus"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for p in paths {
            if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

/// What a pass did.
#[derive(Debug)]
pub struct Report {
    pub seeds: usize,
    pub cases: usize,
    /// Cases the target accepted (parsed, opened).
    pub accepted: usize,
    pub elapsed: Duration,
}

/// Runs every corpus input of `t` as it is; panics naming the first that
/// fails.
pub fn replay_corpus(t: &Target) -> usize {
    let seeds = corpus(t.name);
    for (path, input) in &seeds {
        if let Err(e) = guard::case(t.name, input, t.run) {
            panic!(
                "fuzz target {}: corpus input {} fails: {e}",
                t.name,
                path.display()
            );
        }
    }
    seeds.len()
}

/// The corpus of `t` as it is, then seeded mutations of it until the
/// budget is spent. Panics on the first failing input, after saving it to
/// the target's `crashes/` directory.
pub fn fuzz(t: &Target, budget: Budget) -> Report {
    let start = Instant::now();
    let seeds: Vec<Vec<u8>> = corpus(t.name).into_iter().map(|(_, b)| b).collect();
    assert!(
        !seeds.is_empty(),
        "fuzz target {}: no corpus in {}",
        t.name,
        guard::target_dir(t.name).display()
    );
    replay_corpus(t);
    let mut rng = Rng::new(budget.seed ^ hash(t.name.as_bytes()));
    let mut cases = 0;
    let mut accepted = 0;
    let mut input = Vec::new();
    while cases < budget.iterations && start.elapsed() < budget.time {
        input.clear();
        input.extend_from_slice(&seeds[rng.below(seeds.len())]);
        mutate(&mut rng, &mut input, &seeds, t.max_len);
        cases += 1;
        let case_start = Instant::now();
        let res = guard::case(t.name, &input, t.run);
        let took = case_start.elapsed();
        let res = res.and_then(|ok| {
            if took > t.slow {
                Err(format!("took {took:?} (limit {:?})", t.slow))
            } else {
                Ok(ok)
            }
        });
        accepted += matches!(res, Ok(true)) as usize;
        if let Err(e) = res {
            let saved = guard::save_failure(t.name, "crash", &input);
            panic!(
                "fuzz target {}: case {cases} (OFFHEAP_FUZZ_SEED={}) {e}; input ({} bytes) saved to {}",
                t.name,
                budget.seed,
                input.len(),
                saved.display()
            );
        }
    }
    Report {
        seeds: seeds.len(),
        cases,
        accepted,
        elapsed: start.elapsed(),
    }
}
