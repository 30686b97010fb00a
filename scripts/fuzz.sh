#!/usr/bin/env bash
# Fuzzes the remote-write and OTLP decoders and the PromQL entry points.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 s each; targets remote_write otlp promql)
#
# With a nightly toolchain: cargo-fuzz (libFuzzer + AddressSanitizer) on
# fuzz/fuzz_targets/<target>.rs, installing cargo-fuzz first if it is missing; the
# PromQL corpus starts from fuzz/seeds/promql.txt (one query per line).
# Without nightly: the stable, time-bounded mutation tests tests/fuzz_<target>.rs for
# the same number of seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(remote_write otlp promql)
fi

if cargo +nightly --version >/dev/null 2>&1; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz" >&2
        cargo install --locked cargo-fuzz
    fi
    for target in "${targets[@]}"; do
        corpus="fuzz/corpus/$target"
        mkdir -p "$corpus"
        if [ "$target" = promql ]; then
            n=0
            while IFS= read -r query; do
                n=$((n + 1))
                [ -n "$query" ] && printf '%s' "$query" > "$corpus/seed-$n"
            done < fuzz/seeds/promql.txt
        fi
        cargo +nightly fuzz run "$target" "$corpus" -- \
            -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576
    done
    exit 0
fi

echo "no nightly toolchain: running the stable mutation fuzzers for ${seconds}s each" >&2
for target in "${targets[@]}"; do
    TIMBALA_FUZZ_SECONDS="$seconds" cargo test --test "fuzz_$target" -- --nocapture
done
