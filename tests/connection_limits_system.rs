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

// PROXY protocol.

const IMEI: &str = "864717003283581";

/// Logs the sessions' "device connected" line, which carries the device's address.
const SESSION_DEBUG: (&str, &str) = ("RUST_LOG", "info,iothub_actors::gateway::session=debug");

/// Waits up to 10 s for the hub's log to contain `text`.
fn wait_for_log(hub: &Hub, text: &str) {
    assert!(
        std::env::var_os("IOTHUB_TEST_LOGS").is_none(),
        "this test reads the hub's log file: run it without IOTHUB_TEST_LOGS"
    );
    let path = hub.data_dir.join("iothubd.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hub's log has no {text:?} within 10 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends the GT06 login of [`IMEI`] and reads the hub's acknowledgement.
async fn login_acknowledged(stream: &mut TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    let login = iothub_loadgen::frames::login(Imei::parse(IMEI).unwrap(), 0x3610, 480, 1);
    stream.write_all(&login).await.expect("send login");
    let expected = iothub_loadgen::frames::ack(0x01, 1);
    let mut reply = vec![0u8; expected.len()];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply)).await;
    matches!(read, Ok(Ok(_))) && reply == expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_logs_in_through_nginx_sending_the_proxy_protocol() {
    let hub = Hub::start(&[("IOTHUB_GT06_PROXY_PROTOCOL", "true")]);
    let nginx =
        iothub_system_tests::cluster::Nginx::start_with_proxy_protocol(&[("gt06", vec![hub.gt06])]);
    let config = SimTrackerConfig::new(Imei::parse(IMEI).unwrap());
    let mut tracker = tokio::time::timeout(
        Duration::from_secs(10),
        SimTracker::connect_and_login(nginx.addr("gt06"), config),
    )
    .await
    .expect("login within 10 s")
    .unwrap_or_else(|e| panic!("login through nginx refused: {e}\n{}", nginx.logs()));
    tracker
        .send_heartbeat()
        .await
        .expect("heartbeat acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_knows_the_device_address_nginx_names() {
    let hub = Hub::start(&[("IOTHUB_GT06_PROXY_PROTOCOL", "true"), SESSION_DEBUG]);
    let nginx =
        iothub_system_tests::cluster::Nginx::start_with_proxy_protocol(&[("gt06", vec![hub.gt06])]);
    let mut device = TcpStream::connect(nginx.addr("gt06"))
        .await
        .expect("connect");
    assert!(
        login_acknowledged(&mut device).await,
        "login not acknowledged"
    );
    let address = device.local_addr().unwrap();
    wait_for_log(&hub, &format!("peer={address}"));
}

/// A v2 header for a device at 192.0.2.10:40001, as cloud balancers send it.
const V2_HEADER: &[u8] = &[
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c,
    192, 0, 2, 10, 127, 0, 0, 1, 0x9c, 0x41, 0x52, 0x6c,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_logs_in_behind_a_v2_header() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::start(&[("IOTHUB_JT808_PROXY_PROTOCOL", "true"), SESSION_DEBUG]);
    let mut device = TcpStream::connect(hub.jt808).await.expect("connect");
    device.write_all(V2_HEADER).await.expect("send header");
    assert!(
        login_acknowledged(&mut device).await,
        "login not acknowledged"
    );
    wait_for_log(&hub, "peer=192.0.2.10:40001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_header_is_closed_when_the_port_expects_one() {
    let hub = Hub::start(&[("IOTHUB_GT06_PROXY_PROTOCOL", "true")]);
    let mut device = TcpStream::connect(hub.gt06).await.expect("connect");
    assert!(
        !login_acknowledged(&mut device).await,
        "a login without a PROXY header was acknowledged"
    );
    assert!(
        closed_by_server(&mut device, Duration::from_secs(2)).await,
        "a connection without a PROXY header was left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_header_are_counted() {
    let hub = Hub::start(&[("IOTHUB_GT06_PROXY_PROTOCOL", "true")]);
    for _ in 0..2 {
        let mut device = TcpStream::connect(hub.gt06).await.expect("connect");
        login_acknowledged(&mut device).await;
    }
    wait_for_metric(
        &hub,
        "iothub_connections_refused_total",
        &["gateway=\"gt06\"", "reason=\"proxy_header\""],
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_is_set_per_port() {
    let hub = Hub::start(&[("IOTHUB_GT06_PROXY_PROTOCOL", "true")]);
    let mut device = TcpStream::connect(hub.jt808).await.expect("connect");
    assert!(
        login_acknowledged(&mut device).await,
        "the JT/T 808 port, without the PROXY protocol, refused a direct login"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_never_completes_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::start(&[("IOTHUB_GT06_PROXY_PROTOCOL", "true")]);
    let mut device = TcpStream::connect(hub.gt06).await.expect("connect");
    device.write_all(b"PROXY TCP4 ").await.expect("send");
    assert!(
        closed_by_server(&mut device, Duration::from_secs(8)).await,
        "a connection holding half a header was left open"
    );
}
