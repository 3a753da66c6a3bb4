#!/usr/bin/env bash
# The markdown table of docs/benchmarks.md ("Interest routing: scale simulation") from the
# result files bench/scale.sh wrote: one row per (nodes, rate), the median of the runs with
# their range [min–max] when there are several.
#
#   bench/scale-table.sh bench/results/scale-before/*.json
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: bench/scale-table.sh <result.json>..." >&2; exit 2; }
jq -s -r '
    def med: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def fmt(d): if . == null then "–" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
    # median [min–max] of a figure over the runs of a group
    def cell(f; d): [.[] | f | select(. != null)]
        | if length == 0 then "–"
          elif length == 1 then (.[0] | fmt(d))
          else "\(med | fmt(d)) [\(min | fmt(d))–\(max | fmt(d))]" end;
    "| nodes | rate (msg/s) | runs | uninterested node: CPU ms per 1 000 msgs, net of idle | uninterested node: CPU % of a core, idle → load | interested node: CPU ms per 1 000 msgs, net | Redis bytes sent per msg | Redis CPU µs per msg | Redis send-path µs per msg (commandstats) | Redis all commands µs per msg (nested twice) | delivery p99 at the socket (ms) | other processes, % of a core |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    (group_by(.config.nodes, .config.rate) | sort_by(.[0].config.nodes, .[0].config.rate)[]
     | "| \(.[0].config.nodes) | \(.[0].config.rate) | \(length)\(if all(.[]; .check.ok) then "" else " (not all ok)" end) | \(cell(.cpu.uninterested.cpu_ms_per_1000_msgs_net_of_idle; 1)) | \(cell(.cpu.uninterested.idle_cpu_pct_of_core; 2)) → \(cell(.cpu.uninterested.load_cpu_pct_of_core; 2)) | \(cell(.cpu.interested.cpu_ms_per_1000_msgs_net_of_idle; 1)) | \(cell(.redis.net_output_bytes_per_msg; 0)) | \(cell(.redis.cpu_us_per_msg; 0)) | \(cell(.redis.send_path_usec_per_msg; 1)) | \(cell(.redis.all_commands_usec_per_msg_nested_counted_twice; 1)) | \(cell(.delivery_ms.socket.p99; 1)) | \(cell(.machine.other_cpu_pct_of_one_core_load; 0)) |")
' "$@"
