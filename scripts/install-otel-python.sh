#!/usr/bin/env bash
# Installs the OpenTelemetry Python SDK and its OTLP/HTTP protobuf exporter from PyPI
# into a virtual environment under target/ (never into the system's Python), for
# tests/otlp.rs: a real OpenTelemetry SDK exports metrics to `POST /api/v1/otlp/v1/metrics`.
# Prints the environment's python on success. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.45.2
venv=target/python/opentelemetry-$VERSION
python=$venv/bin/python
probe='import opentelemetry.sdk.metrics, opentelemetry.exporter.otlp.proto.http.metric_exporter'
if [ -x "$python" ] && "$python" -c "$probe" >/dev/null 2>&1; then
    echo "$python"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "python3 is missing" >&2; exit 1; }
python3 -m venv "$venv" >&2
"$python" -m pip install --quiet --disable-pip-version-check \
    "opentelemetry-sdk==$VERSION" "opentelemetry-exporter-otlp-proto-http==$VERSION" >&2
"$python" -c "$probe" >&2
echo "$python"
