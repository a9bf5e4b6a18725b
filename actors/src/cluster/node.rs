//! A node's identity in the cluster: `{prefix}:node:{gateId}` holds the node's internal
//! address and a random per-process `instance`, with a TTL of one lease that the node renews.
//!
//! Two live processes must never share a gateId: routes name the gateId, so the second one
//! would receive the first one's instructions. At start a node takes the key only if it is
//! free, already its own, or held by a process that no longer answers at its advertised
//! address (a node killed a moment ago and restarted must not wait for its old lease to run
//! out). A live holder makes the start fail with a message naming the gateId.

use std::time::Duration;

use super::redis::Pool;
use deadpool_redis::redis::{self, Script};

use super::redis::{connection, lease_ms, Keys, RedisCause, RedisFailure};

/// Takes the key when it is free, ours, or held by `ARGV[4]` (an instance found dead).
const ACQUIRE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'instance')
if cur == false or cur == ARGV[1] or cur == ARGV[4] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'addr', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, '', ''}
end
return {0, cur, redis.call('HGET', KEYS[1], 'addr') or ''}
";

/// Extends the key while it is ours; puts it back when Redis lost it; 0 when another
/// process holds it.
const RENEW: &str = r"
local cur = redis.call('HGET', KEYS[1], 'instance')
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if cur == false then
  redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'addr', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 2
end
return 0
";

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What a start-up attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    Taken,
    /// Another process holds the gateId: its instance and advertised address.
    HeldBy {
        instance: String,
        addr: String,
    },
}

/// The Redis operations on node identities.
#[derive(Clone)]
pub struct Nodes {
    pool: Pool,
    keys: Keys,
    lease: Duration,
}

impl Nodes {
    pub fn new(pool: Pool, keys: Keys, lease: Duration) -> Nodes {
        Nodes { pool, keys, lease }
    }

    /// Takes `gate_id` for `instance` unless a process other than `dead_instance` holds it.
    pub async fn acquire(
        &self,
        gate_id: &str,
        instance: &str,
        addr: &str,
        dead_instance: &str,
    ) -> Result<Acquire, RedisFailure> {
        let mut conn = connection(&self.pool, "node_acquire").await?;
        let (taken, cur, cur_addr): (i64, String, String) = Script::new(ACQUIRE)
            .key(self.keys.node(gate_id))
            .arg(instance)
            .arg(addr)
            .arg(lease_ms(self.lease))
            .arg(dead_instance)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("node_acquire", RedisCause::from(e)))?;
        Ok(if taken == 1 {
            Acquire::Taken
        } else {
            Acquire::HeldBy {
                instance: cur,
                addr: cur_addr,
            }
        })
    }

    /// Renews this process's hold on `gate_id`; false when another process took it.
    pub async fn renew(
        &self,
        gate_id: &str,
        instance: &str,
        addr: &str,
    ) -> Result<bool, RedisFailure> {
        let mut conn = connection(&self.pool, "node_renew").await?;
        let r: i64 = Script::new(RENEW)
            .key(self.keys.node(gate_id))
            .arg(instance)
            .arg(addr)
            .arg(lease_ms(self.lease))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("node_renew", RedisCause::from(e)))?;
        Ok(r != 0)
    }

    /// Gives the gateId up at a graceful stop.
    pub async fn release(&self, gate_id: &str, instance: &str) -> Result<(), RedisFailure> {
        let mut conn = connection(&self.pool, "node_release").await?;
        let _: i64 = Script::new(RELEASE)
            .key(self.keys.node(gate_id))
            .arg(instance)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("node_release", RedisCause::from(e)))?;
        Ok(())
    }

    /// The gateIds of every node whose lease is current.
    pub async fn live(&self) -> Result<std::collections::BTreeSet<String>, RedisFailure> {
        let mut conn = connection(&self.pool, "node_scan").await?;
        let prefix = self.keys.node("");
        let mut live = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| RedisFailure::new("node_scan", RedisCause::from(e)))?;
            live.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(str::to_string),
            );
            if next == 0 {
                return Ok(live);
            }
            cursor = next;
        }
    }

    /// The internal address of a live node, or `None` when its lease ran out.
    pub async fn address(&self, gate_id: &str) -> Result<Option<String>, RedisFailure> {
        let mut conn = connection(&self.pool, "node_lookup").await?;
        redis::cmd("HGET")
            .arg(self.keys.node(gate_id))
            .arg("addr")
            .query_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("node_lookup", RedisCause::from(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Acquire, Nodes};
    use crate::cluster::redis::testing::redis;

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_free_gate_id_is_taken() {
        let r = redis().await;
        let nodes = Nodes::new(r.pool.clone(), r.keys.clone(), LEASE);
        let got = nodes.acquire("gw-1", "inst-a", "10.0.0.1:10089", "").await;
        assert_eq!(got.unwrap(), Acquire::Taken);
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_held_gate_id_names_its_holder() {
        let r = redis().await;
        let nodes = Nodes::new(r.pool.clone(), r.keys.clone(), LEASE);
        nodes
            .acquire("gw-1", "inst-a", "10.0.0.1:10089", "")
            .await
            .unwrap();
        let got = nodes.acquire("gw-1", "inst-b", "10.0.0.2:10089", "").await;
        assert_eq!(
            got.unwrap(),
            Acquire::HeldBy {
                instance: "inst-a".into(),
                addr: "10.0.0.1:10089".into()
            }
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_gate_id_held_by_a_dead_instance_is_taken_over() {
        let r = redis().await;
        let nodes = Nodes::new(r.pool.clone(), r.keys.clone(), LEASE);
        nodes
            .acquire("gw-1", "inst-a", "10.0.0.1:10089", "")
            .await
            .unwrap();
        let got = nodes
            .acquire("gw-1", "inst-b", "10.0.0.2:10089", "inst-a")
            .await;
        assert_eq!(got.unwrap(), Acquire::Taken);
        assert_eq!(
            nodes.address("gw-1").await.unwrap().as_deref(),
            Some("10.0.0.2:10089")
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn renewal_fails_once_another_instance_holds_the_gate_id() {
        let r = redis().await;
        let nodes = Nodes::new(r.pool.clone(), r.keys.clone(), LEASE);
        nodes.acquire("gw-1", "inst-a", "a:1", "").await.unwrap();
        nodes
            .acquire("gw-1", "inst-b", "b:1", "inst-a")
            .await
            .unwrap();
        assert!(!nodes.renew("gw-1", "inst-a", "a:1").await.unwrap());
        r.cleanup().await;
    }

    #[tokio::test]
    async fn renewal_puts_back_an_identity_redis_lost() {
        let r = redis().await;
        let nodes = Nodes::new(r.pool.clone(), r.keys.clone(), LEASE);
        assert!(nodes.renew("gw-1", "inst-a", "a:1").await.unwrap());
        assert_eq!(nodes.address("gw-1").await.unwrap().as_deref(), Some("a:1"));
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_released_gate_id_has_no_address() {
        let r = redis().await;
        let nodes = Nodes::new(r.pool.clone(), r.keys.clone(), LEASE);
        nodes.acquire("gw-1", "inst-a", "a:1", "").await.unwrap();
        nodes.release("gw-1", "inst-a").await.unwrap();
        assert_eq!(nodes.address("gw-1").await.unwrap(), None);
        r.cleanup().await;
    }
}
