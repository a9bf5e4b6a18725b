//! Logs and metrics set-up, done once by `iothubd` before anything else starts.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
//! Metrics: the `metrics` facade with the Prometheus recorder, served at `GET /metrics` by
//! our own listener rather than the exporter's, so that port 0 works (tests, several nodes on
//! one machine), the bound address can be reported, and the listener has the timeouts and
//! connection cap of every HTTP listener ([`crate::http_server`]). Histograms are real Prometheus
//! histograms (buckets), not summaries, so they can be aggregated across nodes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use warp::{Filter, Reply};

use crate::config::HttpConfig;
use crate::http_server;

/// Buckets of every `*_seconds` histogram: from sub-millisecond work to the longest
/// instruction timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Buckets of every `*_size` histogram (batch sizes).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// How often the recorder drops empty histogram windows (the exporter's own default).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the global log subscriber: `RUST_LOG` if set and valid, `info` otherwise.
/// Calling it again (tests) leaves the first subscriber in place.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Installs the Prometheus recorder as the global metrics recorder and serves
/// `GET /metrics` on `listen`, bounded by `http` like every listener; returns the bound
/// address (port 0 picks a free port). Fails if the address cannot be bound or a recorder is
/// already installed.
pub async fn start_metrics(listen: SocketAddr, http: HttpConfig) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics: cannot listen on {listen}"))?;
    let local_addr = listener.local_addr().context("metrics: listener address")?;

    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("metrics: seconds buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
        .context("metrics: size buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("metrics: a metrics recorder is already installed"))?;
    describe_metrics();
    register_fault_counters();
    let process = metrics_process::Collector::default();
    process.describe();
    if let Some(limit) = memory_limit_bytes() {
        metrics::gauge!("iothub_memory_limit_bytes").set(limit as f64);
    }

    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    // The metrics listener lives as long as the process.
    http_server::spawn(
        "metrics",
        listener,
        http,
        None,
        warp::service(metrics_route(handle, process)),
        std::future::pending(),
    );
    tracing::info!(addr = %local_addr, "metrics listening");
    Ok(local_addr)
}

fn metrics_route(
    handle: PrometheusHandle,
    process: metrics_process::Collector,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
       + Clone
       + Send
       + Sync
       + 'static {
    warp::path!("metrics").and(warp::get()).map(move || {
        // A few small /proc reads, once per scrape, so the figures are those of the scrape.
        process.collect();
        warp::reply::with_header(
            handle.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .into_response()
    })
}

/// Counters of faults that a healthy node may never see, created at zero so that they exist
/// from the first scrape: `rate()` and the alert rules then see the first fault as an
/// increase, and a rule's selector is known to match a real series.
const FAULT_COUNTERS: &[&str] = &[
    "iothub_sessions_failed_total",
    "iothub_session_takeovers_total",
    "iothub_instruction_timeouts_total",
    "iothub_task_panics_total",
    "iothub_push_dropped_total",
    "iothub_kafka_spool_full_total",
];

fn register_fault_counters() {
    for name in FAULT_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
}

/// The memory this process may use: the limit of its cgroup (a container's memory limit) when
/// one is set and below the machine's memory, else the machine's memory. `None` where neither
/// can be read (not Linux).
fn memory_limit_bytes() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_bytes(&text));
    let own_cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_v2_path(&text).map(str::to_owned));
    let mut candidates = Vec::new();
    if let Some(path) = own_cgroup {
        candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
    }
    // Inside a container the cgroup namespace makes the container's cgroup the root; cgroup
    // v1 keeps the limit under the memory controller.
    candidates.push("/sys/fs/cgroup/memory.max".into());
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    let cgroup = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| cgroup_limit(&text));
    match (cgroup, machine) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The cgroup v2 path of `/proc/self/cgroup` (the `0::/path` line).
fn cgroup_v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// A cgroup memory limit file's value; `None` for `max` (no limit).
fn cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// HELP text of the node's metrics. Describing a metric that a build never records is
/// harmless: the exporter prints descriptions only for metrics that exist.
pub fn describe_metrics() {
    crate::media::describe_metrics();
    // Instruction API.
    describe_counter!(
        "iothub_api_requests_total",
        "sendInstruct answers by _code (or HTTP status 401/413/503/400 when refused before validation)"
    );
    describe_histogram!(
        "iothub_api_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a sendInstruct request, device round trip included"
    );
    // Every HTTP listener (listener = api, internal, metrics).
    describe_gauge!(
        "iothub_http_connections",
        "Open connections of an HTTP listener"
    );
    describe_counter!(
        "iothub_http_connections_refused_total",
        "Connections an HTTP listener answered 503 and closed because it had http.max_connections open"
    );
    describe_counter!(
        "iothub_http_timeouts_total",
        "HTTP connections closed (header, idle) or requests answered 408 (body) for a read timeout, by phase"
    );
    describe_gauge!(
        "iothub_runtime_workers",
        "Worker threads running connections, sessions and the API (runtime.worker_threads)"
    );
    // Gateways and sessions.
    describe_gauge!("iothub_connections", "Open device connections");
    describe_counter!(
        "iothub_connections_accepted_total",
        "Device connections accepted"
    );
    describe_counter!(
        "iothub_accept_errors_total",
        "Failed accepts on a device listener"
    );
    describe_gauge!(
        "iothub_max_connections",
        "Connection budget of the node, both device ports together (gateway.max_connections)"
    );
    describe_gauge!(
        "iothub_memory_limit_bytes",
        Unit::Bytes,
        "Memory the process may use: its cgroup's (container's) limit, or the machine's memory if lower or unset"
    );
    describe_gauge!(
        "iothub_open_files_limit",
        "Soft open-file limit (RLIMIT_NOFILE) of the process after raising it to the hard limit at start"
    );
    describe_counter!(
        "iothub_connections_refused_total",
        "Device connections closed before a session started, by reason (limit: the connection budget was full; proxy_header: no valid PROXY protocol header)"
    );
    describe_counter!("iothub_frames_total", "Device frames decoded");
    describe_counter!(
        "iothub_decode_errors_total",
        "Device frames that could not be decoded"
    );
    describe_counter!(
        "iothub_garbage_bytes_total",
        "Bytes skipped while looking for a frame start"
    );
    describe_counter!("iothub_logins_total", "Device logins accepted");
    describe_counter!(
        "iothub_sessions_closed_total",
        "Device sessions closed, by reason"
    );
    describe_counter!(
        "iothub_sessions_failed_total",
        "Device sessions that failed (panic or error) and were cleaned up by their gateway"
    );
    describe_counter!(
        "iothub_session_takeovers_total",
        "Sessions closed because the same device logged in on a newer connection"
    );
    describe_gauge!("iothub_registry_devices", "Devices online in the registry");
    describe_gauge!(
        "iothub_publish_queue_depth",
        "Publish calls waiting in the sink's queue (embedded log writer or Kafka dispatcher)"
    );
    describe_gauge!(
        "iothub_api_instructions_in_flight",
        "sendInstruct requests waiting for a device reply"
    );
    // Instructions.
    describe_counter!(
        "iothub_instructions_sent_total",
        "Instructions written to devices"
    );
    describe_counter!(
        "iothub_instruction_timeouts_total",
        "Instructions the device did not answer within timeOut"
    );
    describe_counter!(
        "iothub_instruction_replies_unmatched_total",
        "Instruction replies from devices that matched no pending instruction"
    );
    describe_counter!(
        "iothub_offline_enqueued_total",
        "Instructions queued for delivery at the device's next login"
    );
    // Event log and publishing.
    describe_counter!("iothub_events_published_total", "Device events published");
    describe_counter!(
        "iothub_publish_failures_total",
        "Failed publishes: embedded-log commits that failed, Kafka calls that failed"
    );
    describe_histogram!(
        "iothub_publish_batch_seconds",
        Unit::Seconds,
        "Time to persist or send one batch of events"
    );
    describe_histogram!(
        "iothub_publish_batch_size",
        Unit::Count,
        "Events per published batch"
    );
    describe_counter!(
        "iothub_log_expired_total",
        "Events dropped from the embedded log after the retention time"
    );
    describe_counter!(
        "iothub_log_corrupt_entries_total",
        "Embedded log entries that could not be decoded"
    );
    describe_counter!(
        "iothub_frames_unrecognised_total",
        "Well-formed frames of a message type the hub does not handle, by protocol and type"
    );
    describe_counter!(
        "iothub_checksum_mismatches_total",
        "Frames whose checksum did not match, by protocol"
    );
    describe_counter!(
        "iothub_protocol_detected_total",
        "Connections by the protocol their first frame showed, per port"
    );
    describe_counter!(
        "iothub_auth_checks_total",
        "JT/T 808 authentication checks, by verdict"
    );
    describe_counter!(
        "iothub_push_requests_total",
        "Push requests to the customer, by topic and outcome"
    );
    describe_counter!(
        "iothub_push_records_total",
        "Records the customer accepted, by topic"
    );
    describe_counter!(
        "iothub_push_retries_total",
        "Push requests that failed and will be retried, by topic"
    );
    describe_histogram!(
        "iothub_push_latency_seconds",
        Unit::Seconds,
        "From an event being made durable to the customer accepting it"
    );
    describe_gauge!(
        "iothub_push_backlog",
        "Events in the embedded log not yet pushed, by topic"
    );
    describe_counter!(
        "iothub_push_dropped_total",
        "Events given up undelivered, by topic and reason (retention, max_age)"
    );
    describe_counter!(
        "iothub_push_commit_failures_total",
        "Push positions that could not be stored (the batch may be pushed again)"
    );
    describe_counter!(
        "iothub_push_consume_errors_total",
        "Errors reading the push topics from Kafka"
    );
    describe_counter!(
        "iothub_push_loop_restarts_total",
        "Push delivery loops restarted after a panic"
    );
    describe_counter!(
        "iothub_storage_errors_total",
        "Failed operations on the embedded database"
    );
    describe_counter!(
        "iothub_storage_reopens_total",
        "Times the embedded database was opened again after an I/O error"
    );
    describe_gauge!(
        "iothub_sink_up",
        "1 while the sink takes writes, 0 while it is down (then /ready answers 503)"
    );
    describe_counter!(
        "iothub_task_panics_total",
        "Panics of supervised tasks (log writer, Kafka dispatcher/drain/watch, spool, cluster renewal), each followed by a restart"
    );
    describe_counter!(
        "iothub_kafka_parked_total",
        "Spooled events Kafka refused for good, parked for iothubd replay-parked"
    );
    describe_gauge!(
        "iothub_kafka_parked_events",
        "Parked events waiting for iothubd replay-parked"
    );
    describe_counter!(
        "iothub_push_rejoins_total",
        "Push consumers that left and rejoined their Kafka group after a node left the cluster"
    );
    describe_gauge!(
        "iothub_kafka_up",
        "1 while events are produced to Kafka directly, 0 while they go to the local spool"
    );
    describe_gauge!(
        "iothub_kafka_spool_events",
        "Events waiting in the local spool for Kafka"
    );
    describe_gauge!(
        "iothub_kafka_spool_capacity",
        "Most events the local spool holds (kafka.spool_max_events); beyond it devices are not acknowledged"
    );
    describe_gauge!(
        "iothub_push_kafka_lag",
        "Kafka mode: records of a push topic not yet pushed, over the partitions this node's push consumer holds (high watermark minus the group's committed offset)"
    );
    describe_counter!(
        "iothub_kafka_spooled_total",
        "Events written to the local spool because Kafka was unreachable"
    );
    describe_counter!(
        "iothub_kafka_spool_drained_total",
        "Spooled events produced to Kafka once it returned"
    );
    describe_counter!(
        "iothub_kafka_spool_full_total",
        "Publish calls refused because the spool was full (the device was not acknowledged)"
    );
    describe_counter!(
        "iothub_kafka_spool_rejected_total",
        "Spooled events Kafka refused for good (too large, invalid), dropped"
    );
    describe_counter!(
        "iothub_kafka_spool_corrupt_total",
        "Spool entries that could not be decoded"
    );
    describe_counter!(
        "iothub_offline_read_failures_total",
        "Logins whose offline instructions could not be read (read again at the next tick)"
    );
    describe_gauge!(
        "iothub_redis_up",
        "Cluster mode: 1 while the last route renewal reached Redis, 0 while it fails"
    );
    describe_counter!(
        "iothub_redis_errors_total",
        "Cluster mode: failed Redis operations, by operation"
    );
    describe_gauge!(
        "iothub_cluster_nodes",
        "Cluster mode: nodes whose identity lease is current"
    );
    describe_gauge!(
        "iothub_cluster_routes_owned",
        "Cluster mode: device routes this node renews"
    );
    describe_counter!(
        "iothub_cluster_routes_reclaimed_total",
        "Cluster mode: routes Redis had lost (restart, expiry) and this node claimed again"
    );
    describe_counter!(
        "iothub_cluster_routes_lost_total",
        "Cluster mode: routes another node's session took; the local session was closed"
    );
    describe_counter!(
        "iothub_cluster_takeovers_total",
        "Cluster mode: logins that took a device over from another node"
    );
    describe_counter!(
        "iothub_cluster_forwarded_out_total",
        "Cluster mode: instructions handed to the node that owns the device"
    );
    describe_counter!(
        "iothub_cluster_forwarded_in_total",
        "Cluster mode: instructions received from other nodes for local devices"
    );
    describe_counter!(
        "iothub_api_route_errors_total",
        "Cluster mode: instructions that found no way to the device's node, by reason"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_kib() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(24_576_000 * 1024));
    }

    #[test]
    fn cgroup_v2_path_is_the_unified_line() {
        let text = "12:cpu:/old\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(cgroup_v2_path(text), Some("/system.slice/docker-abc.scope"));
    }

    #[test]
    fn cgroup_without_unified_line_has_no_path() {
        assert_eq!(cgroup_v2_path("4:memory:/docker/abc\n"), None);
    }

    #[test]
    fn cgroup_limit_max_means_none() {
        assert_eq!(cgroup_limit("max\n"), None);
    }

    #[test]
    fn cgroup_limit_is_bytes() {
        assert_eq!(cgroup_limit("536870912\n"), Some(536_870_912));
    }
}
