#!/bin/bash
# Redis time of lua/chat_send.lua per call (docs/benchmarks.md, "Send script cost (issue 17)").
#
# usage: bench/send-script-cost.sh [N] [SUBSCRIBERS] [PUBLISH|SPUBLISH]
#        BEFORE=1 bench/send-script-cost.sh [N]   the script of commit 2ace6fe (before issue 17:
#                                                  XADD to the shard stream, shard-tagged keys)
#        PREV=1 bench/send-script-cost.sh [N] [SUBSCRIBERS] [PUBLISH|SPUBLISH]
#                                                  the script of commit dc4f5d6 (six-field log
#                                                  entries, EXPIRE on every append, GET + SET)
#
# Starts a private redis-server (no persistence) on a free port, puts 10 members in chat c1,
# subscribes SUBSCRIBERS redis-cli clients to the chat's channel, sends 3000 messages to fill the
# history past HISTORY_MAXLEN (1000), resets the statistics, sends N messages (4 connections,
# each with a fresh clientMsgId, 100-byte content), and prints INFO commandstats: the
# `cmdstat_evalsha` usec_per_call is the script's whole cost, inner commands included.
set -euo pipefail
N=${1:-100000}
SUBS=${2:-0}
PUBCMD=${3:-PUBLISH}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --save '' --appendonly no --daemonize yes --dir "$DIR" \
  --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid" >/dev/null
C="redis-cli -p $PORT"
SUBPIDS=()
cleanup() {
  for p in "${SUBPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  $C shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
until $C ping >/dev/null 2>&1; do sleep 0.1; done

if [ -n "${BEFORE:-}" ]; then
  SHA=$($C script load "$(git -C "$ROOT" show 2ace6fe:lua/chat_send.lua)")
  T='fanout:{s3}:chat:c1'
elif [ -n "${PREV:-}" ]; then
  SHA=$($C script load "$(git -C "$ROOT" show dc4f5d6:lua/chat_send.lua)")
  T='fanout:{chat:c1}'
else
  SHA=$($C script load "$(cat "$ROOT/lua/chat_send.lua")")
  T='fanout:{chat:c1}'
fi
$C sadd "$T:members" u0 u1 u2 u3 u4 u5 u6 u7 u8 u9 >/dev/null
SUBCMD=subscribe
[ "$PUBCMD" = SPUBLISH ] && SUBCMD=ssubscribe
for _ in $(seq "$SUBS"); do
  $C "$SUBCMD" "$T:ch" >/dev/null &
  SUBPIDS+=($!)
done
CONTENT='{"s":3,"q":12345,"t":1234567890123,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
ESC=${CONTENT//\"/\\\"}
# The log entry (one field `m`): the message as JSON, as chat_send.rs builds it.
ENTRY='{"id":"0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b","senderId":"u1","clientMsgId":"k-1","type":"text","content":"'$ESC'","createdAt":"2026-12-06T12:00:00.000Z"}'
# The refresh period of the log's TTL (R = 60 s for HISTORY_TTL_SECS 86400): the first call of a
# period also runs EXPIRE and HSET, as in a node.
PERIOD=$(( $(date +%s) / 60 ))
HEAD='{"n":"node-1","e":[{"emit":{"rooms":["chat:c1"],"event":"chat:message","data":{"id":"0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b","chatId":"c1","senderId":"u1","clientMsgId":"k-1","type":"text","content":"'$ESC'","createdAt":"2026-12-06T12:00:00.000Z","offset":'
send() {
  if [ -n "${BEFORE:-}" ]; then
    redis-benchmark -p "$PORT" -c 4 -n "$1" -r 1000000000 -q \
      EVALSHA "$SHA" 5 "$T:members" "$T:meta" "$T:log" "$T:dedup:u1|k-__rand_int__" 'fanout:{s3}:bp' \
      u1 0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b k-__rand_int__ text "$CONTENT" \
      2026-12-06T12:00:00.000Z ab12cd34 1000 86400 86400 node-1 100000 "${HEAD#*\"e\":}" ',"epoch":' '}}]' \
      >/dev/null
    return
  fi
  if [ -n "${PREV:-}" ]; then
    redis-benchmark -p "$PORT" -c 4 -n "$1" -r 1000000000 -q \
      EVALSHA "$SHA" 5 "$T:members" "$T:meta" "$T:log" "$T:dedup:u1|k-__rand_int__" "$T:ch" \
      u1 0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b k-__rand_int__ text "$CONTENT" \
      2026-12-06T12:00:00.000Z ab12cd34 1000 86400 86400 "$PUBCMD" "$HEAD" ',"epoch":"' '"}}]}' \
      >/dev/null
    return
  fi
  redis-benchmark -p "$PORT" -c 4 -n "$1" -r 1000000000 -q \
    EVALSHA "$SHA" 5 "$T:members" "$T:meta" "$T:log" "$T:dedup:u1|k-__rand_int__" "$T:ch" \
    u1 0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b k-__rand_int__ 2026-12-06T12:00:00.000Z ab12cd34 \
    1000 86460 "$PERIOD" 86400 "$PUBCMD" "$ENTRY" "$HEAD" ',"epoch":"' '"}}]}' \
    >/dev/null
}
send 3000
$C config resetstat >/dev/null
send "$N"
$C pubsub numsub "$T:ch" | tail -1 | sed 's/^/channel subscribers (PUBSUB NUMSUB): /'
$C pubsub shardnumsub "$T:ch" | tail -1 | sed 's/^/shard channel subscribers (PUBSUB SHARDNUMSUB): /'
echo "N=$N subscribers=$SUBS publish=$PUBCMD history_len=$($C xlen "$T:log")"
$C info commandstats | grep -E '^cmdstat_(evalsha|sismember|hget|hmget|get|hset|hincrby|xadd|expire|set|publish|spublish):'
