#!/usr/bin/env bash
# Runs every test (unit, acceptance against the built binary, PromQL conformance, the
# bounded remote-write, OTLP and PromQL fuzzers) and ends with one line that totals them all:
# `N passed, M failed, K skipped`. Exits with cargo's status.
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Each fuzzer runs for this many seconds inside the suite (tests/fuzz_remote_write.rs,
# tests/fuzz_otlp.rs, tests/fuzz_promql.rs).
export TIMBALA_FUZZ_SECONDS="${TIMBALA_FUZZ_SECONDS:-20}"
cargo test --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Examples are benchmarks: build them so they keep compiling, run nothing.
cargo build --examples --quiet || status=1

awk '
  /^test result:/                      { passed += $4; failed += $6 }
  /^[0-9]+ passed, [0-9]+ failed/      { passed += $1; failed += $3; skipped += $5 }
  END { printf "%d passed, %d failed, %d skipped\n", passed, failed, skipped }
' "$log"
exit "$status"
