#!/usr/bin/env bash
# A/B of mock ingest between two heimdex binaries, interleaved in one window so that the
# machine's drift hits both alike: ROUNDS times (default 6), each binary runs `serve` on a fresh
# data dir, and the after binary's client runs `bench ingest -n N -c C` against it (one client
# for both, so only the service differs). Prints the CPU flags, one line per run, and the
# medians of completed jobs/s.
#   N=10000 C=32 bench/ab_ingest.sh <before-binary> <after-binary> [rounds]
# Port 8000 must be free.
set -euo pipefail
before=$1 after=$2 rounds=${3:-6} n=${N:-10000} c=${C:-32}
# shellcheck source=bench/ab_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/ab_common.sh"
cd "$root"
ab_cpu
run() { # binary label
  local dir pid out
  dir=$(mktemp -d)
  HEIMDEX_DATA_DIR=$dir "$1" serve >"$dir/serve.log" 2>&1 &
  pid=$!
  ab_wait_ready 8000 "$dir/serve.log" || { kill "$pid"; exit 1; }
  out=$("$after" bench ingest -n "$n" -c "$c" --single 0 --no-bound 2>&1 | grep 'completed:')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  echo "$2 $(echo "$out" | grep -o '[0-9]* jobs/s' | cut -d' ' -f1)"
}
results=$(for _ in $(seq 1 "$rounds"); do run "$before" before; run "$after" after; done | ab_show)
for label in before after; do
  runs=$(echo "$results" | awk -v l="$label" '$1 == l {print $2}')
  echo "$label: median $(ab_median <<<"$runs") completed jobs/s over $(wc -l <<<"$runs") runs"
done
