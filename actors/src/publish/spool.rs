//! The Kafka outage spool: events the Kafka sink could not produce because the brokers were
//! unreachable, kept in the node's redb database (table `kafka_spool`) until the sink's drain
//! task has produced them.
//!
//! A device is acknowledged once its events are in Kafka or in this spool, so the spool is
//! what keeps "acknowledged means durable" true through a Kafka outage, across restarts and
//! `kill -9` (an append returns only after its redb commit). Entries are keyed by an
//! increasing sequence and only ever deleted from the front, so reading from the front gives
//! the order the events were accepted in, and with it each device's order.
//!
//! The spool is bounded by `kafka.spool_max_events`: a call whose events do not fit is
//! refused whole, and its device, not acknowledged, sends again later.
//!
//! [`Spool`] is the blocking store. [`SpoolWriter`] runs it on one OS thread behind a bounded
//! queue and commits every append queued at the same time in one transaction (group commit,
//! as the embedded sink does): during an outage every publish call of the node lands here,
//! and one fsync per call would cap the node at a few hundred calls per second. Reads and
//! deletes of the drain go through the same queue, so they are ordered with the appends.

use std::sync::Arc;

use iothub::event::Topic;
use iothub::imei::Imei;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot};

use crate::storage::{
    Storage, StoreError, KAFKA_PARKED, KAFKA_PARKED_NEXT_SEQ, KAFKA_SPOOL, KAFKA_SPOOL_NEXT_SEQ,
    META_TABLE,
};
use crate::supervise::Restarts;

/// Requests waiting for the spool thread; one more makes the sender wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events appended in one transaction.
pub const MAX_BATCH_EVENTS: usize = 16_384;

/// One event as the spool keeps it: enough to produce it later exactly as it would have been.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolEntry {
    pub topic: Topic,
    /// The message key.
    pub imei: Imei,
    /// The message payload: the push record JSON.
    pub json: Vec<u8>,
    /// Unix milliseconds when the hub accepted the event; produced as the message timestamp.
    pub accepted_ms: i64,
}

/// An entry read back, with its sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    pub seq: u64,
    pub entry: SpoolEntry,
}

/// Entries read from the front of the spool.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpoolBatch {
    pub entries: Vec<Spooled>,
    /// Sequence of the last entry read, undecodable ones included: deleting through it removes
    /// the whole batch. `None` when the spool is empty.
    pub last_seq: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("kafka unreachable and its spool is full ({max} events, kafka.spool_max_events)")]
    Full { max: u64 },
    #[error("kafka spool: {0}")]
    Store(#[from] StoreError),
    #[error("kafka spool is closed")]
    Stopped,
}

/// Value layout: accepted time (i64 big-endian) | topic name length (u8) | topic name |
/// IMEI length (u8) | IMEI digits | record JSON.
fn encode_entry(e: &SpoolEntry) -> Vec<u8> {
    let topic = e.topic.name().as_bytes();
    let digits = e.imei.as_str().as_bytes();
    let mut v = Vec::with_capacity(10 + topic.len() + digits.len() + e.json.len());
    v.extend_from_slice(&e.accepted_ms.to_be_bytes());
    // Topic names are short constants and an Imei has at most 20 digits: both fit a byte.
    v.push(topic.len() as u8);
    v.extend_from_slice(topic);
    v.push(digits.len() as u8);
    v.extend_from_slice(digits);
    v.extend_from_slice(&e.json);
    v
}

fn decode_entry(v: &[u8]) -> Option<SpoolEntry> {
    let time: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let topic_len = usize::from(*v.get(8)?);
    let topic_end = 9 + topic_len;
    let topic = Topic::from_name(std::str::from_utf8(v.get(9..topic_end)?).ok()?)?;
    let imei_len = usize::from(*v.get(topic_end)?);
    let imei_end = topic_end + 1 + imei_len;
    let imei = Imei::parse(std::str::from_utf8(v.get(topic_end + 1..imei_end)?).ok()?).ok()?;
    Some(SpoolEntry {
        topic,
        imei,
        json: v.get(imei_end..)?.to_vec(),
        accepted_ms: i64::from_be_bytes(time),
    })
}

/// The spool table of one node. Every method blocks on disk I/O.
pub struct Spool {
    storage: Arc<Storage>,
    max_events: u64,
    len: u64,
}

impl Spool {
    /// Opens the spool in `storage`, with whatever an earlier run left in it.
    pub fn open(storage: Arc<Storage>, max_events: u64) -> Result<Spool, StoreError> {
        let len = storage.observe((|| -> Result<u64, StoreError> {
            let txn = storage.db()?.begin_read()?;
            let table = txn.open_table(KAFKA_SPOOL)?;
            Ok(table.len()?)
        })())?;
        Ok(Spool {
            storage,
            max_events,
            len,
        })
    }

    /// Counts the entries again (after the thread that owns the spool panicked mid-update).
    fn recount(&mut self) -> Result<(), StoreError> {
        let storage = &self.storage;
        self.len = storage.observe((|| -> Result<u64, StoreError> {
            let txn = storage.db()?.begin_read()?;
            let table = txn.open_table(KAFKA_SPOOL)?;
            Ok(table.len()?)
        })())?;
        Ok(())
    }

    /// Events waiting to be produced.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_events(&self) -> u64 {
        self.max_events
    }

    /// Appends several calls' events in one durable transaction, in the order given. A call
    /// whose events do not all fit under the bound is refused whole (`false` at its index);
    /// the calls before and after it are still appended.
    pub fn append(&mut self, calls: &[&[SpoolEntry]]) -> Result<Vec<bool>, StoreError> {
        let result = (|| -> Result<Vec<bool>, StoreError> {
            let mut admitted = Vec::with_capacity(calls.len());
            let mut len = self.len;
            let txn = self.storage.db()?.begin_write()?;
            {
                let mut meta = txn.open_table(META_TABLE)?;
                let mut table = txn.open_table(KAFKA_SPOOL)?;
                let mut next = meta
                    .get(KAFKA_SPOOL_NEXT_SEQ)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                for call in calls {
                    let n = call.len() as u64;
                    if len.saturating_add(n) > self.max_events {
                        admitted.push(false);
                        continue;
                    }
                    for e in call.iter() {
                        table.insert(next, encode_entry(e).as_slice())?;
                        next += 1;
                    }
                    len += n;
                    admitted.push(true);
                }
                meta.insert(KAFKA_SPOOL_NEXT_SEQ, next)?;
            }
            txn.commit()?;
            self.len = len;
            Ok(admitted)
        })();
        self.storage.observe(result)
    }

    /// Up to `max` entries from the front, in sequence order. Entries that cannot be decoded
    /// (corruption) are skipped but covered by `last_seq`, so the drain deletes them with the
    /// batch instead of stalling on them.
    pub fn read(&self, max: usize) -> Result<SpoolBatch, StoreError> {
        let result = (|| -> Result<SpoolBatch, StoreError> {
            let txn = self.storage.db()?.begin_read()?;
            let table = txn.open_table(KAFKA_SPOOL)?;
            let mut batch = SpoolBatch {
                entries: Vec::with_capacity(max.min(1024)),
                last_seq: None,
            };
            for item in table.iter()?.take(max) {
                let (k, v) = item?;
                let seq = k.value();
                batch.last_seq = Some(seq);
                match decode_entry(v.value()) {
                    Some(entry) => batch.entries.push(Spooled { seq, entry }),
                    None => {
                        tracing::warn!(seq, "undecodable kafka spool entry skipped");
                        metrics::counter!("iothub_kafka_spool_corrupt_total").increment(1);
                    }
                }
            }
            Ok(batch)
        })();
        self.storage.observe(result)
    }

    /// Deletes every entry with a sequence up to and including `last_seq`; returns how many.
    pub fn delete_through(&mut self, last_seq: u64) -> Result<u64, StoreError> {
        self.park_and_delete_through(&[], last_seq)
    }

    /// Moves the entries `park` (sequences, each up to `last_seq`) to the parked table and
    /// deletes every entry up to and including `last_seq`, in one transaction; returns how
    /// many left the spool. Parked entries wait there for `iothubd replay-parked`.
    pub fn park_and_delete_through(
        &mut self,
        park: &[u64],
        last_seq: u64,
    ) -> Result<u64, StoreError> {
        let result = (|| -> Result<u64, StoreError> {
            let txn = self.storage.db()?.begin_write()?;
            let len = {
                let mut table = txn.open_table(KAFKA_SPOOL)?;
                if !park.is_empty() {
                    let mut parked = txn.open_table(KAFKA_PARKED)?;
                    let mut meta = txn.open_table(META_TABLE)?;
                    let mut next = meta
                        .get(KAFKA_PARKED_NEXT_SEQ)?
                        .map(|g| g.value())
                        .unwrap_or(0);
                    for seq in park {
                        if let Some(value) = table.get(*seq)? {
                            parked.insert(next, value.value())?;
                            next += 1;
                        }
                    }
                    meta.insert(KAFKA_PARKED_NEXT_SEQ, next)?;
                }
                table.retain_in(..=last_seq, |_, _| false)?;
                table.len()?
            };
            txn.commit()?;
            let deleted = self.len.saturating_sub(len);
            self.len = len;
            Ok(deleted)
        })();
        self.storage.observe(result)
    }

    /// Events parked because Kafka refused them.
    pub fn parked(&self) -> Result<u64, StoreError> {
        self.storage.observe((|| -> Result<u64, StoreError> {
            let txn = self.storage.db()?.begin_read()?;
            Ok(txn.open_table(KAFKA_PARKED)?.len()?)
        })())
    }

    /// Moves every parked event to the end of the spool, in the order they were parked, for
    /// the drain to produce again (the operator fixed what made Kafka refuse them); returns
    /// how many. Not bounded by `kafka.spool_max_events`: the operator asked for all of them.
    pub fn replay_parked(&mut self) -> Result<u64, StoreError> {
        let result = (|| -> Result<u64, StoreError> {
            let txn = self.storage.db()?.begin_write()?;
            let moved = {
                let mut parked = txn.open_table(KAFKA_PARKED)?;
                let mut table = txn.open_table(KAFKA_SPOOL)?;
                let mut meta = txn.open_table(META_TABLE)?;
                let mut next = meta
                    .get(KAFKA_SPOOL_NEXT_SEQ)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                let mut moved = 0u64;
                for item in parked.iter()? {
                    let (_, v) = item?;
                    table.insert(next, v.value())?;
                    next += 1;
                    moved += 1;
                }
                meta.insert(KAFKA_SPOOL_NEXT_SEQ, next)?;
                parked.retain(|_, _| false)?;
                moved
            };
            txn.commit()?;
            self.len += moved;
            Ok(moved)
        })();
        self.storage.observe(result)
    }
}

enum Request {
    Append {
        entries: Vec<SpoolEntry>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Read {
        max: usize,
        reply: oneshot::Sender<Result<SpoolBatch, StoreError>>,
    },
    DeleteThrough {
        seq: u64,
        /// Entries to park instead of deleting (see [`Spool::park_and_delete_through`]).
        park: Vec<u64>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Len {
        reply: oneshot::Sender<u64>,
    },
    Stop,
}

/// The spool thread. [`SpoolWriter::stop`] ends it after the requests queued before; so does
/// dropping it and every [`SpoolHandle`].
pub struct SpoolWriter {
    handle: SpoolHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Cheap clonable access to the spool thread.
#[derive(Clone)]
pub struct SpoolHandle {
    tx: mpsc::Sender<Request>,
}

/// The answer of one append, once its transaction committed (or failed).
pub type PendingAppend = oneshot::Receiver<Result<(), SpoolError>>;

impl SpoolWriter {
    /// Starts the thread that owns `spool`.
    pub fn start(spool: Spool) -> std::io::Result<SpoolWriter> {
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        let restarts = Restarts::new("kafka_spool", spool.storage.health().clone());
        let mut spool = spool;
        let thread = std::thread::Builder::new()
            .name("iothub-kafka-spool".into())
            .spawn(move || restarts.run_blocking(|| run(&mut spool, &mut rx)))?;
        Ok(SpoolWriter {
            handle: SpoolHandle { tx },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> SpoolHandle {
        self.handle.clone()
    }

    /// Lets the thread finish every request queued before this call, then waits for it.
    pub async fn stop(&mut self) {
        let _ = self.handle.tx.send(Request::Stop).await;
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("kafka spool thread panicked");
            }
        }
    }
}

impl SpoolHandle {
    /// Queues an append (waiting while the queue is full) and returns its answer to await.
    /// Returning before the commit lets a caller release its locks while the disk works.
    pub async fn append(&self, entries: Vec<SpoolEntry>) -> PendingAppend {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Request::Append { reply, .. })) =
            self.tx.send(Request::Append { entries, reply }).await
        {
            let _ = reply.send(Err(SpoolError::Stopped));
        }
        answer
    }

    /// Up to `max` entries from the front.
    pub async fn read(&self, max: usize) -> Result<SpoolBatch, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Read { max, reply }, answer)
            .await?
            .map_err(SpoolError::from)
    }

    /// Deletes the entries up to and including `seq`; returns how many.
    pub async fn delete_through(&self, seq: u64) -> Result<u64, SpoolError> {
        self.park_and_delete_through(Vec::new(), seq).await
    }

    /// Parks the entries `park` and deletes every entry up to and including `seq`, at once;
    /// returns how many left the spool.
    pub async fn park_and_delete_through(
        &self,
        park: Vec<u64>,
        seq: u64,
    ) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::DeleteThrough { seq, park, reply }, answer)
            .await?
            .map_err(SpoolError::from)
    }

    /// Events in the spool once every request queued before this one is done.
    pub async fn waiting(&self) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Len { reply }, answer).await
    }

    async fn request<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<T>,
    ) -> Result<T, SpoolError> {
        self.tx
            .send(request)
            .await
            .map_err(|_| SpoolError::Stopped)?;
        answer.await.map_err(|_| SpoolError::Stopped)
    }
}

type Append = (Vec<SpoolEntry>, oneshot::Sender<Result<(), SpoolError>>);

/// Supervised (see `crate::supervise`): after a panic it runs again on the same spool and
/// queue, its length counted again from the table.
fn run(spool: &mut Spool, rx: &mut mpsc::Receiver<Request>) {
    if let Err(e) = spool.recount() {
        tracing::error!(error = %e, "kafka spool length unknown; keeping the last one");
    }
    metrics::gauge!("iothub_kafka_spool_events").set(spool.len() as f64);
    match spool.parked() {
        Ok(0) => metrics::gauge!("iothub_kafka_parked_events").set(0.0),
        Ok(parked) => {
            metrics::gauge!("iothub_kafka_parked_events").set(parked as f64);
            tracing::warn!(
                events = parked,
                "events Kafka refused are parked; `iothubd replay-parked` produces them again"
            );
        }
        Err(e) => tracing::error!(error = %e, "kafka parked events not counted"),
    }
    let mut held: Option<Request> = None;
    // Whether the last appends were refused: a full spool is logged once, not per call.
    let mut full = false;
    loop {
        let request = match held.take() {
            Some(r) => r,
            None => match rx.blocking_recv() {
                Some(r) => r,
                None => return,
            },
        };
        match request {
            Request::Append { entries, reply } => {
                let mut count = entries.len();
                let mut appends = vec![(entries, reply)];
                while count < MAX_BATCH_EVENTS {
                    match rx.try_recv() {
                        Ok(Request::Append { entries, reply }) => {
                            count += entries.len();
                            appends.push((entries, reply));
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_appends(spool, appends, &mut full);
            }
            Request::Read { max, reply } => {
                let _ = reply.send(spool.read(max));
            }
            Request::DeleteThrough { seq, park, reply } => {
                let result = spool.park_and_delete_through(&park, seq);
                if !park.is_empty() && result.is_ok() {
                    metrics::counter!("iothub_kafka_parked_total").increment(park.len() as u64);
                    if let Ok(parked) = spool.parked() {
                        metrics::gauge!("iothub_kafka_parked_events").set(parked as f64);
                    }
                }
                metrics::gauge!("iothub_kafka_spool_events").set(spool.len() as f64);
                let _ = reply.send(result);
            }
            Request::Len { reply } => {
                let _ = reply.send(spool.len());
            }
            Request::Stop => return,
        }
    }
}

fn commit_appends(spool: &mut Spool, appends: Vec<Append>, full: &mut bool) {
    let calls: Vec<&[SpoolEntry]> = appends.iter().map(|(e, _)| e.as_slice()).collect();
    match spool.append(&calls) {
        Ok(admitted) => {
            let mut spooled = 0u64;
            let mut refused = 0u64;
            for ((entries, reply), ok) in appends.into_iter().zip(admitted) {
                let answer = if ok {
                    spooled += entries.len() as u64;
                    Ok(())
                } else {
                    refused += 1;
                    Err(SpoolError::Full {
                        max: spool.max_events(),
                    })
                };
                // The caller may have given up; nothing to do then.
                let _ = reply.send(answer);
            }
            metrics::counter!("iothub_kafka_spooled_total").increment(spooled);
            if refused > 0 {
                if !*full {
                    tracing::warn!(
                        max = spool.max_events(),
                        "kafka spool full (kafka.spool_max_events): devices are not acknowledged until it drains"
                    );
                }
                metrics::counter!("iothub_kafka_spool_full_total").increment(refused);
            } else if *full {
                tracing::info!(events = spool.len(), "kafka spool takes events again");
            }
            *full = refused > 0;
        }
        Err(e) => {
            tracing::error!(error = %e, "kafka spool commit failed");
            for (_, reply) in appends {
                let _ = reply.send(Err(SpoolError::Store(e.clone())));
            }
        }
    }
    metrics::gauge!("iothub_kafka_spool_events").set(spool.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    fn storage(dir: &std::path::Path) -> Arc<Storage> {
        Storage::open(&StorageConfig {
            data_dir: dir.to_path_buf(),
            retention: std::time::Duration::ZERO,
            commit_interval: std::time::Duration::ZERO,
        })
        .expect("open storage")
    }

    fn entry(device: u64, n: u64) -> SpoolEntry {
        SpoolEntry {
            topic: if n.is_multiple_of(2) {
                Topic::Gps
            } else {
                Topic::Alarm
            },
            imei: Imei::parse(&format!("8647170032{device:05}")).expect("imei"),
            json: format!(r#"{{"n":{n}}}"#).into_bytes(),
            accepted_ms: 1_700_000_000_000 + n as i64,
        }
    }

    fn entries(batch: &SpoolBatch) -> Vec<SpoolEntry> {
        batch.entries.iter().map(|s| s.entry.clone()).collect()
    }

    #[test]
    fn entry_round_trip_and_truncation() {
        let e = entry(3, 7);
        assert_eq!(decode_entry(&encode_entry(&e)), Some(e.clone()));
        let v = encode_entry(&e);
        assert_eq!(decode_entry(&v[..12]), None);
        assert_eq!(decode_entry(&[]), None);
        let mut bad_topic = v.clone();
        bad_topic[9] = b'X';
        assert_eq!(decode_entry(&bad_topic), None);
    }

    #[test]
    fn publish_spool_reads_back_in_append_order_and_deletes_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(storage(dir.path()), 100).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.read(10).unwrap(), SpoolBatch::default());

        let first: Vec<SpoolEntry> = (0..3).map(|n| entry(1, n)).collect();
        let second: Vec<SpoolEntry> = (3..5).map(|n| entry(2, n)).collect();
        assert_eq!(spool.append(&[&first, &second]).unwrap(), vec![true, true]);
        let third: Vec<SpoolEntry> = (5..8).map(|n| entry(1, n)).collect();
        assert_eq!(spool.append(&[&third]).unwrap(), vec![true]);
        assert_eq!(spool.len(), 8);

        let all = spool.read(100).unwrap();
        let expected: Vec<SpoolEntry> = (0..8)
            .map(|n| entry(if (3..5).contains(&n) { 2 } else { 1 }, n))
            .collect();
        assert_eq!(entries(&all), expected);
        let seqs: Vec<u64> = all.entries.iter().map(|s| s.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(all.last_seq, seqs.last().copied());

        let front = spool.read(3).unwrap();
        assert_eq!(entries(&front), expected[..3].to_vec());
        let last = front.last_seq.unwrap();
        assert_eq!(spool.delete_through(last).unwrap(), 3);
        assert_eq!(spool.len(), 5);
        assert_eq!(entries(&spool.read(100).unwrap()), expected[3..].to_vec());

        assert_eq!(spool.delete_through(u64::MAX).unwrap(), 5);
        assert!(spool.is_empty());
        // Sequences keep growing after the spool emptied: no new entry sorts before an old one.
        spool.append(&[&[entry(1, 9)]]).unwrap();
        assert!(spool.read(1).unwrap().entries[0].seq > last);
    }

    /// A spool of entries 0, 1, 2 of device 1 whose entry 1 was parked and the rest deleted.
    fn spool_with_one_parked(dir: &std::path::Path) -> Spool {
        let mut spool = Spool::open(storage(dir), 100).unwrap();
        let three: Vec<SpoolEntry> = (0..3).map(|n| entry(1, n)).collect();
        spool.append(&[&three]).unwrap();
        let batch = spool.read(3).unwrap();
        spool
            .park_and_delete_through(&[batch.entries[1].seq], batch.last_seq.unwrap())
            .unwrap();
        spool
    }

    #[test]
    fn publish_spool_keeps_a_parked_entry_out_of_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with_one_parked(dir.path());
        assert!(spool.is_empty());
    }

    #[test]
    fn publish_spool_counts_a_parked_entry() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with_one_parked(dir.path());
        assert_eq!(spool.parked().unwrap(), 1);
    }

    #[test]
    fn publish_spool_keeps_parked_entries_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        drop(spool_with_one_parked(dir.path()));
        let spool = Spool::open(storage(dir.path()), 100).unwrap();
        assert_eq!(spool.parked().unwrap(), 1);
    }

    #[test]
    fn publish_spool_replays_parked_entries_behind_the_spooled_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = spool_with_one_parked(dir.path());
        spool.append(&[&[entry(2, 9)]]).unwrap();
        assert_eq!(spool.replay_parked().unwrap(), 1);
        assert_eq!(
            entries(&spool.read(10).unwrap()),
            vec![entry(2, 9), entry(1, 1)]
        );
    }

    #[test]
    fn publish_spool_has_nothing_parked_after_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = spool_with_one_parked(dir.path());
        spool.replay_parked().unwrap();
        assert_eq!(spool.parked().unwrap(), 0);
    }

    #[test]
    fn publish_spool_refuses_a_call_that_does_not_fit_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(storage(dir.path()), 5).unwrap();
        let three: Vec<SpoolEntry> = (0..3).map(|n| entry(1, n)).collect();
        let one = vec![entry(2, 10)];
        // 3 fit, the next 3 would make 6 > 5, the single one still fits.
        assert_eq!(
            spool.append(&[&three, &three, &one]).unwrap(),
            vec![true, false, true]
        );
        assert_eq!(spool.len(), 4);
        assert_eq!(spool.append(&[&three]).unwrap(), vec![false]);
        assert_eq!(spool.append(&[&one]).unwrap(), vec![true]);
        assert_eq!(spool.len(), 5);
        assert_eq!(spool.append(&[&one]).unwrap(), vec![false]);
        let mut expected = three.clone();
        expected.push(one[0].clone());
        expected.push(one[0].clone());
        assert_eq!(entries(&spool.read(100).unwrap()), expected);
    }

    #[test]
    fn publish_spool_survives_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<SpoolEntry> = (0..4).map(|n| entry(7, n)).collect();
        let last_seq = {
            let mut spool = Spool::open(storage(dir.path()), 10).unwrap();
            spool.append(&[&written]).unwrap();
            spool.read(10).unwrap().last_seq.unwrap()
        };
        let mut spool = Spool::open(storage(dir.path()), 10).unwrap();
        assert_eq!(spool.len(), 4);
        assert_eq!(entries(&spool.read(10).unwrap()), written);
        spool.append(&[&[entry(7, 4)]]).unwrap();
        let batch = spool.read(10).unwrap();
        assert!(
            batch.last_seq.unwrap() > last_seq,
            "sequence continues after reopen"
        );
    }

    #[tokio::test]
    async fn publish_spool_thread_answers_in_queue_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SpoolWriter::start(Spool::open(storage(dir.path()), 4).unwrap()).unwrap();
        let handle = writer.handle();
        let a = handle.append(vec![entry(1, 0), entry(1, 1)]).await;
        let b = handle
            .append(vec![entry(2, 2), entry(2, 3), entry(2, 4)])
            .await;
        let c = handle.append(vec![entry(3, 5)]).await;
        // Queued behind the appends, so it sees their result.
        assert_eq!(handle.waiting().await.unwrap(), 3);
        assert!(a.await.unwrap().is_ok());
        assert!(matches!(b.await.unwrap(), Err(SpoolError::Full { max: 4 })));
        assert!(c.await.unwrap().is_ok());
        let batch = handle.read(10).await.unwrap();
        assert_eq!(entries(&batch), vec![entry(1, 0), entry(1, 1), entry(3, 5)]);
        assert_eq!(
            handle.delete_through(batch.entries[1].seq).await.unwrap(),
            2
        );
        assert_eq!(handle.waiting().await.unwrap(), 1);
        writer.stop().await;
        assert!(matches!(handle.waiting().await, Err(SpoolError::Stopped)));
        let late = handle.append(vec![entry(1, 9)]).await;
        assert!(matches!(late.await, Ok(Err(SpoolError::Stopped))));
    }
}
