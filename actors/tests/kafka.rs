//! The Kafka data path against a real Kafka-protocol broker (tansu, started by the test on a
//! free loopback port): the Publisher produces keyed by IMEI, an independent rdkafka consumer
//! reads the topics back, and the PushDispatcher in Kafka mode delivers to a real HTTP
//! receiver, committing its consumer-group offsets only after the customer accepted.
//!
//! Needs the `tansu` binary: set TANSU_BIN, or have it on PATH or in ~/.cargo/bin
//! (`cargo install tansu --locked --features dynostore,libsql`).

mod push_receiver;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use iothub::event::{Event, GpsRecord, Record, Topic};
use iothub::imei::Imei;
use iothub_actors::config::Config;
use iothub_actors::publish::Publisher;
use iothub_actors::push::PushDispatcher;
use iothub_actors::storage::Storage;
use push_receiver::Receiver;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(60);

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    on_path
        .into_iter()
        .chain(cargo_bin)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs the tansu Kafka-compatible broker: install it with \
                 `cargo install tansu --locked --features dynostore,libsql` \
                 or point TANSU_BIN at the binary"
            )
        })
}

/// A tansu broker process with in-memory storage; killed when dropped.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    async fn start() -> Broker {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu broker starts");
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Broker { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(dir: &std::path::Path, broker: &str, push_url: &str) -> Config {
    let mut c = Config::from_toml_str("[api]\ntoken = \"api-token\"\n", &|_| None)
        .expect("embedded default configuration");
    c.gate_id = "gate-test".into();
    c.storage.data_dir = dir.to_path_buf();
    c.kafka.enable = true;
    c.kafka.hosts = broker.to_owned();
    c.kafka.topic_prefix = "iothubtest".into();
    c.kafka.consumer_group = "iothub-push-test".into();
    c.kafka.partitions = 3;
    c.push.url = push_url.to_owned();
    c.push.token = "push-token".into();
    c.push.offline_cmd_url = String::new();
    c.push.batch_size = 20;
    c.push.batch_delay = Duration::from_millis(50);
    c.push.min_backoff = Duration::from_millis(50);
    c.push.max_backoff = Duration::from_millis(200);
    c
}

fn imei(n: u64) -> Imei {
    Imei::parse(&format!("8692470600{n:05}")).unwrap()
}

fn gps(device: Imei, seq: u64) -> Event {
    Event {
        topic: Topic::Gps,
        imei: device,
        record: Record::Gps(GpsRecord {
            device_imei: device,
            gps_time: "2024-05-01 10:00:00".into(),
            gate_time: "2024-05-01 10:00:01".into(),
            satellite_num: 7,
            lng: 113.942885,
            lat: 22.576539,
            gps_mode: 0,
            gps_speed: 0.0,
            direction: 155,
            acc: 1,
            post_type: 1,
            post_method: None,
            altitude: 0.0,
            distance: seq,
            status: 262147,
            mcc: None,
            mnc: None,
            lac: None,
            cell_id: None,
            extra: Default::default(),
        }),
    }
}

/// Publishes `per_device` events for each of `devices` devices, one call per round.
async fn publish(
    publisher: &Publisher,
    devices: u64,
    per_device: u64,
    first_seq: u64,
) -> Vec<Event> {
    let mut all = Vec::new();
    for round in 0..per_device {
        let events: Vec<Event> = (0..devices)
            .map(|d| gps(imei(d), first_seq + round))
            .collect();
        all.extend(events.clone());
        publisher.publish(events).await.expect("publish to kafka");
    }
    all
}

/// Records grouped per device, in the order seen.
fn per_device(records: &[serde_json::Value]) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for r in records {
        let imei = r["deviceImei"].as_str().unwrap().to_owned();
        out.entry(imei)
            .or_default()
            .push(r["distance"].as_u64().unwrap());
    }
    out
}

fn json(e: &Event) -> serde_json::Value {
    serde_json::from_slice(&e.to_json()).unwrap()
}

/// Reads iothubtest.gps from the start with an rdkafka consumer of its own, checking that each
/// record is keyed by its IMEI, until `done` says the records so far are enough.
async fn read_gps_until(
    broker: &str,
    group: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    read_gps_then(broker, group, done, None).await
}

/// Like [`read_gps_until`], then reads on until nothing more comes for [`QUIET`]: the whole
/// topic, including any record a producer retry wrote twice.
async fn read_whole_gps_topic(
    broker: &str,
    group: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    read_gps_then(broker, group, done, Some(QUIET)).await
}

/// How long a topic read by [`read_whole_gps_topic`] must stay quiet to be taken as complete.
const QUIET: Duration = Duration::from_secs(2);

async fn read_gps_then(
    broker: &str,
    group: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
    quiet: Option<Duration>,
) -> Vec<serde_json::Value> {
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&["iothubtest.gps"]).unwrap();
    let mut read = Vec::new();
    loop {
        let complete = done(&read);
        let wait = match (complete, quiet) {
            (false, _) => WAIT,
            (true, Some(quiet)) => quiet,
            (true, None) => break,
        };
        let m = match tokio::time::timeout(wait, reader.recv()).await {
            Ok(m) => m.expect("consume"),
            Err(_) if complete => break,
            Err(_) => panic!("events not readable from kafka within {WAIT:?}"),
        };
        let key = std::str::from_utf8(m.key().expect("key"))
            .unwrap()
            .to_owned();
        let value: serde_json::Value =
            serde_json::from_slice(m.payload().expect("payload")).unwrap();
        assert_eq!(
            value["deviceImei"].as_str(),
            Some(key.as_str()),
            "key is the IMEI"
        );
        read.push(value);
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publishes_a_session_does_not_wait_for_keep_each_device_s_order() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.addr, "");
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone())
        .await
        .expect("publisher on tansu");
    const DEVICES: u64 = 3;
    let mut sent = Vec::new();
    for seq in 0..30 {
        for device in 0..DEVICES {
            let event = gps(imei(device), seq);
            sent.push(event.clone());
            publisher
                .publish_unacknowledged(vec![event])
                .await
                .expect("queued");
        }
    }
    // An awaited publish goes after all of them, as a session's ack does.
    for device in 0..DEVICES {
        let event = gps(imei(device), 30);
        sent.push(event.clone());
        publisher.publish(vec![event]).await.expect("published");
    }
    // Kafka delivery is at least once (a producer retry can write a record twice), so read
    // until every device's last event is in, and compare the order of first deliveries.
    let read = read_gps_until(&broker.addr, "unacknowledged-reader", |read| {
        let devices = per_device(read);
        devices.len() as u64 == DEVICES && devices.values().all(|seqs| seqs.contains(&30))
    })
    .await;
    publisher.stop().await;
    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    assert_eq!(
        first_deliveries(per_device(&read)),
        per_device(&expected),
        "per-device order of first deliveries"
    );
}

/// Each device's sequence with repeats of an earlier record left out.
fn first_deliveries(devices: HashMap<String, Vec<u64>>) -> HashMap<String, Vec<u64>> {
    devices
        .into_iter()
        .map(|(imei, seqs)| {
            let mut seen = std::collections::HashSet::new();
            let firsts = seqs.into_iter().filter(|s| seen.insert(*s)).collect();
            (imei, firsts)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_then_push_delivers_every_event() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let cfg = config(dir.path(), &broker.addr, &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone())
        .await
        .expect("publisher on tansu");
    let sent = publish(&publisher, 5, 12, 0).await;

    // An independent reader: every event is in iothubtest.gps, keyed by its IMEI. Kafka
    // delivery is at least once (a producer retry can write a record twice), so the facts are
    // the order of first deliveries, and that the push adds nothing to what the topic holds.
    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    let topic = read_whole_gps_topic(&broker.addr, "independent-reader", |read| {
        first_deliveries(per_device(read)) == per_device(&expected)
    })
    .await;
    assert_eq!(
        first_deliveries(per_device(&topic)),
        per_device(&expected),
        "every event, in order per device"
    );

    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .expect("dispatcher on tansu");
    receiver
        .wait_for(WAIT, "kafka pushes", |r| {
            r.accepted_record_count() >= topic.len()
        })
        .await;
    push.stop().await;
    let pushed = receiver.accepted_records("/pushgps");
    assert_eq!(
        per_device(&pushed),
        per_device(&topic),
        "each record of the topic pushed once, in order per device"
    );
    assert!(receiver
        .requests()
        .iter()
        .all(|r| r.field("token").as_deref() == Some("push-token")));

    // A new dispatcher resumes from the committed offsets: only new events are pushed.
    let more = publish(&publisher, 5, 2, 100).await;
    publisher.stop().await;
    let all: Vec<serde_json::Value> = expected.into_iter().chain(more.iter().map(json)).collect();
    let topic = read_whole_gps_topic(&broker.addr, "second-reader", |read| {
        first_deliveries(per_device(read)) == per_device(&all)
    })
    .await;
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "pushes after restart", |r| {
            r.accepted_record_count() >= topic.len()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    push.stop().await;
    let pushed = receiver.accepted_records("/pushgps");
    assert_eq!(
        per_device(&pushed),
        per_device(&topic),
        "nothing pushed twice after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_push_retries_until_the_customer_accepts() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(3).await;
    let cfg = config(dir.path(), &broker.addr, &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    let sent = publish(&publisher, 2, 5, 0).await;
    receiver
        .wait_for(WAIT, "pushes", |r| r.accepted_record_count() >= sent.len())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    push.stop().await;
    publisher.stop().await;
    let requests = receiver.requests();
    assert_eq!(requests.iter().filter(|r| !r.accepted).count(), 3);
    let pushed = receiver.accepted_records("/pushgps");
    assert_eq!(pushed.len(), sent.len());
    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    assert_eq!(per_device(&pushed), per_device(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_publish_time_is_spooled_and_acknowledged() {
    let mut broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.addr, "");
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    publisher
        .publish(vec![gps(imei(1), 1)])
        .await
        .expect("broker up");
    broker.kill();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.publish(vec![gps(imei(1), 2)]),
    )
    .await
    .expect("publish answers within the 5 s a device waits for its acknowledgement");
    assert!(
        result.is_ok(),
        "an event must be spooled (and the device acknowledged) while kafka is down: {result:?}"
    );
    publisher.stop().await;
}

/// A member of the push consumer group on the alarm topic, as another delivery loop of the
/// node is: it joins the group, takes what it is given and polls until the test ends.
fn alarm_member(broker: &str, group: &str) -> tokio::task::JoinHandle<()> {
    let member: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    member.subscribe(&["iothubtest.alarm"]).unwrap();
    tokio::spawn(async move {
        loop {
            let _ = member.recv().await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_push_members_joining_the_group_push_nothing_twice() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    // A slow customer, so the backlog takes seconds to push and the group rebalances while
    // batches of it are read and not yet committed.
    receiver.set_delay(Duration::from_millis(40));
    let cfg = config(dir.path(), &broker.addr, &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let sent = publish(&publisher, 20, 150, 0).await;
    publisher.stop().await;
    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    let topic = read_whole_gps_topic(&broker.addr, "rebalance-reader", |read| {
        first_deliveries(per_device(read)) == per_device(&expected)
    })
    .await;

    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "the first gps push", |r| {
            !r.accepted_records("/pushgps").is_empty()
        })
        .await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(alarm_member(&broker.addr, &cfg.kafka.consumer_group));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        receiver.accepted_records("/pushgps").len() < topic.len(),
        "the members joined while the backlog was being pushed"
    );
    receiver
        .wait_for(WAIT, "the whole backlog pushed", |r| {
            r.accepted_records("/pushgps").len() >= topic.len()
        })
        .await;
    // A record read again after a rebalance would be pushed within this.
    tokio::time::sleep(Duration::from_secs(3)).await;
    push.stop().await;
    for m in members {
        m.abort();
    }
    let pushed = receiver.accepted_records("/pushgps");
    assert_eq!(
        pushed.len(),
        topic.len(),
        "each record of the topic pushed once while the group rebalanced"
    );
    assert_eq!(
        per_device(&pushed),
        per_device(&topic),
        "in order per device"
    );
}

/// The push dispatcher's rejoin signal, for a node that never sees another node leave.
fn no_rejoin() -> tokio::sync::watch::Receiver<u64> {
    tokio::sync::watch::channel(0).1
}
