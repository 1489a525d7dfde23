#!/usr/bin/env bash
# The embedder against sentence-transformers (PyTorch, CPU) on the same texts, in the same run,
# on this CPU as it is and with AVX-512 masked (an AVX2-only CPU).
#
#   bench/embedder.sh [N texts, default 1000] [rounds, default 3]
#   ISAS="avx2" bench/embedder.sh ...     # only one of the two cases (default "avx512 avx2")
#
# Builds two heimdex binaries: the default one, and one with --no-default-features, which has no
# AVX-512 code at all (neither the `gemm` crate's nor our kernels'). Writes N synthetic texts
# (`heimdex bench corpus`), creates the throw-away PyTorch venv (bench/st_venv.sh, PyPI only),
# then alternates the implementations for `rounds` rounds (each run: 3 timed passes over all
# texts, median), so machine noise hits both alike. The AVX2 case:
#   - sentence-transformers with ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2 and
#     ATEN_CPU_CAPABILITY=avx2 (oneDNN, MKL and PyTorch's own kernels capped at AVX2);
#   - heimdex built without AVX-512, and BLIS told to use the kernels it would pick on an AVX2
#     CPU of this vendor (BLIS_ARCH_TYPE: zen3 on AMD, haswell on Intel; BLIS 0.9's ids).
# Prints the CPU and its flags, every run (with the ISA and the matrix-product library each side
# ran with), and per case the medians in texts/s and GFLOP/s: the encoder's floating-point
# operations counted from the model's shapes and each text's tokens (`heimdex bench embed`
# prints the count), the same count for both implementations.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N="${1:-1000}"
ROUNDS="${2:-3}"
ISAS="${ISAS:-avx512 avx2}"
MODEL_DIR="${HEIMDEX_MODEL_DIR:-.tools/models/all-minilm-l6-v2}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

[ -f "$MODEL_DIR/model.safetensors" ] || ./deploy/setup.sh >&2
cargo build --release --locked -p heimdex --no-default-features >&2
cp target/release/heimdex "$WORK/heimdex-avx2"
cargo build --release --locked -p heimdex >&2
cp target/release/heimdex "$WORK/heimdex-avx512"
PY="$(bash bench/st_venv.sh)"

"$WORK/heimdex-avx512" bench corpus -n "$N" -o "$WORK/texts.jsonl" >&2
if grep -q AuthenticAMD /proc/cpuinfo; then BLIS_AVX2=6; BLIS_AVX2_NAME=zen3; else BLIS_AVX2=3; BLIS_AVX2_NAME=haswell; fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "cpu flags (SIMD): $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|f16c|amx)' | sort | xargs)"
echo "texts: $N synthetic (5-120 words), model dir: $MODEL_DIR, cases: $ISAS"
echo "AVX2 case: torch with ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2;" \
  "heimdex built --no-default-features with BLIS_ARCH_TYPE=$BLIS_AVX2 ($BLIS_AVX2_NAME)"

st_run() { # isa
  if [ "$1" = avx2 ]; then
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \
      "$PY" bench/st_embed.py --model-dir "$MODEL_DIR" --texts "$WORK/texts.jsonl" --repeat 3 2>/dev/null
  else
    "$PY" bench/st_embed.py --model-dir "$MODEL_DIR" --texts "$WORK/texts.jsonl" --repeat 3 2>/dev/null
  fi
}
hx_run() { # isa
  if [ "$1" = avx2 ]; then
    BLIS_ARCH_TYPE=$BLIS_AVX2 "$WORK/heimdex-avx2" bench embed --model-dir "$MODEL_DIR" --texts "$WORK/texts.jsonl" --repeat 3
  else
    "$WORK/heimdex-avx512" bench embed --model-dir "$MODEL_DIR" --texts "$WORK/texts.jsonl" --repeat 3
  fi
}

: >"$WORK/results"
for round in $(seq "$ROUNDS"); do
  for isa in $ISAS; do
    s=$(st_run "$isa")
    r=$(hx_run "$isa")
    echo "round $round $isa: $s"
    echo "round $round $isa: $r"
    echo "$isa st $s" >>"$WORK/results"
    echo "$isa hx $r" >>"$WORK/results"
  done
done
python3 - "$WORK/results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    isa, who, js = line.split(" ", 2)
    rows.setdefault(isa, {}).setdefault(who, []).append(json.loads(js))
for isa, by in rows.items():
    gflop = by["hx"][0]["gflop"]  # the same texts, so the same count for both
    st = [r["texts_per_s"] for r in by["st"]]
    hx = [r["texts_per_s"] for r in by["hx"]]
    ms, mh = statistics.median(st), statistics.median(hx)
    n = by["hx"][0]["n"]
    h = by["hx"][0]
    print(f"== {isa}: {gflop:.1f} GFLOP for {n} texts ({gflop / n:.2f} GFLOP a text)")
    print(f"  sentence-transformers ({by['st'][0]['cpu_capability']}, torch {by['st'][0]['torch']}):"
          f" median {ms:.1f} texts/s = {ms * gflop / n:.1f} GFLOP/s  (rounds {', '.join(f'{x:.1f}' for x in st)})")
    print(f"  heimdex ({h['kernels']} kernels, {h['products']}, {h['threads']} threads):"
          f" median {mh:.1f} texts/s = {mh * gflop / n:.1f} GFLOP/s  (rounds {', '.join(f'{x:.1f}' for x in hx)})")
    print(f"  ratio heimdex / sentence-transformers: {mh / ms:.2f}x")
PY
