//! System tests of the HTTP listeners' bounds on the real iothubd binary: slow clients on
//! real TCP sockets, curl as the normal client, the connection cap and its metric.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use iothub_system_tests::{metric_value, Hub};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The hub's header and body read timeouts in these tests.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling allowed past a deadline.
const SLACK: Duration = Duration::from_millis(1500);
/// Allowed before a deadline: the server's clock starts at accept, this one a moment later.
const EARLY: Duration = Duration::from_millis(200);

fn hub(max_connections: &str) -> Hub {
    Hub::start(&[
        ("IOTHUB_HTTP_HEADER_READ_TIMEOUT", "2"),
        ("IOTHUB_HTTP_BODY_READ_TIMEOUT", "2"),
        ("IOTHUB_HTTP_IDLE_TIMEOUT", "10"),
        ("IOTHUB_HTTP_MAX_CONNECTIONS", max_connections),
    ])
}

/// Writes `bytes` one per second, then keeps the connection open.
fn trickle(mut write: OwnedWriteHalf, bytes: &'static [u8]) -> JoinHandle<()> {
    tokio::spawn(async move {
        for byte in bytes {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    })
}

/// Reads until the server closes the connection; how long that took and what was read.
async fn read_until_closed(
    read: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> (Duration, String) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), read.read(&mut buf)).await {
            Err(_) => panic!(
                "iothubd kept the connection open for {limit:?}; read {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    started.elapsed(),
                    String::from_utf8_lossy(&got).into_owned(),
                )
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A head sent one byte a second on `addr` is cut after the header timeout, unanswered.
async fn assert_slow_head_is_cut(addr: SocketAddr, path: &'static [u8]) {
    let (mut read, write) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let writer = trickle(write, path);
    let (elapsed, got) = read_until_closed(&mut read, TIMEOUT * 5).await;
    writer.abort();
    assert_eq!(got, "", "no answer to a head that never completed");
    assert!(
        elapsed + EARLY >= TIMEOUT,
        "cut before the timeout: {elapsed:?}"
    );
    assert!(elapsed <= TIMEOUT + SLACK, "cut too late: {elapsed:?}");
}

/// `GET /health` with curl: the body and the status.
fn curl_health(hub: &Hub) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", " %{http_code}"])
        .arg(format!("http://{}/health", hub.api))
        .output()
        .expect("curl must be installed (apt-get install curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cuts_a_head_sent_one_byte_a_second_and_answers_curl() {
    let hub = hub("1024");
    assert_slow_head_is_cut(hub.api, b"GET /health HTTP/1.1\r\nhost: hub\r\n\r\n").await;
    assert_eq!(curl_health(&hub), "{\"status\":\"ok\"} 200");
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "iothub_http_timeouts_total",
            &["listener=\"api\"", "phase=\"header\""]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_cuts_a_head_sent_one_byte_a_second() {
    let hub = hub("1024");
    assert_slow_head_is_cut(hub.metrics, b"GET /metrics HTTP/1.1\r\nhost: hub\r\n\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_instruct_body_sent_one_byte_a_second_is_answered_408() {
    let hub = hub("1024");
    let mut stream = TcpStream::connect(hub.api).await.expect("connect");
    stream
        .write_all(
            b"POST /api/device/sendInstruct HTTP/1.1\r\nhost: hub\r\n\
              content-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\n",
        )
        .await
        .expect("head");
    let (mut read, write) = stream.into_split();
    let writer = trickle(write, &[b'a'; 100]);
    let (elapsed, got) = read_until_closed(&mut read, TIMEOUT * 5).await;
    writer.abort();
    assert!(got.starts_with("HTTP/1.1 408"), "answer: {got:?}");
    assert!(
        elapsed + EARLY >= TIMEOUT,
        "answered before the timeout: {elapsed:?}"
    );
    assert!(elapsed <= TIMEOUT + SLACK, "answered too late: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_connection_past_the_cap_is_refused_at_once_and_counted() {
    let hub = hub("3");
    // The harness's own probe of the port (at start-up) must have closed first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(
        &hub.metrics_text().await,
        "iothub_http_connections",
        &["listener=\"api\""],
    ) > 0.0
    {
        assert!(Instant::now() < deadline, "the start-up probe stays open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        // A request answered: the connection is accepted and kept (idle timeout 10 s).
        let mut stream = TcpStream::connect(hub.api).await.expect("connect");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: hub\r\n\r\n")
            .await
            .expect("request");
        assert_eq!(read_response(&mut stream).await, "HTTP/1.1 200 OK");
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(hub.api).await.expect("connect");
    let (elapsed, got) = read_until_closed(&mut fourth, TIMEOUT * 5).await;
    assert!(got.starts_with("HTTP/1.1 503"), "answer: {got:?}");
    // Not cut by the header timeout: refused as soon as it was accepted.
    assert!(elapsed < TIMEOUT, "refused at once, took {elapsed:?}");
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "iothub_http_connections_refused_total",
            &["listener=\"api\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "iothub_http_connections", &["listener=\"api\""]),
        3.0,
        "{metrics}"
    );
}

/// Reads one response with a `content-length`; returns its status line.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(n > 0, "closed before a whole response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().expect("a length"))
            })
            .expect("content-length");
        if got.len() >= end + 4 + length {
            return text.lines().next().unwrap_or_default().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_closes_a_keep_alive_connection_idle_for_the_idle_timeout() {
    let idle = Duration::from_secs(3);
    let hub = Hub::start(&[("IOTHUB_HTTP_IDLE_TIMEOUT", "3")]);
    let mut stream = TcpStream::connect(hub.api).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .expect("request");
    assert_eq!(read_response(&mut stream).await, "HTTP/1.1 200 OK");
    let (elapsed, got) = read_until_closed(&mut stream, idle * 5).await;
    assert_eq!(got, "", "nothing after the response");
    assert!(
        elapsed + EARLY >= idle,
        "closed before the idle timeout: {elapsed:?}"
    );
    assert!(elapsed <= idle + SLACK, "closed too late: {elapsed:?}");
}
