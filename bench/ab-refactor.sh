#!/usr/bin/env bash
# One A/B run of fanout: the binaries in $1 (fanout, fanout-bench), a private redis-server and two
# nodes on loopback, fanout-bench at $RATE msg/s (default 1000) in rooms of 10 for 10 s; writes
# $2.json (fanout-bench's figures, with the nodes' and Redis' CPU), $2.txt (its summary) and
# $2.redis (Redis INFO commandstats). Run it for two builds, interleaved (docs/benchmarks.md).
set -euo pipefail
BIN=$1; OUT=$2; RATE=${RATE:-1000}
RP=17390; SECRET=s; KEY=k
redis-server --port $RP --save '' --appendonly no --notify-keyspace-events Ex --daemonize no >/dev/null 2>&1 & RPID=$!
sleep 0.5
PIDS=()
for n in 0 1; do
  env REDIS_URL=redis://127.0.0.1:$RP JWT_SECRET=$SECRET API_KEY=$KEY PORT=$((17400+n)) ADMIN_PORT=$((17410+n)) NODE_ID=n$n BIND_ADDR=127.0.0.1 RUST_LOG=warn $BIN/fanout >/dev/null 2>&1 & PIDS+=($!)
done
for p in 17400 17401; do for i in $(seq 50); do curl -sf http://127.0.0.1:$p/readyz >/dev/null && break; sleep 0.2; done; done
redis-cli -p $RP config resetstat >/dev/null
$BIN/fanout-bench --url http://127.0.0.1:17400,http://127.0.0.1:17401 --admin-url http://127.0.0.1:17410 --api-key $KEY --jwt-secret $SECRET \
  --clients 200 --room-size 10 --senders 40 --rate $RATE --warmup 2 --duration 10 --grace 2 --threads 1 \
  --watch-pid "${PIDS[0]},${PIDS[1]},$RPID" --out $OUT.json > $OUT.txt 2>/dev/null || true
redis-cli -p $RP info commandstats > $OUT.redis
kill ${PIDS[@]} $RPID 2>/dev/null; wait 2>/dev/null || true
