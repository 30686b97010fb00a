#!/usr/bin/env bash
# Installs the Python client `prometheus-api-client` from PyPI into a virtual environment
# under target/ (never into the system's Python), for tests/ui.rs: its
# `check_prometheus_connection()` probes `GET /` and must find the server up (issue 16).
# Prints the environment's python on success. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.7.2
venv=target/python/prometheus-api-client-$VERSION
python=$venv/bin/python
if [ -x "$python" ] && "$python" -c 'import prometheus_api_client' >/dev/null 2>&1; then
    echo "$python"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "python3 is missing" >&2; exit 1; }
python3 -m venv "$venv" >&2
"$python" -m pip install --quiet --disable-pip-version-check "prometheus-api-client==$VERSION" >&2
"$python" -c 'import prometheus_api_client' >&2
echo "$python"
