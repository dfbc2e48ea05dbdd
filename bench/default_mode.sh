#!/usr/bin/env bash
# Throughput cost of offheap's default mode (`offheap run --quiet --out DIR
# -- node W.js`: native agent preloaded with its origin hooks on libuv's
# threadpool, JS agent required, V8's sampling heap profiler on, node's perf
# map flags) against plain `node W.js`, on four workloads:
#
#   churn         bench/dm_churn.js         small JS objects, arrays, strings, small backing stores
#   buffers_zlib  bench/dm_buffers_zlib.js  Buffer.alloc 64 KiB-1 MiB, deflateSync and async deflate
#   http          bench/http_server.js      node http server under wrk (1 thread, 16 keep-alive
#                                           connections) on 127.0.0.1; WARM s, then DUR s measured
#   threadpool    bench/dm_threadpool.js    64 concurrent pbkdf2 / randomBytes / deflate / readFile
#
# Modes (MODES, in this order by default):
#   plain       node W.js
#   default     offheap run --quiet --out DIR -- node W.js
#   no-origins  the same with OFFHEAP_ORIGINS=0 (the agent does not patch uv_queue_work/uv__work_submit)
#   no-heap     the same with --heap-sample-interval 0 (no V8 sampling heap profiler)
# and, when listed in MODES, two more diagnostics:
#   flags       plain node with offheap's NODE_OPTIONS flags only (perf map of JS functions)
#   no-native   offheap run --no-native (JS agent and telemetry, no LD_PRELOAD)
#
# Every round runs every mode once per workload, in an order rotated from
# round to round, and ratios are taken within the round: the median and the
# quartiles of the per-round ratios are the figures (this 2-core VM moves by
# +-10-30% between runs). The workloads do a fixed amount of work and time
# themselves (from their first line to their last result, so start-up,
# exit and offheap's report are not in ops/s; the wall time of the whole
# command is printed beside it). Asserts nothing.
#
#   bench/default_mode.sh                    # ROUNDS=7, about 7 minutes
#   ROUNDS=15 bench/default_mode.sh          # the figures in docs/BENCHMARKS.md
#   WORKLOADS="threadpool" MODES="plain default no-origins" ROUNDS=21 bench/default_mode.sh
#   CALLGRIND=1 bench/default_mode.sh        # also instruction counts of the origin hooks (+2 min)
#   CALLGRIND=1 CALLGRIND_MIX="all pbkdf2 deflate readFile randomBytes" ROUNDS=0 bench/default_mode.sh
#                                            # the same for each kind of work alone (+8 min)
#   CALLGRIND_HEAP=1 ROUNDS=0 bench/default_mode.sh # instruction counts of the heap profiler (+4 min)
#   OFFHEAP=path/to/offheap bench/default_mode.sh   # skip the cargo build
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-7}
WORKLOADS=${WORKLOADS:-churn buffers_zlib http threadpool}
MODES=${MODES:-plain default no-origins no-heap}
CHURN_N=${CHURN_N:-500000}
BZ_N=${BZ_N:-8000}
TP_N=${TP_N:-150000}
DUR=${DUR:-4}
WARM=${WARM:-1}
CALLGRIND=${CALLGRIND:-0}
if [[ -z "${OFFHEAP:-}" ]]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
  cargo build -p offheap --release --quiet
  OFFHEAP=$CARGO_TARGET_DIR/release/offheap
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
REC=$WORK/rec
NODE_FLAGS="--perf-basic-prof-only-functions --interpreted-frames-native-stack"

if [[ " $WORKLOADS " == *" http "* ]] && ! command -v wrk >/dev/null; then
  echo "note: wrk not found (apt-get install wrk): the http workload is skipped"
  WORKLOADS=${WORKLOADS//http/}
fi

# median / quart: of the numbers on stdin (whitespace or newline separated).
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
quart() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.3f-%.3f", a[int((NR+3)/4)], a[int((3*NR+1)/4)]}'; }
ms() { date +%s%3N; }
field() { [[ $1 =~ \"$2\":([0-9.e+]+) ]] && echo "${BASH_REMATCH[1]}"; } # JSON-LINE NAME -> number

# launch MODE CMD...: execs CMD (a node command line) in MODE, so call it in
# a subshell (a pipeline, or `&`, whose $! is then the process that was
# exec'd: node, or offheap, which forwards SIGTERM); the recording goes to $REC.
launch() {
  local mode=$1; shift
  rm -rf "$REC"
  case $mode in
    plain) exec "$@" ;;
    default) exec "$OFFHEAP" run --quiet --out "$REC" -- "$@" ;;
    no-origins) exec env OFFHEAP_ORIGINS=0 "$OFFHEAP" run --quiet --out "$REC" -- "$@" ;;
    no-heap) exec "$OFFHEAP" run --heap-sample-interval 0 --quiet --out "$REC" -- "$@" ;;
    no-native) exec "$OFFHEAP" run --no-native --quiet --out "$REC" -- "$@" ;;
    flags) exec env NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }$NODE_FLAGS" "$@" ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
}
# A `flags` run leaves node's perf map behind (offheap takes its own away).
drop_map() { [[ $1 == flags ]] && rm -f "/tmp/perf-$2.map"; return 0; }

# batch WORKLOAD MODE: prints "ops_per_s ops_per_cpu_s wall_ms" of one
# fixed-work run (CPU: all threads of the node process, the agent's included).
batch() {
  local w=$1 mode=$2 t0 line
  local -a cmd
  case $w in
    churn) cmd=(node bench/dm_churn.js "$CHURN_N") ;;
    buffers_zlib) cmd=(node bench/dm_buffers_zlib.js "$BZ_N") ;;
    threadpool) cmd=(node bench/dm_threadpool.js "$TP_N") ;;
  esac
  t0=$(ms)
  line=$(launch "$mode" "${cmd[@]}" | grep ops_per_s)
  echo "$(field "$line" ops_per_s) $(field "$line" ops_per_cpu_s) $(( $(ms) - t0 ))"
  drop_map "$mode" "$(field "$line" pid)"
  rm -rf "$REC"
}

# cpu_ticks PID: user+system clock ticks of the process so far (all threads).
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

# serve MODE: starts the server, loads it, prints "req_per_s req_per_cpu_s 0"
# (CPU: the node process during the measured part).
serve() {
  local mode=$1 out=$WORK/out pid npid port='' rps c0 c1
  : > "$out"
  launch "$mode" node bench/http_server.js > "$out" &
  pid=$!
  for _ in $(seq 400); do port=$(awk '/^port /{print $2}' "$out"); [[ -n $port ]] && break; sleep 0.025; done
  npid=$pid
  [[ $mode == plain || $mode == flags ]] || npid=$(awk '{print $1}' "/proc/$pid/task/$pid/children")
  wrk -t1 -c16 -d"${WARM}s" "http://127.0.0.1:$port/" > /dev/null 2>&1
  c0=$(cpu_ticks "$npid")
  rps=$(wrk -t1 -c16 -d"${DUR}s" "http://127.0.0.1:$port/" 2>&1 | awk '/Requests\/sec/{print $2}')
  c1=$(cpu_ticks "$npid")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  drop_map "$mode" "$npid"
  rm -rf "$REC"
  echo "$rps $(echo "$rps * $DUR * $CLK_TCK / ($c1 - $c0 + 0.5)" | bc -l) 0"
}

read -ra MODE_LIST <<< "$MODES"
NM=${#MODE_LIST[@]}
echo "== offheap default-mode benchmark ($(date -u +%FT%TZ), $(nproc) cores, node $(node --version), rounds=$ROUNDS)"
echo "offheap: $OFFHEAP ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "workloads: $WORKLOADS; modes: $MODES"
echo "load before: $(uptime)"
CLK_TCK=$(getconf CLK_TCK)
declare -A OPS WALL RATIO CRATIO
for r in $(seq "$ROUNDS"); do
  for w in $WORKLOADS; do
    declare -A V=() C=()
    line="round $r $w (load $(cut -d' ' -f1 /proc/loadavg)):"
    for k in $(seq 0 $((NM - 1))); do
      m=${MODE_LIST[$(( (k + r) % NM ))]}
      if [[ $w == http ]]; then read -r v c t <<< "$(serve "$m")"; else read -r v c t <<< "$(batch "$w" "$m")"; fi
      V[$m]=$v; C[$m]=$c
      OPS[$w.$m]+="$v "; WALL[$w.$m]+="$t "
      line="$line $m $(printf %.0f "$v")"
    done
    # Ratios within the round: each mode to plain, and the two cost splits.
    for m in "${MODE_LIST[@]}"; do
      [[ $m == plain || -z "${V[plain]:-}" ]] && continue
      RATIO[$w.$m]+="$(echo "${V[$m]} / ${V[plain]}" | bc -l) "
      CRATIO[$w.$m]+="$(echo "${C[$m]} / ${C[plain]}" | bc -l) "
    done
    for split in origins:no-origins heap:no-heap; do
      s=${split%%:*} b=${split#*:}
      [[ -n "${V[default]:-}" && -n "${V[$b]:-}" ]] || continue
      RATIO[$w.$s]+="$(echo "${V[default]} / ${V[$b]}" | bc -l) "
      CRATIO[$w.$s]+="$(echo "${C[default]} / ${C[$b]}" | bc -l) "
    done
    echo "  $line"
  done
done

echo "load after: $(uptime)"
(( ROUNDS > 0 )) || WORKLOADS=""
[[ -z $WORKLOADS ]] || echo
[[ -z $WORKLOADS ]] || echo "ops/s: median of $ROUNDS runs; ratio: median (quartiles) of the per-round ratios to plain,"
[[ -z $WORKLOADS ]] || echo "of ops per wall second and of ops per CPU second of the node process (all its threads);"
[[ -z $WORKLOADS ]] || echo "cmd wall: median wall time of the whole command (start-up, exit, offheap's report included)"
for w in $WORKLOADS; do
  echo "[$w]"
  for m in "${MODE_LIST[@]}"; do
    o=$(echo "${OPS[$w.$m]}" | median)
    wall=$(echo "${WALL[$w.$m]}" | median)
    if [[ $w == http ]]; then wall=-; else wall="$(printf %.0f "$wall") ms"; fi
    if [[ $m == plain ]]; then
      printf "  %-10s %11.1f ops/s   wall ratio 1.000                     cpu ratio 1.000   cmd wall %s\n" "$m" "$o" "$wall"
    else
      printf "  %-10s %11.1f ops/s   wall ratio %.3f (quartiles %s)   cpu ratio %.3f   cmd wall %s\n" "$m" "$o" \
        "$(echo "${RATIO[$w.$m]}" | median)" "$(echo "${RATIO[$w.$m]}" | quart)" "$(echo "${CRATIO[$w.$m]}" | median)" "$wall"
    fi
  done
  for split in "origins:origin hooks: default / no-origins" "heap:heap sampler: default / no-heap   "; do
    s=${split%%:*}
    [[ -n "${RATIO[$w.$s]:-}" ]] || continue
    printf "  %s  wall %.3f (quartiles %s)   cpu %.3f (quartiles %s)\n" "${split#*:}" \
      "$(echo "${RATIO[$w.$s]}" | median)" "$(echo "${RATIO[$w.$s]}" | quart)" \
      "$(echo "${CRATIO[$w.$s]}" | median)" "$(echo "${CRATIO[$w.$s]}" | quart)"
  done
done

if [[ $CALLGRIND == 1 ]] && command -v valgrind >/dev/null; then
  # Instructions per threadpool operation (the difference of a 12000- and a
  # 4000-operation run cancels start-up), all threads of node, with the
  # native agent alone (LD_PRELOAD and node's perf-map flags, as `offheap
  # run` sets them; the agent is taken from a recording; no JS agent, whose
  # timers would fire 50 times as often per operation under valgrind),
  # origin hooks on and off, and plain node; for the mix of the benchmark
  # and (CALLGRIND_MIX) for each kind of work alone.
  "$OFFHEAP" run --quiet --out "$WORK/x" -- true > /dev/null
  cp "$WORK/x/liboffheap_agent.so" "$WORK/liboffheap_agent.so"
  mkdir -p "$REC"
  ir() { # MODE "env-assignments" N -> instructions of node (all threads)
    local mode=$1 out pid got want
    local -a envs flags=()
    read -ra envs <<< "$2"
    [[ $mode == plain ]] || read -ra flags <<< "$NODE_FLAGS"
    out=$(valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null \
      env "${envs[@]}" node "${flags[@]}" bench/dm_threadpool.js "$3" 2>&1)
    pid=$(field "$(grep ops_per_s <<< "$out")" pid)
    rm -f "/tmp/perf-$pid.map"
    # The agent's configuration note says whether the hooks went in (3: both).
    got=$(cat "$REC"/native-*.bin 2>/dev/null | grep -ao 'origins=[0-9]*' | head -1)
    case $mode in plain) want="" ;; no-origins) want=origins=0 ;; default) want=origins=3 ;; esac
    [[ $got == "$want" ]] || echo "warning: $mode run: agent note '${got:-none}', expected '${want:-none}'" >&2
    rm -f "$REC"/*
    grep Collected <<< "$out" | tail -1 | awk '{print $4}' | tr -d ,
  }
  # OFFHEAP_FOLLOW_EXEC=1: with --trace-children, valgrind runs each exec'd
  # program through its launcher, a shell script (/usr/bin/valgrind); without
  # it the agent, preloaded into that shell, strips itself and its settings
  # from the environment, and node would run without it.
  agent="LD_PRELOAD=$WORK/liboffheap_agent.so OFFHEAP_DIR=$REC OFFHEAP_FOLLOW_EXEC=1"
  echo
  echo "[callgrind] node bench/dm_threadpool.js, instructions per operation (N=12000 minus N=4000, all threads):"
  for mix in ${CALLGRIND_MIX:-all}; do
    tp="OFFHEAP_BENCH=1"; [[ $mix == all ]] || tp="TP_MIX=$mix"
    declare -A I=()
    for m in plain no-origins default; do
      case $m in
        plain) e="$tp" ;;
        no-origins) e="$tp $agent OFFHEAP_ORIGINS=0" ;;
        default) e="$tp $agent" ;;
      esac
      a=$(ir "$m" "$e" 4000); b=$(ir "$m" "$e" 12000)
      I[$m]=$(echo "($b - $a) / 8000" | bc -l)
    done
    printf "  %-11s plain %7.0f, native agent without origin hooks %7.0f, with them %7.0f: the hooks add %5.0f per operation (%.1f%%)\n" \
      "$mix" "${I[plain]}" "${I[no-origins]}" "${I[default]}" "$(echo "${I[default]} - ${I[no-origins]}" | bc -l)" \
      "$(echo "100 * (${I[default]} - ${I[no-origins]}) / ${I[no-origins]}" | bc -l)"
  done
fi

if [[ ${CALLGRIND_HEAP:-0} == 1 ]] && command -v valgrind >/dev/null; then
  # The sampling heap profiler's instructions per churn iteration (N=90000
  # minus N=30000), node alone (all its threads; offheap's CLI excluded):
  # `offheap run` with and without it. The JS agent's work is driven by
  # time, which runs about 50 times slower under valgrind, so its interval
  # is stretched 50 times too (--interval 25s: a tick, and with it a
  # `getSamplingProfile` read, about every 0.5 s of native run time; natively
  # the profile is read every 2 s, so this overstates that part).
  # --follow-exec keeps the native agent across valgrind's launcher script
  # (see OFFHEAP_FOLLOW_EXEC above).
  hir() { # MODE N -> instructions of node
    local -a extra=()
    [[ $1 == no-heap ]] && extra=(--heap-sample-interval 0)
    local out pid
    rm -rf "$REC"
    out=$(valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null \
      "$OFFHEAP" run "${extra[@]}" --follow-exec --interval 25s --quiet --out "$REC" -- node bench/dm_churn.js "$2" 2>&1)
    pid=$(field "$(grep ops_per_s <<< "$out")" pid)
    rm -rf "$REC"
    grep "^==$pid== Collected" <<< "$out" | awk '{print $4}' | tr -d ,
  }
  echo
  echo "[callgrind] node bench/dm_churn.js under offheap run --interval 25s, instructions per iteration (N=90000 minus N=30000):"
  declare -A H=()
  for m in no-heap default; do
    a=$(hir "$m" 30000); b=$(hir "$m" 90000)
    H[$m]=$(echo "($b - $a) / 60000" | bc -l)
  done
  printf "  without the heap profiler %7.0f, with it %7.0f: it adds %5.0f per iteration (%.2f%%)\n" \
    "${H[no-heap]}" "${H[default]}" "$(echo "${H[default]} - ${H[no-heap]}" | bc -l)" \
    "$(echo "100 * (${H[default]} - ${H[no-heap]}) / ${H[no-heap]}" | bc -l)"
fi
