#!/usr/bin/env bash
# Cluster benchmark: many simulated trackers across several iothubd nodes on one machine,
# sharing one Redis, with sendInstruct load that always crosses nodes; then a node is killed
# (SIGKILL) and the time until its devices are online again (through an nginx stream
# balancer) is measured.
#
#   scripts/bench-cluster.sh scale     # DEVICES trackers over NODES nodes, cross-node RTT
#   scripts/bench-cluster.sh failover  # FAILOVER_DEVICES trackers behind nginx, kill -9 one node
#
# Knobs (environment): NODES (6), DEVICES (100000), GPS_INTERVAL (10s), RATE (500 req/s in
# all), DURATION (180s), FAILOVER_NODES (3), FAILOVER_DEVICES (15000), KILL_AFTER (60),
# LEASE (30), RECONNECT_JITTER (10s), CONNECT_RATE (1000 per node in scale), WARMUP (60s before the
# instruction load starts), OUT (a new temp dir; logs and JSON reports go there).
# Needs release binaries (cargo build --release --workspace), redis-server and, for
# failover, nginx with the stream module. Every process it starts is stopped at exit;
# every phase is bounded in time.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE="${1:-scale}"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
command -v redis-server >/dev/null || {
    echo "install redis-server" >&2
    exit 1
}

LEASE="${LEASE:-30}"
TOKEN=bench-token
REDIS_PORT=$((20000 + RANDOM % 10000))
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$OUT" --logfile "$OUT/redis.log" &
PIDS+=($!)
sleep 0.5

# node_port NODE KIND -> a port per node and listener kind
node_port() {
    local base=$((31000 + $1 * 10))
    case "$2" in
        gt06) echo "$base" ;;
        jt808) echo $((base + 1)) ;;
        api) echo $((base + 2)) ;;
        metrics) echo $((base + 3)) ;;
        internal) echo $((base + 4)) ;;
    esac
}

NODE_PIDS=()
start_node() {
    local n=$1
    env gateId="node-$n" apiToken="$TOKEN" \
        redisHost=127.0.0.1 redisPort="$REDIS_PORT" IOTHUB_REDIS_PREFIX=bench \
        IOTHUB_REDIS_LEASE="$LEASE" \
        IOTHUB_GT06_LISTEN="127.0.0.1:$(node_port "$n" gt06)" \
        IOTHUB_JT808_LISTEN="127.0.0.1:$(node_port "$n" jt808)" \
        IOTHUB_API_LISTEN="127.0.0.1:$(node_port "$n" api)" \
        IOTHUB_METRICS_LISTEN="127.0.0.1:$(node_port "$n" metrics)" \
        IOTHUB_INTERNAL_LISTEN="127.0.0.1:$(node_port "$n" internal)" \
        IOTHUB_MEDIA_HTTP_FLV_LISTEN=off IOTHUB_MEDIA_RTMP_LISTEN=off \
        IOTHUB_MEDIA_JT1078_LIVE_LISTEN=off IOTHUB_MEDIA_JT1078_PLAYBACK_LISTEN=off \
        IOTHUB_DATA_DIR="$OUT/node-$n" IOTHUB_MAX_CONNECTIONS=19500 IOTHUB_JT808_REGISTRATIONS_PER_SOURCE=0 RUST_LOG=warn \
        "$IOTHUBD" >"$OUT/node-$n.log" 2>&1 &
    NODE_PIDS[$n]=$!
    PIDS+=($!)
}

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

# rss_cpu PID -> "RSS_MB CPU_SECONDS"
rss_cpu() {
    local rss ticks
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$1/status")
    ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
    echo "$((rss / 1024)) $((ticks / $(getconf CLK_TCK)))"
}

scale() {
    local nodes="${NODES:-6}" devices="${DEVICES:-100000}" rate="${RATE:-500}"
    local duration="${DURATION:-180s}" per=$((${DEVICES:-100000} / ${NODES:-6}))
    for n in $(seq 1 "$nodes"); do start_node "$n"; done
    for n in $(seq 1 "$nodes"); do wait_port "$(node_port "$n" api)"; done
    declare -A cpu_before
    for n in $(seq 1 "$nodes"); do cpu_before[$n]=$(rss_cpu "${NODE_PIDS[$n]}" | cut -d' ' -f2); done
    local lg=()
    for n in $(seq 1 "$nodes"); do
        # Devices of node n are instructed through node n+1: every instruction crosses nodes.
        local via=$((n % nodes + 1))
        "$LOADGEN" trackers --quiet --target "127.0.0.1:$(node_port "$n" gt06)" \
            --count "$per" --imei-base $((860000000000000 + n * 1000000)) \
            --gps-interval "${GPS_INTERVAL:-10s}" --heartbeat-interval 60s \
            --duration "$duration" --connect-rate "${CONNECT_RATE:-1000}" \
            --source-ips "127.0.$n.1-127.0.$n.4" \
            --instruct-rate $((rate / nodes)) --instruct-warmup "${WARMUP:-60s}" --api "http://127.0.0.1:$(node_port "$via" api)" \
            --api-token "$TOKEN" --report-json "$OUT/loadgen-$n.json" \
            >"$OUT/loadgen-$n.txt" 2>&1 &
        lg+=($!)
        PIDS+=($!)
    done
    local status=0
    for pid in "${lg[@]}"; do wait "$pid" || status=1; done
    echo "== scale: $devices trackers over $nodes nodes, ${GPS_INTERVAL:-10s} reports, $rate instructions/s crossing nodes"
    for n in $(seq 1 "$nodes"); do
        read -r rss cpu < <(rss_cpu "${NODE_PIDS[$n]}")
        echo "node-$n: RSS ${rss} MB, CPU $((cpu - ${cpu_before[$n]})) s over the run"
    done
    for n in $(seq 1 "$nodes"); do
        echo "-- loadgen $n"
        grep -E "online at end|latency|outcomes|instructions at" "$OUT/loadgen-$n.txt" || true
    done
    return $status
}

failover() {
    command -v nginx >/dev/null || {
        echo "install nginx and libnginx-mod-stream" >&2
        exit 1
    }
    local nodes="${FAILOVER_NODES:-3}" devices="${FAILOVER_DEVICES:-15000}"
    local kill_after="${KILL_AFTER:-60}" lb_port=$((REDIS_PORT + 1))
    for n in $(seq 1 "$nodes"); do start_node "$n"; done
    for n in $(seq 1 "$nodes"); do wait_port "$(node_port "$n" api)"; done
    local module=""
    for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib64/nginx/modules/ngx_stream_module.so; do
        [ -f "$m" ] && module="load_module $m;"
    done
    {
        echo "$module"
        echo "worker_processes 8; worker_rlimit_nofile 19000; pid $OUT/nginx.pid; error_log $OUT/nginx.log warn;"
        echo "events { worker_connections 9000; }"
        echo "stream { upstream gt06 { least_conn;"
        for n in $(seq 1 "$nodes"); do
            echo "server 127.0.0.1:$(node_port "$n" gt06) max_fails=1 fail_timeout=5s;"
        done
        echo "} server { listen 127.0.0.1:$lb_port backlog=4096; proxy_pass gt06; proxy_connect_timeout 1s; proxy_timeout 10m; } }"
    } >"$OUT/nginx.conf"
    nginx -p "$OUT" -c "$OUT/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    wait_port "$lb_port"
    local total_duration=$((kill_after + 120))
    "$LOADGEN" trackers --target "127.0.0.1:$lb_port" --count "$devices" \
        --gps-interval "${GPS_INTERVAL:-10s}" --heartbeat-interval 60s \
        --duration "${total_duration}s" --connect-rate 2000 --source-ips 127.0.9.1-127.0.9.4 \
        --reconnect-delay 1s --reconnect-jitter "${RECONNECT_JITTER:-10s}" \
        --report-json "$OUT/loadgen-failover.json" >"$OUT/loadgen-failover.txt" 2>&1 &
    local lg=$!
    PIDS+=($lg)
    sleep "$kill_after"
    local before
    before=$(grep -o "online=[0-9]*/[0-9]*" "$OUT/loadgen-failover.txt" | tail -1)
    kill -9 "${NODE_PIDS[1]}"
    local killed_at
    killed_at=$(date +%s.%N)
    echo "== failover: killed node-1 at ${kill_after}s ($before before)"
    # Back online: loadgen's progress shows the drop, then every device connected again.
    online_now() {
        grep -o "online=[0-9]*" "$OUT/loadgen-failover.txt" | tail -1 | cut -d= -f2
    }
    local dropped=no back=""
    for _ in $(seq 1 1500); do
        sleep 0.1
        local on
        on=$(online_now)
        if [ "$dropped" = no ]; then
            [ "${on:-0}" -lt "$devices" ] && dropped=yes
        elif [ "${on:-0}" -ge "$devices" ]; then
            back=$(date +%s.%N)
            break
        fi
    done
    if [ -n "$back" ]; then
        echo "all $devices devices online again $(awk -v a="$killed_at" -v b="$back" 'BEGIN{printf "%.1f", b - a}') s after the kill (progress is printed every second)"
    else
        echo "devices not all back online within 150 s of the kill (drop seen: $dropped)" >&2
    fi
    local routed
    routed=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'bench:route:*' | wc -l)
    local on_dead
    on_dead=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'bench:route:*' |
        head -2000 | xargs -n 200 sh -c 'for k; do redis-cli -p '"$REDIS_PORT"' hget "$k" gate; done' _ |
        grep -c '^node-1$' || true)
    echo "routes in Redis: $routed; of a sample of 2000, still naming node-1: $on_dead"
    wait "$lg" || true
    grep -E "online at end|connects|disconnects" "$OUT/loadgen-failover.txt" || true
}

case "$MODE" in
    scale) scale ;;
    failover) failover ;;
    *)
        echo "usage: $0 scale|failover" >&2
        exit 2
        ;;
esac
echo "logs and reports: $OUT"
