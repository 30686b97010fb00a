#!/usr/bin/env bash
# Installs the peers `make bench` compares Timbala with, from Debian's packages:
# `prometheus` (via scripts/install-prometheus.sh, shared with the tests) and
# `victoria-metrics`. Lives in bench/ rather than scripts/install-*.sh so that `make test`
# (scripts/setup.sh runs every scripts/install-*.sh) does not install VictoriaMetrics.
# Only the binaries are wanted: the packages' services must not start (they would bind
# ports and write into /var/lib), so service starts are denied during the install and
# stopped and disabled if one slipped through. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prometheus.sh

if command -v victoria-metrics >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

# invoke-rc.d honours policy-rc.d; exit 101 = "action forbidden". Only remove the policy
# file if this script created it.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" = 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends victoria-metrics

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now victoria-metrics.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service victoria-metrics stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d victoria-metrics disable >/dev/null 2>&1 || true
fi

command -v victoria-metrics >/dev/null 2>&1 || { echo "victoria-metrics still missing after install" >&2; exit 1; }
victoria-metrics -version 2>&1 | head -1
