#!/usr/bin/env bash
# Single-node benchmarks: one iothubd (embedded log unless KAFKA is set, no pushURL unless
# PUSH=1) and one loadgen on this machine. CPU is read from /proc/<pid>/stat of iothubd over a
# window in the middle of the run, frames from its own iothub_frames_total, so loadgen's start
# and end are left out.
#
#   scripts/bench-node.sh throughput   # location frames per CPU-second of iothubd
#   DEVICES=dvrs scripts/bench-node.sh throughput   # the same for JT/T 808 0x0200 reports,
#                                                   # each acknowledged with an 0x8001
#   scripts/bench-node.sh idle         # RSS per idle GT06 session
#
# Knobs (environment):
#   throughput: COUNT (4000 trackers), GPS_INTERVAL (200ms), GPS_BATCH (1 fix per write;
#     10 = buffered uploads of 10 frames), DURATION (40s), SETTLE (8 s before the window),
#     WINDOW (20 s), PUSH (0; 1 = run loadgen's push receiver and count loss end to end),
#     KAFKA (unset; host:port of a running Kafka-protocol broker: the hub publishes there
#     with topic prefix iothub, and loadgen's consumer counts every record, so loss is
#     counted end to end),
#     DEVICES (trackers: GT06 0x22 nothing acknowledges; dvrs: COUNT JT/T 808 DVRs reporting
#     0x0200 every GPS_INTERVAL, one report per write, each acknowledged after it is durable)
#   idle: IDLE_COUNT (19000), IDLE_WAIT (40 s after the connect storm began)
#   both: HUB_ENV (extra VAR=value settings for iothubd), OUT (a new temp dir; logs there)
# Needs release binaries (cargo build --release --workspace), curl and ss (iproute2). Every
# process it starts is stopped at exit; every phase is bounded in time.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE="${1:-throughput}"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
PORT_BASE=$((32000 + RANDOM % 2000 * 4))
GT06_PORT=$PORT_BASE
METRICS_PORT=$((PORT_BASE + 1))
PUSH_PORT=$((PORT_BASE + 2))
JT808_PORT=$((PORT_BASE + 3))

start_hub() {
    local push_url=""
    local kafka_env=()
    [ -n "${KAFKA:-}" ] && kafka_env=(kafkaEnable=true "kafkaHost=$KAFKA" topicPrefix=iothub)
    [ "${PUSH:-0}" = 1 ] && push_url="http://127.0.0.1:$PUSH_PORT"
    # shellcheck disable=SC2086
    env IOTHUB_DATA_DIR="$OUT/data" IOTHUB_MAX_CONNECTIONS=19500 IOTHUB_JT808_REGISTRATIONS_PER_SOURCE=0 RUST_LOG=warn \
        IOTHUB_GT06_LISTEN="127.0.0.1:$GT06_PORT" IOTHUB_JT808_LISTEN="127.0.0.1:$JT808_PORT" \
        IOTHUB_API_LISTEN=127.0.0.1:0 IOTHUB_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
        pushURL="$push_url" apiToken=bench ${kafka_env[@]+"${kafka_env[@]}"} ${HUB_ENV:-} \
        "$IOTHUBD" >"$OUT/iothubd.log" 2>&1 &
    HUB=$!
    PIDS+=("$HUB")
    # Ready once both gateways listen: the metrics endpoint comes up earlier, and with Kafka
    # the gateways wait for the topics.
    wait_listening 20 "$GT06_PORT" "$JT808_PORT" && return
    echo "iothubd did not start listening; see $OUT/iothubd.log" >&2
    exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$HUB/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$HUB/status"; }
# The anonymous part of RSS: the memory the sessions cost, without the pages of the binary
# that their code touched for the first time (file pages, shared with the page cache).
anon_kb() { awk '/^RssAnon/ {print $2}' "/proc/$HUB/status"; }
frames() {
    curl -s "127.0.0.1:$METRICS_PORT/metrics" |
        awk '/^iothub_frames_total/ {s += $2} END {printf "%d\n", s}'
}
connections() {
    curl -s "127.0.0.1:$METRICS_PORT/metrics" |
        awk '/^iothub_connections\{/ {s += $2} END {printf "%d\n", s}'
}

case "$MODE" in
throughput)
    start_hub
    push_args=()
    [ "${PUSH:-0}" = 1 ] && push_args=(--push-listen "127.0.0.1:$PUSH_PORT" --drain-timeout 120s)
    [ -n "${KAFKA:-}" ] && push_args+=(--kafka-brokers "$KAFKA" --kafka-topic-prefix iothub
        --drain-timeout 120s)
    case "${DEVICES:-trackers}" in
    trackers) devices=(--count "${COUNT:-4000}" --gps-interval "${GPS_INTERVAL:-200ms}"
        --gps-batch "${GPS_BATCH:-1}" --heartbeat-interval 60s) ;;
    dvrs) devices=(--count 0 --dvrs "${COUNT:-4000}" --dvr-target "127.0.0.1:$JT808_PORT"
        --dvr-location-interval "${GPS_INTERVAL:-200ms}" --dvr-heartbeat-interval 60s) ;;
    *)
        echo "DEVICES is trackers or dvrs" >&2
        exit 2
        ;;
    esac
    "$LOADGEN" trackers --target "127.0.0.1:$GT06_PORT" "${devices[@]}" \
        --duration "${DURATION:-40s}" --connect-rate 2000 \
        --source-ips 127.0.1.1-127.0.1.4 --quiet "${push_args[@]}" >"$OUT/loadgen.txt" 2>&1 &
    LOADGEN_PID=$!
    PIDS+=("$LOADGEN_PID")
    sleep "${SETTLE:-8}"
    c0=$(cpu_ticks) f0=$(frames) t0=$(date +%s.%N)
    sleep "${WINDOW:-20}"
    c1=$(cpu_ticks) f1=$(frames) t1=$(date +%s.%N)
    rss=$(rss_kb)
    status=0
    wait "$LOADGEN_PID" || status=$?
    python3 - "$c0" "$c1" "$f0" "$f1" "$t0" "$t1" "$rss" <<'EOF'
import sys
c0, c1, f0, f1, t0, t1, rss = map(float, sys.argv[1:])
cpu = (c1 - c0) / 100
frames = f1 - f0
secs = t1 - t0
print(f"window {secs:.1f} s: {frames:.0f} frames = {frames / secs:,.0f}/s; iothubd CPU "
      f"{cpu:.2f} s = {cpu / secs:.2f} core; {frames / cpu:,.0f} frames per CPU-second; "
      f"RSS {rss / 1024:.1f} MiB")
EOF
    grep -E "lost|gps " "$OUT/loadgen.txt" || true
    echo "loadgen exit status $status (non-zero when anything was lost); logs in $OUT"
    exit "$status"
    ;;
idle)
    start_hub
    sleep 1
    before=$(rss_kb) anon_before=$(anon_kb)
    count="${IDLE_COUNT:-19000}"
    "$LOADGEN" trackers --target "127.0.0.1:$GT06_PORT" --count "$count" --gps-interval 0s \
        --heartbeat-interval 170s --duration "$((${IDLE_WAIT:-40} + 5))s" --connect-rate 0 \
        --source-ips 127.0.1.1-127.0.1.4 --quiet >"$OUT/loadgen.txt" 2>&1 &
    PIDS+=($!)
    for t in $(seq 10 10 "${IDLE_WAIT:-40}"); do
        sleep 10
        echo "t=${t}s: RSS $(rss_kb) KiB, $(connections) connections"
    done
    after=$(rss_kb) anon_after=$(anon_kb)
    python3 - "$before" "$after" "$count" "$anon_before" "$anon_after" <<'EOF'
import sys
before, after, n, anon_before, anon_after = map(float, sys.argv[1:])
per = (after - before) * 1024 / n
print(f"RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with {n:.0f} sessions: "
      f"{per:,.0f} bytes ({per / 1000:.2f} KB, {per / 1024:.2f} KiB) per session")
anon = (anon_after - anon_before) * 1024 / n
print(f"of it anonymous memory: {anon_before / 1024:.1f} MiB before, {anon_after / 1024:.1f} MiB "
      f"after: {anon:,.0f} bytes ({anon / 1000:.2f} KB) per session")
EOF
    ;;
*)
    echo "usage: $0 throughput|idle" >&2
    exit 2
    ;;
esac
