#!/usr/bin/env bash
# Installs Debian's `nginx` package when the binary is missing, for the integration
# suite's load balancer image (integration/build-images.sh copies /usr/sbin/nginx and its
# libraries into a scratch image). Only the binary is wanted; the package's service
# (it would bind :80) is kept from starting (scripts/apt-install-quietly.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x /usr/sbin/nginx ]; then
    exit 0
fi
bash scripts/apt-install-quietly.sh nginx
[ -x /usr/sbin/nginx ] || { echo "nginx still missing after install" >&2; exit 1; }
/usr/sbin/nginx -v
