//! Every fuzz target, twice, bounded for CI:
//!
//! * `<target>`: bolero's pass, the corpus as it is then random inputs for
//!   a short while (`BOLERO_RANDOM_TEST_TIME_MS`, `BOLERO_RANDOM_ITERATIONS`
//!   to change it). The same test is what `cargo bolero test` drives with
//!   libFuzzer for long, coverage-guided runs (docs/NOTES.md, "Fuzzing").
//! * `<target>_mutations`: seeded mutations of the corpus (bit flips,
//!   truncation, splices, length and number edits), a fixed sequence by
//!   default (`OFFHEAP_FUZZ_SEED`, `OFFHEAP_FUZZ_ITERS`, `OFFHEAP_FUZZ_SECS`
//!   to change it).
//!
//! A failing input is saved to `tests/__fuzz__/<target>/crashes/`, which
//! both replay first: fix the bug, then move the file to `corpus/` as a
//! regression seed.

use offheap_fuzz::{Budget, guard, target};
use std::time::Duration;

#[global_allocator]
static ALLOC: offheap_fuzz::Counting = offheap_fuzz::Counting;

/// Random-input time of each bolero pass.
const BOLERO_MS: u64 = 500;
/// Mutation pass of each target: this many cases, or this long.
const CASES: usize = 4000;
const MUTATION_MS: u64 = 2500;

/// One case of a bolero pass: a failure is a panic, which bolero reports
/// with the input.
fn bolero_case(t: &'static offheap_fuzz::Target, input: &[u8]) {
    if let Err(e) = guard::case(t.name, input, t.run) {
        panic!("{e}");
    }
}

fn mutation_pass(name: &'static str) {
    let t = target(name);
    let r = offheap_fuzz::fuzz(t, Budget::from_env(CASES, MUTATION_MS));
    eprintln!(
        "{name}: {} seeds, {} mutated cases ({} accepted) in {:.2?}",
        r.seeds, r.cases, r.accepted, r.elapsed
    );
    assert!(r.cases > 0);
}

macro_rules! targets {
    ($($name:ident $mutations:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            // Expanded here, in the test itself: cargo-bolero finds a target
            // by the path of the function `check!` is in.
            let t = target(stringify!($name));
            bolero::check!(name = t.name)
                .with_test_time(Duration::from_millis(BOLERO_MS))
                .with_max_len(t.max_len)
                .for_each(|input: &[u8]| bolero_case(t, input));
        }
        #[test]
        fn $mutations() {
            mutation_pass(stringify!($name));
        }
    )*};
}

targets! {
    native_decode native_decode_mutations,
    native_records native_records_mutations,
    jsonl_proc jsonl_proc_mutations,
    jsonl_node jsonl_node_mutations,
    recording recording_mutations,
    recording_analysis recording_analysis_mutations,
    heap_snapshot heap_snapshot_mutations,
    perf_map perf_map_mutations,
    elf elf_mutations,
    proc_maps proc_maps_mutations,
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let src = include_str!("fuzz.rs");
    for t in offheap_fuzz::TARGETS {
        assert!(
            src.contains(&format!("    {} {}_mutations,", t.name, t.name)),
            "{} has no test",
            t.name
        );
        let seeds = offheap_fuzz::run::corpus(t.name);
        assert!(!seeds.is_empty(), "{} has no corpus", t.name);
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(guard::target_dir(target).join("corpus").join(name)).unwrap()
}

/// The seeds are what they claim to be: mutations start from inputs that
/// get far into their parsers.
#[test]
fn seeds_reach_deep() {
    use offheap_format::native;
    for name in ["c-exact-full.bin", "node-shrunk.bin"] {
        let s = native::decode(&seed("native_decode", name)).unwrap();
        assert!(s.notes.is_empty(), "{name}: {:?}", s.notes);
        assert!(s.snapshot_times_ms.len() >= 3 && !s.series.is_empty() && !s.modules.is_empty());
    }
    let s = native::decode(&seed("native_decode", "c-cut-mid-record.bin")).unwrap();
    assert!(!s.notes.is_empty() && !s.snapshot_times_ms.is_empty());

    let dir = offheap_fuzz::targets::write_recording(&seed("recording", "node-run"));
    let rec = offheap_format::Recording::open(dir.path()).unwrap();
    assert!(rec.end.is_some() && rec.heap.is_some() && rec.proc.len() == 6);
    assert!(rec.main_node_stream().is_some() && rec.main_native_stream().is_some());
    assert_eq!(rec.perf_maps.len(), 1);
    let n = rec.main_node_stream().unwrap();
    assert!(!n.mem.is_empty() && !n.gc.is_empty() && !n.heap_frames.is_empty());
    assert!(!n.snapshots.is_empty() && !n.acks.is_empty() && n.bye.is_some());

    use offheap_node::HeapSnapshot;
    for name in [
        "tiny.heapsnapshot",
        "hand-written.heapsnapshot",
        "real-shrunk.heapsnapshot",
        "real-shrunk-reverse.heapsnapshot",
    ] {
        let s = HeapSnapshot::from_reader(&seed("heap_snapshot", name)[..]).unwrap();
        assert!(s.warnings.is_empty(), "{name}: {:?}", s.warnings);
        assert!(s.node_count() >= 5, "{name}");
    }
    let s =
        HeapSnapshot::from_reader(&seed("heap_snapshot", "hand-written.heapsnapshot")[..]).unwrap();
    assert_eq!(s.self_size(7), 5_000_000_000);
    assert!(s.allocation_site(3).is_some() && s.location(7).is_some());
    let s = HeapSnapshot::from_reader(
        &seed("heap_snapshot", "reordered-cut-in-strings.heapsnapshot")[..],
    )
    .unwrap();
    assert!(!s.warnings.is_empty());

    let blob = seed("elf", "embedded-blob.elf");
    let e = offheap_format::elf::Elf::parse(&blob).unwrap();
    assert!(e.symbol(b"v8_Default_embedded_blob_code_").is_some());
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &blob).unwrap();
    // The blob, its two builtins, and at least one PT_LOAD segment.
    assert!(offheap_symbols::fuzzing::module_file(f.path(), &[]) >= 4);
    let map = seed("perf_map", "real.map");
    assert!(offheap_symbols::fuzzing::perf_map(&map, b"", &[]) > 10);
}

// ---------------------------------------------------------- the harness

#[test]
fn mutations_are_reproducible_and_bounded() {
    use offheap_fuzz::mutate::{Rng, mutate};
    let seed = b"{\"a\":[1,2,3]}\n".to_vec();
    let others = vec![b"xyz 123".to_vec()];
    let run = |s: u64| {
        let mut rng = Rng::new(s);
        (0..200)
            .map(|_| {
                let mut d = seed.clone();
                mutate(&mut rng, &mut d, &others, 64);
                assert!(d.len() <= 64);
                d
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    assert!(run(7).iter().any(|d| d != &seed));
}

#[test]
fn parts_of_a_recording_input() {
    let dir = offheap_fuzz::targets::write_recording(b"{\"pid\":42}\n=====\n{}\n=====\nx");
    let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
    assert_eq!(read("recording.json"), b"{\"pid\":42}");
    assert_eq!(read("end.json"), b"{}");
    assert_eq!(read("proc.jsonl"), b"x");
    assert!(!dir.path().join("node-42-0.jsonl").exists());
}

#[test]
fn checksums_are_fixed() {
    use offheap_format::native::{self, MAGIC};
    use offheap_fuzz::targets::fix_checksums;
    let mut v = MAGIC.to_vec();
    // A NOTE record "hi" with a wrong checksum.
    v.extend_from_slice(&4u32.to_le_bytes());
    v.push(native::tag::NOTE);
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(b"hi");
    v.extend_from_slice(&[0; 4]);
    assert!(!native::decode(&v).unwrap().notes.is_empty());
    let s = native::decode(&fix_checksums(&v)).unwrap();
    assert_eq!(s.agent_notes, vec!["hi".to_string()]);
    assert_eq!(fix_checksums(&v[MAGIC.len()..]), fix_checksums(&v));
}

/// The guard catches what it is there for.
#[test]
fn the_guard_fails_panics_and_big_allocations() {
    fn panics(_: &[u8]) -> bool {
        panic!("boom")
    }
    fn allocates(d: &[u8]) -> bool {
        let v = vec![1u8; guard::alloc_limit(d.len()) + 1];
        v[0] == 1
    }
    fn fine(d: &[u8]) -> bool {
        d.is_empty()
    }
    let e = guard::case("guard_test", b"x", panics).unwrap_err();
    assert!(e.contains("boom"), "{e}");
    let e = guard::case("guard_test", b"x", allocates).unwrap_err();
    assert!(e.contains("allocated"), "{e}");
    assert_eq!(guard::case("guard_test", b"", fine), Ok(true));
}
