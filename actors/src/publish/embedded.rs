//! Embedded sink: group commit into the node's redb log.
//!
//! Many sessions publish concurrently, and each redb commit costs an fsync, so committing per
//! call would cap the node at a few hundred events per second. Instead calls go into a bounded
//! queue and one writer thread takes everything queued (up to [`MAX_BATCH_EVENTS`]) into one
//! write transaction, then answers all those callers. The busier the node, the bigger the
//! batches. The queue is bounded, so when the disk falls behind callers wait to enqueue.
//!
//! Sessions enqueue through a [`LogQueue`] directly, not through the Publisher actor's mailbox:
//! the hop through the actor cost a task wake-up per publish and bought nothing, since the
//! queue itself keeps the order and bounds the work.
//!
//! A commit costs about a millisecond of CPU whatever its size (redb writes each dirty page
//! and fsyncs), so under load the writer starts commits no closer together than
//! `commit_interval`: the events that arrive meanwhile join the next batch. A call that comes
//! after a quiet spell commits at once, so a lightly loaded node adds no latency.
//!
//! The writer is a plain OS thread, not a tokio task: every step of it blocks on the disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub::event::{Event, Topic};
use ractor::RpcReplyPort;
use tokio::sync::{mpsc, oneshot};

use super::PublishError;
use crate::storage::{NewEvent, Storage};

/// Calls waiting for the writer; one more makes the caller wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events committed in one transaction.
pub const MAX_BATCH_EVENTS: usize = 16_384;
/// How often expired entries (older than `storage.retention`) are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

type Reply = oneshot::Sender<Result<(), PublishError>>;

enum Job {
    /// Commit these events; answer `reply` when they are durable (or not at all: a caller
    /// that acknowledges nothing does not wait).
    Append {
        events: Vec<NewEvent>,
        reply: Option<Reply>,
    },
    /// Everything queued before this is committed; stop. Calls queued after it fail.
    Close,
}

/// The writer's queue, as sessions hold it: clones share the one writer.
#[derive(Clone)]
pub struct LogQueue {
    tx: mpsc::Sender<Job>,
}

impl LogQueue {
    /// Returns once the events are committed and fsynced.
    pub async fn append(&self, events: Vec<Event>) -> Result<(), PublishError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(events, Some(reply)).await?;
        // A dropped reply means the writer stopped before committing the events.
        answer.await.unwrap_or(Err(PublishError::Stopped))
    }

    /// Queues the events behind every earlier call and returns without waiting for the
    /// commit; waits only while the queue is full.
    pub async fn enqueue(
        &self,
        events: Vec<Event>,
        reply: Option<Reply>,
    ) -> Result<(), PublishError> {
        self.enqueue_prepared(Prepared::new(events, reply)).await
    }

    /// Queues the events like [`LogQueue::enqueue`] if the queue has room now; never waits.
    /// When it is full the events come back serialized, to be queued with
    /// [`LogQueue::enqueue_prepared`] by a caller that can wait.
    pub fn try_enqueue(&self, events: Vec<Event>) -> Result<(), TryEnqueueError> {
        match self.tx.try_send(Prepared::new(events, None).0) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => Err(TryEnqueueError::Full(Prepared(job))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TryEnqueueError::Stopped),
        }
    }

    /// Queues events prepared by [`LogQueue::try_enqueue`], waiting while the queue is full.
    pub async fn enqueue_prepared(&self, prepared: Prepared) -> Result<(), PublishError> {
        self.tx
            .send(prepared.0)
            .await
            .map_err(|_| PublishError::Stopped)
    }
}

/// Events serialized for the writer, not queued yet.
pub struct Prepared(Job);

impl Prepared {
    fn new(events: Vec<Event>, reply: Option<Reply>) -> Prepared {
        // Serialized here, on the caller's thread: the record's many small allocations are
        // freed where they were made, and the writer thread gets one buffer per event.
        let events = events
            .into_iter()
            .map(|e| NewEvent {
                json: e.to_json(),
                topic: e.topic,
                imei: e.imei,
            })
            .collect();
        Prepared(Job::Append { events, reply })
    }
}

/// Why [`LogQueue::try_enqueue`] did not queue.
pub enum TryEnqueueError {
    /// The queue is full; the events, serialized, wait for [`LogQueue::enqueue_prepared`].
    Full(Prepared),
    /// The writer has stopped.
    Stopped,
}

pub struct EmbeddedSink {
    queue: LogQueue,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedSink {
    /// Starts the writer thread. `retention` of zero keeps entries until delivered.
    pub fn start(
        storage: Arc<Storage>,
        retention: Duration,
        commit_interval: Duration,
    ) -> anyhow::Result<EmbeddedSink> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("iothub-log-writer".into())
            .spawn(move || write_loop(&storage, rx, retention, commit_interval))?;
        Ok(EmbeddedSink {
            queue: LogQueue { tx },
            writer: Some(writer),
        })
    }

    pub fn queue(&self) -> LogQueue {
        self.queue.clone()
    }

    /// A call that reached the Publisher actor's mailbox: queued like any other, answered
    /// through the actor's reply port.
    pub async fn submit(
        &mut self,
        events: Vec<Event>,
        reply: RpcReplyPort<Result<(), PublishError>>,
    ) {
        // Queued here, in mailbox order; only the wait for the commit runs on its own.
        let (done, answer) = oneshot::channel();
        if let Err(e) = self.queue.enqueue(events, Some(done)).await {
            let _ = reply.send(Err(e));
            return;
        }
        tokio::spawn(async move {
            let _ = reply.send(answer.await.unwrap_or(Err(PublishError::Stopped)));
        });
    }

    /// Lets the writer commit what is queued, then waits for it to exit.
    pub async fn close(&mut self) {
        let _ = self.queue.tx.send(Job::Close).await;
        if let Some(writer) = self.writer.take() {
            if tokio::task::spawn_blocking(move || writer.join())
                .await
                .is_err()
            {
                tracing::error!("log writer thread panicked");
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The events and answers of one commit.
struct Batch {
    events: Vec<NewEvent>,
    replies: Vec<Reply>,
}

impl Batch {
    fn add(&mut self, events: Vec<NewEvent>, reply: Option<Reply>) {
        if self.events.is_empty() {
            self.events = events;
        } else {
            self.events.extend(events);
        }
        self.replies.extend(reply);
    }
}

fn write_loop(
    storage: &Storage,
    mut rx: mpsc::Receiver<Job>,
    retention: Duration,
    commit_interval: Duration,
) {
    let mut last_prune: Option<Instant> = None;
    prune(storage, retention, &mut last_prune);
    let mut last_commit: Option<Instant> = None;
    let mut closing = false;
    while !closing {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Batch {
            events: Vec::new(),
            replies: Vec::new(),
        };
        match first {
            Job::Append { events, reply } => batch.add(events, reply),
            Job::Close => break,
        }
        if let Some(wait) = last_commit.and_then(|t| commit_interval.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        while batch.events.len() < MAX_BATCH_EVENTS {
            match rx.try_recv() {
                Ok(Job::Append { events, reply }) => batch.add(events, reply),
                Ok(Job::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        last_commit = Some(Instant::now());
        // Publish calls still waiting behind this batch: the writer's queue depth.
        metrics::gauge!("iothub_publish_queue_depth").set(rx.len() as f64);
        let mut per_topic = [0u64; Topic::ALL.len()];
        for e in &batch.events {
            if let Some(i) = Topic::ALL.iter().position(|t| *t == e.topic) {
                per_topic[i] += 1;
            }
        }
        let new = batch.events;
        let started = Instant::now();
        let result = storage.append(&new, now_ms());
        metrics::histogram!("iothub_publish_batch_seconds", "sink" => "embedded")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("iothub_publish_batch_size", "sink" => "embedded")
            .record(new.len() as f64);
        match &result {
            Ok(()) => {
                for (i, n) in per_topic.iter().enumerate() {
                    if *n > 0 {
                        metrics::counter!("iothub_events_published_total", "topic" => Topic::ALL[i].name())
                            .increment(*n);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = new.len(), "event log commit failed");
                metrics::counter!("iothub_publish_failures_total", "sink" => "embedded")
                    .increment(1);
            }
        }
        for reply in batch.replies {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(PublishError::Store(e.to_string())),
            };
            // The caller may have given up; nothing to do then.
            let _ = reply.send(answer);
        }
        prune(storage, retention, &mut last_prune);
    }
}

/// Deletes entries past the retention limit, at most once per [`PRUNE_INTERVAL`].
fn prune(storage: &Storage, retention: Duration, last: &mut Option<Instant>) {
    if retention.is_zero() || last.is_some_and(|t| t.elapsed() < PRUNE_INTERVAL) {
        return;
    }
    *last = Some(Instant::now());
    let cutoff = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    match storage.prune_older_than(cutoff) {
        Ok(deleted) => {
            for (topic, n) in deleted {
                tracing::warn!(
                    topic = topic.name(),
                    events = n,
                    "events past storage.retention deleted"
                );
                metrics::counter!("iothub_log_expired_total", "topic" => topic.name()).increment(n);
            }
        }
        Err(e) => tracing::error!(error = %e, "event log retention failed"),
    }
}
