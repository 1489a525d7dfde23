#!/usr/bin/env bash
# Text-query latency while a text ingest runs, and the ingest's own rate, for one or more
# `heimdex` binaries, interleaved (A, B, A, B, ...) so machine noise hits each alike.
#
#   bench/search_under_ingest.sh [rounds, default 3] BINARY...
#
# Per binary and round: a fresh `serve` (own data dir, random ports, RUST_LOG=warn), 200 short
# texts ingested into a query tenant, then
#   1. idle:   `bench search --queries Q` (one request at a time) with nothing else running;
#   2. ingest: `bench ingest-text -n N` into another tenant, alone (its texts/s);
#   3. both:   the same ingest again (new texts) and, once the worker is busy, `bench search`:
#              text-query latency while batches are being embedded, and the ingest's texts/s.
# The client commands (`bench ingest-text`, `bench search`) are always the first binary's, so
# only the server differs. N (default 2000) and Q (default 200) come from the environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS="${1:?rounds}"; shift
[ "$#" -ge 1 ] || { echo "usage: $0 ROUNDS BINARY..." >&2; exit 2; }
N="${N:-2000}"
Q="${Q:-200}"
CLIENT="$(realpath "$1")"
export JWT_SECRET="${JWT_SECRET:-bench-search-under-ingest-secret-0123456789}"
QORG=11111111-2222-3333-4444-555555555555

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
  "flags: $(grep -m1 -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | xargs | tr ' ' ,)"
echo "N=$N ingest texts, Q=$Q text queries, client $CLIENT"

one() { # binary round
  local bin data api nats pid url out
  bin="$(realpath "$1")"
  data="$(mktemp -d)"; api="$(port)"; nats="$(port)"; url="http://127.0.0.1:$api"
  HEIMDEX_DATA_DIR="$data" HEIMDEX_API_ADDR="127.0.0.1:$api" HEIMDEX_NATS_LISTEN="127.0.0.1:$nats" \
    RUST_LOG=warn "$bin" serve >"$data/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "$url/readyz" >/dev/null || { echo "serve did not become ready:"; tail "$data/serve.log"; kill "$pid"; exit 1; }
  "$CLIENT" bench ingest-text --url "$url" -n 200 --max-words 12 --seed 3 --batch 100 -c 2 --org "$QORG" >/dev/null
  out="$data/out"
  idle=$("$CLIENT" bench search --url "$url" --org "$QORG" --queries "$Q" | grep 'text query')
  alone=$("$CLIENT" bench ingest-text --url "$url" -n "$N" --seed 21 --batch 100 -c 4 | grep -E 'texts/s' | head -1)
  "$CLIENT" bench ingest-text --url "$url" -n "$N" --seed 22 --batch 100 -c 4 >"$out" 2>&1 &
  local ingest=$!
  sleep 3
  busy=$("$CLIENT" bench search --url "$url" --org "$QORG" --queries "$Q" | grep 'text query')
  wait "$ingest"
  both=$(grep -E 'texts/s' "$out" | head -1)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo "round $2 $(basename "$bin"):"
  echo "  idle search   ${idle#  }"
  echo "  ingest alone  $alone"
  echo "  under ingest  ${busy#  }"
  echo "  ingest+search $both"
}

for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do one "$bin" "$round"; done
done
