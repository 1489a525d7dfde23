#!/usr/bin/env bash
# A/B of text ingest and search between two heimdex binaries, interleaved in one window so
# that the machine's drift hits both alike: ROUNDS times (default 3), each binary runs `serve`
# on a fresh data dir, and the after binary's client ingests N synthetic texts into a new org
# (`bench ingest-text`), then times Q searches of each kind over them (`bench search`). One
# client for both, so only the service differs. Prints the CPU flags, one line per run (texts/s
# end to end, dense text query p99 with its embedding, vector query p50 and p99) and the
# medians.
#   N=3000 Q=200 bench/ab_text.sh <before-binary> <after-binary> [rounds]
# Port 8000 must be free; the models must be where `deploy/setup.sh` puts them.
set -euo pipefail
before=$1 after=$2 rounds=${3:-3} n=${N:-3000} q=${Q:-200}
# shellcheck source=bench/ab_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/ab_common.sh"
cd "$root"
ab_cpu
field() { # output line-pattern label: the figure after `label` on the first line matching
  # (nothing when there is no such line or figure)
  grep "$2" <<<"$1" | head -1 | sed -nE "s/.*$3 ([0-9.]+) ?(ms|texts\/s).*/\1/p"
}
run() { # binary label
  local dir pid org ingest search
  dir=$(mktemp -d)
  HEIMDEX_DATA_DIR=$dir "$1" serve >"$dir/serve.log" 2>&1 &
  pid=$!
  ab_wait_ready 8000 "$dir/serve.log" || { kill "$pid"; exit 1; }
  org=$(cat /proc/sys/kernel/random/uuid)
  ingest=$("$after" bench ingest-text -n "$n" --max-words 12 --seed 11 --batch 1000 -c 4 --org "$org" 2>&1)
  search=$("$after" bench search --org "$org" --queries "$q" 2>&1)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  echo "$2 $(field "$ingest" 'completed:' '->') $(field "$search" 'text query, dense' 'p99') \
$(field "$search" 'vector query' 'p50') $(field "$search" 'vector query' 'p99')"
}
results=$(for _ in $(seq 1 "$rounds"); do run "$before" before; run "$after" after; done | ab_show)
names=("texts/s" "dense text query p99 ms" "vector query p50 ms" "vector query p99 ms")
for label in before after; do
  for col in 2 3 4 5; do
    runs=$(echo "$results" | awk -v l="$label" -v c="$col" '$1 == l {print $c}')
    echo "$label: median $(ab_median <<<"$runs") ${names[col-2]} over $(wc -l <<<"$runs") runs"
  done
done
