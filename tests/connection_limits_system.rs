//! System tests of the device ports' connection limits: the real iothubd binary over real
//! TCP, its connection budget, and its metrics as Prometheus serves them.

use std::time::{Duration, Instant};

use iothub::imei::Imei;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::{metric_value, Hub};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Polls the hub's metrics until `metric` summed over `labels` equals `value`, or panics
/// after 10 s with the last value seen.
async fn wait_for_metric(hub: &Hub, metric: &str, labels: &[&str], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = metric_value(&hub.metrics_text().await, metric, labels);
        if seen == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric}{labels:?} is {seen}, expected {value} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server closed `stream` (a read returns end of stream) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Opens `n` connections to `addr` and waits until the hub holds them all as sessions.
async fn open_held_connections(hub: &Hub, addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    wait_for_metric(hub, "iothub_connections", &[], n as f64).await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_limit_is_closed_at_once() {
    let hub = Hub::start(&[("IOTHUB_MAX_CONNECTIONS", "3")]);
    // The harness's readiness probes are sessions too until the hub sees them close.
    wait_for_metric(&hub, "iothub_connections", &[], 0.0).await;
    let mut held = open_held_connections(&hub, hub.gt06, 3).await;

    let mut extra = TcpStream::connect(hub.gt06).await.expect("connect");
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(2)).await,
        "the connection past the limit was not closed within 2 s"
    );
    for held in &mut held {
        assert!(
            !closed_by_server(held, Duration::from_millis(100)).await,
            "a connection within the limit was closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_by_gateway_and_reason() {
    let hub = Hub::start(&[("IOTHUB_MAX_CONNECTIONS", "2")]);
    wait_for_metric(&hub, "iothub_connections", &[], 0.0).await;
    let _held = open_held_connections(&hub, hub.gt06, 2).await;
    for _ in 0..3 {
        let mut extra = TcpStream::connect(hub.gt06).await.expect("connect");
        assert!(closed_by_server(&mut extra, Duration::from_secs(2)).await);
    }
    wait_for_metric(
        &hub,
        "iothub_connections_refused_total",
        &["gateway=\"gt06\"", "reason=\"limit\""],
        3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_place_is_taken_by_the_next_device() {
    let hub = Hub::start(&[("IOTHUB_MAX_CONNECTIONS", "2")]);
    wait_for_metric(&hub, "iothub_connections", &[], 0.0).await;
    let mut held = open_held_connections(&hub, hub.gt06, 2).await;
    drop(held.pop());
    wait_for_metric(&hub, "iothub_connections", &[], 1.0).await;

    let config = SimTrackerConfig::new(Imei::parse("864717003283581").unwrap());
    let tracker = tokio::time::timeout(
        Duration::from_secs(10),
        SimTracker::connect_and_login(hub.gt06, config),
    )
    .await
    .expect("login within 10 s");
    assert!(tracker.is_ok(), "login refused: {:?}", tracker.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_connections_carry_tcp_keepalive() {
    let hub = Hub::start(&[("IOTHUB_KEEPALIVE_TIME", "45")]);
    wait_for_metric(&hub, "iothub_connections", &[], 0.0).await;
    let _held = open_held_connections(&hub, hub.jt808, 1).await;
    // ss shows the hub's end of the connection (source port = the device port) with its
    // keepalive timer when SO_KEEPALIVE is on.
    let filter = format!("( sport = :{} )", hub.jt808.port());
    let out = std::process::Command::new("ss")
        .args(["-Htno", "state", "established", &filter])
        .output()
        .expect("ss must be installed (apt-get install iproute2)");
    let sockets = String::from_utf8_lossy(&out.stdout);
    assert!(
        sockets.contains("timer:(keepalive,"),
        "no keepalive timer on the hub's socket: {sockets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_device_ports_draw_on_one_budget() {
    let hub = Hub::start(&[("IOTHUB_MAX_CONNECTIONS", "2")]);
    wait_for_metric(&hub, "iothub_connections", &[], 0.0).await;
    let _on_gt06 = open_held_connections(&hub, hub.gt06, 1).await;
    let _on_jt808 = TcpStream::connect(hub.jt808).await.expect("connect");
    wait_for_metric(&hub, "iothub_connections", &[], 2.0).await;

    let mut extra = TcpStream::connect(hub.jt808).await.expect("connect");
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(2)).await,
        "a third connection was taken with a budget of 2 spread over both ports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_exported() {
    let hub = Hub::start(&[("IOTHUB_MAX_CONNECTIONS", "1234")]);
    let text = hub.metrics_text().await;
    assert_eq!(metric_value(&text, "iothub_max_connections", &[]), 1234.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    // iothubd inherits this process's limits: start it with the soft limit well below the
    // hard one.
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft.min(1024), hard).expect("setrlimit");
    let hub = Hub::start(&[]);
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).expect("setrlimit");
    let text = hub.metrics_text().await;
    assert_eq!(
        metric_value(&text, "iothub_open_files_limit", &[]),
        hard as f64
    );
}
