//! The embedded store of a single node: the durable event log the Publisher appends to and the
//! PushDispatcher reads from, the push cursors, and the offline instruction queue.
//!
//! It is one redb database file in `StorageConfig::data_dir`. redb was chosen because it is a
//! pure-Rust, actively maintained, ACID embedded key-value store whose commits are fsync'd
//! (`Durability::Immediate`, its default): an event is on disk when `append` returns, which is
//! what lets a device be acknowledged. It needs no C toolchain and no separate process.
//!
//! Layout:
//! - one append-only table per [`Topic`] (`log_<name>`): one entry per commit, key = offset of
//!   its first event (offsets are per event, dense, increasing), value = the enqueue time and
//!   the commit's events of that topic (IMEI, record JSON bytes) in offset order; a commit of
//!   more than [`MAX_ENTRY_EVENTS`] events or [`MAX_ENTRY_BYTES`] bytes of a topic is stored as
//!   several entries, so a read that starts inside an entry walks a bounded part of it. Databases of
//!   the one-event-per-entry layout (`events_<name>`) are moved over when opened;
//! - `meta`: the next offset of each topic (kept explicitly, because delivered entries are
//!   deleted and the last key alone cannot tell where the log ended) and id counters;
//! - `cursors`: (topic, consumer) -> next offset that consumer has not yet delivered;
//! - `offline`: (imei, id) -> queued instruction;
//! - `jt808_auth_codes`: imei -> JT/T 808 authentication code (see `auth_codes`);
//! - `kafka_spool`: sequence (u64, increasing) -> event the Kafka sink could not produce while
//!   the brokers were unreachable, waiting to be drained (see `publish::spool`); its next
//!   sequence is kept in `meta`;
//! - `dead_letters`: sequence (u64, increasing) -> a record the customer's endpoint refused
//!   for good (see `push`), kept with its topic, device, enqueue time and the refusal, until
//!   `iothubd dead-letters replay` queues it again; its next sequence is kept in `meta`;
//! - `kafka_parked`: sequence -> spooled event Kafka refused for good, kept for replay
//!   (`iothubd replay-parked`); its next sequence is kept in `meta`.
//!
//! After an I/O error (a full disk, a failing device) redb refuses every later operation until
//! the database is opened again. Every user reports its store errors ([`Storage::observe`]);
//! a recovery thread then checks the database with a write of a megabyte (deleted right
//! after) and, if that fails, marks the storage down (`/ready` answers 503, appends fail at
//! once, devices get no ack), drops the database, and opens it again with backoff until that
//! write succeeds. Reopening replays redb's recovery from the last durable commit, so
//! everything acknowledged is still there. The process keeps running meanwhile: its
//! connections, its push cursors and the events queued in memory without an acknowledgement
//! are worth more than what a restart would clear.
//!
//! Every function here blocks on disk I/O; async callers run them in `spawn_blocking`.
//! redb serializes write transactions, so writers from several threads are safe; the Publisher
//! batches appends into one transaction (group commit) because each commit costs an fsync.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use iothub::event::Topic;
use iothub::imei::Imei;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use tokio::sync::Notify;

use crate::config::StorageConfig;
use crate::health::{self, Health};

/// File name of the database inside `data_dir`.
pub const DB_FILE: &str = "iothub.redb";

pub(crate) const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");
pub(crate) const OFFLINE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("offline");

const LOG_EVENT: TableDefinition<u64, &[u8]> = TableDefinition::new("log_event");
const LOG_HB: TableDefinition<u64, &[u8]> = TableDefinition::new("log_hb");
const LOG_GPS: TableDefinition<u64, &[u8]> = TableDefinition::new("log_gps");
const LOG_ALARM: TableDefinition<u64, &[u8]> = TableDefinition::new("log_alarm");
const LOG_LBS: TableDefinition<u64, &[u8]> = TableDefinition::new("log_lbs");
const LOG_INSTRUCT: TableDefinition<u64, &[u8]> = TableDefinition::new("log_instruct_response");
const LOG_OFFLINE_CB: TableDefinition<u64, &[u8]> =
    TableDefinition::new("log_offline_cmd_callback");
const LOG_RESOURCE_LIST: TableDefinition<u64, &[u8]> = TableDefinition::new("log_resource_list");
const LOG_FTP_UPLOAD: TableDefinition<u64, &[u8]> = TableDefinition::new("log_ftp_file_upload");
const LOG_PASS_THROUGH: TableDefinition<u64, &[u8]> = TableDefinition::new("log_pass_through");
const LOG_IOTHUB_EVENT: TableDefinition<u64, &[u8]> = TableDefinition::new("log_iothub_event");

/// Records the customer refused for good, by sequence (see [`DeadLetter`]).
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// Meta key of the next sequence of [`DEAD_LETTERS`].
const DEAD_LETTERS_NEXT_SEQ: &str = "dead_letters.next_seq";

/// Where the recovery thread writes to find out whether the database takes writes.
const PROBE_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("storage_probe");
/// Bytes the recovery thread's write takes (and gives back right after): the storage is up
/// again only with this much room, so that a disk with a few pages left does not flap between
/// up and down with every small commit.
const PROBE_BYTES: usize = 1 << 20;
/// Name of the storage in `/ready` and in `iothub_sink_up{sink}`.
pub const HEALTH_PART: &str = "storage";
/// First wait between two attempts to open the database again; doubles up to
/// [`MAX_REOPEN_BACKOFF`].
const MIN_REOPEN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);
/// How long a reopen waits for the callers still holding the old database to let go of it.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Meta key of the offline instruction id counter.
pub(crate) const OFFLINE_NEXT_ID: &str = "offline.next_id";

/// Events the Kafka sink spooled during an outage, by sequence (see `publish::spool`).
pub(crate) const KAFKA_SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("kafka_spool");
/// Meta key of the next sequence of [`KAFKA_SPOOL`]: kept explicitly, because drained entries
/// are deleted and an empty table cannot tell where the sequence ended.
pub(crate) const KAFKA_SPOOL_NEXT_SEQ: &str = "kafka_spool.next_seq";
/// Spooled events Kafka refused for good after their device was acknowledged, kept for an
/// operator to replay (see `publish::spool`); same layout as [`KAFKA_SPOOL`].
pub(crate) const KAFKA_PARKED: TableDefinition<u64, &[u8]> = TableDefinition::new("kafka_parked");
/// Meta key of the next sequence of [`KAFKA_PARKED`].
pub(crate) const KAFKA_PARKED_NEXT_SEQ: &str = "kafka_parked.next_seq";

fn log_table(topic: Topic) -> TableDefinition<'static, u64, &'static [u8]> {
    match topic {
        Topic::Event => LOG_EVENT,
        Topic::Heartbeat => LOG_HB,
        Topic::Gps => LOG_GPS,
        Topic::Alarm => LOG_ALARM,
        Topic::Lbs => LOG_LBS,
        Topic::InstructResponse => LOG_INSTRUCT,
        Topic::OfflineCommandCallback => LOG_OFFLINE_CB,
        Topic::ResourceList => LOG_RESOURCE_LIST,
        Topic::FtpFileUpload => LOG_FTP_UPLOAD,
        Topic::PassThrough => LOG_PASS_THROUGH,
        Topic::IothubEvent => LOG_IOTHUB_EVENT,
    }
}

/// The table of `topic` in the layout before log entries held several events
/// (`events_<name>`: one event per entry), read once at open to move its entries over.
fn legacy_events_table(topic: Topic) -> TableDefinition<'static, u64, &'static [u8]> {
    match topic {
        Topic::Event => TableDefinition::new("events_event"),
        Topic::Heartbeat => TableDefinition::new("events_hb"),
        Topic::Gps => TableDefinition::new("events_gps"),
        Topic::Alarm => TableDefinition::new("events_alarm"),
        Topic::Lbs => TableDefinition::new("events_lbs"),
        Topic::InstructResponse => TableDefinition::new("events_instruct_response"),
        Topic::OfflineCommandCallback => TableDefinition::new("events_offline_cmd_callback"),
        Topic::ResourceList => TableDefinition::new("events_resource_list"),
        Topic::FtpFileUpload => TableDefinition::new("events_ftp_file_upload"),
        Topic::PassThrough => TableDefinition::new("events_pass_through"),
        Topic::IothubEvent => TableDefinition::new("events_iothub_event"),
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
        Topic::IothubEvent => "next.iothub_event",
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

/// Most events in one log entry. A read starts at the entry holding its cursor and checks and
/// walks that entry from its start, so this bounds the work a read does beyond the events it
/// returns, whatever the size of the commit; at 512 a full commit of 16,384 events is 32
/// inserts instead of one, which costs the writer little.
pub const MAX_ENTRY_EVENTS: usize = 512;
/// Most bytes of events in one log entry (an event larger than this gets an entry of its own).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Events by topic, as (device, JSON), each topic's in the given order.
type ByTopic<'a> = [Vec<(&'a Imei, &'a [u8])>; Topic::ALL.len()];

fn by_topic(events: &[NewEvent]) -> ByTopic<'_> {
    let mut by_topic: ByTopic<'_> = std::array::from_fn(|_| Vec::new());
    for e in events {
        by_topic[topic_index(e.topic)].push((&e.imei, e.json.as_slice()));
    }
    by_topic
}

/// Appends each topic's events at the end of its log, in entries of bounded size, inside
/// `txn`; the caller commits.
fn append_to_logs(
    txn: &redb::WriteTransaction,
    by_topic: &ByTopic<'_>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META_TABLE)?;
    for (group, topic) in by_topic.iter().zip(Topic::ALL) {
        if group.is_empty() {
            continue;
        }
        let mut next = meta
            .get(next_offset_key(topic))?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut table = txn.open_table(log_table(topic))?;
        for chunk in entry_chunks(group) {
            let entry = encode_entry(now_ms, chunk)?;
            table.insert(next, entry.as_slice())?;
            next += chunk.len() as u64;
        }
        meta.insert(next_offset_key(topic), next)?;
    }
    Ok(())
}

/// The commit's events of one topic cut into entries of at most [`MAX_ENTRY_EVENTS`] events
/// and [`MAX_ENTRY_BYTES`] bytes, in order.
fn entry_chunks<'a, 'b>(
    group: &'b [(&'a Imei, &'a [u8])],
) -> impl Iterator<Item = &'b [(&'a Imei, &'a [u8])]> {
    let mut rest = group;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let mut n = 0;
        for (_, json) in rest.iter().take(MAX_ENTRY_EVENTS) {
            bytes += json.len();
            if n > 0 && bytes > MAX_ENTRY_BYTES {
                break;
            }
            n += 1;
        }
        let (chunk, next) = rest.split_at(n);
        rest = next;
        Some(chunk)
    })
}

/// A record the customer's endpoint refused for good, set aside so its topic keeps moving.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub seq: u64,
    pub topic: Topic,
    pub imei: Imei,
    /// Unix milliseconds when the hub first made the event durable.
    pub enqueued_ms: i64,
    /// The refusal, as the push loop saw it (`HTTP status 413`).
    pub reason: String,
    pub json: Vec<u8>,
}

/// Dead letter layout: topic name length (u8) | topic name | IMEI length (u8) | IMEI digits |
/// enqueue time (i64 big-endian) | reason length (u16 big-endian) | reason | JSON.
fn encode_dead_letter(
    topic: Topic,
    imei: &Imei,
    enqueued_ms: i64,
    reason: &str,
    json: &[u8],
) -> Vec<u8> {
    let name = topic.name().as_bytes();
    let digits = imei.as_str().as_bytes();
    let reason = &reason.as_bytes()[..reason.len().min(1024)];
    let mut v = Vec::with_capacity(2 + name.len() + digits.len() + 10 + reason.len() + json.len());
    // Topic names and IMEIs are short; the reason is cut to 1 KiB above.
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.push(digits.len() as u8);
    v.extend_from_slice(digits);
    v.extend_from_slice(&enqueued_ms.to_be_bytes());
    v.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    v.extend_from_slice(reason);
    v.extend_from_slice(json);
    v
}

fn decode_dead_letter(seq: u64, v: &[u8]) -> Option<DeadLetter> {
    let name_len = usize::from(*v.first()?);
    let name = std::str::from_utf8(v.get(1..1 + name_len)?).ok()?;
    let topic = Topic::ALL.into_iter().find(|t| t.name() == name)?;
    let mut at = 1 + name_len;
    let digits_len = usize::from(*v.get(at)?);
    let imei = parse_imei(v.get(at + 1..at + 1 + digits_len)?)?;
    at += 1 + digits_len;
    let time: [u8; 8] = v.get(at..at + 8)?.try_into().ok()?;
    at += 8;
    let reason_len: [u8; 2] = v.get(at..at + 2)?.try_into().ok()?;
    at += 2;
    let reason_end = at + usize::from(u16::from_be_bytes(reason_len));
    let reason = String::from_utf8_lossy(v.get(at..reason_end)?).into_owned();
    Some(DeadLetter {
        seq,
        topic,
        imei,
        enqueued_ms: i64::from_be_bytes(time),
        reason,
        json: v.get(reason_end..)?.to_vec(),
    })
}

/// Bytes before the first event of a log entry: enqueue time (i64) and event count (u32).
const ENTRY_HEADER: usize = 12;
/// The smallest event in an entry: IMEI length, one digit, JSON length.
const MIN_EVENT_BYTES: usize = 6;

/// Log entry layout, one entry per commit and topic, keyed by the offset of its first event:
/// enqueue time (i64 big-endian) | event count (u32 big-endian) | per event: IMEI length (u8) |
/// IMEI digits | JSON length (u32 big-endian) | JSON.
///
/// One entry per commit rather than one per event because the writer's cost was the B-tree:
/// an insert per event, each touching leaf and branch pages, against a single insert of the
/// same bytes.
fn encode_entry(enqueued_ms: i64, events: &[(&Imei, &[u8])]) -> Result<Vec<u8>, StoreError> {
    let count = u32::try_from(events.len())
        .map_err(|_| StoreError(format!("{} events in one commit", events.len())))?;
    let size = ENTRY_HEADER
        + events
            .iter()
            .map(|(imei, json)| 5 + imei.as_str().len() + json.len())
            .sum::<usize>();
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&enqueued_ms.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    for (imei, json) in events {
        let digits = imei.as_str().as_bytes();
        let json_len = u32::try_from(json.len())
            .map_err(|_| StoreError(format!("event JSON of {} bytes", json.len())))?;
        // An Imei has at most 20 digits, so its length fits a byte.
        v.push(digits.len() as u8);
        v.extend_from_slice(digits);
        v.extend_from_slice(&json_len.to_be_bytes());
        v.extend_from_slice(json);
    }
    Ok(v)
}

/// A log entry whose structure was checked: its events fill `body` exactly.
struct Entry<'a> {
    enqueued_ms: i64,
    body: &'a [u8],
}

/// The first event of `bytes`: (IMEI digits, JSON, what follows), or None if cut short.
fn split_event(bytes: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let digits_len = usize::from(*bytes.first()?);
    let digits = bytes.get(1..1 + digits_len)?;
    let len_at = 1 + digits_len;
    let json_len: [u8; 4] = bytes.get(len_at..len_at + 4)?.try_into().ok()?;
    let json_at = len_at + 4;
    let json_end = json_at.checked_add(u32::from_be_bytes(json_len) as usize)?;
    let json = bytes.get(json_at..json_end)?;
    Some((digits, json, &bytes[json_end..]))
}

/// The header of an entry: (enqueue time, event count), without walking its events.
fn entry_header(v: &[u8]) -> Option<(i64, u64)> {
    let time: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let count: [u8; 4] = v.get(8..ENTRY_HEADER)?.try_into().ok()?;
    Some((
        i64::from_be_bytes(time),
        u64::from(u32::from_be_bytes(count)),
    ))
}

fn parse_entry(v: &[u8]) -> Option<Entry<'_>> {
    let (enqueued_ms, count) = entry_header(v)?;
    let body = &v[ENTRY_HEADER..];
    // The count comes from disk: it must fit the bytes before anything trusts it.
    if count > (body.len() / MIN_EVENT_BYTES) as u64 {
        return None;
    }
    let mut rest = body;
    for _ in 0..count {
        rest = split_event(rest)?.2;
    }
    rest.is_empty().then_some(Entry { enqueued_ms, body })
}

impl<'a> Entry<'a> {
    /// (IMEI digits, JSON) of each event, in offset order.
    fn events(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let mut rest = self.body;
        std::iter::from_fn(move || {
            let (digits, json, next) = split_event(rest)?;
            rest = next;
            Some((digits, json))
        })
    }
}

fn parse_imei(digits: &[u8]) -> Option<Imei> {
    Imei::parse(std::str::from_utf8(digits).ok()?).ok()
}

/// A value of the layout before log entries held several events: enqueue time (i64
/// big-endian) | IMEI length (u8) | IMEI digits | JSON.
fn decode_legacy_value(v: &[u8]) -> Option<(i64, Imei, &[u8])> {
    let time: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let len = usize::from(*v.get(8)?);
    let imei = parse_imei(v.get(9..9 + len)?)?;
    Some((i64::from_be_bytes(time), imei, v.get(9 + len..)?))
}

fn count_corrupt_entry(topic: Topic, offset: u64) {
    tracing::warn!(
        topic = topic.name(),
        offset,
        "undecodable log entry skipped"
    );
    metrics::counter!("iothub_log_corrupt_entries_total", "topic" => topic.name()).increment(1);
}

/// Handle to the embedded database, shared by the Publisher, the PushDispatcher and the
/// offline instruction store.
pub struct Storage {
    /// `None` while the recovery thread opens the database again: every operation fails.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// One wake-up per topic: the Publisher signals after each commit, the topic's delivery
    /// loop waits on it instead of polling. `notify_one` keeps a permit when nobody waits, so a
    /// commit between a read and the wait is not missed.
    notify: [Notify; Topic::ALL.len()],
    health: Health,
    recovery: Arc<RecoveryCall>,
}

/// How users call the recovery thread: an operation failed, or the storage is gone.
#[derive(Default)]
struct RecoveryCall {
    state: Mutex<Calls>,
    wake: Condvar,
}

#[derive(Default)]
struct Calls {
    /// An operation failed: check the database.
    suspect: bool,
    /// The storage was dropped: stop.
    closed: bool,
}

impl RecoveryCall {
    fn call(&self, set: impl FnOnce(&mut Calls)) {
        set(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_one();
    }

    /// Waits for a call; false when the storage is gone.
    fn wait_for_suspect(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self
            .wake
            .wait_while(state, |c| !c.suspect && !c.closed)
            .unwrap_or_else(PoisonError::into_inner);
        state.suspect = false;
        !state.closed
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.recovery.call(|c| c.closed = true);
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

impl Storage {
    /// Opens (or creates) `data_dir/iothub.redb` and its tables, reporting to a health of
    /// its own.
    pub fn open(config: &StorageConfig) -> anyhow::Result<Arc<Storage>> {
        Storage::open_reporting(config, Health::default())
    }

    /// Opens (or creates) `data_dir/iothub.redb` and its tables, and starts the thread that
    /// opens it again after an I/O error; the storage's state goes to `health`.
    pub fn open_reporting(config: &StorageConfig, health: Health) -> anyhow::Result<Arc<Storage>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "storage.data_dir: cannot create {}",
                config.data_dir.display()
            )
        })?;
        let path = config.data_dir.join(DB_FILE);
        let db = open_database(&path)
            .with_context(|| format!("storage.data_dir: cannot open {}", path.display()))?;
        health::set_sink_up(&health, HEALTH_PART, true);
        let storage = Arc::new(Storage {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            notify: std::array::from_fn(|_| Notify::new()),
            health,
            recovery: Arc::default(),
        });
        let (weak, calls) = (Arc::downgrade(&storage), storage.recovery.clone());
        std::thread::Builder::new()
            .name("iothub-storage-recovery".into())
            .spawn(move || recovery_loop(weak, &calls))?;
        Ok(storage)
    }

    /// The database, or an error while it is being opened again.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError("storage unavailable: reopening after an I/O error".into()))
    }

    /// Passes `result` on; an error makes the recovery thread check the database. Every
    /// user of [`Storage::db`] reports its outcome here.
    pub(crate) fn observe<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            metrics::counter!("iothub_storage_errors_total").increment(1);
            self.recovery.call(|c| c.suspect = true);
        }
        result
    }

    /// The node's health this storage reports to; the sinks and tasks built on it report
    /// there too.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// False from a failed check of the database until a write succeeds again.
    pub fn is_up(&self) -> bool {
        !self.health.is_down(HEALTH_PART)
    }

    /// The wake-up signalled after events of `topic` were committed.
    pub fn notifier(&self, topic: Topic) -> &Notify {
        &self.notify[topic_index(topic)]
    }

    /// Appends events in one durable transaction and wakes the readers of their topics.
    /// Within a topic the events get consecutive offsets in the given order; they are stored
    /// as one log entry per topic.
    pub fn append(&self, events: &[NewEvent], now_ms: i64) -> Result<(), StoreError> {
        // Down: nothing is acknowledged until the recovery thread's write succeeds, so that
        // devices and `/ready` see the same state.
        if !self.is_up() {
            return Err(StoreError("storage down after an I/O error".into()));
        }
        self.observe((|| -> Result<(), StoreError> {
            if events.is_empty() {
                return Ok(());
            }
            let by_topic = by_topic(events);
            let txn = self.db()?.begin_write()?;
            append_to_logs(&txn, &by_topic, now_ms)?;
            txn.commit()?;
            for (group, notify) in by_topic.iter().zip(&self.notify) {
                if !group.is_empty() {
                    notify.notify_one();
                }
            }
            Ok(())
        })())
    }

    /// Up to `max` events of `topic` with offset >= `from`, in offset order.
    /// Entries that cannot be decoded (corruption) are skipped: a reader must not stall on them.
    pub fn read(
        &self,
        topic: Topic,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.observe((|| -> Result<Vec<StoredEvent>, StoreError> {
            let txn = self.db()?.begin_read()?;
            let table = txn.open_table(log_table(topic))?;
            let mut out = Vec::with_capacity(max.min(1024));
            if max == 0 {
                return Ok(out);
            }
            // The entry holding `from` may start before it.
            let start = match table.range(..=from)?.next_back() {
                Some(entry) => entry?.0.value(),
                None => from,
            };
            for entry in table.range(start..)? {
                let (k, v) = entry?;
                let first = k.value();
                let Some(parsed) = parse_entry(v.value()) else {
                    count_corrupt_entry(topic, first);
                    continue;
                };
                for (offset, (digits, json)) in (first..).zip(parsed.events()) {
                    if offset < from {
                        continue;
                    }
                    let Some(imei) = parse_imei(digits) else {
                        count_corrupt_entry(topic, offset);
                        continue;
                    };
                    out.push(StoredEvent {
                        offset,
                        imei,
                        enqueued_ms: parsed.enqueued_ms,
                        json: json.to_vec(),
                    });
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })())
    }

    /// The offset the next appended event of `topic` will get.
    pub fn next_offset(&self, topic: Topic) -> Result<u64, StoreError> {
        self.observe((|| -> Result<u64, StoreError> {
            let txn = self.db()?.begin_read()?;
            let meta = txn.open_table(META_TABLE)?;
            Ok(meta
                .get(next_offset_key(topic))?
                .map(|g| g.value())
                .unwrap_or(0))
        })())
    }

    /// The first offset `consumer` has not delivered yet (0 for a new consumer).
    pub fn cursor(&self, topic: Topic, consumer: &str) -> Result<u64, StoreError> {
        self.observe((|| -> Result<u64, StoreError> {
            let txn = self.db()?.begin_read()?;
            let cursors = txn.open_table(CURSORS)?;
            Ok(cursors
                .get((topic.name(), consumer))?
                .map(|g| g.value())
                .unwrap_or(0))
        })())
    }

    /// Records that `consumer` delivered everything below `next`, and deletes the entries
    /// whose events are all below it in the same transaction. The log has one consumer per
    /// topic (the push dispatcher), so what it delivered is no longer needed. An entry that
    /// `next` falls inside stays until the rest of it is delivered; reads skip its front.
    pub fn advance_cursor(
        &self,
        topic: Topic,
        consumer: &str,
        next: u64,
    ) -> Result<(), StoreError> {
        self.observe((|| -> Result<(), StoreError> {
            let txn = self.db()?.begin_write()?;
            {
                let mut cursors = txn.open_table(CURSORS)?;
                cursors.insert((topic.name(), consumer), next)?;
                let mut table = txn.open_table(log_table(topic))?;
                table.retain_in(..next, |first, v| {
                    entry_header(v).is_some_and(|(_, count)| first.saturating_add(count) > next)
                })?;
            }
            txn.commit()?;
            Ok(())
        })())
    }

    /// Sets records the customer refused for good aside, in one durable transaction:
    /// (device, enqueue time, JSON) each, with the refusal. Returns how many are stored now.
    /// Refuses them all, storing nothing, when the store would then hold more than `max`.
    pub fn add_dead_letters(
        &self,
        topic: Topic,
        records: &[(Imei, i64, &[u8])],
        reason: &str,
        max: u64,
    ) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_write()?;
        let stored = {
            let mut meta = txn.open_table(META_TABLE)?;
            let mut table = txn.open_table(DEAD_LETTERS)?;
            if table.len()?.saturating_add(records.len() as u64) > max {
                return Err(StoreError(format!(
                    "the dead-letter store holds its most, {max} records (push.dead_letter_max)"
                )));
            }
            let mut next = meta
                .get(DEAD_LETTERS_NEXT_SEQ)?
                .map(|g| g.value())
                .unwrap_or(0);
            for (imei, enqueued_ms, json) in records {
                let v = encode_dead_letter(topic, imei, *enqueued_ms, reason, json);
                table.insert(next, v.as_slice())?;
                next += 1;
            }
            meta.insert(DEAD_LETTERS_NEXT_SEQ, next)?;
            table.len()?
        };
        txn.commit()?;
        Ok(stored)
    }

    /// How many dead letters are stored.
    pub fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(txn.open_table(DEAD_LETTERS)?.len()?)
    }

    /// Up to `max` dead letters, oldest first. Undecodable ones are skipped and counted.
    pub fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(DEAD_LETTERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            if out.len() >= max {
                break;
            }
            let (k, v) = entry?;
            match decode_dead_letter(k.value(), v.value()) {
                Some(d) => out.push(d),
                None => tracing::warn!(seq = k.value(), "undecodable dead letter skipped"),
            }
        }
        Ok(out)
    }

    /// Deletes the dead letters with these sequences.
    pub fn delete_dead_letters(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        {
            let mut table = txn.open_table(DEAD_LETTERS)?;
            for seq in seqs {
                table.remove(*seq)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Moves up to `max` dead letters back to the end of their topics' logs, in one
    /// transaction, so the push loops deliver them again; returns how many moved.
    pub fn replay_dead_letters_to_log(&self, max: usize, now_ms: i64) -> Result<usize, StoreError> {
        let letters = self.dead_letters(max)?;
        if letters.is_empty() {
            return Ok(0);
        }
        let events: Vec<NewEvent> = letters
            .iter()
            .map(|d| NewEvent {
                topic: d.topic,
                imei: d.imei,
                json: d.json.clone(),
            })
            .collect();
        let by_topic = by_topic(&events);
        let txn = self.db()?.begin_write()?;
        append_to_logs(&txn, &by_topic, now_ms)?;
        {
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            for d in &letters {
                dead.remove(d.seq)?;
            }
        }
        txn.commit()?;
        for (group, notify) in by_topic.iter().zip(&self.notify) {
            if !group.is_empty() {
                notify.notify_one();
            }
        }
        Ok(letters.len())
    }

    /// Deletes, from the front of every topic, entries enqueued before `cutoff_ms` (the
    /// retention limit), whether delivered or not. Returns per topic how many of the deleted
    /// events no consumer had delivered.
    pub fn prune_older_than(&self, cutoff_ms: i64) -> Result<Vec<(Topic, u64)>, StoreError> {
        self.observe((|| -> Result<Vec<(Topic, u64)>, StoreError> {
            let mut deleted = Vec::new();
            let txn = self.db()?.begin_write()?;
            {
                let cursors = txn.open_table(CURSORS)?;
                for topic in Topic::ALL {
                    let delivered = slowest_cursor(&cursors, topic)?;
                    let mut table = txn.open_table(log_table(topic))?;
                    // Offsets are assigned in commit order, so enqueue times grow with the key:
                    // the expired entries are a prefix of the table.
                    let mut end = None;
                    let mut undelivered = 0;
                    for entry in table.iter()? {
                        let (k, v) = entry?;
                        let first = k.value();
                        let (expired, count) = match entry_header(v.value()) {
                            Some((enqueued_ms, count)) => (enqueued_ms < cutoff_ms, count),
                            None => (true, 0),
                        };
                        if !expired {
                            break;
                        }
                        undelivered += (first + count).saturating_sub(first.max(delivered));
                        end = Some(first);
                    }
                    if let Some(end) = end {
                        table.retain_in(..=end, |_, _| false)?;
                        if undelivered > 0 {
                            deleted.push((topic, undelivered));
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(deleted)
        })())
    }
}

/// The lowest position any consumer of `topic` has reached (0 when it has none).
fn slowest_cursor(
    cursors: &redb::Table<(&str, &str), u64>,
    topic: Topic,
) -> Result<u64, StoreError> {
    let mut slowest: Option<u64> = None;
    for entry in cursors.range((topic.name(), "")..)? {
        let (k, v) = entry?;
        if k.value().0 != topic.name() {
            break;
        }
        slowest = Some(slowest.map_or(v.value(), |s| s.min(v.value())));
    }
    Ok(slowest.unwrap_or(0))
}

/// Opens (or creates) the database at `path` with every table, its layout up to date.
fn open_database(path: &std::path::Path) -> Result<Database, StoreError> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(META_TABLE)?;
        txn.open_table(CURSORS)?;
        txn.open_table(OFFLINE)?;
        txn.open_table(crate::auth_codes::AUTH_CODES)?;
        txn.open_table(KAFKA_SPOOL)?;
        txn.open_table(DEAD_LETTERS)?;
        txn.open_table(KAFKA_PARKED)?;
        for topic in Topic::ALL {
            txn.open_table(log_table(topic))?;
        }
    }
    migrate_legacy_tables(&txn)?;
    txn.commit()?;
    Ok(db)
}

/// Whether `db` takes a durable write of [`PROBE_BYTES`] now. The bytes are deleted in a
/// second commit, which leaves their pages free in the file for the log.
fn probe(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(PROBE_TABLE)?;
        table.insert("headroom", vec![0u8; PROBE_BYTES].as_slice())?;
    }
    txn.commit()?;
    let txn = db.begin_write()?;
    txn.delete_table(PROBE_TABLE)?;
    txn.commit()?;
    Ok(())
}

/// The recovery thread: waits for a reported error, checks the database with a write, and
/// while that fails keeps the storage down and opens the database again with backoff. Ends
/// when the storage is dropped.
fn recovery_loop(storage: Weak<Storage>, calls: &RecoveryCall) {
    while calls.wait_for_suspect() {
        let Some(mut s) = storage.upgrade() else {
            return;
        };
        let checked = s.db().and_then(|db| probe(&db));
        let Err(e) = checked else { continue };
        tracing::error!(path = %s.path.display(), error = %e, "storage failed a write, reopening it; devices are not acknowledged meanwhile");
        health::set_sink_up(&s.health, HEALTH_PART, false);
        let mut backoff = MIN_REOPEN_BACKOFF;
        loop {
            match reopen(&s) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(path = %s.path.display(), error = %e, retry_in = ?backoff, "storage still failing");
                }
            }
            drop(s);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
            let Some(again) = storage.upgrade() else {
                return;
            };
            s = again;
        }
        health::set_sink_up(&s.health, HEALTH_PART, true);
        tracing::info!(path = %s.path.display(), "storage reopened and writable again");
    }
}

/// Drops the database (redb takes a file only once, and refuses every operation after an
/// I/O error until it is opened again), opens it again and checks it takes a write.
fn reopen(storage: &Storage) -> Result<(), StoreError> {
    let old = storage
        .db
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(mut old) = old {
        // Callers that took the database before it was taken out finish their operation
        // (which fails) and let go of it.
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(still_held) if std::time::Instant::now() < deadline => {
                    old = still_held;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(still_held) => {
                    *storage.db.write().unwrap_or_else(PoisonError::into_inner) = Some(still_held);
                    return Err(StoreError("database still in use, not reopened".into()));
                }
            }
        }
    }
    let db = open_database(&storage.path)?;
    metrics::counter!("iothub_storage_reopens_total").increment(1);
    let checked = probe(&db);
    *storage.db.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
    checked
}

/// Moves the entries of the one-event-per-entry layout (`events_<name>` tables) into the log
/// tables, each as an entry of one event under its own offset, and drops the old tables. Runs
/// inside the open transaction, so a crash leaves either layout whole.
fn migrate_legacy_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    for topic in Topic::ALL {
        let legacy = legacy_events_table(topic);
        if !names.iter().any(|n| n == legacy.name()) {
            continue;
        }
        let (mut moved, mut dropped) = (0u64, 0u64);
        {
            let old = txn.open_table(legacy)?;
            let mut log = txn.open_table(log_table(topic))?;
            for entry in old.iter()? {
                let (k, v) = entry?;
                match decode_legacy_value(v.value()) {
                    Some((enqueued_ms, imei, json)) => {
                        let entry = encode_entry(enqueued_ms, &[(&imei, json)])?;
                        log.insert(k.value(), entry.as_slice())?;
                        moved += 1;
                    }
                    None => dropped += 1,
                }
            }
        }
        txn.delete_table(legacy)?;
        tracing::info!(
            topic = topic.name(),
            moved,
            dropped,
            "event log moved to the entry-per-commit layout"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const IMEI_A: &str = "864717003283581";
    const IMEI_B: &str = "356307042441013";

    fn open(dir: &tempfile::TempDir) -> Arc<Storage> {
        Storage::open(&StorageConfig {
            data_dir: dir.path().to_path_buf(),
            retention: Duration::from_secs(3600),
            commit_interval: Duration::ZERO,
        })
        .unwrap()
    }

    fn gps(imei: &str, n: u32) -> NewEvent {
        NewEvent {
            topic: Topic::Gps,
            imei: Imei::parse(imei).unwrap(),
            json: format!(r#"{{"n":{n}}}"#).into_bytes(),
        }
    }

    /// Offsets 0..10 in one entry enqueued at `first_ms`, 10..20 in one at `second_ms`.
    fn two_commits_of_ten(storage: &Storage, first_ms: i64, second_ms: i64) {
        let batch: Vec<NewEvent> = (0..10).map(|n| gps(IMEI_A, n)).collect();
        storage.append(&batch, first_ms).unwrap();
        storage.append(&batch, second_ms).unwrap();
    }

    fn offsets(events: &[StoredEvent]) -> Vec<u64> {
        events.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn a_reopened_database_keeps_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        storage.append(&[gps(IMEI_A, 1)], 1_000).unwrap();
        reopen(&storage).unwrap();
        assert_eq!(offsets(&storage.read(Topic::Gps, 0, 10).unwrap()), vec![0]);
    }

    #[test]
    fn a_reopened_database_takes_appends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        reopen(&storage).unwrap();
        storage.append(&[gps(IMEI_A, 1)], 1_000).unwrap();
        assert_eq!(storage.next_offset(Topic::Gps).unwrap(), 1);
    }

    #[test]
    fn a_reopen_waits_for_a_caller_still_holding_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let held = storage.db().unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        assert!(reopen(&storage).is_ok());
        holder.join().unwrap();
    }

    #[test]
    fn a_database_held_past_the_wait_stays_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let _held = storage.db().unwrap();
        assert!(reopen(&storage).is_err());
        assert_eq!(storage.next_offset(Topic::Gps).unwrap(), 0);
    }

    #[test]
    fn a_failed_operation_leaves_a_healthy_database_up() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let _ = storage.observe(Err::<(), _>(StoreError("not an I/O error".into())));
        // The recovery thread's write succeeds: the storage stays up and appends go on.
        std::thread::sleep(Duration::from_millis(200));
        assert!(storage.is_up());
    }

    #[test]
    fn entry_round_trip() {
        let (a, b) = (Imei::parse(IMEI_A).unwrap(), Imei::parse(IMEI_B).unwrap());
        let v = encode_entry(1_700_000_000_123, &[(&a, br#"{"a":1}"#), (&b, b"{}")]).unwrap();
        let entry = parse_entry(&v).unwrap();
        assert_eq!(entry.enqueued_ms, 1_700_000_000_123);
        let events: Vec<_> = entry.events().collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], (IMEI_A.as_bytes(), &br#"{"a":1}"#[..]));
        assert_eq!(events[1], (IMEI_B.as_bytes(), &b"{}"[..]));
    }

    #[test]
    fn truncated_entry_is_rejected() {
        let a = Imei::parse(IMEI_A).unwrap();
        let v = encode_entry(1, &[(&a, b"{}"), (&a, b"{}")]).unwrap();
        assert!(parse_entry(&v[..v.len() - 1]).is_none());
        assert!(parse_entry(&v[..ENTRY_HEADER]).is_none());
        assert!(parse_entry(&[]).is_none());
    }

    #[test]
    fn entry_with_trailing_bytes_is_rejected() {
        let a = Imei::parse(IMEI_A).unwrap();
        let mut v = encode_entry(1, &[(&a, b"{}")]).unwrap();
        v.push(0);
        assert!(parse_entry(&v).is_none());
    }

    #[test]
    fn entry_count_larger_than_its_bytes_is_rejected_before_walking() {
        let mut v = 1i64.to_be_bytes().to_vec();
        v.extend_from_slice(&u32::MAX.to_be_bytes());
        v.extend_from_slice(&[0; 12]);
        assert!(parse_entry(&v).is_none());
    }

    #[test]
    fn one_commit_is_one_entry_per_topic() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let mut events: Vec<NewEvent> = (0..5).map(|n| gps(IMEI_A, n)).collect();
        events.push(NewEvent {
            topic: Topic::Heartbeat,
            imei: Imei::parse(IMEI_B).unwrap(),
            json: b"{}".to_vec(),
        });
        storage.append(&events, 1).unwrap();
        let txn = storage.db().unwrap().begin_read().unwrap();
        assert_eq!(txn.open_table(LOG_GPS).unwrap().len().unwrap(), 1);
        assert_eq!(txn.open_table(LOG_HB).unwrap().len().unwrap(), 1);
    }

    /// (first offset, event count) of every entry of the GPS log.
    fn gps_entries(storage: &Storage) -> Vec<(u64, u64)> {
        let txn = storage.db().unwrap().begin_read().unwrap();
        let table = txn.open_table(LOG_GPS).unwrap();
        table
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), entry_header(v.value()).unwrap().1)
            })
            .collect()
    }

    #[test]
    fn a_huge_commit_is_stored_as_entries_of_at_most_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let events: Vec<NewEvent> = (0..100_000).map(|n| gps(IMEI_A, n)).collect();
        storage.append(&events, 1).unwrap();
        let largest = gps_entries(&storage).iter().map(|e| e.1).max().unwrap();
        assert_eq!(largest, MAX_ENTRY_EVENTS as u64);
    }

    #[test]
    fn the_entries_of_a_huge_commit_hold_every_offset_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let events: Vec<NewEvent> = (0..100_000).map(|n| gps(IMEI_A, n)).collect();
        storage.append(&events, 1).unwrap();
        let mut expected_first = 0;
        for (first, count) in gps_entries(&storage) {
            assert_eq!(first, expected_first);
            expected_first += count;
        }
        assert_eq!(expected_first, 100_000);
    }

    #[test]
    fn read_from_the_middle_of_a_huge_commit() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let events: Vec<NewEvent> = (0..100_000).map(|n| gps(IMEI_A, n)).collect();
        storage.append(&events, 1).unwrap();
        let read = storage.read(Topic::Gps, 50_001, 3).unwrap();
        assert_eq!(offsets(&read), [50_001, 50_002, 50_003]);
        assert_eq!(read[0].json, br#"{"n":50001}"#);
    }

    #[test]
    fn large_events_are_cut_into_entries_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let big = |n: u32| NewEvent {
            json: format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(MAX_ENTRY_BYTES / 3))
                .into_bytes(),
            ..gps(IMEI_A, n)
        };
        let events: Vec<NewEvent> = (0..7).map(big).collect();
        storage.append(&events, 1).unwrap();
        let counts: Vec<u64> = gps_entries(&storage).iter().map(|e| e.1).collect();
        assert_eq!(counts, [2, 2, 2, 1]);
    }

    #[test]
    fn a_dead_letter_reads_back_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let imei = Imei::parse(IMEI_A).unwrap();
        let stored = storage
            .add_dead_letters(
                Topic::Alarm,
                &[(imei, 42, br#"{"a":1}"#)],
                "HTTP status 413",
                10,
            )
            .unwrap();
        assert_eq!(stored, 1);
        let dead = storage.dead_letters(10).unwrap();
        assert_eq!(
            dead,
            [DeadLetter {
                seq: 0,
                topic: Topic::Alarm,
                imei,
                enqueued_ms: 42,
                reason: "HTTP status 413".into(),
                json: br#"{"a":1}"#.to_vec(),
            }]
        );
    }

    #[test]
    fn a_full_dead_letter_store_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let imei = Imei::parse(IMEI_A).unwrap();
        let two = [(imei, 1, &b"{}"[..]), (imei, 2, &b"{}"[..])];
        storage
            .add_dead_letters(Topic::Gps, &two, "HTTP status 400", 3)
            .unwrap();
        assert!(storage
            .add_dead_letters(Topic::Gps, &two, "HTTP status 400", 3)
            .is_err());
        assert_eq!(storage.dead_letter_count().unwrap(), 2);
    }

    #[test]
    fn replayed_dead_letters_go_to_the_end_of_their_log() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        storage
            .append(&[gps(IMEI_A, 0), gps(IMEI_A, 1)], 1)
            .unwrap();
        let imei = Imei::parse(IMEI_B).unwrap();
        storage
            .add_dead_letters(
                Topic::Gps,
                &[(imei, 5, br#"{"n":9}"#)],
                "HTTP status 400",
                10,
            )
            .unwrap();
        assert_eq!(storage.replay_dead_letters_to_log(100, 7).unwrap(), 1);
        let read = storage.read(Topic::Gps, 2, 10).unwrap();
        assert_eq!(
            (read[0].offset, read[0].json.as_slice()),
            (2, &br#"{"n":9}"#[..])
        );
        assert_eq!(storage.dead_letter_count().unwrap(), 0);
    }

    #[test]
    fn offsets_run_on_across_commits() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        storage
            .append(&[gps(IMEI_A, 0), gps(IMEI_A, 1)], 1)
            .unwrap();
        storage.append(&[gps(IMEI_B, 2)], 2).unwrap();
        let read = storage.read(Topic::Gps, 0, 10).unwrap();
        assert_eq!(offsets(&read), [0, 1, 2]);
        assert_eq!(read[2].imei.as_str(), IMEI_B);
        assert_eq!(read[2].json, br#"{"n":2}"#);
        assert_eq!(read[2].enqueued_ms, 2);
        assert_eq!(storage.next_offset(Topic::Gps).unwrap(), 3);
    }

    #[test]
    fn read_starts_inside_an_entry_and_stops_at_max() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        two_commits_of_ten(&storage, 1, 2);
        assert_eq!(
            offsets(&storage.read(Topic::Gps, 7, 5).unwrap()),
            [7, 8, 9, 10, 11]
        );
        assert_eq!(storage.read(Topic::Gps, 19, 5).unwrap().len(), 1);
        assert!(storage.read(Topic::Gps, 20, 5).unwrap().is_empty());
    }

    #[test]
    fn advance_keeps_the_entry_the_cursor_falls_inside() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        two_commits_of_ten(&storage, 1, 2);
        storage.advance_cursor(Topic::Gps, "push", 15).unwrap();
        let txn = storage.db().unwrap().begin_read().unwrap();
        assert_eq!(txn.open_table(LOG_GPS).unwrap().len().unwrap(), 1);
        assert_eq!(storage.read(Topic::Gps, 15, 100).unwrap()[0].offset, 15);
        assert_eq!(storage.cursor(Topic::Gps, "push").unwrap(), 15);
    }

    #[test]
    fn advance_past_an_entry_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        storage
            .append(&[gps(IMEI_A, 0), gps(IMEI_A, 1)], 1)
            .unwrap();
        storage.advance_cursor(Topic::Gps, "push", 2).unwrap();
        let txn = storage.db().unwrap().begin_read().unwrap();
        assert!(txn.open_table(LOG_GPS).unwrap().is_empty().unwrap());
    }

    #[test]
    fn prune_counts_only_undelivered_events() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        two_commits_of_ten(&storage, 100, 200);
        storage.advance_cursor(Topic::Gps, "push", 4).unwrap();
        assert_eq!(
            storage.prune_older_than(150).unwrap(),
            [(Topic::Gps, 6)],
            "offsets 4..10 expired undelivered"
        );
        assert_eq!(offsets(&storage.read(Topic::Gps, 0, 1).unwrap()), [10]);
    }

    #[test]
    fn undecodable_entry_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        storage.append(&[gps(IMEI_A, 0)], 1).unwrap();
        storage.append(&[gps(IMEI_A, 1)], 2).unwrap();
        let txn = storage.db().unwrap().begin_write().unwrap();
        txn.open_table(LOG_GPS)
            .unwrap()
            .insert(0, &b"garbage"[..])
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(offsets(&storage.read(Topic::Gps, 0, 10).unwrap()), [1]);
    }

    #[test]
    fn log_of_the_one_event_per_entry_layout_is_moved_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let imei = Imei::parse(IMEI_A).unwrap();
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut old = txn.open_table(legacy_events_table(Topic::Gps)).unwrap();
                for (offset, json) in [(41u64, &b"{\"n\":41}"[..]), (42, b"{\"n\":42}")] {
                    let mut v = 1_700_000_000_000i64.to_be_bytes().to_vec();
                    v.push(IMEI_A.len() as u8);
                    v.extend_from_slice(IMEI_A.as_bytes());
                    v.extend_from_slice(json);
                    old.insert(offset, v.as_slice()).unwrap();
                }
                txn.open_table(META_TABLE)
                    .unwrap()
                    .insert(next_offset_key(Topic::Gps), 43)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let storage = open(&dir);
        let read = storage.read(Topic::Gps, 0, 10).unwrap();
        assert_eq!(offsets(&read), [41, 42]);
        assert_eq!(read[1].imei, imei);
        assert_eq!(read[1].json, b"{\"n\":42}");
        assert_eq!(read[1].enqueued_ms, 1_700_000_000_000);
        storage.append(&[gps(IMEI_A, 43)], 1).unwrap();
        assert_eq!(storage.read(Topic::Gps, 43, 10).unwrap()[0].offset, 43);
        let txn = storage.db().unwrap().begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "events_gps"), "{names:?}");
    }
}
