//! The offline instruction queues of cluster mode, in the Redis all nodes share, so an
//! instruction queued through any node reaches the device at whichever node it logs in.
//!
//! Layout (key names from [`Keys`]):
//! - `offline-next-id`: the counter every id comes from (`INCR`), so ids grow in queue order
//!   across the whole cluster;
//! - `offline:{imei}`: one hash per device, field = id in decimal, value = the same JSON the
//!   embedded store keeps (instruction and queue time). `pending` reads it with one `HGETALL`
//!   and sorts by id; a device with nothing queued has no key, the common and cheap answer.
//!
//! The per-device limit is checked and the instruction written by one Lua script (`HLEN`, then
//! `HSET`), so two nodes enqueuing for one device at once cannot pass the limit together. The
//! id is taken before, by a separate `INCR`: every command then touches one key, and an id
//! spent on a refused instruction only leaves a gap.
//!
//! Every failure to talk to Redis becomes an [`OfflineError::Store`] that names Redis and the
//! cause, and is counted in `iothub_redis_errors_total{op}`. Nothing waits long: the pool gives
//! up on a connection after its timeouts and each command after the client's response timeout.
//! The JT/T 808 authentication codes and the cluster routes use the same failure reporting
//! (`cluster::redis::report_failure`).

use std::sync::Arc;

use crate::cluster::redis::{Connection, Pool};
use deadpool_redis::redis::{AsyncCommands, Script};
use iothub::command::Instruction;
use iothub::imei::Imei;

use super::{
    decode_stored, encode_stored, OfflineError, QueuedInstruction, MAX_PENDING_PER_DEVICE,
};
use crate::cluster::redis::{report_failure, Keys, RedisCause};

/// Writes one instruction unless its device already holds the limit; 1 = written, 0 = full.
/// KEYS[1] = the device's hash; ARGV = id, stored instruction, limit.
const ENQUEUE_SCRIPT: &str = r"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Cheap clonable handle to the offline queues in Redis.
#[derive(Clone)]
pub(crate) struct RedisQueues {
    pool: Pool,
    keys: Keys,
    /// Compiled once; redis-rs sends its SHA (`EVALSHA`) and loads it on a Redis that lacks it.
    enqueue_script: Arc<Script>,
}

impl RedisQueues {
    pub(crate) fn new(pool: Pool, keys: Keys) -> RedisQueues {
        RedisQueues {
            pool,
            keys,
            enqueue_script: Arc::new(Script::new(ENQUEUE_SCRIPT)),
        }
    }

    async fn connection(&self) -> Result<Connection, RedisCause> {
        Ok(self.pool.get().await?)
    }

    pub(crate) async fn enqueue(
        &self,
        imei: Imei,
        instruction: Instruction,
        queued_at_ms: i64,
    ) -> Result<u64, OfflineError> {
        let value = encode_stored(instruction, queued_at_ms)?;
        match self.try_enqueue(imei, &value).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(OfflineError::Full(MAX_PENDING_PER_DEVICE)),
            Err(e) => Err(OfflineError::Store(report_failure("offline_enqueue", e))),
        }
    }

    /// The new id, or `None` when the device's queue is full.
    async fn try_enqueue(&self, imei: Imei, value: &[u8]) -> Result<Option<u64>, RedisCause> {
        let mut conn = self.connection().await?;
        let id: i64 = conn.incr(self.keys.offline_next_id(), 1).await?;
        let id = u64::try_from(id)
            .map_err(|_| RedisCause::Unexpected(format!("offline id counter at {id}")))?;
        let written: i64 = self
            .enqueue_script
            .key(self.keys.offline(imei))
            .arg(id)
            .arg(value)
            .arg(MAX_PENDING_PER_DEVICE)
            .invoke_async(&mut conn)
            .await?;
        Ok((written == 1).then_some(id))
    }

    pub(crate) async fn pending(&self, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
        self.try_pending(imei)
            .await
            .map_err(|e| OfflineError::Store(report_failure("offline_pending", e)))
    }

    async fn try_pending(&self, imei: Imei) -> Result<Vec<QueuedInstruction>, RedisCause> {
        let mut conn = self.connection().await?;
        let entries: Vec<(String, Vec<u8>)> = conn.hgetall(self.keys.offline(imei)).await?;
        let mut queued: Vec<QueuedInstruction> = entries
            .into_iter()
            .filter_map(|(field, value)| match field.parse::<u64>() {
                Ok(id) => decode_stored(imei, id, &value),
                Err(_) => {
                    tracing::warn!(%imei, field, "offline instruction with a non-numeric id skipped");
                    None
                }
            })
            .collect();
        queued.sort_unstable_by_key(|q| q.id);
        Ok(queued)
    }

    pub(crate) async fn remove(&self, imei: Imei, id: u64) -> Result<(), OfflineError> {
        self.try_remove(imei, id)
            .await
            .map_err(|e| OfflineError::Store(report_failure("offline_remove", e)))
    }

    async fn try_remove(&self, imei: Imei, id: u64) -> Result<(), RedisCause> {
        let mut conn = self.connection().await?;
        // HDEL answers how many fields it removed; 0 (already gone) is fine.
        let _removed: i64 = conn.hdel(self.keys.offline(imei), id).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::redis::testing;
    use crate::offline::OfflineCommands;

    fn instruction(n: u32) -> Instruction {
        Instruction {
            pro_no: 128,
            content: format!("STATUS#{n}"),
            server_flag_id: n,
        }
    }

    fn imei() -> Imei {
        Imei::parse("869247060001762").expect("valid imei")
    }

    #[tokio::test]
    async fn two_nodes_share_one_queue() {
        let redis = testing::redis().await;
        let (pool, keys) = redis.other_node();
        let node_a = OfflineCommands::redis(redis.pool.clone(), redis.keys.clone());
        let node_b = OfflineCommands::redis(pool, keys);

        let first = node_a
            .enqueue(imei(), instruction(1))
            .await
            .expect("enqueue at a");
        let second = node_b
            .enqueue(imei(), instruction(2))
            .await
            .expect("enqueue at b");
        assert!(
            first < second,
            "ids come from one counter: {first} then {second}"
        );

        // The device logs in at b and finds what was queued at a, oldest first.
        let at_b = node_b.pending(imei()).await.expect("pending at b");
        assert_eq!(
            at_b.iter()
                .map(|q| q.instruction.server_flag_id)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        // What b removes is gone at a too.
        node_b.remove(imei(), first).await.expect("remove at b");
        let at_a = node_a.pending(imei()).await.expect("pending at a");
        assert_eq!(at_a.iter().map(|q| q.id).collect::<Vec<_>>(), vec![second]);
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn nodes_enqueuing_at_once_cannot_pass_the_limit() {
        let redis = testing::redis().await;
        let (pool, keys) = redis.other_node();
        let node_a = OfflineCommands::redis(redis.pool.clone(), redis.keys.clone());
        let node_b = OfflineCommands::redis(pool, keys);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..2 * MAX_PENDING_PER_DEVICE {
            let node = if n.is_multiple_of(2) {
                node_a.clone()
            } else {
                node_b.clone()
            };
            let n = u32::try_from(n).expect("small");
            tasks.spawn(async move { node.enqueue(imei(), instruction(n)).await });
        }
        let (mut accepted, mut full) = (0, 0);
        while let Some(result) = tasks.join_next().await {
            match result.expect("task") {
                Ok(_) => accepted += 1,
                Err(OfflineError::Full(_)) => full += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(
            (accepted, full),
            (MAX_PENDING_PER_DEVICE, MAX_PENDING_PER_DEVICE)
        );
        assert_eq!(
            node_a.pending(imei()).await.expect("pending").len(),
            MAX_PENDING_PER_DEVICE
        );
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn stored_value_is_the_embedded_json() {
        let redis = testing::redis().await;
        let store = OfflineCommands::redis(redis.pool.clone(), redis.keys.clone());
        let id = store
            .enqueue(imei(), instruction(9))
            .await
            .expect("enqueue");
        let mut conn = redis.pool.get().await.expect("connection");
        let raw: Option<String> = conn
            .hget(redis.keys.offline(imei()), id)
            .await
            .expect("HGET");
        let value: serde_json::Value =
            serde_json::from_str(&raw.expect("field named by the id")).expect("json");
        assert_eq!(value["instruction"]["content"], "STATUS#9");
        assert!(value["queued_at_ms"].as_i64().is_some_and(|ms| ms > 0));
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_store_error_naming_redis() {
        let counts = testing::RedisErrorCounts::default();
        let _recorder = metrics::set_default_local_recorder(&counts);
        let (pool, keys) = testing::unreachable();
        let store = OfflineCommands::redis(pool, keys);
        let started = Instant::now();
        let results = [
            store.enqueue(imei(), instruction(1)).await.map(|_| ()),
            store.pending(imei()).await.map(|_| ()),
            store.remove(imei(), 1).await,
        ];
        for result in results {
            match result {
                Err(OfflineError::Store(message)) => assert!(
                    message.starts_with("redis: ") && message.contains("refused"),
                    "message must name Redis and the cause: {message}"
                ),
                other => panic!("expected a Store error, got {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failing took {:?}",
            started.elapsed()
        );
        for op in ["offline_enqueue", "offline_pending", "offline_remove"] {
            assert_eq!(counts.get(op), 1, "iothub_redis_errors_total{{op={op:?}}}");
        }
    }
}
