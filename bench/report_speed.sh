#!/usr/bin/env bash
# Records a busy Node server for DURATION_S seconds (default 600) under
# offheap, then times `offheap report` (re-reading, symbolizing, analysing and
# writing every report) on that recording, several times.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=target/release/offheap
out=$(mktemp -d)/rec
DURATION_S=${DURATION_S:-600} $bin run --quiet --out "$out" -- node bench/busy_server.js
echo "recording: $out ($(du -sh "$out" | cut -f1)), $(ls "$out")"
for i in 1 2 3; do
  /usr/bin/time -f "offheap report: %e s wall, %U s user, %M KB max RSS" $bin report "$out" > /dev/null
done
