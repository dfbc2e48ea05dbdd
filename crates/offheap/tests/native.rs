//! The native side end to end through `offheap run` (issues 3 and 4): a real
//! N-API addon that leaks beside heavy legitimate churn, and a fragmentation
//! scenario that must not be called a leak.

mod common;
use common::*;

#[test]
fn addon_leak_beside_churn_is_the_top_suspect() {
    let sb = Sandbox::new();
    build_addon(&sb);
    let out = sb.run("rec", &["--min-age", "2s"], &["node", "app.js"]);
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    assert_eq!(s["verdict"]["primary"], "native", "{}", describe(&out, &s));
    let top = &s["suspects"][0];
    assert!(
        top["module"].as_str().unwrap().ends_with("leak.node"),
        "top suspect: {top:#}"
    );
    let rate = top["bytes_per_s"].as_f64().unwrap();
    assert!(
        rate > 1e6 && rate < 5e6,
        "leak rate {rate} (expected at most 3.3 MB/s): {top:#}"
    );
    // The churn stacks allocate far more but do not grow.
    assert!(
        !s["suspects"]
            .as_array()
            .unwrap()
            .iter()
            .take(1)
            .any(|x| x["function"].as_str().unwrap_or("").contains("churn")),
        "{s:#}"
    );
}

const FRAG: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Fragmentation, not a leak: threads started one after another each fill
   their own glibc arena with small blocks, then free all but one block at
   the top of the arena, which pins it. Live bytes stay tiny; RSS grows. */
#define N 16
static void *keep[N];
static volatile int stop = 0;
static void *worker(void *arg) {
  long id = (long)arg;
  enum { COUNT = 40000 };
  void **blocks = malloc(sizeof(void *) * COUNT);
  for (int i = 0; i < COUNT; i++) { blocks[i] = malloc(512); memset(blocks[i], 1, 512); }
  keep[id] = malloc(64);
  for (int i = 0; i < COUNT; i++) free(blocks[i]);
  free(blocks);
  while (!stop) usleep(50000);
  return 0;
}
int main(void) {
  pthread_t t[N];
  for (long i = 0; i < N; i++) { pthread_create(&t[i], 0, worker, (void *)i); usleep(450000); }
  usleep(500000);
  stop = 1;
  for (int i = 0; i < N; i++) pthread_join(t[i], 0);
  return 0;
}
"#;

#[test]
fn arena_fragmentation_is_not_a_leak() {
    let sb = Sandbox::new();
    sb.gcc("frag.c", FRAG, "frag", &["-pthread"]);
    let out = sb.run("rec", &[], &["./frag"]);
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    assert_eq!(
        s["verdict"]["primary"],
        "fragmentation",
        "{}",
        describe(&out, &s)
    );
    assert!(
        !kinds(&s).contains(&"native".to_string()),
        "{}",
        describe(&out, &s)
    );
    assert!(
        s["growth_bytes_per_s"]["allocator_free"].as_f64().unwrap() > 1e6,
        "{s:#}"
    );
    let steps = s["verdict"]["next_steps"].to_string();
    assert!(
        steps.contains("MALLOC_ARENA_MAX") && steps.contains("jemalloc"),
        "{steps}"
    );
}

#[test]
fn static_binary_is_reported_clearly() {
    let sb = Sandbox::new();
    let bin = sb.gcc(
        "s.c",
        "#include <unistd.h>\nint main(void){ sleep(1); return 0; }\n",
        "static",
        &["-static"],
    );
    if !bin.exists() {
        return; // no static libc on this machine
    }
    let out = sb.run("rec", &[], &["./static"]);
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    assert!(
        s["notes"].to_string().contains("statically linked"),
        "{s:#}"
    );
}
