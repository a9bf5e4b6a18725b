//! Delivery reports of the Kafka sink's batches, counted where librdkafka hands them over.
//!
//! The sink only needs to know, per batch, when every report is in and which events failed.
//! rdkafka's `FutureProducer` answers a different question, one message at a time: it makes
//! a boxed one-shot sender, a channel and a future of every message, which was most of the
//! dispatcher's own CPU. Here each message carries a plain number as its delivery opaque
//! (the batch it belongs to and its index in it); the producer's delivery callback, on
//! librdkafka's polling thread, records the report in that batch, and the batch's producer
//! awaits one notification for all of them.
//!
//! A report can outlive its batch: a batch given up on (an outage, its producer's call
//! cancelled) stops being tracked, and the reports librdkafka still delivers for it are
//! ignored. Every message librdkafka accepted gets a report (at the latest when its
//! `message.timeout.ms` expires, or purged when the producer is dropped), so a batch is
//! normally complete; [`TrackedBatch::wait`] is still bounded, and an event whose report
//! never came counts as not delivered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::sync::Notify;

/// Bits of a delivery opaque that hold the event's index in its batch; the rest hold the
/// batch number.
const INDEX_BITS: u32 = 24;
/// Most events one tracked batch may hold.
pub const MAX_TRACKED_EVENTS: usize = 1 << INDEX_BITS;

const AWAITED: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// The batches of one producer whose reports are awaited, by batch number.
#[derive(Default)]
pub struct Deliveries {
    batches: Mutex<HashMap<usize, Arc<BatchReports>>>,
    next: AtomicUsize,
}

struct BatchReports {
    /// Reports still awaited, plus one until [`TrackedBatch::wait`] (events may still be
    /// handed over until then, and a report must not complete the batch before that).
    pending: AtomicUsize,
    status: Box<[AtomicU8]>,
    failures: Mutex<Vec<(usize, KafkaError)>>,
    done: Notify,
}

impl Deliveries {
    /// Starts tracking a batch of `events` events (at most [`MAX_TRACKED_EVENTS`]).
    pub fn track(&self, events: usize) -> TrackedBatch<'_> {
        assert!(
            events <= MAX_TRACKED_EVENTS,
            "a tracked batch holds at most {MAX_TRACKED_EVENTS} events, not {events}"
        );
        // Numbers wrap after 2^40 batches on 64-bit targets; a report is only ever matched
        // against the few batches in flight.
        let number = self.next.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> INDEX_BITS);
        let reports = Arc::new(BatchReports {
            pending: AtomicUsize::new(1),
            status: (0..events).map(|_| AtomicU8::new(AWAITED)).collect(),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
        });
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, reports.clone());
        TrackedBatch {
            deliveries: self,
            number,
            reports,
        }
    }

    /// Records the report of the message sent with `opaque`. Reports of batches no longer
    /// tracked are ignored.
    pub fn report(&self, opaque: usize, result: Result<(), &KafkaError>) {
        let number = opaque >> INDEX_BITS;
        let index = opaque & (MAX_TRACKED_EVENTS - 1);
        let Some(reports) = self
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&number)
            .cloned()
        else {
            return;
        };
        let Some(status) = reports.status.get(index) else {
            return;
        };
        let new = if result.is_ok() { DELIVERED } else { FAILED };
        // A message is reported once; a second report for the same index (a stale one whose
        // batch number came round again) must not count twice.
        if status
            .compare_exchange(AWAITED, new, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        if let Err(e) = result {
            reports
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((index, e.clone()));
        }
        if reports.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            reports.done.notify_one();
        }
    }

    fn untrack(&self, number: usize) {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&number);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.batches.lock().unwrap().len()
    }
}

/// A batch whose reports are being counted; it stops being tracked when dropped.
pub struct TrackedBatch<'a> {
    deliveries: &'a Deliveries,
    number: usize,
    reports: Arc<BatchReports>,
}

impl TrackedBatch<'_> {
    /// The delivery opaque of the batch's event `index`.
    pub fn opaque(&self, index: usize) -> usize {
        debug_assert!(index < self.reports.status.len());
        (self.number << INDEX_BITS) | index
    }

    /// Call before handing an event to the producer: its report is awaited.
    pub fn expect_report(&self) {
        self.reports.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Call when the producer did not take the event after all: no report will come.
    pub fn no_report(&self) {
        // The hand-over guard keeps `pending` above zero until `wait`.
        self.reports.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Waits, at most `limit`, until every event handed over has its report, and returns one
    /// result per event of the batch. An event without a report (never handed over, or not
    /// reported in time) is `Err(KafkaError::Canceled)`.
    pub async fn wait(self, limit: Duration) -> Vec<Result<(), KafkaError>> {
        let reports = &self.reports;
        if reports.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            let waited = tokio::time::timeout(limit, async {
                // `notify_one` leaves a permit when nobody waits yet, so the last report
                // cannot slip between the check and the await.
                while reports.pending.load(Ordering::Acquire) > 0 {
                    reports.done.notified().await;
                }
            })
            .await;
            if waited.is_err() {
                tracing::error!(
                    missing = reports.pending.load(Ordering::Acquire),
                    "kafka delivery reports missing after {limit:?}; those events count as undelivered"
                );
            }
        }
        let mut results: Vec<Result<(), KafkaError>> = reports
            .status
            .iter()
            .map(|s| match s.load(Ordering::Acquire) {
                DELIVERED => Ok(()),
                _ => Err(KafkaError::Canceled),
            })
            .collect();
        let failures =
            std::mem::take(&mut *reports.failures.lock().unwrap_or_else(|p| p.into_inner()));
        for (index, error) in failures {
            results[index] = Err(error);
        }
        results
    }
}

impl Drop for TrackedBatch<'_> {
    fn drop(&mut self) {
        self.deliveries.untrack(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    const LIMIT: Duration = Duration::from_secs(5);

    fn timed_out() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    }

    #[tokio::test]
    async fn publish_batch_results_follow_the_reports_by_index() {
        let deliveries = Deliveries::default();
        let batch = deliveries.track(3);
        let opaques: Vec<usize> = (0..3).map(|i| batch.opaque(i)).collect();
        for _ in 0..3 {
            batch.expect_report();
        }
        deliveries.report(opaques[2], Ok(()));
        deliveries.report(opaques[1], Err(&timed_out()));
        deliveries.report(opaques[0], Ok(()));
        let results = batch.wait(LIMIT).await;
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].as_ref().unwrap_err().rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageTimedOut)
        );
        assert!(results[2].is_ok());
    }

    #[tokio::test]
    async fn publish_batch_wait_returns_when_the_last_report_arrives_from_another_thread() {
        let deliveries = Arc::new(Deliveries::default());
        let batch = deliveries.track(100);
        let opaques: Vec<usize> = (0..100).map(|i| batch.opaque(i)).collect();
        for _ in 0..100 {
            batch.expect_report();
        }
        let reporter = {
            let deliveries = deliveries.clone();
            std::thread::spawn(move || {
                for opaque in opaques {
                    deliveries.report(opaque, Ok(()));
                }
            })
        };
        let results = batch.wait(LIMIT).await;
        reporter.join().unwrap();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 100);
    }

    #[tokio::test]
    async fn publish_batch_event_not_handed_over_is_not_awaited() {
        let deliveries = Deliveries::default();
        let batch = deliveries.track(2);
        let delivered = batch.opaque(0);
        batch.expect_report();
        batch.expect_report();
        batch.no_report();
        deliveries.report(delivered, Ok(()));
        let started = std::time::Instant::now();
        let results = batch.wait(LIMIT).await;
        assert!(
            started.elapsed() < LIMIT,
            "did not wait for a report that cannot come"
        );
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(KafkaError::Canceled)));
    }

    #[tokio::test]
    async fn publish_batch_missing_report_counts_as_undelivered_after_the_limit() {
        let deliveries = Deliveries::default();
        let batch = deliveries.track(2);
        batch.expect_report();
        batch.expect_report();
        deliveries.report(batch.opaque(1), Ok(()));
        let results = batch.wait(Duration::from_millis(50)).await;
        assert!(matches!(results[0], Err(KafkaError::Canceled)));
        assert!(results[1].is_ok());
    }

    #[tokio::test]
    async fn publish_reports_of_a_batch_given_up_on_are_ignored() {
        let deliveries = Deliveries::default();
        let stale = {
            let abandoned = deliveries.track(1);
            abandoned.expect_report();
            abandoned.opaque(0)
        };
        assert_eq!(deliveries.tracked(), 0, "a dropped batch is not tracked");
        let batch = deliveries.track(1);
        batch.expect_report();
        deliveries.report(stale, Err(&timed_out()));
        deliveries.report(batch.opaque(0), Ok(()));
        let results = batch.wait(LIMIT).await;
        assert!(results[0].is_ok());
        assert_eq!(deliveries.tracked(), 0);
    }

    #[tokio::test]
    async fn publish_a_second_report_for_one_event_does_not_count_twice() {
        let deliveries = Deliveries::default();
        let batch = deliveries.track(2);
        batch.expect_report();
        batch.expect_report();
        deliveries.report(batch.opaque(0), Ok(()));
        deliveries.report(batch.opaque(0), Ok(()));
        let results = batch.wait(Duration::from_millis(50)).await;
        assert!(results[0].is_ok());
        assert!(
            matches!(results[1], Err(KafkaError::Canceled)),
            "event 1 was never reported"
        );
    }

    #[test]
    fn publish_opaques_of_one_batch_are_distinct_and_carry_the_batch() {
        let deliveries = Deliveries::default();
        let first = deliveries.track(MAX_TRACKED_EVENTS);
        let second = deliveries.track(1);
        assert_ne!(first.opaque(0), second.opaque(0));
        assert_ne!(first.opaque(MAX_TRACKED_EVENTS - 1), second.opaque(0));
        assert_eq!(first.opaque(5) >> INDEX_BITS, first.opaque(0) >> INDEX_BITS);
    }
}
