//! Device routes in Redis: which node, and which session on it, owns each device.
//!
//! A route is a hash `{prefix}:route:{imei}` with `gate` (the owning node's gateId), `owner`
//! (a token unique to one session of one process) and `epoch` (how many claims it has seen),
//! and a TTL of one lease. Each operation is one Lua script, so it is atomic against every
//! other node:
//! - `claim`: a session that logged in takes the route whoever held it, and learns who did,
//!   so the previous node can be told to close its connection (the newest connection wins,
//!   across nodes as within one).
//! - `renew`: the owning node extends its routes every third of a lease. A route that
//!   vanished (Redis restarted empty, or the lease ran out while Redis was unreachable) is
//!   taken back; a route another session now owns is reported lost, and the local session is
//!   closed.
//! - `release`: deletes a route only while the session releasing it still owns it, so the
//!   late cleanup of an old connection never removes the route of a newer one.

use std::time::Duration;

use super::redis::Pool;
use deadpool_redis::redis::{self, Script};
use iothub::imei::Imei;

use super::redis::{connection, lease_ms, Keys, RedisCause, RedisFailure};

const CLAIM: &str = r"
local prev_gate = redis.call('HGET', KEYS[1], 'gate')
local prev_owner = redis.call('HGET', KEYS[1], 'owner')
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'gate', ARGV[1], 'owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {prev_gate or '', prev_owner or '', epoch}
";

const RENEW: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if owner == false then
  redis.call('HSET', KEYS[1], 'gate', ARGV[1], 'owner', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 2
end
return 0
";

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Routes renewed per Redis round trip.
const RENEW_CHUNK: usize = 1000;

/// Who held a route before a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousOwner {
    pub gate: String,
    pub owner: String,
}

/// A route as read by a node that wants to reach the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub gate: String,
    pub owner: String,
}

/// What a renewal found for one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; lease extended.
    Kept,
    /// Was gone (Redis lost it); claimed again.
    Reclaimed,
    /// Another session owns it now.
    Lost,
}

/// The Redis operations on device routes of one node.
#[derive(Clone)]
pub struct Routes {
    pool: Pool,
    keys: Keys,
    gate_id: String,
    lease: Duration,
    claim: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
    release: std::sync::Arc<Script>,
}

impl Routes {
    pub fn new(pool: Pool, keys: Keys, gate_id: &str, lease: Duration) -> Routes {
        Routes {
            pool,
            keys,
            gate_id: gate_id.to_string(),
            lease,
            claim: std::sync::Arc::new(Script::new(CLAIM)),
            renew: std::sync::Arc::new(Script::new(RENEW)),
            release: std::sync::Arc::new(Script::new(RELEASE)),
        }
    }

    /// Makes `owner` (a session of this node) the owner of the device's route; returns the
    /// previous owner when there was one and it was not this same session.
    pub async fn claim(
        &self,
        imei: Imei,
        owner: &str,
    ) -> Result<Option<PreviousOwner>, RedisFailure> {
        let mut conn = connection(&self.pool, "route_claim").await?;
        let (gate, prev_owner, _epoch): (String, String, i64) = self
            .claim
            .key(self.keys.route(imei))
            .arg(&self.gate_id)
            .arg(owner)
            .arg(lease_ms(self.lease))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("route_claim", RedisCause::from(e)))?;
        if gate.is_empty() || prev_owner == owner {
            return Ok(None);
        }
        Ok(Some(PreviousOwner {
            gate,
            owner: prev_owner,
        }))
    }

    /// Renews the routes this node believes it owns, a chunk per round trip.
    pub async fn renew(
        &self,
        owned: &[(Imei, String)],
    ) -> Result<Vec<(Imei, Renewal)>, RedisFailure> {
        let mut conn = connection(&self.pool, "route_renew").await?;
        // EVALSHA in a pipeline needs the script loaded; loading is idempotent and cheap.
        self.renew
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("route_renew", RedisCause::from(e)))?;
        let lease_ms = lease_ms(self.lease);
        let mut outcomes = Vec::with_capacity(owned.len());
        for chunk in owned.chunks(RENEW_CHUNK) {
            let mut pipe = redis::pipe();
            for (imei, owner) in chunk {
                pipe.cmd("EVALSHA")
                    .arg(self.renew.get_hash())
                    .arg(1)
                    .arg(self.keys.route(*imei))
                    .arg(&self.gate_id)
                    .arg(owner)
                    .arg(lease_ms);
            }
            let results: Vec<i64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| RedisFailure::new("route_renew", RedisCause::from(e)))?;
            for ((imei, _), r) in chunk.iter().zip(results) {
                let renewal = match r {
                    1 => Renewal::Kept,
                    2 => Renewal::Reclaimed,
                    _ => Renewal::Lost,
                };
                outcomes.push((*imei, renewal));
            }
        }
        Ok(outcomes)
    }

    /// Deletes the route if `owner` still owns it.
    pub async fn release(&self, imei: Imei, owner: &str) -> Result<(), RedisFailure> {
        let mut conn = connection(&self.pool, "route_release").await?;
        let _: i64 = self
            .release
            .key(self.keys.route(imei))
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("route_release", RedisCause::from(e)))?;
        Ok(())
    }

    /// The device's route, if any node holds it.
    pub async fn lookup(&self, imei: Imei) -> Result<Option<Route>, RedisFailure> {
        let mut conn = connection(&self.pool, "route_lookup").await?;
        let (gate, owner): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.route(imei))
            .arg("gate")
            .arg("owner")
            .query_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new("route_lookup", RedisCause::from(e)))?;
        Ok(match (gate, owner) {
            (Some(gate), Some(owner)) => Some(Route { gate, owner }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iothub::imei::Imei;

    use super::{PreviousOwner, Renewal, Route, Routes};
    use crate::cluster::redis::testing::redis;

    const LEASE: Duration = Duration::from_secs(30);

    fn imei(n: u64) -> Imei {
        Imei::parse(&format!("8647170000{n:05}")).unwrap()
    }

    #[tokio::test]
    async fn a_claim_of_a_free_route_reports_no_previous_owner() {
        let r = redis().await;
        let a = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        assert_eq!(a.claim(imei(1), "i1.10").await.unwrap(), None);
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_claim_by_another_node_names_the_previous_owner() {
        let r = redis().await;
        let a = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        let b = Routes::new(r.pool.clone(), r.keys.clone(), "node-b", LEASE);
        a.claim(imei(2), "ia.10").await.unwrap();
        let previous = b.claim(imei(2), "ib.20").await.unwrap();
        assert_eq!(
            previous,
            Some(PreviousOwner {
                gate: "node-a".into(),
                owner: "ia.10".into()
            })
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn lookup_names_the_newest_claimant() {
        let r = redis().await;
        let a = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        let b = Routes::new(r.pool.clone(), r.keys.clone(), "node-b", LEASE);
        a.claim(imei(3), "ia.10").await.unwrap();
        b.claim(imei(3), "ib.20").await.unwrap();
        assert_eq!(
            a.lookup(imei(3)).await.unwrap(),
            Some(Route {
                gate: "node-b".into(),
                owner: "ib.20".into()
            })
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_release_by_a_former_owner_leaves_the_route_alone() {
        let r = redis().await;
        let a = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        let b = Routes::new(r.pool.clone(), r.keys.clone(), "node-b", LEASE);
        a.claim(imei(4), "ia.10").await.unwrap();
        b.claim(imei(4), "ib.20").await.unwrap();
        a.release(imei(4), "ia.10").await.unwrap();
        assert!(a.lookup(imei(4)).await.unwrap().is_some());
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_release_by_the_owner_removes_the_route() {
        let r = redis().await;
        let a = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        a.claim(imei(5), "ia.10").await.unwrap();
        a.release(imei(5), "ia.10").await.unwrap();
        assert_eq!(a.lookup(imei(5)).await.unwrap(), None);
        r.cleanup().await;
    }

    #[tokio::test]
    async fn renewal_keeps_reclaims_and_loses_routes() {
        let r = redis().await;
        let a = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        let b = Routes::new(r.pool.clone(), r.keys.clone(), "node-b", LEASE);
        a.claim(imei(6), "ia.1").await.unwrap();
        a.claim(imei(7), "ia.2").await.unwrap();
        b.claim(imei(7), "ib.3").await.unwrap();
        // imei(8) was never written: as after a Redis restart that lost everything.
        let owned = vec![
            (imei(6), "ia.1".to_string()),
            (imei(7), "ia.2".to_string()),
            (imei(8), "ia.4".to_string()),
        ];
        let outcomes = a.renew(&owned).await.unwrap();
        assert_eq!(
            outcomes,
            vec![
                (imei(6), Renewal::Kept),
                (imei(7), Renewal::Lost),
                (imei(8), Renewal::Reclaimed)
            ]
        );
        assert_eq!(
            b.lookup(imei(8)).await.unwrap().map(|r| r.gate),
            Some("node-a".to_string())
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_route_expires_when_its_lease_is_not_renewed() {
        let r = redis().await;
        let a = Routes::new(
            r.pool.clone(),
            r.keys.clone(),
            "node-a",
            Duration::from_millis(300),
        );
        a.claim(imei(9), "ia.1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(a.lookup(imei(9)).await.unwrap(), None);
        r.cleanup().await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_naming_the_operation() {
        let (pool, keys) = crate::cluster::redis::testing::unreachable();
        let a = Routes::new(pool, keys, "node-a", LEASE);
        let err = a.lookup(imei(10)).await.unwrap_err();
        assert_eq!(err.op, "route_lookup");
    }
}
