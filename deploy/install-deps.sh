#!/usr/bin/env bash
# Install the system tools the local cluster and the test suite need, with
# apt-get, but only those that are missing. Idempotent: when everything is
# there it does nothing (and never runs `apt-get update`).
#
#   deploy/install-deps.sh                  # all: redis-server haproxy curl
#   deploy/install-deps.sh redis-server     # only what `make test` needs
#   deploy/install-deps.sh prometheus       # optional: `WITH_PROMETHEUS=1 make up`
#
# Tools (command checked with `command -v`, or the check named -> Debian package):
#   redis-server -> redis-server  (also brings redis-cli via redis-tools; `redis-server
#                                  --sentinel` runs a sentinel, no other package needed)
#   redis-cli    -> redis-tools   (REDIS=cluster make up and the Redis Cluster tests:
#                                  `redis-cli --cluster create` / `--cluster reshard`)
#   haproxy      -> haproxy
#   curl         -> curl          (used by deploy/up.sh for readiness checks)
#   pkg-config   -> pkg-config    (make test: finds OpenSSL for the rust_socketio interop
#                                  test's dev-dependency, native-tls)
#   openssl-dev  -> libssl-dev    (make test: the same; checked with `pkg-config --exists openssl`)
#   python3      -> python3       (make test: the python-socketio interop test and the
#                                  Kubernetes manifest validation run Python tools in venvs)
#   python3-venv -> python3-venv  (make test: the same; checked with
#                                  `python3 -c 'import venv, ensurepip'`)
#   node, npm    -> nodejs, npm   (optional: the Admin UI and demo page of deploy/up.sh)
#   chromium     -> chromium      (make test: the headless browser test of the Admin UI and
#                                  the demo page, tests/it/admin.rs)
#   ip, tc       -> iproute2      (tests/it/partition.rs: network namespaces, veth, netem)
#   nft          -> nftables      (tests/it/partition.rs: cuts and packet loss inside a test's
#                                  own namespace; also where the kernel has no netem)
#   prometheus   -> prometheus    (optional, never in the default list; deploy/up.sh
#                                  runs it as its own child process)
#
# Services are NOT started by the package install (a temporary
# /usr/sbin/policy-rc.d denies it), so no system-wide Redis grabs port 6379:
# deploy/up.sh and the tests start their own redis-server processes. The
# prometheus package's service is also disabled (and stopped if it runs anyway)
# right after a fresh install, so that it does not hold 127.0.0.1:9090 now or
# after the next boot: deploy/up.sh starts its own Prometheus.
set -euo pipefail

declare -A PKG_OF=([redis-server]=redis-server [redis-cli]=redis-tools [haproxy]=haproxy [curl]=curl [prometheus]=prometheus
    [pkg-config]=pkg-config [openssl-dev]=libssl-dev [python3]=python3 [python3-venv]=python3-venv
    [node]=nodejs [npm]=npm [chromium]=chromium
    [ip]=iproute2 [tc]=iproute2 [nft]=nftables)

# Whether `tool` is there: a command on PATH, or for the two library-like items their own check.
present() {
    case $1 in
        openssl-dev) command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl ;;
        python3-venv) python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

if [[ $# -gt 0 ]]; then
    wanted=("$@")
else
    wanted=(redis-server haproxy curl)
fi

missing_pkgs=()
for tool in "${wanted[@]}"; do
    pkg=${PKG_OF[$tool]:-}
    if [[ -z $pkg ]]; then
        echo "install-deps: unknown tool '$tool' (known: ${!PKG_OF[*]})" >&2
        exit 2
    fi
    if present "$tool"; then
        echo "install-deps: $tool: already installed ($(command -v "$tool" || echo "${PKG_OF[$tool]}"))"
    else
        missing_pkgs+=("$pkg")
    fi
done

if [[ ${#missing_pkgs[@]} -eq 0 ]]; then
    exit 0
fi

echo "install-deps: missing: ${missing_pkgs[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: apt-get not found; please install these yourself: ${missing_pkgs[*]}" >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: not root and sudo is not available; run as root or install: ${missing_pkgs[*]}" >&2
        exit 1
    fi
fi

# Keep the packages' init scripts / systemd units from starting daemons
# (notably a system redis-server on 6379) during the install.
POLICY=/usr/sbin/policy-rc.d
policy_created=0
cleanup_policy() {
    if [[ $policy_created -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup_policy EXIT
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\n# temporary, created by fanout deploy/install-deps.sh\nexit 101\n' |
        "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    policy_created=1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get update"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
echo "install-deps: apt-get install ${missing_pkgs[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing_pkgs[@]}" >/dev/null

status=0
for tool in "${wanted[@]}"; do
    if present "$tool"; then
        :
    else
        echo "install-deps: $tool still not found after installing ${PKG_OF[$tool]}" >&2
        status=1
    fi
done
[[ $status -eq 0 ]] || exit "$status"

for pkg in "${missing_pkgs[@]}"; do
    version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo '?')
    echo "install-deps: installed $pkg $version"
done

# The prometheus package ships a service (prometheus.service / init script)
# that would scrape only itself on :9090. We just installed it: keep it from
# running now and at boot. (Only on a fresh install by this script, never for
# a Prometheus the machine already had.)
for pkg in "${missing_pkgs[@]}"; do
    [[ $pkg == prometheus ]] || continue
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        echo "install-deps: disabled the prometheus package's systemd service (deploy/up.sh runs its own)"
    else
        if [[ -x /etc/init.d/prometheus ]]; then
            "${SUDO[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1; then
            "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
    # Whatever the init system: a daemon run by the package's user is its service.
    if command -v pgrep >/dev/null 2>&1 && svc=$(pgrep -u prometheus -x prometheus 2>/dev/null); then
        mapfile -t svc_pids <<<"$svc"
        echo "install-deps: stopping the prometheus service the install started (pid ${svc_pids[*]})"
        "${SUDO[@]}" kill -s TERM "${svc_pids[@]}" 2>/dev/null || true
    fi
done
