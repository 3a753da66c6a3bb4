#!/usr/bin/env bash
# Redis modes benchmark (issue 18): the same load on one Redis master and on a Redis Cluster of
# 3 masters, with and without REDIS_WAIT_REPLICAS (WAIT 1 before a chat:send is ACKed).
#
#   MODE=cluster WAIT_REPLICAS=1 RATE=1000 SECS=10 bench/redis-modes.sh
#
# Starts its own Redis (loopback, free ports, no persistence, notify-keyspace-events Ex):
#
#   MODE=single   one master + one replica (--replicaof), so that WAIT 1 can be confirmed;
#                 the nodes get REDIS_URL=<master>;
#   MODE=cluster  6 redis-servers (--cluster-enabled, bus port chosen free too), made into
#                 3 masters + 3 replicas by `redis-cli --cluster create --cluster-replicas 1`
#                 as deploy/up.sh does; the nodes get REDIS_CLUSTER_NODES=<all six>;
#
# waits until every replica's link is up, starts NODES fanout release nodes (clients spread
# round-robin over all of them by fanout-bench; a room holds ROOM_SIZE consecutive clients), then
# runs fanout-bench at RATE msg/s. Once its progress line shows the measured phase: CONFIG
# RESETSTAT on every Redis, snapshot of INFO everything of every Redis (masters and replicas),
# again SECS - 1.5 s later (the window lies inside the sending). Messages in the window =
# fanout-bench's ACCEPTED measured sends per second x window length. Right after the window
# (clients still connected, rooms kept with --keep-rooms): per master DBSIZE, keys by kind from
# SCAN (chat = fanout:{chat:*, user = user:{*, presence = presence:user:/presence:state:,
# presence deadlines = presence:deadlines:{pd<n>}, other), and the (shard) pub/sub channels
# (PUBSUB SHARDCHANNELS on a cluster, PUBSUB CHANNELS on one Redis).
#
# Figures, per master and summed: Redis CPU (used_cpu_sys + used_cpu_user delta) per accepted
# message (µs) and in % of a core, commandstats calls and usec per message (a script's nested
# commands appear under their own name as well: the "all commands" sum counts them twice), keys
# by kind, channels; skew = max / mean over the masters of each of those; replicas' CPU too.
# From fanout-bench's JSON: accepted per second, ACK latency p50/p99, delivery p50/p99 at the
# client's socket, lost / duplicated / nacked. The nodes' WARN/ERROR log lines are counted and
# the first distinct ones kept (cluster-mode errors show there).
#
# Environment (defaults in brackets):
#   MODE [single]  single | cluster      WAIT_REPLICAS [0]  REDIS_WAIT_REPLICAS of every node
#   WAIT_TIMEOUT_MS [1000]  REDIS_WAIT_TIMEOUT_MS
#   NODES [2]  RATE [1000] msg/s  SECS [10] measured seconds  WARMUP [2]  GRACE [2]
#   CLIENTS [200]  ROOM_SIZE [10]  SENDERS [40]  PAYLOAD [100] bytes
#   SETTLE [3] s after the last node is ready
#   NODE_THREADS [1]  tokio workers per node    GEN_THREADS [1]  fanout-bench worker threads
#   NODE_ENV  extra "K=V K=V" for every node
#   FANOUT_BIN_DIR [target/release]  holds fanout and fanout-bench (cargo build --release --bins)
#   OUT [bench/results/redis-modes/<mode>-w<wait>-r<rate>-<utc time>.json]  the result file
#   KEEP [0]  1 = keep the work dir (node and Redis logs, fanout-bench's own JSON)
#   QUIET_PCT [30]  QUIET_WAIT [10]  wait up to QUIET_WAIT s for the machine to be below
#                   QUIET_PCT% busy (all cores) before starting; the run goes on either way and the
#                   result records the CPU other processes took during the load window
#
# Table of several results: bench/redis-modes-table.sh bench/results/redis-modes/*.json
#
# Needs redis-server (7+, for cluster-port), redis-cli, jq, awk, timeout. Everything listens on
# 127.0.0.1; every process started here is stopped on exit (trap, by pid); the run is bounded
# (timeouts on every wait).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

die() { echo "redis-modes.sh: $*" >&2; exit 2; }
say() { echo "redis-modes.sh: $*" >&2; }

MODE=${MODE:-single}
WAIT_REPLICAS=${WAIT_REPLICAS:-0}
WAIT_TIMEOUT_MS=${WAIT_TIMEOUT_MS:-1000}
NODES=${NODES:-2}
RATE=${RATE:-1000}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
GRACE=${GRACE:-2}
CLIENTS=${CLIENTS:-200}
ROOM_SIZE=${ROOM_SIZE:-10}
SENDERS=${SENDERS:-40}
PAYLOAD=${PAYLOAD:-100}
SETTLE=${SETTLE:-3}
NODE_THREADS=${NODE_THREADS:-1}
GEN_THREADS=${GEN_THREADS:-1}
NODE_ENV=${NODE_ENV:-}
BIN=${FANOUT_BIN_DIR:-$ROOT/target/release}
KEEP=${KEEP:-0}
QUIET_PCT=${QUIET_PCT:-30}
QUIET_WAIT=${QUIET_WAIT:-10}

case $MODE in single | cluster) ;; *) die "MODE must be single or cluster (got '$MODE')" ;; esac
for v in WAIT_REPLICAS WAIT_TIMEOUT_MS NODES CLIENTS ROOM_SIZE SENDERS PAYLOAD SETTLE NODE_THREADS \
    GEN_THREADS QUIET_PCT QUIET_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for v in RATE SECS WARMUP GRACE; do
    [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$v must be a number (got '${!v}')"
done
((WAIT_REPLICAS <= 1)) || die "WAIT_REPLICAS must be 0 or 1 (each master has one replica here)"
((NODES >= 1 && NODES <= 16)) || die "NODES must be 1..16"
((NODE_THREADS >= 1 && GEN_THREADS >= 1)) || die "NODE_THREADS and GEN_THREADS must be at least 1"
awk -v s="$SECS" 'BEGIN { exit !(s >= 2.5) }' || die "SECS must be at least 2.5"
WINDOW=$(awk -v s="$SECS" 'BEGIN { w = s - 1.5; printf "%.1f", (w < 1 ? 1 : w) }')
OUT=${OUT:-$HERE/results/redis-modes/$MODE-w$WAIT_REPLICAS-r$RATE-$(date -u +%Y%m%dT%H%M%SZ).json}
for tool in redis-server redis-cli jq awk timeout; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x $BIN/fanout && -x $BIN/fanout-bench ]] ||
    die "no fanout / fanout-bench in $BIN (cargo build --release --bins, or set FANOUT_BIN_DIR)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fanout-redis-modes.XXXXXX")
mkdir -p "$(dirname "$OUT")"
ulimit -n "$(ulimit -Hn)"

# ---- process bookkeeping: every pid started here is stopped on exit
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 30); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP == 1 ]]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A command that fails under set -e says where (a run must never end without a word).
set -E
trap 'say "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR

# A free port below the usual ephemeral range (32768+) not handed out yet, in FREE_PORT (not
# echoed: a $(...) subshell would lose USED_PORTS). Cluster bus ports are drawn the same way.
USED_PORTS=" "
FREE_PORT=""
free_port() {
    local p
    for _ in $(seq 500); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            FREE_PORT=$p
            return
        fi
    done
    die "no free port found"
}

http_ok() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        IFS=" " read -r _ code _ <&3 && [[ $code == 200 ]]' _ "$1" "$2" 2>/dev/null
}

rc() { local p=$1; shift; timeout 10 redis-cli -h 127.0.0.1 -p "$p" "$@"; }

wait_until() { # seconds, what, command...
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < end)) || die "$what not reached within ${limit}s"
        sleep 0.2
    done
}

busy_1s() {
    local a b
    a=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print idle, t; exit }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print idle, t; exit }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); dt = y[2] - x[2];
        printf "%.0f", (dt > 0 ? 100 * (1 - (y[1] - x[1]) / dt) : 0) }'
}
quiet_start=$SECONDS
BUSY_BEFORE=$(busy_1s)
while ((BUSY_BEFORE > QUIET_PCT && SECONDS - quiet_start < QUIET_WAIT)); do
    BUSY_BEFORE=$(busy_1s)
done
((BUSY_BEFORE <= QUIET_PCT)) ||
    say "warning: machine still ${BUSY_BEFORE}% busy (other work): figures may be disturbed"

# ---- Redis
REDIS_PORTS=() REDIS_PIDS=()
start_redis() { # name, extra args...
    local name=$1
    shift
    free_port
    local p=$FREE_PORT
    mkdir -p "$WORK/$name"
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
        --notify-keyspace-events Ex --dir "$WORK/$name" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    REDIS_PIDS+=($!)
    REDIS_PORTS+=("$p")
    local i
    for i in $(seq 100); do
        [[ $(rc "$p" ping 2>/dev/null) == PONG ]] && return
        kill -0 "${REDIS_PIDS[-1]}" 2>/dev/null || die "redis $name exited: $(tail -3 "$WORK/$name.log")"
        sleep 0.1
    done
    die "redis $name not up within 10 s"
}
replicas_linked() { # every replica's link to its master is up
    local p
    for p in "${REDIS_PORTS[@]}"; do
        local info
        info=$(rc "$p" info replication | tr -d '\r')
        [[ $info == *role:slave* && $info != *master_link_status:up* ]] && return 1
    done
    return 0
}
cluster_ok() {
    local p
    for p in "${REDIS_PORTS[@]}"; do
        [[ $(rc "$p" cluster info 2>/dev/null) == *cluster_state:ok* ]] || return 1
    done
}

if [[ $MODE == single ]]; then
    say "starting one Redis master + one replica"
    start_redis master
    start_redis replica --replicaof 127.0.0.1 "${REDIS_PORTS[0]}"
    REDIS_ENV=(REDIS_URL="redis://127.0.0.1:${REDIS_PORTS[0]}")
else
    say "starting 6 Redis cluster nodes"
    for k in 1 2 3 4 5 6; do
        free_port
        bus=$FREE_PORT
        start_redis "c$k" --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 2000 --cluster-port "$bus"
    done
    seeds=()
    for p in "${REDIS_PORTS[@]}"; do seeds+=("127.0.0.1:$p"); done
    timeout 60 redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes \
        >"$WORK/cluster-create.log" 2>&1 </dev/null ||
        die "redis-cli --cluster create failed: $(tail -5 "$WORK/cluster-create.log")"
    wait_until 30 "cluster_state:ok on every cluster node" cluster_ok
    REDIS_ENV=(REDIS_CLUSTER_NODES="$(IFS=,; echo "${seeds[*]}")")
fi
wait_until 30 "every replica linked to its master" replicas_linked
# Masters and replicas by their role now (redis-cli --cluster create decides who is which).
MASTERS=() REPLICAS=() MASTER_PIDS=()
for i in "${!REDIS_PORTS[@]}"; do
    if rc "${REDIS_PORTS[i]}" info replication | tr -d '\r' | grep -q '^role:master'; then
        MASTERS+=("${REDIS_PORTS[i]}")
        MASTER_PIDS+=("${REDIS_PIDS[i]}")
    else
        REPLICAS+=("${REDIS_PORTS[i]}")
    fi
done
say "masters: ${MASTERS[*]}; replicas: ${REPLICAS[*]}"

# ---- the nodes
SECRET=modes-secret-$RANDOM$RANDOM
API_KEY=modes-key-$RANDOM$RANDOM
read -r -a EXTRA_ENV <<<"$NODE_ENV"
NODE_PIDS=() NODE_PORTS=() ADMIN_PORTS=()
for ((i = 1; i <= NODES; i++)); do
    free_port
    port=$FREE_PORT
    free_port
    admin=$FREE_PORT
    env -u REDIS_URL -u REDIS_CLUSTER_NODES -u REDIS_SENTINELS -u REDIS_SENTINEL_MASTER \
        "${REDIS_ENV[@]}" REDIS_WAIT_REPLICAS="$WAIT_REPLICAS" REDIS_WAIT_TIMEOUT_MS="$WAIT_TIMEOUT_MS" \
        JWT_SECRET="$SECRET" API_KEY="$API_KEY" \
        PORT="$port" ADMIN_PORT="$admin" NODE_ID="n$i" BIND_ADDR=127.0.0.1 RUST_LOG=warn \
        TOKIO_WORKER_THREADS="$NODE_THREADS" SHUTDOWN_GRACE_SECS=1 \
        RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000 "${EXTRA_ENV[@]}" \
        "$BIN/fanout" >"$WORK/node-$i.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
    NODE_PORTS+=("$port")
    ADMIN_PORTS+=("$admin")
done
deadline=$((SECONDS + 60))
for ((i = 0; i < NODES; i++)); do
    until http_ok "${NODE_PORTS[i]}" /readyz; do
        kill -0 "${NODE_PIDS[i]}" 2>/dev/null ||
            die "node n$((i + 1)) exited: $(tail -3 "$WORK/node-$((i + 1)).log")"
        ((SECONDS < deadline)) || die "node n$((i + 1)) not ready within 60 s"
        sleep 0.2
    done
done
say "all $NODES nodes ready ($MODE, WAIT_REPLICAS=$WAIT_REPLICAS); settling ${SETTLE}s"
sleep "$SETTLE"

# ---- snapshots
CLK_TCK=$(getconf CLK_TCK)
ticks() {
    local p out=()
    for p in "$@"; do
        out+=("$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)")
        [[ -n ${out[-1]} ]] || out[-1]=null
    done
    echo "${out[*]}"
}
# INFO everything of one Redis as JSON: cpu, net bytes, commandstats.
redis_snap() {
    local p=$1 info
    info=$(rc "$p" info everything | tr -d '\r')
    jq -n --arg port "$p" --arg info "$info" '
        ($info | split("\n") | map(select(test("^[a-z_|]+:")) | capture("^(?<k>[^:]+):(?<v>.*)$"))) as $kv
        | { port: ($port | tonumber),
            redis_cpu: ($kv | map(select(.k == "used_cpu_sys" or .k == "used_cpu_user") | .v | tonumber) | add),
            net_output_bytes: ($kv | map(select(.k == "total_net_output_bytes"))[0].v | tonumber),
            net_input_bytes: ($kv | map(select(.k == "total_net_input_bytes"))[0].v | tonumber),
            cmd: ($kv | map(select(.k | startswith("cmdstat_"))
                  | { key: (.k | ltrimstr("cmdstat_")),
                      value: (.v | split(",") | map(split("=")) | map({ key: .[0], value: (.[1] | tonumber) })
                              | from_entries | { calls, usec }) })
                  | from_entries) }'
}
snapshot() { # file, generator pid
    local file=$1 gen=${2:-} t nt gt machine p
    t=$(date +%s.%N)
    nt=$(ticks "${NODE_PIDS[@]}")
    gt=$(ticks "$gen")
    machine=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print t - idle, t; exit }' /proc/stat)
    for p in "${REDIS_PORTS[@]}"; do redis_snap "$p"; done >"$file.redis"
    jq -n --arg t "$t" --arg nt "$nt" --arg gt "$gt" --arg m "$machine" --slurpfile r "$file.redis" '
        def nums: split(" ") | map(select(. != "") | if . == "null" then null else tonumber end);
        { t: ($t | tonumber), node_ticks: ($nt | nums), gen_ticks: ($gt | nums)[0],
          machine_busy: ($m | nums)[0], machine_total: ($m | nums)[1],
          redis: ($r | map({ key: (.port | tostring), value: . }) | from_entries) }' >"$file"
}
# Keys and channels of one master, as JSON.
keyspace() {
    local p=$1 chans
    if [[ $MODE == cluster ]]; then
        chans=$(rc "$p" pubsub shardchannels | grep -c . || true)
    else
        chans=$(rc "$p" pubsub channels | grep -c . || true)
    fi
    rc "$p" --scan | LC_ALL=C awk -v port="$p" -v dbsize="$(rc "$p" dbsize)" -v chans="$chans" '
        /^fanout:\{chat:/ { chat++; k = $0; sub(/\{chat:[^}]*\}/, "{chat:*}", k); sub(/:dedup:.*/, ":dedup:*", k); sub(/:idem:.*/, ":idem:*", k); pat[k]++; next }
        /^user:\{/ { user++; k = $0; sub(/\{[^}]*\}/, "{*}", k); pat[k]++; next }
        /^presence:deadlines:/ { pd++; pdkeys = pdkeys " " $0; pat["presence:deadlines:{pd*}"]++; next }
        /^presence:/ { pres++; k = $0; sub(/\{[^}]*\}/, "{*}", k); pat[k]++; next }
        { other++; k = $0; sub(/\{[^}]*\}/, "{*}", k); pat[k]++ }
        END {
            printf "{\"port\":%d,\"dbsize\":%d,\"channels\":%d,\"keys\":{\"chat\":%d,\"user\":%d,\"presence\":%d,\"presence_deadlines\":%d,\"other\":%d},\"patterns\":{", port, dbsize, chans, chat, user, pres, pd, other
            n = 0; for (k in pat) { gsub(/"/, "\\\"", k); printf "%s\"%s\":%d", (n++ ? "," : ""), k, pat[k] }
            printf "},\"presence_deadline_keys\":\"%s\"}\n", pdkeys
        }'
}

# ---- load
urls=$(for ((i = 0; i < NODES; i++)); do printf 'http://127.0.0.1:%s,' "${NODE_PORTS[i]}"; done)
urls=${urls%,}
limit=$(awk -v w="$WARMUP" -v d="$SECS" -v g="$GRACE" 'BEGIN { printf "%d", w + d + g + 120 }')
say "load: $CLIENTS clients over $NODES nodes, rooms of $ROOM_SIZE, $SENDERS senders, $RATE msg/s, ${SECS}s measured"
timeout --kill-after=10 "$limit" "$BIN/fanout-bench" --url "$urls" \
    --admin-url "http://127.0.0.1:${ADMIN_PORTS[0]}" --api-key "$API_KEY" --jwt-secret "$SECRET" \
    --clients "$CLIENTS" --room-size "$ROOM_SIZE" --senders "$SENDERS" --rate "$RATE" \
    --payload-bytes "$PAYLOAD" --warmup "$WARMUP" --duration "$SECS" --grace "$GRACE" \
    --threads "$GEN_THREADS" --keep-rooms \
    --watch-pid "$(IFS=,; echo "${NODE_PIDS[*]},${REDIS_PIDS[*]}")" \
    --out "$WORK/bench.json" >"$WORK/bench.stdout" 2>"$WORK/bench.stderr" &
TIMEOUT_PID=$!
PIDS+=("$TIMEOUT_PID")
GEN_PID=""
for _ in $(seq 50); do
    GEN_PID=$(ps -o pid= --ppid "$TIMEOUT_PID" | tr -d ' ' | head -1)
    [[ -n $GEN_PID ]] && break
    sleep 0.1
done
[[ -n $GEN_PID ]] || die "fanout-bench did not start: $(tail -5 "$WORK/bench.stderr")"
until grep -q " measure\]" "$WORK/bench.stderr" 2>/dev/null; do
    kill -0 "$TIMEOUT_PID" 2>/dev/null ||
        die "fanout-bench ended before measuring: $(tail -5 "$WORK/bench.stderr")"
    sleep 0.1
done
for p in "${REDIS_PORTS[@]}"; do rc "$p" config resetstat >/dev/null; done
snapshot "$WORK/load-a.json" "$GEN_PID"
sleep "$WINDOW"
snapshot "$WORK/load-b.json" "$GEN_PID"
for p in "${MASTERS[@]}"; do keyspace "$p"; done | jq -s . >"$WORK/keys.json"
gen_status=0
wait "$TIMEOUT_PID" || gen_status=$?
((gen_status == 0)) || say "warning: fanout-bench exited with $gen_status: $(tail -3 "$WORK/bench.stderr")"
[[ -s $WORK/bench.json ]] || die "fanout-bench wrote no results: $(tail -5 "$WORK/bench.stderr")"
# The nodes' warnings and errors over the whole run (start-up included).
cat "$WORK"/node-*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'WARN|ERROR' >"$WORK/node-warn.txt" || true
node_warn_count=$(wc -l <"$WORK/node-warn.txt")
# Distinct messages: the timestamp and span prefix cut off, the first 12 kept.
node_warn_samples=$(sed -E 's/^[[:space:]]*(node=[^ ]+ +)?[0-9T:.-]+Z[[:space:]]+//' "$WORK/node-warn.txt" | cut -c1-300 | sort | uniq -c | sort -rn |
    head -12 | jq -R . | jq -s .)

# ---- figures
jq -n \
    --slurpfile la "$WORK/load-a.json" --slurpfile lb "$WORK/load-b.json" \
    --slurpfile bench "$WORK/bench.json" --slurpfile keys "$WORK/keys.json" \
    --argjson masters "$(printf '%s\n' "${MASTERS[@]}" | jq -s .)" \
    --argjson replicas "$(printf '%s\n' "${REPLICAS[@]}" | jq -s .)" \
    --arg mode "$MODE" --argjson wait "$WAIT_REPLICAS" --argjson wait_timeout "$WAIT_TIMEOUT_MS" \
    --argjson nodes "$NODES" --argjson rate "$RATE" \
    --argjson secs "$SECS" --argjson warmup "$WARMUP" --argjson clients "$CLIENTS" \
    --argjson room_size "$ROOM_SIZE" --argjson senders "$SENDERS" --argjson payload "$PAYLOAD" \
    --argjson node_threads "$NODE_THREADS" --argjson gen_threads "$GEN_THREADS" \
    --argjson hz "$CLK_TCK" --argjson ncpu "$(nproc)" \
    --arg node_env "$NODE_ENV" --arg git "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --arg dirty "$(git -C "$ROOT" status --porcelain -- src lua crates 2>/dev/null | head -c 1)" \
    --arg started "$(date -u +%FT%TZ)" --arg redis_version "$(redis-server --version | sed 's/"//g')" \
    --argjson busy_before "$BUSY_BEFORE" --argjson gen_status "$gen_status" \
    --argjson warn_count "$node_warn_count" --argjson warn_samples "$node_warn_samples" '
    def r(n): if . == null then null else (. * pow(10; n) | round) / pow(10; n) end;
    def mean: if length == 0 then null else add / length end;
    def skew: if length == 0 or mean == 0 then null else (max / mean | r(3)) end;
    ($la[0]) as $la | ($lb[0]) as $lb | ($bench[0]) as $b | ($keys[0]) as $keys
    | ($lb.t - $la.t) as $load_s
    | ($b.send.acked / $b.config.duration_secs) as $acc_rate
    | ($acc_rate * $load_s) as $msgs
    | def rinfo(p): { a: $la.redis[p | tostring], b: $lb.redis[p | tostring] };
      def inst(p):
        rinfo(p) as $x
        | ($x.b.redis_cpu - $x.a.redis_cpu) as $cpu
        | ([$x.b.cmd[] | .calls] | add // 0) as $calls | ([$x.b.cmd[] | .usec] | add // 0) as $usec
        | { port: p,
            cpu_pct_of_core: ($cpu / $load_s * 100 | r(2)),
            cpu_us_per_msg: ($cpu / $msgs * 1e6 | r(2)),
            calls_per_msg_all: ($calls / $msgs | r(3)),
            usec_per_msg_all_nested_twice: ($usec / $msgs | r(3)),
            net_output_bytes_per_msg: ($x.b.net_output_bytes / $load_s / $acc_rate | r(1)),
            net_input_bytes_per_msg: ($x.b.net_input_bytes / $load_s / $acc_rate | r(1)),
            commands: ($x.b.cmd | to_entries | sort_by(-.value.usec)
                       | map({ key, value: { calls_per_msg: (.value.calls / $msgs | r(4)),
                                             usec_per_msg: (.value.usec / $msgs | r(3)),
                                             calls_per_sec: (.value.calls / $load_s | r(1)) } })
                       | from_entries) };
      ($masters | map(inst(.))) as $m
    | ($replicas | map(inst(.) | del(.commands))) as $rep
    | ($m | map(.port) ) as $mports
    | [ $m[] as $x | ($keys[] | select(.port == $x.port)) + $x ] as $per_master
    | (($lb.machine_busy - $la.machine_busy) / ($lb.machine_total - $la.machine_total) * $ncpu * 100) as $busy_pct
    | ([range(0; $nodes) | ($lb.node_ticks[.] - $la.node_ticks[.]) / $hz / $load_s * 100]) as $node_pct
    | (if $lb.gen_ticks == null then 0 else ($lb.gen_ticks - $la.gen_ticks) / $hz / $load_s * 100 end) as $gen_pct
    | ([($m + $rep)[] | .cpu_pct_of_core] | add) as $redis_pct
    | {
        scenario: "issue 18 Redis modes",
        started_utc: $started, git_head: $git, source_dirty: ($dirty != ""),
        redis_version: $redis_version,
        command: ("MODE=\($mode) WAIT_REPLICAS=\($wait) NODES=\($nodes) RATE=\($rate) SECS=\($secs) CLIENTS=\($clients) ROOM_SIZE=\($room_size) SENDERS=\($senders) bench/redis-modes.sh"),
        config: { mode: $mode, masters: ($masters | length), replicas: ($replicas | length),
                  wait_replicas: $wait, wait_timeout_ms: $wait_timeout,
                  nodes: $nodes, rate: $rate, secs: $secs, warmup: $warmup,
                  clients: $clients, room_size: $room_size, rooms: $b.config.rooms, senders: $senders,
                  payload_bytes: $payload, node_threads: $node_threads, generator_threads: $gen_threads,
                  node_env: $node_env },
        window_secs: ($load_s | r(3)),
        accepted: { measured: $b.send.acked, sent: $b.send.sent, per_sec: ($acc_rate | r(1)),
                    in_load_window: ($msgs | r(0)),
                    follows_rate: ($acc_rate >= 0.95 * $rate) },
        check: { nacked: $b.send.nacked, ack_timeouts: $b.send.ack_timeouts,
                 skipped_inflight_cap: $b.send.skipped_inflight_cap,
                 connected: $b.connect.connected, lost: $b.delivery.lost,
                 duplicated: $b.delivery.duplicated, reordered: $b.delivery.reordered,
                 generator_exit: $gen_status,
                 ok: ($gen_status == 0 and $b.delivery.lost == 0 and $b.delivery.duplicated == 0
                      and $b.delivery.reordered == 0 and $b.send.acked == $b.send.sent
                      and $b.connect.connected == $clients) },
        ack_ms: $b.send.ack_latency_ms,
        delivery_ms: { socket: $b.delivery.socket_latency_ms, read: $b.delivery.latency_ms },
        redis: {
          masters: $per_master,
          replicas: $rep,
          total: { cpu_us_per_msg_masters: ([$m[] | .cpu_us_per_msg] | add | r(2)),
                   cpu_us_per_msg_replicas: ([$rep[] | .cpu_us_per_msg] | add | r(2)),
                   cpu_pct_of_core_masters: ([$m[] | .cpu_pct_of_core] | add | r(2)),
                   calls_per_msg_masters: ([$m[] | .calls_per_msg_all] | add | r(3)),
                   usec_per_msg_masters_nested_twice: ([$m[] | .usec_per_msg_all_nested_twice] | add | r(3)),
                   dbsize: ([$per_master[] | .dbsize] | add),
                   keys: ([$per_master[] | .keys | to_entries[]] | group_by(.key)
                          | map({ key: .[0].key, value: (map(.value) | add) }) | from_entries),
                   channels: ([$per_master[] | .channels] | add) },
          skew_max_over_mean: (if ($per_master | length) < 2 then null else {
              dbsize: ([$per_master[] | .dbsize] | skew),
              chat_keys: ([$per_master[] | .keys.chat] | skew),
              user_keys: ([$per_master[] | .keys.user] | skew),
              presence_keys: ([$per_master[] | .keys.presence] | skew),
              presence_deadline_buckets: ([$per_master[] | .keys.presence_deadlines] | skew),
              channels: ([$per_master[] | .channels] | skew),
              cpu: ([$per_master[] | .cpu_us_per_msg] | skew),
              calls: ([$per_master[] | .calls_per_msg_all] | skew),
              usec: ([$per_master[] | .usec_per_msg_all_nested_twice] | skew),
              net_output: ([$per_master[] | .net_output_bytes_per_msg] | skew)
            } end)
        },
        cpu_pct_of_core: { nodes: ($node_pct | map(r(1))), generator: ($gen_pct | r(1)),
                           redis_all: ($redis_pct | r(1)) },
        machine: { cpus: $ncpu, busy_pct_all_cores_before_start: $busy_before,
                   busy_pct_of_one_core_load: ($busy_pct | r(1)),
                   other_cpu_pct_of_one_core_load: (($busy_pct - ($node_pct | add) - $gen_pct - $redis_pct) | r(1)),
                   steal_pct_all_cores: $b.generator.machine_cpu_steal_pct_all_cores_measured },
        node_log: { warn_or_error_lines: $warn_count, distinct_first: $warn_samples }
      }' >"$OUT"

jq -r '
    "\(.config.mode) WAIT \(.config.wait_replicas) rate \(.config.rate) | accepted \(.accepted.measured) (\(.accepted.per_sec)/s) ok=\(.check.ok) lost \(.check.lost) nacked \(.check.nacked | tostring)",
    "ack p50 \(.ack_ms.p50) p99 \(.ack_ms.p99) ms | delivery at socket p50 \(.delivery_ms.socket.p50) p99 \(.delivery_ms.socket.p99) ms",
    "redis masters: CPU \(.redis.total.cpu_us_per_msg_masters) us/msg (replicas \(.redis.total.cpu_us_per_msg_replicas)), \(.redis.total.calls_per_msg_masters) calls/msg, keys \(.redis.total.dbsize), channels \(.redis.total.channels)",
    (.redis.masters[] | "  master \(.port): CPU \(.cpu_us_per_msg) us/msg (\(.cpu_pct_of_core)% of a core), \(.calls_per_msg_all) calls/msg, \(.usec_per_msg_all_nested_twice) usec/msg, dbsize \(.dbsize) keys \(.keys | tostring) channels \(.channels)"),
    "skew (max/mean): \(.redis.skew_max_over_mean | tostring)",
    "cpu % of a core: nodes \(.cpu_pct_of_core.nodes | tostring) generator \(.cpu_pct_of_core.generator) redis \(.cpu_pct_of_core.redis_all); machine busy \(.machine.busy_pct_of_one_core_load)%, other \(.machine.other_cpu_pct_of_one_core_load)%",
    "node log: \(.node_log.warn_or_error_lines) WARN/ERROR lines"
' "$OUT"
say "result: $OUT"
