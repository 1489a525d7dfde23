#!/usr/bin/env bash
# The fault-injection suite at the size docs/RELIABILITY.md reports (HEIMDEX_FAULTS=full): every
# scenario in tests/faults, one at a time, each printing its figures. The rows are collected in
# target/faults-report.md and printed as a table at the end. Arguments go to the test binary
# (e.g. a scenario name to run only that one). CI runs the same scenarios at a smaller size as
# part of deploy/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/deploy/setup.sh"
export NATS_SERVER_BIN="$root/.tools/bin/nats-server"
cd "$root"
# The scenarios run the real binary.
cargo build --release --locked -p heimdex
report="$root/target/faults-report.md"
rm -f "$report"
status=0
HEIMDEX_FAULTS=full HEIMDEX_FAULTS_REPORT="$report" \
  cargo test --release --locked -p heimdex-tests --test faults -- --test-threads 1 --nocapture "$@" \
  || status=$?
echo
echo "| scenario | accepted | succeeded | failed | lost | duplicates | recovery | refusals seen by clients | notes |"
echo "|---|---|---|---|---|---|---|---|---|"
cat "$report" 2>/dev/null || true
exit "$status"
