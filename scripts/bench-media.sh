#!/usr/bin/env bash
# Benchmarks of the media server, run by hand on a quiet machine (not part of the test
# suite); figures are recorded with this command in loadgen/README.md.
#
#   scripts/bench-media.sh fanout [KBPS] [VIEWERS] [SECONDS]
#       One H.264 + AAC stream (FFmpeg publishing a pre-encoded file over RTMP, copied, so
#       the publisher costs nothing) to VIEWERS HTTP-FLV viewers (iothub-loadgen view, one
#       process per 4,000 viewers): iothubd CPU-seconds per delivered GB, viewers per core
#       at that bit rate, RSS per viewer.
#   scripts/bench-media.sh jt1078 [STREAMS] [SECONDS]
#       STREAMS simulated dashcams streaming JT/T 1078 (352x288 H.264 at about 300 kbit/s and
#       G.711A, transcoded to AAC) into one node, started by 0x9101 through sendInstruct:
#       iothubd CPU and RSS per stream.
#
# Needs the release binaries (cargo build --release --workspace), ffmpeg, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

MODE="${1:-fanout}"
shift || true
TOKEN=bench-token
IMEI=868120303960873
HTTP_PORT=18880
RTMP_PORT=11935
GT06_PORT=18100
JT808_PORT=18121
JT1078_PORT=11000
METRICS_PORT=18900
API_PORT=18088

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
TICKS=$(getconf CLK_TCK)

start_hub() {
    env apiToken="$TOKEN" IOTHUB_DATA_DIR="$OUT/data" RUST_LOG=warn \
        IOTHUB_GT06_LISTEN="127.0.0.1:$GT06_PORT" IOTHUB_JT808_LISTEN="127.0.0.1:$JT808_PORT" \
        IOTHUB_API_LISTEN="127.0.0.1:$API_PORT" IOTHUB_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
        IOTHUB_MEDIA_HTTP_FLV_LISTEN="127.0.0.1:$HTTP_PORT" IOTHUB_MEDIA_RTMP_LISTEN="127.0.0.1:$RTMP_PORT" \
        IOTHUB_MEDIA_JT1078_LIVE_LISTEN="127.0.0.1:$JT1078_PORT" IOTHUB_MEDIA_JT1078_PLAYBACK_LISTEN=off \
        IOTHUB_HTTP_MAX_CONNECTIONS=20000 IOTHUB_MEDIA_MAX_VIEWERS=20000 \
        IOTHUB_JT808_REGISTRATIONS_PER_SOURCE=0 IOTHUB_MEDIA_IDLE_CLOSE=3600 "$@" \
        "$IOTHUBD" >"$OUT/iothubd.log" 2>&1 &
    HUB_PID=$!
    PIDS+=("$HUB_PID")
    wait_listening 30 "$HTTP_PORT" "$RTMP_PORT" "$GT06_PORT" || { cat "$OUT/iothubd.log"; exit 1; }
}

# A GT06 tracker logged in as $IMEI for the whole run: JIMI streams publish only while their
# device is online.
online_tracker() {
    "$LOADGEN" trackers --target "127.0.0.1:$GT06_PORT" --count 1 --imei-base "$IMEI" \
        --duration "$1s" --gps-interval 0s >"$OUT/tracker.log" 2>&1 &
    PIDS+=($!)
    sleep 2
}

# A 60 s H.264 (GOP 2 s) + AAC FLV at $1 kbit/s of video.
source_file() {
    local kbps=$1 file="$OUT/source-$1.flv"
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=25 \
        -f lavfi -i sine=frequency=1000:sample_rate=44100 -t 60 \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -g 50 -b:v "${kbps}k" -maxrate "${kbps}k" \
        -bufsize "$((kbps * 2))k" -c:a aac -b:a 32k -f flv "$file"
    echo "$file"
}

publish() {
    ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$1" -c copy -f flv "$2" \
        >"$OUT/publisher.log" 2>&1 &
    PUBLISHER=$!
    PIDS+=("$PUBLISHER")
    sleep 3
}

metric() {
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v name="$1" -v label="$2" \
        '$1 ~ "^"name && index($1, label) {sum += $2} END {printf "%.0f\n", sum}'
}

fanout() {
    local kbps="${1:-1000}" viewers="${2:-2000}" seconds="${3:-30}"
    start_hub
    online_tracker $((seconds + 40))
    publish "$(source_file "$kbps")" "rtmp://127.0.0.1:$RTMP_PORT/live/1/$IMEI"
    local rss0 per=4000 procs i
    rss0=$(rss_kb "$HUB_PID")
    procs=$(((viewers + per - 1) / per))
    local bytes0 t0 view_pids=()
    for i in $(seq 0 $((procs - 1))); do
        local n=$((viewers - i * per))
        [ "$n" -gt "$per" ] && n=$per
        "$LOADGEN" view --url "http://127.0.0.1:$HTTP_PORT/live/1/$IMEI.flv" --viewers "$n" \
            --seconds $((seconds + 15)) --source-ips "127.0.$((i + 10)).1-127.0.$((i + 10)).200" \
            --no-reconnect --quiet >"$OUT/view-$i.log" 2>&1 &
        view_pids+=($!)
        PIDS+=($!)
    done
    # Measure a window once every viewer is attached.
    sleep 10
    bytes0=$(metric iothub_media_bytes_out_total 'protocol="http"')
    t0=$(cpu_ticks "$HUB_PID")
    sleep "$seconds"
    local t1 bytes1 rss1
    t1=$(cpu_ticks "$HUB_PID")
    bytes1=$(metric iothub_media_bytes_out_total 'protocol="http"')
    rss1=$(rss_kb "$HUB_PID")
    wait "${view_pids[@]}" || true
    python3 - "$kbps" "$viewers" "$seconds" "$t0" "$t1" "$TICKS" "$bytes0" "$bytes1" "$rss0" "$rss1" <<'PY'
import sys
kbps, viewers, seconds, t0, t1, ticks, b0, b1, rss0, rss1 = map(float, sys.argv[1:])
cpu = (t1 - t0) / ticks
gb = (b1 - b0) / 1e9
print(f"fanout: {int(kbps)} kbit/s video, {int(viewers)} HTTP-FLV viewers, {int(seconds)} s window")
print(f"  delivered {gb:.3f} GB ({(b1 - b0) * 8 / seconds / 1e6:.1f} Mbit/s), iothubd {cpu:.2f} CPU-s")
print(f"  CPU-seconds per GB: {cpu / gb:.2f}")
print(f"  viewers per core at this bit rate: {viewers / (cpu / seconds):.0f}")
print(f"  RSS {rss0 / 1024:.1f} MiB before viewers, {rss1 / 1024:.1f} MiB with them: {(rss1 - rss0) / viewers:.1f} KiB per viewer")
PY
    for f in "$OUT"/view-*.log; do tail -n 12 "$f"; done
}

jt1078_streams() {
    local streams="${1:-200}" seconds="${2:-60}"
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=352x288:rate=15 -t 20 \
        -c:v libx264 -profile:v baseline -pix_fmt yuv420p -g 15 -b:v 300k \
        -bsf:v h264_mp4toannexb -f h264 "$OUT/v.264"
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i sine=f=440:sample_rate=8000 -t 20 -ac 1 \
        -c:a pcm_alaw -f alaw "$OUT/a.g711a"
    start_hub IOTHUB_MEDIA_PUBLIC_HOST=127.0.0.1
    local rss0
    rss0=$(rss_kb "$HUB_PID")
    "$LOADGEN" trackers --count 0 --dvrs "$streams" --dvr-target "127.0.0.1:$JT808_PORT" \
        --media-video "$OUT/v.264" --media-audio "$OUT/a.g711a" --media-seconds $((seconds + 60)) \
        --duration $((seconds + 60))s >"$OUT/dvrs.log" 2>&1 &
    PIDS+=($!)
    sleep 15
    local imeis
    imeis=$(python3 - "$streams" <<'PY'
import sys
def luhn(d):
    s = 0
    for i, c in enumerate(reversed(d)):
        n = int(c)
        if i % 2 == 0:
            n *= 2
            n -= 9 if n > 9 else 0
        s += n
    return str((10 - s % 10) % 10)
base = 86510000000000
for i in range(int(sys.argv[1])):
    d = str(base + i)
    print(d + luhn(d))
PY
)
    for imei in $imeis; do
        curl -s -o /dev/null -d "imei=$imei&proNo=37121&token=$TOKEN&serverFlagId=1&timeOut=10" \
            --data-urlencode "cmdContent={\"videoIP\":\"127.0.0.1\",\"videoTCPPort\":$JT1078_PORT,\"channel\":1}" \
            "http://127.0.0.1:$API_PORT/api/device/sendInstruct" &
    done
    sleep 15
    local t0 t1 rss1 live
    live=$(metric iothub_media_streams 'kind="jt_live"')
    t0=$(cpu_ticks "$HUB_PID")
    sleep "$seconds"
    t1=$(cpu_ticks "$HUB_PID")
    rss1=$(rss_kb "$HUB_PID")
    python3 - "$live" "$seconds" "$TICKS" "$t0" "$t1" "$rss0" "$rss1" <<'PY'
import sys
live, seconds, ticks, t0, t1, rss0, rss1 = map(float, sys.argv[1:])
cpu = (t1 - t0) / ticks
print(f"JT/T 1078 ingest: {int(live)} live streams (352x288 H.264 ~300 kbit/s + G.711A transcoded to AAC), {int(seconds)} s window")
print(f"  iothubd {cpu:.2f} CPU-s: {cpu / seconds * 100:.1f}% of a core, {cpu / seconds / live * 1000:.2f} ms of CPU per stream-second")
print(f"  RSS {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB with the streams: {(rss1 - rss0) / live:.0f} KiB per stream")
PY
    echo "ingest: $(metric iothub_media_ingest_bytes_total '') bytes, transcoded frames $(metric iothub_media_transcoded_frames_total '')"
}

case "$MODE" in
    fanout) fanout "$@" ;;
    jt1078) jt1078_streams "$@" ;;
    *) echo "usage: $0 fanout|jt1078 [...]" >&2; exit 2 ;;
esac
