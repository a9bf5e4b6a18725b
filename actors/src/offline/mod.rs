//! Instructions queued for devices that are offline, delivered at their next login.
//!
//! Embedded mode keeps them in the node's redb database (table `offline`, key (imei, id),
//! value = JSON of the instruction and its queue time), so a queued instruction survives a
//! restart. Ids come from one durable counter, so they grow with queue order and a range scan
//! over one IMEI returns its instructions oldest first. A device may hold at most
//! [`MAX_PENDING_PER_DEVICE`] instructions: the queue is for a few commands waiting for a
//! login, not a mailbox that grows without bound.
//!
//! Every login asks for its device's queue, and almost every answer is "nothing". An
//! in-memory index of the IMEIs that have something queued (loaded from the table at start,
//! kept in step by `enqueue` and `remove`) answers those logins without a database read,
//! which matters when thousands of devices log in at once after a network outage.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use iothub::command::Instruction;
use iothub::imei::Imei;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::storage::{Storage, StoreError, OFFLINE, OFFLINE_NEXT_ID};

/// Most instructions queued for one device; one more is refused with [`OfflineError::Full`].
pub const MAX_PENDING_PER_DEVICE: usize = 50;

/// One queued instruction with its store id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedInstruction {
    pub id: u64,
    pub imei: Imei,
    pub instruction: Instruction,
    /// Unix milliseconds when it was queued.
    pub queued_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("offline store failed: {0}")]
    Store(String),
    #[error("too many queued instructions for this device (limit {0})")]
    Full(usize),
}

impl From<StoreError> for OfflineError {
    fn from(e: StoreError) -> Self {
        OfflineError::Store(e.0)
    }
}

/// What is stored per instruction.
#[derive(Serialize, Deserialize)]
struct StoredInstruction {
    instruction: Instruction,
    queued_at_ms: i64,
}

/// Cheap clonable handle to the offline instruction store.
#[derive(Clone)]
pub struct OfflineCommands {
    storage: Arc<Storage>,
    /// IMEIs with at least one queued instruction; `None` when the table could not be read
    /// at start, and then every lookup goes to the store.
    queued: Arc<Mutex<Option<HashSet<Imei>>>>,
}

impl OfflineCommands {
    /// The offline store inside the node's embedded database.
    pub fn open(storage: Arc<Storage>) -> OfflineCommands {
        let queued = match queued_imeis(&storage) {
            Ok(set) => Some(set),
            Err(e) => {
                tracing::warn!(error = %e, "offline instruction index not loaded; every login will read the store");
                None
            }
        };
        OfflineCommands {
            storage,
            queued: Arc::new(Mutex::new(queued)),
        }
    }

    /// False only when the index knows the device has nothing queued.
    fn may_have_queued(&self, imei: Imei) -> bool {
        match self.queued.lock() {
            Ok(guard) => guard.as_ref().is_none_or(|set| set.contains(&imei)),
            Err(_) => true,
        }
    }

    fn mark(&self, imei: Imei, has_queued: bool) {
        if let Ok(mut guard) = self.queued.lock() {
            if let Some(set) = guard.as_mut() {
                if has_queued {
                    set.insert(imei);
                } else {
                    set.remove(&imei);
                }
            }
        }
    }

    /// Durably queues an instruction; returns its id.
    pub async fn enqueue(&self, imei: Imei, instruction: Instruction) -> Result<u64, OfflineError> {
        let storage = self.storage.clone();
        let queued_at_ms = chrono::Utc::now().timestamp_millis();
        let id =
            blocking(move || enqueue_blocking(&storage, imei, instruction, queued_at_ms)).await?;
        self.mark(imei, true);
        Ok(id)
    }

    /// Queued instructions of a device, oldest first.
    pub async fn pending(&self, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
        if !self.may_have_queued(imei) {
            return Ok(Vec::new());
        }
        let storage = self.storage.clone();
        blocking(move || pending_blocking(&storage, imei)).await
    }

    /// Removes an instruction once the device answered it (or it was given up).
    /// Removing an id that is not queued is not an error (it may have been removed already).
    pub async fn remove(&self, imei: Imei, id: u64) -> Result<(), OfflineError> {
        let storage = self.storage.clone();
        let left = blocking(move || {
            let txn = storage.db().begin_write().map_err(StoreError::from)?;
            let left = {
                let mut table = txn.open_table(OFFLINE).map_err(StoreError::from)?;
                table
                    .remove((imei.as_str(), id))
                    .map_err(StoreError::from)?;
                let key = imei.as_str();
                let left = table
                    .range((key, 0)..=(key, u64::MAX))
                    .map_err(StoreError::from)?
                    .next()
                    .is_some();
                left
            };
            txn.commit().map_err(StoreError::from)?;
            Ok(left)
        })
        .await?;
        self.mark(imei, left);
        Ok(())
    }
}

/// Every IMEI with a queued instruction (read once, at start).
fn queued_imeis(storage: &Storage) -> Result<HashSet<Imei>, OfflineError> {
    let txn = storage.db().begin_read().map_err(StoreError::from)?;
    let table = txn.open_table(OFFLINE).map_err(StoreError::from)?;
    let mut set = HashSet::new();
    for entry in table.iter().map_err(StoreError::from)? {
        let (k, _) = entry.map_err(StoreError::from)?;
        let (imei, _) = k.value();
        if let Ok(imei) = Imei::parse(imei) {
            set.insert(imei);
        }
    }
    Ok(set)
}

/// Runs a store operation off the async threads (redb blocks on disk I/O and fsync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OfflineError> + Send + 'static,
) -> Result<T, OfflineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OfflineError::Store(format!("store task failed: {e}")))?
}

fn enqueue_blocking(
    storage: &Storage,
    imei: Imei,
    instruction: Instruction,
    queued_at_ms: i64,
) -> Result<u64, OfflineError> {
    let value = serde_json::to_vec(&StoredInstruction {
        instruction,
        queued_at_ms,
    })
    .map_err(|e| OfflineError::Store(e.to_string()))?;
    let txn = storage.db().begin_write().map_err(StoreError::from)?;
    let id = {
        let mut table = txn.open_table(OFFLINE).map_err(StoreError::from)?;
        let key = imei.as_str();
        let queued = table
            .range((key, 0)..=(key, u64::MAX))
            .map_err(StoreError::from)?
            .count();
        if queued >= MAX_PENDING_PER_DEVICE {
            return Err(OfflineError::Full(MAX_PENDING_PER_DEVICE));
        }
        let mut meta = txn
            .open_table(crate::storage::META_TABLE)
            .map_err(StoreError::from)?;
        let id = meta
            .get(OFFLINE_NEXT_ID)
            .map_err(StoreError::from)?
            .map(|g| g.value())
            .unwrap_or(1);
        meta.insert(OFFLINE_NEXT_ID, id + 1)
            .map_err(StoreError::from)?;
        table
            .insert((key, id), value.as_slice())
            .map_err(StoreError::from)?;
        id
    };
    txn.commit().map_err(StoreError::from)?;
    metrics::counter!("iothub_offline_enqueued_total").increment(1);
    Ok(id)
}

fn pending_blocking(storage: &Storage, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
    let txn = storage.db().begin_read().map_err(StoreError::from)?;
    let table = txn.open_table(OFFLINE).map_err(StoreError::from)?;
    let key = imei.as_str();
    let mut out = Vec::new();
    for entry in table
        .range((key, 0)..=(key, u64::MAX))
        .map_err(StoreError::from)?
    {
        let (k, v) = entry.map_err(StoreError::from)?;
        let (_, id) = k.value();
        match serde_json::from_slice::<StoredInstruction>(v.value()) {
            Ok(s) => out.push(QueuedInstruction {
                id,
                imei,
                instruction: s.instruction,
                queued_at_ms: s.queued_at_ms,
            }),
            Err(e) => {
                // A damaged entry must not hide the others; it stays until removed.
                tracing::warn!(imei = %imei, id, error = %e, "undecodable offline instruction skipped");
            }
        }
    }
    Ok(out)
}
