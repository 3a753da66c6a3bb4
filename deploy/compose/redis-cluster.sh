#!/bin/sh
# A Redis Cluster of 6 redis-server processes (3 masters, 3 replicas) in one container, for
# the `cluster` profile of docker-compose.yml. The nodes announce the container's address,
# so other containers reach every node at <address>:BASE_PORT+1..+6 (what CLUSTER SLOTS
# names). Data is not kept (a fresh cluster at every start). Also runs outside Docker:
#   ANNOUNCE_IP=127.0.0.1 BASE_PORT=7000 DATA_DIR=/tmp/rc REDIS_CONF=deploy/redis.conf \
#       deploy/compose/redis-cluster.sh
set -eu

IP=${ANNOUNCE_IP:-$(hostname -i | awk '{print $1}')}
BASE=${BASE_PORT:-7000}
DATA=${DATA_DIR:-/tmp/redis-cluster}
CONF=${REDIS_CONF:-/usr/local/etc/redis/redis.conf}

pids=""
stop() {
    # shellcheck disable=SC2086 # word splitting of the pid list is wanted
    kill $pids 2>/dev/null || true
    wait
    exit 0
}
trap stop TERM INT

rm -rf "$DATA"
nodes=""
for i in 1 2 3 4 5 6; do
    p=$((BASE + i))
    mkdir -p "$DATA/$p"
    # Each node its own copy of the config (a node may CONFIG REWRITE it).
    cp "$CONF" "$DATA/$p/redis.conf"
    redis-server "$DATA/$p/redis.conf" --port "$p" --bind 0.0.0.0 --protected-mode no \
        --dir "$DATA/$p" --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --cluster-announce-ip "$IP" &
    pids="$pids $!"
    nodes="$nodes $IP:$p"
done

for i in 1 2 3 4 5 6; do
    n=0
    until redis-cli -h "$IP" -p $((BASE + i)) ping >/dev/null 2>&1; do
        n=$((n + 1))
        [ "$n" -lt 100 ] || { echo "redis-cluster: node $((BASE + i)) did not start" >&2; stop; }
        sleep 0.1
    done
done
# shellcheck disable=SC2086 # one argument per node
redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes </dev/null
echo "redis-cluster: up on$nodes"
wait
