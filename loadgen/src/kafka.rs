//! Kafka verification: count what the hub produced to Kafka, the way the push receiver
//! counts what it pushed. In Kafka mode the hub writes every event to
//! `{topicPrefix}.{gps,hb,alarm,event}`, keyed by IMEI, as the same JSON record it pushes;
//! a consumer of the customer's own reads those topics. This module is such a consumer, in
//! a consumer group of its own, so a load run can say whether every acknowledged event made
//! it into Kafka (and whether any got there twice) independently of the pushes.
//!
//! Reading starts at each partition's end offset when the run starts (earlier runs' records
//! are not counted), and records are keyed exactly like the receiver's
//! ([`crate::receiver::dedup_key`]), so lost and duplicated mean the same for both.
//!
//! librdkafka's consumer is a blocking API: it polls on a thread of its own, which stops
//! when the verifier is stopped or dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::receiver::{dedup_key, imei_of, ImeiCount};
use crate::report::{endpoint_of, Delivered, DeliverySource};
use crate::stats::Kind;

/// Topic suffixes read, and the push endpoint each one stands for.
pub const TOPICS: [(&str, &str); 4] = [
    ("gps", "/pushgps"),
    ("hb", "/pushhb"),
    ("alarm", "/pushalarm"),
    ("event", "/pushevent"),
];

/// How long metadata and offset requests may take at start.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one poll waits: also how long stopping may take.
const POLL: Duration = Duration::from_millis(200);

/// The Kafka topic of a suffix, named like the hub names it.
pub fn topic_name(prefix: &str, suffix: &str) -> String {
    if prefix.is_empty() {
        suffix.to_owned()
    } else {
        format!("{prefix}.{suffix}")
    }
}

/// Settings of the Kafka counter (`--kafka-*` flags).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// The hub's `topicPrefix`.
    pub topic_prefix: String,
    /// Consumer group; by default one of its own per run.
    pub group: Option<String>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            group: None,
        }
    }

    fn group_id(&self) -> String {
        self.group.clone().unwrap_or_else(|| {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("iothub-loadgen-{}-{ms}", std::process::id())
        })
    }
}

#[derive(Debug, Default)]
struct EndpointTally {
    keys: HashSet<String>,
    per_imei: HashMap<String, ImeiCount>,
}

/// Records counted per endpoint and IMEI, with the receiver's duplicate keys.
#[derive(Debug, Default)]
pub struct Tally {
    endpoints: HashMap<&'static str, EndpointTally>,
    records: u64,
    malformed: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally::default()
    }

    /// Counts one record of `endpoint`; `key` is the message key (the IMEI), used when the
    /// record names none. On `/pushevent` only `LOGIN` events are counted, as the receiver
    /// accounts them.
    pub fn add(&mut self, endpoint: &'static str, key: Option<&str>, payload: &[u8]) {
        self.records += 1;
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.malformed += 1;
                return;
            }
        };
        if endpoint == "/pushevent" {
            let is_login = value
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("login"));
            if !is_login {
                return;
            }
        }
        let Some(imei) = imei_of(&value).or_else(|| key.map(str::to_owned)) else {
            self.malformed += 1;
            return;
        };
        // The offline-callback path never applies to these four topics.
        let dedup = dedup_key(endpoint, &value, "");
        let ep = self.endpoints.entry(endpoint).or_default();
        let duplicate = !ep.keys.insert(dedup);
        let count = ep.per_imei.entry(imei).or_default();
        count.total += 1;
        if duplicate {
            count.duplicates += 1;
        }
    }

    /// Records read, every topic and IMEI.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records that were not a JSON object naming an IMEI.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Distinct and duplicate records of `kind` from the devices `ours` accepts.
    pub fn delivered(&self, kind: Kind, ours: &dyn Fn(&str) -> bool) -> Option<Delivered> {
        let endpoint = endpoint_of(kind)?;
        let mut d = Delivered::default();
        if let Some(ep) = self.endpoints.get(endpoint) {
            for (imei, count) in &ep.per_imei {
                if ours(imei) {
                    d.unique += count.total - count.duplicates;
                    d.duplicates += count.duplicates;
                }
            }
        }
        Some(d)
    }
}

/// A running Kafka counter.
#[derive(Debug)]
pub struct KafkaVerifier {
    brokers: String,
    topics: Vec<String>,
    tally: Arc<Mutex<Tally>>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaVerifier {
    /// Connects, finds the end offset of every partition of the four topics, and starts
    /// counting from there. Fails (naming the flag) when a topic does not exist or the
    /// brokers do not answer.
    pub async fn start(config: KafkaConfig) -> anyhow::Result<KafkaVerifier> {
        let topics: Vec<(String, &'static str)> = TOPICS
            .iter()
            .map(|(suffix, endpoint)| (topic_name(&config.topic_prefix, suffix), *endpoint))
            .collect();
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let brokers = config.brokers.clone();
        let consumer = tokio::task::spawn_blocking(move || connect(&config, &topics))
            .await
            .context("kafka start-up task")??;
        let tally = Arc::new(Mutex::new(Tally::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kafka-verifier".into())
            .spawn({
                let (tally, errors, stop) = (tally.clone(), errors.clone(), stop.clone());
                move || poll_until_stopped(consumer, &tally, &errors, &stop)
            })
            .context("starting the Kafka consumer thread")?;
        Ok(KafkaVerifier {
            brokers,
            topics: names,
            tally,
            errors,
            stop,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    pub fn records(&self) -> u64 {
        self.lock().records()
    }

    pub fn malformed(&self) -> u64 {
        self.lock().malformed()
    }

    /// Errors the consumer reported while polling (broker gone, partition errors).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Stops polling and waits for the consumer thread (at most one poll interval).
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl DeliverySource for KafkaVerifier {
    fn delivered(&self, kind: Kind, ours: &dyn Fn(&str) -> bool) -> Option<Delivered> {
        self.lock().delivered(kind, ours)
    }
}

impl Drop for KafkaVerifier {
    fn drop(&mut self) {
        // The thread sees this within one poll and ends; nothing waits for it here.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A consumer assigned to every partition of `topics` at its end offset.
fn connect(
    config: &KafkaConfig,
    topics: &[(String, &'static str)],
) -> anyhow::Result<(BaseConsumer, HashMap<String, &'static str>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", config.group_id())
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "latest")
        .create()
        .with_context(|| format!("--kafka-brokers {}", config.brokers))?;
    let mut assignment = TopicPartitionList::new();
    for (topic, _) in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .with_context(|| format!("--kafka-brokers {}: metadata of {topic}", config.brokers))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            bail!(
                "--kafka-topic-prefix {:?}: topic {topic} not found",
                config.topic_prefix
            );
        };
        if t.error().is_some() || t.partitions().is_empty() {
            bail!(
                "--kafka-topic-prefix {:?}: topic {topic} does not exist (the hub creates it when it starts in Kafka mode)",
                config.topic_prefix
            );
        }
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)
                .with_context(|| format!("end offset of {topic}/{}", p.id()))?;
            assignment
                .add_partition_offset(topic, p.id(), Offset::Offset(high))
                .with_context(|| format!("assigning {topic}/{}", p.id()))?;
        }
    }
    consumer
        .assign(&assignment)
        .context("assigning the Kafka partitions")?;
    let endpoints = topics.iter().map(|(t, e)| (t.clone(), *e)).collect();
    Ok((consumer, endpoints))
}

fn poll_until_stopped(
    (consumer, endpoints): (BaseConsumer, HashMap<String, &'static str>),
    tally: &Mutex<Tally>,
    errors: &AtomicU64,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let Some(&endpoint) = endpoints.get(message.topic()) else {
                    continue;
                };
                let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
                let payload = message.payload().unwrap_or_default();
                tally
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(endpoint, key, payload);
            }
            Some(Err(_)) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPS: &[u8] = br#"{"deviceImei":"868120246598152","gpsTime":"2023-01-13 02:24:37","lat":22.576539,"lng":113.942885}"#;
    const LOGIN: &[u8] =
        br#"{"deviceImei":"868120246598152","type":"LOGIN","gateTime":"2023-01-13 02:24:30"}"#;
    const LOGOUT: &[u8] =
        br#"{"deviceImei":"868120246598152","type":"LOGOUT","gateTime":"2023-01-13 02:25:30"}"#;

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn topics_are_named_like_the_hub_names_them() {
        assert_eq!(topic_name("iothub", "gps"), "iothub.gps");
        assert_eq!(topic_name("", "hb"), "hb");
    }

    #[test]
    fn a_record_counts_once_per_imei() {
        let mut t = Tally::new();
        t.add("/pushgps", Some("868120246598152"), GPS);
        let d = t.delivered(Kind::Gps, &all);
        assert_eq!(
            d,
            Some(Delivered {
                unique: 1,
                duplicates: 0
            })
        );
    }

    #[test]
    fn the_same_record_twice_is_a_duplicate() {
        let mut t = Tally::new();
        t.add("/pushgps", None, GPS);
        t.add("/pushgps", None, GPS);
        assert_eq!(
            t.delivered(Kind::Gps, &all),
            Some(Delivered {
                unique: 1,
                duplicates: 1
            })
        );
        assert_eq!(t.records(), 2);
    }

    #[test]
    fn only_logins_count_on_the_event_topic() {
        let mut t = Tally::new();
        t.add("/pushevent", None, LOGIN);
        t.add("/pushevent", None, LOGOUT);
        assert_eq!(t.delivered(Kind::Login, &all).map(|d| d.unique), Some(1));
    }

    #[test]
    fn other_runs_are_not_ours() {
        let mut t = Tally::new();
        t.add("/pushgps", None, GPS);
        let none = |_: &str| false;
        assert_eq!(t.delivered(Kind::Gps, &none).map(|d| d.unique), Some(0));
    }

    #[test]
    fn the_message_key_names_a_record_without_an_imei() {
        let mut t = Tally::new();
        t.add("/pushhb", Some("860000000000001"), br#"{"gateTime":"t"}"#);
        let one = |i: &str| i == "860000000000001";
        assert_eq!(
            t.delivered(Kind::Heartbeat, &one).map(|d| d.unique),
            Some(1)
        );
    }

    #[test]
    fn garbage_payloads_are_counted_apart() {
        let mut t = Tally::new();
        t.add("/pushgps", Some("1"), b"not json");
        t.add("/pushgps", Some("1"), b"[1,2]");
        t.add("/pushgps", None, br#"{"gpsTime":"t"}"#);
        assert_eq!(t.malformed(), 3);
        assert_eq!(t.delivered(Kind::Gps, &all).map(|d| d.unique), Some(0));
    }

    #[test]
    fn unpushed_kinds_are_not_counted() {
        assert_eq!(Tally::new().delivered(Kind::CommandReply, &all), None);
    }
}
