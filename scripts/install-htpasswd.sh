#!/usr/bin/env bash
# Installs Debian's `apache2-utils` package when `htpasswd` is missing: the README's
# "Securing a cluster" section hashes passwords with it (as Prometheus's documentation
# does), and tests/readme_security.rs runs those commands as written.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v htpasswd >/dev/null 2>&1; then
    exit 0
fi
bash scripts/apt-install-quietly.sh apache2-utils
command -v htpasswd >/dev/null 2>&1 || { echo "htpasswd still missing after install" >&2; exit 1; }
