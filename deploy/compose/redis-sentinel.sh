#!/bin/sh
# A Sentinel setup in one container, for the `sentinel` profile of docker-compose.yml: a
# master (port 6379), its replica (6380) and three sentinels (26379-26381, quorum 2) that
# monitor it as "fanout". Everything announces the container's address. Data is not kept.
# Also runs outside Docker:
#   ANNOUNCE_IP=127.0.0.1 DATA_DIR=/tmp/rs REDIS_CONF=deploy/redis.conf \
#       deploy/compose/redis-sentinel.sh
set -eu

IP=${ANNOUNCE_IP:-$(hostname -i | awk '{print $1}')}
MASTER_PORT=${MASTER_PORT:-6379}
REPLICA_PORT=${REPLICA_PORT:-6380}
SENTINEL_BASE_PORT=${SENTINEL_BASE_PORT:-26379}
DATA=${DATA_DIR:-/tmp/redis-sentinel}
CONF=${REDIS_CONF:-/usr/local/etc/redis/redis.conf}

pids=""
stop() {
    # shellcheck disable=SC2086 # word splitting of the pid list is wanted
    kill $pids 2>/dev/null || true
    wait
    exit 0
}
trap stop TERM INT

wait_ping() {
    n=0
    until redis-cli -h "$IP" -p "$1" ping >/dev/null 2>&1; do
        n=$((n + 1))
        [ "$n" -lt 100 ] || { echo "redis-sentinel: port $1 did not start" >&2; stop; }
        sleep 0.1
    done
}

rm -rf "$DATA"
mkdir -p "$DATA/master" "$DATA/replica"
# Each server its own copy of the config: a sentinel makes a reconfigured server CONFIG
# REWRITE it.
cp "$CONF" "$DATA/master/redis.conf"
cp "$CONF" "$DATA/replica/redis.conf"
redis-server "$DATA/master/redis.conf" --port "$MASTER_PORT" --bind 0.0.0.0 \
    --protected-mode no --dir "$DATA/master" --replica-announce-ip "$IP" &
pids="$pids $!"
wait_ping "$MASTER_PORT"
redis-server "$DATA/replica/redis.conf" --port "$REPLICA_PORT" --bind 0.0.0.0 \
    --protected-mode no --dir "$DATA/replica" --replica-announce-ip "$IP" \
    --replicaof "$IP" "$MASTER_PORT" &
pids="$pids $!"
wait_ping "$REPLICA_PORT"
for k in 0 1 2; do
    p=$((SENTINEL_BASE_PORT + k))
    mkdir -p "$DATA/sentinel-$p"
    cat >"$DATA/sentinel-$p/sentinel.conf" <<EOF
port $p
bind 0.0.0.0
protected-mode no
dir $DATA/sentinel-$p
sentinel announce-ip $IP
sentinel monitor fanout $IP $MASTER_PORT 2
sentinel down-after-milliseconds fanout 2000
sentinel failover-timeout fanout 10000
sentinel parallel-syncs fanout 1
EOF
    redis-server "$DATA/sentinel-$p/sentinel.conf" --sentinel &
    pids="$pids $!"
    wait_ping "$p"
done
echo "redis-sentinel: master $IP:$MASTER_PORT, replica $IP:$REPLICA_PORT, sentinels on $IP:$SENTINEL_BASE_PORT-$((SENTINEL_BASE_PORT + 2))"
wait
