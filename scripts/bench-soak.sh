#!/usr/bin/env bash
# The soak benchmark: one iothubd on Kafka (a tansu broker started here), 15,000 GT06
# trackers + 300 JT/T 808 DVRs, 100 sendInstructs per second, for 10 minutes. loadgen's push
# receiver and rdkafka consumer count every record, so the run ends with loss and duplicates
# per kind, and the instruction latency per minute of the run. Every SAMPLE seconds the CPU
# time and RSS of iothubd, loadgen and tansu are written down, so a latency that drifts can
# be traced to the process that grew.
#
#   scripts/bench-soak.sh
#
# Knobs (environment): DURATION (10m), TRACKERS (15000), DVRS (300), INSTRUCT_RATE (100),
#   SAMPLE (60), TANSU_STORAGE (sqlite://tansu.db, a file in OUT; memory://tansu/ keeps
#   everything in the broker's memory, and its CPU grows with what the topics hold: on
#   2 cores it takes a core by the fifth minute), TANSU_BIN (tansu on PATH or in
#   ~/.cargo/bin), HUB_ENV (extra VAR=value settings for iothubd), OUT (a new temp dir;
#   logs, loadgen's report.json and processes.txt there).
# Needs release binaries (cargo build --release --workspace), tansu
# (`cargo install tansu --locked --features dynostore,libsql`), curl and ss (iproute2).
# Every process it starts is stopped at exit; every phase is bounded in time.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
TANSU="${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
[ -x "$TANSU" ] || {
    echo "needs tansu: cargo install tansu --locked --features dynostore,libsql" >&2
    exit 1
}
PORT_BASE=$((36000 + RANDOM % 2000 * 8))
GT06_PORT=$PORT_BASE
JT808_PORT=$((PORT_BASE + 1))
METRICS_PORT=$((PORT_BASE + 2))
PUSH_PORT=$((PORT_BASE + 3))
API_PORT=$((PORT_BASE + 4))
KAFKA_PORT=$((PORT_BASE + 5))
KAFKA="127.0.0.1:$KAFKA_PORT"

(cd "$OUT" && exec "$TANSU" broker --listener-url "tcp://$KAFKA" \
    --advertised-listener-url "tcp://$KAFKA" \
    --storage-engine "${TANSU_STORAGE:-sqlite://tansu.db}") >"$OUT/tansu.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
wait_listening 20 "$KAFKA_PORT" || {
    echo "tansu did not listen; see $OUT/tansu.log" >&2
    exit 1
}

# shellcheck disable=SC2086
env IOTHUB_DATA_DIR="$OUT/data" IOTHUB_MAX_CONNECTIONS=19500 IOTHUB_JT808_REGISTRATIONS_PER_SOURCE=0 RUST_LOG=warn \
    IOTHUB_GT06_LISTEN="127.0.0.1:$GT06_PORT" IOTHUB_JT808_LISTEN="127.0.0.1:$JT808_PORT" \
    IOTHUB_API_LISTEN="127.0.0.1:$API_PORT" IOTHUB_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
    pushURL="http://127.0.0.1:$PUSH_PORT" apiToken=bench \
    kafkaEnable=true kafkaHost="$KAFKA" topicPrefix=iothub ${HUB_ENV:-} \
    "$IOTHUBD" >"$OUT/iothubd.log" 2>&1 &
HUB=$!
PIDS+=("$HUB")
# Ready once both gateways listen; with Kafka they wait for the topics.
wait_listening 30 "$GT06_PORT" "$JT808_PORT" || {
    echo "iothubd did not start listening; see $OUT/iothubd.log" >&2
    exit 1
}

"$LOADGEN" trackers --target "127.0.0.1:$GT06_PORT" --dvr-target "127.0.0.1:$JT808_PORT" \
    --count "${TRACKERS:-15000}" --gps-interval 10s --heartbeat-interval 60s \
    --dvrs "${DVRS:-300}" --dvr-location-interval 10s --dvr-heartbeat-interval 30s \
    --duration "${DURATION:-10m}" --connect-rate 2000 --source-ips 127.0.1.1-127.0.1.4 \
    --push-listen "127.0.0.1:$PUSH_PORT" --kafka-brokers "$KAFKA" --kafka-topic-prefix iothub \
    --instruct-rate "${INSTRUCT_RATE:-100}" --api "http://127.0.0.1:$API_PORT" \
    --api-token bench --drain-timeout 120s --report-json "$OUT/report.json" --quiet \
    >"$OUT/loadgen.txt" 2>&1 &
LOADGEN_PID=$!
PIDS+=("$LOADGEN_PID")

# CPU seconds (utime + stime) and RSS of a process, "-" once it is gone.
usage() {
    local stat status
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || {
        echo "- -"
        return
    }
    status="$(awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null)"
    echo "$stat" | awk -v rss="${status:-0}" -v hz="$(getconf CLK_TCK)" \
        '{printf "%.1f %.1f\n", ($14 + $15) / hz, rss / 1024}'
}
echo "t_s iothubd_cpu_s iothubd_rss_mib loadgen_cpu_s loadgen_rss_mib tansu_cpu_s tansu_rss_mib" \
    >"$OUT/processes.txt"
start=$(date +%s)
while kill -0 "$LOADGEN_PID" 2>/dev/null; do
    echo "$(($(date +%s) - start)) $(usage "$HUB") $(usage "$LOADGEN_PID") $(usage "$BROKER")" \
        >>"$OUT/processes.txt"
    # Sleep in steps, so the end of the run is noticed within a second.
    for _ in $(seq "${SAMPLE:-60}"); do
        kill -0 "$LOADGEN_PID" 2>/dev/null || break
        sleep 1
    done
done
status=0
wait "$LOADGEN_PID" || status=$?
# CPU seconds per minute of each process, between consecutive samples.
python3 - "$OUT/processes.txt" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
rows = [r for r in rows if "-" not in r]
print("   t (s)   iothubd (CPU-s/min, RSS MiB)   loadgen           tansu")
for a, b in zip(rows, rows[1:]):
    dt = (float(b[0]) - float(a[0])) / 60
    if dt <= 0:
        continue
    per_min = [(float(b[i]) - float(a[i])) / dt for i in (1, 3, 5)]
    print(f"{a[0]:>4}-{b[0]:<4} {per_min[0]:8.1f} {float(b[2]):8.1f}"
          f"   {per_min[1]:8.1f} {float(b[4]):8.1f}   {per_min[2]:8.1f} {float(b[6]):8.1f}")
EOF
cat "$OUT/loadgen.txt"
echo "loadgen exit status $status (non-zero when anything was lost); logs in $OUT"
exit "$status"
