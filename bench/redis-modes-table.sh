#!/usr/bin/env bash
# The markdown tables of docs/benchmarks.md ("Redis Cluster and Sentinel (issue 18)") from the
# result files bench/redis-modes.sh wrote: one row per (mode, WAIT, rate), the median of the runs
# with their range [min–max] when there are several; then, with --spread, one row per master of
# each cluster run (keys by kind, channels, command load, CPU) and the skew (max / mean).
#
#   bench/redis-modes-table.sh bench/results/redis-modes/*.json
#   bench/redis-modes-table.sh --spread bench/results/redis-modes/cluster-w0-r1000-*.json
set -euo pipefail
spread=0
if [[ ${1:-} == --spread ]]; then spread=1; shift; fi
[[ $# -ge 1 ]] || { echo "usage: bench/redis-modes-table.sh [--spread] <result.json>..." >&2; exit 2; }
if ((spread)); then
    jq -s -r '
        "| run (results written, UTC) | master | chats | keys (DBSIZE) | chat keys | user keys | presence keys | presence deadline buckets | (shard) channels | commands per msg | command µs per msg (nested twice) | CPU µs per msg | CPU % of a core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        (.[] | select(.config.mode == "cluster") | . as $run
         | (.redis.masters[] | "| \($run.started_utc) r\($run.config.rate) w\($run.config.wait_replicas) | \(.port) | \(.patterns["fanout:{chat:*}:meta"] // 0) | \(.dbsize) | \(.keys.chat) | \(.keys.user) | \(.keys.presence) | \(.keys.presence_deadlines) | \(.channels) | \(.calls_per_msg_all) | \(.usec_per_msg_all_nested_twice) | \(.cpu_us_per_msg) | \(.cpu_pct_of_core) |"),
           (.redis.skew_max_over_mean as $s | "| skew max/mean | | \([$run.redis.masters[] | .patterns["fanout:{chat:*}:meta"] // 0] | (max / (add / length) * 1000 | round / 1000)) | \($s.dbsize) | \($s.chat_keys) | \($s.user_keys) | \($s.presence_keys) | \($s.presence_deadline_buckets) | \($s.channels) | \($s.calls) | \($s.usec) | \($s.cpu) | |"))
    ' "$@"
    exit 0
fi
jq -s -r '
    def med: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def fmt(d): if . == null then "–" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
    def cell(f; d): [.[] | f | select(. != null)]
        | if length == 0 then "–"
          elif length == 1 then (.[0] | fmt(d))
          else "\(med | fmt(d)) [\(min | fmt(d))–\(max | fmt(d))]" end;
    "| mode (masters) | WAIT | rate (msg/s) | clients / chats | runs | accepted/s | ACK p50 (ms) | ACK p99 (ms) | delivery p99 at the socket (ms) | Redis CPU µs per msg, sum of masters | Redis CPU µs per msg per master | Redis CPU % of a core per master | replicas CPU µs per msg | commands per msg, sum of masters | nodes CPU % of a core (each) | generator CPU % | other processes, % of a core |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    (group_by(.config.mode, .config.wait_replicas, .config.rate, .config.clients)
     | sort_by(.[0].config.mode != "single", .[0].config.wait_replicas, .[0].config.rate, .[0].config.clients)[]
     | "| \(.[0].config.mode) (\(.[0].config.masters)) | \(.[0].config.wait_replicas) | \(.[0].config.rate) | \(.[0].config.clients) / \(.[0].config.rooms) | \(length)\(if all(.[]; .check.ok) then "" else " (not all ok)" end) | \(cell(.accepted.per_sec; 0)) | \(cell(.ack_ms.p50; 2)) | \(cell(.ack_ms.p99; 2)) | \(cell(.delivery_ms.socket.p99; 2)) | \(cell(.redis.total.cpu_us_per_msg_masters; 1)) | \([range(0; .[0].config.masters) as $i | cell(.redis.masters | sort_by(-.cpu_us_per_msg) | .[$i].cpu_us_per_msg; 1)] | join(" / ")) | \([range(0; .[0].config.masters) as $i | cell(.redis.masters | sort_by(-.cpu_pct_of_core) | .[$i].cpu_pct_of_core; 0)] | join(" / ")) | \(cell(.redis.total.cpu_us_per_msg_replicas; 1)) | \(cell(.redis.total.calls_per_msg_masters; 2)) | \(cell(.cpu_pct_of_core.nodes | add / length; 0)) | \(cell(.cpu_pct_of_core.generator; 0)) | \(cell(.machine.other_cpu_pct_of_one_core_load; 0)) |")
' "$@"
