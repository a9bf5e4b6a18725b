//! Embedded sink: group commit into the node's redb log.
//!
//! Many sessions publish concurrently, and each redb commit costs an fsync, so committing per
//! call would cap the node at a few hundred events per second. Instead calls go into the
//! sink's bounded queue ([`super::queue`]) and one writer thread takes everything queued (up
//! to [`MAX_BATCH_EVENTS`]) into one write transaction, then answers all those callers. The
//! busier the node, the bigger the batches. When the disk falls behind callers wait to
//! enqueue.
//!
//! A commit costs about a millisecond of CPU whatever its size (redb writes each dirty page
//! and fsyncs), so under load the writer starts commits no closer together than
//! `commit_interval`: the events that arrive meanwhile join the next batch. A call that comes
//! after a quiet spell commits at once, so a lightly loaded node adds no latency.
//!
//! The writer is a plain OS thread, not a tokio task: every step of it blocks on the disk. It
//! runs supervised ([`crate::supervise`]): a panic fails the batch in hand (its callers are
//! not acknowledged) and the writer starts again on the same queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub::event::{Event, Topic};
use tokio::sync::mpsc;

use super::json_buffers;
use super::queue::{Batch, Job, SinkEvent, SinkQueue};
use super::PublishError;
use crate::storage::{NewEvent, Storage};
use crate::supervise::Restarts;

/// Most events committed in one transaction.
pub const MAX_BATCH_EVENTS: usize = 16_384;
/// How often expired entries (older than `storage.retention`) are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The writer's queue, as sessions hold it.
pub type LogQueue = SinkQueue<NewEvent>;

impl SinkEvent for NewEvent {
    /// The log stamps its entries when it commits them.
    fn serialize(event: Event, _accepted_ms: i64) -> NewEvent {
        let json = json_buffers::json_of(&event);
        NewEvent {
            json,
            topic: event.topic,
            imei: event.imei,
        }
    }

    fn json_len(&self) -> usize {
        self.json.len()
    }
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
        let (queue, mut rx) = LogQueue::new();
        let restarts = Restarts::new("log_writer", storage.health().clone());
        let writer = std::thread::Builder::new()
            .name("iothub-log-writer".into())
            .spawn(move || {
                restarts.run_blocking(|| write_loop(&storage, &mut rx, retention, commit_interval))
            })?;
        Ok(EmbeddedSink {
            queue,
            writer: Some(writer),
        })
    }

    pub fn queue(&self) -> LogQueue {
        self.queue.clone()
    }

    /// Lets the writer commit what is queued, then waits for it to exit.
    pub async fn close(&mut self) {
        self.queue.close().await;
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

/// An event of this device makes the writer panic, in tests of its supervision.
#[cfg(test)]
const PANIC_IMEI: &str = "000000000000666";

fn write_loop(
    storage: &Storage,
    rx: &mut mpsc::Receiver<Job<NewEvent>>,
    retention: Duration,
    commit_interval: Duration,
) {
    let mut last_prune: Option<Instant> = None;
    prune(storage, retention, &mut last_prune);
    let mut last_commit: Option<Instant> = None;
    let mut closing = false;
    while !closing {
        let Some(mut batch) = rx.blocking_recv().and_then(Batch::of) else {
            break;
        };
        if let Some(wait) = last_commit.and_then(|t| commit_interval.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        batch.fill(rx, MAX_BATCH_EVENTS, &mut closing);
        #[cfg(test)]
        if batch.events.iter().any(|e| e.imei.as_str() == PANIC_IMEI) {
            panic!("an event of the test device that makes the log writer panic");
        }
        last_commit = Some(Instant::now());
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
        for reply in batch.calls.into_iter().filter_map(|(_, reply)| reply) {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(PublishError::Store(e.to_string())),
            };
            // The caller may have given up; nothing to do then.
            let _ = reply.send(answer);
        }
        json_buffers::give_back(new.into_iter().map(|e| e.json));
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::StorageConfig;

    fn heartbeat(imei: &str) -> Event {
        crate::publish::test_heartbeat(imei)
    }

    fn sink(dir: &tempfile::TempDir) -> (Arc<Storage>, EmbeddedSink) {
        let storage = Storage::open(&StorageConfig {
            data_dir: dir.path().to_path_buf(),
            retention: Duration::ZERO,
            commit_interval: Duration::ZERO,
        })
        .unwrap();
        let sink = EmbeddedSink::start(storage.clone(), Duration::ZERO, Duration::ZERO).unwrap();
        (storage, sink)
    }

    #[tokio::test]
    async fn a_batch_the_writer_panicked_on_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (_storage, sink) = sink(&dir);
        let answer = sink.queue().append(vec![heartbeat(PANIC_IMEI)]).await;
        assert!(matches!(answer, Err(PublishError::Stopped)), "{answer:?}");
    }

    #[tokio::test]
    async fn the_writer_stores_again_after_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, sink) = sink(&dir);
        let _ = sink.queue().append(vec![heartbeat(PANIC_IMEI)]).await;
        sink.queue()
            .append(vec![heartbeat("864717003283581")])
            .await
            .expect("stored after the restart");
        assert_eq!(storage.next_offset(Topic::Heartbeat).unwrap(), 1);
    }

    #[tokio::test]
    async fn the_writer_is_up_again_after_its_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, sink) = sink(&dir);
        let _ = sink.queue().append(vec![heartbeat(PANIC_IMEI)]).await;
        sink.queue()
            .append(vec![heartbeat("864717003283581")])
            .await
            .expect("stored after the restart");
        assert!(storage.health().down().is_empty());
    }
}
