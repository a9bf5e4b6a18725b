//! The simulated tracker against a small GT06 server written with iothub's codec: the server
//! acknowledges logins, heartbeats and alarms, answers time requests, sends a 0x80 command
//! after login when asked to, and logs every frame it decodes. Also the fleet runner end to
//! end against that server, and the push receiver over real HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use iothub::codec::gt06::{decode, encode_ack, encode_time_reply, Frame, Message};
use iothub::codec::CrcPolicy;
use iothub::imei::Imei;
use iothub_loadgen::fleet::{self, FleetConfig};
use iothub_loadgen::frames;
use iothub_loadgen::{
    CommandReplyMode, FailureMode, Fix, Kind, PushReceiver, SimTracker, SimTrackerConfig,
    TrackerError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
struct ServerOptions {
    /// Sent right after the login ack: (server flag, command).
    command_after_login: Option<(u32, String)>,
    /// Do not acknowledge heartbeats.
    ignore_heartbeats: bool,
}

struct TestServer {
    addr: SocketAddr,
    frames: Arc<Mutex<Vec<Frame>>>,
}

impl TestServer {
    async fn start(options: ServerOptions) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let log = frames.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, options.clone(), log.clone()));
            }
        });
        TestServer { addr, frames }
    }

    fn frames(&self) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count(&self, protocol: u8) -> usize {
        self.frames()
            .iter()
            .filter(|f| f.protocol == protocol)
            .count()
    }

    async fn wait_for(&self, protocol: u8, n: usize) -> Vec<Frame> {
        for _ in 0..200 {
            if self.count(protocol) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.frames()
            .into_iter()
            .filter(|f| f.protocol == protocol)
            .collect()
    }
}

async fn serve(mut stream: TcpStream, options: ServerOptions, log: Arc<Mutex<Vec<Frame>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(decoded)) = decode(&buf, CrcPolicy::Reject) {
            buf.drain(..decoded.consumed);
            let frame = decoded.frame;
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(frame.clone());
            let serial = frame.serial.unwrap_or(0);
            let mut reply = Vec::new();
            match frame.protocol {
                0x01 => {
                    reply.extend(encode_ack(0x01, serial));
                    if let Some((flag, command)) = &options.command_after_login {
                        reply.extend(frames::online_command(*flag, command, 0));
                    }
                }
                0x13 if !options.ignore_heartbeats => reply.extend(encode_ack(0x13, serial)),
                0x26 => reply.extend(encode_ack(0x26, serial)),
                0x8A => reply.extend(encode_time_reply(server_time(), serial)),
                _ => {}
            }
            if !reply.is_empty() && stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

fn server_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 8, 30, 0)
        .single()
        .unwrap_or_default()
}

fn config(imei: &str) -> SimTrackerConfig {
    let mut c = SimTrackerConfig::new(Imei::parse(imei).unwrap_or_else(|e| panic!("{e}")));
    c.ack_timeout = Duration::from_secs(2);
    c
}

#[tokio::test]
async fn login_is_sent_and_acknowledged() {
    let server = TestServer::start(ServerOptions::default()).await;
    let tracker = SimTracker::connect_and_login(server.addr, config("864717003664467"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    assert!(tracker.is_logged_in());
    assert_eq!(tracker.counters().acked(Kind::Login), 1);
    let logins = server.wait_for(0x01, 1).await;
    let Some(Message::Login(login)) = logins.first().map(|f| f.message.clone()) else {
        panic!("server saw no login: {:?}", server.frames());
    };
    assert_eq!(login.imei.as_str(), "864717003664467");
    assert_eq!(login.timezone_minutes, Some(480));
    assert_eq!(logins[0].serial, Some(1));
}

#[tokio::test]
async fn serials_count_up_per_frame() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut tracker = SimTracker::connect_and_login(server.addr, config("860000000000001"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    tracker
        .send_heartbeat()
        .await
        .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    let fix = tracker.next_fix();
    let serial = tracker
        .send_gps(fix)
        .await
        .unwrap_or_else(|e| panic!("gps: {e}"));
    assert_eq!(serial, 3);
    let heartbeats = server.wait_for(0x13, 1).await;
    assert_eq!(heartbeats[0].serial, Some(2));
}

#[tokio::test]
async fn gps_report_carries_the_fix() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut tracker = SimTracker::connect_and_login(server.addr, config("860000000000002"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let time = Utc
        .with_ymd_and_hms(2025, 3, 1, 8, 0, 0)
        .single()
        .unwrap_or_default();
    let fix = Fix::at(time, 22.576539, 113.942885);
    tracker
        .send_gps(fix)
        .await
        .unwrap_or_else(|e| panic!("gps: {e}"));
    let gps = server.wait_for(0x22, 1).await;
    let Some(Message::Location(loc)) = gps.first().map(|f| f.message.clone()) else {
        panic!("server saw no 0x22: {:?}", server.frames());
    };
    assert_eq!(loc.gps.time, time);
    assert!((loc.gps.latitude - 22.576539).abs() < 1e-6);
    assert_eq!(tracker.counters().sent(Kind::Gps), 1);
}

async fn send_buffered_upload(imei: &str) -> (TestServer, SimTracker, Vec<Fix>, u16) {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut tracker = SimTracker::connect_and_login(server.addr, config(imei))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let start = Utc
        .with_ymd_and_hms(2025, 3, 1, 8, 0, 0)
        .single()
        .unwrap_or_default();
    let fixes: Vec<Fix> = (0..4)
        .map(|i| Fix::at(start + chrono::Duration::seconds(i), 22.576539, 113.942885))
        .collect();
    let first = tracker
        .send_gps_batch(&fixes)
        .await
        .unwrap_or_else(|e| panic!("gps batch: {e}"));
    (server, tracker, fixes, first)
}

#[tokio::test]
async fn a_buffered_upload_carries_every_fix_in_order() {
    let (server, _tracker, fixes, _) = send_buffered_upload("860000000000021").await;
    let times: Vec<_> = server
        .wait_for(0x22, 4)
        .await
        .iter()
        .filter_map(|f| match &f.message {
            Message::Location(l) => Some(l.gps.time),
            _ => None,
        })
        .collect();
    assert_eq!(times, fixes.iter().map(|f| f.time).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_buffered_upload_numbers_its_frames_consecutively() {
    let (server, _tracker, _, first) = send_buffered_upload("860000000000022").await;
    let serials: Vec<_> = server
        .wait_for(0x22, 4)
        .await
        .iter()
        .filter_map(|f| f.serial)
        .collect();
    assert_eq!(serials, (first..first + 4).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_buffered_upload_counts_each_fix_as_sent() {
    let (_server, tracker, _, _) = send_buffered_upload("860000000000023").await;
    assert_eq!(tracker.counters().sent(Kind::Gps), 4);
}

#[tokio::test]
async fn alarm_waits_for_its_ack() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut tracker = SimTracker::connect_and_login(server.addr, config("860000000000003"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let fix = tracker.next_fix();
    tracker
        .send_alarm(1, fix)
        .await
        .unwrap_or_else(|e| panic!("alarm: {e}"));
    assert_eq!(tracker.counters().acked(Kind::Alarm), 1);
    let alarms = server.wait_for(0x26, 1).await;
    let Some(Message::Alarm(alarm)) = alarms.first().map(|f| f.message.clone()) else {
        panic!("server saw no 0x26");
    };
    assert_eq!(alarm.alarm_code, 1);
}

#[tokio::test]
async fn missing_heartbeat_ack_is_an_error() {
    let server = TestServer::start(ServerOptions {
        ignore_heartbeats: true,
        ..ServerOptions::default()
    })
    .await;
    let mut c = config("860000000000004");
    c.ack_timeout = Duration::from_millis(200);
    let mut tracker = SimTracker::connect_and_login(server.addr, c)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let result = tracker.send_heartbeat().await;
    assert!(
        matches!(
            result,
            Err(TrackerError::AckTimeout {
                kind: "heartbeat",
                serial: 2,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(tracker.counters().snapshot().ack_timeouts, 1);
}

#[tokio::test]
async fn time_request_returns_the_server_time() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut tracker = SimTracker::connect_and_login(server.addr, config("860000000000005"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let time = tracker
        .request_time()
        .await
        .unwrap_or_else(|e| panic!("time: {e}"));
    assert_eq!(time, server_time());
}

#[tokio::test]
async fn online_command_is_answered_like_firmware() {
    let server = TestServer::start(ServerOptions {
        command_after_login: Some((0x0102_0304, "STATUS#".to_owned())),
        ..ServerOptions::default()
    })
    .await;
    let mut tracker = SimTracker::connect_and_login(server.addr, config("860000000000006"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let command = tracker
        .next_command(Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("command: {e}"))
        .unwrap_or_else(|| panic!("no command arrived"));
    assert_eq!(command.command, "STATUS#");
    let replies = server.wait_for(0x21, 1).await;
    assert_eq!(
        replies.first().map(|f| f.message.clone()),
        Some(Message::CommandReply(iothub::codec::gt06::CommandReply {
            server_flag: 0x0102_0304,
            content: "OK! STATUS#".to_owned(),
        }))
    );
    assert!(replies[0].extended, "0x21 goes in a 7979 frame");
    assert_eq!(tracker.counters().snapshot().commands_answered, 1);
}

#[tokio::test]
async fn command_arriving_during_an_ack_wait_is_answered() {
    let server = TestServer::start(ServerOptions {
        command_after_login: Some((7, "DYD,000000#".to_owned())),
        ..ServerOptions::default()
    })
    .await;
    let mut c = config("860000000000007");
    c.command_reply = CommandReplyMode::Fixed("DYD=Success!".to_owned());
    // login() reads the ack and the command queued right behind it.
    let mut tracker = SimTracker::connect_and_login(server.addr, c)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    tracker
        .send_heartbeat()
        .await
        .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    let replies = server.wait_for(0x21, 1).await;
    assert_eq!(
        replies.first().map(|f| f.message.clone()),
        Some(Message::CommandReply(iothub::codec::gt06::CommandReply {
            server_flag: 7,
            content: "DYD=Success!".to_owned(),
        }))
    );
    assert_eq!(tracker.commands().count(), 1);
}

#[tokio::test]
async fn run_until_sends_periodic_reports_and_stops() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut c = config("860000000000008");
    c.gps_every = Duration::from_millis(100);
    c.heartbeat_every = Duration::from_millis(200);
    let mut tracker = SimTracker::connect_and_login(server.addr, c)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let started = tokio::time::Instant::now();
    tracker
        .run_until(started + Duration::from_millis(1050))
        .await
        .unwrap_or_else(|e| panic!("run: {e}"));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "ran {elapsed:?}");
    let counters = tracker.counters().snapshot();
    // First tick at a random offset within the period, then every period (fewer when the
    // machine is busy: ticks are delayed, never bunched up).
    assert!((5..=11).contains(&counters.sent(Kind::Gps)), "{counters:?}");
    assert!(
        (2..=6).contains(&counters.sent(Kind::Heartbeat)),
        "{counters:?}"
    );
    assert_eq!(
        counters.acked(Kind::Heartbeat),
        counters.sent(Kind::Heartbeat)
    );
    assert_eq!(counters.ack_timeouts, 0);
    // GPS fix times of one tracker never repeat.
    let frames = server.wait_for(0x22, 5).await;
    let mut times: Vec<_> = frames
        .iter()
        .filter_map(|f| match &f.message {
            Message::Location(l) => Some(l.gps.time),
            _ => None,
        })
        .collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n);
}

#[tokio::test]
async fn server_closing_ends_run_until_with_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut chunk = [0u8; 64];
            let _ = stream.read(&mut chunk).await;
            let _ = stream.write_all(&encode_ack(0x01, 1)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut tracker = SimTracker::connect_and_login(addr, config("860000000000009"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let result = tracker
        .run_until(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    assert!(matches!(result, Err(TrackerError::Closed)), "{result:?}");
}

#[tokio::test]
async fn garbage_from_the_server_is_an_error_not_a_panic() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(&[0x55; 200]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut tracker = SimTracker::connect(addr, config("860000000000010"))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let result = tracker.login().await;
    assert!(matches!(result, Err(TrackerError::Decode(_))), "{result:?}");
}

#[tokio::test]
async fn source_ip_is_used_for_the_connection() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut c = config("860000000000011");
    c.source_ip = Some("127.0.0.7".parse().unwrap_or_else(|e| panic!("{e}")));
    let tracker = SimTracker::connect(server.addr, c)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    assert_eq!(tracker.local_addr().ip().to_string(), "127.0.0.7");
}

#[tokio::test]
async fn connection_refused_is_counted() {
    // Bind then drop: nothing listens on the port any more.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let c = config("860000000000012");
    let counters = c.counters.clone();
    let result = SimTracker::connect(addr, c).await;
    assert!(
        matches!(result, Err(TrackerError::Connect { .. })),
        "{result:?}"
    );
    assert_eq!(counters.snapshot().connects_failed, 1);
}

#[tokio::test]
async fn fleet_runs_bounded_and_counts() {
    let server = TestServer::start(ServerOptions {
        command_after_login: Some((1, "STATUS#".to_owned())),
        ..ServerOptions::default()
    })
    .await;
    let mut config = FleetConfig::new(server.addr, 5);
    config.duration = Duration::from_millis(1500);
    config.gps_interval = Duration::from_millis(250);
    config.heartbeat_interval = Duration::from_millis(500);
    config.connect_rate = 100.0;
    config.source_ips = fleet::parse_source_ips("127.0.1.1-127.0.1.2").unwrap_or_default();
    config.progress = false;
    let started = std::time::Instant::now();
    let report = fleet::run(config, fleet::Verifiers::none())
        .await
        .unwrap_or_else(|e| panic!("fleet: {e:#}"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let c = &report.counters;
    assert_eq!(c.acked(Kind::Login), 5);
    assert_eq!(c.connects_established, 5);
    assert_eq!(c.commands_answered, 5);
    assert_eq!(c.errors, 0, "{:?}", report.error_samples);
    assert!(c.sent(Kind::Gps) >= 20, "{c:?}");
    assert_eq!(
        server.wait_for(0x22, 20).await.len() as u64,
        c.sent(Kind::Gps)
    );
    let imeis: std::collections::BTreeSet<String> = server
        .frames()
        .iter()
        .filter_map(|f| match &f.message {
            Message::Login(l) => Some(l.imei.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(imeis.len(), 5);
    assert!(imeis.contains("860000000000004"));
    // No receiver: nothing is accounted as delivered or lost.
    assert_eq!(report.lost(), 0);
    assert!(report
        .groups
        .iter()
        .flat_map(|g| &g.kinds)
        .all(|k| k.push.is_none() && k.kafka.is_none()));
}

/// Writes one HTTP/1.1 request and returns the status line and body.
async fn http_post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

const FORM: &str = "application/x-www-form-urlencoded";

fn gps_form(imei: &str, time: &str) -> String {
    let list = format!(r#"[{{"deviceImei":"{imei}","gpsTime":"{time}","lat":22.5,"lng":114.1}}]"#);
    serde_urlencoded::to_string([("token", "tok"), ("data_list", list.as_str())])
        .unwrap_or_default()
}

async fn receiver() -> PushReceiver {
    PushReceiver::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("receiver: {e}"))
}

#[tokio::test]
async fn receiver_accepts_a_form_push_and_answers_code_0() {
    let r = receiver().await;
    let (status, body) = http_post(
        r.local_addr(),
        "/pushgps",
        FORM,
        &gps_form("868120246598152", "2023-01-13 02:24:37"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"code":0}"#);
    let records = r.records("pushgps");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].token.as_deref(), Some("tok"));
    assert_eq!(records[0].imei.as_deref(), Some("868120246598152"));
    assert_eq!(r.count_for_imei("/pushgps", "868120246598152"), 1);
}

#[tokio::test]
async fn receiver_flags_a_redelivery_as_duplicate() {
    let r = receiver().await;
    let body = gps_form("868120246598152", "2023-01-13 02:24:37");
    http_post(r.local_addr(), "/pushgps", FORM, &body).await;
    http_post(r.local_addr(), "/pushgps", FORM, &body).await;
    assert_eq!(r.count("/pushgps"), 2);
    assert_eq!(r.unique("/pushgps"), 1);
    assert_eq!(r.duplicates("/pushgps"), 1);
    assert!(r.records("/pushgps")[1].duplicate);
}

#[tokio::test]
async fn receiver_records_the_offline_callback_json() {
    let r = receiver().await;
    let body = r#"{"code":0,"msg":"ok","data":{"_code":"100","_imei":"860000000000001","_content":"OK!","_msg":"ok","_serverFlagId":12},"token":"t2"}"#;
    let path = r
        .offline_callback_url()
        .trim_start_matches(&r.url())
        .to_owned();
    let (status, _) = http_post(r.local_addr(), &path, "application/json", body).await;
    assert_eq!(status, 200);
    let records = r.records(&path);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].token.as_deref(), Some("t2"));
    assert_eq!(records[0].imei.as_deref(), Some("860000000000001"));
}

#[tokio::test]
async fn failing_receiver_answers_500_and_records_nothing() {
    let r = receiver().await;
    r.set_failing(true);
    let body = gps_form("1", "2023-01-13 02:24:37");
    let (status, _) = http_post(r.local_addr(), "/pushgps", FORM, &body).await;
    assert_eq!(status, 500);
    assert_eq!(r.count("/pushgps"), 0);
    assert_eq!(r.rejected(), 1);
    r.set_failing(false);
    let (status, _) = http_post(r.local_addr(), "/pushgps", FORM, &body).await;
    assert_eq!(status, 200);
    assert_eq!(r.count("/pushgps"), 1);
}

#[tokio::test]
async fn failing_receiver_can_answer_code_1() {
    let r = receiver().await;
    r.set_failure_mode(FailureMode::CodeOne);
    let (status, body) = http_post(r.local_addr(), "/pushhb", FORM, &gps_form("1", "t")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(r#"{"code":1"#), "{body}");
}

#[tokio::test]
async fn malformed_push_is_refused_with_400() {
    let r = receiver().await;
    let (status, _) = http_post(r.local_addr(), "/pushgps", FORM, "data_list=%5Bnot").await;
    assert_eq!(status, 400);
    assert_eq!(r.bad_requests(), 1);
}

#[tokio::test]
async fn wait_for_wakes_on_delivery_and_times_out_otherwise() {
    let r = receiver().await;
    let addr = r.local_addr();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        http_post(
            addr,
            "/pushgps",
            FORM,
            &gps_form("1", "2023-01-13 02:24:37"),
        )
        .await;
    });
    assert!(
        r.wait_for(|v| v.count("/pushgps") == 1, Duration::from_secs(5))
            .await
    );
    assert!(
        !r.wait_for(|v| v.count("/pushgps") == 2, Duration::from_millis(200))
            .await
    );
}

#[tokio::test]
async fn deliveries_are_counted_for_the_run_imeis_only() {
    let r = receiver().await;
    let first = gps_form("860000000000000", "2023-01-13 02:24:37");
    http_post(r.local_addr(), "/pushgps", FORM, &first).await;
    http_post(r.local_addr(), "/pushgps", FORM, &first).await;
    let second = gps_form("860000000000001", "2023-01-13 02:24:38");
    http_post(r.local_addr(), "/pushgps", FORM, &second).await;
    // An earlier run's device, delivered late.
    let other = gps_form("861000000000000", "2023-01-13 02:24:39");
    http_post(r.local_addr(), "/pushgps", FORM, &other).await;
    let ours = fleet::imei_range("860000000000000", 2);
    let d = r.view(|v| iothub_loadgen::report::delivered(Kind::Gps, v, &ours));
    assert_eq!(
        d,
        Some(iothub_loadgen::report::Delivered {
            unique: 2,
            duplicates: 1
        })
    );
}
