#!/usr/bin/env bash
# The chaos sequence of docs/reliability.md: three fanout node processes behind
# HAProxy, load from `fanout-bench --recover`, and in turn: a node killed with
# SIGKILL (and restarted), Redis restarted empty, Redis stalled 5 s (DEBUG
# SLEEP), and a reconnect storm of CHAOS_STORM_CLIENTS clients after every node
# was lost. Then the Redis failover phases, each on a Redis of its own: a Redis
# Cluster master killed -9 with REDIS_WAIT_REPLICAS=1 (cluster-master-kill) and
# with 0 (cluster-master-kill-nowait), and the Sentinel master killed with 1
# (sentinel-failover); the killed server comes back as the promoted one's
# replica, the nodes are not restarted. Prints summary tables (accepted,
# delivered live, recovered, lost, duplicated, offset holes, reconnects,
# presence events expected vs seen) and fails when anything accepted was lost
# (with REDIS_WAIT_REPLICAS=0 the loss is counted, not asserted).
#
# It is the integration tests tests/it/chaos.rs and tests/it/chaos_failover.rs,
# run alone, with a release build. `make test` runs it too when CHAOS=1 or
# CI=true.
#
#   deploy/chaos.sh                         # 20 000 clients in the storm
#   CHAOS_STORM_CLIENTS=4000 deploy/chaos.sh
#   CHAOS_PHASES=cluster-master-kill,sentinel-failover deploy/chaos.sh
#       # phases: kill redis-restart redis-stall storm cluster-master-kill
#       #         cluster-master-kill-nowait sentinel-failover (default: all)
#
# Traffic stays on 127.0.0.1; every process it starts is killed at the end;
# it takes 5-8 minutes after the build on a 2-core machine (the failover
# phases about 40-46 s each).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/install-deps.sh redis-server redis-cli haproxy
export CHAOS=1
# The tests run fanout-bench, a workspace member of its own: cargo test builds only the bins of
# the package under test, so every binary is built first.
${CARGO:-cargo} build --release --bins
exec ${CARGO:-cargo} test --release --test it chaos -- --nocapture --test-threads=1
