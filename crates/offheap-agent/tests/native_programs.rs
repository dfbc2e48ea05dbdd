//! Real C programs (compiled with gcc in the test) run with and without the
//! agent: same output, and a decodable recording that says the right thing.

mod common;

use common::*;
use offheap_format::native::AllocKind;
use std::process::Command;
use std::time::{Duration, Instant};

const LEAK_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void *volatile sink;
__attribute__((noinline)) void *leaky_function(size_t n) { void *p = malloc(n); memset(p, 1, n); return p; }
__attribute__((noinline)) void churn(int i) { void *p = malloc(64 + (i % 2000)); sink = p; memset(p, 2, 8); free(p); }
int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 2000000;
  long total = 0;
  for (int i = 0; i < iters; i++) {
    churn(i);
    if (i % 100 == 0) { leaky_function(1000); total += 1000; }
  }
  printf("leaked %ld\n", total);
  fflush(stdout);
  if (argc > 2) _exit(3);
  return 0;
}
"#;

#[test]
fn c_leak_is_the_top_stack_and_lands_in_the_leaking_function() {
    let sb = Sandbox::new();
    let exe = sb.gcc("leak", LEAK_C, &[]);
    let plain = run(Command::new(&exe), None, &[]);
    let rec = sb.rec("rec");
    let traced = run(
        Command::new(&exe),
        Some(&rec),
        // 128 KiB mean interval: ~150 samples of the leak, so the estimate's
        // relative error is ~8% (the bounds below are > 4 sigma).
        &[
            ("OFFHEAP_MIN_AGE_MS", "0"),
            ("OFFHEAP_SAMPLE_INTERVAL", "131072"),
        ],
    );
    assert_eq!(stdout(&plain), stdout(&traced));
    assert!(traced.status.success());
    let ss = streams(&rec);
    assert_eq!(ss.len(), 1, "one process, one stream");
    let s = &ss[0].1;
    assert!(s.notes.is_empty(), "{:?}", s.notes);
    assert_eq!(s.pid, traced_pid(&ss[0].0));
    assert!(!s.snapshot_times_ms.is_empty());
    assert!(s.allocator.iter().any(|a| a.is_some()));
    let top = top_by(s, |x| x.last().live_bytes as i128)[0];
    let st = &s.stacks[top as usize];
    assert_eq!(st.kind, AllocKind::Malloc);
    let (lo, hi) = symbol_range(s, &exe, "leaky_function");
    assert!(
        st.frames.first().is_some_and(|&f| f > lo && f <= hi),
        "first frame {:x?} not in leaky_function [{lo:#x},{hi:#x})",
        st.frames.first()
    );
    let (mlo, mhi) = symbol_range(s, &exe, "main");
    assert!(
        st.frames.iter().any(|&f| f > mlo && f <= mhi),
        "main not on the stack"
    );
    // 20000 leaks of 1000 bytes: the estimate is unbiased, allow sampling noise.
    let live = s.series.iter().find(|x| x.stack == top).unwrap().last();
    assert!(
        (12_000_000..=30_000_000).contains(&live.live_bytes),
        "estimated leak {} bytes (true 20000000)",
        live.live_bytes
    );
    assert!(live.aged_live_bytes > 0);
    // The churn stack allocated far more and is not live.
    let churn_alloc: u64 = s
        .series
        .iter()
        .filter(|x| x.stack != top)
        .map(|x| x.last().alloc_bytes)
        .sum();
    assert!(churn_alloc > 500_000_000, "churn alloc {churn_alloc}");
}

fn traced_pid(p: &std::path::Path) -> u32 {
    let n = p.file_name().unwrap().to_string_lossy();
    n.trim_start_matches("native-")
        .trim_end_matches(".bin")
        .parse()
        .unwrap()
}

#[test]
fn exact_mode_counts_every_allocation() {
    let sb = Sandbox::new();
    let exe = sb.gcc("leak", LEAK_C, &[]);
    let rec = sb.rec("rec");
    let o = run(
        Command::new(&exe).arg("20000"),
        Some(&rec),
        &[("OFFHEAP_EXACT", "1")],
    );
    assert!(o.status.success());
    let s = &streams(&rec)[0].1;
    assert!(s.exact);
    let leak = series_starting_in(s, &exe, "leaky_function")
        .next()
        .expect("leak stack");
    assert_eq!(leak.last().live_count, 200);
    assert_eq!(leak.last().live_bytes, 200_000);
}

#[test]
fn underscore_exit_writes_the_final_snapshot() {
    let sb = Sandbox::new();
    let exe = sb.gcc("leak", LEAK_C, &[]);
    let rec = sb.rec("rec");
    let o = run(Command::new(&exe).args(["300000", "x"]), Some(&rec), &[]);
    assert_eq!(o.status.code(), Some(3));
    let s = &streams(&rec)[0].1;
    assert!(
        s.agent_notes.iter().any(|n| n.starts_with("final:")),
        "{:?}",
        s.agent_notes
    );
}

const THREADS_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define T 16
#define N 20000
#define Q 4096
/* Each allocation is swapped into a shared ring; what comes out (allocated
   by some other thread) is freed here: blocks cross threads all the time. */
static void *ring[Q];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t key;
static long frees[T];
static void dtor(void *p) { free(p); }  /* free from a TLS destructor */
static void *worker(void *arg) {
  long id = (long)arg;
  unsigned r = (unsigned)id * 2654435761u;
  pthread_setspecific(key, malloc(100));
  for (int i = 0; i < N; i++) {
    char *p = malloc(32 + (i * 7 + id) % 3000);
    p[0] = (char)i;
    r = r * 1103515245u + 12345u;
    pthread_mutex_lock(&mu);
    char *q = ring[(r >> 8) % Q];
    ring[(r >> 8) % Q] = p;
    pthread_mutex_unlock(&mu);
    if (q) { frees[id]++; free(q); }
  }
  return 0;
}
int main(void) {
  pthread_t th[T];
  pthread_key_create(&key, dtor);
  for (long i = 0; i < T; i++) pthread_create(&th[i], 0, worker, (void *)i);
  for (int i = 0; i < T; i++) pthread_join(th[i], 0);
  long total = 0;
  for (int i = 0; i < T; i++) total += frees[i];
  for (int i = 0; i < Q; i++) if (ring[i]) { total++; free(ring[i]); }
  printf("allocated %d freed %ld\n", T * N, total);
  return 0;
}
"#;

#[test]
fn sixteen_threads_allocating_and_freeing_across_threads() {
    let sb = Sandbox::new();
    let exe = sb.gcc("threads", THREADS_C, &["-pthread"]);
    let plain = run(Command::new(&exe), None, &[]);
    for exact in ["0", "1"] {
        let rec = sb.rec(&format!("rec{exact}"));
        let o = run(Command::new(&exe), Some(&rec), &[("OFFHEAP_EXACT", exact)]);
        assert!(o.status.success(), "exact={exact}: {:?}", o.status);
        assert_eq!(stdout(&plain), stdout(&o));
        let s = &streams(&rec)[0].1;
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        let live: u64 = s.series.iter().map(|x| x.last().live_bytes).sum();
        let alloc: u64 = s.series.iter().map(|x| x.last().alloc_bytes).sum();
        assert!(alloc > 100_000_000, "exact={exact} alloc {alloc}");
        // Everything was freed (stdio's buffer and similar may remain).
        assert!(live < alloc / 100, "exact={exact}: live {live} of {alloc}");
    }
}

const FORK_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
__attribute__((noinline)) void *child_leak(size_t n) { void *p = malloc(n); memset(p, 3, n); return p; }
int main(void) {
  for (int k = 0; k < 3; k++) {
    pid_t pid = fork();
    if (pid == 0) {
      for (int i = 0; i < 2000; i++) child_leak(4096);
      printf("child %d done\n", k);
      exit(0);
    }
    int st; waitpid(pid, &st, 0);
  }
  for (int i = 0; i < 1000; i++) child_leak(4096);
  printf("parent done\n");
  return 0;
}
"#;

#[test]
fn fork_without_exec_follows_children_or_not() {
    let sb = Sandbox::new();
    let exe = sb.gcc("fork", FORK_C, &[]);
    let plain = run(Command::new(&exe), None, &[]);
    let rec = sb.rec("follow");
    // A 64 KiB mean interval: ~128 samples of each child's 8 MB, so the
    // estimate is within a few percent (at the default 512 KiB, ~16 samples,
    // it fell below half the truth about once in 30 runs).
    let o = run(
        Command::new(&exe),
        Some(&rec),
        &[("OFFHEAP_SAMPLE_INTERVAL", "65536")],
    );
    assert_eq!(stdout(&plain), stdout(&o));
    let ss = streams(&rec);
    assert_eq!(ss.len(), 4, "parent + 3 children");
    let parent = ss
        .iter()
        .find(|(_, s)| ss.iter().filter(|(_, c)| c.ppid == s.pid).count() == 3);
    let parent = &parent.expect("children point at the parent").1;
    for (_, s) in ss.iter().filter(|(_, s)| s.pid != parent.pid) {
        assert_eq!(s.ppid, parent.pid);
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        let live: u64 = s.series.iter().map(|x| x.last().live_bytes).sum();
        // 2000 * 4 KiB in the child, on top of what was inherited.
        assert!(live >= 4_000_000, "child live {live}");
        assert!(!s.modules.is_empty() && !s.stacks.is_empty());
    }
    let rec = sb.rec("nofollow");
    let o = run(
        Command::new(&exe),
        Some(&rec),
        &[("OFFHEAP_FOLLOW_FORK", "0")],
    );
    assert_eq!(stdout(&plain), stdout(&o));
    assert_eq!(streams(&rec).len(), 1);
}

const LIB_C: &str = r#"
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) void *lib_alloc(size_t n) { void *p = malloc(n); memset(p, 5, n); return p; }
void lib_leak(int k) { for (int i = 0; i < k; i++) lib_alloc(8192); }
"#;

const DL_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  for (int round = 0; round < 3; round++) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_DEEPBIND);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 1; }
    void (*leak)(int) = (void (*)(int))dlsym(h, "lib_leak");
    leak(1000);
    if (dlclose(h) != 0) { printf("dlclose failed\n"); return 1; }
  }
  for (int i = 0; i < 100000; i++) { void *volatile p = malloc(512); free(p); }
  printf("ok\n");
  return 0;
}
"#;

#[test]
fn dlopen_dlclose_keeps_the_unloaded_module_resolvable() {
    let sb = Sandbox::new();
    let lib = sb.gcc("libleak.so", LIB_C, &["-shared", "-fPIC"]);
    let exe = sb.gcc("dl", DL_C, &["-ldl"]);
    let plain = run(Command::new(&exe).arg(&lib), None, &[]);
    let rec = sb.rec("rec");
    let o = run(Command::new(&exe).arg(&lib), Some(&rec), &[]);
    assert_eq!(stdout(&plain), "ok\n");
    assert_eq!(stdout(&plain), stdout(&o));
    let s = &streams(&rec)[0].1;
    assert!(s.notes.is_empty(), "{:?}", s.notes);
    let canon = std::fs::canonicalize(&lib).unwrap();
    let mods: Vec<_> = s
        .modules
        .iter()
        .filter(|m| std::path::Path::new(&m.path) == canon)
        .collect();
    assert!(!mods.is_empty(), "library never recorded");
    assert!(
        mods.iter().all(|m| m.unloaded_at_ms.is_some()),
        "unload not recorded"
    );
    assert!(mods.iter().all(|m| m.build_id.is_some()));
    // The leak (3 x 1000 x 8 KiB) is the top live stack, its first frame in lib_alloc
    // of one of the (unloaded) module records.
    let top = top_by(s, |x| x.last().live_bytes as i128)[0];
    let f = s.stacks[top as usize].frames[0];
    let m = mods
        .iter()
        .find(|m| m.contains(f))
        .expect("top frame resolves to the unloaded library");
    let out = Command::new("nm").arg("-S").arg(&lib).output().unwrap();
    let nm = String::from_utf8_lossy(&out.stdout);
    let (a, n) = nm
        .lines()
        .find_map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (v.len() == 4 && v[3] == "lib_alloc").then(|| {
                (
                    u64::from_str_radix(v[0], 16).unwrap(),
                    u64::from_str_radix(v[1], 16).unwrap(),
                )
            })
        })
        .unwrap();
    assert!(
        f > m.bias + a && f <= m.bias + a + n,
        "frame {f:#x} not in lib_alloc"
    );
}

const LOOP_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) void *grow(size_t n) { void *p = malloc(n); memset(p, 1, n); return p; }
int main(void) {
  printf("started\n"); fflush(stdout);
  for (;;) { grow(64 * 1024); usleep(200); }
}
"#;

#[test]
fn sigkill_mid_run_leaves_a_decodable_recording() {
    let sb = Sandbox::new();
    let exe = sb.gcc("loop", LOOP_C, &[]);
    let rec = sb.rec("rec");
    let mut child = Command::new(&exe)
        .env_remove("LD_PRELOAD")
        .env("LD_PRELOAD", agent_so())
        .env("OFFHEAP_DIR", &rec)
        .env("OFFHEAP_INTERVAL_MS", "100")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = rec.join(format!("native-{}.bin", child.id()));
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let ok = std::fs::metadata(&path).is_ok()
            && offheap_format::native::read_stream(&path)
                .is_ok_and(|s| s.snapshot_times_ms.len() >= 3);
        if ok || t0.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let s = offheap_format::native::read_stream(&path).expect("decodable after SIGKILL");
    assert!(
        s.snapshot_times_ms.len() >= 3,
        "{} snapshots",
        s.snapshot_times_ms.len()
    );
    assert!(
        !s.agent_notes.iter().any(|n| n.starts_with("final:")),
        "no final snapshot after SIGKILL"
    );
    let live: u64 = s.series.iter().map(|x| x.last().live_bytes).sum();
    assert!(live > 0);
    // Any truncation of the file still decodes, stopping at the cut.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [9usize, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let d = offheap_format::native::decode(&bytes[..cut]).unwrap();
        assert!(d.snapshot_times_ms.len() <= s.snapshot_times_ms.len());
    }
}

#[test]
fn python_workload_output_is_unchanged() {
    let sb = Sandbox::new();
    let code = "import json,zlib\nd=[{'k':i,'v':'x'*(i%300)} for i in range(100000)]\ns=json.dumps(d)\nprint(len(s), zlib.crc32(zlib.compress(s.encode())))";
    // The real interpreter, not a wrapper script (pyenv shims exec it).
    let exe = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = stdout(&exe).trim().to_string();
    let mut c = Command::new(&python);
    c.args(["-c", code]);
    let plain = run(c, None, &[]);
    assert!(plain.status.success());
    for exact in ["0", "1"] {
        let rec = sb.rec(&format!("rec{exact}"));
        let mut c = Command::new(&python);
        c.args(["-c", code]);
        let o = run(c, Some(&rec), &[("OFFHEAP_EXACT", exact)]);
        assert_eq!(stdout(&plain), stdout(&o), "exact={exact}");
        let ss = streams(&rec);
        assert!(!ss.is_empty());
        let s = &ss.last().unwrap().1;
        assert!(s.exe.contains("python"), "{}", s.exe);
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        assert!(s.series.iter().map(|x| x.last().alloc_bytes).sum::<u64>() > 10_000_000);
    }
}

#[test]
fn gcc_compiling_a_file_works_and_children_follow_exec_only_when_asked() {
    let sb = Sandbox::new();
    let src = sb.path().join("prog.c");
    std::fs::write(&src, LEAK_C).unwrap();
    let compile = |rec: Option<&std::path::Path>, out: &str, follow: &str| {
        let mut c = Command::new("gcc");
        c.arg("-O2").arg("-o").arg(sb.path().join(out)).arg(&src);
        run(c, rec, &[("OFFHEAP_FOLLOW_EXEC", follow)])
    };
    let plain = compile(None, "a", "0");
    assert!(plain.status.success());
    let rec = sb.rec("nofollow");
    let o = compile(Some(&rec), "b", "0");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(sb.path().join("a")).unwrap(),
        std::fs::read(sb.path().join("b")).unwrap()
    );
    let ss = streams(&rec);
    assert!(
        ss.len() <= 1,
        "only the gcc driver is recorded: {}",
        ss.len()
    );
    let rec = sb.rec("follow");
    let o = compile(Some(&rec), "c", "1");
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(sb.path().join("a")).unwrap(),
        std::fs::read(sb.path().join("c")).unwrap()
    );
    let ss = streams(&rec);
    assert!(
        ss.iter().any(|(_, s)| s.exe.contains("cc1")),
        "cc1 not followed: {:?}",
        ss.iter().map(|x| &x.1.exe).collect::<Vec<_>>()
    );
    for (_, s) in &ss {
        assert!(s.notes.is_empty(), "{}: {:?}", s.exe, s.notes);
    }
}

#[test]
fn without_offheap_dir_the_agent_is_a_pass_through() {
    let sb = Sandbox::new();
    let exe = sb.gcc("leak", LEAK_C, &[]);
    let o = Command::new(&exe)
        .arg("10000")
        .env("LD_PRELOAD", agent_so())
        .env_remove("OFFHEAP_DIR")
        .current_dir(sb.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "leaked 100000\n");
    // Regression: a pass-through agent made every dlopen fail (it looked
    // glibc's dlopen up only once enabled).
    let lib = sb.gcc("libleak.so", LIB_C, &["-shared", "-fPIC"]);
    let dl = sb.gcc("dl", DL_C, &["-ldl"]);
    let o = Command::new(&dl)
        .arg(&lib)
        .env("LD_PRELOAD", agent_so())
        .env_remove("OFFHEAP_DIR")
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "ok\n");
}

const MMAP_C: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <string.h>
__attribute__((noinline)) void *map_it(size_t n) {
  void *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(p, 1, n); return p;
}
int main(void) {
  void *keep[64];
  for (int i = 0; i < 64; i++) keep[i] = map_it(1 << 20);
  for (int i = 0; i < 32; i++) munmap(keep[i], 1 << 20);
  for (int i = 32; i < 48; i++) munmap((char *)keep[i] + (1 << 19), 1 << 19);  /* partial */
  void *r = mremap(keep[63], 1 << 20, 4 << 20, MREMAP_MAYMOVE);
  printf("%d\n", r != MAP_FAILED);
  return 0;
}
"#;

#[test]
fn anonymous_mmaps_are_their_own_kind_with_partial_unmaps() {
    let sb = Sandbox::new();
    let exe = sb.gcc("mm", MMAP_C, &[]);
    let rec = sb.rec("rec");
    let o = run(Command::new(&exe), Some(&rec), &[("OFFHEAP_EXACT", "1")]);
    assert_eq!(stdout(&o), "1\n");
    let s = &streams(&rec)[0].1;
    let (lo, hi) = symbol_range(s, &exe, "map_it");
    let x = s
        .series
        .iter()
        .find(|x| {
            let st = &s.stacks[x.stack as usize];
            st.kind == AllocKind::Mmap && st.frames.first().is_some_and(|&f| f > lo && f <= hi)
        })
        .expect("mmap stack");
    let c = x.last();
    assert_eq!(c.alloc_count, 64);
    // 16 whole + 16 halves + 1 grown to 4 MiB (the grown mapping may sit in another region list entry)
    let mib = 1u64 << 20;
    assert_eq!(
        c.live_bytes,
        15 * mib + 16 * mib / 2 + 4 * mib,
        "live {}",
        c.live_bytes
    );
}

#[test]
fn an_unusable_recording_directory_is_harmless() {
    let sb = Sandbox::new();
    let exe = sb.gcc("leak", LEAK_C, &[]);
    let missing = sb.path().join("does/not/exist");
    let o = run(Command::new(&exe).arg("200000"), Some(&missing), &[]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "leaked 2000000\n");
    assert!(!missing.exists());
}

const FRAG_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Fragmentation: 8 threads (8 arenas) allocate 20 MB each, keep one small
   block at the top, free everything else. glibc keeps the freed memory. */
#define T 8
#define N 20000
static void *pins[T];
static void *worker(void *arg) {
  long id = (long)arg;
  static __thread void *blocks[N];
  for (int i = 0; i < N; i++) { blocks[i] = malloc(1000); memset(blocks[i], 1, 1000); }
  pins[id] = malloc(64);
  for (int i = 0; i < N; i++) free(blocks[i]);
  return 0;
}
int main(void) {
  pthread_t th[T];
  for (long i = 0; i < T; i++) pthread_create(&th[i], 0, worker, (void *)i);
  for (int i = 0; i < T; i++) pthread_join(th[i], 0);
  usleep(400000);  /* let a periodic snapshot see the retained state */
  printf("done\n");
  return 0;
}
"#;

#[test]
fn fragmentation_shows_in_allocator_stats_not_in_live_bytes() {
    let sb = Sandbox::new();
    let exe = sb.gcc("frag", FRAG_C, &["-pthread"]);
    let rec = sb.rec("rec");
    let o = run(
        Command::new(&exe),
        Some(&rec),
        &[("OFFHEAP_INTERVAL_MS", "100")],
    );
    assert_eq!(stdout(&o), "done\n");
    let s = &streams(&rec)[0].1;
    assert!(s.notes.is_empty(), "{:?}", s.notes);
    let last = s
        .allocator
        .iter()
        .rev()
        .flatten()
        .next()
        .expect("allocator stats");
    let live: u64 = s.series.iter().map(|x| x.last().live_bytes).sum();
    let alloc: u64 = s.series.iter().map(|x| x.last().alloc_bytes).sum();
    assert!(alloc > 100_000_000, "alloc {alloc}");
    assert!(live < 10_000_000, "live {live}");
    assert!(last.arenas >= 2, "{last:?}");
    // glibc retains most of the freed 160 MB (free chunks below each pinned block).
    assert!(last.free_bytes > 50_000_000, "{last:?}");
    assert!(
        last.free_bytes > 5 * last.in_use_bytes.max(1) || last.in_use_bytes < 10_000_000,
        "{last:?}"
    );
}

/// Calls through which the agent's frame-pointer shortcut out of its own
/// frames must give the same stacks as framehop: every hooked entry point,
/// and a libc function that allocates (`strdup`, a frame with DWARF unwind
/// data between the hook and the program).
const ENTRY_POINTS_C: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
__attribute__((noinline)) void *via_malloc(size_t n) { return malloc(n); }
__attribute__((noinline)) void *via_calloc(size_t n) { return calloc(1, n); }
__attribute__((noinline)) void *via_realloc(void *p, size_t n) { return realloc(p, n); }
__attribute__((noinline)) void *via_memalign(size_t n) { void *p = 0; posix_memalign(&p, 64, n); return p; }
__attribute__((noinline)) void *via_aligned(size_t n) { return aligned_alloc(128, n); }
__attribute__((noinline)) char *via_strdup(const char *s) { return strdup(s); }
int main(void) {
    void *keep[600];
    int k = 0;
    for (int i = 0; i < 100; i++) {
        keep[k++] = via_malloc(100 + i);
        keep[k++] = via_calloc(200 + i);
        keep[k++] = via_realloc(via_malloc(16), 300 + i);
        keep[k++] = via_memalign(400 + i);
        keep[k++] = via_aligned(512);
        keep[k++] = via_strdup("an allocating libc function");
    }
    for (int i = 0; i < k; i++) free(keep[i]);
    puts("done");
    return 0;
}
"#;

/// Regression guard for the unwinder's shortcut: the agent steps out of its
/// own frames by frame pointer instead of framehop. With ASLR off, the same
/// program recorded with the shortcut and with `OFFHEAP_DEBUG_UNWIND=1`
/// (framehop for every frame, no frame-pointer shortcuts) must give the
/// same set of stacks, and every stack must start at the program's caller of
/// the allocation function (or in libc, for strdup), never in the agent.
#[test]
fn agent_frame_shortcut_gives_the_same_stacks_as_framehop() {
    let sb = Sandbox::new();
    // No sibling calls: each via_* keeps its frame, so it is the first frame.
    // Frame pointers, as in node: a shortcut that stepped one frame too far
    // would then find a valid-looking frame instead of giving up.
    let exe = sb.gcc(
        "entry",
        ENTRY_POINTS_C,
        &["-fno-optimize-sibling-calls", "-fno-omit-frame-pointer"],
    );
    let record = |name: &str, debug: bool| {
        let rec = sb.rec(name);
        let mut cmd = Command::new("setarch");
        cmd.args(["x86_64", "-R"]).arg(&exe);
        let mut env = vec![("OFFHEAP_EXACT", "1"), ("OFFHEAP_FOLLOW_EXEC", "1")];
        if debug {
            env.push(("OFFHEAP_DEBUG_UNWIND", "1"));
        }
        let out = run(cmd, Some(&rec), &env);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout(&out), "done\n");
        let exe_name = exe.to_string_lossy().into_owned();
        let s = streams(&rec)
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.exe == exe_name)
            .expect("the program's own stream");
        let mut stacks: Vec<(u8, Vec<u64>)> = s
            .stacks
            .iter()
            .map(|st| (st.kind as u8, st.frames.clone()))
            .collect();
        stacks.sort();
        stacks.dedup();
        (s, stacks)
    };
    let (s, fast) = record("fast", false);
    let (_, slow) = record("framehop", true);
    assert_eq!(
        fast, slow,
        "stacks differ between the shortcut and framehop"
    );
    for name in [
        "via_malloc",
        "via_calloc",
        "via_realloc",
        "via_memalign",
        "via_aligned",
    ] {
        let (lo, hi) = symbol_range(&s, &exe, name);
        assert!(
            fast.iter()
                .any(|(_, f)| f.first().is_some_and(|&a| a > lo && a <= hi)),
            "no stack starts in {name}"
        );
    }
    let (lo, hi) = symbol_range(&s, &exe, "via_strdup");
    assert!(
        fast.iter()
            .any(|(_, f)| f.len() > 1 && f[1] > lo && f[1] <= hi),
        "no stack has strdup's caller as its second frame"
    );
}

/// Every malloc-family entry point, with alignments, usable sizes and
/// content checks, then one kept block per entry point.
const MALLOC_FAMILY_C: &str = r#"
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void check(int ok, const char *what, long i) {
  if (!ok) { printf("FAIL %s at %ld\n", what, i); fflush(stdout); exit(1); }
}
static void *use(void *p, size_t n, size_t align, long i) {
  check(p != 0, "null", i);
  check(((uintptr_t)p % align) == 0, "alignment", i);
  size_t u = malloc_usable_size(p);
  check(u >= n, "usable size", i);
  memset(p, (int)(i & 0x7f), u);  /* the whole usable size is the caller's */
  return p;
}
__attribute__((noinline)) void *keep_malloc(void) { return malloc(1001); }
__attribute__((noinline)) void *keep_calloc(void) { return calloc(3, 1001); }
__attribute__((noinline)) void *keep_realloc(void) { return realloc(malloc(10), 5005); }
__attribute__((noinline)) void *keep_memalign(void) { return memalign(64, 7007); }
__attribute__((noinline)) void *keep_posix_memalign(void) { void *p = 0; posix_memalign(&p, 256, 9009); return p; }
__attribute__((noinline)) void *keep_aligned_alloc(void) { return aligned_alloc(4096, 11011); }
__attribute__((noinline)) void *keep_valloc(void) { return valloc(13013); }
__attribute__((noinline)) void *keep_pvalloc(void) { return pvalloc(15015); }
__attribute__((noinline)) void *keep_strdup(void) { return strdup("sixteen chars..."); }
int main(void) {
  unsigned long sum = 0;
  for (long i = 0; i < 3000; i++) {
    size_t n = 1 + (size_t)(i * 37 % 5000);
    size_t al = (size_t)16 << (i % 9);          /* 16 .. 4096 */
    char *a = use(malloc(n), n, 16, i);
    char *b = use(calloc(i % 7 + 1, n), (i % 7 + 1) * n, 16, i);
    for (size_t k = 0; k < (i % 7 + 1) * n; k += 97) check(b[k] == (char)(i & 0x7f), "calloc", i);
    char *c = use(memalign(al, n), n, al, i);
    void *d = 0;
    check(posix_memalign(&d, al, n) == 0, "posix_memalign", i);
    use(d, n, al, i);
    char *e = use(aligned_alloc(al, n), n, al, i);
    char *f = use(valloc(n), n, 4096, i);
    char *g = use(pvalloc(n), n, 4096, i);
    /* realloc keeps the contents: grow and shrink, a plain and an aligned block */
    memset(a, 0x55, n);
    a = realloc(a, n * 3 + 1);
    check(a != 0, "realloc", i);
    for (size_t k = 0; k < n; k++) check(a[k] == 0x55, "realloc grow keeps", i);
    a = realloc(a, n / 2 + 1);
    for (size_t k = 0; k < n / 2 + 1; k++) check(a[k] == 0x55, "realloc shrink keeps", i);
    memset(c, 0x33, n);
    c = realloc(c, n + 100);
    check(c != 0, "realloc aligned", i);
    for (size_t k = 0; k < n; k++) check(c[k] == 0x33, "realloc aligned keeps", i);
    use(c, n + 100, 16, i);
    char *h = reallocarray(0, 3, n);
    use(h, 3 * n, 16, i);
    h = reallocarray(h, 4, n);
    check(h != 0, "reallocarray", i);
    check(reallocarray(h, SIZE_MAX / 2, 3) == 0, "reallocarray overflow", i);
    check(calloc(SIZE_MAX / 2, 3) == 0, "calloc overflow", i);
    check(malloc(SIZE_MAX - 8) == 0, "huge malloc", i);
    char *z = malloc(0);
    check(z != 0, "malloc(0)", i);
    check(realloc(realloc(0, 10), 0) == 0, "realloc to 0", i);
    free(0);
    char *s = strdup("a string to copy");
    sum += (unsigned char)a[0] + (unsigned char)s[3] + malloc_usable_size(0);
    free(a); free(b); free(c); free(d); free(e); free(f); free(g); free(h); free(z); free(s);
  }
  void *kept[] = { keep_malloc(), keep_calloc(), keep_realloc(), keep_memalign(),
                   keep_posix_memalign(), keep_aligned_alloc(), keep_valloc(),
                   keep_pvalloc(), keep_strdup() };
  for (int i = 0; i < 9; i++) check(kept[i] != 0, "kept", i);
  printf("ok %lu\n", sum);
  return 0;
}
"#;

/// Exact mode, with allocation headers (the default) and with the address
/// table (`OFFHEAP_HEADERS=0`): every entry point behaves as without the
/// agent (alignment, usable size, contents across realloc, overflow and
/// zero-size cases), and what each kept block's function allocated is live,
/// to the byte and the block.
#[test]
fn exact_mode_entry_points_behave_and_count_to_the_byte() {
    let sb = Sandbox::new();
    // No tail calls: each keep_ function stays on its allocation's stack.
    let exe = sb.gcc("family", MALLOC_FAMILY_C, &["-fno-optimize-sibling-calls"]);
    let plain = run(Command::new(&exe), None, &[]);
    assert!(stdout(&plain).starts_with("ok "), "{}", stdout(&plain));
    for headers in ["1", "0"] {
        let rec = sb.rec(&format!("rec{headers}"));
        let o = run(
            Command::new(&exe),
            Some(&rec),
            &[("OFFHEAP_EXACT", "1"), ("OFFHEAP_HEADERS", headers)],
        );
        assert!(
            o.status.success(),
            "headers={headers}: {:?} {}",
            o.status,
            stdout(&o)
        );
        assert_eq!(stdout(&plain), stdout(&o), "headers={headers}");
        let s = &streams(&rec)[0].1;
        assert!(s.exact);
        for (f, bytes) in [
            ("keep_malloc", 1001),
            ("keep_calloc", 3003),
            ("keep_realloc", 5005),
            ("keep_memalign", 7007),
            ("keep_posix_memalign", 9009),
            ("keep_aligned_alloc", 11011),
            ("keep_valloc", 13013),
            ("keep_pvalloc", 15015),
            ("keep_strdup", 17),
        ] {
            let (lo, hi) = symbol_range(s, &exe, f);
            let (live, count) = s
                .series
                .iter()
                .filter(|x| {
                    s.stacks[x.stack as usize]
                        .frames
                        .iter()
                        .any(|&a| a > lo && a <= hi)
                })
                .fold((0, 0), |(b, c), x| {
                    (b + x.last().live_bytes, c + x.last().live_count)
                });
            assert_eq!((live, count), (bytes, 1), "headers={headers}: {f}");
        }
    }
}

/// A steady leak, short-lived churn, and blocks that live 300 ms: with a
/// minimum age of 600 ms, the aged live bytes count the leak's older part
/// only. Exact mode with headers computes them from per-epoch counters
/// instead of a walk over live records; the table gives the reference.
const AGES_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void *volatile sink;
__attribute__((noinline)) void leak(void) { sink = malloc(1000); memset(sink, 1, 1000); }
__attribute__((noinline)) void churn(void) { void *p = malloc(200); sink = p; free(p); }
static void *ring[300];
__attribute__((noinline)) void medium(int i) { free(ring[i % 300]); ring[i % 300] = malloc(500); }
int main(void) {
  double t0 = now();
  int i = 0;
  while (now() - t0 < 3.0) {
    leak();
    for (int k = 0; k < 10; k++) churn();
    medium(i++);
    struct timespec d = {0, 1000000};
    nanosleep(&d, 0);
  }
  printf("done\n");
  return 0;
}
"#;

#[test]
fn exact_mode_aged_bytes_count_only_what_outlived_the_minimum_age() {
    let sb = Sandbox::new();
    let exe = sb.gcc("ages", AGES_C, &[]);
    for headers in ["1", "0"] {
        let rec = sb.rec(&format!("rec{headers}"));
        let o = run(
            Command::new(&exe),
            Some(&rec),
            &[
                ("OFFHEAP_EXACT", "1"),
                ("OFFHEAP_HEADERS", headers),
                ("OFFHEAP_MIN_AGE_MS", "600"),
                ("OFFHEAP_INTERVAL_MS", "100"),
            ],
        );
        assert!(o.status.success(), "headers={headers}");
        let s = &streams(&rec)[0].1;
        let of = |f: &str| {
            series_starting_in(s, &exe, f)
                .next()
                .unwrap_or_else(|| panic!("no stack in {f}"))
        };
        let leak_series = of("leak");
        let (leak, churn, medium) = (leak_series.last(), of("churn").last(), of("medium").last());
        // The leak ran ~3 s: about the last 600 ms of it (plus up to an
        // epoch of 200 ms, plus timer slack) is too young.
        let share = leak.aged_live_bytes as f64 / leak.live_bytes as f64;
        assert!(
            (0.55..=0.85).contains(&share),
            "headers={headers}: leak aged {} of live {}",
            leak.aged_live_bytes,
            leak.live_bytes
        );
        assert_eq!(churn.aged_live_bytes, 0, "headers={headers}");
        assert_eq!(medium.live_count, 300, "headers={headers}");
        assert!(
            medium.aged_live_bytes <= medium.live_bytes / 20,
            "headers={headers}: blocks that live 300 ms aged {} of {}",
            medium.aged_live_bytes,
            medium.live_bytes
        );
        // The leak is never freed: its aged bytes only grow.
        let aged: Vec<u64> = leak_series
            .points
            .iter()
            .map(|p| p.1.aged_live_bytes)
            .collect();
        assert!(
            aged.windows(2).all(|w| w[0] <= w[1]),
            "headers={headers}: {aged:?}"
        );
        assert!(aged.iter().filter(|&&a| a > 0).count() >= 10, "{aged:?}");
    }
}

/// Two hot call sites placed so that their return addresses fall in the
/// same one of framehop's 509 cache slots and in the same cache way (the
/// agent's hash with its initial seed), `PAD` bytes apart.
const COLLIDE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#define S(x) #x
#define XS(x) S(x)
static void *volatile sink;
__attribute__((noinline)) void f1(void) { void *p = malloc(32); sink = p; free(p); }
__asm__(".pushsection .text\n.skip " XS(PAD) ", 0xcc\n.popsection");
__attribute__((noinline)) void f2(void) { void *p = malloc(32); sink = p; free(p); }
int main(void) {
  for (int i = 0; i < 100000; i++) { f1(); f2(); }
  printf("ok\n");
  return 0;
}
"#;

/// The return address after `call malloc` in function `f` (objdump).
fn return_address_after_malloc(exe: &std::path::Path, f: &str) -> u64 {
    let o = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(exe)
        .output()
        .expect("objdump");
    let text = String::from_utf8_lossy(&o.stdout);
    let body: Vec<&str> = text
        .split(&format!("<{f}>:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("{f} not in objdump output"))
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let i = body
        .iter()
        .position(|l| l.contains("call") && l.contains("<malloc@plt>"))
        .expect("call malloc");
    let next = body[i + 1].trim();
    u64::from_str_radix(next.split(':').next().unwrap().trim(), 16).unwrap()
}

/// Regression: framehop's rule cache is direct-mapped (`address % 509`);
/// the agent spreads addresses over 4 such caches by a hash. Two hot
/// return addresses that share both the slot and the cache evict each
/// other on every sample and re-parse CFI each time (in one layout of
/// node under valgrind this doubled exact mode's instructions). A pool
/// slot that sees such misses picks a new hash seed: after that the two
/// call sites stop colliding.
#[test]
fn colliding_return_addresses_get_separated() {
    let sb = Sandbox::new();
    let flags = |pad: u64| {
        vec![
            format!("-DPAD={pad}"),
            "-no-pie".into(),
            "-fno-toplevel-reorder".into(),
            "-fno-reorder-functions".into(),
            "-falign-functions=1".into(),
        ]
    };
    let build = |name: &str, pad: u64| {
        let f = flags(pad);
        let args: Vec<&str> = f.iter().map(|s| s.as_str()).collect();
        sb.gcc(name, COLLIDE_C, &args)
    };
    let probe = build("probe", 0);
    let r1 = return_address_after_malloc(&probe, "f1");
    let d0 = return_address_after_malloc(&probe, "f2") - r1;
    // framehop looks up return address - 1; the agent's way for seed 0.
    let way = |r: u64| ((r - 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 62) as usize;
    let d = (1..64)
        .map(|j| 509 * j)
        .find(|&d| d >= d0 && way(r1) == way(r1 + d))
        .expect("a colliding distance");
    let exe = build("collide", d - d0);
    assert_eq!(return_address_after_malloc(&exe, "f1"), r1);
    assert_eq!(return_address_after_malloc(&exe, "f2"), r1 + d);
    let rec = sb.rec("rec");
    let o = run(Command::new(&exe), Some(&rec), &[("OFFHEAP_EXACT", "1")]);
    assert_eq!(stdout(&o), "ok\n");
    let s = &streams(&rec)[0].1;
    let fin = s
        .agent_notes
        .iter()
        .find(|n| n.starts_with("final:"))
        .expect("final note");
    let field = |k: &str| -> u64 {
        fin.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {fin}"))
            .parse()
            .unwrap()
    };
    let samples = field("samples");
    assert!(samples >= 200_000, "{fin}");
    assert!(field("cache_reseeds") >= 1, "{fin}");
    // Without the reseed: about two collision misses per sample.
    assert!(field("cache_collisions") < samples / 50, "{fin}");
}

/// A daemon-style program: leaks, then closes every descriptor (or dup2s
/// stderr over them), then opens its own file, writes lines into it and
/// leaks on. The agent's stream must never land in the program's file or
/// stderr, and the final snapshot must still be written.
const CLOSES_FDS_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *keep[256];
static int k;
__attribute__((noinline)) void leak(int n, int pause_us) {
  for (int i = 0; i < n; i++) {
    keep[k] = malloc(64 << 10);
    memset(keep[k++], 1, 64 << 10);
    usleep(pause_us);
  }
}
int main(int argc, char **argv) {
  leak(40, 10000);
  if (!strcmp(argv[1], "close_range")) syscall(SYS_close_range, 3, ~0U, 0);
  else if (!strcmp(argv[1], "closefrom")) for (int fd = 3; fd < 65536; fd++) close(fd);
  else if (!strcmp(argv[1], "dup2")) for (int fd = 3; fd < 1100; fd++) dup2(2, fd);
  int f = open(argv[2], O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (f < 0) return 9;
  for (int i = 0; i < 40; i++) {
    dprintf(f, "line %d\n", i);
    leak(1, 20000);
  }
  close(f);
  return 0;
}
"#;

#[test]
fn a_program_that_closes_every_descriptor_never_gets_the_stream_in_its_files() {
    let sb = Sandbox::new();
    let exe = sb.gcc("closes_fds", CLOSES_FDS_C, &[]);
    let expected: String = (0..40).map(|i| format!("line {i}\n")).collect();
    for mode in ["close_range", "closefrom", "dup2"] {
        for exact in [false, true] {
            let rec = sb.rec(&format!("rec-{mode}-{exact}"));
            let own = sb.path().join(format!("own-{mode}-{exact}.txt"));
            let mut env = vec![("OFFHEAP_INTERVAL_MS", "50")];
            if exact {
                env.push(("OFFHEAP_EXACT", "1"));
            }
            let o = run(Command::new(&exe).arg(mode).arg(&own), Some(&rec), &env);
            assert_eq!(o.status.code(), Some(0), "{mode} exact={exact}: {o:?}");
            assert_eq!(
                std::fs::read_to_string(&own).unwrap(),
                expected,
                "{mode} exact={exact}: the program's own file changed"
            );
            assert!(
                o.stderr.is_empty(),
                "{mode} exact={exact}: stderr got {} bytes",
                o.stderr.len()
            );
            let all = streams(&rec);
            assert_eq!(all.len(), 1, "{mode}");
            let s = &all[0].1;
            assert!(
                s.agent_notes.iter().any(|n| n.starts_with("final:")),
                "{mode} exact={exact}: no final snapshot: {:?}",
                s.agent_notes
            );
            assert!(
                s.agent_notes
                    .iter()
                    .any(|n| n.starts_with("stream reopened")),
                "{mode} exact={exact}: {:?}",
                s.agent_notes
            );
            assert!(s.notes.is_empty(), "{mode}: reader notes {:?}", s.notes);
            if exact {
                let live: u64 = series_starting_in(s, &exe, "leak")
                    .map(|x| x.last().live_bytes)
                    .sum();
                assert_eq!(live, 80 * (64 << 10), "{mode}: final live bytes");
            }
        }
    }
}
