#!/usr/bin/env bash
# Installs Debian's `prometheus` package when `promtool` is missing, for tests/promtool.rs
# and the side-by-side benchmarks. Only the tools are wanted: the package's own service
# must not be started (it would bind :9090 and write into /var/lib/prometheus), so
# service starts are denied for the duration of the install and stopped if one slipped
# through anyway.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

# Deny service starts during the install (invoke-rc.d honours policy-rc.d; exit 101 =
# "action forbidden"). Only remove the policy file if we were the ones who created it.
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
$SUDO apt-get install -y --no-install-recommends prometheus

# If a service manager started the server anyway, stop it and keep it from starting on
# boot; the tests and benchmarks run their own processes.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service prometheus stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

command -v promtool >/dev/null 2>&1 || { echo "promtool still missing after install" >&2; exit 1; }
promtool --version | head -1
