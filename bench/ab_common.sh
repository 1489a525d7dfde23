# Shared by the A/B scripts (sourced, not run): the CPU line they print with their figures, and
# the median of the numbers on stdin (one a line).
ab_cpu() {
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, \
$(grep -o -w 'fma\|avx2\|avx512f\|avx512bw\|avx512vl' /proc/cpuinfo | sort -u | xargs)"
}
ab_median() {
  sort -g | awk '{v[NR]=$1} END {printf "%g", (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'
}
