#!/usr/bin/env bash
# Installs Debian's `nginx` package when the binary is missing, for the integration
# suite's load balancer image (integration/build-images.sh copies /usr/sbin/nginx and
# its libraries into a scratch image). Only the binary is wanted: the package's own
# service must not start (it would bind :80), so service starts are denied for the
# duration of the install and stopped if one slipped through anyway.
set -euo pipefail

if [ -x /usr/sbin/nginx ]; then
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
$SUDO apt-get install -y --no-install-recommends nginx

# If a service manager started the server anyway, stop it and keep it from starting on
# boot; only the integration suite's container runs nginx.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now nginx.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service nginx stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d nginx disable >/dev/null 2>&1 || true
fi

[ -x /usr/sbin/nginx ] || { echo "nginx still missing after install" >&2; exit 1; }
/usr/sbin/nginx -v
