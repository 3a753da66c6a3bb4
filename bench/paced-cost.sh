#!/bin/bash
# What a fixed piece of work costs on this machine back to back and after a pause, with no
# Redis in it (docs/benchmarks.md, "Why a paced call costs more").
#
# usage: bench/paced-cost.sh [ROUNDS] [ITERATIONS]
#
# Builds bench/paced-cost.c with cc, then for ROUNDS rounds (default 3) runs every work
# (compute; a walk over 32, 256 and 1024 KiB) back to back, after a sleep of 10, 100 and
# 1000 µs, and after a 1000 µs busy wait, ITERATIONS times each (default 2000). Prints one
# line per run, then the median over the rounds of each setting's median ns per iteration.
# CPUS=<list> runs them under taskset -c <list>.
set -euo pipefail
ROUNDS=${1:-3}
N=${2:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/paced-cost"
mkdir -p "$ROOT/target"
cc -O2 -Wall -o "$BIN" "$ROOT/bench/paced-cost.c"
RUN=("$BIN")
if [ -n "${CPUS:-}" ]; then RUN=(taskset -c "$CPUS" "$BIN"); fi

OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for _ in $(seq "$ROUNDS"); do
  for work in compute mem:32 mem:256 mem:1024; do
    for pause in "0 sleep" "10 sleep" "100 sleep" "1000 sleep" "1000 spin"; do
      set -- $pause
      "${RUN[@]}" "$work" "$N" "$1" "$2" | tee -a "$OUT"
    done
  done
done
echo
echo "median over $ROUNDS rounds of the median ns per iteration:"
# Lines look like: mem:32 sleep_us=1000 n=2000 median_ns=6370 p10_ns=... (paced-cost.c)
awk '{ split($4, m, "="); key = $1 " " $2; v[key] = v[key] " " m[2] }
     END { for (k in v) print k, v[k] }' "$OUT" | sort -k1,1 -k2,2V | while read -r work pause vals; do
  med=$(echo "$vals" | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%-10s %-16s %10s   (%s)\n' "$work" "$pause" "$med" "$vals"
done
