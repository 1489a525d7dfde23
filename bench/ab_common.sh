# Shared by the A/B scripts (sourced, not run): the environment both binaries run with, the
# CPU line they print with their figures, a wait for a `serve` to be ready, the median of the
# numbers on stdin (one a line), and a tee to the caller's stderr. Sets `root`, the repo.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export JWT_SECRET=ab-bench-secret NATS_SERVER_BIN="${NATS_SERVER_BIN:-$root/.tools/bin/nats-server}"
ab_cpu() {
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, \
$(grep -o -w 'fma\|avx2\|avx512f\|avx512bw\|avx512vl' /proc/cpuinfo | sort -u | xargs)"
}
ab_wait_ready() { # port serve-log: until GET /readyz answers 200; fails with the log's tail
  for _ in $(seq 1 120); do
    curl -sf "localhost:$1/readyz" >/dev/null && return 0
    sleep 0.5
  done
  echo "serve on port $1 did not become ready in 60 s:" >&2
  tail "$2" >&2
  return 1
}
ab_median() {
  sort -g | awk '{v[NR]=$1} END {printf "%g", (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'
}
# Copies stdin to stdout and to stderr. Not `tee /dev/stderr`: that opens the file anew, and
# with `>log 2>&1` its writes start at offset 0 and overwrite what went to stdout.
ab_show() {
  while IFS= read -r line; do
    printf '%s\n' "$line" >&2
    printf '%s\n' "$line"
  done
}
