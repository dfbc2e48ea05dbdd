//! The native side end to end through `offheap run` (issues 3 and 4): a real
//! N-API addon that leaks beside heavy legitimate churn, and a fragmentation
//! scenario that must not be called a leak.

mod common;
use common::*;

pub const ADDON: &str = r#"
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;

/* Leaks n bytes on every call. */
__attribute__((noinline)) void *leak_bytes(size_t n) {
  void *p = malloc(n);
  memset(p, 7, n);
  sink = p;
  return p;
}

/* Legitimate churn: allocates n bytes and frees them. */
__attribute__((noinline)) void churn_bytes(size_t n) {
  void *p = malloc(n);
  memset(p, 1, n);
  sink = p;
  free(p);
}

static size_t arg_size(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double n = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_double(env, argv[0], &n);
  return (size_t)n;
}

static napi_value js_leak(napi_env env, napi_callback_info info) {
  leak_bytes(arg_size(env, info));
  return NULL;
}

static napi_value js_churn(napi_env env, napi_callback_info info) {
  churn_bytes(arg_size(env, info));
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "leakBytes", NAPI_AUTO_LENGTH, js_leak, NULL, &f);
  napi_set_named_property(env, exports, "leakBytes", f);
  napi_create_function(env, "churnBytes", NAPI_AUTO_LENGTH, js_churn, NULL, &f);
  napi_set_named_property(env, exports, "churnBytes", f);
  return exports;
}
"#;

pub const APP: &str = r#"
const addon = require('./leak.node');
function leakNative() { addon.leakBytes(64 * 1024); }          // up to 3.2 MB/s, never freed
function churnNative() { for (let i = 0; i < 40; i++) addon.churnBytes(256 * 1024); } // 200 MB/s, freed
function churnJs() { const b = []; for (let i = 0; i < 20; i++) b.push(Buffer.alloc(32 * 1024)); return b.length; }
let ticks = 0;
const t = setInterval(() => {
  leakNative();
  churnNative();
  churnJs();
  if (++ticks >= 400) clearInterval(t);
}, 20);
"#;

pub fn build_addon(sb: &Sandbox) {
    sb.gcc(
        "leak.c",
        ADDON,
        "leak.node",
        &[
            "-shared",
            "-fPIC",
            "-I/usr/include/node",
            "-DNODE_GYP_MODULE_NAME=leak",
        ],
    );
    sb.write("app.js", APP);
}

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
