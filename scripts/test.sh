#!/usr/bin/env bash
# Runs the whole iothub test suite on a fresh Debian machine (as root, or with sudo):
# installs what is missing, starts what the tests need, then checks formatting, lints,
# builds the release binaries and runs every test.
#
# What the system tests need, and how this script provides it:
#   - Redis on 127.0.0.1:6379: Debian's redis-server, started here if nothing answers there
#     (and stopped again at exit if this script started it);
#   - a Kafka-protocol broker: tansu, installed once with cargo (about 15 minutes on
#     2 cores); the tests start their own broker processes from $TANSU_BIN;
#   - nginx with its stream module (Debian's nginx + libnginx-mod-stream): the cluster
#     tests run it as the layer-4 balancer in front of several iothubd nodes;
#   - FFmpeg, openssl, Chromium, Node.js and npm (Debian's packages): the media tests publish,
#     play and probe with FFmpeg, make certificates with openssl and play HTTP-FLV in headless
#     Chromium with mpegts.js (from npm);
#   - Prometheus, Alertmanager (with promtool and amtool) and docker-compose from Debian: the
#     monitoring tests check the shipped monitoring files with them and run the servers
#     against live iothubd nodes;
#   - the iothubd binary: built here in release mode; $IOTHUBD_BIN points at it;
#   - the README's two commands work as written: scripts/readme-commands.sh runs the run
#     command and the loadgen command in a fresh clone before the tests.
#
# Environment it reads: TANSU_BIN (use this tansu binary), CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
STARTED_AT="$(date +%s)"

step() {
    printf '\n==> [%4ss] %s\n' "$(($(date +%s) - STARTED_AT))" "$*"
}

fail() {
    printf 'scripts/test.sh: %s\n' "$*" >&2
    exit 1
}

CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
    *":$CARGO_BIN_DIR:"*) ;;
    *) export PATH="$CARGO_BIN_DIR:$PATH" ;;
esac
command -v cargo >/dev/null || fail "cargo not found: install Rust first (https://rustup.rs)"

# --- Debian packages -----------------------------------------------------------------------

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
APT_UPDATED=no
apt_install() {
    command -v apt-get >/dev/null || fail "missing $*; install it (no apt-get on this machine)"
    if [ "$SUDO" = sudo ] && ! command -v sudo >/dev/null; then
        fail "missing $*; run this script as root or install it"
    fi
    if [ "$APT_UPDATED" = no ]; then
        step "apt-get update"
        $SUDO apt-get update -q
        APT_UPDATED=yes
    fi
    step "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@"
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v curl >/dev/null || missing+=(curl)
# librdkafka (vendored by rdkafka) and tansu's libsql are built from C sources.
command -v cc >/dev/null || missing+=(gcc g++ libc6-dev)
command -v make >/dev/null || missing+=(make)
# The cluster tests put a real nginx stream balancer in front of the nodes.
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
if [ ! -x "$NGINX" ]; then
    missing+=(nginx libnginx-mod-stream)
elif [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ] \
    && ! "$NGINX" -V 2>&1 | grep -qE -- '--with-stream( |$)'; then
    missing+=(libnginx-mod-stream)
fi
# The monitoring tests run the shipped configuration through the real servers and checkers:
# Prometheus and promtool, Alertmanager and amtool, and docker-compose (1.x) for
# `docker-compose config` on every compose file.
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null \
    || missing+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# The media tests: FFmpeg publishes, plays and probes; openssl makes the certificates as the
# operator's guide does; headless Chromium plays HTTP-FLV with mpegts.js, which the test
# installs from npm.
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    step "Debian packages: redis-server, curl, nginx (stream), prometheus, prometheus-alertmanager, docker-compose, ffmpeg, openssl, chromium, node and npm, a C compiler and make are present"
fi

# --- Rust components -----------------------------------------------------------------------

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || fail "cargo $component is missing and rustup is not installed"
        step "rustup component add $component"
        rustup component add "$component"
    fi
done

# --- tansu (Kafka-protocol broker for the tests) ---------------------------------------------

if [ -n "${TANSU_BIN:-}" ] && [ -x "$TANSU_BIN" ]; then
    step "tansu: using TANSU_BIN=$TANSU_BIN"
elif command -v tansu >/dev/null; then
    TANSU_BIN="$(command -v tansu)"
    step "tansu: using $TANSU_BIN"
elif [ -x "$CARGO_BIN_DIR/tansu" ]; then
    TANSU_BIN="$CARGO_BIN_DIR/tansu"
    step "tansu: using $TANSU_BIN"
else
    step "installing tansu with cargo (about 15 minutes on 2 cores, once)"
    cargo install tansu --locked --features dynostore,libsql
    TANSU_BIN="$CARGO_BIN_DIR/tansu"
fi
[ -x "$TANSU_BIN" ] || fail "tansu is not executable at $TANSU_BIN"
export TANSU_BIN

# --- Redis ---------------------------------------------------------------------------------

REDIS_HOST=127.0.0.1
REDIS_PORT=6379
redis_answers() {
    if command -v redis-cli >/dev/null; then
        [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
        return
    fi
    # Without redis-cli: speak RESP over bash's /dev/tcp.
    local reply=""
    { exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    [ "${reply%$'\r'}" = "+PONG" ]
}

WORK_DIR="$(mktemp -d)"
REDIS_PID_FILE=""
cleanup() {
    if [ -n "$REDIS_PID_FILE" ] && [ -s "$REDIS_PID_FILE" ]; then
        kill "$(cat "$REDIS_PID_FILE")" 2>/dev/null || true
    fi
    rm -rf "$WORK_DIR"
}
trap cleanup EXIT

if redis_answers; then
    step "Redis answers on $REDIS_HOST:$REDIS_PORT"
else
    step "starting redis-server on $REDIS_HOST:$REDIS_PORT"
    REDIS_PID_FILE="$WORK_DIR/redis.pid"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$WORK_DIR" --pidfile "$REDIS_PID_FILE" \
        --logfile "$WORK_DIR/redis.log"
    for _ in $(seq 1 50); do
        redis_answers && break
        sleep 0.2
    done
    redis_answers || fail "redis-server did not answer on $REDIS_HOST:$REDIS_PORT (log: $(cat "$WORK_DIR/redis.log" 2>/dev/null))"
fi
export REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT"

# Load tests open many sockets: use the hard limit for open files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- Checks, build, tests ------------------------------------------------------------------

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release --workspace"
cargo build --release --workspace

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export IOTHUBD_BIN="$TARGET_DIR/release/iothubd"
[ -x "$IOTHUBD_BIN" ] || fail "the release build did not produce $IOTHUBD_BIN"
export IOTHUB_LOADGEN_BIN="$TARGET_DIR/release/iothub-loadgen"

step "the README's commands, as written, in a fresh clone (scripts/readme-commands.sh)"
CARGO_TARGET_DIR="$TARGET_DIR" scripts/readme-commands.sh

step "cargo test --workspace --release (IOTHUBD_BIN=$IOTHUBD_BIN, TANSU_BIN=$TANSU_BIN, REDIS_URL=$REDIS_URL)"
cargo test --workspace --release

step "all checks and tests passed in $(($(date +%s) - STARTED_AT)) s"
