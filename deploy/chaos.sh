#!/usr/bin/env bash
# The chaos sequence of docs/reliability.md: three fanout node processes behind
# HAProxy, load from `fanout-bench --recover`, and in turn: a node killed with
# SIGKILL (and restarted), Redis restarted empty, Redis stalled 5 s (DEBUG
# SLEEP), and a reconnect storm of CHAOS_STORM_CLIENTS clients after every node
# was lost. Prints a summary table (accepted, delivered live, recovered, lost,
# duplicated, offset holes, reconnects, presence events expected vs seen) and
# fails when anything accepted was lost.
#
# It is the integration test tests/it/chaos.rs, run alone, with a release
# build. `make test` runs it too when CHAOS=1 or CI=true.
#
#   deploy/chaos.sh                         # 20 000 clients in the storm
#   CHAOS_STORM_CLIENTS=4000 deploy/chaos.sh
#
# Traffic stays on 127.0.0.1; every process it starts is killed at the end;
# it takes 3-6 minutes after the build on a 2-core machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/install-deps.sh redis-server haproxy
export CHAOS=1
# The tests run fanout-bench, a workspace member of its own: cargo test builds only the bins of
# the package under test, so every binary is built first.
${CARGO:-cargo} build --release --bins
exec ${CARGO:-cargo} test --release --test it chaos -- --nocapture --test-threads=1
