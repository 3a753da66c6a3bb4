#!/usr/bin/env bash
# Scale simulation (issue 17): what a node with no socket in the busy rooms pays for their
# traffic, and what Redis pays per message, as the node count grows.
#
#   NODES=16 RATE=1000 SECS=10 OUT=bench/results/scale-n16-r1000.json bench/scale.sh
#
# Starts its own redis-server (loopback, free port, no persistence) and NODES fanout nodes
# (n1..nN, release binaries), puts every client on nodes 1..INTERESTED (default 2; fanout-bench
# spreads clients round-robin over the URLs it gets, and a room holds ROOM_SIZE consecutive
# clients, so each room has members on nodes 1 and 2 only), then:
#
#   1. idle window (IDLE_SECS, default SECS - 1.5): no clients; node CPU, Redis bytes, commands and
#      CPU of the background (canaries, presence, heartbeats) — subtracted as "net" below;
#   2. load window: fanout-bench at RATE msg/s; once its progress line shows the measured phase,
#      CONFIG RESETSTAT and snapshots of node CPU (utime+stime, /proc/<pid>/stat), Redis
#      INFO (stats, cpu, commandstats) and /proc/stat, again SECS - 1.5 s later (so the window
#      lies inside the sending, whatever the 1 s lag of the progress line). Messages in the
#      window = fanout-bench's ACCEPTED measured sends per second x window length.
#
# Figures (per accepted message, or per 1 000): CPU of each uninterested node (nodes
# INTERESTED+1..N, mean) and of the interested ones, raw and net of the idle window; Redis
# total_net_output_bytes, used_cpu_sys+used_cpu_user, every command's calls and usec
# (INFO commandstats), and the "send path" usec = the sum over SEND_PATH_CMDS; delivery
# p50/p99 at the client's socket and ACCEPTED / lost counts from fanout-bench's JSON.
#
# Redis counts a command a script runs both inside the script's own usec (evalsha) and on the
# command's own line (a nested XADD appears under xadd too): SEND_PATH_CMDS must therefore list
# only commands a client sends itself, and so depends on the nodes' send path (CHAT_SEND_PATH
# in NODE_ENV, else in the environment the nodes inherit, else the node's default, script):
#   script:      evalsha eval evalsha_ro eval_ro fcall (the send script, with the commands it
#                runs: its SISMEMBER and HMGET are inside evalsha and must not be listed)
#                + xread xreadgroup (readers of the stream design before issue 17);
#   transaction: the same + the transaction's own commands, watch sismember hmget get multi
#                exec unwatch (EXEC, like a script, counts the commands it runs: hset, set,
#                xadd, expire, publish are inside it and must not be listed). Its sends that go
#                to the script (a chat's first message, duplicates) count their SISMEMBER and
#                HMGET twice, and chat:join, a chat's position read and the gap fill send
#                sismember, hmget and exec too: counted here, so this figure errs high.
# Until 2026-12-07 the transaction's list was the default for both paths, which counted the
# script's SISMEMBER and HMGET twice (4-7 usec per message; docs/benchmarks.md, "The send path
# figure of the script, corrected").
# A design whose node sends PUBLISH / SPUBLISH as a command of its own adds publish / spublish.
# Top-level xadd is the canary here, not the send path. The "all commands" sum counts nested
# commands twice and is printed for completeness only; Redis CPU (used_cpu_*) is the total.
#
# Environment (defaults in brackets):
#   NODES [3]  INTERESTED [2]  RATE [1000] msg/s  SECS [10] measured seconds  WARMUP [2]
#   GRACE [2]  CLIENTS [200]  ROOM_SIZE [10]  SENDERS [40]  PAYLOAD [100] bytes
#   IDLE_SECS [SECS - 1.5]  SETTLE [3] s after the last node is ready
#   NODE_THREADS [1]  tokio workers per node (TOKIO_WORKER_THREADS)
#   GEN_THREADS [1]   fanout-bench worker threads
#   SEND_PATH_CMDS    see above (its default follows the send path)
#   NODE_ENV          extra "K=V K=V" for every node (e.g. BACKPLANE_SHARDS=8)
#   REDIS_CPUS, OTHER_CPUS  taskset CPU lists: Redis on REDIS_CPUS, the nodes and the generator
#                     on OTHER_CPUS (e.g. REDIS_CPUS=1 OTHER_CPUS=0: Redis on a core of its own,
#                     as in production, where it does not share a core with the gateway)
#   REDIS_CPU_HOG [0]  1 = keep Redis's CPUs from going idle: bench/paced-cost.c's `hog` (a
#                     spin loop that touches no memory) runs as SCHED_IDLE on REDIS_CPUS (which
#                     it needs, as one CPU), so Redis gets its CPU whenever it can run but the CPU never
#                     halts between Redis's calls (docs/benchmarks.md, "Why a paced call costs
#                     more"); its CPU is counted with ours, not as other processes'
#   FANOUT_BIN_DIR [target/release]  holds fanout and fanout-bench
#   OUT [bench/results/scale-n<NODES>-r<RATE>.json]  the result file
#   KEEP [0]  1 = keep the work dir (node and Redis logs, fanout-bench's own JSON)
#   QUIET_PCT [30]  QUIET_WAIT [30]  before starting, wait up to QUIET_WAIT s for the machine to
#                   be below QUIET_PCT% busy (all cores); the run goes on either way, and the
#                   result records the CPU other processes took during the load window
#
# Needs redis-server, redis-cli, jq, awk. Everything listens on 127.0.0.1; every process started
# here is stopped on exit (trap, by pid); the run is bounded (timeouts on every wait).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

die() { echo "scale.sh: $*" >&2; exit 2; }
say() { echo "scale.sh: $*" >&2; }

NODES=${NODES:-3}
INTERESTED=${INTERESTED:-2}
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
NODES_SEND_PATH=script
[[ " $NODE_ENV " == *" CHAT_SEND_PATH=transaction "* ]] && NODES_SEND_PATH=transaction
[[ " $NODE_ENV " != *" CHAT_SEND_PATH="* && ${CHAT_SEND_PATH:-} == transaction ]] && NODES_SEND_PATH=transaction
# The script's list, and the transaction's own commands added to it on that path (see above).
DEFAULT_SEND_PATH_CMDS="evalsha eval evalsha_ro eval_ro fcall xread xreadgroup"
[[ $NODES_SEND_PATH == transaction ]] && DEFAULT_SEND_PATH_CMDS+=" watch sismember hmget get multi exec unwatch"
SEND_PATH_CMDS=${SEND_PATH_CMDS:-$DEFAULT_SEND_PATH_CMDS}
BIN=${FANOUT_BIN_DIR:-$ROOT/target/release}
OUT=${OUT:-$HERE/results/scale-n$NODES-r$RATE.json}
KEEP=${KEEP:-0}
QUIET_PCT=${QUIET_PCT:-30}
QUIET_WAIT=${QUIET_WAIT:-30}

for v in NODES INTERESTED CLIENTS ROOM_SIZE SENDERS PAYLOAD SETTLE NODE_THREADS GEN_THREADS \
    QUIET_PCT QUIET_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for v in RATE SECS WARMUP GRACE; do
    [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$v must be a number (got '${!v}')"
done
((INTERESTED >= 1 && INTERESTED <= NODES)) || die "INTERESTED must be 1..NODES"
((NODES <= 64)) || die "NODES must be at most 64"
((NODE_THREADS >= 1 && GEN_THREADS >= 1)) || die "NODE_THREADS and GEN_THREADS must be at least 1"
# The load window: inside the sending whatever the progress line's lag (up to 1 s + polling).
WINDOW=$(awk -v s="$SECS" 'BEGIN { w = s - 1.5; printf "%.1f", (w < 1 ? 1 : w) }')
IDLE_SECS=${IDLE_SECS:-$WINDOW}
[[ $IDLE_SECS =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "IDLE_SECS must be a number"
awk -v s="$SECS" 'BEGIN { exit !(s >= 2.5) }' || die "SECS must be at least 2.5"
for tool in redis-server redis-cli jq awk timeout; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x $BIN/fanout && -x $BIN/fanout-bench ]] ||
    die "no fanout / fanout-bench in $BIN (cargo build --release --bins, or set FANOUT_BIN_DIR)"
read -r -a SEND_PATH <<<"$SEND_PATH_CMDS"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fanout-scale.XXXXXX")
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

# A port below the ephemeral range that nothing listens on and this script has not handed out
# yet, in FREE_PORT (not echoed: a $(...) subshell would lose USED_PORTS, and the nodes bind theirs
# only once started).
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

RCLI=()
rcli() { "${RCLI[@]}" "$@"; }

# ---- snapshots
CLK_TCK=$(getconf CLK_TCK)
# utime+stime in clock ticks of each pid given, space-separated ("null" for a gone process).
ticks() {
    local p out=()
    for p in "$@"; do
        out+=("$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)")
        [[ -n ${out[-1]} ]] || out[-1]=null
    done
    echo "${out[*]}"
}

# One snapshot as JSON into $1: wall time, ticks of nodes / redis / generator ($2 = generator
# pid or empty), /proc/stat, Redis INFO (everything: stats, cpu, commandstats).
snapshot() {
    local file=$1 gen=${2:-} t node_ticks other_ticks machine info
    t=$(date +%s.%N)
    node_ticks=$(ticks "${NODE_PIDS[@]}")
    other_ticks=$(ticks "$REDIS_PID" "${gen:-none}" "${HOG_PID:-none}")
    machine=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print t - idle, t; exit }' /proc/stat)
    info=$(rcli info everything | tr -d '\r')
    jq -n --arg t "$t" --arg nt "$node_ticks" --arg ot "$other_ticks" --arg m "$machine" \
        --arg info "$info" '
        def nums: split(" ") | map(select(. != "") | if . == "null" then null else tonumber end);
        ($info | split("\n") | map(select(test("^[a-z_|]+:")) | capture("^(?<k>[^:]+):(?<v>.*)$"))) as $kv
        | {
            t: ($t | tonumber),
            node_ticks: ($nt | nums),
            redis_ticks: ($ot | nums)[0],
            gen_ticks: ($ot | nums)[1],
            hog_ticks: ($ot | nums)[2],
            machine_busy: ($m | nums)[0], machine_total: ($m | nums)[1],
            net_output_bytes: ($kv | map(select(.k == "total_net_output_bytes"))[0].v | tonumber),
            net_input_bytes: ($kv | map(select(.k == "total_net_input_bytes"))[0].v | tonumber),
            redis_cpu: ($kv | map(select(.k == "used_cpu_sys" or .k == "used_cpu_user") | .v | tonumber) | add),
            cmd: ($kv | map(select(.k | startswith("cmdstat_"))
                  | { key: (.k | ltrimstr("cmdstat_")),
                      value: (.v | split(",") | map(split("=")) | map({ key: .[0], value: (.[1] | tonumber) })
                              | from_entries | { calls, usec }) })
                  | from_entries)
          }' >"$file"
}

# ---- a quiet machine first (busy share of all cores over one second, from /proc/stat)
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

# ---- start redis and the nodes
say "starting redis and $NODES nodes (clients on nodes 1..$INTERESTED)"
free_port
REDIS_PORT=$FREE_PORT
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --notify-keyspace-events Ex --dir "$WORK/redis" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
# Pinning (all threads of the process, and those it starts later inherit it).
pin() { # cpus pid
    [[ -z $1 ]] || taskset -a -p -c "$1" "$2" >/dev/null || die "taskset -c $1 $2 failed"
}
pin "${REDIS_CPUS:-}" "$REDIS_PID"
HOG_PID=""
if [[ ${REDIS_CPU_HOG:-0} == 1 ]]; then
    # Redis runs its commands on one thread: one CPU, one hog.
    [[ ${REDIS_CPUS:-} =~ ^[0-9]+$ ]] || die "REDIS_CPU_HOG=1 needs REDIS_CPUS to be one CPU"
    command -v cc >/dev/null || die "REDIS_CPU_HOG=1 needs cc to build bench/paced-cost.c"
    cc -O2 -o "$WORK/paced-cost" "$HERE/paced-cost.c" || die "could not build bench/paced-cost.c"
    taskset -c "$REDIS_CPUS" chrt -i 0 "$WORK/paced-cost" hog &
    HOG_PID=$!
    PIDS+=("$HOG_PID")
fi
RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 100); do
    [[ $(rcli ping 2>/dev/null) == PONG ]] && break
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited: $(tail -3 "$WORK/redis.log")"
    sleep 0.1
done
[[ $(rcli ping 2>/dev/null) == PONG ]] || die "redis-server not up within 10 s"

SECRET=scale-secret-$RANDOM$RANDOM
API_KEY=scale-key-$RANDOM$RANDOM
read -r -a EXTRA_ENV <<<"$NODE_ENV"
NODE_PIDS=() NODE_PORTS=() ADMIN_PORTS=()
for ((i = 1; i <= NODES; i++)); do
    free_port
    port=$FREE_PORT
    free_port
    admin=$FREE_PORT
    env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" JWT_SECRET="$SECRET" API_KEY="$API_KEY" \
        PORT="$port" ADMIN_PORT="$admin" NODE_ID="n$i" BIND_ADDR=127.0.0.1 RUST_LOG=warn \
        TOKIO_WORKER_THREADS="$NODE_THREADS" SHUTDOWN_GRACE_SECS=1 \
        RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000 "${EXTRA_ENV[@]}" \
        "$BIN/fanout" >"$WORK/node-$i.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
    pin "${OTHER_CPUS:-}" "$!"
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
say "all $NODES nodes ready; settling ${SETTLE}s"
sleep "$SETTLE"

# ---- idle window
say "idle window: ${IDLE_SECS}s"
rcli config resetstat >/dev/null
snapshot "$WORK/idle-a.json"
sleep "$IDLE_SECS"
snapshot "$WORK/idle-b.json"

# ---- load window
urls=$(for ((i = 0; i < INTERESTED; i++)); do printf 'http://127.0.0.1:%s,' "${NODE_PORTS[i]}"; done)
urls=${urls%,}
limit=$(awk -v w="$WARMUP" -v d="$SECS" -v g="$GRACE" 'BEGIN { printf "%d", w + d + g + 120 }')
say "load: $CLIENTS clients on nodes 1..$INTERESTED, rooms of $ROOM_SIZE, $SENDERS senders, $RATE msg/s, ${SECS}s measured"
timeout --kill-after=10 "$limit" "$BIN/fanout-bench" --url "$urls" \
    --admin-url "http://127.0.0.1:${ADMIN_PORTS[0]}" --api-key "$API_KEY" --jwt-secret "$SECRET" \
    --clients "$CLIENTS" --room-size "$ROOM_SIZE" --senders "$SENDERS" --rate "$RATE" \
    --payload-bytes "$PAYLOAD" --warmup "$WARMUP" --duration "$SECS" --grace "$GRACE" \
    --threads "$GEN_THREADS" --watch-pid "$(IFS=,; echo "${NODE_PIDS[*]},$REDIS_PID")" \
    --out "$WORK/bench.json" >"$WORK/bench.stdout" 2>"$WORK/bench.stderr" &
TIMEOUT_PID=$!
PIDS+=("$TIMEOUT_PID")
# The generator itself is timeout's child: its CPU is the one to read.
GEN_PID=""
for _ in $(seq 50); do
    GEN_PID=$(ps -o pid= --ppid "$TIMEOUT_PID" | tr -d ' ' | head -1)
    [[ -n $GEN_PID ]] && break
    sleep 0.1
done
[[ -n $GEN_PID ]] || die "fanout-bench did not start: $(tail -5 "$WORK/bench.stderr")"
pin "${OTHER_CPUS:-}" "$GEN_PID"
until grep -q " measure\]" "$WORK/bench.stderr" 2>/dev/null; do
    kill -0 "$TIMEOUT_PID" 2>/dev/null ||
        die "fanout-bench ended before measuring: $(tail -5 "$WORK/bench.stderr")"
    sleep 0.1
done
# Interest routing (no shard streams): one published chat:message frame, caught by a short
# pattern subscription before the window opens (its own traffic is outside the window).
if [[ -z ${ENVELOPE_BYTES:-} ]] && [[ -z $(rcli --scan --pattern 'fanout:*:bp' | head -1) ]]; then
    timeout 1 "${RCLI[@]}" --raw psubscribe 'fanout:{chat:*}:ch' >"$WORK/frames.txt" 2>/dev/null || true
    ENVELOPE_BYTES=$(LC_ALL=C awk '/"chat:message"/ { print length($0); exit }' "$WORK/frames.txt")
fi
rcli config resetstat >/dev/null
snapshot "$WORK/load-a.json" "$GEN_PID"
sleep "$WINDOW"
snapshot "$WORK/load-b.json" "$GEN_PID"
# The chat:message envelope as the backplane carries it (stream field e of a shard entry; the
# canaries' is empty), for the bound "(interested nodes + 1) x envelope". A design without
# shard streams took one published frame above.
if [[ -z ${ENVELOPE_BYTES:-} ]]; then
    ENVELOPE_BYTES=$(for k in $(rcli --scan --pattern 'fanout:*:bp' | head -64); do
        rcli --raw xrevrange "$k" + - COUNT 20
    done | LC_ALL=C awk 'prev == "e" && /chat:message/ && !n { n = length($0) } { prev = $0 }
                         END { if (n) print n }' || true)
fi
[[ ${ENVELOPE_BYTES:-} =~ ^[0-9]+$ ]] || ENVELOPE_BYTES=null
gen_status=0
wait "$TIMEOUT_PID" || gen_status=$?
((gen_status == 0)) || say "warning: fanout-bench exited with $gen_status: $(tail -3 "$WORK/bench.stderr")"
[[ -s $WORK/bench.json ]] || die "fanout-bench wrote no results: $(tail -5 "$WORK/bench.stderr")"

# ---- figures
send_path_json=$(printf '%s\n' "${SEND_PATH[@]}" | jq -R . | jq -s .)
jq -n \
    --slurpfile ia "$WORK/idle-a.json" --slurpfile ib "$WORK/idle-b.json" \
    --slurpfile la "$WORK/load-a.json" --slurpfile lb "$WORK/load-b.json" \
    --slurpfile bench "$WORK/bench.json" --argjson send_path "$send_path_json" --arg nodes_send_path "$NODES_SEND_PATH" \
    --argjson nodes "$NODES" --argjson interested "$INTERESTED" --argjson rate "$RATE" \
    --argjson secs "$SECS" --argjson warmup "$WARMUP" --argjson clients "$CLIENTS" \
    --argjson room_size "$ROOM_SIZE" --argjson senders "$SENDERS" --argjson payload "$PAYLOAD" \
    --argjson node_threads "$NODE_THREADS" --argjson gen_threads "$GEN_THREADS" \
    --argjson hz "$CLK_TCK" --argjson ncpu "$(nproc)" \
    --arg redis_cpus "${REDIS_CPUS:-}" --arg other_cpus "${OTHER_CPUS:-}" --arg redis_cpu_hog "${REDIS_CPU_HOG:-0}" \
    --arg node_env "$NODE_ENV" --arg git "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --arg dirty "$(git -C "$ROOT" status --porcelain -- src lua crates 2>/dev/null | head -c 1)" \
    --arg started "$(date -u +%FT%TZ)" --arg redis_version "$(redis-server --version | sed 's/"//g')" \
    --arg bin "$BIN" --argjson busy_before "$BUSY_BEFORE" --argjson gen_status "$gen_status" --argjson envelope "$ENVELOPE_BYTES" '
    def r(n): if . == null then null else (. * pow(10; n) | round) / pow(10; n) end;
    def mean: if length == 0 then null else add / length end;
    ($ia[0]) as $ia | ($ib[0]) as $ib | ($la[0]) as $la | ($lb[0]) as $lb | ($bench[0]) as $b
    | ($ib.t - $ia.t) as $idle_s | ($lb.t - $la.t) as $load_s
    | ($b.send.acked / $b.config.duration_secs) as $acc_rate
    | ($acc_rate * $load_s) as $msgs
    # CPU seconds of node i over a window.
    | [range(0; $nodes) | (($ib.node_ticks[.] - $ia.node_ticks[.]) / $hz)] as $idle_cpu
    | [range(0; $nodes) | (($lb.node_ticks[.] - $la.node_ticks[.]) / $hz)] as $load_cpu
    | def group(sel):
        [range(0; $nodes) | select(sel)] as $ix
        | if ($ix | length) == 0 then null else
          ($ix | map($idle_cpu[.] / $idle_s) | mean) as $idle_frac
          | ($ix | map($load_cpu[.] / $load_s) | mean) as $load_frac
          | { nodes: ($ix | length),
              idle_cpu_pct_of_core: ($idle_frac * 100 | r(2)),
              load_cpu_pct_of_core: ($load_frac * 100 | r(2)),
              cpu_ms_per_1000_msgs: ($load_frac * $load_s / $msgs * 1e6 | r(2)),
              cpu_ms_per_1000_msgs_net_of_idle: (($load_frac - $idle_frac) * $load_s / $msgs * 1e6 | r(2)),
              cpu_us_per_msg_net_of_idle: (($load_frac - $idle_frac) * $load_s / $msgs * 1e6 | r(3)),
              min_load_cpu_pct: ($ix | map($load_cpu[.] / $load_s * 100) | min | r(2)),
              max_load_cpu_pct: ($ix | map($load_cpu[.] / $load_s * 100) | max | r(2)) }
          end;
      # Per-command figures of a window (its stats were reset at its start).
      def cmds(w; secs; per):
        w.cmd | to_entries | sort_by(-.value.usec)
        | map({ key, value: ({ calls: .value.calls, usec: .value.usec,
                               calls_per_sec: (.value.calls / secs | r(1)),
                               usec_per_sec: (.value.usec / secs | r(1)) }
                             + (if per then { calls_per_msg: (.value.calls / $msgs | r(3)),
                                              usec_per_msg: (.value.usec / $msgs | r(3)) }
                                else {} end)) })
        | from_entries;
      def sp(w): [$send_path[] as $c | (w.cmd[$c].usec // 0)] | add;
      def all(w): [w.cmd[] | .usec] | add // 0;
      ($lb.net_output_bytes / $load_s) as $bytes_load_ps | ($ib.net_output_bytes / $idle_s) as $bytes_idle_ps
      | (($lb.redis_cpu - $la.redis_cpu) / $load_s) as $rcpu_load | (($ib.redis_cpu - $ia.redis_cpu) / $idle_s) as $rcpu_idle
      | (sp($lb) / $load_s) as $sp_load | (sp($ib) / $idle_s) as $sp_idle
      | (all($lb) / $load_s) as $all_load | (all($ib) / $idle_s) as $all_idle
      | (($lb.machine_busy - $la.machine_busy) / ($lb.machine_total - $la.machine_total) * $ncpu * 100) as $busy_pct
      | (if $lb.hog_ticks == null then null else ($lb.hog_ticks - $la.hog_ticks) / $hz / $load_s * 100 end) as $hog_pct
      | ((($load_cpu | add) / $load_s * 100) + (($lb.redis_ticks - $la.redis_ticks) / $hz / $load_s * 100)
         + (if $lb.gen_ticks == null then 0 else ($lb.gen_ticks - $la.gen_ticks) / $hz / $load_s * 100 end)
         + ($hog_pct // 0)) as $ours_pct
      | {
        scenario: "issue 17 scale simulation",
        started_utc: $started, git_head: $git, source_dirty: ($dirty != ""),
        redis_version: $redis_version, bin_dir: $bin,
        command: ("NODES=\($nodes) INTERESTED=\($interested) RATE=\($rate) SECS=\($secs) CLIENTS=\($clients) ROOM_SIZE=\($room_size) SENDERS=\($senders) bench/scale.sh"),
        config: { nodes: $nodes, interested_nodes: $interested, rate: $rate, secs: $secs, warmup: $warmup,
                  clients: $clients, room_size: $room_size, senders: $senders, payload_bytes: $payload,
                  node_threads: $node_threads, generator_threads: $gen_threads, node_env: $node_env,
                  send_path: $nodes_send_path, send_path_cmds: $send_path, redis_cpus: $redis_cpus, other_cpus: $other_cpus,
                  redis_cpu_hog: ($redis_cpu_hog == "1") },
        windows: { idle_secs: ($idle_s | r(3)), load_secs: ($load_s | r(3)) },
        accepted: { measured: $b.send.acked, sent: $b.send.sent, per_sec: ($acc_rate | r(1)),
                    in_load_window: ($msgs | r(0)) },
        check: { nacked: $b.send.nacked, ack_timeouts: $b.send.ack_timeouts,
                 skipped_inflight_cap: $b.send.skipped_inflight_cap,
                 connected: $b.connect.connected, lost: $b.delivery.lost,
                 duplicated: $b.delivery.duplicated, reordered: $b.delivery.reordered,
                 generator_exit: $gen_status,
                 ok: ($gen_status == 0 and $b.delivery.lost == 0 and $b.delivery.duplicated == 0
                      and $b.delivery.reordered == 0 and $b.send.acked == $b.send.sent
                      and $b.connect.connected == $clients) },
        delivery_ms: { socket: $b.delivery.socket_latency_ms, read: $b.delivery.latency_ms },
        ack_ms: $b.send.ack_latency_ms,
        cpu: {
          uninterested: group(. >= $interested),
          interested: group(. < $interested),
          per_node: [range(0; $nodes) | { node: "n\(. + 1)", interested: (. < $interested),
                       idle_cpu_secs: ($idle_cpu[.] | r(3)), load_cpu_secs: ($load_cpu[.] | r(3)) }]
        },
        redis: {
          envelope_bytes: $envelope,
          bound_bytes_per_msg_interested_plus_1_envelopes:
            (if $envelope == null then null else ($interested + 1) * $envelope end),
          net_output_bytes_per_msg: ($bytes_load_ps / $acc_rate | r(1)),
          net_output_bytes_per_msg_net_of_idle: (($bytes_load_ps - $bytes_idle_ps) / $acc_rate | r(1)),
          net_output_bytes_per_sec_idle: ($bytes_idle_ps | r(0)),
          net_input_bytes_per_msg: ($lb.net_input_bytes / $load_s / $acc_rate | r(1)),
          cpu_us_per_msg: ($rcpu_load / $acc_rate * 1e6 | r(2)),
          cpu_us_per_msg_net_of_idle: (($rcpu_load - $rcpu_idle) / $acc_rate * 1e6 | r(2)),
          cpu_pct_of_core_idle: ($rcpu_idle * 100 | r(2)), cpu_pct_of_core_load: ($rcpu_load * 100 | r(2)),
          send_path_usec_per_msg: ($sp_load / $acc_rate | r(2)),
          send_path_usec_per_msg_net_of_idle: (($sp_load - $sp_idle) / $acc_rate | r(2)),
          all_commands_usec_per_msg_nested_counted_twice: ($all_load / $acc_rate | r(2)),
          all_commands_usec_per_msg_net_of_idle: (($all_load - $all_idle) / $acc_rate | r(2)),
          commands_load: cmds($lb; $load_s; true),
          commands_idle: cmds($ib; $idle_s; false)
        },
        machine: { cpus: $ncpu, busy_pct_all_cores_before_start: $busy_before,
                   busy_pct_of_one_core_load: ($busy_pct | r(1)),
                   other_cpu_pct_of_one_core_load: (($busy_pct - $ours_pct) | r(1)),
                   redis_cpu_hog_pct_of_one_core_load: ($hog_pct | r(1)),
                   generator_cpu_pct_of_one_core: $b.generator.cpu_pct_of_one_core_measured,
                   steal_pct_all_cores: $b.generator.machine_cpu_steal_pct_all_cores_measured },
        bench_watched: $b.watched
      }' >"$OUT"

jq -r '
    def f(x): if x == null then "-" else (x | tostring) end;
    "nodes \(.config.nodes) rate \(.config.rate) | accepted \(.accepted.measured) (\(.accepted.per_sec)/s) ok=\(.check.ok) lost \(.check.lost)",
    "uninterested node CPU: \(f(.cpu.uninterested.idle_cpu_pct_of_core))% idle, \(f(.cpu.uninterested.load_cpu_pct_of_core))% load of a core = \(f(.cpu.uninterested.cpu_ms_per_1000_msgs)) ms per 1000 msgs (\(f(.cpu.uninterested.cpu_ms_per_1000_msgs_net_of_idle)) net of idle)",
    "interested node CPU:   \(.cpu.interested.idle_cpu_pct_of_core)% idle, \(.cpu.interested.load_cpu_pct_of_core)% load = \(.cpu.interested.cpu_ms_per_1000_msgs) ms per 1000 msgs (\(.cpu.interested.cpu_ms_per_1000_msgs_net_of_idle) net)",
    "redis: \(.redis.net_output_bytes_per_msg) B sent/msg (\(.redis.net_output_bytes_per_msg_net_of_idle) net; envelope \(f(.redis.envelope_bytes)) B), CPU \(.redis.cpu_us_per_msg) us/msg (\(.redis.cpu_us_per_msg_net_of_idle) net), send path \(.redis.send_path_usec_per_msg) usec/msg (\(.redis.send_path_usec_per_msg_net_of_idle) net) [\(.config.send_path_cmds | join(" "))]",
    "delivery at socket p50 \(.delivery_ms.socket.p50) p99 \(.delivery_ms.socket.p99) ms (read p99 \(.delivery_ms.read.p99)); machine busy \(.machine.busy_pct_of_one_core_load)% of a core, other \(.machine.other_cpu_pct_of_one_core_load)%",
    "redis commands per accepted msg (load window; nested script commands appear under their own name too):",
    (.redis.commands_load | to_entries[] | "  \(.key): \(.value.calls_per_msg) calls, \(.value.usec_per_msg) usec  (\(.value.usec_per_sec) usec/s)")
' "$OUT"
say "result: $OUT"
