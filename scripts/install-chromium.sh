#!/usr/bin/env bash
# Installs Debian's `chromium` package when the browser is missing: tests/ui.rs loads the
# built-in web UI in headless Chromium (--dump-dom, --screenshot) and checks the rendered
# chart, table, cluster and cardinality pages.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
bash scripts/apt-install-quietly.sh chromium
command -v chromium >/dev/null 2>&1 || { echo "chromium still missing after install" >&2; exit 1; }
chromium --version
