//! Instructions queued for devices that are offline, delivered at their next login.
//!
//! A device may hold at most [`MAX_PENDING_PER_DEVICE`] instructions: the queue is for a few
//! commands waiting for a login, not a mailbox that grows without bound. Ids grow with queue
//! order, so a device's queue is returned oldest first. Each instruction is stored as the JSON
//! of the instruction and its queue time, the same in both modes.
//!
//! Single-node mode keeps them in the node's redb database (table `offline`, key (imei, id)),
//! so a queued instruction survives a restart; ids come from one durable counter, and a range
//! scan over one IMEI returns its instructions in order. Every login asks for its device's
//! queue, and almost every answer is "nothing": an in-memory index of the IMEIs that have
//! something queued (loaded from the table at start, kept in step by `enqueue` and `remove`)
//! answers those logins without a database read, which matters when thousands of devices log
//! in at once after a network outage.
//!
//! Cluster mode keeps them in the Redis all nodes share (submodule `redis`), because a device
//! may log in at any node. No node keeps an index there, since another node may enqueue at any
//! time: every login reads the device's queue from Redis.

pub(crate) mod redis;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use iothub::command::Instruction;
use iothub::imei::Imei;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::cluster::redis::Keys;
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

/// What is stored per instruction, in both modes.
#[derive(Serialize, Deserialize)]
struct StoredInstruction {
    instruction: Instruction,
    queued_at_ms: i64,
}

/// The stored form of an instruction queued now.
fn encode_stored(instruction: Instruction, queued_at_ms: i64) -> Result<Vec<u8>, OfflineError> {
    serde_json::to_vec(&StoredInstruction {
        instruction,
        queued_at_ms,
    })
    .map_err(|e| OfflineError::Store(e.to_string()))
}

/// A stored instruction read back; `None` (with a warning) when it cannot be decoded, because
/// a damaged entry must not hide the others. It stays until removed.
fn decode_stored(imei: Imei, id: u64, bytes: &[u8]) -> Option<QueuedInstruction> {
    match serde_json::from_slice::<StoredInstruction>(bytes) {
        Ok(s) => Some(QueuedInstruction {
            id,
            imei,
            instruction: s.instruction,
            queued_at_ms: s.queued_at_ms,
        }),
        Err(e) => {
            tracing::warn!(imei = %imei, id, error = %e, "undecodable offline instruction skipped");
            None
        }
    }
}

/// Cheap clonable handle to the offline instruction store of either mode.
#[derive(Clone)]
pub struct OfflineCommands {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(Embedded),
    Redis(redis::RedisQueues),
}

impl OfflineCommands {
    /// The offline store inside the node's embedded database (single-node mode).
    pub fn open(storage: Arc<Storage>) -> OfflineCommands {
        OfflineCommands {
            backend: Backend::Embedded(Embedded::open(storage)),
        }
    }

    /// The offline store in the cluster's shared Redis (cluster mode).
    pub fn redis(pool: crate::cluster::redis::Pool, keys: Keys) -> OfflineCommands {
        OfflineCommands {
            backend: Backend::Redis(redis::RedisQueues::new(pool, keys)),
        }
    }

    /// Durably queues an instruction; returns its id.
    pub async fn enqueue(&self, imei: Imei, instruction: Instruction) -> Result<u64, OfflineError> {
        let queued_at_ms = chrono::Utc::now().timestamp_millis();
        let id = match &self.backend {
            Backend::Embedded(store) => store.enqueue(imei, instruction, queued_at_ms).await?,
            Backend::Redis(store) => store.enqueue(imei, instruction, queued_at_ms).await?,
        };
        metrics::counter!("iothub_offline_enqueued_total").increment(1);
        Ok(id)
    }

    /// Queued instructions of a device, oldest first.
    pub async fn pending(&self, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
        match &self.backend {
            Backend::Embedded(store) => store.pending(imei).await,
            Backend::Redis(store) => store.pending(imei).await,
        }
    }

    /// Removes an instruction once the device answered it (or it was given up).
    /// Removing an id that is not queued is not an error (it may have been removed already).
    pub async fn remove(&self, imei: Imei, id: u64) -> Result<(), OfflineError> {
        match &self.backend {
            Backend::Embedded(store) => store.remove(imei, id).await,
            Backend::Redis(store) => store.remove(imei, id).await,
        }
    }
}

/// The redb store of single-node mode with its index of devices that have something queued.
#[derive(Clone)]
struct Embedded {
    storage: Arc<Storage>,
    /// IMEIs with at least one queued instruction; `None` when the table could not be read
    /// at start, and then every lookup goes to the store.
    queued: Arc<Mutex<Option<HashSet<Imei>>>>,
}

impl Embedded {
    fn open(storage: Arc<Storage>) -> Embedded {
        let queued = match queued_imeis(&storage) {
            Ok(set) => Some(set),
            Err(e) => {
                tracing::warn!(error = %e, "offline instruction index not loaded; every login will read the store");
                None
            }
        };
        Embedded {
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

    async fn enqueue(
        &self,
        imei: Imei,
        instruction: Instruction,
        queued_at_ms: i64,
    ) -> Result<u64, OfflineError> {
        let storage = self.storage.clone();
        let id = blocking(move || {
            match enqueue_blocking(&storage, imei, instruction, queued_at_ms) {
                // A device's full queue says nothing about the store.
                Err(OfflineError::Full(limit)) => Err(OfflineError::Full(limit)),
                queued => storage.observe(queued),
            }
        })
        .await?;
        self.mark(imei, true);
        Ok(id)
    }

    async fn pending(&self, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
        if !self.may_have_queued(imei) {
            return Ok(Vec::new());
        }
        let storage = self.storage.clone();
        blocking(move || storage.observe(pending_blocking(&storage, imei))).await
    }

    async fn remove(&self, imei: Imei, id: u64) -> Result<(), OfflineError> {
        let storage = self.storage.clone();
        let left = blocking(move || {
            storage.observe((|| -> Result<bool, OfflineError> {
                let txn = storage.db()?.begin_write().map_err(StoreError::from)?;
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
            })())
        })
        .await?;
        self.mark(imei, left);
        Ok(())
    }
}

/// Every IMEI with a queued instruction (read once, at start).
fn queued_imeis(storage: &Storage) -> Result<HashSet<Imei>, OfflineError> {
    let txn = storage.db()?.begin_read().map_err(StoreError::from)?;
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
    let value = encode_stored(instruction, queued_at_ms)?;
    let txn = storage.db()?.begin_write().map_err(StoreError::from)?;
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
    Ok(id)
}

fn pending_blocking(storage: &Storage, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
    let txn = storage.db()?.begin_read().map_err(StoreError::from)?;
    let table = txn.open_table(OFFLINE).map_err(StoreError::from)?;
    let key = imei.as_str();
    let mut out = Vec::new();
    for entry in table
        .range((key, 0)..=(key, u64::MAX))
        .map_err(StoreError::from)?
    {
        let (k, v) = entry.map_err(StoreError::from)?;
        let (_, id) = k.value();
        out.extend(decode_stored(imei, id, v.value()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The behaviour every caller relies on, checked on both backends: the embedded store in a
    //! temporary directory and Redis under a key prefix of its own.

    use super::*;
    use crate::cluster::redis::testing;
    use crate::config::StorageConfig;

    fn instruction(n: u32) -> Instruction {
        Instruction {
            pro_no: 128,
            content: format!("STATUS#{n}"),
            server_flag_id: n,
        }
    }

    fn imei(n: u64) -> Imei {
        Imei::parse(&format!("8692470600{n:05}")).expect("valid imei")
    }

    fn embedded(dir: &std::path::Path) -> OfflineCommands {
        let config = StorageConfig {
            data_dir: dir.to_path_buf(),
            retention: std::time::Duration::from_secs(3600),
            commit_interval: std::time::Duration::ZERO,
        };
        OfflineCommands::open(Storage::open(&config).expect("open storage"))
    }

    async fn queue_keeps_order(store: &OfflineCommands) {
        let device = imei(1);
        assert!(store.pending(device).await.expect("pending").is_empty());
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(
                store
                    .enqueue(device, instruction(n))
                    .await
                    .expect("enqueue"),
            );
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?} must grow");
        let pending = store.pending(device).await.expect("pending");
        let flags: Vec<u32> = pending
            .iter()
            .map(|q| q.instruction.server_flag_id)
            .collect();
        assert_eq!(flags, vec![0, 1, 2, 3, 4]);
        assert_eq!(pending.iter().map(|q| q.id).collect::<Vec<_>>(), ids);
        assert!(pending
            .iter()
            .all(|q| q.imei == device && q.queued_at_ms > 0));
        assert!(store.pending(imei(2)).await.expect("pending").is_empty());
    }

    async fn limit_refuses_one_more(store: &OfflineCommands) {
        let device = imei(3);
        for n in 0..MAX_PENDING_PER_DEVICE {
            let n = u32::try_from(n).expect("small");
            store
                .enqueue(device, instruction(n))
                .await
                .expect("enqueue");
        }
        match store.enqueue(device, instruction(999)).await {
            Err(OfflineError::Full(limit)) => assert_eq!(limit, MAX_PENDING_PER_DEVICE),
            other => panic!("the 51st instruction must be refused as Full, got {other:?}"),
        }
        assert_eq!(
            store.pending(device).await.expect("pending").len(),
            MAX_PENDING_PER_DEVICE
        );
        // Another device is not affected by this one's full queue.
        store
            .enqueue(imei(4), instruction(1))
            .await
            .expect("enqueue");
    }

    async fn remove_takes_one_out(store: &OfflineCommands) {
        let device = imei(5);
        let first = store
            .enqueue(device, instruction(1))
            .await
            .expect("enqueue");
        let second = store
            .enqueue(device, instruction(2))
            .await
            .expect("enqueue");
        store.remove(device, first).await.expect("remove");
        let pending = store.pending(device).await.expect("pending");
        assert_eq!(
            pending.iter().map(|q| q.id).collect::<Vec<_>>(),
            vec![second]
        );
        // Removing again, or an id never queued, is not an error.
        store.remove(device, first).await.expect("remove again");
        store
            .remove(device, u64::MAX)
            .await
            .expect("remove unknown");
        store.remove(device, second).await.expect("remove");
        assert!(store.pending(device).await.expect("pending").is_empty());
        // A full queue takes instructions again once one is removed.
        for n in 0..MAX_PENDING_PER_DEVICE {
            let n = u32::try_from(n).expect("small");
            store
                .enqueue(device, instruction(n))
                .await
                .expect("enqueue");
        }
        let oldest = store.pending(device).await.expect("pending")[0].id;
        store.remove(device, oldest).await.expect("remove");
        store
            .enqueue(device, instruction(77))
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn embedded_queue_keeps_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        queue_keeps_order(&embedded(dir.path())).await;
    }

    #[tokio::test]
    async fn embedded_limit_refuses_one_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        limit_refuses_one_more(&embedded(dir.path())).await;
    }

    #[tokio::test]
    async fn embedded_remove_takes_one_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        remove_takes_one_out(&embedded(dir.path())).await;
    }

    #[tokio::test]
    async fn embedded_queue_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = embedded(dir.path())
            .enqueue(imei(6), instruction(6))
            .await
            .expect("enqueue");
        // The reopened store rebuilds its index from the table, so the login finds it.
        let pending = embedded(dir.path())
            .pending(imei(6))
            .await
            .expect("pending");
        assert_eq!(pending.iter().map(|q| q.id).collect::<Vec<_>>(), vec![id]);
    }

    #[tokio::test]
    async fn redis_queue_keeps_order() {
        let redis = testing::redis().await;
        queue_keeps_order(&OfflineCommands::redis(
            redis.pool.clone(),
            redis.keys.clone(),
        ))
        .await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn redis_limit_refuses_one_more() {
        let redis = testing::redis().await;
        limit_refuses_one_more(&OfflineCommands::redis(
            redis.pool.clone(),
            redis.keys.clone(),
        ))
        .await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn redis_remove_takes_one_out() {
        let redis = testing::redis().await;
        remove_takes_one_out(&OfflineCommands::redis(
            redis.pool.clone(),
            redis.keys.clone(),
        ))
        .await;
        redis.cleanup().await;
    }
}
