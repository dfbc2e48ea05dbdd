//! Native bytes tied to their JS owners (issue 12.3), end to end: real node
//! processes under `offheap run --snapshots`, a real N-API addon compiled
//! here. The finding must name the JS that holds the native objects.

mod common;
use common::*;

/// zlib streams kept in a Map, created in getCompressor, written to (their
/// zlib state is allocated on the threadpool at the first write). On SIGINT
/// the program writes how many it holds and exits.
const ZLIB_MAP: &str = r#"
const zlib = require('zlib');
const fs = require('fs');
const compressors = new Map();
function getCompressor(key) {
  let c = compressors.get(key);
  if (!c) {
    c = zlib.createDeflateRaw();
    compressors.set(key, c);
  }
  return c;
}
let n = 0;
const t = setInterval(() => {
  for (let k = 0; k < 4; k++) getCompressor('client-' + n++).write('payload ' + n);
}, 100);
process.on('SIGINT', () => {
  clearInterval(t);
  fs.writeFileSync('count.txt', String(compressors.size));
  process.exit(0);
});
"#;

fn owners_of(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["owners"].as_array().cloned().unwrap_or_default()
}

#[test]
fn zlib_streams_in_a_map_are_tied_to_the_map() {
    let sb = Sandbox::new();
    sb.write("app.js", ZLIB_MAP);
    let out = output_within(
        offheap().current_dir(sb.dir.path()).args([
            "run",
            "--quiet",
            "--out",
            "rec",
            "--snapshots",
            "--duration",
            "7s",
            "--min-age",
            "2s",
            "--",
            "node",
            "app.js",
        ]),
        std::time::Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    let truth: u64 = std::fs::read_to_string(sb.path("count.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let owners = owners_of(&s);
    let f = owners
        .iter()
        .find(|o| o["class"] == "zlib")
        .unwrap_or_else(|| {
            panic!(
                "no zlib owner; owners {owners:#?}\nwrappers {:#}\n{}",
                s["heap"]["native_wrappers"],
                describe(&out, &s)
            )
        });
    assert_eq!(f["held_by"], "compressors", "{f:#}");
    assert_eq!(f["holder"], "Map", "{f:#}");
    assert_eq!(f["wrapper"], "DeflateRaw", "{f:#}");
    let count = f["count"].as_u64().unwrap();
    // The end snapshot is taken a little before the program is stopped.
    assert!(
        count <= truth && count * 10 >= truth * 8,
        "count {count}, true count {truth}: {f:#}"
    );
    assert!(f["native_bytes"].as_u64().unwrap() > 1 << 20, "{f:#}");
    assert!(
        f["text"]
            .as_str()
            .unwrap()
            .contains("`compressors` (a Map)"),
        "{f:#}"
    );
    assert!(
        f["path_text"].as_str().unwrap().contains("compressors"),
        "{f:#}"
    );
    // Linked from the suspects it explains.
    let ranks = f["suspects"].as_array().unwrap();
    assert!(!ranks.is_empty(), "{f:#}");
    let first = ranks[0].as_u64().unwrap() as usize;
    assert!(
        s["suspects"][first - 1]["owners"].as_array().is_some(),
        "{:#}",
        s["suspects"][first - 1]
    );
    // The text and the HTML reports show it, and `report` recomputes it.
    let err = String::from_utf8_lossy(&out.stderr);
    let rep = offheap()
        .arg("report")
        .arg(sb.path("rec"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(
        text.contains("`compressors` (a Map) holds"),
        "{text}\n{err}"
    );
    let html = std::fs::read_to_string(sb.path("rec/report.html")).unwrap();
    assert!(html.contains("compressors"), "no owner in report.html");
}

/// An N-API addon that wraps every object it makes with a malloc'd 64 KiB
/// block, freed only by the finalizer.
const WRAP_ADDON: &str = r#"
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK (64 * 1024)

static void finalize_block(napi_env env, void *data, void *hint) { free(data); }

__attribute__((noinline)) void *alloc_block(void) {
  void *p = malloc(BLOCK);
  memset(p, 3, BLOCK);
  return p;
}

static napi_value js_new_block(napi_env env, napi_callback_info info) {
  napi_value obj;
  napi_create_object(env, &obj);
  napi_wrap(env, obj, alloc_block(), finalize_block, NULL, NULL);
  return obj;
}

NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "newBlock", NAPI_AUTO_LENGTH, js_new_block, NULL, &f);
  napi_set_named_property(env, exports, "newBlock", f);
  return exports;
}
"#;

const WRAP_APP: &str = r#"
const addon = require('./wrap.node');
const fs = require('fs');
const blocks = [];
function keepBlock() { blocks.push(addon.newBlock()); }
const t = setInterval(() => { for (let k = 0; k < 8; k++) keepBlock(); }, 50);
process.on('SIGINT', () => {
  clearInterval(t);
  fs.writeFileSync('count.txt', String(blocks.length));
  process.exit(0);
});
"#;

#[test]
fn napi_wrapped_objects_in_an_array_are_tied_to_the_array_and_the_addon() {
    let sb = Sandbox::new();
    sb.gcc(
        "wrap.c",
        WRAP_ADDON,
        "wrap.node",
        &[
            "-shared",
            "-fPIC",
            "-I/usr/include/node",
            "-DNODE_GYP_MODULE_NAME=wrap",
        ],
    );
    sb.write("app.js", WRAP_APP);
    let out = output_within(
        offheap().current_dir(sb.dir.path()).args([
            "run",
            "--quiet",
            "--out",
            "rec",
            "--snapshots",
            "--duration",
            "7s",
            "--min-age",
            "2s",
            "--",
            "node",
            "app.js",
        ]),
        std::time::Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    let truth: u64 = std::fs::read_to_string(sb.path("count.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let owners = owners_of(&s);
    let f = owners
        .iter()
        .find(|o| o["class"] == "napi")
        .unwrap_or_else(|| {
            panic!(
                "no napi owner; owners {owners:#?}\nwrappers {:#}\n{}",
                s["heap"]["native_wrappers"],
                describe(&out, &s)
            )
        });
    assert_eq!(f["held_by"], "blocks[]", "{f:#}");
    assert_eq!(f["holder"], "Array", "{f:#}");
    assert!(
        f["modules"][0].as_str().unwrap().ends_with("wrap.node"),
        "{f:#}"
    );
    assert!(f["text"].as_str().unwrap().contains("wrap.node"), "{f:#}");
    let count = f["count"].as_u64().unwrap();
    assert!(
        count <= truth && count * 10 >= truth * 8,
        "count {count}, true count {truth}: {f:#}"
    );
    // 64 KiB each, sampled: within a factor of two of the truth.
    let bytes = f["native_bytes"].as_u64().unwrap();
    let expected = count * 64 * 1024;
    assert!(
        bytes * 2 >= expected && bytes <= expected * 2,
        "attributed {bytes}, expected about {expected}: {f:#}"
    );
}

/// zlib streams created, written, and destroyed: nothing holds them.
const ZLIB_CHURN: &str = r#"
const zlib = require('zlib');
let n = 0;
const t = setInterval(() => {
  for (let k = 0; k < 4; k++) {
    const c = zlib.createDeflateRaw();
    c.write('payload ' + n++);
    c.end();
    c.on('data', () => {});
    c.on('end', () => c.destroy());
  }
}, 100);
// Something else grows, so that the end snapshot is taken.
const junk = [];
const u = setInterval(() => junk.push(new Array(8192).fill(n + 0.5)), 20);
process.on('SIGINT', () => { clearInterval(t); clearInterval(u); process.exit(0); });
"#;

#[test]
fn zlib_streams_destroyed_have_no_owner() {
    let sb = Sandbox::new();
    sb.write("app.js", ZLIB_CHURN);
    let out = output_within(
        offheap().current_dir(sb.dir.path()).args([
            "run",
            "--quiet",
            "--out",
            "rec",
            "--snapshots",
            "--duration",
            "7s",
            "--min-age",
            "2s",
            "--",
            "node",
            "app.js",
        ]),
        std::time::Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    assert!(
        sb.path("rec/end.heapsnapshot").exists(),
        "no end snapshot: {}",
        describe(&out, &s)
    );
    // The snapshot holds no accumulation of streams (a few may be in flight).
    let held: u64 = s["heap"]["native_wrappers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["class"] == "zlib")
        .map(|g| g["count"].as_u64().unwrap())
        .sum();
    assert!(held < 40, "{:#}", s["heap"]["native_wrappers"]);
    let owners = owners_of(&s);
    assert!(
        !owners.iter().any(|o| o["class"] == "zlib"),
        "{owners:#?}\n{}",
        describe(&out, &s)
    );
}

/// TLS contexts created per call and kept in an array: their OpenSSL state
/// (SSL_CTX) is tied to the array.
const TLS_CONTEXTS: &str = r#"
const tls = require('tls');
const fs = require('fs');
const contexts = [];
function makeContext() { contexts.push(tls.createSecureContext({})); }
const t = setInterval(() => { for (let k = 0; k < 20; k++) makeContext(); }, 50);
process.on('SIGINT', () => {
  clearInterval(t);
  fs.writeFileSync('count.txt', String(contexts.length));
  process.exit(0);
});
"#;

#[test]
fn tls_contexts_in_an_array_are_tied_to_the_array() {
    let sb = Sandbox::new();
    sb.write("app.js", TLS_CONTEXTS);
    let out = output_within(
        offheap().current_dir(sb.dir.path()).args([
            "run",
            "--quiet",
            "--out",
            "rec",
            "--snapshots",
            "--duration",
            "7s",
            "--min-age",
            "2s",
            "--",
            "node",
            "app.js",
        ]),
        std::time::Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    let s = summary(&sb.path("rec"));
    let truth: u64 = std::fs::read_to_string(sb.path("count.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let owners = owners_of(&s);
    let f = owners
        .iter()
        .find(|o| o["class"] == "tls-context")
        .unwrap_or_else(|| {
            panic!(
                "no tls-context owner; owners {owners:#?}\nwrappers {:#}\n{}",
                s["heap"]["native_wrappers"],
                describe(&out, &s)
            )
        });
    assert_eq!(f["held_by"], "contexts[]", "{f:#}");
    assert_eq!(f["wrapper"], "SecureContext", "{f:#}");
    let count = f["count"].as_u64().unwrap();
    assert!(
        count <= truth && count * 10 >= truth * 8,
        "count {count}, true count {truth}: {f:#}"
    );
    assert!(f["native_bytes"].as_u64().unwrap() > 1 << 20, "{f:#}");
}
