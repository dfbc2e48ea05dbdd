#!/usr/bin/env bash
# HTTP-server overhead benchmark: bench/http_server.js on 127.0.0.1 under a
# wrk load loop (1 thread, 16 keep-alive connections), plain node against the
# agent at default sampling and with OFFHEAP_EXACT=1, and heaptrack, in
# interleaved rounds. Each server gets WARM seconds of load first (JIT
# warm-up, not measured), then DUR seconds measured. Prints requests/s and
# per-round ratios to plain (medians). Asserts nothing.
#
#   bench/http.sh                  # ROUNDS=5 DUR=5 WARM=2
#   OFFHEAP_AGENT_SO=path/to/liboffheap_agent.so bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; DUR=${DUR:-5}; WARM=${WARM:-2}
command -v wrk >/dev/null || { echo "bench/http.sh needs wrk (apt-get install wrk)"; exit 1; }
source bench/lib.sh

# serve MODE: starts the server, loads it, prints requests/s of the measured part.
serve() {
  local mode=$1 out=$WORK/out pid port=
  : > "$out"
  case $mode in
    plain) node bench/http_server.js > "$out" & ;;
    default) LD_PRELOAD=$SO OFFHEAP_DIR=$REC node bench/http_server.js > "$out" & ;;
    exact) LD_PRELOAD=$SO OFFHEAP_DIR=$REC OFFHEAP_EXACT=1 node bench/http_server.js > "$out" & ;;
    heaptrack) (cd "$WORK" && exec heaptrack -o "$WORK/ht" node "$OLDPWD/bench/http_server.js") > "$out" 2>/dev/null & ;;
  esac
  pid=$!
  for _ in $(seq 200); do port=$(awk '/^port /{print $2}' "$out"); [[ -n $port ]] && break; sleep 0.05; done
  wrk -t1 -c16 -d"${WARM}s" "http://127.0.0.1:$port/" > /dev/null 2>&1
  wrk -t1 -c16 -d"${DUR}s" "http://127.0.0.1:$port/" 2>&1 | awk '/Requests\/sec/{print $2}'
  kill -TERM $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  rm -rf "$REC"/* "$WORK"/ht*
}

modes="plain default exact"
command -v heaptrack >/dev/null && modes="$modes heaptrack"
echo "== offheap HTTP-server benchmark ($(date -u +%FT%TZ), $(nproc) cores, rounds=$ROUNDS, ${DUR}s measured after ${WARM}s warm-up)"
echo "agent: $SO"
declare -A RPS RATIO
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for m in $modes; do
    v=$(serve $m)
    RPS[$m]+="$v "
    line="$line $m $v"
    [[ $m == plain ]] && base=$v || RATIO[$m]+="$(echo "$v / $base" | bc -l) "
  done
  echo "  $line"
done
echo
echo "requests/s (median of $ROUNDS) and median of the per-round ratios to plain:"
for m in $modes; do
  if [[ $m == plain ]]; then
    printf "  %-10s %9.0f req/s\n" $m "$(echo ${RPS[$m]} | median)"
  else
    printf "  %-10s %9.0f req/s   ratio %.3f\n" $m "$(echo ${RPS[$m]} | median)" "$(echo ${RATIO[$m]} | median)"
  fi
done
