//! Kafka sink: one topic per event kind (`{topic_prefix}.{topic.name()}`), keyed by IMEI so
//! each device's events stay in one partition, in order.
//!
//! The producer is idempotent with `acks=all`, so a retried send is neither lost nor
//! duplicated by the broker. Calls go into the sink's bounded queue ([`super::queue`]); one
//! dispatcher task takes everything queued as a batch, hands its events to librdkafka (which
//! enqueues at once) and awaits their delivery reports together, counted per batch in the
//! producer's delivery callback ([`super::deliveries`]), then
//! answers the batch's callers and takes the next batch. One batch in flight at a time is
//! what keeps every device's events in order through an outage (below) without per-device
//! bookkeeping; throughput comes from the batch size, which grows with the load as the
//! embedded log's group commit does (a round trip of a few milliseconds carries whatever
//! queued meanwhile). A call therefore costs one queue slot, not a task or a round trip.
//!
//! When Kafka cannot be reached (delivery timeouts, transport errors, all brokers down) the
//! events go to the outage spool ([`super::spool`]) in the node's redb database instead, and
//! the call returns `Ok` once they are committed there: devices stay acknowledged through an
//! outage, and what they were acknowledged for reaches Kafka later, at least once. A permanent
//! refusal (a message too large, say) is still returned to the caller, as is a full spool.
//!
//! The sink is in one of two modes (gauge `iothub_kafka_up`):
//! - direct: each batch is produced;
//! - spooling: each batch is appended to the spool, while the drain task waits for the brokers
//!   (a metadata request, retried with backoff from 1 s doubling to 30 s), creates the topics
//!   if that never succeeded, then produces the spool in sequence order in batches, deletes
//!   each batch once its delivery reports succeeded, and switches back to direct when the spool
//!   is empty.
//!
//! A spooled event Kafka refuses for good while draining (its device was acknowledged when it
//! was spooled) is parked in the `kafka_parked` table instead of stalling the spool (counter
//! `iothub_kafka_parked_total`, gauge `iothub_kafka_parked_events`); with the node stopped,
//! `iothubd replay-parked` moves the parked events back to the spool for the next start.
//!
//! The first batch whose delivery fails as unreachable, or librdkafka reporting all brokers
//! down, switches to spooling at once, so later batches do not each wait
//! [`DELIVERY_TIMEOUT`]. A failed batch spools its events from the first undelivered one on,
//! in queue order, before the next batch is taken. A batch produced directly never overtakes
//! an earlier spooled one: spooling batches queue their append while holding the mode lock,
//! and the drain switches back to direct under that same lock only after the spool thread has
//! committed everything queued and the spool is empty.
//!
//! At start-up an unreachable Kafka is not an error: the sink starts spooling and creates the
//! topics when the brokers answer. Whatever an earlier run left in the spool (after a graceful
//! stop or a crash) is drained before anything is produced directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use iothub::event::{Event, Topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::deliveries::{Deliveries, MAX_TRACKED_EVENTS};
use super::json_buffers;
use super::queue::{Batch, Job, SinkEvent, SinkQueue};
use super::spool::{PendingAppend, Spool, SpoolEntry, SpoolError, SpoolHandle, SpoolWriter};
use super::PublishError;
use crate::config::Config;
use crate::storage::Storage;
use crate::supervise;

/// Most events produced (or spooled) in one batch.
pub const MAX_BATCH_EVENTS: usize = 16_384;
/// How long librdkafka may try to deliver an event before the batch gives up on Kafka and
/// spools it. Devices wait 5 s for an acknowledgement; librdkafka notices an expired message
/// within a second after this, and the spool commit takes milliseconds, so a call caught by an
/// outage (its events sent before the brokers were known down) is still answered in time.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after [`DELIVERY_TIMEOUT`] a batch still waits for reports librdkafka owes it
/// before it counts those events as undelivered (it never should have to).
const REPORTS_GRACE: Duration = Duration::from_secs(10);
const _: () = assert!(MAX_BATCH_EVENTS <= MAX_TRACKED_EVENTS && DRAIN_BATCH <= MAX_TRACKED_EVENTS);
/// Failed drain rounds in a row (Kafka reachable) after which the producer is replaced.
const REPLACE_AFTER_FAILED_DRAINS: u32 = 2;
/// Admin requests (topic creation).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The metadata request that tells whether the brokers answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Spooled events produced per drain round.
pub const DRAIN_BATCH: usize = 1000;
/// First pause of the drain after Kafka failed it; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The Kafka topic of an event kind.
pub fn topic_name(prefix: &str, topic: Topic) -> String {
    if prefix.is_empty() {
        topic.name().to_string()
    } else {
        format!("{prefix}.{}", topic.name())
    }
}

/// Connection settings shared by the producer, the admin client and the push consumers.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.hosts)
        .set("client.id", &config.gate_id);
    if let Some((user, password)) = &config.kafka.auth {
        c.set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", user)
            .set("sasl.password", password);
    }
    c
}

/// Why the topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The settings cannot make a client at all.
    #[error("kafka.hosts: cannot create admin client: {0}")]
    Client(KafkaError),
    /// The brokers did not answer (in time): try again later.
    #[error("kafka.hosts: cannot create topics on {hosts}: {error}")]
    Unreachable { hosts: String, error: String },
    /// The brokers answered no (authorization, partition count, policy): a configuration
    /// problem that retrying does not fix.
    #[error("kafka: cannot create topic {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates the topics of every event kind that do not exist yet. Brokers like tansu do not
/// create topics on first use, and a production cluster should not rely on it either.
pub async fn ensure_topics(config: &Config) -> Result<(), TopicsError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(TopicsError::Client)?;
    let names: Vec<String> = Topic::ALL
        .iter()
        .map(|t| topic_name(&config.kafka.topic_prefix, *t))
        .collect();
    // -1 = the broker's default replication factor (KIP-464).
    let replication = config.kafka.replication_factor.map_or(-1, i32::from);
    let min_insync = config.kafka.min_insync_replicas.map(|m| m.to_string());
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let topic = NewTopic::new(
                n,
                config.kafka.partitions,
                TopicReplication::Fixed(replication),
            );
            match &min_insync {
                Some(m) => topic.set(MIN_INSYNC, m),
                None => topic,
            }
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let unreachable = |error: String| TopicsError::Unreachable {
        hosts: config.kafka.hosts.clone(),
        error,
    };
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) if classify_code(code) == Failure::Unreachable => {
                return Err(unreachable(format!("{name}: {code}")))
            }
            Err((topic, code)) => return Err(TopicsError::Refused { topic, code }),
        }
    }
    check_replication(config, admin, &names).await;
    Ok(())
}

/// The topic setting that says how many replicas an acks=all write needs.
const MIN_INSYNC: &str = "min.insync.replicas";

/// What the brokers say of one topic's replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReplicas {
    pub name: String,
    /// (replicas, in-sync replicas) of each partition.
    pub partitions: Vec<(usize, usize)>,
    /// The topic's `min.insync.replicas`, when the brokers told it.
    pub min_insync: Option<usize>,
}

/// Why a topic is under-replicated against `kafka.replication_factor` (`want_replicas`) and
/// its `min.insync.replicas` (the topic's own, else `kafka.min_insync_replicas`); empty when
/// it is not.
pub fn replication_shortfalls(
    topic: &TopicReplicas,
    want_replicas: Option<i16>,
    want_min_insync: Option<i32>,
) -> Vec<String> {
    let want_replicas = want_replicas.map_or(0, |r| r.max(0) as usize);
    let min_insync = topic
        .min_insync
        .or(want_min_insync.map(|m| m.max(0) as usize))
        .unwrap_or(0);
    let mut out = Vec::new();
    for (p, (replicas, isr)) in topic.partitions.iter().enumerate() {
        if *replicas < want_replicas {
            out.push(format!(
                "partition {p} has {replicas} replicas, kafka.replication_factor is {want_replicas}"
            ));
        }
        if *isr < min_insync {
            out.push(format!(
                "partition {p} has {isr} in-sync replicas, fewer than min.insync.replicas \
                 {min_insync}: acks=all writes fail"
            ));
        }
    }
    if let Some(m) = topic.min_insync {
        if want_min_insync.is_some_and(|want| m < want.max(0) as usize) {
            out.push(format!(
                "min.insync.replicas is {m}, kafka.min_insync_replicas is {}",
                want_min_insync.unwrap_or(0)
            ));
        }
    }
    out
}

/// Describes the topics in use and warns about each that is under-replicated; sets
/// `iothub_kafka_under_replicated_topics`. A failure to describe is only logged.
async fn check_replication(
    config: &Config,
    admin: AdminClient<DefaultClientContext>,
    names: &[String],
) {
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let specifiers: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let mut min_insync: Vec<(String, usize)> = Vec::new();
    match admin.describe_configs(&specifiers, &opts).await {
        Ok(results) => {
            for (name, r) in names.iter().zip(results) {
                let value = r.ok().and_then(|c| {
                    c.get(MIN_INSYNC)
                        .and_then(|e| e.value.as_deref()?.parse::<usize>().ok())
                });
                if let Some(v) = value {
                    min_insync.push((name.clone(), v));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "kafka: cannot describe the topics' settings"),
    }
    let names_owned = names.to_vec();
    let metadata = tokio::task::spawn_blocking(move || {
        names_owned
            .iter()
            .map(|n| {
                let md = admin.inner().fetch_metadata(Some(n), ADMIN_TIMEOUT)?;
                let partitions = md
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .map(|p| (p.replicas().len(), p.isr().len()))
                    .collect();
                Ok((n.clone(), partitions))
            })
            .collect::<Result<Vec<(String, Vec<(usize, usize)>)>, KafkaError>>()
    })
    .await;
    let topics = match metadata {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "kafka: cannot describe the topics' replicas");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "kafka: cannot describe the topics' replicas");
            return;
        }
    };
    let mut under = 0;
    for (name, partitions) in topics {
        let topic = TopicReplicas {
            min_insync: min_insync.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            name,
            partitions,
        };
        let shortfalls = replication_shortfalls(
            &topic,
            config.kafka.replication_factor,
            config.kafka.min_insync_replicas,
        );
        if !shortfalls.is_empty() {
            under += 1;
            tracing::warn!(
                topic = %topic.name,
                problems = %shortfalls.join("; "),
                "kafka topic is under-replicated: acknowledged events may be on fewer brokers than configured"
            );
        }
    }
    metrics::gauge!("iothub_kafka_under_replicated_topics").set(f64::from(under));
}

/// How a failed delivery is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Kafka cannot take the event now (down, unreachable, no leader, slow): spool it.
    Unreachable,
    /// Kafka will never take this event (too large, malformed): retrying cannot help.
    Rejected,
    /// Anything else (authorization, configuration): the caller gets the error.
    Other,
}

fn classify(error: &KafkaError) -> Failure {
    match error {
        // No delivery report came (the producer was dropped before it reported).
        KafkaError::Canceled => Failure::Unreachable,
        _ => error
            .rdkafka_error_code()
            .map_or(Failure::Other, classify_code),
    }
}

fn classify_code(code: RDKafkaErrorCode) -> Failure {
    use RDKafkaErrorCode as C;
    match code {
        // Local: the brokers cannot be reached or did not answer in time.
        C::BrokerTransportFailure
        | C::Resolve
        | C::MessageTimedOut
        | C::AllBrokersDown
        | C::OperationTimedOut
        | C::TimedOutQueue
        | C::QueueFull
        | C::Retry
        | C::PurgeQueue
        | C::PurgeInflight
        | C::WaitCache
        | C::UnknownPartition
        | C::UnknownTopic
        // The producer's idempotence state broke (typically across a broker restart); the
        // drain replaces a producer in this state.
        | C::Fatal
        // Broker side: the cluster is (re)starting, electing, or short of replicas.
        | C::UnknownTopicOrPartition
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::RequestTimedOut
        | C::BrokerNotAvailable
        | C::ReplicaNotAvailable
        | C::NetworkException
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::KafkaStorageError
        | C::NotController
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerEpoch => Failure::Unreachable,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::BadMessage
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidTimestamp => Failure::Rejected,
        _ => Failure::Other,
    }
}

/// What librdkafka reports to the producer: each message's delivery, counted in its batch
/// ([`super::deliveries`]); global errors, logged, with "all brokers down" waking the sink so
/// it spools new calls at once instead of letting each wait for its delivery timeout.
struct ProducerEvents {
    all_brokers_down: Arc<Notify>,
    deliveries: Deliveries,
}

impl ProducerContext for ProducerEvents {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        self.deliveries
            .report(opaque, result.as_ref().map(|_| ()).map_err(|(e, _)| e));
    }
}

impl ClientContext for ProducerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_brokers_down.notify_one();
        }
        // librdkafka's own log lines already report every failed connection; the sink logs
        // the outage itself once, when it starts spooling.
        tracing::debug!(error = %error, reason, "kafka producer");
    }
}

type SinkProducer = ThreadedProducer<ProducerEvents>;

fn create_producer(config: &Config, all_brokers_down: Arc<Notify>) -> anyhow::Result<SinkProducer> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(ProducerEvents {
            all_brokers_down,
            deliveries: Deliveries::default(),
        })
        .map_err(|e| anyhow::anyhow!("kafka: cannot create producer: {e}"))
}

/// Whether the brokers answer a metadata request.
async fn probe(producer: SinkProducer) -> Result<(), String> {
    match tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, PROBE_TIMEOUT))
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Spooling,
}

/// What the call handlers, the drain task and the broker watch share.
struct Shared {
    config: Config,
    topics: TopicNames,
    /// Replaced by the drain when librdkafka reports a fatal error.
    producer: RwLock<SinkProducer>,
    all_brokers_down: Arc<Notify>,
    mode: tokio::sync::Mutex<Mode>,
    spool: SpoolHandle,
    /// Signalled when the sink starts spooling.
    drain_wake: Notify,
    /// Bumped when the sink switches from direct to spooling, so calls still waiting for
    /// their delivery reports spool at once instead of waiting out the delivery timeout.
    outage: watch::Sender<u64>,
    /// The topics were created (or found) since this process started.
    topics_ready: AtomicBool,
    /// Drain rounds in a row whose produce failed although Kafka answered the probe.
    failed_drains: std::sync::atomic::AtomicU32,
}

impl Shared {
    fn producer(&self) -> SinkProducer {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Switches to spooling (the caller holds the mode lock) and wakes the drain.
    fn start_spooling(&self, mode: &mut Mode, reason: &str) {
        if *mode == Mode::Direct {
            *mode = Mode::Spooling;
            self.outage.send_modify(|n| *n += 1);
            metrics::gauge!("iothub_kafka_up").set(0.0);
            tracing::warn!(
                hosts = %self.config.kafka.hosts,
                reason,
                "kafka unreachable: spooling events on disk until it answers"
            );
        }
        self.drain_wake.notify_one();
    }

    /// Swaps in a new producer (a new idempotent producer id, empty queues).
    fn replace_producer(&self, why: &str) {
        match create_producer(&self.config, self.all_brokers_down.clone()) {
            Ok(fresh) => {
                tracing::info!(why, "kafka producer replaced");
                match self.producer.write() {
                    Ok(mut p) => *p = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                }
            }
            Err(e) => {
                tracing::error!(why, error = %e, "kafka producer cannot be replaced")
            }
        }
    }
}

/// The Kafka topic of each event kind, made once rather than per event.
struct TopicNames([String; Topic::ALL.len()]);

impl TopicNames {
    fn new(prefix: &str) -> TopicNames {
        TopicNames(Topic::ALL.map(|t| topic_name(prefix, t)))
    }

    fn of(&self, topic: Topic) -> &str {
        // `Topic::ALL` lists the kinds in declaration order (a unit test checks it).
        &self.0[topic as usize]
    }
}

impl SinkEvent for SpoolEntry {
    fn serialize(event: Event, accepted_ms: i64) -> SpoolEntry {
        let json = json_buffers::json_of(&event);
        SpoolEntry {
            json,
            topic: event.topic,
            imei: event.imei,
            accepted_ms,
        }
    }

    fn json_len(&self) -> usize {
        self.json.len()
    }
}

/// The sink's queue, as sessions hold it.
pub type KafkaQueue = SinkQueue<SpoolEntry>;

pub struct KafkaSink {
    shared: Arc<Shared>,
    queue: KafkaQueue,
    writer: SpoolWriter,
    stop: watch::Sender<bool>,
    dispatcher: Option<JoinHandle<()>>,
    drain: Option<JoinHandle<()>>,
    watch: Option<JoinHandle<()>>,
}

impl KafkaSink {
    /// Creates the producer, opens the spool and, if the brokers answer, any missing topics.
    /// Fails on settings that cannot work (a producer librdkafka refuses, topics the brokers
    /// refuse to create); an unreachable Kafka only starts the sink in spooling mode.
    pub async fn start(config: &Config, storage: Arc<Storage>) -> anyhow::Result<KafkaSink> {
        let all_brokers_down = Arc::new(Notify::new());
        let producer = create_producer(config, all_brokers_down.clone())?;
        let max = config.kafka.spool_max_events;
        metrics::gauge!("iothub_kafka_spool_capacity").set(max as f64);
        let health = storage.health().clone();
        let spool = tokio::task::spawn_blocking(move || Spool::open(storage, max))
            .await?
            .map_err(|e| anyhow::anyhow!("kafka spool: {e}"))?;
        let waiting = spool.len();
        let writer = SpoolWriter::start(spool)?;

        let reachable = match probe(producer.clone()).await {
            Ok(()) => match ensure_topics(config).await {
                Ok(()) => true,
                Err(e @ TopicsError::Unreachable { .. }) => {
                    tracing::warn!(error = %e, "kafka did not create its topics at start-up");
                    false
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => {
                tracing::warn!(
                    hosts = %config.kafka.hosts,
                    error = %e,
                    "kafka.hosts unreachable at start-up: events are spooled on disk until it answers"
                );
                false
            }
        };
        if waiting > 0 {
            tracing::info!(
                events = waiting,
                "kafka spool holds events from an earlier run; they are produced first"
            );
        }
        let mode = if reachable && waiting == 0 {
            Mode::Direct
        } else {
            Mode::Spooling
        };
        metrics::gauge!("iothub_kafka_up").set(if mode == Mode::Direct { 1.0 } else { 0.0 });

        let shared = Arc::new(Shared {
            config: config.clone(),
            topics: TopicNames::new(&config.kafka.topic_prefix),
            producer: RwLock::new(producer),
            all_brokers_down,
            mode: tokio::sync::Mutex::new(mode),
            spool: writer.handle(),
            drain_wake: Notify::new(),
            outage: watch::channel(0).0,
            topics_ready: AtomicBool::new(reachable),
            failed_drains: std::sync::atomic::AtomicU32::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        // Each runs supervised (see `crate::supervise`): restarted after a panic.
        let drain = tokio::spawn(supervise::run("kafka_drain", health.clone(), {
            let (shared, stopped) = (shared.clone(), stopped.clone());
            move || drain_spool(shared.clone(), stopped.clone())
        }));
        let watch = tokio::spawn(supervise::run("kafka_broker_watch", health.clone(), {
            let shared = shared.clone();
            move || watch_brokers(shared.clone(), stopped.clone())
        }));
        let (queue, mut calls) = KafkaQueue::new();
        let dispatcher = tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut restarts = supervise::Restarts::new("kafka_dispatcher", health);
                while !restarts.finished(dispatch(&shared, &mut calls)).await {}
            }
        });
        Ok(KafkaSink {
            shared,
            queue,
            writer,
            stop,
            dispatcher: Some(dispatcher),
            drain: Some(drain),
            watch: Some(watch),
        })
    }

    pub fn queue(&self) -> KafkaQueue {
        self.queue.clone()
    }

    /// Finishes what is queued (produced, or committed to the spool), stops the drain
    /// (whatever is still spooled stays on disk for the next start), then flushes the producer.
    pub async fn close(&mut self) {
        self.queue.close().await;
        if let Some(dispatcher) = self.dispatcher.take() {
            // A batch caught by an outage is spooled within the delivery timeout.
            let abort = dispatcher.abort_handle();
            let limit = DELIVERY_TIMEOUT + Duration::from_secs(5);
            if tokio::time::timeout(limit, dispatcher).await.is_err() {
                tracing::warn!("kafka publish calls still in flight at shutdown");
                abort.abort();
            }
        }
        let _ = self.stop.send(true);
        for task in [self.drain.take(), self.watch.take()].into_iter().flatten() {
            // A drain batch in flight when Kafka is down would wait for its delivery timeout;
            // cut it short then: its events are still in the spool and go out at the next start.
            let abort = task.abort_handle();
            if tokio::time::timeout(DELIVERY_TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
        if let Ok(left) = self.shared.spool.waiting().await {
            if left > 0 {
                tracing::warn!(
                    events = left,
                    "kafka spool not empty at shutdown; it drains at the next start"
                );
            }
        }
        self.writer.stop().await;
        if *self.shared.mode.lock().await == Mode::Direct {
            let producer = self.shared.producer();
            let flushed =
                tokio::task::spawn_blocking(move || producer.flush(DELIVERY_TIMEOUT)).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!("kafka producer flush did not complete");
            }
        }
    }
}

fn record_published(counts: &[u64; Topic::ALL.len()]) {
    for (i, n) in counts.iter().enumerate() {
        if *n > 0 {
            metrics::counter!("iothub_events_published_total", "topic" => Topic::ALL[i].name())
                .increment(*n);
        }
    }
}

async fn spool_answer(pending: PendingAppend) -> Result<(), PublishError> {
    match pending.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PublishError::Store(e.to_string())),
        Err(_) => Err(PublishError::Store(SpoolError::Stopped.to_string())),
    }
}

/// The dispatcher: takes the queued calls as batches, one batch in flight at a time (see the
/// module docs), until the queue is closed. The queue outlives a panic of the dispatcher, for
/// the restarted one.
async fn dispatch(shared: &Shared, calls: &mut mpsc::Receiver<Job<SpoolEntry>>) {
    let mut closing = false;
    while !closing {
        let Some(mut batch) = calls.recv().await.and_then(Batch::of) else {
            break;
        };
        batch.fill(calls, MAX_BATCH_EVENTS, &mut closing);
        deliver(shared, batch).await;
    }
}

/// An event of this device makes the dispatcher panic, in tests of its supervision.
#[cfg(test)]
const PANIC_IMEI: &str = "000000000000666";

/// Produces one batch, or spools it while Kafka is unreachable, and answers its callers.
async fn deliver(shared: &Shared, batch: Batch<SpoolEntry>) {
    #[cfg(test)]
    if batch.events.iter().any(|e| e.imei.as_str() == PANIC_IMEI) {
        panic!("an event of the test device that makes the dispatcher panic");
    }
    let started = Instant::now();
    // The batch's share of the queue's bounds is given back once its callers are answered.
    let Batch {
        events,
        calls,
        charge: _charge,
    } = batch;
    let n = events.len();
    let topics: Vec<Topic> = events.iter().map(|e| e.topic).collect();
    let mode = shared.mode.lock().await;
    let (answers, sink) = if *mode == Mode::Spooling {
        let pending = shared.spool.append(events).await;
        drop(mode);
        let answer = spool_answer(pending).await;
        (vec![answer; calls.len()], "kafka_spool")
    } else {
        drop(mode);
        (produce_batch(shared, events, &calls).await, "kafka")
    };
    metrics::histogram!("iothub_publish_batch_seconds", "sink" => sink)
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("iothub_publish_batch_size", "sink" => "kafka").record(n as f64);
    let mut published = [0u64; Topic::ALL.len()];
    let mut start = 0;
    for ((end, reply), answer) in calls.into_iter().zip(answers) {
        match &answer {
            Ok(()) => {
                for topic in &topics[start..end] {
                    published[*topic as usize] += 1;
                }
            }
            Err(e) => {
                metrics::counter!("iothub_publish_failures_total", "sink" => "kafka").increment(1);
                if reply.is_none() {
                    // Nothing was promised to the device, so there is nobody to tell.
                    tracing::error!(error = %e, events = end - start, "unacknowledged events not published");
                }
            }
        }
        start = end;
        if let Some(reply) = reply {
            // The caller may have given up; nothing to do then.
            let _ = reply.send(answer);
        }
    }
    record_published(&published);
}

/// Produces a batch directly and returns each call's answer. When Kafka turns out unreachable,
/// the events from the batch's first undelivered one on are spooled, in order, so each
/// device's events keep their order in its partition. A call with an event Kafka refuses for
/// good (or for a reason retrying cannot fix) fails as a whole and has nothing spooled: its
/// caller does not acknowledge the device, which sends the data again.
async fn produce_batch(
    shared: &Shared,
    events: Vec<SpoolEntry>,
    calls: &[(usize, Option<super::queue::Reply>)],
) -> Vec<Result<(), PublishError>> {
    let n = events.len();
    let mut outage = shared.outage.subscribe();
    let producer = shared.producer();
    let results = tokio::select! {
        results = produce(&producer, &shared.topics, &events, false) => results,
        Ok(()) = outage.changed() => {
            // Kafka went down while this batch waited for its delivery reports (librdkafka's
            // "all brokers down" said so): spool every event of the batch now, within the
            // time a device waits for its acknowledgement. Those librdkafka still manages to
            // deliver arrive twice, never zero times.
            vec![Err(KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown)); n]
        }
    };
    let mut refusals: Vec<Option<&KafkaError>> = Vec::with_capacity(calls.len());
    let mut first_undelivered = None;
    let mut start = 0;
    for (end, _) in calls {
        let own = &results[start..*end];
        let refusal = own
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|e| classify(e) != Failure::Unreachable);
        if refusal.is_none() && first_undelivered.is_none() {
            first_undelivered = own.iter().position(Result::is_err).map(|i| start + i);
        }
        refusals.push(refusal);
        start = *end;
    }
    let spooled = match first_undelivered {
        None => {
            // librdkafka copied every payload: the buffers can be filled again.
            json_buffers::give_back(events.into_iter().map(|e| e.json));
            None
        }
        Some(from) => {
            let reason = results[from]
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            let mut rest = Vec::with_capacity(n - from);
            let mut call = 0;
            for (i, event) in events.into_iter().enumerate() {
                while i >= calls[call].0 {
                    call += 1;
                }
                if i >= from && refusals[call].is_none() {
                    rest.push(event);
                }
            }
            let pending = {
                let mut mode = shared.mode.lock().await;
                shared.start_spooling(&mut mode, &reason);
                shared.spool.append(rest).await
            };
            Some((from, spool_answer(pending).await))
        }
    };
    calls
        .iter()
        .zip(refusals)
        .map(|((end, _), refusal)| match (refusal, &spooled) {
            (Some(refusal), _) => {
                tracing::warn!(error = %refusal, "kafka publish failed");
                Err(PublishError::Store(format!("kafka: {refusal}")))
            }
            (None, Some((from, answer))) if end > from => answer.clone(),
            (None, _) => Ok(()),
        })
        .collect()
}

/// Hands the events to librdkafka in order and awaits all their delivery reports: one result
/// per event. `stamp` produces each with its accepted time as the message timestamp (spooled
/// events), else librdkafka stamps them now. Once an event cannot even be enqueued for a
/// reason other than its own content, the events after it are not enqueued either (they fail
/// with the same error), so none of them gets ahead of it in its partition.
async fn produce(
    producer: &SinkProducer,
    topics: &TopicNames,
    entries: &[SpoolEntry],
    stamp: bool,
) -> Vec<Result<(), KafkaError>> {
    // A batch holds at most one call more than MAX_BATCH_EVENTS; a call larger than what
    // one tracked batch can number goes out in parts, each after the one before is reported.
    let mut results = Vec::with_capacity(entries.len());
    let mut abandoned: Option<KafkaError> = None;
    for part in entries.chunks(MAX_TRACKED_EVENTS) {
        results.extend(produce_tracked(producer, topics, part, stamp, &mut abandoned).await);
    }
    results
}

/// [`produce`] for at most [`MAX_TRACKED_EVENTS`] events.
async fn produce_tracked(
    producer: &SinkProducer,
    topics: &TopicNames,
    entries: &[SpoolEntry],
    stamp: bool,
    abandoned: &mut Option<KafkaError>,
) -> Vec<Result<(), KafkaError>> {
    let batch = producer.context().deliveries.track(entries.len());
    let mut not_sent: Vec<(usize, KafkaError)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(err) = abandoned.as_ref() {
            not_sent.push((i, err.clone()));
            continue;
        }
        let topic = topics.of(e.topic);
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let mut record = BaseRecord::with_opaque_to(topic, batch.opaque(i))
                .key(e.imei.as_str())
                .payload(e.json.as_slice());
            if stamp {
                record = record.timestamp(e.accepted_ms);
            }
            batch.expect_report();
            match producer.send(record) {
                Ok(()) => break,
                // librdkafka's local queue is full: wait for it to drain, within the deadline.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if tokio::time::Instant::now() < deadline =>
                {
                    batch.no_report();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((err, _)) => {
                    batch.no_report();
                    if classify(&err) != Failure::Rejected {
                        *abandoned = Some(err.clone());
                    }
                    not_sent.push((i, err));
                    break;
                }
            }
        }
    }
    let mut results = batch.wait(DELIVERY_TIMEOUT + REPORTS_GRACE).await;
    for (i, err) in not_sent {
        results[i] = Err(err);
    }
    results
}

/// Switches to spooling as soon as librdkafka reports every broker down.
async fn watch_brokers(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.all_brokers_down.notified() => {}
            _ = stop.changed() => return,
        }
        let mut mode = shared.mode.lock().await;
        shared.start_spooling(&mut mode, "all brokers down");
    }
}

/// What one drain round achieved.
enum Round {
    /// A batch was produced and deleted.
    Progress,
    /// The spool is empty and the sink produces directly again.
    Finished,
    /// Kafka (or the spool) failed; wait and try again.
    Retry(String),
}

/// The drain task: while spooling, produces the spool to Kafka in order and switches back to
/// direct when it is empty.
async fn drain_spool(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    let mut probed = false;
    // Spooled events carry their accepted time; a broker that refuses old timestamps gets
    // them stamped at production instead.
    let mut stamp = true;
    loop {
        loop {
            if *stop.borrow() {
                return;
            }
            if *shared.mode.lock().await == Mode::Spooling {
                break;
            }
            tokio::select! {
                _ = shared.drain_wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
        match drain_round(&shared, &mut probed, &mut stamp).await {
            Round::Progress => backoff = MIN_BACKOFF,
            Round::Finished => {
                backoff = MIN_BACKOFF;
                probed = false;
            }
            Round::Retry(why) => {
                probed = false;
                tracing::warn!(
                    hosts = %shared.config.kafka.hosts,
                    error = %why,
                    retry_in = ?backoff,
                    "kafka spool cannot drain yet"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn drain_round(shared: &Shared, probed: &mut bool, stamp: &mut bool) -> Round {
    if !*probed {
        if let Err(e) = probe(shared.producer()).await {
            return Round::Retry(e);
        }
        // Kafka answers again. Drain with a new producer: the old one's idempotent producer
        // id and sequence numbers may be unknown to a broker that restarted (a broker that
        // lost them can refuse or choke on every later batch of that id), and a producer
        // left in librdkafka's fatal state fails every send.
        shared
            .replace_producer("kafka answers again after an outage; draining with a new producer");
        if !shared.topics_ready.load(Ordering::Acquire) {
            match ensure_topics(&shared.config).await {
                Ok(()) => shared.topics_ready.store(true, Ordering::Release),
                Err(e @ TopicsError::Refused { .. }) => {
                    // Topics created by an operator may exist all the same; producing tells.
                    tracing::error!(error = %e, "kafka refused to create the topics");
                    shared.topics_ready.store(true, Ordering::Release);
                }
                Err(e) => return Round::Retry(e.to_string()),
            }
        }
        *probed = true;
    }
    let batch = match shared.spool.read(DRAIN_BATCH).await {
        Ok(batch) => batch,
        Err(e) => return Round::Retry(e.to_string()),
    };
    let Some(last_seq) = batch.last_seq else {
        return finish_drain(shared).await;
    };
    let (seqs, entries): (Vec<u64>, Vec<SpoolEntry>) =
        batch.entries.into_iter().map(|s| (s.seq, s.entry)).unzip();
    let results = produce(&shared.producer(), &shared.topics, &entries, *stamp).await;

    let mut produced = 0u64;
    let mut done_through = None;
    let mut park = Vec::new();
    let mut failure = None;
    for ((seq, entry), result) in seqs.iter().zip(&entries).zip(results) {
        match result {
            Ok(()) => {
                produced += 1;
                done_through = Some(*seq);
            }
            Err(e)
                if classify(&e) == Failure::Rejected
                    && e.rdkafka_error_code() != Some(RDKafkaErrorCode::InvalidTimestamp) =>
            {
                // Kafka will never take this one; keeping it in the spool would stall every
                // device behind it, and its device was acknowledged: it is parked, for an
                // operator to replay once Kafka takes it (`iothubd replay-parked`).
                tracing::error!(
                    topic = entry.topic.name(),
                    imei = %entry.imei,
                    error = %e,
                    "kafka refused a spooled event; parked for replay"
                );
                metrics::counter!("iothub_kafka_spool_rejected_total").increment(1);
                park.push(*seq);
                done_through = Some(*seq);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        done_through = Some(last_seq);
    }
    if let Some(seq) = done_through {
        if let Err(e) = shared.spool.park_and_delete_through(park, seq).await {
            return Round::Retry(e.to_string());
        }
    }
    metrics::counter!("iothub_kafka_spool_drained_total").increment(produced);
    match failure {
        None => {
            shared.failed_drains.store(0, Ordering::Release);
            Round::Progress
        }
        Some(e) => {
            // Kafka answers but will not take the batch: a producer whose idempotence state
            // a broker restart left behind (sequence numbers the broker no longer knows) can
            // fail like this for good without being "fatal". A new producer starts clean.
            if shared.failed_drains.fetch_add(1, Ordering::AcqRel) + 1
                >= REPLACE_AFTER_FAILED_DRAINS
            {
                shared.failed_drains.store(0, Ordering::Release);
                shared.replace_producer(&format!(
                    "spool drain failed {REPLACE_AFTER_FAILED_DRAINS} times in a row: {e}"
                ));
            }
            match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::InvalidTimestamp) => {
                    tracing::warn!(
                        "kafka refuses the accepted time of spooled events; stamping them now"
                    );
                    *stamp = false;
                }
                Some(
                    RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition,
                ) => {
                    shared.topics_ready.store(false, Ordering::Release);
                }
                _ => {}
            }
            Round::Retry(e.to_string())
        }
    }
}

/// The spool read empty: switch to direct, under the mode lock, once the spool thread has
/// committed every append queued before (spooling calls queue theirs under that lock).
async fn finish_drain(shared: &Shared) -> Round {
    let mut mode = shared.mode.lock().await;
    match shared.spool.waiting().await {
        Ok(0) => {
            *mode = Mode::Direct;
            metrics::gauge!("iothub_kafka_up").set(1.0);
            tracing::info!(
                hosts = %shared.config.kafka.hosts,
                "kafka spool drained; producing directly again"
            );
            Round::Finished
        }
        Ok(_) => Round::Progress,
        Err(e) => Round::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    mod replication {
        use super::super::{replication_shortfalls, TopicReplicas};

        fn topic(partitions: &[(usize, usize)], min_insync: Option<usize>) -> TopicReplicas {
            TopicReplicas {
                name: "iothub.gps".into(),
                partitions: partitions.to_vec(),
                min_insync,
            }
        }

        #[test]
        fn a_topic_with_the_configured_replicas_all_in_sync_is_fine() {
            let t = topic(&[(3, 3), (3, 3)], Some(2));
            assert!(replication_shortfalls(&t, Some(3), Some(2)).is_empty());
        }

        #[test]
        fn fewer_replicas_than_configured_is_a_shortfall() {
            let t = topic(&[(3, 3), (1, 1)], Some(1));
            assert_eq!(replication_shortfalls(&t, Some(3), None).len(), 1);
        }

        #[test]
        fn fewer_in_sync_replicas_than_the_topics_minimum_is_a_shortfall() {
            let t = topic(&[(3, 1)], Some(2));
            assert_eq!(replication_shortfalls(&t, Some(3), Some(2)).len(), 1);
        }

        #[test]
        fn a_topic_minimum_below_the_configured_one_is_a_shortfall() {
            let t = topic(&[(3, 3)], Some(1));
            assert_eq!(replication_shortfalls(&t, Some(3), Some(2)).len(), 1);
        }

        #[test]
        fn the_broker_defaults_on_a_single_broker_are_fine() {
            let t = topic(&[(1, 1)], Some(1));
            assert!(replication_shortfalls(&t, None, None).is_empty());
        }

        #[test]
        fn the_configured_minimum_applies_when_the_topic_says_none() {
            let t = topic(&[(2, 1)], None);
            assert_eq!(replication_shortfalls(&t, None, Some(2)).len(), 1);
        }
    }

    use super::*;
    use crate::config::ConfigError;

    /// The configuration with Kafka enabled and these environment variables.
    fn kafka_config(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vec![("kafkaEnable", "true"), ("apiToken", "token")];
        all.extend_from_slice(env);
        Config::from_toml_str("", &|name| {
            all.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
    }

    fn heartbeat(imei: &str) -> Event {
        crate::publish::test_heartbeat(imei)
    }

    /// A sink whose brokers never answer (a loopback port nothing listens on), so it spools.
    async fn spooling_sink(dir: &tempfile::TempDir) -> KafkaSink {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hosts = closed.local_addr().unwrap().to_string();
        drop(closed);
        let mut config = kafka_config(&[("kafkaHost", &hosts)]).unwrap();
        config.storage.data_dir = dir.path().to_path_buf();
        let storage = Storage::open(&config.storage).unwrap();
        KafkaSink::start(&config, storage).await.unwrap()
    }

    #[tokio::test]
    async fn publish_kafka_dispatcher_answers_again_after_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let sink = spooling_sink(&dir).await;
        let panicked = sink.queue().append(vec![heartbeat(PANIC_IMEI)]).await;
        assert!(
            panicked.is_err(),
            "the batch it panicked on was answered Ok"
        );
        let spooled = sink
            .queue()
            .append(vec![heartbeat("864717003283581")])
            .await;
        assert!(spooled.is_ok(), "{spooled:?}");
    }

    #[test]
    fn publish_spool_bound_defaults_to_a_million_and_must_be_positive() {
        let config = kafka_config(&[]).expect("defaults");
        assert_eq!(config.kafka.spool_max_events, 1_000_000);
        let config = kafka_config(&[("IOTHUB_KAFKA_SPOOL_MAX", "5")]).expect("5 events");
        assert_eq!(config.kafka.spool_max_events, 5);
        match kafka_config(&[("IOTHUB_KAFKA_SPOOL_MAX", "0")]) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "IOTHUB_KAFKA_SPOOL_MAX"),
            other => panic!("a spool of 0 events must be refused: {other:?}"),
        }
    }

    #[test]
    fn publish_kafka_hosts_must_be_bootstrap_servers_to_start() {
        for good in [
            "127.0.0.1:9092",
            "kafka-1:9092, kafka-2:9093",
            "[::1]:9092",
            "kafka",
            "PLAINTEXT://kafka:9092",
        ] {
            let config = kafka_config(&[("kafkaHost", good)]);
            assert!(config.is_ok(), "{good}: {config:?}");
        }
        for bad in [
            "kafka:notaport",
            "kafka:0",
            "kafka:70000",
            "a:9092,,b:9092",
            ":9092",
            "kafka one:9092",
            "[::1:9092",
        ] {
            match kafka_config(&[("kafkaHost", bad)]) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "kafkaHost", "{bad}"),
                other => panic!("{bad} must stop start-up: {other:?}"),
            }
        }
        // Not checked while Kafka is off: the key is unused then.
        let off = Config::from_toml_str("", &|name| match name {
            "kafkaHost" => Some("kafka:notaport".into()),
            "apiToken" => Some("token".into()),
            _ => None,
        });
        assert!(off.is_ok(), "{off:?}");
    }

    #[test]
    fn publish_topic_names_are_found_by_event_kind() {
        let names = TopicNames::new("jimi");
        for topic in Topic::ALL {
            assert_eq!(names.of(topic), format!("jimi.{}", topic.name()));
        }
    }

    #[test]
    fn publish_failures_are_classified_by_what_retrying_can_fix() {
        let produce_err = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert_eq!(classify(&produce_err(c)), Failure::Unreachable, "{c:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), Failure::Unreachable);
        assert_eq!(
            classify(&produce_err(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Rejected
        );
        assert_eq!(
            classify(&produce_err(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Other
        );
    }
}
