//! The bounded queue in front of a sink, which sessions feed directly.
//!
//! Each sink has one consumer (the embedded log's writer thread, the Kafka dispatcher task)
//! that takes everything queued into one batch, so the busier the node the bigger the
//! batches, and that finishes a batch before it takes the next. The queue therefore keeps
//! the order of calls by itself: an event queued without waiting is durable before any event
//! queued after it, so a session's acknowledged event never overtakes its unacknowledged ones.
//! That is what lets a session's reader queue a device's locations and read on.
//!
//! Events are serialized on the caller's thread, before they are queued: the record's many
//! small allocations are freed where they were made, and the consumer gets one buffer per
//! event.

use iothub::event::Event;
use tokio::sync::{mpsc, oneshot};

use super::PublishError;

/// Calls waiting for a sink's consumer; one more makes the caller wait.
pub const QUEUE_CAPACITY: usize = 4096;

pub(crate) type Reply = oneshot::Sender<Result<(), PublishError>>;

/// An event in the form a sink stores or produces.
pub trait SinkEvent: Send + 'static {
    /// `accepted_ms`: Unix milliseconds when the hub accepted the event.
    fn serialize(event: Event, accepted_ms: i64) -> Self;
}

pub(crate) enum Job<E> {
    /// Make these events durable; answer `reply` when they are (or not at all: a caller that
    /// acknowledges nothing does not wait).
    Append {
        events: Vec<E>,
        reply: Option<Reply>,
    },
    /// Everything queued before this is done; stop. Calls queued after it fail.
    Close,
}

/// One sink's queue, as sessions hold it: clones share the one consumer.
pub struct SinkQueue<E> {
    tx: mpsc::Sender<Job<E>>,
}

impl<E> Clone for SinkQueue<E> {
    fn clone(&self) -> Self {
        SinkQueue {
            tx: self.tx.clone(),
        }
    }
}

/// Events serialized for a sink, not queued yet.
pub struct Prepared<E>(Job<E>);

/// The answer to a call [`SinkQueue::try_append`] queued.
pub struct Durable(oneshot::Receiver<Result<(), PublishError>>);

impl Durable {
    /// Returns once the call's events are durable, or why they are not.
    pub async fn wait(self) -> Result<(), PublishError> {
        // A dropped reply means the consumer stopped before the events were durable.
        self.0.await.unwrap_or(Err(PublishError::Stopped))
    }
}

/// Why [`SinkQueue::try_enqueue`] did not queue.
pub enum TryEnqueueError<E> {
    /// The queue is full; the events, serialized, wait for [`SinkQueue::enqueue_prepared`].
    Full(Prepared<E>),
    /// The consumer has stopped.
    Stopped,
}

impl<E: SinkEvent> SinkQueue<E> {
    /// A queue of [`QUEUE_CAPACITY`] calls and the receiver its consumer takes them from.
    pub(crate) fn new() -> (SinkQueue<E>, mpsc::Receiver<Job<E>>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        (SinkQueue { tx }, rx)
    }

    /// Returns once the events are durable.
    pub async fn append(&self, events: Vec<Event>) -> Result<(), PublishError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue_prepared(prepare(events, Some(reply))).await?;
        Durable(answer).wait().await
    }

    /// Queues the events behind every earlier call if the queue has room now, and returns
    /// what says when they are durable; never waits. When the queue is full or its consumer
    /// has stopped, the events come back untouched, for a caller that can wait.
    pub fn try_append(&self, events: Vec<Event>) -> Result<Durable, Vec<Event>> {
        // Room first, so that a full queue costs no serialization and keeps the events whole.
        let Ok(room) = self.tx.try_reserve() else {
            return Err(events);
        };
        let (reply, answer) = oneshot::channel();
        room.send(prepare(events, Some(reply)).0);
        Ok(Durable(answer))
    }

    /// Queues the events behind every earlier call if the queue has room now; never waits.
    /// When it is full the events come back serialized, to be queued with
    /// [`SinkQueue::enqueue_prepared`] by a caller that can wait.
    pub fn try_enqueue(&self, events: Vec<Event>) -> Result<(), TryEnqueueError<E>> {
        match self.tx.try_send(prepare(events, None).0) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => Err(TryEnqueueError::Full(Prepared(job))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TryEnqueueError::Stopped),
        }
    }

    /// Queues events prepared by [`SinkQueue::try_enqueue`], waiting while the queue is full;
    /// returns without waiting for them to be durable.
    pub async fn enqueue_prepared(&self, prepared: Prepared<E>) -> Result<(), PublishError> {
        self.tx
            .send(prepared.0)
            .await
            .map_err(|_| PublishError::Stopped)
    }

    /// Asks the consumer to stop once everything queued before is done.
    pub(crate) async fn close(&self) {
        let _ = self.tx.send(Job::Close).await;
    }
}

fn prepare<E: SinkEvent>(events: Vec<Event>, reply: Option<Reply>) -> Prepared<E> {
    let accepted_ms = chrono::Utc::now().timestamp_millis();
    let events = events
        .into_iter()
        .map(|e| E::serialize(e, accepted_ms))
        .collect();
    Prepared(Job::Append { events, reply })
}

/// The calls a consumer took from its queue at once, in queue order.
pub(crate) struct Batch<E> {
    pub events: Vec<E>,
    /// Each call's end in `events` and its reply.
    pub calls: Vec<(usize, Option<Reply>)>,
}

impl<E> Batch<E> {
    /// A batch of the consumer's first job; `None` if that is `Close`.
    pub fn of(first: Job<E>) -> Option<Batch<E>> {
        match first {
            Job::Append { events, reply } => {
                let mut batch = Batch {
                    events: Vec::new(),
                    calls: Vec::new(),
                };
                batch.add(events, reply);
                Some(batch)
            }
            Job::Close => None,
        }
    }

    /// Adds the calls queued now, up to `max_events` events.
    pub fn fill(&mut self, rx: &mut mpsc::Receiver<Job<E>>, max_events: usize, closing: &mut bool) {
        // Nearly every call is one event: room for all queued now, in one allocation.
        self.events.reserve(rx.len().min(max_events));
        while !*closing && self.events.len() < max_events {
            match rx.try_recv() {
                Ok(Job::Append { events, reply }) => self.add(events, reply),
                Ok(Job::Close) => *closing = true,
                Err(_) => break,
            }
        }
        // Calls still waiting behind this batch: the queue's depth.
        metrics::gauge!("iothub_publish_queue_depth").set(rx.len() as f64);
    }

    fn add(&mut self, events: Vec<E>, reply: Option<Reply>) {
        if self.events.is_empty() {
            self.events = events;
        } else {
            self.events.extend(events);
        }
        self.calls.push((self.events.len(), reply));
    }
}

#[cfg(test)]
mod tests {
    use iothub::event::{Event, HeartbeatRecord, Record, Topic};
    use iothub::imei::Imei;

    use super::*;
    use crate::storage::NewEvent;

    fn heartbeat() -> Event {
        let imei = Imei::parse("864717003283581").unwrap();
        Event {
            topic: Topic::Heartbeat,
            imei,
            record: Record::Heartbeat(HeartbeatRecord {
                device_imei: imei,
                gate_time: "2026-11-27 12:00:00".into(),
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

    #[test]
    fn a_full_queue_gives_the_events_of_an_awaited_call_back_whole() {
        let (queue, _consumer) = SinkQueue::<NewEvent>::new();
        for _ in 0..QUEUE_CAPACITY {
            assert!(queue.try_enqueue(vec![heartbeat()]).is_ok());
        }
        let Err(events) = queue.try_append(vec![heartbeat(), heartbeat()]) else {
            panic!("a full queue took another call");
        };
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn an_awaited_call_is_answered_with_what_its_consumer_replies() {
        let (queue, mut consumer) = SinkQueue::<NewEvent>::new();
        let Ok(durable) = queue.try_append(vec![heartbeat()]) else {
            panic!("an empty queue has room");
        };
        let Some(Job::Append {
            reply: Some(reply), ..
        }) = consumer.recv().await
        else {
            panic!("the call was not queued with a reply");
        };
        reply
            .send(Err(PublishError::Store("disk full".into())))
            .unwrap();
        assert!(matches!(durable.wait().await, Err(PublishError::Store(_))));
    }

    #[tokio::test]
    async fn an_awaited_call_whose_consumer_stopped_fails() {
        let (queue, consumer) = SinkQueue::<NewEvent>::new();
        let Ok(durable) = queue.try_append(vec![heartbeat()]) else {
            panic!("an empty queue has room");
        };
        drop(consumer);
        assert!(matches!(durable.wait().await, Err(PublishError::Stopped)));
    }
}
