#!/usr/bin/env bash
# Installs the peers `make bench` compares Timbala with, from Debian's packages:
# `prometheus` (via scripts/install-prometheus.sh, shared with the tests) and
# `victoria-metrics`. Lives in bench/ rather than scripts/install-*.sh so that `make test`
# (scripts/setup.sh runs every scripts/install-*.sh) does not install VictoriaMetrics.
# Only the binaries are wanted; the packages' services are kept from starting
# (scripts/apt-install-quietly.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prometheus.sh

if ! command -v victoria-metrics >/dev/null 2>&1; then
    bash scripts/apt-install-quietly.sh victoria-metrics
fi
command -v victoria-metrics >/dev/null 2>&1 || { echo "victoria-metrics still missing after install" >&2; exit 1; }
victoria-metrics -version 2>&1 | head -1
