# Timbala: the two commands a fresh clone needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run build test lint unit setup fuzz bench integration

## Run one node with its data in ./data (HTTP on :9080).
run:
	$(CARGO) run --release --bin timbala --

build:
	$(CARGO) build --release --bin timbala

## Everything CI checks: set-up, formatting, lints, unit + acceptance + conformance tests.
test: setup lint unit

setup:
	bash scripts/setup.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	bash scripts/test.sh

## Deeper fuzzing of the remote-write and OTLP decoders and the PromQL entry points, 300 s each
## (cargo-fuzz with nightly, else the stable fuzzers).
fuzz:
	bash scripts/fuzz.sh 300

## Timbala (one node, 3-node cluster), Prometheus and VictoriaMetrics side by side on one
## payload; rewrites the generated region of bench/RESULTS.md and bench/chart.svg.
BENCH_RUNS ?= 3
bench:
	$(CARGO) build --release --bin timbala --example bench_compare
	bash bench/install-peers.sh
	target/release/examples/bench_compare --runs $(BENCH_RUNS)

## docker-compose integration suite: real Prometheus writing into a 3-node cluster,
## answers checked with promtool, nodes killed, paused, cut off and degraded. Builds the
## images locally (nothing is pulled), runs every scenario, always tears the stack down.
## Needs root (iptables and nsenter in the containers' network namespaces).
integration:
	$(CARGO) build --bin timbala --example integration_driver
	bash scripts/install-prometheus.sh
	bash scripts/install-nginx.sh
	bash integration/build-images.sh
	$(CARGO) run --quiet --example integration_driver
