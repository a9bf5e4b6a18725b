//! Embedded sink: group commit into the node's redb log.
//!
//! Many sessions publish concurrently, and each redb commit costs an fsync, so committing per
//! call would cap the node at a few hundred events per second. Instead calls go into a bounded
//! queue and one writer thread takes everything queued (up to [`MAX_BATCH_EVENTS`]) into one
//! write transaction, then answers all those callers. The busier the node, the bigger the
//! batches. The queue is bounded, so when the disk falls behind callers wait in `submit`.
//!
//! The writer is a plain OS thread, not a tokio task: every step of it blocks on the disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub::event::{Event, Topic};
use ractor::RpcReplyPort;
use tokio::sync::mpsc;

use super::PublishError;
use crate::storage::{NewEvent, Storage};

/// Calls waiting for the writer; one more makes the caller wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events committed in one transaction.
pub const MAX_BATCH_EVENTS: usize = 16_384;
/// How often expired entries (older than `storage.retention`) are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

struct WriteRequest {
    events: Vec<Event>,
    reply: RpcReplyPort<Result<(), PublishError>>,
}

pub struct EmbeddedSink {
    tx: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedSink {
    /// Starts the writer thread. `retention` of zero keeps entries until delivered.
    pub fn start(storage: Arc<Storage>, retention: Duration) -> anyhow::Result<EmbeddedSink> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("iothub-log-writer".into())
            .spawn(move || write_loop(&storage, rx, retention))?;
        Ok(EmbeddedSink {
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Queues a call; waits while the queue is full. The writer answers `reply`.
    pub async fn submit(
        &mut self,
        events: Vec<Event>,
        reply: RpcReplyPort<Result<(), PublishError>>,
    ) {
        let Some(tx) = &self.tx else {
            let _ = reply.send(Err(PublishError::Stopped));
            return;
        };
        if let Err(mpsc::error::SendError(req)) = tx.send(WriteRequest { events, reply }).await {
            let _ = req.reply.send(Err(PublishError::Stopped));
        }
    }

    /// Lets the writer commit what is queued, then waits for it to exit.
    pub async fn close(&mut self) {
        self.tx = None;
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

fn write_loop(storage: &Storage, mut rx: mpsc::Receiver<WriteRequest>, retention: Duration) {
    let mut last_prune: Option<Instant> = None;
    prune(storage, retention, &mut last_prune);
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.events.len();
        let mut batch = vec![first];
        while count < MAX_BATCH_EVENTS {
            match rx.try_recv() {
                Ok(req) => {
                    count += req.events.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        // Publish calls still waiting behind this batch: the writer's queue depth.
        metrics::gauge!("iothub_publish_queue_depth").set(rx.len() as f64);
        let mut per_topic = [0u64; Topic::ALL.len()];
        let new: Vec<NewEvent> = batch
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| {
                if let Some(i) = Topic::ALL.iter().position(|t| *t == e.topic) {
                    per_topic[i] += 1;
                }
                NewEvent {
                    topic: e.topic,
                    imei: e.imei,
                    json: e.to_json(),
                }
            })
            .collect();
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
                    .increment(batch.len() as u64);
            }
        }
        for req in batch {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(PublishError::Store(e.to_string())),
            };
            // The caller may have given up; nothing to do then.
            let _ = req.reply.send(answer);
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
