//! The Publisher: makes device events durable before devices are acknowledged.
//!
//! A session calls [`Publisher::publish`] and acknowledges its device only after it returns
//! `Ok`; events nothing acknowledges are queued with [`Publisher::try_publish_unacknowledged`]
//! without the session waiting. Both go into the bounded queue in front of the sink
//! ([`queue`]), whose one consumer keeps the order of calls, and reach:
//! - embedded ([`embedded`]): one writer thread that commits everything queued in one redb
//!   transaction (group commit: one fsync for many sessions);
//! - Kafka ([`kafka`]): one dispatcher task that produces everything queued as one batch with
//!   an idempotent `acks=all` producer, and answers once the delivery reports are in. While
//!   the brokers cannot be reached, the events go to a bounded spool in the node's redb
//!   database instead ([`spool`]) and the calls are answered once they are committed there; a
//!   drain task produces the spool, in order, when Kafka answers again, also after a restart.
//!
//! The Publisher is a handle, not an actor: sessions feed the queue directly, which costs no
//! mailbox hop or task per call, and the queue is bounded where a mailbox is not. When the
//! disk or the brokers are slow, callers wait for room (back-pressure) instead of memory
//! growing. A sink failure (a commit that failed, a message Kafka refuses for good, a full
//! spool) is returned to the caller, who then does not acknowledge the device; the device
//! resends. A failed call whose events nothing acknowledges has nobody to tell: it is logged
//! and counted, as the device would not have sent those events again anyway.

pub mod deliveries;
pub mod embedded;
pub mod json_buffers;
pub mod kafka;
pub mod queue;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use iothub::event::Event;

use crate::config::Config;
use crate::storage::{NewEvent, Storage};
pub use queue::Durable;
use queue::{SinkQueue, TryEnqueueError};
use spool::SpoolEntry;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("event store failed: {0}")]
    Store(String),
    #[error("publisher is not running")]
    Stopped,
}

/// Cheap clonable handle to the node's sink.
#[derive(Clone)]
pub struct Publisher {
    queue: Queue,
    /// Taken by the first [`Publisher::stop`].
    sink: Arc<tokio::sync::Mutex<Option<Sink>>>,
}

/// The queue in front of the sink the configuration selects.
#[derive(Clone)]
enum Queue {
    Log(SinkQueue<NewEvent>),
    Kafka(SinkQueue<SpoolEntry>),
}

/// The sink behind the queue, kept for shutdown.
enum Sink {
    Embedded(embedded::EmbeddedSink),
    Kafka(kafka::KafkaSink),
}

/// How long [`Publisher::stop`] waits for queued work before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Publisher::try_publish_unacknowledged`] could not do without waiting; hand it to
/// [`Publisher::finish_unqueued`].
pub enum Unqueued {
    /// The sink's queue is full; the events, serialized, wait for room. Boxed because this
    /// is rare and an `Unqueued` is part of every session's and reader's futures, whose size
    /// every idle connection pays.
    Full(Box<Prepared>),
    /// The sink has stopped.
    Stopped,
}

/// Events serialized for the sink, not queued yet.
pub struct Prepared(PreparedFor);

enum PreparedFor {
    Log(queue::Prepared<NewEvent>),
    Kafka(queue::Prepared<SpoolEntry>),
}

fn unqueued<E>(error: TryEnqueueError<E>, wrap: fn(queue::Prepared<E>) -> PreparedFor) -> Unqueued {
    match error {
        TryEnqueueError::Full(prepared) => Unqueued::Full(Box::new(Prepared(wrap(prepared)))),
        TryEnqueueError::Stopped => Unqueued::Stopped,
    }
}

impl Publisher {
    /// Starts the sink the configuration selects: Kafka when `kafka.enable` (missing topics
    /// are created if the brokers answer; its spool lives in `storage`), else the embedded log
    /// in `storage`.
    pub async fn start(config: &Config, storage: Arc<Storage>) -> anyhow::Result<Publisher> {
        let (queue, sink) = if config.kafka.enable {
            let sink = kafka::KafkaSink::start(config, storage).await?;
            (Queue::Kafka(sink.queue()), Sink::Kafka(sink))
        } else {
            let sink = embedded::EmbeddedSink::start(
                storage,
                config.storage.retention,
                config.storage.commit_interval,
            )?;
            (Queue::Log(sink.queue()), Sink::Embedded(sink))
        };
        Ok(Publisher {
            queue,
            sink: Arc::new(tokio::sync::Mutex::new(Some(sink))),
        })
    }

    /// Returns once every event is durable (embedded log fsynced, acked by Kafka with
    /// acks=all, or fsynced in the Kafka outage spool) and so is every event queued before
    /// them. Only then may the device be acknowledged.
    pub async fn publish(&self, events: Vec<Event>) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        match &self.queue {
            Queue::Log(q) => q.append(events).await,
            Queue::Kafka(q) => q.append(events).await,
        }
    }

    /// [`Publisher::publish`] for a caller that must not wait for room in the queue (a
    /// session's reader, which queues under the channel's lock): queues the events behind
    /// every earlier call if the queue has room now, which is nearly always, and returns what
    /// to await before the device may be acknowledged. A full queue (or a stopped sink) gives
    /// the events back, for [`Publisher::publish`].
    pub fn try_publish(&self, events: Vec<Event>) -> Result<Durable, Vec<Event>> {
        match &self.queue {
            Queue::Log(q) => q.try_append(events),
            Queue::Kafka(q) => q.try_append(events),
        }
    }

    /// For events the device gets no acknowledgement of (a GT06 location, say): queues them
    /// behind every earlier call if the queue has room now, which is nearly always, and never
    /// waits. A session's reader queues a read's events with it (see the session's module
    /// docs); what it leaves goes to [`Publisher::finish_unqueued`].
    pub fn try_publish_unacknowledged(&self, events: Vec<Event>) -> Result<(), Unqueued> {
        if events.is_empty() {
            return Ok(());
        }
        match &self.queue {
            Queue::Log(q) => q
                .try_enqueue(events)
                .map_err(|e| unqueued(e, PreparedFor::Log)),
            Queue::Kafka(q) => q
                .try_enqueue(events)
                .map_err(|e| unqueued(e, PreparedFor::Kafka)),
        }
    }

    /// Queues what [`Publisher::try_publish_unacknowledged`] left, waiting for room; returns
    /// without waiting for the events to be durable.
    pub async fn finish_unqueued(&self, unqueued: Unqueued) -> Result<(), PublishError> {
        let Unqueued::Full(prepared) = unqueued else {
            return Err(PublishError::Stopped);
        };
        match (prepared.0, &self.queue) {
            (PreparedFor::Log(p), Queue::Log(q)) => q.enqueue_prepared(p).await,
            (PreparedFor::Kafka(p), Queue::Kafka(q)) => q.enqueue_prepared(p).await,
            // Prepared by another publisher's sink: cannot happen with one publisher a node.
            _ => Err(PublishError::Stopped),
        }
    }

    /// [`Publisher::try_publish_unacknowledged`], then [`Publisher::finish_unqueued`] for what
    /// it left: waits only for room in the queue.
    pub async fn publish_unacknowledged(&self, events: Vec<Event>) -> Result<(), PublishError> {
        match self.try_publish_unacknowledged(events) {
            Ok(()) => Ok(()),
            Err(unqueued) => self.finish_unqueued(unqueued).await,
        }
    }

    /// Graceful shutdown: finishes every call already queued (their events are committed,
    /// produced or spooled, and the callers answered), then stops the sink; calls after that
    /// fail with [`PublishError::Stopped`]. Events still in the Kafka spool stay on disk and
    /// drain at the next start.
    pub async fn stop(&self) {
        let Some(mut sink) = self.sink.lock().await.take() else {
            return;
        };
        let closed = tokio::time::timeout(STOP_TIMEOUT, async move {
            match &mut sink {
                Sink::Embedded(s) => s.close().await,
                Sink::Kafka(s) => s.close().await,
            }
        })
        .await;
        if closed.is_err() {
            tracing::warn!("publisher did not finish its queue in time");
        }
    }
}

/// A heartbeat event of `imei`, for the sinks' and the queue's tests.
#[cfg(test)]
pub(crate) fn test_heartbeat(imei: &str) -> Event {
    let imei = iothub::imei::Imei::parse(imei).unwrap();
    Event {
        topic: iothub::event::Topic::Heartbeat,
        imei,
        record: iothub::event::Record::Heartbeat(iothub::event::HeartbeatRecord {
            device_imei: imei,
            gate_time: "2026-12-07 12:00:00".into(),
            power_level: 4,
            gsm_sign: 3,
            acc: 1,
            oil_ele: 0,
            gps_pos: 1,
            remote_lock: 0,
            power_status: 1,
            fortify: 0,
            voltage: None,
        }),
    }
}
