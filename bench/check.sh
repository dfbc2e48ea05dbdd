#!/usr/bin/env bash
# `offheap check` against plain node and valgrind memcheck on a small N-API
# addon's test suite (`node --test`: the runner and three test files, each
# its own node process). Prints figures; asserts nothing.
#
#   bench/check.sh                 # plain and check ROUNDS times, valgrind once
#   ROUNDS=5 VG_ROUNDS=2 bench/check.sh
#   VALGRIND=0 bench/check.sh      # skip valgrind
#   SCALE=10 bench/check.sh        # ten times the work per test (the fixed costs weigh less)
#
# OFFHEAP=/path/to/offheap skips the cargo build (release).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
VG_ROUNDS=${VG_ROUNDS:-1}
VALGRIND=${VALGRIND:-1}
SCALE=${SCALE:-1}
if [ -z "${OFFHEAP:-}" ]; then
  cargo build --release --locked -q -p offheap
  OFFHEAP=$PWD/target/release/offheap
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/pkg
mkdir -p "$PKG/test"

# The addon: a checksum over a Buffer, a string builder that mallocs and
# frees, and a small cache it frees on request; nothing leaks.
cat > "$PKG/addon.c" <<'EOF'
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
static char *cache[256];
static napi_value checksum(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1]; void *data; size_t len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_buffer_info(env, argv[0], &data, &len);
  unsigned char *copy = malloc(len ? len : 1);
  memcpy(copy, data, len);
  unsigned int h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ copy[i]) * 16777619u;
  free(copy);
  napi_value r; napi_create_uint32(env, h, &r); return r;
}
static napi_value repeat(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2]; char s[64]; size_t n; unsigned int times;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_string_utf8(env, argv[0], s, sizeof s, &n);
  napi_get_value_uint32(env, argv[1], &times);
  char *out = malloc(n * times + 1); size_t k = 0;
  for (unsigned int i = 0; i < times; i++) { memcpy(out + k, s, n); k += n; }
  out[k] = 0;
  napi_value r; napi_create_string_utf8(env, out, k, &r); free(out); return r;
}
static napi_value remember(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1]; unsigned int i;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_uint32(env, argv[0], &i);
  i %= 256; free(cache[i]); cache[i] = malloc(1024); memset(cache[i], 1, 1024);
  return NULL;
}
static napi_value forget(napi_env env, napi_callback_info info) {
  for (int i = 0; i < 256; i++) { free(cache[i]); cache[i] = NULL; }
  return NULL;
}
NAPI_MODULE_INIT() {
  napi_property_descriptor d[] = {
    {"checksum", 0, checksum, 0, 0, 0, napi_default, 0},
    {"repeat", 0, repeat, 0, 0, 0, napi_default, 0},
    {"remember", 0, remember, 0, 0, 0, napi_default, 0},
    {"forget", 0, forget, 0, 0, 0, napi_default, 0},
  };
  napi_define_properties(env, exports, 4, d);
  return exports;
}
EOF
gcc -O2 -g -shared -fPIC -I/usr/include/node -DNODE_GYP_MODULE_NAME=addon \
  -o "$PKG/addon.node" "$PKG/addon.c"
cat > "$PKG/test/checksum.test.js" <<'EOF'
const test = require('node:test'); const assert = require('node:assert');
const a = require('../addon.node'); const SCALE = +process.env.SCALE || 1;
test('checksum is stable', () => {
  const b = Buffer.alloc(65536, 7);
  for (let i = 0; i < 2000 * SCALE; i++) assert.strictEqual(a.checksum(b), a.checksum(b));
});
test('checksum of empty', () => assert.strictEqual(typeof a.checksum(Buffer.alloc(0)), 'number'));
EOF
cat > "$PKG/test/repeat.test.js" <<'EOF'
const test = require('node:test'); const assert = require('node:assert');
const a = require('../addon.node'); const SCALE = +process.env.SCALE || 1;
test('repeat', () => { for (let i = 0; i < 20000 * SCALE; i++) assert.strictEqual(a.repeat('ab', 50).length, 100); });
test('json round trip', () => {
  for (let i = 0; i < 2000 * SCALE; i++) assert.deepStrictEqual(JSON.parse(JSON.stringify({ i, s: a.repeat('x', 10) })).i, i);
});
EOF
cat > "$PKG/test/cache.test.js" <<'EOF'
const test = require('node:test'); const assert = require('node:assert');
const a = require('../addon.node'); const SCALE = +process.env.SCALE || 1;
test('cache', async () => {
  for (let i = 0; i < 20000 * SCALE; i++) a.remember(i);
  await new Promise((r) => setTimeout(r, 20));
  a.forget();
  assert.ok(true);
});
EOF

t() { # command... -> prints wall seconds
  local s e
  s=$(date +%s.%N)
  "$@" > "$WORK/out.log" 2>&1 || true
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cd "$PKG"
export SCALE
echo "== offheap check vs valgrind on an addon's node --test suite (SCALE=$SCALE) ($(date -u +%FT%TZ), $(nproc) cores, node $(node -v))"
P=""; C=""
for r in $(seq "$ROUNDS"); do
  P+="$(t node --test test/) "
  rm -rf "$WORK/rec"
  C+="$(t "$OFFHEAP" check --quiet --out "$WORK/rec" -- node --test test/) "
done
tail -3 "$WORK/out.log" | sed 's/^/  check: /'
echo "  check verdict: $(jq -c '.check.gates | map(.name + "=" + (if .passed then "pass" else "FAIL" end))' "$WORK/rec/summary.json")"
jq -r '.check.leaks_at_exit.processes[] | "  checked pid \(.pid): \(.live.blocks) blocks live at exit, \(.root_bytes/1048576|floor) MiB of roots, \(.elapsed_ms) ms"' "$WORK/rec/summary.json"
pm=$(echo "$P" | median); cm=$(echo "$C" | median)
echo "plain node --test:   median $pm s  (runs: $P)"
echo "offheap check:       median $cm s  (runs: $C)  ratio $(echo "scale=2; $cm / $pm" | bc)"
rm -rf "$WORK/rec"
echo "  of which offheap's analysis and reports (offheap report): $(t "$OFFHEAP" check --quiet --out "$WORK/rec" -- node --test test/ > /dev/null; t "$OFFHEAP" report "$WORK/rec") s"
if [ "$VALGRIND" = 1 ] && command -v valgrind > /dev/null; then
  V=""
  for r in $(seq "$VG_ROUNDS"); do
    V+="$(t valgrind --leak-check=full --trace-children=yes --error-exitcode=23 node --test test/) "
  done
  vm=$(echo "$V" | median)
  echo "valgrind memcheck:   median $vm s  (runs: $V)  ratio $(echo "scale=1; $vm / $pm" | bc)"
  echo "  valgrind: $(grep -c 'definitely lost: [1-9]' "$WORK/out.log" || true) processes with definitely lost bytes, $(grep -c 'LEAK SUMMARY' "$WORK/out.log" || true) leak summaries"
  grep -E 'definitely lost:|indirectly lost:|possibly lost:' "$WORK/out.log" | sort | uniq -c | sed 's/^/  valgrind: /' | head -8
fi
