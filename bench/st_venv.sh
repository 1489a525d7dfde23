#!/usr/bin/env bash
# Throw-away venv with PyTorch (CPU use only) + sentence-transformers, from PyPI only,
# for bench/st_embed.py.  Prints the venv's python path on stdout (all other output
# goes to stderr), so:   PY=$(bash bench/st_venv.sh)
#
# Idempotent: a stamp file records what was installed; a re-run with the same pins
# and mode installs nothing.  A venv with a different/missing stamp is rebuilt.
#
# Env:
#   ST_VENV        venv dir (default ${TMPDIR:-/tmp}/heimdex-st-venv)
#   ST_PYTHON      interpreter to create it with (default python3; pins verified on CPython 3.11)
#   ST_TORCH_MODE  lean (default) | full
#
# Why "lean": every torch wheel PyPI has for Linux x86_64 is the CUDA build.  Its
# libtorch_cuda.so is DT_NEEDED by libtorch.so/libtorch_python.so, and itself links
# cuBLAS, cuDNN, NCCL, cuFFT, cuSPARSE(Lt), cuFile, NVRTC, CUPTI, NVSHMEM, so
# `pip install --no-deps torch` fails at `import torch` (libcublasLt.so.* not found),
# and the normal install downloads ~2.9 GB (nvidia-* wheels + triton).  Lean mode
# installs torch --no-deps plus the real CUDA runtime (3 MB; without a driver it
# reports "no device", the normal state of a CUDA torch on a GPU-less box) and
# compiles local no-op stand-ins for the other CUDA libraries from the symbols torch
# imports.  CPU kernels (libtorch_cpu.so, MKL/oneDNN, OpenMP) are the wheel's own
# and untouched; the stubs are never called on CPU.  Download: ~640 MB instead of ~3 GB.
# Lean needs gcc, readelf and ldconfig.  ST_TORCH_MODE=full does the stock install.
set -euo pipefail

VENV="${ST_VENV:-${TMPDIR:-/tmp}/heimdex-st-venv}"
PYTHON="${ST_PYTHON:-python3}"
MODE="${ST_TORCH_MODE:-lean}"

TORCH_PIN="torch==2.15.0"
CUDART_PIN="nvidia-cuda-runtime==13.2.86"            # the libcudart.so.13 torch 2.15.0 pins
FULL_EXTRA_PINS="triton==3.9.0 cuda-bindings==13.5.0 cuda-pathfinder==1.9.0"

# sentence-transformers and the full closure of its (and torch's pure-Python)
# dependencies, resolved by pip for CPython 3.11 / manylinux x86_64, installed --no-deps.
read -r -d '' PINS <<'EOF' || true
sentence-transformers==6.2.0
transformers==5.24.0
tokenizers==0.23.3
safetensors==0.8.0
huggingface_hub==2.4.0
hf-xet==1.8.0
numpy==2.4.6
scipy==1.17.1
scikit-learn==1.9.1
joblib==1.6.0
threadpoolctl==3.8.0
narwhals==2.29.0
tqdm==4.70.1
regex==2026.11.19
PyYAML==6.0.4
packaging==26.3
filelock==4.2.12
fsspec==2026.9.0
typing_extensions==4.16.0
typing-inspection==0.4.5
sympy==1.14.0
mpmath==1.3.0
networkx==3.6.1
Jinja2==3.1.6
MarkupSafe==3.0.4
setuptools==84.2.1
typer==0.29.2
click==8.5.1
rich==15.0.0
markdown-it-py==4.3.0
mdurl==0.1.2
Pygments==2.21.0
shellingham==1.5.4
annotated-doc==0.0.7
annotated-types==0.8.0
pydantic==2.14.4
pydantic_core==2.50.5
httpx2==2.16.2
httpcore2==2.16.2
h11==0.16.0
anyio==4.16.0
idna==3.20
truststore==0.10.5
cloudpickle==3.1.3
EOF

log() { printf '[st_venv] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "$MODE" in lean|full) ;; *) die "ST_TORCH_MODE must be lean or full, not '$MODE'" ;; esac

STAMP_FILE="$VENV/.heimdex-st-stamp"
# any change to this script (pins, stub logic) or the mode rebuilds the venv
STAMP="mode=$MODE $TORCH_PIN script=$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)"

if [[ -x "$VENV/bin/python" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$STAMP" ]]; then
  log "up to date: $VENV ($MODE)"
  echo "$VENV/bin/python"
  exit 0
fi

if [[ -e "$VENV" ]]; then
  [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a venv; set ST_VENV elsewhere"
  log "stale or incomplete venv at $VENV: rebuilding"
  rm -rf -- "$VENV"
fi

command -v "$PYTHON" >/dev/null || die "no $PYTHON"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || log "warning: pins were verified on CPython 3.11, $("$PYTHON" -V 2>&1) may not have matching wheels"
if [[ "$MODE" == lean ]]; then
  for tool in gcc readelf; do
    command -v "$tool" >/dev/null || die "lean mode needs $tool (apt-get install gcc binutils) or use ST_TORCH_MODE=full"
  done
fi

t0=$SECONDS
log "creating $VENV with $("$PYTHON" -V 2>&1), mode=$MODE"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
pip_i() { "$PY" -m pip install --disable-pip-version-check --no-input --progress-bar off "$@" >&2; }

if [[ "$MODE" == lean ]]; then
  log "installing $TORCH_PIN $CUDART_PIN (--no-deps)"
  pip_i --no-deps "$TORCH_PIN" "$CUDART_PIN"
else
  log "installing $TORCH_PIN with its CUDA dependencies (~2.9 GB)"
  # shellcheck disable=SC2086
  pip_i "$TORCH_PIN" $FULL_EXTRA_PINS
fi

log "installing sentence-transformers and pinned dependencies (--no-deps)"
REQ="$VENV/heimdex-st-requirements.txt"
printf '%s\n' "$PINS" >"$REQ"
pip_i --no-deps -r "$REQ"

if [[ "$MODE" == lean ]]; then
  log "building no-op stand-ins for the CUDA libraries torch links against"
  STUB_DIR="$VENV/heimdex-cuda-stubs"
  mkdir -p "$STUB_DIR"
  cat >"$STUB_DIR/gen.py" <<'EOF'
"""Generate stand-ins for the CUDA libraries that torch's DT_NEEDED graph lacks.

Writes stub.c (one definition per symbol torch imports that nothing present
defines), stub.map (version nodes, so versioned references resolve) and
missing.txt (the SONAMEs to build).
"""
import glob, os, re, shutil, subprocess, sys, sysconfig

out_dir = sys.argv[1]
site = sysconfig.get_paths()["platlib"]
torch_lib = os.path.join(site, "torch", "lib")
torch_objs = sorted(glob.glob(os.path.join(torch_lib, "*.so*")) + glob.glob(os.path.join(site, "torch", "_C*.so")))
nvidia_dirs = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
if not torch_objs:
    sys.exit(f"no torch libraries under {torch_lib}")


def run(*a):
    return subprocess.run(a, check=True, capture_output=True, text=True).stdout


ldconfig = shutil.which("ldconfig") or next(p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p))
ldcache = {}
for line in run(ldconfig, "-p").splitlines()[1:]:
    m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
    if m and "x86-64" in m.group(2):
        ldcache.setdefault(m.group(1), m.group(3))
local = {os.path.basename(p): p for d in [torch_lib] + nvidia_dirs for p in glob.glob(os.path.join(d, "*.so*"))}


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-dW", path))


roots = list(torch_objs) + [os.path.realpath(sys.executable)]
libpy = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or "")
if os.path.isfile(libpy):
    roots.append(libpy)
present, missing, seen = [], set(), set()
while roots:
    p = roots.pop()
    if p in seen:
        continue
    seen.add(p)
    present.append(p)
    for n in needed(p):
        q = local.get(n) or ldcache.get(n)
        if q:
            roots.append(q)
        else:
            missing.add(n)
# libcuda.so.1 is the GPU driver: only dlopen()ed (by cudart / lazily-loaded NVRTC
# glue), and cudart must keep seeing it as absent, so it gets no stand-in.
missing.discard("libcuda.so.1")

sym = re.compile(r"^\s*\d+:\s+\S+\s+\S+\s+(\w+)\s+(\w+)\s+\w+\s+(\S+)\s+(\S+)")
defined, undef = set(), {}
for p in present:
    for line in run("readelf", "--dyn-syms", "-W", p).splitlines():
        m = sym.match(line)
        if not m:
            continue
        typ, bind, ndx, name = m.groups()
        base, _, ver = name.partition("@")
        if ndx == "UND":
            if bind == "GLOBAL" and base and p in torch_objs:
                undef.setdefault(base, (typ, ver.lstrip("@")))
        elif bind in ("GLOBAL", "WEAK", "UNIQUE"):
            defined.add(base)

# torch.backends.cudnn.version() (some libraries call it just to report versions)
# raises unless the runtime version matches the build: report the pinned cuDNN.
custom = {}
for d in glob.glob(os.path.join(site, "torch-*.dist-info", "METADATA")):
    m = re.search(r"nvidia-cudnn-cu\d+==(\d+)\.(\d+)\.(\d+)", open(d).read())
    if m:
        ma, mi, pa = (int(g) for g in m.groups())
        custom["cudnnGetVersion"] = f"unsigned long cudnnGetVersion(void) {{ return {ma * 10000 + mi * 100 + pa}; }}"
        custom["cudnnGetProperty"] = (
            "int cudnnGetProperty(int type, int *value) { "
            f"static const int v[3] = {{{ma}, {mi}, {pa}}}; "
            "if (type < 0 || type > 2 || !value) return 3; *value = v[type]; return 0; }"
        )

stubs = {n: v for n, v in undef.items() if n not in defined}
code, nodes = ["/* generated by bench/st_venv.sh: CUDA entry points CPU inference never calls */"], {}
for name, (typ, ver) in sorted(stubs.items()):
    if name in custom:
        code.append(custom[name])
    elif typ == "OBJECT":
        code.append(f"char {name}[4096] __attribute__((aligned(64)));")
    elif typ == "TLS":
        code.append(f"__thread char {name}[256];")
    else:  # functions: report an error ("no device", cudaErrorNoDevice == 100)
        code.append(f"long {name}(void) {{ return 100; }}")
    nodes.setdefault(ver or "HEIMDEX_CUDA_STUB", []).append(name)
with open(os.path.join(out_dir, "stub.c"), "w") as f:
    f.write("\n".join(code) + "\n")
with open(os.path.join(out_dir, "stub.map"), "w") as f:
    for ver, names in sorted(nodes.items()):
        f.write(ver + " {\n  global:\n" + "".join(f"    {n};\n" for n in names) + "};\n")
with open(os.path.join(out_dir, "missing.txt"), "w") as f:
    f.write("".join(n + "\n" for n in sorted(missing)))
print(f"{len(missing)} libraries, {len(stubs)} symbols", file=sys.stderr)
EOF
  "$PY" "$STUB_DIR/gen.py" "$STUB_DIR"
  TORCH_LIB="$("$PY" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_paths()["platlib"], "torch", "lib"))')"
  gcc -c -fPIC -O1 -w -o "$STUB_DIR/stub.o" "$STUB_DIR/stub.c"
  while read -r soname; do
    [[ -n "$soname" ]] || continue
    # torch/lib is on every torch library's RPATH ($ORIGIN)
    gcc -shared -o "$TORCH_LIB/$soname" -Wl,-soname,"$soname" -Wl,--version-script="$STUB_DIR/stub.map" "$STUB_DIR/stub.o"
  done <"$STUB_DIR/missing.txt"
  log "stand-ins: $(tr '\n' ' ' <"$STUB_DIR/missing.txt")"
fi

log "verifying"
"$PY" - >&2 <<'EOF'
import torch, numpy, sentence_transformers, transformers
x = torch.randn(8, 384)
assert torch.allclose((x @ x.T).diag(), (x * x).sum(1), rtol=1e-4)
assert torch.from_numpy(numpy.ones(3)).sum().item() == 3.0
print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}, threads {torch.get_num_threads()}), "
      f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}")
EOF

echo "$STAMP" >"$STAMP_FILE"
log "done in $((SECONDS - t0)) s; venv size $(du -sh "$VENV" | cut -f1)"
echo "$PY"
