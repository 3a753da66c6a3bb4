#!/usr/bin/env bash
# Side-by-side benchmark: a 2-node fanout cluster against a 2-node Node.js socket.io 4.8 cluster
# (--nodes N for more)
# on the official @socket.io/redis-streams-adapter (bench/peer/server.js), on this machine, with
# the same redis-server binary and the same load generator (fanout-bench --join) for both.
#
#   bench/compare.sh <scenario> [options]
#
# Scenarios (presets; every value can be overridden by an option below):
#   smoke               40 clients, rooms of 10, 10 senders, one step at 100 msg/s, 3 s (tests)
#   fanout-small        1 000 clients, rooms of 10, 100 senders, rising rate until unsustainable
#   fanout-large-rooms  2 000 clients, rooms of 1 000, 4 senders, rising rate likewise
#   idle                10 000 connections, no traffic: node RSS per socket
#   connect-storm       10 000 clients connecting all at once: time to connect, failures
#
# Options:
#   --systems fanout,peer   which systems, in this order (default both)
#   --clients N  --room-size N  --senders N  --rates R1,R2,...  --payload-bytes N
#   --warmup S  --duration S  --grace S
#   --connect-concurrency N          connects in flight (connect-storm: all clients)
#   --generators K                   idle/connect-storm: K generator processes share the clients
#                                    (one process can hold < 20 000 sockets here, see below)
#   --nodes N                        nodes per system (2); clients are spread round-robin
#   --generator-nice N               run the generator N nice levels below the servers (0): on
#                                    a machine they share, the servers then get the CPU first,
#                                    as with clients on machines of their own (0..19)
#   --p99-limit MS                   a step is unsustainable above this delivery p99 (100)
#   --quiet-pct P  --quiet-wait S    before each run wait up to S s (120) for the machine to be
#                                    below P% busy (30); the figure is recorded either way
#   --results DIR                    default bench/results/<timestamp>-<scenario>/
#   --all-steps 1                    do not stop a system's rate steps at the first failure
#   --max-other P  --retries N       a run during which other processes used more than P% of a
#                                    core (20) is moved to <system>/disturbed/ and repeated, up
#                                    to N times (2); the report shows the "other CPU" of each run
#
# Environment: FANOUT_BIN_DIR = directory holding already-built `fanout` and `fanout-bench`
# (default: `cargo build --release` here and use target/release). NO_INSTALL=1 skips the
# dependency installs (redis-server, npm ci) when they are known to be done.
#
# A step is sustainable when every measured send was ACCEPTED (no NACK, ACK timeout or send
# skipped at the generator's in-flight cap), no accepted message was lost, duplicated or
# reordered, every client connected and joined, and the delivery p99 is at most --p99-limit.
#
# Fanout's per-socket event budget (default 100 events/s, burst 200) is raised to 1 000 000 for
# both values here: at 100 senders and > 10 000 msg/s each socket sends more than 100/s, and the
# limit, not the server, would then be measured. The peer has no such limit.
#
# Limits of this sandbox: the hard RLIMIT_NOFILE is 20 000 per process and cannot be raised, so
# one generator holds at most ~19 900 sockets and one node likewise. `--generators 2 --clients
# 19000` is the largest idle run of 2 nodes (9 500 per node); more connections need more nodes
# and generators: `idle --nodes 4 --generators 3 --clients 50000` (12 500 per node),
# `idle --nodes 8 --generators 6 --clients 100000`.
#
# Everything listens on 127.0.0.1 only; every run is bounded in time; every process started
# here is killed on exit (trap), by its pid.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

die() { echo "compare.sh: $*" >&2; exit 2; }
say() { echo "compare.sh: $*" >&2; }

[[ $# -ge 1 ]] || die "usage: bench/compare.sh <smoke|fanout-small|fanout-large-rooms|idle|connect-storm> [options]"
SCENARIO=$1
shift

# ---- presets
SYSTEMS=fanout,peer
P99_LIMIT=100
QUIET_PCT=30
QUIET_WAIT=120
GENERATORS=1
GENERATOR_NICE=0
NODES=2
ALL_STEPS=0
MAX_OTHER=20
RETRIES=2
RESULTS=""
PAYLOAD=100
CONNECT_CONCURRENCY=256
case $SCENARIO in
smoke)
    CLIENTS=40 ROOM_SIZE=10 SENDERS=10 RATES=100 WARMUP=1 DURATION=3 GRACE=1
    QUIET_WAIT=0 RETRIES=0 ;;
fanout-small)
    CLIENTS=1000 ROOM_SIZE=10 SENDERS=100 WARMUP=2 DURATION=10 GRACE=2
    RATES=500,1000,2000,3000,4000,5000,6000,8000,10000,12000 ;;
fanout-large-rooms)
    CLIENTS=2000 ROOM_SIZE=1000 SENDERS=4 WARMUP=2 DURATION=10 GRACE=2
    RATES=5,10,20,30,50,70,100,150,200 ;;
idle)
    CLIENTS=10000 ROOM_SIZE=10 SENDERS=0 RATES=0 WARMUP=2 DURATION=8 GRACE=0 ;;
connect-storm)
    CLIENTS=10000 ROOM_SIZE=10 SENDERS=0 RATES=0 WARMUP=0 DURATION=2 GRACE=0
    CONNECT_CONCURRENCY=0 ;;   # 0 = all clients at once (set below)
*) die "unknown scenario '$SCENARIO'" ;;
esac

while [[ $# -gt 0 ]]; do
    opt=$1
    [[ $# -ge 2 ]] || die "$opt needs a value"
    val=$2
    shift 2
    case $opt in
    --systems) SYSTEMS=$val ;;
    --clients) CLIENTS=$val ;;
    --room-size) ROOM_SIZE=$val ;;
    --senders) SENDERS=$val ;;
    --rates) RATES=$val ;;
    --payload-bytes) PAYLOAD=$val ;;
    --warmup) WARMUP=$val ;;
    --duration) DURATION=$val ;;
    --grace) GRACE=$val ;;
    --connect-concurrency) CONNECT_CONCURRENCY=$val ;;
    --generators) GENERATORS=$val ;;
    --nodes) NODES=$val ;;
    --generator-nice) GENERATOR_NICE=$val ;;
    --p99-limit) P99_LIMIT=$val ;;
    --quiet-pct) QUIET_PCT=$val ;;
    --quiet-wait) QUIET_WAIT=$val ;;
    --results) RESULTS=$val ;;
    --all-steps) ALL_STEPS=$val ;;
    --max-other) MAX_OTHER=$val ;;
    --retries) RETRIES=$val ;;
    *) die "unknown option $opt" ;;
    esac
done
for v in CLIENTS ROOM_SIZE SENDERS PAYLOAD CONNECT_CONCURRENCY GENERATORS GENERATOR_NICE NODES \
    QUIET_PCT QUIET_WAIT MAX_OTHER RETRIES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
[[ $GENERATORS -ge 1 ]] || die "--generators must be at least 1"
[[ $NODES -ge 1 && $NODES -le 16 ]] || die "--nodes must be 1..16"
[[ $GENERATOR_NICE -le 19 ]] || die "--generator-nice must be 0..19"
[[ $CONNECT_CONCURRENCY -gt 0 ]] || CONNECT_CONCURRENCY=$(( (CLIENTS + GENERATORS - 1) / GENERATORS ))
IFS=, read -r -a SYSTEM_LIST <<<"$SYSTEMS"
for s in "${SYSTEM_LIST[@]}"; do
    [[ $s == fanout || $s == peer ]] || die "--systems: unknown system '$s'"
done
IFS=, read -r -a RATE_LIST <<<"$RATES"

# ---- dependencies
if [[ ${NO_INSTALL:-0} != 1 ]]; then
    "$ROOT/deploy/install-deps.sh" redis-server >&2
fi
command -v node >/dev/null || die "node is required for the peer (and for the report)"
# npm ci (a clean install from the committed lockfile) unless node_modules already holds exactly
# that lockfile's install; serialized by a lock, as the integration test may run this script too.
(
    flock 9
    cd "$HERE/peer"
    if ! cmp -s package-lock.json node_modules/.compare-sh-installed 2>/dev/null; then
        npm ci --no-audit --no-fund --loglevel=error >&2
        cp package-lock.json node_modules/.compare-sh-installed
    fi
) 9>"$HERE/peer/.npm-ci.lock"
if [[ -n ${FANOUT_BIN_DIR:-} ]]; then
    BIN=$FANOUT_BIN_DIR
else
    (cd "$ROOT" && cargo build --release --bin fanout --bin fanout-bench >&2)
    BIN=$ROOT/target/release
fi
[[ -x $BIN/fanout && -x $BIN/fanout-bench ]] || die "no fanout / fanout-bench in $BIN"

# One process may hold as many descriptors as the hard limit allows; children inherit it.
ulimit -n "$(ulimit -Hn)"

if [[ -z $RESULTS ]]; then
    RESULTS=$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)-$SCENARIO
fi
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
say "results in $RESULTS"

# ---- process bookkeeping: every pid started here, killed on exit
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    sleep 0.5
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local p=$1 keep=() q
    for q in "${PIDS[@]}"; do [[ $q == "$p" ]] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

# Stops one process: TERM, up to 10 s, then KILL.
stop_pid() {
    local p=$1 i
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget_pid "$p"
}

# A port below the ephemeral range (32768+), so the generator's own client ports never take it,
# that nothing listens on.
USED_PORTS=" "
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            echo "$p"
            return
        fi
    done
    die "no free port found"
}

# HTTP status of GET <path> on 127.0.0.1:<port>, or nothing (no curl needed).
http_status() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        IFS=" " read -r _ code _ <&3 && echo "$code"' _ "$1" "$2" 2>/dev/null || true
}

redis_ping() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r line <&3 && [[ $line == +PONG* ]]' _ "$1" 2>/dev/null
}

# Waits until `check` succeeds, or fails when the process died or 30 s passed.
wait_up() {
    local pid=$1 what=$2 i
    shift 2
    for ((i = 0; i < 300; i++)); do
        if "$@"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || die "$what exited during startup (see $RESULTS/*.log)"
        sleep 0.1
    done
    die "$what not up within 30 s"
}

# /proc readers: VmRSS / VmHWM in KiB, CPU seconds (utime + stime) of a pid.
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo null; }
cpu_secs() {
    local hz
    hz=$(getconf CLK_TCK)
    # Fields after the ")" of the comm: utime and stime are the 12th and 13th.
    sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk -v hz="$hz" '{ printf "%.2f", ($12 + $13) / hz }' || echo null
}
json_list() { local IFS=,; echo "[$*]"; }

# Busy share of all CPUs over one second, from /proc/stat (0-100).
machine_busy_1s() {
    local a b
    a=$(awk '/^cpu /{ idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print idle, t }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{ idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print idle, t }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); dt = y[2] - x[2];
        printf "%.0f", (dt > 0 ? 100 * (1 - (y[1] - x[1]) / dt) : 0) }'
}

# Waits (up to QUIET_WAIT s) for the machine to be below QUIET_PCT% busy; echoes the last figure.
wait_quiet() {
    local busy start=$SECONDS
    busy=$(machine_busy_1s)
    while ((busy > QUIET_PCT && SECONDS - start < QUIET_WAIT)); do
        busy=$(machine_busy_1s)
    done
    if ((busy > QUIET_PCT)); then
        say "warning: machine still ${busy}% busy before the run (other work): figures may be disturbed"
    fi
    echo "$busy"
}

SECRET=bench-secret-$RANDOM$RANDOM
API_KEY=bench-key-$RANDOM$RANDOM

REDIS_PID="" REDIS_PORT=""
start_redis() {
    local sys=$1
    REDIS_PORT=$(free_port)
    mkdir -p "$RESULTS/$sys/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --notify-keyspace-events Ex --dir "$RESULTS/$sys/redis" \
        >"$RESULTS/$sys/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_up "$REDIS_PID" redis-server redis_ping "$REDIS_PORT"
}

NODE_PIDS=() NODE_PORTS=() ADMIN_PORTS=()
start_nodes() {
    local sys=$1 n port admin pid
    NODE_PIDS=() NODE_PORTS=() ADMIN_PORTS=()
    for n in $(echo {a..p} | cut -d' ' -f1-"$NODES"); do
        port=$(free_port)
        if [[ $sys == fanout ]]; then
            admin=$(free_port)
            env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" JWT_SECRET="$SECRET" API_KEY="$API_KEY" \
                PORT="$port" ADMIN_PORT="$admin" NODE_ID="$n" BIND_ADDR=127.0.0.1 RUST_LOG=warn \
                RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000 SHUTDOWN_GRACE_SECS=2 \
                "$BIN/fanout" >"$RESULTS/$sys/node-$n.log" 2>&1 &
            pid=$!
            PIDS+=("$pid")
            wait_up "$pid" "fanout node $n" check_status "$port" /readyz
            ADMIN_PORTS+=("$admin")
        else
            env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" JWT_SECRET="$SECRET" PORT="$port" \
                NODE_ID="$n" BIND_ADDR=127.0.0.1 \
                node "$HERE/peer/server.js" >"$RESULTS/$sys/node-$n.log" 2>&1 &
            pid=$!
            PIDS+=("$pid")
            # The Engine.IO handshake answers once socket.io and the adapter are set up.
            wait_up "$pid" "peer node $n" check_status "$port" "/socket.io/?EIO=4&transport=polling"
        fi
        NODE_PIDS+=("$pid")
        NODE_PORTS+=("$port")
    done
}
check_status() { [[ $(http_status "$1" "$2") == 200 ]]; }

stop_cluster() {
    local p
    for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done
    [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID"
    NODE_PIDS=() REDIS_PID=""
}

# Runs the generator(s) for one step; writes <step>.json (or <step>-g<k>.json per generator) and
# <step>.procs.json with what the script saw of the processes.
run_step() {
    local sys=$1 step=$2 rate=$3 busy urls admin_args=() k gens=() name files=() per rss_mid budget
    local cpu_before=() cpu_after=() rss_before=() hwm_after=() rss_after=() p limit
    urls=$(printf 'http://127.0.0.1:%s,' "${NODE_PORTS[@]}")
    urls=${urls%,}
    if [[ $sys == fanout ]]; then
        admin_args=(--admin-url "http://127.0.0.1:${ADMIN_PORTS[0]}" --api-key "$API_KEY")
    fi
    busy=$(wait_quiet)
    for p in "${NODE_PIDS[@]}"; do
        rss_before+=("$(vm_kib "$p" VmRSS)")
        cpu_before+=("$(cpu_secs "$p")")
    done
    cpu_before+=("$(cpu_secs "$REDIS_PID")")
    per=$(( (CLIENTS + GENERATORS - 1) / GENERATORS ))
    # Connects may take up to the budget (120 s, plus 1 s per 1 000 clients: the peer accepts
    # ~900/s on this machine); bound: connects, joins, warm-up, measure, grace, ACK timeouts
    # and the close, with margin.
    budget=$((120 + CLIENTS / 1000))
    limit=$(awk -v w="$WARMUP" -v d="$DURATION" -v g="$GRACE" -v b="$budget" 'BEGIN { printf "%d", w + d + g + b + 120 }')
    for ((k = 1; k <= GENERATORS; k++)); do
        if ((GENERATORS == 1)); then name=$step; else name=$step-g$k; fi
        files+=("$name")
        timeout --kill-after=10 "$limit" nice -n "$GENERATOR_NICE" "$BIN/fanout-bench" \
            --url "$urls" "${admin_args[@]}" \
            --join --jwt-secret "$SECRET" --clients "$per" --room-size "$ROOM_SIZE" \
            --senders "$SENDERS" --rate "$rate" --payload-bytes "$PAYLOAD" \
            --warmup "$WARMUP" --duration "$DURATION" --grace "$GRACE" \
            --connect-concurrency "$CONNECT_CONCURRENCY" --connect-budget "$budget" \
            --watch-pid "$(IFS=,; echo "${NODE_PIDS[*]},$REDIS_PID")" \
            --out "$RESULTS/$sys/$name.json" \
            >"$RESULTS/$sys/$name.stdout" 2>"$RESULTS/$sys/$name.stderr" &
        gens+=($!)
        PIDS+=("${gens[-1]}")
    done
    # RSS of the nodes while every generator is in its measured window (all sockets open).
    rss_mid=$(sample_when_measuring "$sys" "$(IFS=,; echo "${gens[*]}")" "${files[@]}")
    for p in "${gens[@]}"; do
        wait "$p" || say "warning: generator $p exited with $? ($sys $step)"
        forget_pid "$p"
    done
    for p in "${NODE_PIDS[@]}"; do
        cpu_after+=("$(cpu_secs "$p")")
        hwm_after+=("$(vm_kib "$p" VmHWM)")
        rss_after+=("$(vm_kib "$p" VmRSS)")
    done
    cpu_after+=("$(cpu_secs "$REDIS_PID")")
    cat >"$RESULTS/$sys/$step.procs.json" <<EOF
{"system": "$sys", "step": "$step", "rate": $rate, "generators": $(json_list "$(printf '"%s",' "${files[@]}" | sed 's/,$//')"),
 "machine_busy_pct_before": $busy,
 "node_pids": $(json_list "${NODE_PIDS[@]}"), "redis_pid": $REDIS_PID,
 "node_rss_kib_before": $(json_list "${rss_before[@]}"),
 "node_rss_kib_measuring": $rss_mid,
 "node_rss_kib_after": $(json_list "${rss_after[@]}"),
 "node_hwm_kib_after": $(json_list "${hwm_after[@]}"),
 "cpu_secs_before_nodes_then_redis": $(json_list "${cpu_before[@]}"),
 "cpu_secs_after_nodes_then_redis": $(json_list "${cpu_after[@]}")}
EOF
}

# Waits until every named generator's progress line shows the measured phase, one more second,
# then echoes the nodes' VmRSS as a JSON list (null when a generator never got there).
sample_when_measuring() {
    local sys=$1 gen_pids=$2 f ready i p alive out=()
    shift 2
    for ((i = 0; i < 3000; i++)); do
        ready=1
        for f in "$@"; do
            grep -q " measure\]" "$RESULTS/$sys/$f.stderr" 2>/dev/null || ready=0
        done
        ((ready)) && break
        # Give up when a generator ended without measuring (nothing to sample).
        alive=0
        for p in ${gen_pids//,/ }; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    if ((ready)); then
        sleep 1
        for p in "${NODE_PIDS[@]}"; do out+=("$(vm_kib "$p" VmRSS)"); done
        json_list "${out[@]}"
    else
        echo null
    fi
}

# ---- run
cat >"$RESULTS/meta.json" <<EOF
{"scenario": "$SCENARIO", "systems": $(json_list "$(printf '"%s",' "${SYSTEM_LIST[@]}" | sed 's/,$//')"),
 "clients": $CLIENTS, "room_size": $ROOM_SIZE, "senders": $SENDERS, "rates": $(json_list "${RATE_LIST[@]}"),
 "payload_bytes": $PAYLOAD, "warmup": $WARMUP, "duration": $DURATION, "grace": $GRACE,
 "connect_concurrency": $CONNECT_CONCURRENCY, "generators": $GENERATORS, "generator_nice": $GENERATOR_NICE,
 "nodes": $NODES, "p99_limit_ms": $P99_LIMIT,
 "fanout_bin_dir": "$BIN", "fanout_version": "$("$BIN/fanout" --version 2>/dev/null | head -1)",
 "git_head": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)",
 "node_version": "$(node --version)", "redis_version": "$(redis-server --version | sed 's/"//g')",
 "nofile_hard": $(ulimit -Hn), "started_utc": "$(date -u +%FT%TZ)"}
EOF

for sys in "${SYSTEM_LIST[@]}"; do
    mkdir -p "$RESULTS/$sys"
    say "== $sys: starting redis and $NODES nodes"
    start_redis "$sys"
    start_nodes "$sys"
    # Let the nodes settle (JIT warm-up of the peer, presence ticks of fanout) before the
    # "RSS before connecting" sample of the first step.
    sleep 2
    for rate in "${RATE_LIST[@]}"; do
        step=r$rate
        [[ $SENDERS -eq 0 ]] && step=$SCENARIO
        say "$sys: step $step ($CLIENTS clients, $SENDERS senders, $rate msg/s)"
        # Other work on the machine (the "other CPU" of the report) distorts a run; such a run
        # is kept under disturbed/ and repeated, up to --retries times (the last one counts).
        for ((attempt = 0; ; attempt++)); do
            run_step "$sys" "$step" "$rate"
            other=$(node "$HERE/report.mjs" other "$RESULTS" "$sys" "$step")
            if ((other <= MAX_OTHER || attempt >= RETRIES)); then
                ((other <= MAX_OTHER)) || say "$sys: $step still disturbed (other CPU ${other}%), kept"
                break
            fi
            say "$sys: $step disturbed (other processes used ${other}% of a core): repeating"
            mkdir -p "$RESULTS/$sys/disturbed"
            for f in "$RESULTS/$sys/$step".* "$RESULTS/$sys/$step"-g*; do
                [[ -e $f ]] && mv "$f" "$RESULTS/$sys/disturbed/a$attempt-${f##*/}"
            done
        done
        if [[ $SENDERS -gt 0 ]]; then
            if verdict=$(node "$HERE/report.mjs" verdict "$RESULTS/$sys/$step.json" "$P99_LIMIT"); then
                say "$sys: $step sustainable: $verdict"
            else
                say "$sys: $step NOT sustainable: $verdict"
                [[ $ALL_STEPS == 1 ]] || break
            fi
        fi
    done
    say "== $sys: stopping"
    stop_cluster
done

node "$HERE/report.mjs" report "$RESULTS" | tee "$RESULTS/report.md"
