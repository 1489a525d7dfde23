#!/usr/bin/env bash
# The whole test suite: unit tests, the vector-store contract suite and the integration tests in
# tests/, which start their own nats-server (installed by setup.sh) on random ports.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/deploy/setup.sh"
export NATS_SERVER_BIN="$root/.tools/bin/nats-server"
cd "$root"
# The crash tests run the real binary, so build it first (same profile: no extra compile).
cargo build --release --locked -p heimdex
cargo test --workspace --release --locked "$@"
