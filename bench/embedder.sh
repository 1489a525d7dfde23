#!/usr/bin/env bash
# The embedder against sentence-transformers (PyTorch, CPU) on the same texts, in the same run.
#
#   bench/embedder.sh [N texts, default 1000] [rounds, default 3]
#
# Builds the heimdex binary, writes N synthetic texts (`heimdex bench corpus`, 5–120 words
# each), creates the throw-away PyTorch venv (bench/st_venv.sh, PyPI only), then alternates the
# two implementations for `rounds` rounds (each round: 3 timed passes over all texts, median)
# so machine noise hits both alike. Prints every round and the ratio of the medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N="${1:-1000}"
ROUNDS="${2:-3}"
MODEL_DIR="${HEIMDEX_MODEL_DIR:-.tools/models/all-minilm-l6-v2}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

[ -f "$MODEL_DIR/model.safetensors" ] || ./deploy/setup.sh >&2
cargo build --release --locked -p heimdex >&2
HEIMDEX=./target/release/heimdex
PY="$(bash bench/st_venv.sh)"

"$HEIMDEX" bench corpus -n "$N" -o "$WORK/texts.jsonl" >&2
echo "texts: $N synthetic (5-120 words), model dir: $MODEL_DIR, cores: $(nproc)"

rust=(); st=()
for round in $(seq "$ROUNDS"); do
  s=$("$PY" bench/st_embed.py --model-dir "$MODEL_DIR" --texts "$WORK/texts.jsonl" --repeat 3 2>/dev/null)
  r=$("$HEIMDEX" bench embed --model-dir "$MODEL_DIR" --texts "$WORK/texts.jsonl" --repeat 3)
  echo "round $round: $s"
  echo "round $round: $r"
  st+=("$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["texts_per_s"])')")
  rust+=("$(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["texts_per_s"])')")
done
python3 - "${st[*]}" "${rust[*]}" <<'PY'
import statistics, sys
st = [float(x) for x in sys.argv[1].split()]
rust = [float(x) for x in sys.argv[2].split()]
ms, mr = statistics.median(st), statistics.median(rust)
print(f"sentence-transformers: median {ms:.1f} texts/s  (rounds {', '.join(f'{x:.1f}' for x in st)})")
print(f"heimdex (candle):      median {mr:.1f} texts/s  (rounds {', '.join(f'{x:.1f}' for x in rust)})")
print(f"ratio heimdex / sentence-transformers: {mr / ms:.2f}x")
PY
