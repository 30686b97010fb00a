#!/usr/bin/env bash
# Usage: apt-install-quietly.sh PACKAGE [SERVICE]
# Installs one Debian package for the binaries it ships, never for its service: service
# starts are denied for the duration of the install (the service would bind ports and
# write into /var/lib), and the service is stopped and disabled if one slipped through.
# Used by scripts/install-*.sh, which first check whether the binary is already there.
set -euo pipefail

package=$1
service=${2:-$1}

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
$SUDO apt-get install -y --no-install-recommends "$package"

# If a service manager started the server anyway, stop it and keep it from starting on
# boot; the tests and the integration suite run their own processes.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "$service.service" >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service "$service" stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d "$service" disable >/dev/null 2>&1 || true
fi
