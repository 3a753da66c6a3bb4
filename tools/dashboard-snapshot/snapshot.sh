#!/usr/bin/env bash
# Render the fanout dashboard with real data, without Grafana, into docs/img/dashboard.png.
#
# Needs a running `WITH_PROMETHEUS=1 make up` (Redis, the nodes, HAProxy, Prometheus on
# 127.0.0.1:9090). Then, all on loopback:
#   1. drives real traffic through HAProxy for TRAFFIC_SECS: fanout-bench (steady senders in
#      rooms of 10, websocket) and traffic.mjs (the official socket.io-client: users who
#      connect and leave over websocket and long-polling, refused handshakes, FORBIDDEN and
#      INVALID_PAYLOAD answers, deduplicated retries);
#   2. fetch.py runs the PromQL of the chosen panels of grafana/dashboards/fanout.json
#      against Prometheus (query_range) and writes data.js next to a copy of index.html in
#      RUN_DIR/dashboard-snapshot/;
#   3. serves that directory with python3 -m http.server on 127.0.0.1 and takes a screenshot
#      with Debian's headless chromium (installed with apt-get if missing).
# Everything it starts is stopped when it exits (also on Ctrl-C).
#
# Settings (environment variables, defaults in brackets):
#   RUN_DIR [.run]          the run dir of `make up` (its env file gives the URLs and keys)
#   TRAFFIC_SECS [150]      seconds of traffic; 0 = no traffic, only render what is there
#   WINDOW_SECS [TRAFFIC_SECS + 45]  length of the rendered time window (TRAFFIC_SECS=0: 600)
#   END [now]               with TRAFFIC_SECS=0: unix time at which the window ends, to
#                           render an earlier run again (Prometheus keeps RUN_DIR's data 2 d)
#   BENCH_CLIENTS [200]  BENCH_SENDERS [20]  BENCH_RATE [100]  (messages/s in total)
#   TRAFFIC_USERS [24]      users of traffic.mjs
#   OUT [docs/img/dashboard.png]
#   WINDOW_SIZE [1400,1000] the browser window, in CSS pixels
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

RUN_DIR=${RUN_DIR:-.run}
case $RUN_DIR in /*) ;; *) RUN_DIR="$ROOT/$RUN_DIR" ;; esac
TRAFFIC_SECS=${TRAFFIC_SECS:-150}
BENCH_CLIENTS=${BENCH_CLIENTS:-200}
BENCH_SENDERS=${BENCH_SENDERS:-20}
BENCH_RATE=${BENCH_RATE:-100}
TRAFFIC_USERS=${TRAFFIC_USERS:-24}
OUT=${OUT:-docs/img/dashboard.png}
case $OUT in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
WINDOW_SIZE=${WINDOW_SIZE:-1400,1000}
BENCH_BIN=${FANOUT_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}/fanout-bench
SNAP_DIR="$RUN_DIR/dashboard-snapshot"

log() { printf '[snapshot] %s\n' "$*"; }
die() { printf '[snapshot] ERROR: %s\n' "$*" >&2; exit 1; }

for v in TRAFFIC_SECS BENCH_CLIENTS BENCH_SENDERS BENCH_RATE TRAFFIC_USERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
if ((TRAFFIC_SECS > 0)); then
    WINDOW_SECS=${WINDOW_SECS:-$((TRAFFIC_SECS + 45))}
else
    WINDOW_SECS=${WINDOW_SECS:-600}
fi
if ! [[ $WINDOW_SECS =~ ^[0-9]+$ ]] || ((WINDOW_SECS < 60)); then
    die "WINDOW_SECS must be an integer of at least 60 (got '$WINDOW_SECS')"
fi

# ---------------------------------------------------------------------------------------------
# Children: stopped on any exit
# ---------------------------------------------------------------------------------------------
CHILDREN=()
BROWSER_PROFILE=""
cleanup() {
    local p
    for p in "${CHILDREN[@]}"; do
        if kill -0 "$p" 2>/dev/null; then kill -s TERM "$p" 2>/dev/null || true; fi
    done
    for p in "${CHILDREN[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -n $BROWSER_PROFILE ]] && rm -rf "$BROWSER_PROFILE"
    return 0
}
trap cleanup EXIT
trap 'echo; log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. The cluster and Prometheus must be up
# ---------------------------------------------------------------------------------------------
[[ -f $RUN_DIR/env ]] || die "$RUN_DIR/env not found: start the cluster first with: WITH_PROMETHEUS=1 make up"
# shellcheck source=/dev/null
source "$RUN_DIR/env"
[[ -n ${PROMETHEUS_URL:-} ]] ||
    die "the cluster in $RUN_DIR runs without Prometheus: restart it with: WITH_PROMETHEUS=1 make up"
[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$PROMETHEUS_URL/-/ready" || true) == 200 ]] ||
    die "Prometheus at $PROMETHEUS_URL is not ready: is WITH_PROMETHEUS=1 make up running?"
[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$FANOUT_URL/readyz" || true) == 200 ]] ||
    die "the cluster at $FANOUT_URL is not ready: is WITH_PROMETHEUS=1 make up running?"
# Every node must be scraped successfully (a freshly started Prometheus needs one scrape).
targets_up() {
    curl -s --max-time 5 "$PROMETHEUS_URL/api/v1/targets?state=active" | python3 -c '
import json, sys
ts = json.load(sys.stdin)["data"]["activeTargets"]
nodes = [t for t in ts if t["labels"].get("job") == "fanout"]
print(", ".join(t["labels"]["instance"] + " " + t["health"] for t in ts))
sys.exit(0 if nodes and all(t["health"] == "up" for t in nodes) else 1)'
}
for ((try = 0; ; try++)); do
    if summary=$(targets_up); then
        log "Prometheus targets: $summary"
        break
    fi
    ((try < 20)) || die "not every node is up in Prometheus ($summary; see $PROMETHEUS_URL/targets)"
    sleep 1
done

# ---------------------------------------------------------------------------------------------
# 2. Tools: chromium (Debian), socket.io-client (npm, into tools/dashboard-snapshot/node_modules)
# ---------------------------------------------------------------------------------------------
if ! command -v chromium >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "chromium is missing and apt-get is not available"
    SUDO=()
    [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
    log "installing Debian's chromium (apt-get) ..."
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ((TRAFFIC_SECS > 0)); then
    command -v node >/dev/null 2>&1 || die "node is needed for traffic.mjs (apt-get install nodejs npm)"
    if [[ ! -d $HERE/node_modules/socket.io-client ]]; then
        log "npm ci (socket.io-client) in tools/dashboard-snapshot"
        (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    [[ -x $BENCH_BIN ]] || die "$BENCH_BIN not found (build with: cargo build --release --bins)"
fi

# ---------------------------------------------------------------------------------------------
# 3. Traffic
# ---------------------------------------------------------------------------------------------
mkdir -p "$SNAP_DIR"
if ((TRAFFIC_SECS > 0)); then
    t0=$(date +%s)
    log "traffic for ${TRAFFIC_SECS}s through $FANOUT_URL: fanout-bench ($BENCH_CLIENTS clients, $BENCH_SENDERS senders, $BENCH_RATE msg/s; log $SNAP_DIR/bench.log) + traffic.mjs ($TRAFFIC_USERS users; log $SNAP_DIR/traffic.log)"
    "$BENCH_BIN" --url "$FANOUT_URL" --admin-url "$FANOUT_ADMIN_URL" --api-key "$API_KEY" \
        --jwt-secret "$JWT_SECRET" --clients "$BENCH_CLIENTS" --room-size 10 \
        --senders "$BENCH_SENDERS" --rate "$BENCH_RATE" --warmup 2 --duration "$TRAFFIC_SECS" \
        --grace 3 --out "$SNAP_DIR/bench.json" >"$SNAP_DIR/bench.log" 2>&1 &
    bench_pid=$!
    CHILDREN+=("$bench_pid")
    DURATION=$TRAFFIC_SECS USERS=$TRAFFIC_USERS \
        node "$HERE/traffic.mjs" >"$SNAP_DIR/traffic.log" 2>&1 &
    traffic_pid=$!
    CHILDREN+=("$traffic_pid")
    while kill -0 "$traffic_pid" 2>/dev/null || kill -0 "$bench_pid" 2>/dev/null; do
        sleep 10 &
        wait $! || true
        log "$(($(date +%s) - t0))s: $(tail -n 1 "$SNAP_DIR/bench.log" 2>/dev/null | cut -c1-140)"
    done
    wait "$bench_pid" && bench_rc=0 || bench_rc=$?
    wait "$traffic_pid" && traffic_rc=0 || traffic_rc=$?
    ((bench_rc == 0)) || die "fanout-bench failed (exit $bench_rc): see $SNAP_DIR/bench.log"
    ((traffic_rc == 0)) || die "traffic.mjs failed (exit $traffic_rc): see $SNAP_DIR/traffic.log"
    grep -E '^(send|delivery|latency):' "$SNAP_DIR/bench.log" | sed 's/^/[snapshot] bench /' || true
    log "traffic.mjs: $(tail -n 1 "$SNAP_DIR/traffic.log")"
    # The window ends while the traffic still ran at full rate (5 s before its end), so the
    # stat panels' "last value" show the load, not the idle cluster afterwards. Wait for one
    # more scrape so that every point of the window has been collected.
    end=$((t0 + TRAFFIC_SECS - 5))
    sleep 6
else
    end=${END:-$(date +%s)}
    [[ $end =~ ^[0-9]+$ ]] || die "END must be a unix time in seconds (got '$end')"
fi
start=$((end - WINDOW_SECS))

# ---------------------------------------------------------------------------------------------
# 4. Fetch the panels' data and render the page
# ---------------------------------------------------------------------------------------------
cp "$HERE/index.html" "$SNAP_DIR/index.html"
python3 "$HERE/fetch.py" --prometheus "$PROMETHEUS_URL" --start "$start" --end "$end" \
    --out "$SNAP_DIR/data.js"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$SNAP_DIR" >"$SNAP_DIR/http.log" 2>&1 &
CHILDREN+=("$!")
for _ in $(seq 1 50); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/index.html" || true) == 200 ]] && break
    sleep 0.1
done

mkdir -p "$(dirname "$OUT")"
BROWSER_PROFILE=$(mktemp -d)
log "chromium --headless --screenshot=$OUT http://127.0.0.1:$port/index.html"
rm -f "$OUT"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$BROWSER_PROFILE" --window-size="$WINDOW_SIZE" \
    --screenshot="$OUT" "http://127.0.0.1:$port/index.html" >"$SNAP_DIR/chromium.log" 2>&1 ||
    die "chromium failed: see $SNAP_DIR/chromium.log"
[[ -s $OUT ]] || die "chromium wrote no screenshot (see $SNAP_DIR/chromium.log)"
log "wrote $OUT ($(stat -c %s "$OUT") bytes); the page is in $SNAP_DIR/ (open index.html)"
