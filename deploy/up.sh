#!/usr/bin/env bash
# Start a local fanout cluster: Redis (one, a Redis Cluster or a Sentinel setup:
# REDIS=single|cluster|sentinel) + NODES gateway nodes + HAProxy
# (+ Prometheus with WITH_PROMETHEUS=1).
# Runs in the foreground; Ctrl-C stops everything (nodes, then HAProxy, then
# Redis, then Prometheus) and exits 0. Usually run as `make up` (e.g.
# `make up NODES=5`, `WITH_PROMETHEUS=1 make up`).
#
# Settings (environment variables, defaults in brackets):
#   NODES [3]            number of gateway nodes
#   NODE_BASE_PORT [3000] node i listens on NODE_BASE_PORT+i (3001, 3002, ...)
#   ADMIN_BASE_PORT [9100] node i's admin API on ADMIN_BASE_PORT+i (9101, ...)
#   REDIS [single]       single: one redis-server (REDIS_URL);
#                        cluster: a Redis Cluster of 3 masters + 3 replicas on
#                        127.0.0.1:REDIS_CLUSTER_BASE_PORT+1..+6 (REDIS_CLUSTER_NODES);
#                        sentinel: 1 master + 1 replica + 3 sentinels on
#                        REDIS_SENTINEL_BASE_PORT+0..+2 monitoring master "fanout"
#                        (REDIS_SENTINELS, REDIS_SENTINEL_MASTER). Cluster and sentinel
#                        data start empty at every run (RUN_DIR/redis-cluster,
#                        RUN_DIR/redis-sentinel). Not every feature works in cluster mode
#                        yet (docs/operations.md, "Redis Cluster and Sentinel").
#   REDIS_PORT [6379]    first port tried for Redis (6380, 6381... if taken); in
#                        sentinel mode the master's (the replica's is the next free one)
#   REDIS_CLUSTER_BASE_PORT [7000]  cluster nodes on +1..+6 (bus ports +10000 too)
#   REDIS_SENTINEL_BASE_PORT [26379]  the three sentinels on +0..+2
#   REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS  passed to the nodes when set
#   LB_PORT [8080]       HAProxy public port (what clients connect to)
#   STATS_PORT [8404]    HAProxy stats page (http://127.0.0.1:8404/)
#   BIND_ADDR [127.0.0.1] address the nodes and HAProxy listen on
#   JWT_SECRET [dev-secret-change-me]   API_KEY [dev-api-key]
#   RUST_LOG [info]      LOG_FORMAT [text]
#   RUN_DIR [.run]       logs, Redis data, generated haproxy.cfg, env file
#   READY_TIMEOUT [30]   seconds to wait for each node's /readyz
#   SKIP_BUILD [0]       1 = do not run `cargo build --release --bins`
#   FANOUT_BIN_DIR [${CARGO_TARGET_DIR:-target}/release]  where the binaries are
#   WITH_PROMETHEUS [0]  1 = also run Prometheus (Debian's `prometheus` package,
#                        installed if missing) as a child process, scraping every
#                        node's ADMIN_PORT/metrics and HAProxy's STATS_PORT/metrics
#                        every 5 s; config generated into RUN_DIR/prometheus.yml,
#                        data in RUN_DIR/prometheus/ (kept across runs); alert
#                        rules from deploy/prometheus-rules.yml
#   PROMETHEUS_PORT [9090]  where that Prometheus listens (127.0.0.1 only)
#   PROMETHEUS_RETENTION [2d]  how long it keeps samples
#   ADMIN_UI [1]         1 = turn on the Socket.IO Admin UI on the nodes and serve
#                        the official UI (npm @socket.io/admin-ui, installed with
#                        `npm ci` in deploy/admin-ui/) and the demo chat page
#                        (deploy/demo/) at UI_PORT; needs node and npm (installed
#                        with apt when missing; without them it is skipped)
#   ADMIN_UI_USERNAME [admin]  ADMIN_UI_PASSWORD [admin]  the Admin UI login
#                        (the nodes get the bcrypt hash of the password)
#   UI_PORT [8090]       where the Admin UI and the demo page are served
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

NODES=${NODES:-3}
NODE_BASE_PORT=${NODE_BASE_PORT:-3000}
ADMIN_BASE_PORT=${ADMIN_BASE_PORT:-9100}
REDIS=${REDIS:-single}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_CLUSTER_BASE_PORT=${REDIS_CLUSTER_BASE_PORT:-7000}
REDIS_SENTINEL_BASE_PORT=${REDIS_SENTINEL_BASE_PORT:-26379}
LB_PORT=${LB_PORT:-8080}
STATS_PORT=${STATS_PORT:-8404}
BIND_ADDR=${BIND_ADDR:-127.0.0.1}
JWT_SECRET=${JWT_SECRET:-dev-secret-change-me}
API_KEY=${API_KEY:-dev-api-key}
RUST_LOG=${RUST_LOG:-info}
LOG_FORMAT=${LOG_FORMAT:-text}
RUN_DIR=${RUN_DIR:-.run}
READY_TIMEOUT=${READY_TIMEOUT:-30}
SKIP_BUILD=${SKIP_BUILD:-0}
WITH_PROMETHEUS=${WITH_PROMETHEUS:-0}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
PROMETHEUS_RETENTION=${PROMETHEUS_RETENTION:-2d}
ADMIN_UI=${ADMIN_UI:-1}
ADMIN_UI_USERNAME=${ADMIN_UI_USERNAME:-admin}
ADMIN_UI_PASSWORD=${ADMIN_UI_PASSWORD:-admin}
UI_PORT=${UI_PORT:-8090}

case $RUN_DIR in /*) ;; *) RUN_DIR="$ROOT/$RUN_DIR" ;; esac
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN_DIR=${FANOUT_BIN_DIR:-$TARGET_DIR/release}

log() { printf '[up] %s\n' "$*"; }
die() { printf '[up] ERROR: %s\n' "$*" >&2; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in NODES NODE_BASE_PORT ADMIN_BASE_PORT REDIS_PORT REDIS_CLUSTER_BASE_PORT REDIS_SENTINEL_BASE_PORT LB_PORT STATS_PORT READY_TIMEOUT PROMETHEUS_PORT UI_PORT; do
    is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
done
((NODES >= 1 && NODES <= 99)) || die "NODES must be between 1 and 99 (got $NODES)"

case $REDIS in single | cluster | sentinel) ;; *) die "REDIS must be single, cluster or sentinel (got '$REDIS')" ;; esac
((REDIS_CLUSTER_BASE_PORT + 6 + 10000 <= 65535)) || die "REDIS_CLUSTER_BASE_PORT must leave room for 6 ports and their bus ports (+10000)"
((REDIS_SENTINEL_BASE_PORT + 2 <= 65535)) || die "REDIS_SENTINEL_BASE_PORT + 2 must be a port"
[[ $ADMIN_UI == 0 || $ADMIN_UI == 1 ]] || die "ADMIN_UI must be 0 or 1 (got '$ADMIN_UI')"
[[ $WITH_PROMETHEUS == 0 || $WITH_PROMETHEUS == 1 ]] || die "WITH_PROMETHEUS must be 0 or 1 (got '$WITH_PROMETHEUS')"
[[ $PROMETHEUS_RETENTION =~ ^[0-9]+(ms|s|m|h|d|w|y)$ ]] || die "PROMETHEUS_RETENTION must be a duration such as 2d or 12h (got '$PROMETHEUS_RETENTION')"

# Is something accepting TCP connections on 127.0.0.1:$1 ?
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ----------------------------------------------------------------------------
# Process bookkeeping and shutdown
# ----------------------------------------------------------------------------
NODE_PIDS=()
HAPROXY_PID=""
REDIS_PIDS=()
PROMETHEUS_PID=""
UI_PID=""
CLEANED_UP=0
LOCK_FILE="$RUN_DIR/up.pid"
PIDS_FILE="$RUN_DIR/pids" # "<name> <pid>" per child, to clean up after a crash

# Start "$@" in the background in its own session, so that Ctrl-C in the
# terminal reaches only this script, which then stops the children in order.
# Output goes to the file $LOG. Sets SPAWNED_PID.
spawn() {
    local logfile=$1
    shift
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$logfile" 2>&1 </dev/null &
    else
        "$@" >>"$logfile" 2>&1 </dev/null &
    fi
    SPAWNED_PID=$!
    echo "$(basename "$1") $SPAWNED_PID" >>"$PIDS_FILE"
}

# stop_pids SIGNAL GRACE_SECS NAME PID... : signal, wait up to GRACE, then KILL.
stop_pids() {
    local sig=$1 grace=$2 name=$3
    shift 3
    local pids=() p
    for p in "$@"; do
        [[ -n $p ]] && kill -0 "$p" 2>/dev/null && pids+=("$p")
    done
    ((${#pids[@]})) || return 0
    log "stopping $name (SIG$sig) ..."
    kill -s "$sig" "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + grace)) alive
    while :; do
        alive=()
        for p in "${pids[@]}"; do
            kill -0 "$p" 2>/dev/null && alive+=("$p")
        done
        ((${#alive[@]})) || break
        if ((SECONDS >= deadline)); then
            log "$name still running after ${grace}s, sending SIGKILL to ${alive[*]}"
            kill -s KILL "${alive[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

cleanup() {
    ((CLEANED_UP)) && return 0
    CLEANED_UP=1
    trap '' INT TERM
    stop_pids TERM 5 "ui server" "$UI_PID"
    stop_pids TERM 20 "nodes" "${NODE_PIDS[@]}"
    stop_pids TERM 5 "haproxy" "$HAPROXY_PID"
    stop_pids TERM 10 "redis" "${REDIS_PIDS[@]}"
    # Last, so that it records the nodes draining. SIGTERM closes its TSDB cleanly.
    stop_pids TERM 15 "prometheus" "$PROMETHEUS_PID"
    rm -f "$LOCK_FILE" "$PIDS_FILE"
}
on_signal() {
    echo
    log "shutting down ..."
    cleanup
    log "all stopped (logs are in $RUN_DIR)"
    exit 0
}
on_exit() {
    local rc=$?
    if ((!CLEANED_UP)) && { ((${#NODE_PIDS[@]})) || [[ -n $HAPROXY_PID${REDIS_PIDS[*]}$PROMETHEUS_PID$UI_PID ]]; }; then
        cleanup
    fi
    exit "$rc"
}
trap on_signal INT TERM
trap on_exit EXIT

# ----------------------------------------------------------------------------
# 1. Dependencies, build, run dir
# ----------------------------------------------------------------------------
mkdir -p "$RUN_DIR"
if [[ -f $LOCK_FILE ]]; then
    other=$(cat "$LOCK_FILE" 2>/dev/null || true)
    if [[ -n $other ]] && kill -0 "$other" 2>/dev/null; then
        die "a cluster started by deploy/up.sh (pid $other) is already running with RUN_DIR=$RUN_DIR; stop it first (Ctrl-C in its terminal or: kill $other)"
    fi
    rm -f "$LOCK_FILE"
fi
# A previous up.sh that was killed hard (SIGKILL, closed terminal...) may have
# left its children running: stop those (only pids it recorded, and only if
# they still run one of our programs).
if [[ -f $PIDS_FILE ]]; then
    stale=()
    while read -r _ pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        kill -0 "$pid" 2>/dev/null || continue
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        case $cmd in *redis-server* | *haproxy* | *fanout* | *prometheus* | *serve.mjs*) stale+=("$pid") ;; esac
    done <"$PIDS_FILE"
    if ((${#stale[@]})); then
        log "stopping leftovers of a previous run that did not shut down: pids ${stale[*]}"
        kill -s TERM "${stale[@]}" 2>/dev/null || true
        for _ in $(seq 1 50); do
            alive=()
            for pid in "${stale[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
            ((${#alive[@]})) || break
            sleep 0.2
        done
        ((${#alive[@]})) && kill -s KILL "${alive[@]}" 2>/dev/null
    fi
    rm -f "$PIDS_FILE"
fi
echo $$ >"$LOCK_FILE"

"$ROOT/deploy/install-deps.sh" redis-server haproxy curl
if [[ $REDIS == cluster ]]; then
    "$ROOT/deploy/install-deps.sh" redis-cli # redis-cli --cluster create
fi
if [[ $WITH_PROMETHEUS == 1 ]]; then
    "$ROOT/deploy/install-deps.sh" prometheus ||
        die "WITH_PROMETHEUS=1 needs the prometheus binary (Debian package 'prometheus'); install it or run without WITH_PROMETHEUS"
fi

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release --bins"
    cargo build --release --bins
fi
# The Admin UI: its npm package (the built UI, and bcryptjs to hash the password) and
# the demo page's socket.io client, from the lockfile; no CDN at run time.
ADMIN_UI_HASH=""
if [[ $ADMIN_UI == 1 ]]; then
    if ! "$ROOT/deploy/install-deps.sh" node npm; then
        log "WARNING: node/npm unavailable: the Admin UI and the demo page are skipped (ADMIN_UI=0)"
        ADMIN_UI=0
    fi
fi
if [[ $ADMIN_UI == 1 ]]; then
    log "npm ci in deploy/admin-ui (log: $RUN_DIR/npm.log)"
    if ! (cd "$ROOT/deploy/admin-ui" && npm ci --no-audit --no-fund >"$RUN_DIR/npm.log" 2>&1); then
        tail -n 20 "$RUN_DIR/npm.log" >&2 || true
        die "npm ci in deploy/admin-ui failed (log above); run with ADMIN_UI=0 to skip the Admin UI"
    fi
    ADMIN_UI_HASH=$(cd "$ROOT/deploy/admin-ui" &&
        node -e 'console.log(require("bcryptjs").hashSync(process.argv[1], 10))' "$ADMIN_UI_PASSWORD") ||
        die "could not hash ADMIN_UI_PASSWORD with bcryptjs"
fi
FANOUT_BIN="$BIN_DIR/fanout"
TOKEN_BIN="$BIN_DIR/fanout-token"
[[ -x $FANOUT_BIN ]] || die "node binary not found: $FANOUT_BIN (build with: cargo build --release --bins)"

mkdir -p "$RUN_DIR/redis"
# Keep the previous run's logs around as *.log.prev.
for f in "$RUN_DIR"/*.log; do
    [[ -e $f ]] && mv -f "$f" "$f.prev"
done

# ----------------------------------------------------------------------------
# 2. Ports
# ----------------------------------------------------------------------------
node_port() { echo $((NODE_BASE_PORT + $1)); }
admin_port() { echo $((ADMIN_BASE_PORT + $1)); }

busy=()
for ((i = 1; i <= NODES; i++)); do
    port_in_use "$(node_port "$i")" && busy+=("$(node_port "$i") (node-$i)")
    port_in_use "$(admin_port "$i")" && busy+=("$(admin_port "$i") (node-$i admin)")
done
port_in_use "$LB_PORT" && busy+=("$LB_PORT (LB_PORT)")
port_in_use "$STATS_PORT" && busy+=("$STATS_PORT (STATS_PORT)")
if [[ $ADMIN_UI == 1 ]] && port_in_use "$UI_PORT"; then
    busy+=("$UI_PORT (UI_PORT)")
fi
if [[ $WITH_PROMETHEUS == 1 ]] && port_in_use "$PROMETHEUS_PORT"; then
    busy+=("$PROMETHEUS_PORT (PROMETHEUS_PORT; a system Prometheus? systemctl stop prometheus)")
fi
if ((${#busy[@]})); then
    die "ports already in use: ${busy[*]}; free them or choose others (NODE_BASE_PORT, ADMIN_BASE_PORT, LB_PORT, STATS_PORT, PROMETHEUS_PORT)"
fi

# next_free_port PORT: PORT or the first free one after it (up to 50 tries).
next_free_port() {
    local p=$1 tries
    for ((tries = 0; tries < 50; tries++)); do
        if ! port_in_use "$p"; then
            echo "$p"
            return 0
        fi
        p=$((p + 1))
    done
    return 1
}

requested_redis_port=$REDIS_PORT
REDIS_PORT=$(next_free_port "$REDIS_PORT") || die "no free port for Redis in $requested_redis_port..$((requested_redis_port + 49))"
if ((REDIS_PORT != requested_redis_port)); then
    log "port $requested_redis_port is already taken by another process; using $REDIS_PORT for Redis instead"
fi
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
CLUSTER_PORTS=()
SENTINEL_PORTS=()
REPLICA_PORT=""
if [[ $REDIS == cluster ]]; then
    for ((k = 1; k <= 6; k++)); do
        p=$((REDIS_CLUSTER_BASE_PORT + k))
        port_in_use "$p" && die "port $p (cluster node $k) is in use; choose another REDIS_CLUSTER_BASE_PORT"
        port_in_use "$((p + 10000))" && die "port $((p + 10000)) (bus of cluster node $k) is in use; choose another REDIS_CLUSTER_BASE_PORT"
        CLUSTER_PORTS+=("$p")
    done
elif [[ $REDIS == sentinel ]]; then
    REPLICA_PORT=$(next_free_port "$((REDIS_PORT + 1))") || die "no free port for the Redis replica"
    for ((k = 0; k < 3; k++)); do
        p=$((REDIS_SENTINEL_BASE_PORT + k))
        port_in_use "$p" && die "port $p (sentinel $((k + 1))) is in use; choose another REDIS_SENTINEL_BASE_PORT"
        SENTINEL_PORTS+=("$p")
    done
fi

# ----------------------------------------------------------------------------
# 3. Redis
# ----------------------------------------------------------------------------
# redis_cmd PORT WORD...: one command in plain RESP over bash's /dev/tcp (no redis-cli
# needed); prints the reply (the text of a bulk reply) without CRs.
redis_cmd() {
    local port=$1 line body w
    shift
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    {
        printf '*%d\r\n' "$#"
        for w in "$@"; do printf '$%d\r\n%s\r\n' "${#w}" "$w"; done
    } >&3
    if ! IFS= read -r -t 2 line <&3; then
        exec 3>&- 3<&-
        return 1
    fi
    line=${line%$'\r'}
    if [[ $line =~ ^\$([0-9]+)$ ]]; then
        IFS= read -r -t 2 -N "$((BASH_REMATCH[1] + 2))" body <&3 || true
        printf '%s' "${body//$'\r'/}"
    else
        printf '%s\n' "$line"
    fi
    exec 3>&- 3<&-
}
redis_ping() { [[ $(redis_cmd "$1" PING 2>/dev/null) == "+PONG"* ]]; }

# wait_redis NAME PORT PID LOG: until it answers PING (15 s); dies when it exits first.
wait_redis() {
    local name=$1 port=$2 pid=$3 logfile=$4
    local deadline=$((SECONDS + 15))
    until redis_ping "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during startup (log above: $logfile)"
        fi
        ((SECONDS < deadline)) || die "$name did not answer PING on $port within 15s (see $logfile)"
        sleep 0.2
    done
}

# wait_until SECS WHAT COMMAND...: until COMMAND succeeds, or die after SECS.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || die "$what not reached within ${secs}s"
        sleep 0.3
    done
}

# Cluster and sentinel instances each start from their own copy of deploy/redis.conf: a
# sentinel reconfiguring an instance (a failover) makes it CONFIG REWRITE its config file.
own_conf() {
    mkdir -p "$(dirname "$1")"
    cp "$ROOT/deploy/redis.conf" "$1"
    echo "$1"
}

case $REDIS in
single)
    log "starting redis-server on 127.0.0.1:$REDIS_PORT (data: $RUN_DIR/redis, log: $RUN_DIR/redis.log)"
    spawn "$RUN_DIR/redis.log" redis-server "$ROOT/deploy/redis.conf" \
        --port "$REDIS_PORT" --dir "$RUN_DIR/redis"
    REDIS_PIDS+=("$SPAWNED_PID")
    wait_redis redis-server "$REDIS_PORT" "$SPAWNED_PID" "$RUN_DIR/redis.log"
    REDIS_ENV=(REDIS_URL="$REDIS_URL")
    REDIS_SHOWN=$REDIS_URL
    ;;
cluster)
    rm -rf "$RUN_DIR/redis-cluster"
    for p in "${CLUSTER_PORTS[@]}"; do
        mkdir -p "$RUN_DIR/redis-cluster/$p"
        log "starting cluster node redis-server on 127.0.0.1:$p (log: $RUN_DIR/redis-$p.log)"
        spawn "$RUN_DIR/redis-$p.log" redis-server "$(own_conf "$RUN_DIR/redis-cluster/$p/redis.conf")" \
            --port "$p" --dir "$RUN_DIR/redis-cluster/$p" --appendonly no \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
        REDIS_PIDS+=("$SPAWNED_PID")
    done
    for ((k = 0; k < 6; k++)); do
        wait_redis "cluster node" "${CLUSTER_PORTS[k]}" "${REDIS_PIDS[k]}" "$RUN_DIR/redis-${CLUSTER_PORTS[k]}.log"
    done
    seeds=()
    for p in "${CLUSTER_PORTS[@]}"; do seeds+=("127.0.0.1:$p"); done
    log "redis-cli --cluster create ${seeds[*]} --cluster-replicas 1 (log: $RUN_DIR/redis-cluster-create.log)"
    if ! redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes \
        >"$RUN_DIR/redis-cluster-create.log" 2>&1 </dev/null; then
        tail -n 20 "$RUN_DIR/redis-cluster-create.log" >&2
        die "redis-cli --cluster create failed (log above)"
    fi
    cluster_ok() {
        local p
        for p in "${CLUSTER_PORTS[@]}"; do
            [[ $(redis_cmd "$p" CLUSTER INFO 2>/dev/null) == *cluster_state:ok* ]] || return 1
        done
    }
    wait_until 20 "cluster_state:ok on every cluster node" cluster_ok
    log "redis cluster is ok (3 masters, 3 replicas)"
    REDIS_CLUSTER_NODES=$(
        IFS=,
        echo "${seeds[*]}"
    )
    REDIS_ENV=(REDIS_CLUSTER_NODES="$REDIS_CLUSTER_NODES")
    REDIS_SHOWN="Redis Cluster $REDIS_CLUSTER_NODES"
    ;;
sentinel)
    rm -rf "$RUN_DIR/redis-sentinel"
    mkdir -p "$RUN_DIR/redis-sentinel/master" "$RUN_DIR/redis-sentinel/replica"
    log "starting the Redis master on 127.0.0.1:$REDIS_PORT and its replica on 127.0.0.1:$REPLICA_PORT"
    spawn "$RUN_DIR/redis-master.log" redis-server "$(own_conf "$RUN_DIR/redis-sentinel/master/redis.conf")" \
        --port "$REDIS_PORT" --dir "$RUN_DIR/redis-sentinel/master"
    REDIS_PIDS+=("$SPAWNED_PID")
    wait_redis "redis master" "$REDIS_PORT" "$SPAWNED_PID" "$RUN_DIR/redis-master.log"
    spawn "$RUN_DIR/redis-replica.log" redis-server "$(own_conf "$RUN_DIR/redis-sentinel/replica/redis.conf")" \
        --port "$REPLICA_PORT" --dir "$RUN_DIR/redis-sentinel/replica" \
        --replicaof 127.0.0.1 "$REDIS_PORT"
    REDIS_PIDS+=("$SPAWNED_PID")
    wait_redis "redis replica" "$REPLICA_PORT" "$SPAWNED_PID" "$RUN_DIR/redis-replica.log"
    for p in "${SENTINEL_PORTS[@]}"; do
        mkdir -p "$RUN_DIR/redis-sentinel/sentinel-$p"
        conf="$RUN_DIR/redis-sentinel/sentinel-$p/sentinel.conf"
        cat >"$conf" <<EOF
# GENERATED by deploy/up.sh (the sentinel rewrites it as it learns the topology).
port $p
bind 127.0.0.1
dir $RUN_DIR/redis-sentinel/sentinel-$p
sentinel monitor fanout 127.0.0.1 $REDIS_PORT 2
sentinel down-after-milliseconds fanout 2000
sentinel failover-timeout fanout 10000
sentinel parallel-syncs fanout 1
EOF
        log "starting sentinel on 127.0.0.1:$p (log: $RUN_DIR/sentinel-$p.log)"
        spawn "$RUN_DIR/sentinel-$p.log" redis-server "$conf" --sentinel
        REDIS_PIDS+=("$SPAWNED_PID")
        wait_redis sentinel "$p" "$SPAWNED_PID" "$RUN_DIR/sentinel-$p.log"
    done
    replica_linked() { [[ $(redis_cmd "$REPLICA_PORT" INFO replication 2>/dev/null) == *master_link_status:up* ]]; }
    wait_until 20 "the replica's link to the master" replica_linked
    sentinels=()
    for p in "${SENTINEL_PORTS[@]}"; do sentinels+=("127.0.0.1:$p"); done
    REDIS_SENTINELS=$(
        IFS=,
        echo "${sentinels[*]}"
    )
    REDIS_ENV=(REDIS_SENTINELS="$REDIS_SENTINELS" REDIS_SENTINEL_MASTER=fanout)
    REDIS_SHOWN="Sentinel $REDIS_SENTINELS (master \"fanout\": 127.0.0.1:$REDIS_PORT, replica 127.0.0.1:$REPLICA_PORT)"
    ;;
esac
for v in REDIS_WAIT_REPLICAS REDIS_WAIT_TIMEOUT_MS; do
    if [[ -n ${!v:-} ]]; then REDIS_ENV+=("$v=${!v}"); fi
done

# ----------------------------------------------------------------------------
# 4. Nodes
# ----------------------------------------------------------------------------
# The browser pages are served from UI_PORT, another origin: long-polling from them needs
# CORS with credentials for exactly that origin (websocket needs none).
ADMIN_ENV=()
if [[ $ADMIN_UI == 1 ]]; then
    ADMIN_ENV=(ADMIN_UI_USERNAME="$ADMIN_UI_USERNAME" ADMIN_UI_PASSWORD_HASH="$ADMIN_UI_HASH"
        CORS_ORIGINS="http://127.0.0.1:$UI_PORT,http://localhost:$UI_PORT")
fi
for ((i = 1; i <= NODES; i++)); do
    log "starting node-$i on $BIND_ADDR:$(node_port "$i") (admin $(admin_port "$i"), log: $RUN_DIR/node-$i.log)"
    spawn "$RUN_DIR/node-$i.log" env -u REDIS_URL -u REDIS_HOST -u REDIS_PORT -u REDIS_DB \
        -u REDIS_CLUSTER_NODES -u REDIS_SENTINELS -u REDIS_SENTINEL_MASTER \
        PORT="$(node_port "$i")" \
        ADMIN_PORT="$(admin_port "$i")" \
        BIND_ADDR="$BIND_ADDR" \
        "${REDIS_ENV[@]}" \
        JWT_SECRET="$JWT_SECRET" \
        API_KEY="$API_KEY" \
        NODE_ID="node-$i" \
        RUST_LOG="$RUST_LOG" \
        LOG_FORMAT="$LOG_FORMAT" \
        "${ADMIN_ENV[@]}" \
        "$FANOUT_BIN"
    NODE_PIDS+=("$SPAWNED_PID")
done

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

# wait_http NAME PID URL LOG SECS: until GET URL answers 200; dies (showing the end of LOG) when
# the process PID exits first or SECS pass.
wait_http() {
    local name=$1 pid=$2 url=$3 logfile=$4 secs=$5
    local deadline=$((SECONDS + secs))
    until [[ $(http_status "$url") == 200 ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during startup (log above: $logfile)"
        fi
        ((SECONDS < deadline)) || die "GET $url ($name) is not 200 after ${secs}s (see $logfile)"
        sleep 0.3
    done
}

fail_node() {
    local i=$1 why=$2
    {
        echo "----- last 30 lines of $RUN_DIR/node-$i.log -----"
        tail -n 30 "$RUN_DIR/node-$i.log" 2>/dev/null || true
        echo "-----"
    } >&2
    die "node-$i $why"
}

READY_PATH=/readyz
start_time=$SECONDS
for ((i = 1; i <= NODES; i++)); do
    url="http://127.0.0.1:$(node_port "$i")$READY_PATH"
    pid=${NODE_PIDS[i - 1]}
    while :; do
        code=$(http_status "$url")
        [[ $code == 200 ]] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            fail_node "$i" "exited during startup (exit status $rc)"
        fi
        if ((SECONDS - start_time >= READY_TIMEOUT)); then
            fail_node "$i" "not ready after ${READY_TIMEOUT}s: GET $url -> ${code:-no answer}"
        fi
        sleep 0.3
    done
    log "node-$i is ready"
done

# ----------------------------------------------------------------------------
# 5. HAProxy (config = deploy/haproxy.cfg + generated server lines)
# ----------------------------------------------------------------------------
HAPROXY_CFG="$RUN_DIR/haproxy.cfg"
{
    echo "# GENERATED by deploy/up.sh -- do not edit; edit deploy/haproxy.cfg instead."
    cat "$ROOT/deploy/haproxy.cfg"
    for ((i = 1; i <= NODES; i++)); do
        echo "    server node-$i 127.0.0.1:$(node_port "$i") cookie node-$i"
    done
} >"$HAPROXY_CFG"

export LB_PORT LB_BIND_ADDR="$BIND_ADDR" STATS_PORT STATS_BIND_ADDR=127.0.0.1
unset FANOUT_DNS_NAME
haproxy -c -q -f "$HAPROXY_CFG" || die "generated $HAPROXY_CFG is invalid (see above)"
log "starting haproxy on $BIND_ADDR:$LB_PORT (stats 127.0.0.1:$STATS_PORT, log: $RUN_DIR/haproxy.log)"
# -db: stay in the foreground (we supervise it).
spawn "$RUN_DIR/haproxy.log" haproxy -db -f "$HAPROXY_CFG"
HAPROXY_PID=$SPAWNED_PID

if [[ $REDIS == cluster ]]; then
    wait_http haproxy "$HAPROXY_PID" "http://127.0.0.1:$STATS_PORT/" "$RUN_DIR/haproxy.log" 15
else
    wait_http haproxy "$HAPROXY_PID" "http://127.0.0.1:$LB_PORT/readyz" "$RUN_DIR/haproxy.log" 15
fi

# ----------------------------------------------------------------------------
# 5b. Prometheus (WITH_PROMETHEUS=1): a generated config, data in the run dir
# ----------------------------------------------------------------------------
PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT"
if [[ $WITH_PROMETHEUS == 1 ]]; then
    # The nodes answer on 127.0.0.1 unless BIND_ADDR names another address.
    case $BIND_ADDR in 0.0.0.0 | :: | 127.0.0.1) scrape_host=127.0.0.1 ;; *) scrape_host=$BIND_ADDR ;; esac
    PROMETHEUS_CFG="$RUN_DIR/prometheus.yml"
    {
        echo "# GENERATED by deploy/up.sh -- do not edit (the compose stack's is deploy/prometheus.yml)."
        echo "# Each node is one target whose instance label is its node id: what the per-node"
        echo "# panels of grafana/dashboards/fanout.json group by and show."
        cat <<EOF
global:
  scrape_interval: 5s
  scrape_timeout: 4s
  evaluation_interval: 15s

rule_files:
  - "$ROOT/deploy/prometheus-rules.yml"

scrape_configs:
  - job_name: fanout
    metrics_path: /metrics
    static_configs:
EOF
        for ((i = 1; i <= NODES; i++)); do
            echo "      - targets: [\"$scrape_host:$(admin_port "$i")\"]"
            echo "        labels: {instance: node-$i}"
        done
        cat <<EOF

  # HAProxy's built-in exporter on its stats frontend (deploy/haproxy.cfg).
  - job_name: haproxy
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:$STATS_PORT"]
        labels: {instance: haproxy}

  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PROMETHEUS_PORT"]
        labels: {instance: prometheus}
EOF
    } >"$PROMETHEUS_CFG"
    if command -v promtool >/dev/null 2>&1; then
        promtool check config "$PROMETHEUS_CFG" >/dev/null ||
            die "generated $PROMETHEUS_CFG is invalid (see: promtool check config $PROMETHEUS_CFG)"
    fi
    mkdir -p "$RUN_DIR/prometheus"
    log "starting prometheus on 127.0.0.1:$PROMETHEUS_PORT (config: $PROMETHEUS_CFG, data: $RUN_DIR/prometheus, log: $RUN_DIR/prometheus.log)"
    spawn "$RUN_DIR/prometheus.log" prometheus \
        --config.file="$PROMETHEUS_CFG" \
        --storage.tsdb.path="$RUN_DIR/prometheus" \
        --storage.tsdb.retention.time="$PROMETHEUS_RETENTION" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
    PROMETHEUS_PID=$SPAWNED_PID

    wait_http prometheus "$PROMETHEUS_PID" "$PROMETHEUS_URL/-/ready" "$RUN_DIR/prometheus.log" 30
    log "prometheus is ready"
fi

# ----------------------------------------------------------------------------
# 5c. Admin UI and demo page (ADMIN_UI=1): a static server on UI_PORT
# ----------------------------------------------------------------------------
UI_URL="http://127.0.0.1:$UI_PORT"
if [[ $ADMIN_UI == 1 ]]; then
    # The demo chat and its users' tokens (the page mints nothing).
    curl -s -o /dev/null --max-time 5 -X POST -H "Authorization: Bearer $API_KEY" \
        -H 'content-type: application/json' \
        -d '{"chatId":"general","members":["alice","bob","carol"]}' \
        "http://127.0.0.1:$(admin_port 1)/api/v1/chats" || log "WARNING: could not create the demo chat"
    demo_token() { "$TOKEN_BIN" --secret "$JWT_SECRET" --sub "$1" --ttl-secs 86400; }
    {
        printf '{"url":"http://127.0.0.1:%s","chatId":"general","users":{' "$LB_PORT"
        printf '"alice":"%s","bob":"%s","carol":"%s"' "$(demo_token alice)" "$(demo_token bob)" "$(demo_token carol)"
        printf '}}\n'
    } >"$RUN_DIR/demo.json" || die "could not mint the demo tokens with $TOKEN_BIN"
    log "serving the Admin UI and the demo page on 127.0.0.1:$UI_PORT (log: $RUN_DIR/ui.log)"
    spawn "$RUN_DIR/ui.log" env UI_PORT="$UI_PORT" UI_BIND=127.0.0.1 DEMO_CONFIG="$RUN_DIR/demo.json" \
        node "$ROOT/deploy/admin-ui/serve.mjs"
    UI_PID=$SPAWNED_PID
    wait_http "the UI server" "$UI_PID" "$UI_URL/demo/" "$RUN_DIR/ui.log" 15
fi

# ----------------------------------------------------------------------------
# 6. Tell the user how to use it
# ----------------------------------------------------------------------------
printf -v Q_SECRET '%q' "$JWT_SECRET"
PROM_LOG_HINT=""
[[ $WITH_PROMETHEUS == 1 ]] && PROM_LOG_HINT=",prometheus"
if [[ $BIN_DIR == "$ROOT/target/release" ]]; then
    TOKEN_CMD="target/release/fanout-token"
else
    TOKEN_CMD=$TOKEN_BIN
fi
mint() {
    if [[ -x $TOKEN_BIN ]]; then
        "$TOKEN_BIN" --secret "$JWT_SECRET" --sub "$1" --ttl-secs 86400 2>/dev/null || echo "(fanout-token failed)"
    else
        echo "(fanout-token not built: $TOKEN_BIN)"
    fi
}
TOKEN_ALICE=$(mint alice)
TOKEN_BOB=$(mint bob)
ADMIN_URL="http://127.0.0.1:$(admin_port 1)"

# Same values for other shells: `source .run/env`
{
    printf 'export API_KEY=%q\n' "$API_KEY"
    printf 'export JWT_SECRET=%q\n' "$JWT_SECRET"
    printf 'export FANOUT_URL=%q\n' "http://127.0.0.1:$LB_PORT"
    printf 'export FANOUT_ADMIN_URL=%q\n' "$ADMIN_URL"
    for kv in "${REDIS_ENV[@]}"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
    if [[ $WITH_PROMETHEUS == 1 ]]; then
        printf 'export PROMETHEUS_URL=%q\n' "$PROMETHEUS_URL"
    fi
    printf 'export TOKEN_ALICE=%q\n' "$TOKEN_ALICE"
    printf 'export TOKEN_BOB=%q\n' "$TOKEN_BOB"
} >"$RUN_DIR/env"

cat <<EOF

========================================================================
 fanout local cluster is up ($NODES node(s))

 Client URL (Socket.IO via HAProxy):  http://127.0.0.1:$LB_PORT   (path /socket.io/)
 HAProxy stats:                       http://127.0.0.1:$STATS_PORT/
 Redis:                               $REDIS_SHOWN
EOF
if [[ $WITH_PROMETHEUS == 1 ]]; then
    cat <<EOF
 Prometheus:                          $PROMETHEUS_URL   (targets: $PROMETHEUS_URL/targets)
   scrapes node-1..node-$NODES (label instance="node-N") and haproxy every 5 s
   config $RUN_DIR/prometheus.yml; dashboard without Grafana: tools/dashboard-snapshot/snapshot.sh
EOF
fi
if [[ $ADMIN_UI == 1 ]]; then
    cat <<EOF

 See it:
   Demo chat (open both):  $UI_URL/demo/#alice   and   $UI_URL/demo/#bob
   Socket.IO Admin UI:     $UI_URL/admin-ui/
     Server URL: http://127.0.0.1:$LB_PORT   (namespace /admin, path /socket.io)
     Username: $ADMIN_UI_USERNAME   Password: $ADMIN_UI_PASSWORD

EOF
fi
for ((i = 1; i <= NODES; i++)); do
    printf ' node-%-3s public http://127.0.0.1:%s   admin http://127.0.0.1:%s  (metrics: /metrics)\n' \
        "$i" "$(node_port "$i")" "$(admin_port "$i")"
done
cat <<EOF

 API key:     $API_KEY
 JWT secret:  $JWT_SECRET

 Mint a token for a user:
   $TOKEN_CMD --secret $Q_SECRET --sub <userId> [--ttl-secs 3600] [--role <roleContextId>]

 Ready-made tokens (valid 24 h):
   alice: $TOKEN_ALICE
   bob:   $TOKEN_BOB

 Create a chat:
   curl -X POST -H "Authorization: Bearer $API_KEY" -H 'content-type: application/json' \\
        -d '{"chatId":"general","members":["alice","bob"]}' $ADMIN_URL/api/v1/chats

 The values above are also in $RUN_DIR/env (source it in another shell).
 Logs: $RUN_DIR/{redis,haproxy,node-N$PROM_LOG_HINT}.log      Stop: Ctrl-C
========================================================================

EOF

# ----------------------------------------------------------------------------
# 7. Supervise until Ctrl-C. A child that dies is reported, the rest keep
#    running (killing a node on purpose to watch failover is a valid use).
# ----------------------------------------------------------------------------
declare -A REPORTED=()
report_if_dead() {
    local name=$1 pid=$2 logfile=$3 rc
    [[ -n $pid && -z ${REPORTED[$name]:-} ]] || return 0
    kill -0 "$pid" 2>/dev/null && return 0
    wait "$pid" 2>/dev/null && rc=0 || rc=$?
    REPORTED[$name]=1
    log "WARNING: $name (pid $pid) exited with status $rc; see $logfile"
}
while :; do
    for ((i = 1; i <= NODES; i++)); do
        report_if_dead "node-$i" "${NODE_PIDS[i - 1]}" "$RUN_DIR/node-$i.log"
    done
    report_if_dead haproxy "$HAPROXY_PID" "$RUN_DIR/haproxy.log"
    for ((k = 0; k < ${#REDIS_PIDS[@]}; k++)); do
        report_if_dead "redis process $((k + 1))" "${REDIS_PIDS[k]}" "$RUN_DIR/redis*.log, sentinel*.log"
    done
    report_if_dead prometheus "$PROMETHEUS_PID" "$RUN_DIR/prometheus.log"
    report_if_dead "ui server" "$UI_PID" "$RUN_DIR/ui.log"
    sleep 1 &
    wait $! || true
done
