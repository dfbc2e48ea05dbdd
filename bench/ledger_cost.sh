#!/bin/sh
# The RSS ledger's cost: the CPU time offheap spends reading and sorting
# /proc/PID/smaps of a process with N mappings, per read and as a share of
# one core at the default 500 ms interval (reads are spaced to keep it
# under 1%). Usage: OFFHEAP=target/release/offheap bench/ledger_cost.sh [N...]
set -eu
OFFHEAP=${OFFHEAP:-target/release/offheap}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cc -O2 -o "$dir/maps" "$(dirname "$0")/ledger_cost.c"
for n in ${@:-150 1000 5000}; do
  "$OFFHEAP" run --quiet --out "$dir/rec-$n" --duration 12s -- "$dir/maps" "$n" 30 >/dev/null 2>&1 || true
  python3 - "$dir/rec-$n" "$n" <<'PY'
import json, sys, statistics
d, n = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(d + '/proc.jsonl')]
reads = [l['maps'] for l in lines if l.get('maps') and l['maps']['vmas'] > 50]
t = [l['t'] for l in lines if l.get('maps')]
span = (t[-1] - t[0]) / 1000 if len(t) > 1 else 1
cost = [r['cost_us'] for r in reads]
share = sum(cost) / 1e6 / span * 100
print(f"mappings {n:>5} (smaps shows {statistics.median([r['vmas'] for r in reads]):.0f}): "
      f"{len(reads)} reads in {span:.1f} s, median {statistics.median(cost)/1000:.2f} ms per read, "
      f"{share:.2f}% of one core")
PY
done
