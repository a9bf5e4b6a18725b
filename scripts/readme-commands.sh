#!/usr/bin/env bash
# Runs the README's commands exactly as written, in a fresh clone of this repository, the way
# a newcomer would: the run command (the first `sh` block under "The two commands") must start
# a hub whose /health, /ready and /metrics answer on the default ports, and the loadgen
# command of "Connecting devices" must log its trackers in to that hub.
#
# The commands are read out of README.md rather than copied here, so the README cannot drift
# from what is tested. scripts/test.sh runs this before the test suite, while the default
# ports are free.
#
# Environment it reads: CARGO_TARGET_DIR (shared with the caller's build, so that only the
# workspace's own crates are compiled again).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

fail() {
    printf 'scripts/readme-commands.sh: %s\n' "$*" >&2
    exit 1
}

# The first line of the first ```sh block after the heading $1.
command_after() {
    awk -v heading="$1" '
        $0 == heading { found = 1; next }
        found && /^```sh$/ { inside = 1; next }
        inside { print; exit }
    ' "$ROOT/README.md"
}

RUN_COMMAND="$(command_after '## The two commands')"
LOADGEN_COMMAND="$(command_after '## Connecting devices')"
[ "$RUN_COMMAND" = "cargo run --release --bin iothubd" ] \
    || fail "README's run command is '$RUN_COMMAND'; update this script with it"
case "$LOADGEN_COMMAND" in
    "cargo run --release --bin iothub-loadgen -- trackers "*) ;;
    *) fail "README's loadgen command is '$LOADGEN_COMMAND'; update this script with it" ;;
esac

CLONE_PARENT="$(mktemp -d)"
HUB_PID=""
cleanup() {
    if [ -n "$HUB_PID" ]; then
        kill "$HUB_PID" 2>/dev/null || true
        wait "$HUB_PID" 2>/dev/null || true
    fi
    rm -rf "$CLONE_PARENT"
}
trap cleanup EXIT

git clone --quiet "$ROOT" "$CLONE_PARENT/iothub"
cd "$CLONE_PARENT/iothub"

for port in 21100 21121 10088 9100; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port is already in use: stop whatever listens there and run again"
    fi
done

echo "readme-commands: $RUN_COMMAND (in a fresh clone)"
bash -c "$RUN_COMMAND" >"$CLONE_PARENT/iothubd.log" 2>&1 &
HUB_PID=$!

# Building the workspace's crates in release mode takes minutes on 2 cores.
answered=no
for _ in $(seq 1 1200); do
    if ! kill -0 "$HUB_PID" 2>/dev/null; then
        tail -n 40 "$CLONE_PARENT/iothubd.log" >&2
        fail "'$RUN_COMMAND' exited before the hub answered on /health"
    fi
    if curl -fsS --max-time 2 http://127.0.0.1:10088/health >/dev/null 2>&1; then
        answered=yes
        break
    fi
    sleep 1
done
[ "$answered" = yes ] || fail "no answer on http://127.0.0.1:10088/health within 20 minutes"

curl -fsS --max-time 5 http://127.0.0.1:10088/ready >/dev/null \
    || fail "/ready does not answer 200 on the embedded defaults"
curl -fsS --max-time 5 http://127.0.0.1:9100/metrics | grep -q '^iothub_' \
    || fail "/metrics on 9100 has no iothub_ series"
echo "readme-commands: /health, /ready and /metrics answer"

echo "readme-commands: $LOADGEN_COMMAND"
timeout 900 bash -c "$LOADGEN_COMMAND" >"$CLONE_PARENT/loadgen.log" 2>&1 \
    || { tail -n 40 "$CLONE_PARENT/loadgen.log" >&2; fail "the README's loadgen command failed"; }

logins="$(curl -fsS --max-time 5 http://127.0.0.1:9100/metrics \
    | awk '/^iothub_logins_total/ { sum += $NF } END { print sum + 0 }')"
[ "$logins" -ge 100 ] \
    || fail "the hub counted $logins logins after the README's loadgen command (expected at least 100)"
echo "readme-commands: both commands work as written ($logins logins)"
