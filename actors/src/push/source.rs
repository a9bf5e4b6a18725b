//! Where a delivery loop reads its topic: the embedded log (cursor in the same database) or a
//! Kafka consumer group. Both hand out batches in order and advance their position only when
//! told the batch was delivered, which is what makes the pushes at-least-once and lossless
//! across restarts.

use std::sync::Arc;
use std::time::Duration;

use iothub::event::Topic;
use iothub::imei::Imei;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::config::Config;
use crate::publish::kafka::{client_config, topic_name};
use crate::storage::Storage;

/// Cursor name of the push dispatcher in the embedded log.
pub const CONSUMER: &str = "push";
/// Pause after a failed read before trying again.
const READ_RETRY: Duration = Duration::from_secs(1);
/// Pause after a consumer error that only reports a lost broker connection. librdkafka
/// queues one such error per failed reconnect during an outage; waiting a full
/// [`READ_RETRY`] for each would delay the pushes for as long again after Kafka returns.
const TRANSIENT_RETRY: Duration = Duration::from_millis(50);
/// librdkafka's limit for `max.poll.interval.ms`. A loop that retries one batch against a
/// failing endpoint does not poll; that must not make the group evict it and rebalance.
const MAX_POLL_INTERVAL_MS: &str = "86400000";
/// How long the group waits for a silent member (a node killed or cut off) before its
/// partitions go to the other nodes' push consumers: 20 s instead of librdkafka's 45 s, so
/// the pushes of a dead node's share resume sooner, yet long enough that a short broker
/// outage does not make every consumer rejoin the moment the broker returns.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
const HEARTBEAT_INTERVAL_MS: &str = "3000";
/// How often a push consumer measures its lag (`iothub_push_kafka_lag`): about a scrape
/// interval. Each measure is one offset fetch for the consumer's partitions and one
/// watermark query per partition, off the delivery loop.
const LAG_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait for the broker's answer to one lag query.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One record of a batch.
#[derive(Debug, Clone)]
pub struct Item {
    /// The device: the log's, or the Kafka message key (`None` if that is not an IMEI).
    pub imei: Option<Imei>,
    pub json: Vec<u8>,
    /// Unix milliseconds when the event was made durable (log) or produced (Kafka timestamp).
    pub enqueued_ms: i64,
}

/// What to commit once a batch is delivered.
#[derive(Debug, Clone)]
pub enum Position {
    /// Next log offset to read.
    Log(u64),
    /// Next offset per (topic, partition).
    Kafka(Vec<(String, i32, i64)>),
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub items: Vec<Item>,
    pub position: Position,
}

pub enum Source {
    Log(LogSource),
    Kafka(KafkaSource),
}

impl Source {
    /// Waits for at least one record, then up to `delay` for the batch to fill to `max`.
    pub async fn next_batch(&mut self, max: usize, delay: Duration) -> Batch {
        match self {
            Source::Log(s) => s.next_batch(max, delay).await,
            Source::Kafka(s) => s.next_batch(max, delay).await,
        }
    }

    /// Leaves and rejoins the consumer group (Kafka); nothing to do for the embedded log.
    pub fn rejoin(&mut self) {
        if let Source::Kafka(s) = self {
            s.rejoin();
        }
    }

    /// Records that the batch was delivered (or given up).
    pub async fn commit(&mut self, position: Position) {
        match (self, position) {
            (Source::Log(s), Position::Log(next)) => s.commit(next).await,
            (Source::Kafka(s), Position::Kafka(offsets)) => s.commit(offsets).await,
            _ => tracing::error!("push position does not match its source"),
        }
    }
}

/// How long to wait after a consumer error before reading again.
fn retry_after(e: &KafkaError) -> Duration {
    let code = match e {
        KafkaError::MessageConsumption(code) | KafkaError::Global(code) => Some(*code),
        _ => e.rdkafka_error_code(),
    };
    match code {
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut,
        ) => TRANSIENT_RETRY,
        _ => READ_RETRY,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct LogSource {
    storage: Arc<Storage>,
    topic: Topic,
    cursor: Option<u64>,
}

impl LogSource {
    pub fn new(storage: Arc<Storage>, topic: Topic) -> LogSource {
        LogSource {
            storage,
            topic,
            cursor: None,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, crate::storage::StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let storage = self.storage.clone();
        match tokio::task::spawn_blocking(move || f(&storage)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn cursor(&mut self) -> u64 {
        if let Some(c) = self.cursor {
            return c;
        }
        let topic = self.topic;
        loop {
            match self.blocking(move |s| s.cursor(topic, CONSUMER)).await {
                Ok(c) => {
                    self.cursor = Some(c);
                    return c;
                }
                Err(e) => {
                    tracing::error!(topic = topic.name(), error = %e, "cannot read push cursor");
                    tokio::time::sleep(READ_RETRY).await;
                }
            }
        }
    }

    async fn update_backlog(&self, cursor: u64) {
        let topic = self.topic;
        if let Ok(next) = self.blocking(move |s| s.next_offset(topic)).await {
            metrics::gauge!("iothub_push_backlog", "topic" => topic.name())
                .set(next.saturating_sub(cursor) as f64);
        }
    }

    async fn next_batch(&mut self, max: usize, delay: Duration) -> Batch {
        let topic = self.topic;
        let cursor = self.cursor().await;
        self.update_backlog(cursor).await;
        let mut deadline: Option<Instant> = None;
        loop {
            let read = self.blocking(move |s| s.read(topic, cursor, max)).await;
            let events = match read {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(topic = topic.name(), error = %e, "cannot read event log");
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
            };
            let full = events.len() >= max;
            let due = delay.is_zero() || deadline.is_some_and(|d| Instant::now() >= d);
            if !events.is_empty() && (full || due) {
                if let Some(first) = events.first() {
                    if first.offset > cursor {
                        let lost = first.offset - cursor;
                        tracing::warn!(
                            topic = topic.name(),
                            events = lost,
                            "undelivered events expired by storage.retention"
                        );
                        metrics::counter!("iothub_push_dropped_total", "topic" => topic.name(), "reason" => "retention")
                            .increment(lost);
                    }
                }
                let next = events.last().map(|e| e.offset + 1).unwrap_or(cursor);
                let items = events
                    .into_iter()
                    .map(|e| Item {
                        imei: Some(e.imei),
                        json: e.json,
                        enqueued_ms: e.enqueued_ms,
                    })
                    .collect();
                return Batch {
                    items,
                    position: Position::Log(next),
                };
            }
            let notified = self.storage.notifier(topic).notified();
            if events.is_empty() {
                notified.await;
            } else {
                let d = *deadline.get_or_insert_with(|| Instant::now() + delay);
                let _ = tokio::time::timeout_at(d, notified).await;
            }
        }
    }

    async fn commit(&mut self, next: u64) {
        let topic = self.topic;
        self.cursor = Some(next);
        if let Err(e) = self
            .blocking(move |s| s.advance_cursor(topic, CONSUMER, next))
            .await
        {
            // The position is kept in memory and written with the next batch; after a crash
            // before that, the batch is pushed again (at least once).
            tracing::error!(topic = topic.name(), error = %e, "cannot store push cursor");
            metrics::counter!("iothub_push_commit_failures_total", "topic" => topic.name())
                .increment(1);
        }
        self.update_backlog(next).await;
    }
}

/// Sets `iothub_push_kafka_lag{topic}` every [`LAG_INTERVAL`] for as long as the consumer
/// lives (it holds no strong reference, so the gauge task ends with its source).
fn spawn_lag_gauge(consumer: std::sync::Weak<StreamConsumer>, topic: Topic) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(LAG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            // librdkafka's queries block: run them where blocking is allowed.
            match tokio::task::spawn_blocking(move || consumer_lag(&consumer)).await {
                Ok(Ok(lag)) => {
                    metrics::gauge!("iothub_push_kafka_lag", "topic" => topic.name())
                        .set(lag as f64);
                }
                // Kafka unreachable: keep the last measure; iothub_kafka_up says why.
                Ok(Err(e)) => {
                    tracing::debug!(topic = topic.name(), error = %e, "push lag not measured")
                }
                Err(e) => {
                    tracing::debug!(topic = topic.name(), error = %e, "push lag task failed")
                }
            }
        }
    });
}

/// Records not yet pushed on the partitions assigned to `consumer`: per partition, the high
/// watermark minus the group's committed offset (or minus the low watermark when the group
/// has committed nothing there, as the consumer then starts at the earliest record).
fn consumer_lag(consumer: &StreamConsumer) -> Result<u64, KafkaError> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(0);
    }
    let committed = consumer.committed_offsets(assignment, LAG_QUERY_TIMEOUT)?;
    let mut lag = 0u64;
    for partition in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(
            partition.topic(),
            partition.partition(),
            LAG_QUERY_TIMEOUT,
        )?;
        lag += partition_lag(partition.offset(), low, high);
    }
    Ok(lag)
}

/// One partition's lag from its committed offset and watermarks.
fn partition_lag(committed: Offset, low: i64, high: i64) -> u64 {
    let from = match committed {
        Offset::Offset(o) => o.max(low),
        _ => low,
    };
    u64::try_from(high.saturating_sub(from)).unwrap_or(0)
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    topic: Topic,
    /// The Kafka topic name, for rejoining.
    name: String,
}

impl KafkaSource {
    /// Joins `kafka.consumer_group` on the topic's Kafka topic. Offsets are committed only by
    /// [`KafkaSource::commit`], after the customer accepted the records.
    pub fn new(config: &Config, topic: Topic) -> anyhow::Result<KafkaSource> {
        let consumer: StreamConsumer = client_config(config)
            .set("group.id", &config.kafka.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS)
            .create()
            .map_err(|e| anyhow::anyhow!("kafka: cannot create push consumer: {e}"))?;
        let name = topic_name(&config.kafka.topic_prefix, topic);
        consumer
            .subscribe(&[&name])
            .map_err(|e| anyhow::anyhow!("kafka: cannot subscribe to {name}: {e}"))?;
        let consumer = Arc::new(consumer);
        spawn_lag_gauge(Arc::downgrade(&consumer), topic);
        Ok(KafkaSource {
            consumer,
            topic,
            name,
        })
    }

    /// Leaves the group and joins it again, which starts a rebalance. Records read but not
    /// committed are read again by whoever gets their partition (at least once).
    fn rejoin(&mut self) {
        self.consumer.unsubscribe();
        match self.consumer.subscribe(&[&self.name]) {
            Ok(()) => {
                tracing::info!(topic = %self.name, "push consumer rejoined its group");
                metrics::counter!("iothub_push_rejoins_total", "topic" => self.topic.name())
                    .increment(1);
            }
            Err(e) => {
                tracing::error!(topic = %self.name, error = %e, "push consumer could not rejoin")
            }
        }
    }

    fn add(
        items: &mut Vec<Item>,
        offsets: &mut Vec<(String, i32, i64)>,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let next = m.offset() + 1;
        match offsets
            .iter_mut()
            .find(|(t, p, _)| t == m.topic() && *p == m.partition())
        {
            Some(entry) => entry.2 = entry.2.max(next),
            None => offsets.push((m.topic().to_owned(), m.partition(), next)),
        }
        match m.payload() {
            Some(payload) => items.push(Item {
                imei: m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| Imei::parse(k).ok()),
                json: payload.to_vec(),
                enqueued_ms: m.timestamp().to_millis().unwrap_or_else(now_ms),
            }),
            None => tracing::warn!(
                topic = m.topic(),
                offset = m.offset(),
                "kafka message without payload skipped"
            ),
        }
    }

    async fn next_batch(&mut self, max: usize, delay: Duration) -> Batch {
        let mut items = Vec::new();
        let mut offsets = Vec::new();
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    Self::add(&mut items, &mut offsets, &m);
                    break;
                }
                Err(e) => {
                    tracing::warn!(topic = self.topic.name(), error = %e, "kafka consume failed");
                    metrics::counter!("iothub_push_consume_errors_total", "topic" => self.topic.name())
                        .increment(1);
                    tokio::time::sleep(retry_after(&e)).await;
                }
            }
        }
        let deadline = Instant::now() + delay;
        while items.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => Self::add(&mut items, &mut offsets, &m),
                Ok(Err(e)) => {
                    tracing::warn!(topic = self.topic.name(), error = %e, "kafka consume failed");
                    break;
                }
                Err(_) => break,
            }
        }
        Batch {
            items,
            position: Position::Kafka(offsets),
        }
    }

    async fn commit(&mut self, offsets: Vec<(String, i32, i64)>) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::error!(error = %e, "bad kafka offset");
            }
        }
        let consumer = self.consumer.clone();
        let result =
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await;
        if !matches!(result, Ok(Ok(()))) {
            // Delivered records whose offsets were not committed are pushed again after a
            // rebalance or restart (at least once).
            tracing::warn!(topic = self.topic.name(), "kafka offset commit failed");
            metrics::counter!("iothub_push_commit_failures_total", "topic" => self.topic.name())
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_offset() {
        assert_eq!(partition_lag(Offset::Offset(40), 0, 100), 60);
    }

    #[test]
    fn lag_without_a_committed_offset_counts_from_the_low_watermark() {
        assert_eq!(partition_lag(Offset::Invalid, 30, 100), 70);
    }

    #[test]
    fn lag_ignores_records_retention_already_removed() {
        assert_eq!(partition_lag(Offset::Offset(10), 30, 100), 70);
    }

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(partition_lag(Offset::Offset(120), 0, 100), 0);
    }
}
