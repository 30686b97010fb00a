#!/usr/bin/env bash
# Installs Debian's `openssl` package when the command is missing: tests/web_security.rs
# makes its CAs and certificates with it, and the README's "Securing a cluster" commands
# use it.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v openssl >/dev/null 2>&1; then
    exit 0
fi
bash scripts/apt-install-quietly.sh openssl
command -v openssl >/dev/null 2>&1 || { echo "openssl still missing after install" >&2; exit 1; }
