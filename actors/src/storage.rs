//! The embedded store of a single node: the durable event log the Publisher appends to and the
//! PushDispatcher reads from, the push cursors, and the offline instruction queue.
//!
//! It is one redb database file in `StorageConfig::data_dir`. redb was chosen because it is a
//! pure-Rust, actively maintained, ACID embedded key-value store whose commits are fsync'd
//! (`Durability::Immediate`, its default): an event is on disk when `append` returns, which is
//! what lets a device be acknowledged. It needs no C toolchain and no separate process.
//!
//! Layout:
//! - one append-only table per [`Topic`] (`events_<name>`): key = offset (u64, dense,
//!   increasing), value = stored event (enqueue time, IMEI, record JSON bytes);
//! - `meta`: the next offset of each topic (kept explicitly, because delivered entries are
//!   deleted and the last key alone cannot tell where the log ended) and id counters;
//! - `cursors`: (topic, consumer) -> next offset that consumer has not yet delivered;
//! - `offline`: (imei, id) -> queued instruction;
//! - `jt808_auth_codes`: imei -> JT/T 808 authentication code (see `auth_codes`);
//! - `kafka_spool`: sequence (u64, increasing) -> event the Kafka sink could not produce while
//!   the brokers were unreachable, waiting to be drained (see `publish::spool`); its next
//!   sequence is kept in `meta`.
//!
//! Every function here blocks on disk I/O; async callers run them in `spawn_blocking`.
//! redb serializes write transactions, so writers from several threads are safe; the Publisher
//! batches appends into one transaction (group commit) because each commit costs an fsync.

use std::path::PathBuf;
use std::sync::Arc;

use iothub::event::Topic;
use iothub::imei::Imei;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Notify;

use crate::config::StorageConfig;

/// File name of the database inside `data_dir`.
pub const DB_FILE: &str = "iothub.redb";

pub(crate) const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");
pub(crate) const OFFLINE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("offline");

const EVENTS_EVENT: TableDefinition<u64, &[u8]> = TableDefinition::new("events_event");
const EVENTS_HB: TableDefinition<u64, &[u8]> = TableDefinition::new("events_hb");
const EVENTS_GPS: TableDefinition<u64, &[u8]> = TableDefinition::new("events_gps");
const EVENTS_ALARM: TableDefinition<u64, &[u8]> = TableDefinition::new("events_alarm");
const EVENTS_LBS: TableDefinition<u64, &[u8]> = TableDefinition::new("events_lbs");
const EVENTS_INSTRUCT: TableDefinition<u64, &[u8]> =
    TableDefinition::new("events_instruct_response");
const EVENTS_OFFLINE_CB: TableDefinition<u64, &[u8]> =
    TableDefinition::new("events_offline_cmd_callback");
const EVENTS_RESOURCE_LIST: TableDefinition<u64, &[u8]> =
    TableDefinition::new("events_resource_list");
const EVENTS_FTP_UPLOAD: TableDefinition<u64, &[u8]> =
    TableDefinition::new("events_ftp_file_upload");
const EVENTS_PASS_THROUGH: TableDefinition<u64, &[u8]> =
    TableDefinition::new("events_pass_through");

/// Meta key of the offline instruction id counter.
pub(crate) const OFFLINE_NEXT_ID: &str = "offline.next_id";

/// Events the Kafka sink spooled during an outage, by sequence (see `publish::spool`).
pub(crate) const KAFKA_SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("kafka_spool");
/// Meta key of the next sequence of [`KAFKA_SPOOL`]: kept explicitly, because drained entries
/// are deleted and an empty table cannot tell where the sequence ended.
pub(crate) const KAFKA_SPOOL_NEXT_SEQ: &str = "kafka_spool.next_seq";

fn events_table(topic: Topic) -> TableDefinition<'static, u64, &'static [u8]> {
    match topic {
        Topic::Event => EVENTS_EVENT,
        Topic::Heartbeat => EVENTS_HB,
        Topic::Gps => EVENTS_GPS,
        Topic::Alarm => EVENTS_ALARM,
        Topic::Lbs => EVENTS_LBS,
        Topic::InstructResponse => EVENTS_INSTRUCT,
        Topic::OfflineCommandCallback => EVENTS_OFFLINE_CB,
        Topic::ResourceList => EVENTS_RESOURCE_LIST,
        Topic::FtpFileUpload => EVENTS_FTP_UPLOAD,
        Topic::PassThrough => EVENTS_PASS_THROUGH,
    }
}

fn next_offset_key(topic: Topic) -> &'static str {
    match topic {
        Topic::Event => "next.event",
        Topic::Heartbeat => "next.hb",
        Topic::Gps => "next.gps",
        Topic::Alarm => "next.alarm",
        Topic::Lbs => "next.lbs",
        Topic::InstructResponse => "next.instruct_response",
        Topic::OfflineCommandCallback => "next.offline_cmd_callback",
        Topic::ResourceList => "next.resource_list",
        Topic::FtpFileUpload => "next.ftp_file_upload",
        Topic::PassThrough => "next.pass_through",
    }
}

fn topic_index(topic: Topic) -> usize {
    Topic::ALL.iter().position(|t| *t == topic).unwrap_or(0)
}

/// The store failed (I/O, corruption, lock). Carries redb's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

macro_rules! store_error_from {
    ($($t:ty),*) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError(e.to_string())
            }
        })*
    };
}
store_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One event to append: its topic, device and record JSON (as produced by `Event::to_json`).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: Topic,
    pub imei: Imei,
    pub json: Vec<u8>,
}

/// One event read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub offset: u64,
    pub imei: Imei,
    /// Unix milliseconds when the Publisher made it durable.
    pub enqueued_ms: i64,
    /// The record JSON, byte for byte as published.
    pub json: Vec<u8>,
}

/// Value layout: enqueue time (i64 big-endian) | IMEI length (u8) | IMEI digits | JSON.
fn encode_value(enqueued_ms: i64, imei: &Imei, json: &[u8]) -> Vec<u8> {
    let digits = imei.as_str().as_bytes();
    let mut v = Vec::with_capacity(9 + digits.len() + json.len());
    v.extend_from_slice(&enqueued_ms.to_be_bytes());
    // An Imei has at most 20 digits, so its length fits a byte.
    v.push(digits.len() as u8);
    v.extend_from_slice(digits);
    v.extend_from_slice(json);
    v
}

fn decode_value(offset: u64, v: &[u8]) -> Option<StoredEvent> {
    let time: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let len = usize::from(*v.get(8)?);
    let digits = v.get(9..9 + len)?;
    let imei = Imei::parse(std::str::from_utf8(digits).ok()?).ok()?;
    let json = v.get(9 + len..)?.to_vec();
    Some(StoredEvent {
        offset,
        imei,
        enqueued_ms: i64::from_be_bytes(time),
        json,
    })
}

/// Handle to the embedded database, shared by the Publisher, the PushDispatcher and the
/// offline instruction store.
pub struct Storage {
    db: Database,
    path: PathBuf,
    /// One wake-up per topic: the Publisher signals after each commit, the topic's delivery
    /// loop waits on it instead of polling. `notify_one` keeps a permit when nobody waits, so a
    /// commit between a read and the wait is not missed.
    notify: [Notify; Topic::ALL.len()],
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

impl Storage {
    /// Opens (or creates) `data_dir/iothub.redb` and its tables.
    pub fn open(config: &StorageConfig) -> anyhow::Result<Arc<Storage>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "storage.data_dir: cannot create {}",
                config.data_dir.display()
            )
        })?;
        let path = config.data_dir.join(DB_FILE);
        let db = Database::create(&path)
            .with_context(|| format!("storage.data_dir: cannot open {}", path.display()))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(META_TABLE)?;
            txn.open_table(CURSORS)?;
            txn.open_table(OFFLINE)?;
            txn.open_table(crate::auth_codes::AUTH_CODES)?;
            txn.open_table(KAFKA_SPOOL)?;
            for topic in Topic::ALL {
                txn.open_table(events_table(topic))?;
            }
        }
        txn.commit()?;
        Ok(Arc::new(Storage {
            db,
            path,
            notify: std::array::from_fn(|_| Notify::new()),
        }))
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// The wake-up signalled after events of `topic` were committed.
    pub fn notifier(&self, topic: Topic) -> &Notify {
        &self.notify[topic_index(topic)]
    }

    /// Appends events in one durable transaction and wakes the readers of their topics.
    /// Within a topic the events get consecutive offsets in the given order.
    pub fn append(&self, events: &[NewEvent], now_ms: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut touched = [false; Topic::ALL.len()];
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META_TABLE)?;
            let mut next: [Option<u64>; Topic::ALL.len()] = [None; Topic::ALL.len()];
            let mut tables: [Option<redb::Table<u64, &[u8]>>; Topic::ALL.len()] =
                std::array::from_fn(|_| None);
            for e in events {
                let i = topic_index(e.topic);
                let offset = match next[i] {
                    Some(o) => o,
                    None => meta
                        .get(next_offset_key(e.topic))?
                        .map(|g| g.value())
                        .unwrap_or(0),
                };
                let table = match &mut tables[i] {
                    Some(t) => t,
                    slot => slot.insert(txn.open_table(events_table(e.topic))?),
                };
                table.insert(offset, encode_value(now_ms, &e.imei, &e.json).as_slice())?;
                next[i] = Some(offset + 1);
                touched[i] = true;
            }
            for (i, n) in next.iter().enumerate() {
                if let Some(n) = n {
                    meta.insert(next_offset_key(Topic::ALL[i]), *n)?;
                }
            }
        }
        txn.commit()?;
        for (i, t) in touched.iter().enumerate() {
            if *t {
                self.notify[i].notify_one();
            }
        }
        Ok(())
    }

    /// Up to `max` events of `topic` with offset >= `from`, in offset order.
    /// Entries that cannot be decoded (corruption) are skipped: a reader must not stall on them.
    pub fn read(
        &self,
        topic: Topic,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(events_table(topic))?;
        let mut out = Vec::with_capacity(max.min(1024));
        for entry in table.range(from..)?.take(max) {
            let (k, v) = entry?;
            match decode_value(k.value(), v.value()) {
                Some(e) => out.push(e),
                None => {
                    tracing::warn!(
                        topic = topic.name(),
                        offset = k.value(),
                        "undecodable log entry skipped"
                    );
                    metrics::counter!("iothub_log_corrupt_entries_total", "topic" => topic.name())
                        .increment(1);
                }
            }
        }
        Ok(out)
    }

    /// The offset the next appended event of `topic` will get.
    pub fn next_offset(&self, topic: Topic) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META_TABLE)?;
        Ok(meta
            .get(next_offset_key(topic))?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// The first offset `consumer` has not delivered yet (0 for a new consumer).
    pub fn cursor(&self, topic: Topic, consumer: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let cursors = txn.open_table(CURSORS)?;
        Ok(cursors
            .get((topic.name(), consumer))?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// Records that `consumer` delivered everything below `next`, and deletes those entries
    /// from the log in the same transaction. The log has one consumer per topic (the push
    /// dispatcher), so what it delivered is no longer needed.
    pub fn advance_cursor(
        &self,
        topic: Topic,
        consumer: &str,
        next: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut cursors = txn.open_table(CURSORS)?;
            cursors.insert((topic.name(), consumer), next)?;
            let mut table = txn.open_table(events_table(topic))?;
            table.retain_in(..next, |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes, from the front of every topic, entries enqueued before `cutoff_ms` (the
    /// retention limit), whether delivered or not. Returns how many were deleted per topic.
    pub fn prune_older_than(&self, cutoff_ms: i64) -> Result<Vec<(Topic, u64)>, StoreError> {
        let mut deleted = Vec::new();
        let txn = self.db.begin_write()?;
        {
            for topic in Topic::ALL {
                let mut table = txn.open_table(events_table(topic))?;
                // Offsets are assigned in commit order, so enqueue times grow with the key:
                // the expired entries are a prefix of the table.
                let mut end = None;
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    let expired = match decode_value(k.value(), v.value()) {
                        Some(e) => e.enqueued_ms < cutoff_ms,
                        None => true,
                    };
                    if !expired {
                        break;
                    }
                    end = Some(k.value());
                }
                if let Some(end) = end {
                    let first = table.first()?.map(|(k, _)| k.value()).unwrap_or(end);
                    table.retain_in(..=end, |_, _| false)?;
                    deleted.push((topic, end - first + 1));
                }
            }
        }
        txn.commit()?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trip() {
        let imei = Imei::parse("864717003283581").unwrap();
        let v = encode_value(1_700_000_000_123, &imei, br#"{"a":1}"#);
        let e = decode_value(7, &v).unwrap();
        assert_eq!(e.imei, imei);
        assert_eq!(e.enqueued_ms, 1_700_000_000_123);
        assert_eq!(e.json, br#"{"a":1}"#);
        assert_eq!(e.offset, 7);
    }

    #[test]
    fn truncated_value_is_rejected() {
        let imei = Imei::parse("864717003283581").unwrap();
        let v = encode_value(1, &imei, b"{}");
        assert!(decode_value(0, &v[..12]).is_none());
        assert!(decode_value(0, &[]).is_none());
    }
}
