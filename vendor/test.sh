#!/usr/bin/env bash
# Runs the vendored engineioxide's own tests (lib and tests/, features v3 and __test_harness).
# They need engineioxide's dev-dependencies, which cargo only builds for workspace members, so
# the two crates are copied beside a two-member workspace in a temporary directory; the
# top-level Cargo.lock pins the versions. Usage: vendor/test.sh [extra cargo test args]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The committed patch must describe the vendored copies (vendor/README.md).
"$here/make-patch.sh" --check
dir="$(mktemp -d "${TMPDIR:-/tmp}/fanout-vendor-test.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
cp -r "$here/engineioxide" "$here/engineioxide-core" "$dir/"
cp "$here/../Cargo.lock" "$dir/"
cat > "$dir/Cargo.toml" <<'TOML'
[workspace]
members = ["engineioxide", "engineioxide-core"]
resolver = "2"

[patch.crates-io]
engineioxide-core = { path = "engineioxide-core" }
TOML
export CARGO_TARGET_DIR="${VENDOR_TARGET_DIR:-$here/../target/vendor-test}"
cd "$dir"
"${CARGO:-cargo}" test -p engineioxide --lib --tests --features __test_harness,v3 "$@"
