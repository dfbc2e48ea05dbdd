#!/usr/bin/env bash
# Native-agent benchmarks. Prints figures; asserts nothing.
#
#   bench/run.sh            # everything (about 2-4 minutes on 2 cores)
#   ROUNDS=5 bench/run.sh   # more rounds (medians are reported)
#   CALLGRIND_NODE=0 bench/run.sh   # skip the node callgrind runs (about 3 minutes)
#
# OFFHEAP_AGENT_SO=/path/to/liboffheap_agent.so skips the cargo build.
# Every ratio compares runs made in this same invocation, interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
source bench/lib.sh
agent_env() { # mode -> env assignments
  case $1 in
    plain) echo "" ;;
    off) echo "LD_PRELOAD=$SO" ;;
    default) echo "LD_PRELOAD=$SO OFFHEAP_DIR=$REC" ;;
    exact) echo "LD_PRELOAD=$SO OFFHEAP_DIR=$REC OFFHEAP_EXACT=1" ;;
    exact-table) echo "LD_PRELOAD=$SO OFFHEAP_DIR=$REC OFFHEAP_EXACT=1 OFFHEAP_HEADERS=0" ;;
  esac
}

echo "== offheap native agent benchmarks ($(date -u +%FT%TZ), $(nproc) cores, rounds=$ROUNDS)"
echo "agent: $SO"

# ---------------------------------------------------------------- 1. hot path
gcc -O2 -fno-builtin -o "$WORK/malloc_loop" bench/malloc_loop.c
N=20000000
declare -A T
for r in $(seq "$ROUNDS"); do
  for m in plain off default; do
    v=$(env $(agent_env $m) "$WORK/malloc_loop" $N | awk '{print $2}')
    T[$m]+="$v "
  done
  rm -f "$REC"/*
done
NE=2000000
for r in $(seq "$ROUNDS"); do
  T[plain_e]+="$("$WORK/malloc_loop" $NE | awk '{print $2}') "
  T[exact]+="$(env $(agent_env exact) "$WORK/malloc_loop" $NE | awk '{print $2}') "
  rm -f "$REC"/*
done
declare -A M
for k in plain off default plain_e exact; do M[$k]=$(echo ${T[$k]} | tr ' ' '\n' | median); done
echo
echo "[1] C malloc+free loop (16..271 bytes), ns per pair, median of $ROUNDS"
printf "  plain                     %8.2f ns\n" "${M[plain]}"
printf "  agent, no OFFHEAP_DIR     %8.2f ns  (+%.2f)\n" "${M[off]}" "$(echo "${M[off]} - ${M[plain]}" | bc -l)"
printf "  agent, default sampling   %8.2f ns  (+%.2f)\n" "${M[default]}" "$(echo "${M[default]} - ${M[plain]}" | bc -l)"
printf "  agent, OFFHEAP_EXACT=1    %8.2f ns  (%.1fx plain %.2f)\n" "${M[exact]}" "$(echo "${M[exact]} / ${M[plain_e]}" | bc -l)" "${M[plain_e]}"

if command -v valgrind >/dev/null; then
  # Instruction counts: difference of two loop lengths cancels start-up.
  # OFFHEAP_FOLLOW_EXEC=1 keeps the agent in LD_PRELOAD across `env`'s exec.
  ir() { valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null \
           env $1 OFFHEAP_FOLLOW_EXEC=1 "$WORK/malloc_loop" "$2" 2>&1 | grep Collected | tail -1 | awk '{print $4}' | tr -d ,; }
  declare -A I
  for m in plain default exact; do
    a=$(ir "$(agent_env $m)" 100000); b=$(ir "$(agent_env $m)" 300000)
    I[$m]=$(echo "($b - $a) / 200000" | bc -l)
    rm -f "$REC"/*
  done
  echo "  callgrind instructions per pair: plain $(printf %.1f "${I[plain]}"), default $(printf %.1f "${I[default]}") (+$(printf %.1f "$(echo "${I[default]} - ${I[plain]}" | bc -l)")), exact $(printf %.0f "${I[exact]}")"
fi

# ------------------------------------------------------------- 2. node churn
# Every round runs plain, default, exact (and heaptrack) back to back, and the
# ratios are taken within the round: this workload's throughput swings by
# +-20% from run to run on a shared 2-core VM (glibc arena-lock contention
# between node's main thread and V8's sweeper threads, neighbours' memory
# traffic), so a ratio of adjacent runs, and the median over many rounds, is
# the figure to read. NODE_ROUNDS (default 15, or ROUNDS if larger) rounds of
# NODE_N (default 200000) iterations.
NODE_N=${NODE_N:-200000}
NODE_ROUNDS=${NODE_ROUNDS:-$(( ROUNDS > 15 ? ROUNDS : 15 ))}
declare -A O P R WR CR
field() { echo "$1" | sed "s/.*\"$2\":\([0-9.e+]*\).*/\1/"; }
# exact-table: exact mode with the address table instead of allocation
# headers (OFFHEAP_HEADERS=0), for comparison.
node_modes="plain default exact exact-table"
command -v heaptrack >/dev/null && node_modes="$node_modes heaptrack"
for r in $(seq "$NODE_ROUNDS"); do
  for m in $node_modes; do
    if [[ $m == heaptrack ]]; then
      line=$( (cd "$WORK" && heaptrack -o "$WORK/ht" node "$OLDPWD/bench/node_churn.js" $NODE_N 2>/dev/null) | grep ops_per_s)
      rm -f "$WORK"/ht*
    else
      line=$(env $(agent_env $m) node bench/node_churn.js $NODE_N)
      R[$m]+="$(field "$line" maxrss_kb) "
      rm -f "$REC"/*
    fi
    o=$(field "$line" ops_per_s); p=$(field "$line" ops_per_cpu_s)
    O[$m]+="$o "; P[$m]+="$p "
    if [[ $m == plain ]]; then po=$o; pp=$p; else
      WR[$m]+="$(echo "$o / $po" | bc -l) "; CR[$m]+="$(echo "$p / $pp" | bc -l) "
    fi
  done
done
for k in "${!O[@]}"; do M[o_$k]=$(echo ${O[$k]} | tr ' ' '\n' | median); done
for k in "${!P[@]}"; do M[p_$k]=$(echo ${P[$k]} | tr ' ' '\n' | median); done
for k in "${!R[@]}"; do M[r_$k]=$(echo ${R[$k]} | tr ' ' '\n' | median); done
for k in "${!WR[@]}"; do M[wr_$k]=$(echo ${WR[$k]} | tr ' ' '\n' | median); M[cr_$k]=$(echo ${CR[$k]} | tr ' ' '\n' | median); done
quart() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.3f-%.3f", a[int((NR+3)/4)], a[int((3*NR+1)/4)]}'; }
echo
echo "[2] node bench/node_churn.js $NODE_N (Buffers > 4 KiB, JSON, zlib), $NODE_ROUNDS rounds"
echo "    throughput per wall second and per CPU second (all threads, incl. the agent's writer):"
echo "    medians of the runs, and the median (and quartiles) of the per-round ratios to plain"
printf "  %-11s wall %9.0f ops/s   cpu %9.0f ops/s\n" plain "${M[o_plain]}" "${M[p_plain]}"
for k in default exact exact-table heaptrack; do
  [[ -n "${M[o_$k]:-}" ]] || continue
  printf "  %-11s wall %9.0f ops/s   cpu %9.0f ops/s   wall ratio %.3f (quartiles %s)   cpu ratio %.3f\n" "$k" \
    "${M[o_$k]}" "${M[p_$k]}" "${M[wr_$k]}" "$(echo ${WR[$k]} | quart)" "${M[cr_$k]}"
done
if [[ "${CALLGRIND_NODE:-1}" == 1 ]] && command -v valgrind >/dev/null; then
  # Instruction-count ratio (insensitive to other load on the machine).
  nir() { valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null \
            env $1 OFFHEAP_FOLLOW_EXEC=1 node bench/node_churn.js 40000 2>&1 | grep Collected | tail -1 | awk '{print $4}' | tr -d ,; }
  a=$(nir ""); b=$(nir "$(agent_env default)"); rm -f "$REC"/*
  printf "  callgrind (N=40000, incl. start-up): plain %d, default %d instructions: ratio plain/default %.3f\n" "$a" "$b" "$(echo "$a / $b" | bc -l)"
  # Exact mode, loop only: the difference of a 30000- and a 10000-iteration
  # run cancels start-up (which, with NODE_EXTRA_CA_CERTS set, is itself
  # hundreds of thousands of mallocs).
  nirn() { valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null \
             env $1 OFFHEAP_FOLLOW_EXEC=1 node bench/node_churn.js "$2" 2>&1 | grep Collected | tail -1 | awk '{print $4}' | tr -d ,; }
  declare -A NI
  for m in plain exact; do
    a=$(nirn "$(agent_env $m)" 10000); rm -f "$REC"/*
    b=$(nirn "$(agent_env $m)" 30000); rm -f "$REC"/*
    NI[$m]=$(echo "($b - $a) / 20000" | bc -l)
  done
  printf "  callgrind, exact mode, per loop iteration (N=30000 minus N=10000): plain %.0f, exact %.0f instructions: ratio plain/exact %.3f\n" \
    "${NI[plain]}" "${NI[exact]}" "$(echo "${NI[plain]} / ${NI[exact]}" | bc -l)"
fi

# ------------------------------------------------------------ 3. agent memory
gcc -O2 -fno-builtin -o "$WORK/rss_hold" bench/rss_hold.c
declare -A C
for r in $(seq "$ROUNDS"); do
  for m in plain default exact; do
    C[$m]+="$(env $(agent_env $m) "$WORK/rss_hold" | awk '{print $2}') "
    rm -f "$REC"/*
  done
done
for k in plain default exact; do M[c_$k]=$(echo ${C[$k]} | tr ' ' '\n' | median); done
echo
echo "[3] agent memory: peak RSS (kB), median of $ROUNDS; budget = 5% of target RSS + 16 MiB"
for pair in "node plain ${M[r_plain]} default ${M[r_default]} exact ${M[r_exact]}" \
            "C-200MB plain ${M[c_plain]} default ${M[c_default]} exact ${M[c_exact]}"; do
  set -- $pair
  name=$1 base=$3 d=$5 e=$7
  budget=$(echo "$base * 0.05 + 16384" | bc -l)
  printf "  %-8s plain %8d  default %8d (+%d kB)  exact %8d (+%d kB)  budget +%.0f kB\n" \
    "$name" "$base" "$d" "$((d - base))" "$e" "$((e - base))" "$budget"
done
