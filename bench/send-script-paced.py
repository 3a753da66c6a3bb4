#!/usr/bin/env python3
"""Redis time of lua/chat_send.lua per call from one connection, tight or paced
(docs/benchmarks.md, "What the after figures say").

usage: bench/send-script-paced.py PORT N GAP_SECONDS
       PREV=1 bench/send-script-paced.py PORT N GAP_SECONDS   the ARGV of commit dc4f5d6's script

Needs a redis-server on 127.0.0.1:PORT with the script loaded and the sender a member:
    SHA=$(redis-cli -p PORT script load "$(cat lua/chat_send.lua)")
    redis-cli -p PORT sadd 'fanout:{chat:c1}:members' u1
then `redis-cli -p PORT config resetstat`, this script, and `redis-cli -p PORT info
commandstats` (cmdstat_evalsha usec_per_call). The SHA is read from SHA in the environment; with
PREV=1 the calls carry the ARGV of the script before the packed log entry (load
`git show dc4f5d6:lua/chat_send.lua` then).
Raw RESP over a socket, so no client library is needed; each call waits for its reply.

TX=1: the send transaction instead (src/redis/scripts/chat_send_tx.rs, CHAT_SEND_PATH=
transaction): per message one pipeline WATCH members meta, SISMEMBER, HMGET meta epoch seq
ttlp, GET dedup, then one MULTI HSET meta seq, SET dedup EX, XADD log MAXLEN ~ 1000 0-<offset>
m <entry>, EXPIRE log NX, PUBLISH, EXEC: the commands a node sends within a TTL period. SHA is not needed then; the chat
gets its epoch first (as the script gives it to the first message). Redis's time per message is
the sum of usec of watch, sismember, hmget, get, multi and exec in INFO commandstats (exec
counts the commands it runs; their own lines count them again).
"""
import json
import os
import socket
import sys
import time

port, n, gap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sha = os.environ.get("SHA", "")
tx = bool(os.environ.get("TX"))
T = "fanout:{chat:c1}"
content = '{"s":3,"q":12345,"t":1234567890123,"p":"' + "x" * 56 + '"}'
head = ('{"n":"node-1","e":[{"emit":{"rooms":["chat:c1"],"event":"chat:message","data":'
        '{"id":"0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b","chatId":"c1","senderId":"u1",'
        '"clientMsgId":"k-1","type":"text","content":"x","createdAt":"2026-12-06T12:00:00.000Z","offset":')
# The log entry (one field `m`), as chat_send.rs builds it.
entry = ('{"id":"0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b","senderId":"u1","clientMsgId":"k-1",'
         '"type":"text","content":' + json.dumps(content) + ',"createdAt":"2026-12-06T12:00:00.000Z"}')
prev = bool(os.environ.get("PREV"))


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


sock = socket.create_connection(("127.0.0.1", port))
replies = sock.makefile("rb")


def read_reply():
    line = replies.readline()
    if line[:1] == b"*":
        for _ in range(int(line[1:])):
            read_reply()
    elif line[:1] == b"$" and int(line[1:]) >= 0:
        replies.read(int(line[1:]) + 2)
    elif line[:1] == b"-":
        sys.exit("redis error: " + line.decode().strip())


def send_tx(cid):
    dedup = f"{T}:dedup:u1|{cid}"
    sock.sendall(command("WATCH", T + ":members", T + ":meta")
                 + command("SISMEMBER", T + ":members", "u1")
                 + command("HMGET", T + ":meta", "epoch", "seq", "ttlp")
                 + command("GET", dedup))
    replies.readline()  # +OK
    read_reply()
    line = replies.readline()  # *3: epoch, seq, ttlp
    values = []
    for _ in range(int(line[1:])):
        size = int(replies.readline()[1:])
        values.append(replies.read(size + 2)[:-2].decode() if size >= 0 else None)
    read_reply()
    offset = int(values[1] or 0) + 1
    frame = head + str(offset) + ',"epoch":"' + (values[0] or "") + '"}}]}'
    cmds = [("MULTI",), ("HSET", T + ":meta", "seq", str(offset)),
            ("SET", dedup, f"{offset} {values[0]} 0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b 2026-12-06T12:00:00.000Z", "EX", "86400"),
            ("XADD", T + ":log", "MAXLEN", "~", "1000", f"0-{offset}", "m", entry),
            ("EXPIRE", T + ":log", "86460", "NX"),
            ("PUBLISH", T + ":ch", frame), ("EXEC",)]
    sock.sendall(b"".join(command(*c) for c in cmds))
    for _ in cmds:
        read_reply()


if tx:
    sock.sendall(command("HSETNX", T + ":meta", "epoch", "ab12cd34"))
    read_reply()
    sock.sendall(command("HSETNX", T + ":meta", "seq", "0"))
    read_reply()
run = str(time.time_ns())
for i in range(n):
    if tx:
        send_tx(f"k-{run}-{i}")
        if gap > 0:
            time.sleep(gap)
        continue
    cid = f"k-{run}-{i}"
    keys = [T + ":members", T + ":meta", T + ":log", f"{T}:dedup:u1|{cid}", T + ":ch"]
    if prev:
        args = ["u1", "0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b", cid, "text", content,
                "2026-12-06T12:00:00.000Z", "ab12cd34", "1000", "86400", "86400", "PUBLISH"]
    else:
        # TTL HISTORY_TTL_SECS + R and the current period, R = 60 s (chat_send::log_ttl).
        args = ["u1", "0193a4b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b", cid, "2026-12-06T12:00:00.000Z",
                "ab12cd34", "1000", "86460", str(int(time.time()) // 60), "86400", "PUBLISH", entry]
    sock.sendall(command("EVALSHA", sha, "5", *keys, *args, head, ',"epoch":"', '"}}]}'))
    read_reply()
    if gap > 0:
        time.sleep(gap)
