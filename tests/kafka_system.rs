//! Kafka mode end to end: the real iothubd producing to a real Kafka-protocol broker
//! (tansu), an independent rdkafka consumer reading what was produced, and the pushes now
//! consumed from Kafka reaching the customer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use iothub::imei::Imei;
use iothub_loadgen::movement::Fix;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::{Hub, Tansu};
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
