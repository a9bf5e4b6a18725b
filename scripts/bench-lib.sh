# Sourced by the scripts/bench-*.sh benchmarks, not run: finds the release binaries, makes the
# output directory, raises the open-file limit and stops every process listed in PIDS at exit.
# Reads CARGO_TARGET_DIR, IOTHUBD_BIN, IOTHUB_LOADGEN_BIN and OUT.

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
