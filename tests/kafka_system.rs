//! Kafka mode end to end: the real iothubd producing to a real Kafka-protocol broker
//! (tansu), an independent rdkafka consumer reading what was produced, and the pushes now
//! consumed from Kafka reaching the customer; and through Kafka outages (the broker stopped
//! and restarted with its data, or not yet started when the hub starts): devices stay
//! acknowledged, their events wait in the hub's spool and reach Kafka, in order, once it
//! is back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use iothub::imei::Imei;
use iothub_loadgen::movement::Fix;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::{metric_value, Hub, Tansu};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_kafka_keyed_by_imei_and_pushes_are_consumed_from_it() {
    let broker = Tansu::start();
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = rx.url();
    let kafka_host = broker.addr.to_string();
    let hub = Hub::start(&[
        ("pushURL", &url),
        ("pushToken", "kafka-push"),
        ("kafkaEnable", "true"),
        ("kafkaHost", &kafka_host),
        ("topicPrefix", "systest"),
        ("kafkaConsumerGroup", "systest-push"),
    ]);

    let mut sent = Vec::new();
    let base = Utc.with_ymd_and_hms(2026, 11, 25, 6, 0, 0).unwrap();
    for d in 0..3u64 {
        let imei = format!("8647170032836{d:02}");
        let mut tracker = SimTracker::connect_and_login(
            hub.gt06,
            SimTrackerConfig::new(Imei::parse(&imei).unwrap()),
        )
        .await
        .unwrap();
        for i in 0..10 {
            let fix = Fix::at(base + chrono::Duration::seconds(i), 1.0 + d as f64, 2.0);
            tracker.send_gps(fix).await.unwrap();
        }
        tracker
            .send_heartbeat()
            .await
            .expect("heartbeat acknowledged with Kafka on");
        sent.push(imei);
        tracker.close().await;
    }

    // Pushes, consumed from Kafka by the hub's consumer group.
    let pushed = rx
        .wait_for(|v| v.count("/pushgps") >= 30, Duration::from_secs(60))
        .await;
    assert!(
        pushed,
        "only {} of 30 positions pushed in Kafka mode",
        rx.count("/pushgps")
    );
    assert_eq!(rx.view(|v| v.duplicates("/pushgps")), 0);

    // An independent consumer sees every position, keyed by IMEI, as the push record JSON.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka_host)
        .set("group.id", "systest-independent-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("rdkafka consumer");
    consumer.subscribe(&["systest.gps"]).expect("subscribe");
    let mut per_key: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while per_key.values().sum::<usize>() < 30 && Instant::now() < deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(500)) {
            let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).to_string();
            let value: serde_json::Value =
                serde_json::from_slice(msg.payload().unwrap_or_default()).expect("record JSON");
            assert_eq!(value["deviceImei"], key.as_str(), "message key is the IMEI");
            *per_key.entry(key).or_default() += 1;
        }
    }
    for imei in &sent {
        assert_eq!(
            per_key.get(imei).copied(),
            Some(10),
            "positions of {imei} in Kafka: {per_key:?}"
        );
    }
    drop(hub);
}

/// Between report rounds of the outage tests: devices report every few seconds.
const PAUSE: Duration = Duration::from_millis(700);

/// One record read back from Kafka.
struct KafkaRecord {
    topic: String,
    key: String,
    value: serde_json::Value,
}

/// Reads `topics` from the beginning, in a consumer group of its own, until `enough` holds
/// for what was read or `within` passes; returns everything read.
async fn read_kafka(
    kafka_host: &str,
    group: &str,
    topics: &[&str],
    within: Duration,
    enough: impl Fn(&[KafkaRecord]) -> bool + Send + 'static,
) -> Vec<KafkaRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_host)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("rdkafka consumer");
    consumer.subscribe(topics).expect("subscribe");
    tokio::task::spawn_blocking(move || {
        let mut read = Vec::new();
        let deadline = Instant::now() + within;
        while !enough(&read) && Instant::now() < deadline {
            if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(500)) {
                read.push(KafkaRecord {
                    topic: msg.topic().to_owned(),
                    key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(msg.payload().unwrap_or_default())
                        .expect("record JSON"),
                });
            }
        }
        read
    })
    .await
    .expect("kafka reader thread")
}

/// What one simulated device reported, every report acknowledged by the hub.
#[derive(Default)]
struct Reported {
    heartbeats: usize,
    /// `alarmTime` of each alarm, in the order sent.
    alarm_times: Vec<String>,
}

/// Sends `rounds` heartbeat + SOS alarm pairs from each tracker, `pause` apart; each must be
/// acknowledged within the tracker's 5 s, as a real device waits.
async fn report_rounds(
    trackers: &mut [SimTracker],
    reported: &mut HashMap<String, Reported>,
    rounds: usize,
    pause: Duration,
    phase: &str,
) {
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(pause).await;
        }
        for tracker in trackers.iter_mut() {
            let imei = tracker.imei().as_str().to_owned();
            let log = reported.entry(imei.clone()).or_default();
            tracker
                .send_heartbeat()
                .await
                .unwrap_or_else(|e| panic!("{phase}: heartbeat of {imei} not acknowledged: {e}"));
            log.heartbeats += 1;
            // Distinct, increasing alarm times per device: they show the order in Kafka.
            let at = Utc.with_ymd_and_hms(2026, 11, 25, 6, 0, 0).unwrap()
                + chrono::Duration::seconds(log.alarm_times.len() as i64);
            tracker
                .send_alarm(1, Fix::at(at, 22.5, 113.9))
                .await
                .unwrap_or_else(|e| panic!("{phase}: alarm of {imei} not acknowledged: {e}"));
            log.alarm_times
                .push(at.format("%Y-%m-%d %H:%M:%S").to_string());
        }
    }
}

/// Waits until the hub's `/metrics` satisfies `ok`; panics with the last values otherwise.
async fn wait_metrics(hub: &Hub, what: &str, within: Duration, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let text = hub.metrics_text().await;
        if ok(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}: iothub_kafka_up {}, iothub_kafka_spool_events {}",
            metric_value(&text, "iothub_kafka_up", &[]),
            metric_value(&text, "iothub_kafka_spool_events", &[])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kafka_up(text: &str) -> f64 {
    metric_value(text, "iothub_kafka_up", &[])
}

fn spooled_now(text: &str) -> f64 {
    metric_value(text, "iothub_kafka_spool_events", &[])
}

/// Every acknowledged report is in Kafka, keyed by its IMEI: each heartbeat at least once and
/// each alarm at least once, the alarms of a device in the order the device sent them.
async fn assert_all_in_kafka(
    kafka_host: &str,
    group: &str,
    prefix: &str,
    reported: &HashMap<String, Reported>,
) {
    let hb_topic = format!("{prefix}.hb");
    let alarm_topic = format!("{prefix}.alarm");
    let expected: usize = reported
        .values()
        .map(|r| r.heartbeats + r.alarm_times.len())
        .sum();
    let records = read_kafka(
        kafka_host,
        group,
        &[&hb_topic, &alarm_topic],
        Duration::from_secs(90),
        move |read| read.len() >= expected,
    )
    .await;
    let mut heartbeats: HashMap<&str, usize> = HashMap::new();
    let mut alarms: HashMap<&str, Vec<String>> = HashMap::new();
    for r in &records {
        if r.topic == hb_topic {
            assert_eq!(r.value["deviceImei"], r.key.as_str(), "key is the IMEI");
            *heartbeats.entry(&r.key).or_default() += 1;
        } else {
            assert_eq!(r.value["imei"], r.key.as_str(), "key is the IMEI");
            let time = r.value["msg"]["alarmTime"].as_str().unwrap_or_default();
            let seen = alarms.entry(&r.key).or_default();
            // At least once: a copy produced again after an outage is not a loss.
            if !seen.iter().any(|t| t == time) {
                seen.push(time.to_owned());
            }
        }
    }
    for (imei, sent) in reported {
        let got = heartbeats.get(imei.as_str()).copied().unwrap_or(0);
        assert!(
            got >= sent.heartbeats,
            "{imei}: {got} of {} acknowledged heartbeats in Kafka",
            sent.heartbeats
        );
        assert_eq!(
            alarms.get(imei.as_str()).cloned().unwrap_or_default(),
            sent.alarm_times,
            "{imei}: every acknowledged alarm in Kafka, in the order sent"
        );
    }
}

fn kafka_hub(url: &str, kafka_host: &str, prefix: &str) -> Hub {
    kafka_hub_with(url, kafka_host, prefix, &[])
}

fn kafka_hub_with(url: &str, kafka_host: &str, prefix: &str, extra: &[(&str, &str)]) -> Hub {
    let group = format!("{prefix}-push");
    let mut env = vec![
        ("pushURL", url),
        ("pushToken", "kafka-push"),
        ("kafkaEnable", "true"),
        ("kafkaHost", kafka_host),
        ("topicPrefix", prefix),
        ("kafkaConsumerGroup", group.as_str()),
    ];
    env.extend_from_slice(extra);
    Hub::start(&env)
}

async fn trackers(hub: &Hub, first_imei: u64, n: u64) -> Vec<SimTracker> {
    let mut out = Vec::new();
    for d in 0..n {
        let imei = Imei::parse(&format!("86471700329{:04}", first_imei + d)).unwrap();
        out.push(
            SimTracker::connect_and_login(hub.gt06, SimTrackerConfig::new(imei))
                .await
                .expect("tracker logs in"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_during_a_kafka_outage_are_acknowledged_spooled_and_delivered_in_order() {
    let mut broker = Tansu::start_durable();
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let kafka_host = broker.addr.to_string();
    let prefix = "outage";
    let hub = kafka_hub(&rx.url(), &kafka_host, prefix);
    let mut devices = trackers(&hub, 100, 3).await;
    let mut reported = HashMap::new();

    report_rounds(&mut devices, &mut reported, 2, PAUSE, "before the outage").await;
    assert_eq!(kafka_up(&hub.metrics_text().await), 1.0);

    // Reports right after the broker dies, and for longer than the hub's first reachability
    // check waits: the first ones may have been handed to the producer before the hub knew,
    // and must still be answered in time.
    broker.stop();
    report_rounds(&mut devices, &mut reported, 10, PAUSE, "during the outage").await;
    let text = hub.metrics_text().await;
    assert_eq!(kafka_up(&text), 0.0, "spooling while the broker is down");
    assert!(spooled_now(&text) > 0.0, "reports wait in the spool");
    let spooled = metric_value(&text, "iothub_kafka_spooled_total", &[]);

    broker.restart();
    report_rounds(&mut devices, &mut reported, 2, PAUSE, "after the outage").await;
    wait_metrics(
        &hub,
        "spool drained after the broker returned",
        Duration::from_secs(90),
        |m| kafka_up(m) == 1.0 && spooled_now(m) == 0.0,
    )
    .await;
    let drained = metric_value(
        &hub.metrics_text().await,
        "iothub_kafka_spool_drained_total",
        &[],
    );
    assert!(
        drained >= spooled,
        "drained {drained} of {spooled} spooled events"
    );

    assert_all_in_kafka(&kafka_host, "outage-independent-reader", prefix, &reported).await;

    // The customer gets every alarm too, pushed from Kafka once it is back. The push
    // consumers rejoin their group after the outage, which takes a while.
    let alarms: u64 = reported.values().map(|r| r.alarm_times.len() as u64).sum();
    let pushed = rx
        .wait_for(
            |v| v.count("/pushalarm") >= alarms,
            Duration::from_secs(120),
        )
        .await;
    assert!(
        pushed,
        "{} of {alarms} alarms pushed after the outage",
        rx.count("/pushalarm")
    );
    for tracker in devices {
        tracker.close().await;
    }
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_started_while_kafka_is_down_acknowledges_and_delivers_once_it_starts() {
    let mut broker = Tansu::start_durable();
    broker.stop();
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let kafka_host = broker.addr.to_string();
    let prefix = "coldstart";
    let hub = kafka_hub(&rx.url(), &kafka_host, prefix);
    let text = hub.metrics_text().await;
    assert_eq!(kafka_up(&text), 0.0, "starts spooling");

    let mut devices = trackers(&hub, 200, 2).await;
    let mut reported = HashMap::new();
    report_rounds(&mut devices, &mut reported, 3, PAUSE, "kafka never seen").await;
    let text = hub.metrics_text().await;
    assert!(spooled_now(&text) > 0.0, "reports wait in the spool");

    broker.restart();
    wait_metrics(
        &hub,
        "spool drained once the broker started",
        Duration::from_secs(90),
        |m| kafka_up(m) == 1.0 && spooled_now(m) == 0.0,
    )
    .await;
    report_rounds(&mut devices, &mut reported, 1, PAUSE, "kafka up").await;
    assert_all_in_kafka(
        &kafka_host,
        "coldstart-independent-reader",
        prefix,
        &reported,
    )
    .await;
    for tracker in devices {
        tracker.close().await;
    }
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_survive_hub_restarts_and_a_crash_and_drain_afterwards() {
    let mut broker = Tansu::start_durable();
    broker.stop();
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let kafka_host = broker.addr.to_string();
    let prefix = "restarts";
    let mut hub = kafka_hub(&rx.url(), &kafka_host, prefix);
    let mut reported = HashMap::new();

    let mut devices = trackers(&hub, 300, 2).await;
    report_rounds(&mut devices, &mut reported, 2, PAUSE, "first run").await;
    for tracker in devices {
        tracker.close().await;
    }
    // Graceful stop while Kafka is down: the spool stays on disk.
    hub.stop();
    hub.restart();
    let text = hub.metrics_text().await;
    assert_eq!(kafka_up(&text), 0.0, "still spooling after the restart");
    let carried = spooled_now(&text);
    assert!(carried > 0.0, "the spool of the first run is still there");

    let mut devices = trackers(&hub, 300, 2).await;
    report_rounds(&mut devices, &mut reported, 2, PAUSE, "second run").await;
    for tracker in devices {
        tracker.close().await;
    }
    let before_crash = spooled_now(&hub.metrics_text().await);
    assert!(
        before_crash > carried,
        "second run spooled on top of the first"
    );
    // Crash: whatever was acknowledged is already committed in the spool.
    hub.kill();

    broker.restart();
    hub.restart();
    wait_metrics(
        &hub,
        "spool of both runs drained after the crash",
        Duration::from_secs(90),
        |m| kafka_up(m) == 1.0 && spooled_now(m) == 0.0,
    )
    .await;
    let drained = metric_value(
        &hub.metrics_text().await,
        "iothub_kafka_spool_drained_total",
        &[],
    );
    // The sessions closing after the gauge was read may have spooled their logouts too.
    assert!(
        drained >= before_crash,
        "the restarted hub produced the whole spool: {drained} of at least {before_crash}"
    );
    assert_all_in_kafka(
        &kafka_host,
        "restarts-independent-reader",
        prefix,
        &reported,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_leaves_reports_unacknowledged_until_kafka_drains_it() {
    let mut broker = Tansu::start_durable();
    broker.stop();
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let kafka_host = broker.addr.to_string();
    // Room for the login event and two heartbeats.
    let hub = kafka_hub_with(
        &rx.url(),
        &kafka_host,
        "fullspool",
        &[("IOTHUB_KAFKA_SPOOL_MAX", "3")],
    );
    let imei = Imei::parse("864717003294001").unwrap();
    let mut tracker = SimTracker::connect_and_login(hub.gt06, SimTrackerConfig::new(imei))
        .await
        .expect("login spooled and acknowledged");
    tracker.send_heartbeat().await.expect("second event fits");
    tracker.send_heartbeat().await.expect("third event fits");
    assert!(
        tracker.send_heartbeat().await.is_err(),
        "a report the full spool cannot take is not acknowledged"
    );
    let text = hub.metrics_text().await;
    assert_eq!(spooled_now(&text), 3.0);
    assert!(metric_value(&text, "iothub_kafka_spool_full_total", &[]) >= 1.0);

    broker.restart();
    wait_metrics(
        &hub,
        "full spool drained once the broker started",
        Duration::from_secs(90),
        |m| kafka_up(m) == 1.0 && spooled_now(m) == 0.0,
    )
    .await;
    // The device sends again, as a real one does, and is acknowledged now.
    let mut tracker = SimTracker::connect_and_login(hub.gt06, SimTrackerConfig::new(imei))
        .await
        .expect("login once kafka is back");
    tracker
        .send_heartbeat()
        .await
        .expect("heartbeat acknowledged once kafka is back");
    let records = read_kafka(
        &kafka_host,
        "fullspool-independent-reader",
        &["fullspool.hb"],
        Duration::from_secs(60),
        |read| read.len() >= 3,
    )
    .await;
    assert_eq!(
        records.len(),
        3,
        "two spooled heartbeats and the one sent after"
    );
    tracker.close().await;
}
