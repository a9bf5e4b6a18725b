//! The embedded data path end to end: Publisher -> redb log -> PushDispatcher -> a real HTTP
//! receiver on 127.0.0.1, plus the offline instruction store. No mocks: the events are made
//! durable in a real database file and pushed over real HTTP.

mod push_receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub::command::Instruction;
use iothub::event::{
    Event, GpsRecord, InstructResponseRecord, OfflineCommandCallback, OfflineCommandCallbackData,
    Record, Topic,
};
use iothub::imei::Imei;
use iothub_actors::config::Config;
use iothub_actors::offline::{OfflineCommands, OfflineError, MAX_PENDING_PER_DEVICE};
use iothub_actors::publish::{Publisher, Unqueued};
use iothub_actors::push::{dead_letters, PushDispatcher};
use iothub_actors::storage::Storage;
use push_receiver::{dead_url, Receiver};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &std::path::Path, push_url: &str) -> Config {
    let mut c = Config::from_toml_str("[api]\ntoken = \"api-token\"\n", &|_| None)
        .expect("embedded default configuration");
    c.storage.data_dir = dir.to_path_buf();
    c.push.url = push_url.to_owned();
    c.push.token = "push-token".into();
    c.push.offline_cmd_url = String::new();
    c.push.batch_size = 10;
    c.push.batch_delay = Duration::from_millis(20);
    c.push.min_backoff = Duration::from_millis(20);
    c.push.max_backoff = Duration::from_millis(80);
    c.push.request_timeout = Duration::from_secs(5);
    c.push.dead_letter_after = 2;
    c.kafka.enable = false;
    c
}

fn imei(n: u64) -> Imei {
    Imei::parse(&format!("8647170032{n:05}")).unwrap()
}

/// A position report whose `distance` numbers it, so order can be checked.
fn gps(device: Imei, seq: u64) -> Event {
    Event {
        topic: Topic::Gps,
        imei: device,
        record: Record::Gps(GpsRecord {
            device_imei: device,
            gps_time: "2024-05-01 10:00:00".into(),
            gate_time: "2024-05-01 10:00:01".into(),
            satellite_num: 9,
            lng: 113.942885,
            lat: 22.576539,
            gps_mode: 0,
            gps_speed: 42.0,
            direction: 155,
            acc: 1,
            post_type: 1,
            post_method: None,
            altitude: 0.0,
            distance: seq,
            status: 3,
            mcc: None,
            mnc: None,
            lac: None,
            cell_id: None,
            extra: Default::default(),
        }),
    }
}

fn instruct_response(device: Imei, flag: u64) -> Event {
    Event {
        topic: Topic::InstructResponse,
        imei: device,
        record: Record::InstructResponse(InstructResponseRecord {
            code: "100".into(),
            msg: "Command communication successful response".into(),
            imei: device,
            pro_no: 128,
            content: "OK!".into(),
            server_flag_id: flag,
            gate_time: "2024-05-01 10:00:02".into(),
        }),
    }
}

fn offline_callback(device: Imei, flag: u64) -> Event {
    Event {
        topic: Topic::OfflineCommandCallback,
        imei: device,
        record: Record::OfflineCommandCallback(OfflineCommandCallback {
            code: 0,
            msg: "success".into(),
            data: OfflineCommandCallbackData {
                code: "100".into(),
                imei: device,
                content: "OK!".into(),
                msg: "Command communication successful response".into(),
                server_flag_id: flag,
            },
        }),
    }
}

fn json(e: &Event) -> serde_json::Value {
    serde_json::from_slice(&e.to_json()).unwrap()
}

/// Publishes `calls` calls of `per_call` GPS events each, in order; returns the events.
async fn publish_gps(publisher: &Publisher, first: u64, calls: u64, per_call: u64) -> Vec<Event> {
    let mut all = Vec::new();
    for c in 0..calls {
        let events: Vec<Event> = (0..per_call)
            .map(|i| gps(imei(i % 3), first + c * per_call + i))
            .collect();
        all.extend(events.clone());
        publisher.publish(events).await.expect("publish");
    }
    all
}

#[tokio::test]
async fn published_events_are_pushed_in_order_with_token_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let offline_receiver = Receiver::start(0).await;
    let mut cfg = config(dir.path(), &receiver.url());
    cfg.push.offline_cmd_url = format!("{}/offline/callback", offline_receiver.url());
    cfg.push.offline_cmd_token = "offline-token".into();
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();

    let sent = publish_gps(&publisher, 0, 25, 4).await;
    let replies = vec![instruct_response(imei(1), 7), instruct_response(imei(1), 8)];
    publisher.publish(replies.clone()).await.unwrap();
    let callbacks = vec![offline_callback(imei(2), 11), offline_callback(imei(2), 12)];
    publisher.publish(callbacks.clone()).await.unwrap();

    receiver
        .wait_for(WAIT, "all pushes", |r| {
            r.accepted_records("/pushgps").len() >= sent.len()
                && r.accepted_records("/pushInstructResponse").len() >= replies.len()
        })
        .await;
    offline_receiver
        .wait_for(WAIT, "offline callbacks", |r| {
            r.accepted().len() >= callbacks.len()
        })
        .await;
    push.stop().await;
    publisher.stop().await;

    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    assert_eq!(receiver.accepted_records("/pushgps"), expected);
    let gps_requests: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.path == "/pushgps")
        .collect();
    assert!(
        gps_requests.iter().all(|r| r.data_list().len() <= 10),
        "batch_size respected"
    );
    assert!(gps_requests
        .iter()
        .all(|r| r.content_type == "application/x-www-form-urlencoded"));
    assert!(gps_requests
        .iter()
        .all(|r| r.field("token").as_deref() == Some("push-token")));
    assert!(gps_requests.iter().all(|r| r.field("msgType").is_none()));

    let instruct: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.path == "/pushInstructResponse")
        .collect();
    assert!(instruct
        .iter()
        .all(|r| r.field("msgType").as_deref() == Some("2")));
    assert_eq!(
        receiver.accepted_records("/pushInstructResponse"),
        replies.iter().map(json).collect::<Vec<_>>()
    );

    let offline = offline_receiver.accepted();
    assert_eq!(offline.len(), 2, "one request per callback record");
    for (req, event) in offline.iter().zip(&callbacks) {
        assert_eq!(req.path, "/offline/callback");
        assert_eq!(req.content_type, "application/json");
        let mut want = json(event);
        want["token"] = "offline-token".into();
        let got: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn failing_endpoint_gets_the_same_batch_until_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    // 500, {"code":1}, 500, {"code":1}, then success.
    let receiver = Receiver::start(4).await;
    let cfg = config(dir.path(), &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();

    let sent = publish_gps(&publisher, 0, 10, 5).await;
    receiver
        .wait_for(WAIT, "every record accepted", |r| {
            r.accepted_records("/pushgps").len() >= sent.len()
        })
        .await;
    // Nothing more may arrive once everything was accepted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    push.stop().await;
    publisher.stop().await;

    let requests = receiver.requests();
    let failed: Vec<_> = requests.iter().filter(|r| !r.accepted).collect();
    assert_eq!(failed.len(), 4);
    let first_accepted = requests.iter().find(|r| r.accepted).unwrap();
    for f in &failed {
        assert_eq!(
            f.data_list(),
            first_accepted.data_list(),
            "retry resends the same batch"
        );
    }
    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    assert_eq!(
        receiver.accepted_records("/pushgps"),
        expected,
        "all, once, in order"
    );
}

/// The GPS record the endpoint refuses in the dead-letter tests: its `distance` is unique.
const POISON_DISTANCE: u64 = 777_777;
const POISON_MARKER: &str = "\"distance\":777777";

/// 10 GPS events, the poison one, 20 more, published as 4 calls; returns all in order.
async fn publish_with_poison(publisher: &Publisher) -> Vec<Event> {
    let mut sent = publish_gps(publisher, 0, 1, 10).await;
    let poison = gps(imei(1), POISON_DISTANCE);
    publisher.publish(vec![poison.clone()]).await.unwrap();
    sent.push(poison);
    sent.extend(publish_gps(publisher, 10, 2, 10).await);
    sent
}

#[tokio::test]
async fn a_record_refused_for_good_is_set_aside_and_the_others_are_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    receiver.refuse_records_containing(Some(POISON_MARKER));
    let cfg = config(dir.path(), &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let sent = publish_with_poison(&publisher).await;
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();

    receiver
        .wait_for(WAIT, "every other record accepted", |r| {
            r.accepted_records("/pushgps").len() >= sent.len() - 1
        })
        .await;
    push.stop().await;
    publisher.stop().await;

    let expected: Vec<serde_json::Value> = sent
        .iter()
        .filter(|e| !json(e).to_string().contains(POISON_MARKER))
        .map(json)
        .collect();
    assert_eq!(receiver.accepted_records("/pushgps"), expected);
}

#[tokio::test]
async fn a_record_refused_for_good_lands_in_the_dead_letter_store() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    receiver.refuse_records_containing(Some(POISON_MARKER));
    let cfg = config(dir.path(), &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let sent = publish_with_poison(&publisher).await;
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "every other record accepted", |r| {
            r.accepted_records("/pushgps").len() >= sent.len() - 1
        })
        .await;
    push.stop().await;
    publisher.stop().await;

    let dead = dead_letters::list(&storage, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].topic, Topic::Gps);
    assert_eq!(dead[0].imei, imei(1));
    assert!(dead[0].reason.contains("413"), "{}", dead[0].reason);
    let record: serde_json::Value = serde_json::from_slice(&dead[0].json).unwrap();
    assert_eq!(record, json(&gps(imei(1), POISON_DISTANCE)));
}

#[tokio::test]
async fn a_replayed_dead_letter_is_delivered_once_the_endpoint_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    receiver.refuse_records_containing(Some(POISON_MARKER));
    let cfg = config(dir.path(), &receiver.url());
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let sent = publish_with_poison(&publisher).await;
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "every other record accepted", |r| {
            r.accepted_records("/pushgps").len() >= sent.len() - 1
        })
        .await;
    push.stop().await;
    receiver
        .wait_for(WAIT, "the poison record set aside", |_| {
            storage.dead_letter_count().unwrap() == 1
        })
        .await;

    receiver.refuse_records_containing(None);
    assert_eq!(dead_letters::replay(&cfg, &storage).unwrap(), 1);
    assert_eq!(storage.dead_letter_count().unwrap(), 0);
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "the replayed record accepted", |r| {
            r.accepted_records("/pushgps").len() >= sent.len()
        })
        .await;
    push.stop().await;
    publisher.stop().await;
    let last = receiver.accepted_records("/pushgps").pop().unwrap();
    assert_eq!(last, json(&gps(imei(1), POISON_DISTANCE)));
}

#[tokio::test]
async fn undelivered_events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dead_url().await);
    let sent = {
        let storage = Storage::open(&cfg.storage).unwrap();
        let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
        let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
            .await
            .unwrap();
        let sent = publish_gps(&publisher, 0, 4, 5).await;
        // Let the dispatcher fail against the dead endpoint a few times.
        tokio::time::sleep(Duration::from_millis(200)).await;
        push.stop().await;
        publisher.stop().await;
        sent
    };

    let receiver = Receiver::start(0).await;
    let cfg = config(dir.path(), &receiver.url());
    let storage = Storage::open(&cfg.storage).expect("database reopens once every user stopped");
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "records stored before the restart", |r| {
            r.accepted_records("/pushgps").len() >= sent.len()
        })
        .await;
    push.stop().await;
    let expected: Vec<serde_json::Value> = sent.iter().map(json).collect();
    assert_eq!(receiver.accepted_records("/pushgps"), expected);
}

#[tokio::test]
async fn delivered_events_are_not_pushed_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let cfg = config(dir.path(), &receiver.url());
    let first = {
        let storage = Storage::open(&cfg.storage).unwrap();
        let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
        let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
            .await
            .unwrap();
        let sent = publish_gps(&publisher, 0, 3, 5).await;
        receiver
            .wait_for(WAIT, "first run", |r| {
                r.accepted_records("/pushgps").len() >= sent.len()
            })
            .await;
        push.stop().await;
        publisher.stop().await;
        sent
    };
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    let second = publish_gps(&publisher, 100, 3, 5).await;
    receiver
        .wait_for(WAIT, "second run", |r| {
            r.accepted_records("/pushgps").len() >= first.len() + second.len()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    push.stop().await;
    publisher.stop().await;
    let expected: Vec<serde_json::Value> = first.iter().chain(&second).map(json).collect();
    assert_eq!(receiver.accepted_records("/pushgps"), expected);
    assert_eq!(
        storage.read(Topic::Gps, 0, 1000).unwrap().len(),
        0,
        "delivered entries deleted"
    );
}

#[tokio::test]
async fn records_older_than_max_age_are_dropped_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(usize::MAX).await;
    let mut cfg = config(dir.path(), &receiver.url());
    cfg.push.max_age = Duration::from_millis(300);
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    publish_gps(&publisher, 0, 1, 5).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    receiver.set_failures(0);
    let fresh = publish_gps(&publisher, 50, 1, 5).await;
    receiver
        .wait_for(WAIT, "fresh records", |r| {
            !r.accepted_records("/pushgps").is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    push.stop().await;
    publisher.stop().await;
    let expected: Vec<serde_json::Value> = fresh.iter().map(json).collect();
    assert_eq!(receiver.accepted_records("/pushgps"), expected);
}

/// A publisher on the embedded log of a fresh directory, with no pushURL: for the tests of
/// publishing alone. `commit_interval` replaces the configured pacing when given. The
/// directory lives as long as the returned guard.
async fn log_publisher(
    commit_interval: Option<Duration>,
) -> (tempfile::TempDir, Arc<Storage>, Publisher) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    if let Some(interval) = commit_interval {
        cfg.storage.commit_interval = interval;
    }
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();
    (dir, storage, publisher)
}

#[tokio::test]
async fn concurrent_publishers_all_get_durable_events() {
    let (_dir, storage, publisher) = log_publisher(None).await;
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                p.publish(vec![gps(imei(t), t * 1000 + i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    publisher.stop().await;
    let stored = storage.read(Topic::Gps, 0, 10_000).unwrap();
    assert_eq!(stored.len(), 1000);
    assert_eq!(storage.next_offset(Topic::Gps).unwrap(), 1000);
    // Each device's events are stored in the order its session published them.
    for t in 0..50u64 {
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|e| e.imei == imei(t))
            .map(|e| {
                serde_json::from_slice::<serde_json::Value>(&e.json).unwrap()["distance"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (0..20).map(|i| t * 1000 + i).collect::<Vec<_>>());
    }
}

fn distances(stored: &[iothub_actors::storage::StoredEvent]) -> Vec<u64> {
    stored
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.json).unwrap()["distance"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn an_awaited_publish_is_durable_only_after_the_unacknowledged_ones_before_it() {
    // Long enough that the unacknowledged calls are still queued when the awaited one comes.
    let (_dir, storage, publisher) = log_publisher(Some(Duration::from_millis(200))).await;
    for seq in 1..=10 {
        // Queued at once, without waiting: the path a session's reader takes.
        assert!(publisher
            .try_publish_unacknowledged(vec![gps(imei(1), seq)])
            .is_ok());
    }
    publisher.publish(vec![gps(imei(1), 11)]).await.unwrap();
    let stored = storage.read(Topic::Gps, 0, 100).unwrap();
    assert_eq!(distances(&stored), (1..=11).collect::<Vec<_>>());
    publisher.stop().await;
}

#[tokio::test]
async fn stopping_commits_the_unacknowledged_events_still_queued() {
    let (_dir, storage, publisher) = log_publisher(Some(Duration::from_millis(200))).await;
    for seq in 1..=50 {
        publisher
            .publish_unacknowledged(vec![gps(imei(2), seq)])
            .await
            .unwrap();
    }
    publisher.stop().await;
    let stored = storage.read(Topic::Gps, 0, 100).unwrap();
    assert_eq!(distances(&stored), (1..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn unacknowledged_publish_after_stop_fails() {
    let (_dir, _storage, publisher) = log_publisher(None).await;
    publisher.stop().await;
    let unqueued = publisher
        .try_publish_unacknowledged(vec![gps(imei(1), 1)])
        .unwrap_err();
    assert!(matches!(unqueued, Unqueued::Stopped));
    assert!(publisher
        .publish_unacknowledged(vec![gps(imei(1), 1)])
        .await
        .is_err());
}

#[tokio::test]
async fn a_publish_queued_without_waiting_is_durable_once_its_wait_returns() {
    let (_dir, storage, publisher) = log_publisher(Some(Duration::from_millis(200))).await;
    for seq in 1..=5 {
        assert!(publisher
            .try_publish_unacknowledged(vec![gps(imei(3), seq)])
            .is_ok());
    }
    // The path a session's reader takes for a report it acknowledges itself.
    let Ok(durable) = publisher.try_publish(vec![gps(imei(3), 6), gps(imei(3), 7)]) else {
        panic!("an idle queue has room");
    };
    durable.wait().await.unwrap();
    let stored = storage.read(Topic::Gps, 0, 100).unwrap();
    assert_eq!(distances(&stored), (1..=7).collect::<Vec<_>>());
    publisher.stop().await;
}

#[tokio::test]
async fn a_publish_queued_without_waiting_after_stop_gives_the_events_back() {
    let (_dir, _storage, publisher) = log_publisher(None).await;
    publisher.stop().await;
    let Err(events) = publisher.try_publish(vec![gps(imei(1), 1), gps(imei(1), 2)]) else {
        panic!("a stopped publisher queued events");
    };
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn publish_after_stop_fails() {
    let (_dir, _storage, publisher) = log_publisher(None).await;
    publisher.stop().await;
    assert!(publisher.publish(vec![gps(imei(1), 1)]).await.is_err());
}

fn instruction(flag: u32) -> Instruction {
    Instruction {
        pro_no: 128,
        content: format!("STATUS#{flag}"),
        server_flag_id: flag,
    }
}

#[tokio::test]
async fn offline_instructions_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (a, b) = (imei(1), imei(2));
    let (id1, id2, id3) = {
        let store = OfflineCommands::open(Storage::open(&cfg.storage).unwrap());
        let id1 = store.enqueue(a, instruction(1)).await.unwrap();
        let id2 = store.enqueue(a, instruction(2)).await.unwrap();
        store.enqueue(b, instruction(9)).await.unwrap();
        let id3 = store.enqueue(a, instruction(3)).await.unwrap();
        store.remove(a, id2).await.unwrap();
        (id1, id2, id3)
    };
    assert!(id1 < id2 && id2 < id3);
    let store = OfflineCommands::open(Storage::open(&cfg.storage).unwrap());
    let pending = store.pending(a).await.unwrap();
    let ids: Vec<u64> = pending.iter().map(|q| q.id).collect();
    assert_eq!(ids, vec![id1, id3]);
    assert_eq!(pending[0].instruction, instruction(1));
    assert_eq!(pending[1].instruction, instruction(3));
    assert!(pending.iter().all(|q| q.imei == a && q.queued_at_ms > 0));
    let other = store.pending(b).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].instruction, instruction(9));
    store.remove(b, other[0].id).await.unwrap();
    assert!(store.pending(b).await.unwrap().is_empty());
}

#[tokio::test]
async fn queue_emptied_then_refilled_is_seen_by_the_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let store = OfflineCommands::open(Storage::open(&cfg.storage).unwrap());
    let login_side = store.clone();
    assert!(login_side.pending(imei(3)).await.unwrap().is_empty());
    let id = store.enqueue(imei(3), instruction(1)).await.unwrap();
    store.remove(imei(3), id).await.unwrap();
    assert!(login_side.pending(imei(3)).await.unwrap().is_empty());
    store.enqueue(imei(3), instruction(2)).await.unwrap();
    let pending = login_side.pending(imei(3)).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].instruction, instruction(2));
}

#[tokio::test]
async fn offline_queue_is_limited_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let store = OfflineCommands::open(Storage::open(&cfg.storage).unwrap());
    for i in 0..MAX_PENDING_PER_DEVICE {
        store.enqueue(imei(1), instruction(i as u32)).await.unwrap();
    }
    let refused = store.enqueue(imei(1), instruction(999)).await;
    assert!(matches!(refused, Err(OfflineError::Full(n)) if n == MAX_PENDING_PER_DEVICE));
    // Another device is not affected.
    assert!(store.enqueue(imei(2), instruction(1)).await.is_ok());
    // Room again after one is removed.
    let first = store.pending(imei(1)).await.unwrap()[0].id;
    store.remove(imei(1), first).await.unwrap();
    assert!(store.enqueue(imei(1), instruction(1000)).await.is_ok());
}

/// Throughput measurement (not a pass/fail test): run with
/// `cargo test --release -p iothub-actors --test publish_push -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly with --ignored --nocapture"]
async fn bench_publish_and_push_throughput() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let mut cfg = config(dir.path(), &receiver.url());
    cfg.push.batch_size = 500;
    let storage = Storage::open(&cfg.storage).unwrap();
    let publisher = Publisher::start(&cfg, storage.clone()).await.unwrap();

    const SESSIONS: u64 = 2000;
    const PER_SESSION: u64 = 100;
    let total = SESSIONS * PER_SESSION;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SESSION {
                p.publish(vec![gps(imei(s), i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let text = recorder.render();
    let metric = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let commits = metric("iothub_publish_batch_size_count");
    println!(
        "publish: {total} events from {SESSIONS} concurrent sessions in {publish_secs:.2} s = {:.0} events/s; {commits} commits, mean batch {:.0} events",
        total as f64 / publish_secs,
        metric("iothub_publish_batch_size_sum") / commits.max(1.0)
    );

    let started = Instant::now();
    let push = PushDispatcher::start(&cfg, storage.clone(), no_rejoin())
        .await
        .unwrap();
    receiver
        .wait_for(Duration::from_secs(600), "all pushed", |r| {
            r.accepted_record_count() >= total as usize
        })
        .await;
    let push_secs = started.elapsed().as_secs_f64();
    println!(
        "push: {total} records in {} requests in {push_secs:.2} s = {:.0} records/s",
        receiver.accepted().len(),
        total as f64 / push_secs
    );
    push.stop().await;
    publisher.stop().await;
}

/// The push dispatcher's rejoin signal, for a node that never sees another node leave.
fn no_rejoin() -> tokio::sync::watch::Receiver<u64> {
    tokio::sync::watch::channel(0).1
}
