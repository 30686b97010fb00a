#!/usr/bin/env bash
# Installs Debian's `iptables` package when the binary is missing: the degraded-read
# acceptance test (tests/degraded_reads.rs) cuts a node off with iptables rules on
# loopback, and the integration suite cuts a container off in its network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v iptables >/dev/null 2>&1; then
    exit 0
fi
bash scripts/apt-install-quietly.sh iptables
command -v iptables >/dev/null 2>&1 || { echo "iptables still missing after install" >&2; exit 1; }
iptables -V
