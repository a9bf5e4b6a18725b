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
//!
//! The queue is bounded three ways: in calls ([`QUEUE_CAPACITY`]), and in the events and JSON
//! bytes that are queued or in the consumer's hands and not yet durable ([`QUEUE_MAX_EVENTS`],
//! [`QUEUE_MAX_BYTES`]). A call counts against the last two from when it is queued until the
//! consumer has finished the batch that carries it. A call is let in while both are below
//! their bound, whatever its own size, so one call larger than a bound still gets through
//! (alone); the bounds are therefore exceeded by at most one call, which the channels bound
//! (a JT/T 808 frame yields at most `MAX_BATCH_LOCATIONS` locations of a bounded number of
//! alarms each).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use iothub::event::Event;
use tokio::sync::{mpsc, oneshot, Notify};

use super::PublishError;

/// Calls waiting for a sink's consumer; one more makes the caller wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// Events queued or being made durable; at or above it a call waits. Larger than the events
/// of any one frame, and than a batch of either sink (16,384), so a full batch never waits
/// for itself.
pub const QUEUE_MAX_EVENTS: usize = 65_536;
/// Record JSON bytes queued or being made durable; at or above it a call waits.
pub const QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<(), PublishError>>;

/// An event in the form a sink stores or produces.
pub trait SinkEvent: Send + 'static {
    /// `accepted_ms`: Unix milliseconds when the hub accepted the event.
    fn serialize(event: Event, accepted_ms: i64) -> Self;
    /// Bytes of the record JSON, what the queue's byte bound counts.
    fn json_len(&self) -> usize;
}

/// What the queue holds now, against its bounds in events and bytes.
///
/// Every reader charges it once per unacknowledged call, so the counts are two atomics
/// rather than a lock: two callers that check at the same instant may both get in, which
/// overshoots the bounds by at most one call per worker thread, as a call larger than the
/// bound may overshoot them alone.
struct Budget {
    /// Events of the calls let in and not yet finished by the consumer.
    events: AtomicUsize,
    /// Their bytes.
    bytes: AtomicUsize,
    max_events: usize,
    max_bytes: usize,
    /// Callers waiting for room: while there are any, a caller that cannot wait is refused,
    /// so it does not overtake them.
    waiting: AtomicUsize,
    freed: Notify,
}

impl Budget {
    /// (events, bytes) held now.
    fn used(&self) -> (usize, usize) {
        (
            self.events.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }

    fn below_bounds(&self) -> bool {
        let (events, bytes) = self.used();
        events < self.max_events && bytes < self.max_bytes
    }

    /// Counts a call in, unconditionally.
    fn take(self: &Arc<Self>, events: usize, bytes: usize) -> Charge {
        self.events.fetch_add(events, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
        Charge {
            budget: Some(self.clone()),
            events,
            bytes,
        }
    }

    /// Counts a call of `events` and `bytes` in if the queue is below both bounds.
    fn try_charge(self: &Arc<Self>, events: usize, bytes: usize) -> Option<Charge> {
        if self.waiting.load(Ordering::SeqCst) > 0 || !self.below_bounds() {
            return None;
        }
        Some(self.take(events, bytes))
    }

    /// Counts a call in, waiting until the queue is below both bounds.
    async fn charge(self: &Arc<Self>, events: usize, bytes: usize) -> Charge {
        // Counted as waiting until this returns or its caller gives up on it (drops it).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            // Registered before the check, so a release between the check and the wait wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.below_bounds() {
                return self.take(events, bytes);
            }
            freed.await;
        }
    }
}

/// A call's share of the queue's bounds, given back when dropped: when the consumer has
/// finished the batch that carried the call.
pub(crate) struct Charge {
    budget: Option<Arc<Budget>>,
    events: usize,
    bytes: usize,
}

impl Charge {
    /// Takes `other` over, to be given back with this one.
    fn absorb(&mut self, mut other: Charge) {
        self.events += other.events;
        self.bytes += other.bytes;
        if self.budget.is_none() {
            self.budget = other.budget.take();
        }
        other.events = 0;
        other.bytes = 0;
    }

    fn add_bytes(&mut self, bytes: usize) {
        if let Some(budget) = &self.budget {
            budget.bytes.fetch_add(bytes, Ordering::SeqCst);
            self.bytes += bytes;
        }
    }

    fn none() -> Charge {
        Charge {
            budget: None,
            events: 0,
            bytes: 0,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let Some(budget) = &self.budget else {
            return;
        };
        if self.events == 0 && self.bytes == 0 {
            return;
        }
        budget.events.fetch_sub(self.events, Ordering::SeqCst);
        budget.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        // A waiter counts itself before it checks the bounds, so one that checked before
        // this release is seen here and woken.
        if budget.waiting.load(Ordering::SeqCst) > 0 {
            budget.freed.notify_waiters();
        }
    }
}

pub(crate) enum Job<E> {
    /// Make these events durable; answer `reply` when they are (or not at all: a caller that
    /// acknowledges nothing does not wait).
    Append {
        events: Vec<E>,
        reply: Option<Reply>,
        charge: Charge,
    },
    /// Everything queued before this is done; stop. Calls queued after it fail.
    Close,
}

/// One sink's queue, as sessions hold it: clones share the one consumer.
pub struct SinkQueue<E> {
    tx: mpsc::Sender<Job<E>>,
    budget: Arc<Budget>,
}

impl<E> Clone for SinkQueue<E> {
    fn clone(&self) -> Self {
        SinkQueue {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        }
    }
}

/// Events serialized for a sink, not queued yet; `charged` once counted against the bounds.
pub struct Prepared<E> {
    events: Vec<E>,
    reply: Option<Reply>,
    charged: Option<Charge>,
}

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
    /// A queue of [`QUEUE_CAPACITY`] calls, [`QUEUE_MAX_EVENTS`] events and
    /// [`QUEUE_MAX_BYTES`] bytes, and the receiver its consumer takes them from.
    pub(crate) fn new() -> (SinkQueue<E>, mpsc::Receiver<Job<E>>) {
        Self::with_bounds(QUEUE_CAPACITY, QUEUE_MAX_EVENTS, QUEUE_MAX_BYTES)
    }

    pub(crate) fn with_bounds(
        calls: usize,
        max_events: usize,
        max_bytes: usize,
    ) -> (SinkQueue<E>, mpsc::Receiver<Job<E>>) {
        let (tx, rx) = mpsc::channel(calls);
        let budget = Arc::new(Budget {
            events: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_events,
            max_bytes,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        });
        (SinkQueue { tx, budget }, rx)
    }

    /// (events, bytes) queued or being made durable now.
    pub fn held(&self) -> (usize, usize) {
        self.budget.used()
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
        // Room first, so that a full queue costs no serialization and keeps the events whole;
        // the bytes are known and counted once serialized.
        let Ok(room) = self.tx.try_reserve() else {
            return Err(events);
        };
        let Some(mut charge) = self.budget.try_charge(events.len(), 0) else {
            return Err(events);
        };
        let (reply, answer) = oneshot::channel();
        let prepared = prepare::<E>(events, Some(reply));
        charge.add_bytes(json_bytes(&prepared.events));
        room.send(Job::Append {
            events: prepared.events,
            reply: prepared.reply,
            charge,
        });
        Ok(Durable(answer))
    }

    /// Queues the events behind every earlier call if the queue has room now; never waits.
    /// When it is full the events come back serialized, to be queued with
    /// [`SinkQueue::enqueue_prepared`] by a caller that can wait.
    pub fn try_enqueue(&self, events: Vec<Event>) -> Result<(), TryEnqueueError<E>> {
        let mut prepared = prepare::<E>(events, None);
        let bytes = json_bytes(&prepared.events);
        let Some(charge) = self.budget.try_charge(prepared.events.len(), bytes) else {
            return Err(TryEnqueueError::Full(prepared));
        };
        let job = Job::Append {
            events: prepared.events,
            reply: None,
            charge,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Job::Append { events, charge, .. })) => {
                prepared = Prepared {
                    events,
                    reply: None,
                    charged: Some(charge),
                };
                Err(TryEnqueueError::Full(prepared))
            }
            Err(_) => Err(TryEnqueueError::Stopped),
        }
    }

    /// Queues events prepared by [`SinkQueue::try_enqueue`], waiting while the queue is full;
    /// returns without waiting for them to be durable.
    pub async fn enqueue_prepared(&self, prepared: Prepared<E>) -> Result<(), PublishError> {
        let charge = match prepared.charged {
            Some(charge) => charge,
            None => {
                let bytes = json_bytes(&prepared.events);
                self.budget.charge(prepared.events.len(), bytes).await
            }
        };
        let job = Job::Append {
            events: prepared.events,
            reply: prepared.reply,
            charge,
        };
        self.tx.send(job).await.map_err(|_| PublishError::Stopped)
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
    Prepared {
        events,
        reply,
        charged: None,
    }
}

fn json_bytes<E: SinkEvent>(events: &[E]) -> usize {
    events.iter().map(SinkEvent::json_len).sum()
}

/// The calls a consumer took from its queue at once, in queue order.
pub(crate) struct Batch<E> {
    pub events: Vec<E>,
    /// Each call's end in `events` and its reply.
    pub calls: Vec<(usize, Option<Reply>)>,
    /// The calls' share of the queue's bounds: keep it until the batch is durable.
    pub charge: Charge,
}

impl<E> Batch<E> {
    /// A batch of the consumer's first job; `None` if that is `Close`.
    pub fn of(first: Job<E>) -> Option<Batch<E>> {
        match first {
            Job::Append {
                events,
                reply,
                charge,
            } => {
                let mut batch = Batch {
                    events: Vec::new(),
                    calls: Vec::new(),
                    charge: Charge::none(),
                };
                batch.add(events, reply, charge);
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
                Ok(Job::Append {
                    events,
                    reply,
                    charge,
                }) => self.add(events, reply, charge),
                Ok(Job::Close) => *closing = true,
                Err(_) => break,
            }
        }
        // Calls still waiting behind this batch: the queue's depth.
        metrics::gauge!("iothub_publish_queue_depth").set(rx.len() as f64);
        // Events and bytes held against the bounds, this batch's included.
        if let Some(budget) = &self.charge.budget {
            let (events, bytes) = budget.used();
            metrics::gauge!("iothub_publish_queue_events").set(events as f64);
            metrics::gauge!("iothub_publish_queue_bytes").set(bytes as f64);
        }
    }

    fn add(&mut self, events: Vec<E>, reply: Option<Reply>, charge: Charge) {
        self.charge.absorb(charge);
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
    use iothub::event::Event;

    use super::*;
    use crate::storage::NewEvent;

    fn heartbeat() -> Event {
        crate::publish::test_heartbeat("864717003283581")
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

    #[test]
    fn a_queue_holding_its_most_events_refuses_another_call() {
        let (queue, _consumer) = SinkQueue::<NewEvent>::with_bounds(100, 10, usize::MAX);
        for _ in 0..10 {
            assert!(queue.try_enqueue(vec![heartbeat()]).is_ok());
        }
        assert!(matches!(
            queue.try_enqueue(vec![heartbeat()]),
            Err(TryEnqueueError::Full(_))
        ));
    }

    #[test]
    fn a_queue_holding_its_most_bytes_refuses_another_call() {
        let one = SinkEvent::json_len(&NewEvent::serialize(heartbeat(), 0));
        let (queue, _consumer) = SinkQueue::<NewEvent>::with_bounds(100, 1000, 3 * one);
        for _ in 0..3 {
            assert!(queue.try_enqueue(vec![heartbeat()]).is_ok());
        }
        assert!(queue.try_append(vec![heartbeat()]).is_err());
    }

    #[test]
    fn one_call_larger_than_the_bound_gets_into_an_empty_queue() {
        let (queue, _consumer) = SinkQueue::<NewEvent>::with_bounds(100, 10, usize::MAX);
        assert!(queue.try_enqueue(vec![heartbeat(); 50]).is_ok());
        assert_eq!(queue.held().0, 50);
    }

    #[tokio::test]
    async fn a_waiting_call_is_queued_once_the_consumer_finishes_a_batch() {
        let (queue, mut consumer) = SinkQueue::<NewEvent>::with_bounds(100, 10, usize::MAX);
        assert!(queue.try_enqueue(vec![heartbeat(); 10]).is_ok());
        let Err(TryEnqueueError::Full(prepared)) = queue.try_enqueue(vec![heartbeat()]) else {
            panic!("a queue at its bound took another call");
        };
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.enqueue_prepared(prepared).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the call did not wait for room");
        let batch = Batch::of(consumer.recv().await.unwrap()).unwrap();
        drop(batch);
        let queued = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(matches!(queued, Ok(Ok(Ok(())))));
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_waiting_does_not_hold_up_the_others() {
        let (queue, mut consumer) = SinkQueue::<NewEvent>::with_bounds(100, 10, usize::MAX);
        assert!(queue.try_enqueue(vec![heartbeat(); 10]).is_ok());
        let Err(TryEnqueueError::Full(prepared)) = queue.try_enqueue(vec![heartbeat()]) else {
            panic!("a queue at its bound took another call");
        };
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            queue.enqueue_prepared(prepared),
        )
        .await;
        assert!(gave_up.is_err(), "the call did not wait for room");
        drop(Batch::of(consumer.recv().await.unwrap()));
        assert!(queue.try_enqueue(vec![heartbeat()]).is_ok());
    }

    #[tokio::test]
    async fn a_batch_holds_its_events_against_the_bound_until_dropped() {
        let (queue, mut consumer) = SinkQueue::<NewEvent>::with_bounds(100, 10, usize::MAX);
        assert!(queue.try_enqueue(vec![heartbeat(); 4]).is_ok());
        let batch = Batch::of(consumer.recv().await.unwrap()).unwrap();
        assert_eq!(queue.held().0, 4);
        drop(batch);
        assert_eq!(queue.held(), (0, 0));
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
