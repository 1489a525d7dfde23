#!/usr/bin/env bash
# A/B of the vector query between two heimdex binaries, paired: both run `serve` at once (API
# on ports 18001 and 18002, each its own data dir and nats-server) over the same N synthetic
# texts in one org, then BLOCKS times (default 10) each answers Q vector queries in a row
# (`bench/vector_queries.py`), in ABBA order so that drift and warm-up hit both alike. A small
# latency difference drowns in the drift between fresh `serve` runs (`ab_text.sh`); paired
# blocks of one pair of processes do not have that drift. Per block it prints p50, p99 and the
# serving process's CPU per query (user + system time from /proc, all its threads, without its
# nats-server child), then the medians and after ÷ before.
#   N=3000 Q=1000 bench/ab_vector.sh <before-binary> <after-binary> [blocks]
# Ports 18001, 18002, 19001, 19002, 14301 and 14302 must be free; the model must be where
# `deploy/setup.sh` puts it (the texts are embedded by the service).
set -euo pipefail
before=$1 after=$2 blocks=${3:-10} n=${N:-3000} q=${Q:-1000}
# shellcheck source=bench/ab_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/ab_common.sh"
cd "$root"
ab_cpu
dirs=() pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for dir in "${dirs[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT
start() { # binary port
  local dir
  dir=$(mktemp -d)
  dirs+=("$dir")
  HEIMDEX_DATA_DIR=$dir HEIMDEX_API_ADDR=127.0.0.1:$2 HEIMDEX_METRICS_ADDR=127.0.0.1:$(($2 + 1000)) \
    HEIMDEX_NATS_LISTEN=127.0.0.1:$(($2 - 3700)) "$1" serve >"$dir/serve.log" 2>&1 &
  pids+=($!)
}
start "$before" 18001
start "$after" 18002
org=$(cat /proc/sys/kernel/random/uuid)
for i in 0 1; do
  port=$((18001 + i))
  ab_wait_ready "$port" "${dirs[i]}/serve.log"
  "$after" bench ingest-text --url "http://127.0.0.1:$port" -n "$n" --max-words 12 --seed 11 \
    --batch 1000 -c 4 --org "$org" 2>&1 | grep 'completed:' >&2
done
# Until the store's optimizer is idle (a binary without the gauge counts as idle).
for port in 18001 18002; do
  for _ in $(seq 1 600); do
    curl -sf "localhost:$port/metrics" | grep -q '^heimdex_vector_store_optimizing.* 1$' || break
    sleep 0.5
  done
done
token=$("$after" token --org "$org")
cpu_ticks() { # pid: user + system clock ticks so far
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
block() { # label pid port
  local t0 t1 out
  t0=$(cpu_ticks "$2")
  out=$(python3 bench/vector_queries.py "http://127.0.0.1:$3" "$token" "$q")
  t1=$(cpu_ticks "$2")
  echo "$1 $out cpu_ms_per_query $(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v q="$q" \
    'BEGIN {printf "%.4f", d * 1000 / hz / q}')"
}
python3 bench/vector_queries.py http://127.0.0.1:18001 "$token" 200 >/dev/null
python3 bench/vector_queries.py http://127.0.0.1:18002 "$token" 200 >/dev/null
results=$(for i in $(seq 1 "$blocks"); do
  if ((i % 2)); then
    block before "${pids[0]}" 18001; block after "${pids[1]}" 18002
  else
    block after "${pids[1]}" 18002; block before "${pids[0]}" 18001
  fi
done | ab_show)
# Columns: label p50 <ms> p99 <ms> cpu_ms_per_query <ms>.
declare -A med
for label in before after; do
  for col in 3 5 7; do
    med[$label$col]=$(echo "$results" | awk -v l="$label" -v c="$col" '$1 == l {print $c}' | ab_median)
  done
  echo "$label: median p50 ${med[${label}3]} ms, p99 ${med[${label}5]} ms, CPU per query ${med[${label}7]} ms over $blocks blocks of $q"
done
awk -v a="${med[after3]}" -v b="${med[before3]}" -v ca="${med[after7]}" -v cb="${med[before7]}" \
  'BEGIN {printf "after / before: p50 %.3f, CPU per query %.3f\n", a / b, ca / cb}'
