#!/usr/bin/env bash
# Builds the integration suite's images without pulling anything: each image is
# `FROM scratch` plus a staging directory assembled here from host binaries and every
# shared library `ldd` lists for them (kept at their paths, the loader included).
#
#   timbala-integ/timbala     target/debug/timbala (built by `make integration` if absent)
#   timbala-integ/prometheus  Debian's /usr/bin/prometheus (scripts/install-prometheus.sh)
#   timbala-integ/nginx       Debian's /usr/sbin/nginx     (scripts/install-nginx.sh)
#
# Configuration is not baked in: docker-compose.yml mounts it from integration/.
set -euo pipefail
cd "$(dirname "$0")/.."

TIMBALA_BIN=${TIMBALA_BIN:-target/debug/timbala}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# Copies a binary and the libraries it links into $1, preserving paths.
stage_binary() {
    local root=$1 bin=$2 dest=$3
    install -D -m 755 "$bin" "$root$dest"
    ldd "$bin" | awk '/=>/ { print $3 } !/=>/ && /^\t\// { print $1 }' | while read -r lib; do
        [ -n "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# A minimal passwd/group (nobody) and writable /tmp shared by every image.
stage_base() {
    local root=$1
    mkdir -p "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

build_image() {
    local name=$1 root=$2
    # The legacy builder (no buildx here) warns that it is deprecated on every build:
    # keep its output for failures only.
    if ! DOCKER_BUILDKIT=0 docker build --quiet -f "integration/images/Dockerfile.$name" \
        -t "timbala-integ/$name" "$root" >"$STAGE/build.log" 2>&1; then
        cat "$STAGE/build.log" >&2
        return 1
    fi
    echo "built timbala-integ/$name"
}

root=$STAGE/timbala
stage_base "$root"
mkdir -p "$root/data"
stage_binary "$root" "$TIMBALA_BIN" /usr/bin/timbala
build_image timbala "$root"

root=$STAGE/prometheus
stage_base "$root"
mkdir -p "$root/prometheus"
stage_binary "$root" /usr/bin/prometheus /usr/bin/prometheus
build_image prometheus "$root"

root=$STAGE/nginx
stage_base "$root"
mkdir -p "$root/var/log/nginx" "$root/var/lib/nginx" "$root/run"
stage_binary "$root" /usr/sbin/nginx /usr/sbin/nginx
build_image nginx "$root"
