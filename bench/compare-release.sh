#!/usr/bin/env bash
# bench/compare.sh (the side by side with the Node.js Socket.IO peer) on the release binaries
# already in target/release: no rebuild, so it measures exactly the build bench/scale.sh just
# measured. It changes nothing of what compare.sh measures; it only fills in the settings of
# the quiet runs of docs/benchmarks.md ("Side by side with Node.js Socket.IO").
#
#   bench/compare-release.sh                      # fanout-small, rates 1000,2000,3000,4000
#   bench/compare-release.sh smoke                # the 3 s preset of the test (both systems)
#   bench/compare-release.sh fanout-large-rooms --rates 50,70 --systems fanout
#
# The first argument is compare.sh's scenario (default fanout-small, also when the first
# argument is an option); the options go to compare.sh after the defaults below, so they
# override them. Environment:
#   FANOUT_BIN_DIR [target/release]   NICE [-10] niceness of the whole run (as in the docs)
#   NO_INSTALL: set to 1 when redis-server is present and bench/peer's npm install is done
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BIN=${FANOUT_BIN_DIR:-$ROOT/target/release}
[[ -x $BIN/fanout && -x $BIN/fanout-bench ]] ||
    { echo "compare-release.sh: no fanout / fanout-bench in $BIN (cargo build --release --bins)" >&2; exit 2; }

SCENARIO=fanout-small
if [[ $# -gt 0 && $1 != --* ]]; then
    SCENARIO=$1
    shift
fi
DEFAULTS=(--retries 1 --quiet-wait 30)
case $SCENARIO in
fanout-small) DEFAULTS+=(--rates 1000,2000,3000,4000 --all-steps 1) ;;
smoke) DEFAULTS=() ;;
esac
if [[ -z ${NO_INSTALL:-} ]] && command -v redis-server >/dev/null &&
    cmp -s "$HERE/peer/package-lock.json" "$HERE/peer/node_modules/.compare-sh-installed" 2>/dev/null; then
    NO_INSTALL=1
fi
export FANOUT_BIN_DIR=$BIN NO_INSTALL=${NO_INSTALL:-0}
exec nice -n "${NICE:--10}" "$HERE/compare.sh" "$SCENARIO" "${DEFAULTS[@]}" "$@"
