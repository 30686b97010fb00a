#!/usr/bin/env bash
# Fuzzes the remote-write decoder.
#
#   scripts/fuzz.sh [SECONDS]      (default 60)
#
# With a nightly toolchain: cargo-fuzz (libFuzzer + AddressSanitizer) on
# fuzz/fuzz_targets/remote_write.rs, installing cargo-fuzz first if it is missing.
# Without nightly: the stable, time-bounded structured-mutation test
# tests/fuzz_remote_write.rs for the same number of seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if cargo +nightly --version >/dev/null 2>&1; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz" >&2
        cargo install --locked cargo-fuzz
    fi
    mkdir -p fuzz/corpus/remote_write
    exec cargo +nightly fuzz run remote_write fuzz/corpus/remote_write -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576
fi

echo "no nightly toolchain: running the stable mutation fuzzer for ${seconds}s" >&2
TIMBALA_FUZZ_SECONDS="$seconds" exec cargo test --test fuzz_remote_write -- --nocapture
