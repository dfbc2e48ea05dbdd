# Shared by the benchmark drivers (sourced, not run): builds the agent unless
# OFFHEAP_AGENT_SO names one, sets SO, a scratch WORK directory (removed on
# exit) and REC, the recording directory inside it; defines `median`.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-agent}
if [[ -z "${OFFHEAP_AGENT_SO:-}" ]]; then
  cargo build -p offheap-agent --release --quiet
  OFFHEAP_AGENT_SO=$CARGO_TARGET_DIR/release/liboffheap_agent.so
fi
SO=$OFFHEAP_AGENT_SO
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
REC=$WORK/rec
mkdir -p "$REC"

# median: the median of the numbers on stdin (whitespace or newline separated).
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
