//! System tests of the JT/T 808 path: the real iothubd binary, simulated JT/T 808 terminals
//! from loadgen (2013 and 2019 headers) over real TCP, a real HTTP push receiver, and curl as
//! the customer's API client.

use std::process::Command;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use iothub::codec::jt808;
use iothub::imei::Imei;
use iothub_loadgen::jt808_terminal::{
    AdasEvent, BatchKind, Jt808Version, SimTerminal, SimTerminalConfig, TerminalError,
};
use iothub_loadgen::movement::Fix;
use iothub_loadgen::receiver::PushReceiver;
use iothub_system_tests::{metric_value, Hub, TOKEN};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
/// A JC450-style IMEI: under `newImeiRule` its first 14 digits fit the 6 phone bytes.
const IMEI_2013: &str = "869247060001762";
const IMEI_2019: &str = "869247060001770";

async fn receiver() -> PushReceiver {
    PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start push receiver")
}

fn hub_pushing_to(receiver: &PushReceiver, extra: &[(&str, &str)]) -> Hub {
    let url = receiver.url();
    let offline_url = receiver.offline_callback_url();
    let mut env: Vec<(&str, &str)> = vec![
        ("pushURL", &url),
        ("pushToken", "push-secret"),
        ("offlineCmdPushURL", &offline_url),
    ];
    env.extend_from_slice(extra);
    Hub::start(&env)
}

fn terminal_config(imei: &str, version: Jt808Version) -> SimTerminalConfig {
    SimTerminalConfig::new(Imei::parse(imei).unwrap(), version)
}

/// A 2013 terminal (`IMEI_2013`) registered and authenticated on the JT/T 808 port.
async fn terminal_2013(hub: &Hub) -> SimTerminal {
    SimTerminal::connect_and_login(hub.jt808, terminal_config(IMEI_2013, Jt808Version::V2013))
        .await
        .expect("register and authenticate")
}

fn fix(second: u32) -> Fix {
    Fix {
        time: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, second).unwrap(),
        latitude: 22.576539,
        longitude: 113.942885,
        speed_kmh: 42,
        course: 155,
        satellites: 9,
        odometer_m: 12_300,
    }
}

/// curl posting a sendInstruct form, run off the async threads so the simulated terminal
/// keeps answering meanwhile. `cmdContent` goes through `--data-urlencode` (JSON has `&`,
/// `=` and quotes).
async fn curl_send_instruct(hub: &Hub, imei: &str, pro_no: u32, flag: u32, content: &str) -> Value {
    curl_send_instruct_with(hub, imei, pro_no, flag, content, "").await
}

/// The same with extra plain form fields (`&offlineFlag=1`).
async fn curl_send_instruct_with(
    hub: &Hub,
    imei: &str,
    pro_no: u32,
    flag: u32,
    content: &str,
    extra: &str,
) -> Value {
    let url = hub.instruct_url();
    let args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "40".into(),
        "-d".into(),
        format!("imei={imei}&proNo={pro_no}&serverFlagId={flag}&token={TOKEN}&timeOut=15{extra}"),
        "--data-urlencode".into(),
        format!("cmdContent={content}"),
        url,
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(&args)
            .output()
            .expect("curl must be installed (apt-get install curl)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sendInstruct answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_2013_reports_reach_the_customer_with_jimi_fields() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal =
        SimTerminal::connect_and_login(hub.jt808, terminal_config(IMEI_2013, Jt808Version::V2013))
            .await
            .expect("register and authenticate");
    terminal.send_heartbeat().await.expect("heartbeat acked");
    // Alarm word bit 0: emergency.
    terminal
        .send_location(&fix(0), 1, &[])
        .await
        .expect("location acked");
    terminal
        .send_batch(&[fix(10), fix(20)], BatchKind::BlindArea)
        .await
        .expect("batch acked");
    let label = terminal
        .send_adas_alarm(&fix(30), AdasEvent::new(1, 2))
        .await
        .expect("ADAS alarm acked");
    terminal.send_logout().await.expect("logout acked");
    terminal.close().await;

    let arrived = rx
        .wait_for(
            |v| {
                v.count("/pushevent") >= 2
                    && v.count("/pushhb") >= 1
                    && v.count("/pushgps") >= 4
                    && v.count("/pushalarm") >= 2
            },
            WAIT,
        )
        .await;
    assert!(
        arrived,
        "pushes missing: event {} hb {} gps {} alarm {}",
        rx.count("/pushevent"),
        rx.count("/pushhb"),
        rx.count("/pushgps"),
        rx.count("/pushalarm")
    );

    let events = rx.records("/pushevent");
    assert_eq!(events[0].record["type"], "LOGIN");
    assert_eq!(events[0].record["deviceImei"], IMEI_2013);
    assert_eq!(events[0].record["timezone"], "GMT+08:00");
    assert_eq!(events[1].record["type"], "LOGOUT");
    assert_eq!(events.len(), 2, "one LOGOUT only: {events:?}");

    let gps = rx.records("/pushgps");
    let first = &gps[0].record;
    assert_eq!(first["deviceImei"], IMEI_2013);
    assert_eq!(first["gpsTime"], "2026-11-25 10:00:00");
    assert_eq!(first["lat"], 22.576539);
    assert_eq!(first["lng"], 113.942885);
    assert_eq!(first["gpsSpeed"], 42.0);
    assert_eq!(first["direction"], 155);
    assert_eq!(first["satelliteNum"], 9);
    assert_eq!(first["distance"], 12_300);
    assert_eq!(first["gpsMode"], 0);
    assert_eq!(
        gps[1].record["gpsMode"], 1,
        "blind-area batch is a re-upload"
    );

    let alarms = rx.records("/pushalarm");
    let standard = alarms
        .iter()
        .find(|a| a.record["msg"]["alertType"] == "256")
        .expect("alarm word pushed as alertType 256");
    assert_eq!(standard.record["msgClass"], 1);
    assert_eq!(standard.record["msg"]["standardAlarmValue"], 1);
    let adas = alarms
        .iter()
        .find(|a| a.record["msg"]["alertType"] == "264")
        .expect("ADAS alarm pushed as alertType 264");
    assert_eq!(adas.record["msg"]["alarmType"], 1);
    assert_eq!(adas.record["msg"]["alarmLevel"], 2);
    let expected_label: Vec<String> = label
        .terminal_id
        .iter()
        .chain(label.time.0.iter())
        .chain([label.seq, label.attachments, label.reserved].iter())
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(adas.record["msg"]["alarmLabel"], expected_label.join(","));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_2019_authenticates_and_reports() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal =
        SimTerminal::connect_and_login(hub.jt808, terminal_config(IMEI_2019, Jt808Version::V2019))
            .await
            .expect("2019 register and authenticate");
    terminal
        .send_location(&fix(5), 0, &[])
        .await
        .expect("location acked");
    assert!(
        rx.wait_for(|v| v.count("/pushgps") >= 1, WAIT).await,
        "no /pushgps"
    );
    let gps = &rx.records("/pushgps")[0].record;
    assert_eq!(gps["deviceImei"], IMEI_2019);
    assert_eq!(gps["gpsTime"], "2026-11-25 10:00:05");
    assert!(
        rx.records("/pushalarm").is_empty(),
        "no alarm without alarm bits"
    );
    terminal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_params_returns_pro_no_260_with_the_parameters() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal = terminal_2013(&hub).await;
    let answer = curl_send_instruct(&hub, IMEI_2013, 33028, 11, "");
    let downlink = terminal.next_downlink_of(0x8104, WAIT);
    let (answer, downlink) = tokio::join!(answer, downlink);
    assert!(downlink.unwrap().is_some(), "0x8104 not received");
    let data = &answer["data"];
    assert_eq!(data["_code"], "100", "{answer}");
    assert_eq!(data["_proNo"], 260);
    assert_eq!(data["_serverFlagId"], 11);
    let content: Value = serde_json::from_str(data["_content"].as_str().unwrap()).unwrap();
    // The simulated terminal's defaults: heartbeat 30 s (0x0001), location every 10 s
    // (0x0029 = 41).
    assert_eq!(content["1"], "30");
    assert_eq!(content["41"], "10");
    assert!(content["paramCount"].as_str().is_some(), "{content}");
    terminal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_video_request_puts_the_exact_0x9101_on_the_wire() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal = terminal_2013(&hub).await;
    let content = r#"{"dataType":"0","codeStreamType":"1","channel":"2","videoIP":"10.0.0.5","videoTCPPort":"10002","videoUDPPort":"0"}"#;
    let answer = curl_send_instruct(&hub, IMEI_2013, 37121, 12, content);
    let downlink = terminal.next_downlink_of(0x9101, WAIT);
    let (answer, downlink) = tokio::join!(answer, downlink);
    let downlink = downlink.unwrap().expect("0x9101 received");
    assert_eq!(answer["data"]["_code"], "100", "{answer}");

    // Header: id 9101, body length 0x0010, the terminal's phone, the platform serial; body:
    // IP length 8, "10.0.0.5", TCP 10002, UDP 0, channel 2, data type 0, sub stream 1.
    let mut packet = hex("91010010");
    packet.extend_from_slice(terminal.phone().as_bytes());
    packet.extend_from_slice(&downlink.header.serial.to_be_bytes());
    packet.extend(hex("0831302e302e302e35271200000200 01"
        .replace(' ', "")
        .as_str()));
    let check = packet.iter().fold(0u8, |x, b| x ^ b);
    packet.push(check);
    let mut expected = vec![0x7e];
    for b in packet {
        match b {
            0x7e => expected.extend([0x7d, 0x02]),
            0x7d => expected.extend([0x7d, 0x01]),
            b => expected.push(b),
        }
    }
    expected.push(0x7e);
    assert_eq!(downlink.raw, expected);
    terminal.close().await;
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_command_goes_out_as_0x8300_and_is_answered() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal = terminal_2013(&hub).await;
    let answer = curl_send_instruct(&hub, IMEI_2013, 128, 13, "STATUS#");
    let downlink = terminal.next_downlink_of(0x8300, WAIT);
    let (answer, downlink) = tokio::join!(answer, downlink);
    let downlink = downlink.unwrap().expect("0x8300 received");
    let iothub::codec::jt808::Message::Text(text) = downlink.message else {
        panic!("0x8300 body did not decode as text: {:?}", downlink.message);
    };
    assert_eq!(text.text, "STATUS#");
    assert_eq!(answer["data"]["_code"], "100", "{answer}");
    terminal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cmd_content_gets_code_200_naming_the_field() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal = terminal_2013(&hub).await;
    let content = r#"{"dataType":"0","codeStreamType":"0","channel":"1","videoIP":"10.0.0.5","videoTCPPort":"not-a-port","videoUDPPort":"0"}"#;
    let answer = curl_send_instruct(&hub, IMEI_2013, 37121, 14, content).await;
    assert_eq!(answer["data"]["_code"], "200", "{answer}");
    assert!(
        answer.to_string().contains("videoTCPPort"),
        "the answer must name the field: {answer}"
    );
    assert!(
        terminal
            .next_downlink_of(0x9101, Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "nothing may be sent for a refused instruction"
    );
    terminal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jt808_terminal_on_the_gt06_port_is_detected_and_served() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal =
        SimTerminal::connect_and_login(hub.gt06, terminal_config(IMEI_2013, Jt808Version::V2013))
            .await
            .expect("a JT/T 808 terminal logs in on the GT06 port");
    terminal.send_location(&fix(0), 0, &[]).await.unwrap();
    assert!(rx.wait_for(|v| v.count("/pushgps") >= 1, WAIT).await);
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "iothub_protocol_detected_total",
            &["gateway=\"gt06\"", "protocol=\"jt808\""]
        ),
        1.0,
        "{metrics}"
    );
    terminal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_auth_code_survives_a_restart_and_a_wrong_one_is_refused() {
    let rx = receiver().await;
    let mut hub = hub_pushing_to(&rx, &[("IOTHUB_JT808_ACCEPT_UNKNOWN_AUTH", "false")]);
    let mut terminal =
        SimTerminal::connect(hub.jt808, terminal_config(IMEI_2013, Jt808Version::V2013))
            .await
            .unwrap();
    let code = terminal.register().await.expect("registered");
    terminal.close().await;

    hub.stop();
    hub.restart();

    authenticates_2013_with(&hub, &code, "the code issued before the restart").await;
    is_refused_2013_with(&hub, "WRONG").await;
}

/// `IMEI_2013` presenting `code` authenticates.
async fn authenticates_2013_with(hub: &Hub, code: &str, which: &str) {
    let mut config = terminal_config(IMEI_2013, Jt808Version::V2013);
    config.auth_code = Some(code.to_string());
    let terminal = SimTerminal::connect_and_login(hub.jt808, config)
        .await
        .unwrap_or_else(|e| panic!("{which} must authenticate: {e}"));
    terminal.close().await;
}

/// `IMEI_2013` presenting `code` is refused with 0x8001 result 1.
async fn is_refused_2013_with(hub: &Hub, code: &str) {
    let mut config = terminal_config(IMEI_2013, Jt808Version::V2013);
    config.auth_code = Some(code.to_string());
    match SimTerminal::connect_and_login(hub.jt808, config).await {
        Err(TerminalError::Rejected { msg_id, result, .. }) => {
            assert_eq!((msg_id, result), (0x0102, 1));
        }
        Err(e) => panic!("expected a refusal with result 1, got {e}"),
        Ok(t) => {
            t.close().await;
            panic!("the code {code:?} authenticates the terminal")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_terminal_is_refused_then_disconnected() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[("IOTHUB_JT808_AUTH_GRACE", "1")]);
    let mut socket = tokio::net::TcpStream::connect(hub.jt808).await.unwrap();
    // A heartbeat of terminal 012345678901 (go-jt808's test frame), before any login.
    socket
        .write_all(&hex("7e000200000123456789017fff0a7e"))
        .await
        .unwrap();
    let mut reply = [0u8; 20];
    tokio::time::timeout(WAIT, socket.read_exact(&mut reply))
        .await
        .expect("an answer to the heartbeat")
        .unwrap();
    // 0x8001 answering serial 7fff / id 0002 with result 1 (failure).
    assert_eq!(&reply[1..3], &[0x80, 0x01]);
    assert_eq!(&reply[13..18], &[0x7f, 0xff, 0x00, 0x02, 0x01]);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, socket.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "connection must close after the grace period"
    );
    assert_eq!(rx.count("/pushhb"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_instruction_reaches_the_terminal_at_login_and_its_reply_is_pushed() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let answer = curl_send_instruct_with(&hub, IMEI_2013, 33028, 21, "", "&offlineFlag=1").await;
    assert_eq!(answer["data"]["_code"], "300", "{answer}");

    let mut terminal = terminal_2013(&hub).await;
    let query = terminal.next_downlink_of(0x8104, WAIT).await.unwrap();
    assert!(
        query.is_some(),
        "the queued 0x8104 arrives after authentication"
    );
    // Keep reading so the terminal's answer goes out and the hub's follow-ups are seen.
    let _ = terminal.next_downlink(Duration::from_secs(1)).await;

    let pushed = rx
        .wait_for(
            |v| v.count("/pushInstructResponse") >= 1 && v.count("/offlineCallback") >= 1,
            WAIT,
        )
        .await;
    assert!(
        pushed,
        "offline reply not pushed (instruct {} callback {})",
        rx.count("/pushInstructResponse"),
        rx.count("/offlineCallback")
    );
    let item = &rx.records("/pushInstructResponse")[0].record;
    assert_eq!(item["_imei"], IMEI_2013);
    assert_eq!(item["_code"], "100");
    assert_eq!(item["_proNo"], 33028);
    assert_eq!(item["_serverFlagId"], 21);
    let content: Value = serde_json::from_str(item["_content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content["1"], "30",
        "the parameters are the terminal's: {content}"
    );
    terminal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_connection_of_a_terminal_wins() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut old = terminal_2013(&hub).await;
    let mut config = terminal_config(IMEI_2013, Jt808Version::V2013);
    config.auth_code = old.auth_code().map(str::to_string);
    let mut new = SimTerminal::connect_and_login(hub.jt808, config)
        .await
        .expect("the second connection authenticates with the issued code");
    // The old connection is closed by the hub (after the answers it already holds).
    let closed = loop {
        match old.next_downlink(WAIT).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            closed,
            Err(TerminalError::Closed) | Err(TerminalError::Io(_))
        ),
        "the older connection must be closed: {closed:?}"
    );
    new.send_heartbeat()
        .await
        .expect("the newer connection keeps working");
    // Instructions go to the newer connection.
    let answer = curl_send_instruct(&hub, IMEI_2013, 33028, 22, "");
    let downlink = new.next_downlink_of(0x8104, WAIT);
    let (answer, downlink) = tokio::join!(answer, downlink);
    assert!(downlink.unwrap().is_some());
    assert_eq!(answer["data"]["_code"], "100", "{answer}");
    new.close().await;
}

/// 0x0102 (2013 layout) of the terminal with `phone`, presenting `code`.
fn auth_frame(phone: jt808::Phone, code: &str, serial: u16) -> Vec<u8> {
    let header = jt808::Header {
        msg_id: 0x0102,
        version: None,
        phone,
        serial,
        package: None,
        version_flag_mismatch: false,
    };
    let auth = jt808::Message::Auth(jt808::Auth {
        auth_code: code.into(),
        imei: None,
        software_version: None,
    });
    jt808::encode(&header, &auth).expect("encode 0x0102")
}

/// Reads the hub's answers until `count` whole frames arrived (or 10 s passed); returns their
/// (reply serial, result) if they are 0x8001.
async fn general_responses(socket: &mut tokio::net::TcpStream, count: usize) -> Vec<(u16, u8)> {
    let mut wire = Vec::new();
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answers.len() < count {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .expect("the hub answered every frame within 10 s")
            .expect("read");
        assert!(read > 0, "the hub closed the connection after {answers:?}");
        wire.extend_from_slice(&buf[..read]);
        while let Ok(Some(cut)) = jt808::decode(&wire, iothub::codec::CrcPolicy::Reject) {
            if let jt808::Message::PlatformResponse(r) = &cut.packet.message {
                answers.push((r.reply_serial, r.result));
            }
            wire.drain(..cut.consumed);
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authentications_in_one_write_cannot_take_over_a_registered_terminal() {
    let rx = receiver().await;
    // Unknown codes accepted, as the takeover needs: the first authentication of the write is
    // for a phone the hub never saw, with an invented code.
    let hub = hub_pushing_to(&rx, &[("IOTHUB_JT808_ACCEPT_UNKNOWN_AUTH", "true")]);
    let victim = terminal_2013(&hub).await;
    let code = victim.auth_code().expect("issued code").to_string();
    let victim_phone = victim.phone();
    victim.close().await;

    let mut attacker = tokio::net::TcpStream::connect(hub.jt808).await.unwrap();
    let stranger = jt808::Phone::from_digits("013800000001", false).unwrap();
    let mut write = auth_frame(stranger, "x", 0);
    write.extend(auth_frame(victim_phone, "y", 1));
    attacker.write_all(&write).await.unwrap();
    let answers = general_responses(&mut attacker, 2).await;
    assert!(
        answers.contains(&(1, 1)),
        "the second authentication of the write must be refused: {answers:?}"
    );
    drop(attacker);

    authenticates_2013_with(&hub, &code, "the terminal's own code").await;
    is_refused_2013_with(&hub, "y").await;
}

/// Registers `IMEI_2013` on a connection of its own; returns the code or the refusal.
async fn register_2013(hub: &Hub) -> Result<String, TerminalError> {
    let mut terminal =
        SimTerminal::connect(hub.jt808, terminal_config(IMEI_2013, Jt808Version::V2013))
            .await
            .unwrap();
    let registered = terminal.register().await;
    terminal.close().await;
    registered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_registered_terminal_again_is_refused_and_its_code_kept() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let code = register_2013(&hub).await.expect("first registration");
    match register_2013(&hub).await {
        Err(TerminalError::RegisterRefused(result)) => assert_eq!(result, 3),
        other => panic!("expected 0x8100 result 3 (terminal already registered), got {other:?}"),
    }
    authenticates_2013_with(&hub, &code, "the first code").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_may_allow_registering_again() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[("IOTHUB_JT808_ALLOW_REREGISTRATION", "true")]);
    let first = register_2013(&hub).await.expect("first registration");
    let second = register_2013(&hub).await.expect("second registration");
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_registration_rate_is_closed() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[("IOTHUB_JT808_REGISTRATIONS_PER_SOURCE", "2")]);
    let mut outcomes = Vec::new();
    for imei in ["869247060001762", "869247060001770", "869247060001788"] {
        let mut terminal =
            SimTerminal::connect(hub.jt808, terminal_config(imei, Jt808Version::V2013))
                .await
                .unwrap();
        outcomes.push(terminal.register().await.is_ok());
        terminal.close().await;
    }
    assert_eq!(outcomes, [true, true, false]);
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "iothub_jt808_registrations_total",
            &["result=\"rate_limited\""]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_repeating_a_video_alarm_item_gives_one_alarm() {
    use iothub::codec::jt808::LocationItem;
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut terminal = terminal_2013(&hub).await;
    let mut extra = vec![LocationItem::VideoSignalLoss(0b001); 150];
    extra.push(LocationItem::VideoSignalLoss(0b100));
    terminal
        .send_location(&fix(0), 0, &extra)
        .await
        .expect("the report is acknowledged");
    terminal
        .send_heartbeat()
        .await
        .expect("heartbeat acknowledged");
    let arrived = rx
        .wait_for(
            |v| v.count("/pushalarm") >= 1 && v.count("/pushhb") >= 1,
            WAIT,
        )
        .await;
    assert!(arrived, "the alarm or the heartbeat did not arrive");
    // The heartbeat came after the report: every alarm of the report is in by now.
    let alarms = rx.records("/pushalarm");
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].record["msg"]["signalDropChannel"], 0b101);
}
