# Sourced by the scripts/bench-*.sh benchmarks, not run: finds the release binaries, makes the
# output directory, raises the open-file limit, stops every process listed in PIDS at exit and
# waits for listeners (wait_listening).
# Reads CARGO_TARGET_DIR, IOTHUBD_BIN, IOTHUB_LOADGEN_BIN and OUT.
#
# The scripts start iothubd with IOTHUB_JT808_REGISTRATIONS_PER_SOURCE=0: loadgen's DVRs
# register thousands of terminals a minute from four source addresses, which the default
# per-source registration limit exists to refuse.

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
IOTHUBD="${IOTHUBD_BIN:-$TARGET_DIR/release/iothubd}"
LOADGEN="${IOTHUB_LOADGEN_BIN:-$TARGET_DIR/release/iothub-loadgen}"
[ -x "$IOTHUBD" ] && [ -x "$LOADGEN" ] || {
    echo "build first: cargo build --release --workspace" >&2
    exit 1
}

OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

# Waits up to $1 seconds until every TCP port after it listens on this machine; fails after.
wait_listening() {
    local seconds=$1 port all
    shift
    for _ in $(seq $((seconds * 5))); do
        all=yes
        for port in "$@"; do
            [ -n "$(ss -Hltn "( sport = :$port )")" ] || all=no
        done
        [ "$all" = yes ] && return 0
        sleep 0.2
    done
    return 1
}
