# Shared by the A/B scripts (sourced, not run): the CPU line they print with their figures, the
# median of the numbers on stdin (one a line), and a tee to the caller's stderr.
ab_cpu() {
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, \
$(grep -o -w 'fma\|avx2\|avx512f\|avx512bw\|avx512vl' /proc/cpuinfo | sort -u | xargs)"
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
