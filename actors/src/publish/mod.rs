//! The Publisher: makes device events durable before devices are acknowledged.
//!
//! A session calls [`Publisher::publish`] and acknowledges its device only after it returns
//! `Ok`; events nothing acknowledges go through its [`PublishLane`] without the session
//! waiting. Each call reaches a sink:
//! - embedded ([`embedded`]): a bounded queue in front of one writer thread that commits
//!   everything queued in one redb transaction (group commit: one fsync for many sessions);
//!   callers feed the queue directly;
//! - Kafka ([`kafka`]), through the Publisher actor: an idempotent `acks=all` producer; the
//!   call returns after the delivery reports of all its events. While the brokers cannot be
//!   reached, the events go to a bounded spool in the node's redb database instead
//!   ([`spool`]) and the call returns once they are committed there; a drain task produces
//!   the spool, in order, when Kafka answers again, also after a restart.
//!
//! Both sinks bound the work in flight, so callers wait (back-pressure) instead of memory
//! growing when the disk or the brokers are slow. A sink failure (a commit that failed, a
//! message Kafka refuses for good, a full spool) is returned to the caller, who then does not
//! acknowledge the device; the device resends. A failed call whose events nothing
//! acknowledges has nobody to tell: it is logged and counted, as the device would not have
//! sent those events again anyway.

pub mod embedded;
pub mod kafka;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use iothub::event::Event;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, Semaphore};

use crate::config::Config;
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event store failed: {0}")]
    Store(String),
    #[error("publisher is not running")]
    Stopped,
}

pub enum PublisherMsg {
    /// Make these events durable, then answer.
    Publish(Vec<Event>, ractor::RpcReplyPort<Result<(), PublishError>>),
}

/// Cheap clonable handle to the Publisher actor.
#[derive(Clone)]
pub struct Publisher {
    pub actor: ActorRef<PublisherMsg>,
    /// With the embedded sink, its writer's queue, which calls feed directly (see
    /// [`embedded`]); Kafka calls go through the actor.
    log: Option<embedded::LogQueue>,
}

/// How long [`Publisher::stop`] waits for queued work before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl Publisher {
    /// Starts the Publisher actor with the sink the configuration selects: Kafka when
    /// `kafka.enable` (missing topics are created if the brokers answer; its spool lives in
    /// `storage`), else the embedded log in `storage`.
    pub async fn start(config: &Config, storage: Arc<Storage>) -> anyhow::Result<Publisher> {
        let sink = if config.kafka.enable {
            Sink::Kafka(kafka::KafkaSink::start(config, storage).await?)
        } else {
            Sink::Embedded(embedded::EmbeddedSink::start(
                storage,
                config.storage.retention,
                config.storage.commit_interval,
            )?)
        };
        let log = match &sink {
            Sink::Embedded(s) => Some(s.queue()),
            Sink::Kafka(_) => None,
        };
        let (actor, _) = Actor::spawn(None, PublisherActor, sink).await?;
        Ok(Publisher { actor, log })
    }

    /// Returns once every event is durable (embedded log fsynced, acked by Kafka with
    /// acks=all, or fsynced in the Kafka outage spool). Only then may the device be
    /// acknowledged.
    pub async fn publish(&self, events: Vec<Event>) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        if let Some(log) = &self.log {
            return log.append(events).await;
        }
        match self
            .actor
            .call(|reply| PublisherMsg::Publish(events, reply), None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            Ok(_) | Err(_) => Err(PublishError::Stopped),
        }
    }

    /// Does what [`PublishLane::publish_unacknowledged`] does if it can be done without
    /// waiting: on the embedded log with room in its queue, which is nearly always. It needs
    /// no lane, as the embedded log's queue keeps the order by itself: a session's reader
    /// queues a read's events with it (see the session's module docs). What it leaves goes
    /// to the session's lane's [`PublishLane::finish`].
    pub fn try_publish_unacknowledged(&self, events: Vec<Event>) -> Result<(), Unqueued> {
        if events.is_empty() {
            return Ok(());
        }
        let Some(log) = &self.log else {
            return Err(Unqueued::Kafka(events));
        };
        log.try_enqueue(events).map_err(|e| match e {
            embedded::TryEnqueueError::Full(prepared) => Unqueued::Full(prepared),
            embedded::TryEnqueueError::Stopped => Unqueued::Stopped,
        })
    }

    /// Graceful shutdown: stops taking new calls, finishes every call already received (their
    /// events are committed, produced or spooled, and the callers answered), then stops the
    /// actor. Events still in the Kafka spool stay on disk and drain at the next start.
    pub async fn stop(&self) {
        if let Err(e) = self.actor.drain_and_wait(Some(STOP_TIMEOUT)).await {
            tracing::warn!(error = %e, "publisher did not drain in time");
        }
    }
}

/// Unacknowledged publishes of one session in flight on the Kafka sink, at most.
const LANE_CALLS_IN_FLIGHT: usize = 8;

/// One session's way to publish events nothing acknowledges without waiting for them.
///
/// The embedded log's queue keeps order by itself, so there the events are just queued. The
/// Kafka sink keeps a device's events in order (also into its outage spool) only when one of
/// its calls is in flight at a time, so there each call runs in a task of its own that first
/// waits for the call before it: the session reads on while the delivery reports come, and
/// an instruction for the device no longer waits behind them. At most
/// [`LANE_CALLS_IN_FLIGHT`] calls are in flight; the session waits when there are more.
/// Before anything it awaits (an acknowledged event, the logout), the session calls
/// [`PublishLane::settle`], so that call is ordered after these.
#[derive(Default)]
pub struct PublishLane {
    /// Resolves when the last call started through the lane is finished.
    tail: Option<oneshot::Receiver<()>>,
    /// Created at the first Kafka call.
    in_flight: Option<Arc<Semaphore>>,
}

/// What [`Publisher::try_publish_unacknowledged`] could not do without waiting; hand it to
/// [`PublishLane::finish`].
pub enum Unqueued {
    /// Kafka: the events go through the lane's next call.
    Kafka(Vec<Event>),
    /// The embedded log's queue is full; the events are serialized and wait for room.
    Full(embedded::Prepared),
    /// The embedded log's writer has stopped.
    Stopped,
}

impl PublishLane {
    /// For events the device gets no acknowledgement of (a GT06 location, say): queues them
    /// behind every earlier call of this session and returns without waiting until they are
    /// durable, so the session can read the device's next frame meanwhile. Waits only for
    /// room: a full embedded queue, or [`LANE_CALLS_IN_FLIGHT`] Kafka calls.
    pub async fn publish_unacknowledged(
        &mut self,
        publisher: &Publisher,
        events: Vec<Event>,
    ) -> Result<(), PublishError> {
        match publisher.try_publish_unacknowledged(events) {
            Ok(()) => Ok(()),
            Err(unqueued) => self.finish(publisher, unqueued).await,
        }
    }

    /// Finishes what [`Publisher::try_publish_unacknowledged`] left, waiting as
    /// [`PublishLane::publish_unacknowledged`] would.
    pub async fn finish(
        &mut self,
        publisher: &Publisher,
        unqueued: Unqueued,
    ) -> Result<(), PublishError> {
        match unqueued {
            Unqueued::Kafka(events) => self.start_kafka_call(publisher, events).await,
            Unqueued::Full(prepared) => match &publisher.log {
                Some(log) => log.enqueue_prepared(prepared).await,
                None => Err(PublishError::Stopped),
            },
            Unqueued::Stopped => Err(PublishError::Stopped),
        }
    }

    /// Starts a Kafka call in a task of its own, behind the lane's previous call.
    async fn start_kafka_call(
        &mut self,
        publisher: &Publisher,
        events: Vec<Event>,
    ) -> Result<(), PublishError> {
        let limit = self
            .in_flight
            .get_or_insert_with(|| Arc::new(Semaphore::new(LANE_CALLS_IN_FLIGHT)))
            .clone();
        let permit = limit
            .acquire_owned()
            .await
            .map_err(|_| PublishError::Stopped)?;
        let previous = self.tail.take();
        let (done, tail) = oneshot::channel();
        self.tail = Some(tail);
        let publisher = publisher.clone();
        tokio::spawn(async move {
            if let Some(previous) = previous {
                // Finished or dropped: either way this call may go now.
                let _ = previous.await;
            }
            // Nothing was promised to the device, so a failure has nobody to tell: the
            // Publisher has counted it, and the log says which events.
            if let Err(e) = publisher.publish(events).await {
                tracing::error!(error = %e, "unacknowledged events not published");
            }
            let _ = done.send(());
            drop(permit);
        });
        Ok(())
    }

    /// Waits until every call started through the lane is finished.
    pub async fn settle(&mut self) {
        if let Some(tail) = self.tail.take() {
            let _ = tail.await;
        }
    }
}

/// Where the actor sends events: the embedded log, or Kafka with its outage spool.
pub enum Sink {
    Embedded(embedded::EmbeddedSink),
    Kafka(kafka::KafkaSink),
}

/// The actor is a thin, fast front: it only forwards each call to its sink, which answers the
/// caller directly, so one slow commit never serializes the callers behind the mailbox.
pub struct PublisherActor;

impl Actor for PublisherActor {
    type Msg = PublisherMsg;
    type State = Sink;
    type Arguments = Sink;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        sink: Sink,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sink)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        sink: &mut Sink,
    ) -> Result<(), ActorProcessingErr> {
        let PublisherMsg::Publish(events, reply) = message;
        match sink {
            Sink::Embedded(s) => s.submit(events, reply).await,
            Sink::Kafka(s) => s.submit(events, reply).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        sink: &mut Sink,
    ) -> Result<(), ActorProcessingErr> {
        match sink {
            Sink::Embedded(s) => s.close().await,
            Sink::Kafka(s) => s.close().await,
        }
        Ok(())
    }
}
