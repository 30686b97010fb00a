#!/usr/bin/env bash
# Installs what the tests need on a fresh machine: the Rust components used by
# `make lint`, and the Debian packages of scripts/install-*.sh (promtool, openssl,
# htpasswd, iptables, nginx, chromium for the web UI test) and the Python packages the
# tests drive (prometheus-api-client, the OpenTelemetry SDK) in venvs under target/.
# Idempotent: does nothing that is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

for script in scripts/install-*.sh; do
  [ -e "$script" ] && bash "$script"
done
exit 0
