#!/usr/bin/env bash
# Installs Debian's `prometheus` package when `promtool` is missing, for tests/promtool.rs,
# the side-by-side benchmarks and the integration suite. Only the binaries are wanted;
# the package's service is kept from starting (scripts/apt-install-quietly.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
bash scripts/apt-install-quietly.sh prometheus
command -v promtool >/dev/null 2>&1 || { echo "promtool still missing after install" >&2; exit 1; }
promtool --version | head -1
