//! System tests of the GT06 path: the real iothubd binary, simulated trackers from loadgen
//! over real TCP, a real HTTP push receiver, and curl as the customer's API client.

use std::process::Command;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use iothub::imei::Imei;
use iothub_loadgen::frames;
use iothub_loadgen::movement::Fix;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::{metric_value, Hub, TOKEN};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PUSH_TOKEN: &str = "push-secret";
const WAIT: Duration = Duration::from_secs(20);

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
        ("pushToken", PUSH_TOKEN),
        ("offlineCmdPushURL", &offline_url),
        ("offlineCmdPushToken", "offline-secret"),
    ];
    env.extend_from_slice(extra);
    Hub::start(&env)
}

fn tracker_config(imei: &str) -> SimTrackerConfig {
    SimTrackerConfig::new(Imei::parse(imei).unwrap())
}

/// curl, the customer's independent HTTP client, posting a form to sendInstruct.
fn curl_send_instruct(hub: &Hub, form: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "40", "-d", form, &hub.instruct_url()])
        .output()
        .expect("curl must be installed (apt-get install curl)");
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
async fn tracker_events_reach_the_customer_with_jimi_fields() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let imei = "864717003283581";
    let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    tracker
        .send_heartbeat()
        .await
        .expect("heartbeat acknowledged");
    let fix = Fix {
        time: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
        latitude: 22.576539,
        longitude: -113.942885,
        speed_kmh: 42,
        course: 155,
        satellites: 9,
        odometer_m: 698,
    };
    tracker.send_gps(fix.clone()).await.unwrap();
    tracker
        .send_alarm(1, fix.clone())
        .await
        .expect("alarm acknowledged");
    tracker.close().await;

    let all_arrived = rx
        .wait_for(
            |v| {
                v.count("/pushevent") >= 2
                    && v.count("/pushhb") >= 1
                    && v.count("/pushgps") >= 1
                    && v.count("/pushalarm") >= 1
            },
            WAIT,
        )
        .await;
    assert!(
        all_arrived,
        "pushes missing: event {} hb {} gps {} alarm {}",
        rx.count("/pushevent"),
        rx.count("/pushhb"),
        rx.count("/pushgps"),
        rx.count("/pushalarm")
    );

    let events = rx.records("/pushevent");
    assert_eq!(events[0].record["type"], "LOGIN");
    assert_eq!(events[0].record["deviceImei"], imei);
    assert_eq!(events[0].record["timezone"], "GMT+08:00");
    assert_eq!(events[0].token.as_deref(), Some(PUSH_TOKEN));
    assert_eq!(events[1].record["type"], "LOGOUT");

    let hb = &rx.records("/pushhb")[0].record;
    assert_eq!(hb["deviceImei"], imei);
    for field in [
        "gateTime",
        "powerLevel",
        "gsmSign",
        "acc",
        "oilEle",
        "gpsPos",
        "powerStatus",
        "fortify",
    ] {
        assert!(hb.get(field).is_some(), "/pushhb lacks {field}: {hb}");
    }

    let gps = &rx.records("/pushgps")[0].record;
    assert_eq!(gps["deviceImei"], imei);
    assert_eq!(gps["gpsTime"], "2026-11-25 10:00:00");
    assert!(
        (gps["lat"].as_f64().unwrap() - 22.576539).abs() < 1e-5,
        "lat {gps}"
    );
    assert!(
        (gps["lng"].as_f64().unwrap() + 113.942885).abs() < 1e-5,
        "lng {gps}"
    );
    assert_eq!(gps["gpsSpeed"].as_f64(), Some(42.0));
    assert_eq!(gps["direction"], 155);
    assert_eq!(gps["satelliteNum"], 9);
    assert_eq!(gps["postType"], 1);
    assert_eq!(gps["gpsMode"], 0);
    let gate_time = gps["gateTime"].as_str().unwrap();
    assert_eq!(
        gate_time.len(),
        "yyyy-MM-dd HH:mm:ss".len(),
        "gateTime format: {gate_time}"
    );

    let alarm = &rx.records("/pushalarm")[0].record;
    assert_eq!(alarm["deviceImei"], imei);
    assert_eq!(alarm["msgClass"], 0);
    assert_eq!(alarm["type"], "DEVICE");
    assert_eq!(alarm["msg"]["alertType"], 1);
    assert_eq!(alarm["msg"]["alarmTime"], "2026-11-25 10:00:00");
    assert_eq!(rx.view(|v| v.duplicates("/pushgps")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_instruct_returns_the_device_reply() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let imei = "864717003283582";
    let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    let device = tokio::spawn(async move {
        tracker
            .run_until(tokio::time::Instant::now() + Duration::from_secs(8))
            .await
            .ok();
        tracker
    });
    let form = format!(
        "imei={imei}&proNo=128&cmdContent=STATUS%23&serverFlagId=7&token={TOKEN}&timeOut=10"
    );
    let hub_ref = &hub;
    let answer = tokio::task::block_in_place(|| curl_send_instruct(hub_ref, &form));
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["data"]["_code"], "100", "{answer}");
    assert_eq!(answer["data"]["_content"], "OK! STATUS#", "{answer}");
    assert_eq!(answer["data"]["_imei"], imei);
    assert_eq!(answer["data"]["_serverFlagId"], 7);
    let tracker = device.await.unwrap();
    let received: Vec<_> = tracker
        .commands()
        .map(|c| (c.server_flag, c.command.clone()))
        .collect();
    assert_eq!(received, vec![(7, "STATUS#".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_instruct_to_an_offline_device_answers_300() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let form = format!("imei=864717003283583&proNo=128&cmdContent=STATUS%23&token={TOKEN}");
    let hub_ref = &hub;
    let answer = tokio::task::block_in_place(|| curl_send_instruct(hub_ref, &form));
    assert_eq!(answer["data"]["_code"], "300", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_instruction_is_delivered_at_login_and_its_reply_pushed() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let imei = "864717003283584";
    let form = format!(
        "imei={imei}&proNo=128&cmdContent=RELAY%2C1%23&serverFlagId=42&offlineFlag=1&token={TOKEN}"
    );
    let hub_ref = &hub;
    let answer = tokio::task::block_in_place(|| curl_send_instruct(hub_ref, &form));
    assert_eq!(answer["data"]["_code"], "300", "{answer}");

    let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    let command = tracker
        .next_command(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the queued instruction arrives after login");
    assert_eq!(command.server_flag, 42);
    assert_eq!(command.command, "RELAY,1#");
    tracker
        .run_until(tokio::time::Instant::now() + Duration::from_secs(2))
        .await
        .ok();

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
    assert_eq!(item["_imei"], imei);
    assert_eq!(item["_code"], "100");
    assert_eq!(item["_content"], "OK! RELAY,1#");
    assert_eq!(item["_serverFlagId"], 42);
    let callback = &rx.records("/offlineCallback")[0];
    assert_eq!(callback.record["data"]["_content"], "OK! RELAY,1#");
    assert_eq!(callback.record["token"], "offline-secret");

    // Answered instructions leave the queue: a second login gets nothing.
    tracker.close().await;
    let mut again = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    let none = again.next_command(Duration::from_secs(2)).await.unwrap();
    assert!(none.is_none(), "instruction delivered twice: {none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_outage_loses_nothing_and_duplicates_nothing() {
    let rx = receiver().await;
    rx.set_failing(true);
    let hub = hub_pushing_to(&rx, &[]);
    let imei = "864717003283585";
    let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    let base = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap();
    for i in 0..50 {
        let fix = Fix::at(
            base + chrono::Duration::seconds(i),
            22.5,
            113.9 + i as f64 * 0.0001,
        );
        tracker.send_gps(fix).await.unwrap();
    }
    tracker.send_heartbeat().await.unwrap();
    // The customer is down for a while: the hub keeps trying and must not give up.
    let rejected = rx.wait_for(|v| v.rejected() >= 2, WAIT).await;
    assert!(
        rejected,
        "the hub did not try to push while the customer was down"
    );
    assert_eq!(rx.count("/pushgps"), 0);
    rx.set_failing(false);
    let all = rx
        .wait_for(|v| v.count("/pushgps") >= 50, Duration::from_secs(90))
        .await;
    assert!(
        all,
        "only {} of 50 positions delivered after the outage",
        rx.count("/pushgps")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.count("/pushgps"),
        50,
        "positions pushed more than once after success"
    );
    assert_eq!(rx.view(|v| v.duplicates("/pushgps")), 0);
    let times: Vec<String> = rx
        .records("/pushgps")
        .iter()
        .map(|r| r.record["gpsTime"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(
        times, sorted,
        "positions of one device arrived out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_between_ack_and_push_still_delivers() {
    let rx = receiver().await;
    rx.set_failing(true);
    let mut hub = hub_pushing_to(&rx, &[]);
    let imei = "864717003283586";
    let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    let fix = Fix::at(
        Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap(),
        -33.9,
        18.4,
    );
    tracker
        .send_alarm(2, fix)
        .await
        .expect("alarm acknowledged by the hub");
    // Acknowledged, not yet pushed (the customer is failing). Crash the hub.
    hub.kill();
    drop(tracker);
    rx.set_failing(false);
    hub.restart();
    let delivered = rx
        .wait_for(|v| v.count("/pushalarm") >= 1, Duration::from_secs(60))
        .await;
    assert!(delivered, "acknowledged alarm lost across a crash");
    let alarm = &rx.records("/pushalarm")[0].record;
    assert_eq!(alarm["deviceImei"], imei);
    assert_eq!(alarm["msg"]["alertType"], 2);
    assert!((alarm["msg"]["lat"].as_f64().unwrap() + 33.9).abs() < 1e-5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_only_its_own_connection() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let mut trackers = Vec::new();
    for i in 0..100u64 {
        let imei = format!("86000000000{:04}", i);
        trackers.push(
            SimTracker::connect_and_login(hub.gt06, tracker_config(&imei))
                .await
                .unwrap(),
        );
    }
    let logins = rx.wait_for(|v| v.count("/pushevent") >= 100, WAIT).await;
    assert!(logins, "only {} logins pushed", rx.count("/pushevent"));

    // A connection that claims a 0xFFFF-byte frame: refused before anything is allocated.
    let mut bad = tokio::net::TcpStream::connect(hub.gt06).await.unwrap();
    bad.write_all(&hex_bytes("7979ffff01")).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "malformed connection left open: {closed:?}"
    );

    let base = Utc.with_ymd_and_hms(2026, 11, 25, 7, 0, 0).unwrap();
    for (i, t) in trackers.iter_mut().enumerate() {
        let fix = Fix::at(base + chrono::Duration::seconds(i as i64), 10.0, 20.0);
        t.send_gps(fix)
            .await
            .expect("other devices keep their sessions");
        t.send_heartbeat()
            .await
            .expect("other devices keep being acknowledged");
    }
    let flowing = rx.wait_for(|v| v.count("/pushgps") >= 100, WAIT).await;
    assert!(
        flowing,
        "only {} of 100 positions after the malformed frame",
        rx.count("/pushgps")
    );
    let metrics = hub.metrics_text().await;
    assert!(
        metric_value(
            &metrics,
            "iothub_decode_errors_total",
            &["protocol=\"gt06\""]
        ) >= 1.0,
        "decode error not counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_connection_of_a_device_wins() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let imei = "864717003283587";
    let mut first = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    let mut second = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .unwrap();
    second
        .send_heartbeat()
        .await
        .expect("newest connection is served");
    // The old connection is closed by the hub.
    let old_closed = first.send_heartbeat().await.is_err();
    assert!(
        old_closed,
        "old connection still acknowledged after takeover"
    );
    // Instructions go to the newest connection.
    let device = tokio::spawn(async move {
        second
            .run_until(tokio::time::Instant::now() + Duration::from_secs(6))
            .await
            .ok();
        second
    });
    let form =
        format!("imei={imei}&proNo=128&cmdContent=WHERE%23&serverFlagId=9&token={TOKEN}&timeOut=5");
    let hub_ref = &hub;
    let answer = tokio::task::block_in_place(|| curl_send_instruct(hub_ref, &form));
    assert_eq!(answer["data"]["_code"], "100", "{answer}");
    device.await.unwrap();
}

/// Frames that arrive while the session is still busy with the login (registering the device,
/// reading its offline instructions) wait for it and keep their order; later ones, which the
/// hub handles without the session, come after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_behind_a_login_keep_their_order() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &[]);
    let imei = Imei::parse("864717003283591").unwrap();
    let mut socket = tokio::net::TcpStream::connect(hub.gt06).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let base = Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap();
    socket
        .write_all(&frames::login(imei, 0x3610, 480, 1))
        .await
        .unwrap();
    // Without waiting for the login's acknowledgement: one write (usually one segment) each.
    for i in 0..40u16 {
        let fix = Fix::at(base + chrono::Duration::seconds(i64::from(i)), 22.5, 113.9);
        socket.write_all(&frames::gps(&fix, 2 + i)).await.unwrap();
    }
    socket.write_all(&frames::heartbeat(42)).await.unwrap();
    // The login's and the heartbeat's acknowledgements, 10 bytes each, in that order.
    let mut acks = [0u8; 20];
    tokio::time::timeout(WAIT, socket.read_exact(&mut acks))
        .await
        .expect("both acknowledgements")
        .unwrap();
    assert_eq!((acks[3], acks[13]), (0x01, 0x13));

    let all = rx.wait_for(|v| v.count("/pushgps") >= 40, WAIT).await;
    assert!(all, "only {} of 40 positions pushed", rx.count("/pushgps"));
    let times: Vec<String> = rx
        .records("/pushgps")
        .iter()
        .map(|r| r.record["gpsTime"].as_str().unwrap_or_default().to_string())
        .collect();
    let sent: Vec<String> = (0..40)
        .map(|i| {
            (base + chrono::Duration::seconds(i))
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .collect();
    assert_eq!(times, sent);
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The environment block of the Jimi JT/T 808 gateway compose in the operator's guide, as an
/// operator copies it (the Redis and Kafka lines aside: this hub runs on its embedded store).
const JIMI_COMPOSE_TIMEOUTS: [(&str, &str); 4] = [
    ("connectTimeout", "5"),
    ("readTimeOut", "5"),
    ("writeTimeOut", "5"),
    ("newImeiRule", "true"),
];

/// A tracker logs in and stays silent for longer than the Jimi compose's timeouts and the
/// 5 s tick together: the connection still answers its heartbeat. (That the defaults and this
/// block keep a 5-minute heartbeat online is `actors/tests/config.rs`'s to show.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jimi_compose_timeouts_do_not_cut_a_silent_tracker() {
    let rx = receiver().await;
    let hub = hub_pushing_to(&rx, &JIMI_COMPOSE_TIMEOUTS);
    let imei = "864717003283581";
    let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
        .await
        .expect("login");
    tokio::time::sleep(Duration::from_secs(13)).await;
    tracker
        .send_heartbeat()
        .await
        .expect("a tracker silent for 13 s is still connected and acknowledged");
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "iothub_sessions_closed_total",
            &["reason=\"idle_timeout\""]
        ),
        0.0,
        "{metrics}"
    );
    tracker.close().await;
}

/// `iothubd dead-letters <args>` on the stopped hub's data directory: its standard output.
fn dead_letters_command(hub: &Hub, args: &[&str]) -> String {
    let out = Command::new(iothub_system_tests::iothubd_bin())
        .arg("dead-letters")
        .args(args)
        .env("IOTHUB_DATA_DIR", &hub.data_dir)
        .env("apiToken", TOKEN)
        .output()
        .expect("run iothubd dead-letters");
    assert!(
        out.status.success(),
        "iothubd dead-letters {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_endpoint_refuses_are_set_aside_and_replayed() {
    let good = "864717003283581";
    let poison = "864717003283599";
    let rx = receiver().await;
    rx.set_refused_marker(Some(poison));
    let mut hub = hub_pushing_to(&rx, &[("IOTHUB_PUSH_DEAD_LETTER_AFTER", "1")]);
    let fix = Fix {
        time: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
        latitude: 22.576539,
        longitude: 113.942885,
        speed_kmh: 42,
        course: 155,
        satellites: 9,
        odometer_m: 698,
    };
    for imei in [poison, good] {
        let mut tracker = SimTracker::connect_and_login(hub.gt06, tracker_config(imei))
            .await
            .unwrap();
        tracker.send_gps(fix.clone()).await.unwrap();
        tracker
            .send_heartbeat()
            .await
            .expect("heartbeat acknowledged");
        tracker.close().await;
    }
    // The poison device's login, logout, position and heartbeat are refused (413) alone.
    let good_delivered = rx
        .wait_for(
            |v| {
                v.count_for_imei("/pushevent", good) >= 2 && v.count_for_imei("/pushgps", good) >= 1
            },
            WAIT,
        )
        .await;
    assert!(good_delivered, "the other device's records did not arrive");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = hub.metrics_text().await;
        if metric_value(&text, "iothub_push_dead_letters_stored", &[]) >= 4.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters stored: {}",
            metric_value(&text, "iothub_push_dead_letters_stored", &[])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.stop();
    assert_eq!(rx.count_for_imei("/pushgps", poison), 0);

    let listed = dead_letters_command(&hub, &["list"]);
    let lines: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 4, "{listed}");
    assert!(lines.iter().all(|l| l["imei"] == poison), "{listed}");

    rx.set_refused_marker(None);
    let replayed = dead_letters_command(&hub, &["replay"]);
    assert!(replayed.starts_with("4 "), "{replayed}");
    hub.restart();
    let poison_delivered = rx
        .wait_for(
            |v| {
                v.count_for_imei("/pushevent", poison) >= 2
                    && v.count_for_imei("/pushgps", poison) >= 1
                    && v.count_for_imei("/pushhb", poison) >= 1
            },
            WAIT,
        )
        .await;
    assert!(poison_delivered, "the replayed records did not arrive");
}
