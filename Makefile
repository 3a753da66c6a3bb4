# fanout -- developer entry points.
#
#   make up      start a local cluster: Redis + NODES nodes + HAProxy, and (with node/npm)
#                the Socket.IO Admin UI and a demo chat on :8090
#                (e.g. `make up NODES=5 LB_PORT=8081`; Ctrl-C stops it); REDIS=cluster
#                (3 masters + 3 replicas) or REDIS=sentinel (1 master, 1 replica,
#                3 sentinels) instead of one Redis
#   make test    what CI runs (.ci/run): fmt check, clippy, tests; with CI=true or
#                REDIS_MODES=1 also test-redis-modes; with CHAOS=1 (set in CI by CI=true)
#                also the chaos sequence (deploy/chaos.sh)
#   make test-redis-modes  the integration modules that use Redis as a backend (chat,
#                presence, routing, api, outage, hostile, membership, interest) on a Redis
#                Cluster, then on a Sentinel setup (FANOUT_TEST_REDIS, tests/it/harness.rs)
#
# Settings for `make up` are passed through to deploy/up.sh as environment
# variables (see the top of that script for the full list and defaults).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo

# Variables given on the command line (`make up NODES=5`) or present in the
# environment are exported to the recipes by make itself, so deploy/up.sh sees
# NODES, NODE_BASE_PORT, ADMIN_BASE_PORT, REDIS, REDIS_PORT, LB_PORT, STATS_PORT,
# BIND_ADDR, JWT_SECRET, API_KEY, RUST_LOG, LOG_FORMAT, RUN_DIR, SKIP_BUILD,
# READY_TIMEOUT, ... without listing them here (an explicit `export` would
# also export unset ones as empty strings).

.PHONY: help up test test-redis-modes build fmt clippy clean-run deploy-check rust-components skip-summary

help:
	@echo "make up          start Redis + NODES (default 3) nodes + HAProxy on :8080 (Ctrl-C stops);"
	@echo "                 the Admin UI and a demo chat on :8090 (ADMIN_UI=0: without them);"
	@echo "                 REDIS=cluster (Redis Cluster, 6 processes) or REDIS=sentinel (master, replica, 3 sentinels)"
	@echo "make test        install redis-server if needed, cargo fmt --check, clippy -D warnings, cargo test"
	@echo "                 (then the skipped tests and why; with CI=true a missing tool fails instead), vendor/test.sh"
	@echo "                 (CI=true or REDIS_MODES=1: then make test-redis-modes;"
	@echo "                 CHAOS=1 or CI=true: then the chaos sequence, deploy/chaos.sh)"
	@echo "make test-redis-modes  the Redis-backed integration modules on a Redis Cluster, then on"
	@echo "                 Sentinel (FANOUT_TEST_REDIS=cluster|sentinel; MODES=cluster for one)"
	@echo "make build       cargo build --release --bins"
	@echo "make fmt         cargo fmt --all"
	@echo "make clippy      cargo clippy --all-targets -- -D warnings"
	@echo "make skip-summary  the tests the last make test skipped, and why (target/test-skips.txt)"
	@echo "make clean-run   remove .run/ (logs, Redis data of the local cluster)"
	@echo "make deploy-check  bash -n the scripts and validate deploy/haproxy.cfg"

up:
	deploy/up.sh

# The test harness starts its own redis-server and haproxy processes (found on
# PATH); pkg-config and libssl-dev build the rust_socketio interop client (native-tls);
# python3 with venv runs the python-socketio interop test and kubernetes-validate (venvs under
# target/tmp, packages from PyPI); node/npm (the interop and peer tests) and openssl (key
# tests) are on the image. A test whose tool is missing fails under CI=true and is skipped elsewhere,
# recorded in $(SKIP_LOG) (tests/it/skip.rs); the summary follows cargo test.
SKIP_LOG := $(CURDIR)/target/test-skips.txt

test: rust-components
	deploy/install-deps.sh redis-server redis-cli haproxy pkg-config openssl-dev python3 python3-venv chromium ip tc nft
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	# fanout-bench is a workspace member of its own: the tests run it from target/debug, and
	# cargo test builds only the bins of the package under test.
	$(CARGO) build --bins
	mkdir -p "$(dir $(SKIP_LOG))"; rm -f "$(SKIP_LOG)"
	status=0; FANOUT_SKIP_LOG="$(SKIP_LOG)" $(CARGO) test --all-targets -- --test-threads=2 --skip chaos || status=$$?; \
	$(SKIP_SUMMARY); exit $$status
	vendor/test.sh -q
	@if [[ "$${REDIS_MODES:-}" == 1 || "$${CI:-}" == true ]]; then $(MAKE) --no-print-directory test-redis-modes; \
	else echo "Redis Cluster/Sentinel runs skipped (REDIS_MODES=1 make test, or make test-redis-modes; CI runs them)"; fi
	@if [[ "$${CHAOS:-}" == 1 || "$${CI:-}" == true ]]; then deploy/chaos.sh; \
	else echo "chaos sequence skipped (CHAOS=1 make test, or deploy/chaos.sh; CI runs it)"; fi

# The integration modules whose tests use Redis only as the nodes' backend, run again with
# FANOUT_TEST_REDIS=<mode> for each of MODES: every test starts its own Redis Cluster (6
# servers) or Sentinel setup (master, replica, 3 sentinels) instead of one redis-server, and
# the nodes get --redis-cluster-nodes or --redis-sentinels. redis_modes:: checks the harness
# itself without a node, so that a failure only elsewhere points at the node. A test that
# cannot run on a mode is recorded as skipped there (tests/it/skip.rs). Every mode runs even
# when one fails; the target fails if any did. The skips go to a log of their own, summarised
# after each mode.
REDIS_MODE_TESTS := redis_modes:: chat:: presence:: routing:: api:: outage:: hostile:: membership:: interest::
MODES ?= cluster sentinel
MODES_SKIP_LOG := $(CURDIR)/target/test-skips-redis-modes.txt

test-redis-modes:
	deploy/install-deps.sh redis-server redis-cli
	$(CARGO) build --bins
	status=0; for mode in $(MODES); do \
		echo "=== FANOUT_TEST_REDIS=$$mode: $(REDIS_MODE_TESTS)"; \
		rm -f "$(MODES_SKIP_LOG)"; start=$$(date +%s); \
		FANOUT_TEST_REDIS=$$mode FANOUT_SKIP_LOG="$(MODES_SKIP_LOG)" \
			$(CARGO) test --test it -- --test-threads=2 $(REDIS_MODE_TESTS) || status=1; \
		echo "=== FANOUT_TEST_REDIS=$$mode took $$(( $$(date +%s) - start )) s"; \
		$(MODES_SKIP_SUMMARY); \
	done; exit $$status

MODES_SKIP_SUMMARY = if [[ -s "$(MODES_SKIP_LOG)" ]]; then \
		echo "$$(wc -l <"$(MODES_SKIP_LOG)") tests skipped:"; sed 's/^/  /' "$(MODES_SKIP_LOG)"; \
	else echo "0 tests skipped"; fi

# "N tests skipped:" and one "<test>: <reason>" line each, from the last `make test`
# ("0 tests skipped" when none were). A shell snippet, not a sub-make, so that
# `make -n test` runs nothing.
SKIP_SUMMARY = if [[ -s "$(SKIP_LOG)" ]]; then \
		echo "$$(wc -l <"$(SKIP_LOG)") tests skipped:"; sed 's/^/  /' "$(SKIP_LOG)"; \
	else echo "0 tests skipped"; fi

skip-summary:
	@$(SKIP_SUMMARY)

# rustfmt/clippy are missing from rustup's "minimal" profile.
rust-components:
	@if ! $(CARGO) fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
	@if ! $(CARGO) clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

build:
	$(CARGO) build --release --bins

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

clean-run:
	@if [[ -f .run/up.pid ]] && kill -0 "$$(cat .run/up.pid)" 2>/dev/null; then \
		echo "deploy/up.sh (pid $$(cat .run/up.pid)) is still running; stop it first (Ctrl-C)" >&2; exit 1; fi
	rm -rf .run

# Static checks of the deploy scripts/config (no cargo, no binaries needed).
deploy-check:
	bash -n deploy/up.sh
	bash -n deploy/install-deps.sh
	bash -n deploy/chaos.sh
	bash -n .ci/run
	haproxy -c -f deploy/haproxy.cfg
	FANOUT_DNS_NAME=fanout haproxy -c -f deploy/haproxy.cfg
