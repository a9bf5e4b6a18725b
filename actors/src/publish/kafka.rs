//! Kafka sink: one topic per event kind (`{topic_prefix}.{topic.name()}`), keyed by IMEI so
//! each device's events stay in one partition, in order.
//!
//! The producer is idempotent with `acks=all`, so a retried send is neither lost nor
//! duplicated by the broker. A call returns after the delivery reports of all its events; the
//! events are handed to librdkafka with `send_result` (which enqueues at once) and their
//! delivery futures are awaited together, so a call costs one round trip, not one per event.
//! If the brokers cannot be reached the delivery reports fail after [`DELIVERY_TIMEOUT`] and
//! the caller gets the error (the device is then not acknowledged).

use std::sync::Arc;
use std::time::Duration;

use iothub::event::{Event, Topic};
use ractor::RpcReplyPort;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::Semaphore;

use super::PublishError;
use crate::config::Config;

/// Calls whose delivery reports are awaited at the same time; one more waits.
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;
/// How long librdkafka may try to deliver an event before the call fails.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata and admin requests at start-up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

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

/// Creates the topics of every event kind that do not exist yet. Brokers like tansu do not
/// create topics on first use, and a production cluster should not rely on it either.
pub async fn ensure_topics(config: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| anyhow::anyhow!("kafka.hosts: cannot create admin client: {e}"))?;
    let names: Vec<String> = Topic::ALL
        .iter()
        .map(|t| topic_name(&config.kafka.topic_prefix, *t))
        .collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        // -1 = the broker's default replication factor (KIP-464), right for any cluster size.
        .map(|n| NewTopic::new(n, config.kafka.partitions, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics(&new, &opts).await.map_err(|e| {
        anyhow::anyhow!(
            "kafka.hosts: cannot create topics on {}: {e}",
            config.kafka.hosts
        )
    })?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("kafka: cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

pub struct KafkaSink {
    producer: FutureProducer,
    prefix: Arc<str>,
    in_flight: Arc<Semaphore>,
}

impl KafkaSink {
    /// Creates the producer and any missing topics.
    pub async fn start(config: &Config) -> anyhow::Result<KafkaSink> {
        ensure_topics(config).await?;
        let producer: FutureProducer = client_config(config)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(|e| anyhow::anyhow!("kafka: cannot create producer: {e}"))?;
        Ok(KafkaSink {
            producer,
            prefix: config.kafka.topic_prefix.as_str().into(),
            in_flight: Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT)),
        })
    }

    /// Produces the events of one call in a task that answers `reply`; waits while
    /// [`MAX_CALLS_IN_FLIGHT`] calls are already waiting for their delivery reports.
    pub async fn submit(
        &mut self,
        events: Vec<Event>,
        reply: RpcReplyPort<Result<(), PublishError>>,
    ) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            let _ = reply.send(Err(PublishError::Stopped));
            return;
        };
        let producer = self.producer.clone();
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let n = events.len();
            let result = produce_all(&producer, &prefix, &events).await;
            metrics::histogram!("iothub_publish_batch_seconds", "sink" => "kafka")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("iothub_publish_batch_size", "sink" => "kafka").record(n as f64);
            match &result {
                Ok(()) => {
                    for e in &events {
                        metrics::counter!("iothub_events_published_total", "topic" => e.topic.name())
                            .increment(1);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = n, "kafka publish failed");
                    metrics::counter!("iothub_publish_failures_total", "sink" => "kafka")
                        .increment(1);
                }
            }
            let _ = reply.send(result);
            drop(permit);
        });
    }

    /// Waits for the calls in flight, then flushes the producer.
    pub async fn close(&mut self) {
        let all = u32::try_from(MAX_CALLS_IN_FLIGHT).unwrap_or(u32::MAX);
        let waited = tokio::time::timeout(
            DELIVERY_TIMEOUT + Duration::from_secs(5),
            self.in_flight.acquire_many(all),
        )
        .await;
        if waited.is_err() {
            tracing::warn!("kafka publish calls still in flight at shutdown");
        }
        self.in_flight.close();
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(DELIVERY_TIMEOUT)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("kafka producer flush did not complete");
        }
    }
}

async fn produce_all(
    producer: &FutureProducer,
    prefix: &str,
    events: &[Event],
) -> Result<(), PublishError> {
    let mut deliveries = Vec::with_capacity(events.len());
    for e in events {
        let topic = topic_name(prefix, e.topic);
        let key = e.imei.as_str().to_owned();
        let payload = e.to_json();
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                // librdkafka's local queue is full: wait for it to drain, within the deadline.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((err, _)) => return Err(PublishError::Store(format!("kafka: {err}"))),
            }
        }
    }
    for result in futures::future::join_all(deliveries).await {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(PublishError::Store(format!("kafka: {err}"))),
            Err(_) => return Err(PublishError::Store("kafka: producer closed".into())),
        }
    }
    Ok(())
}
