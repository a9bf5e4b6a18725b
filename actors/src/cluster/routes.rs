//! Routes in Redis: which node, and which session or stream on it, owns each device and
//! each media stream.
//!
//! A device route is a hash `{prefix}:route:{imei}` with `gate` (the owning node's gateId),
//! `owner` (a token unique to one session of one process) and `epoch` (how many claims it has
//! seen), and a TTL of one lease. A stream route `{prefix}:media:{stream key}` is the same
//! lease with one more field, `url`: the HTTP-FLV base URL of the node the stream is
//! published at, where viewers who reached another node are redirected. Both are kept by the
//! same three Lua scripts, each atomic against every other node:
//! - `claim`: a session that logged in (a stream that got a publisher) takes the route
//!   whoever held it, and learns who did, so the previous node can be told to close its
//!   connection (the newest connection wins, across nodes as within one).
//! - `renew`: the owning node extends its routes every third of a lease. A route that
//!   vanished (Redis restarted empty, or the lease ran out while Redis was unreachable) is
//!   taken back; a route another owner now holds is reported lost, and the local session is
//!   closed.
//! - `release`: deletes a route only while the owner releasing it still owns it, so the late
//!   cleanup of an old connection or stream never removes the route of a newer one.

use std::sync::Arc;
use std::time::Duration;

use super::redis::Pool;
use deadpool_redis::redis::{self, Script};
use iothub::imei::Imei;

use super::redis::{connection, lease_ms, Keys, RedisCause, RedisFailure};

// ARGV: gate, owner, lease in ms, then the field/value pairs of the route's kind.
const CLAIM: &str = r"
local prev_gate = redis.call('HGET', KEYS[1], 'gate')
local prev_owner = redis.call('HGET', KEYS[1], 'owner')
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'gate', ARGV[1], 'owner', ARGV[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {prev_gate or '', prev_owner or '', epoch}
";

// ARGV: as CLAIM's.
const RENEW: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if owner == false then
  redis.call('HSET', KEYS[1], 'gate', ARGV[1], 'owner', ARGV[2], unpack(ARGV, 4))
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
    /// Another owner holds it now.
    Lost,
}

/// The operation names a kind of route reports its Redis failures under.
struct Ops {
    claim: &'static str,
    renew: &'static str,
    release: &'static str,
}

/// The owner-checked leases every kind of route is, as one node sees them.
#[derive(Clone)]
struct Leases {
    pool: Pool,
    gate_id: String,
    lease: Duration,
    claim: Arc<Script>,
    renew: Arc<Script>,
    release: Arc<Script>,
}

impl Leases {
    fn new(pool: Pool, gate_id: &str, lease: Duration) -> Leases {
        Leases {
            pool,
            gate_id: gate_id.to_string(),
            lease,
            claim: Arc::new(Script::new(CLAIM)),
            renew: Arc::new(Script::new(RENEW)),
            release: Arc::new(Script::new(RELEASE)),
        }
    }

    /// Makes `owner` the owner of `key`, with `fields` set beside `gate` and `owner`;
    /// returns the previous owner when there was one and it was not `owner` itself.
    async fn claim(
        &self,
        op: &'static str,
        key: String,
        owner: &str,
        fields: &[(&str, &str)],
    ) -> Result<Option<PreviousOwner>, RedisFailure> {
        let mut conn = connection(&self.pool, op).await?;
        let mut invocation = self.claim.key(key);
        invocation
            .arg(&self.gate_id)
            .arg(owner)
            .arg(lease_ms(self.lease));
        for (field, value) in fields {
            invocation.arg(*field).arg(*value);
        }
        let (gate, prev_owner, _epoch): (String, String, i64) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new(op, RedisCause::from(e)))?;
        if gate.is_empty() || prev_owner == owner {
            return Ok(None);
        }
        Ok(Some(PreviousOwner {
            gate,
            owner: prev_owner,
        }))
    }

    /// Renews `(key, owner)` routes, a chunk per round trip; one that vanished is taken back
    /// with `fields`.
    async fn renew(
        &self,
        op: &'static str,
        owned: &[(String, String)],
        fields: &[(&str, &str)],
    ) -> Result<Vec<Renewal>, RedisFailure> {
        let mut conn = connection(&self.pool, op).await?;
        // EVALSHA in a pipeline needs the script loaded; loading is idempotent and cheap.
        self.renew
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new(op, RedisCause::from(e)))?;
        let lease_ms = lease_ms(self.lease);
        let mut outcomes = Vec::with_capacity(owned.len());
        for chunk in owned.chunks(RENEW_CHUNK) {
            let mut pipe = redis::pipe();
            for (key, owner) in chunk {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.renew.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(&self.gate_id)
                    .arg(owner)
                    .arg(lease_ms);
                for (field, value) in fields {
                    cmd.arg(*field).arg(*value);
                }
            }
            let results: Vec<i64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| RedisFailure::new(op, RedisCause::from(e)))?;
            outcomes.extend(results.into_iter().map(|r| match r {
                1 => Renewal::Kept,
                2 => Renewal::Reclaimed,
                _ => Renewal::Lost,
            }));
        }
        Ok(outcomes)
    }

    /// Deletes `key` if `owner` still owns it.
    async fn release(
        &self,
        op: &'static str,
        key: String,
        owner: &str,
    ) -> Result<(), RedisFailure> {
        let mut conn = connection(&self.pool, op).await?;
        let _: i64 = self
            .release
            .key(key)
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new(op, RedisCause::from(e)))?;
        Ok(())
    }

    /// `fields` of `key`, or `None` when the route is not there.
    async fn lookup<const N: usize>(
        &self,
        op: &'static str,
        key: String,
        fields: [&str; N],
    ) -> Result<Option<[String; N]>, RedisFailure> {
        let mut conn = connection(&self.pool, op).await?;
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(key)
            .arg(&fields[..])
            .query_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::new(op, RedisCause::from(e)))?;
        let values: Option<Vec<String>> = values.into_iter().collect();
        Ok(values.and_then(|v| v.try_into().ok()))
    }
}

const DEVICE_OPS: Ops = Ops {
    claim: "route_claim",
    renew: "route_renew",
    release: "route_release",
};

/// The Redis operations on device routes of one node.
#[derive(Clone)]
pub struct Routes {
    leases: Leases,
    keys: Keys,
}

impl Routes {
    pub fn new(pool: Pool, keys: Keys, gate_id: &str, lease: Duration) -> Routes {
        Routes {
            leases: Leases::new(pool, gate_id, lease),
            keys,
        }
    }

    /// Makes `owner` (a session of this node) the owner of the device's route; returns the
    /// previous owner when there was one and it was not this same session.
    pub async fn claim(
        &self,
        imei: Imei,
        owner: &str,
    ) -> Result<Option<PreviousOwner>, RedisFailure> {
        self.leases
            .claim(DEVICE_OPS.claim, self.keys.route(imei), owner, &[])
            .await
    }

    /// Renews the routes this node believes it owns, a chunk per round trip.
    pub async fn renew(
        &self,
        owned: &[(Imei, String)],
    ) -> Result<Vec<(Imei, Renewal)>, RedisFailure> {
        let keyed: Vec<(String, String)> = owned
            .iter()
            .map(|(imei, owner)| (self.keys.route(*imei), owner.clone()))
            .collect();
        let outcomes = self.leases.renew(DEVICE_OPS.renew, &keyed, &[]).await?;
        Ok(owned.iter().map(|(imei, _)| *imei).zip(outcomes).collect())
    }

    /// Deletes the route if `owner` still owns it.
    pub async fn release(&self, imei: Imei, owner: &str) -> Result<(), RedisFailure> {
        self.leases
            .release(DEVICE_OPS.release, self.keys.route(imei), owner)
            .await
    }

    /// The device's route, if any node holds it.
    pub async fn lookup(&self, imei: Imei) -> Result<Option<Route>, RedisFailure> {
        let found = self
            .leases
            .lookup("route_lookup", self.keys.route(imei), ["gate", "owner"])
            .await?;
        Ok(found.map(|[gate, owner]| Route { gate, owner }))
    }
}

const STREAM_OPS: Ops = Ops {
    claim: "stream_route_claim",
    renew: "stream_route_renew",
    release: "stream_route_release",
};

/// Where a stream is published, as a node that has a viewer for it reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRoute {
    pub gate: String,
    /// The publishing node's HTTP-FLV base URL (`http://node-1.example:8880`).
    pub url: String,
}

/// The Redis operations on the stream routes of one node, which publishes its streams at
/// `url`.
#[derive(Clone)]
pub struct StreamRoutes {
    leases: Leases,
    keys: Keys,
    url: String,
}

impl StreamRoutes {
    pub fn new(pool: Pool, keys: Keys, gate_id: &str, lease: Duration, url: &str) -> StreamRoutes {
        StreamRoutes {
            leases: Leases::new(pool, gate_id, lease),
            keys,
            url: url.to_string(),
        }
    }

    pub fn gate_id(&self) -> &str {
        &self.leases.gate_id
    }

    /// Makes `owner` (a stream of this node) the owner of `stream`'s route.
    pub async fn claim(&self, stream: &str, owner: &str) -> Result<(), RedisFailure> {
        self.leases
            .claim(
                STREAM_OPS.claim,
                self.keys.media(stream),
                owner,
                &[("url", &self.url)],
            )
            .await
            .map(|_| ())
    }

    /// Renews `(stream, owner)` routes of this node's streams.
    pub async fn renew(&self, owned: &[(String, String)]) -> Result<Vec<Renewal>, RedisFailure> {
        let keyed: Vec<(String, String)> = owned
            .iter()
            .map(|(stream, owner)| (self.keys.media(stream), owner.clone()))
            .collect();
        self.leases
            .renew(STREAM_OPS.renew, &keyed, &[("url", &self.url)])
            .await
    }

    /// Deletes `stream`'s route if `owner` still owns it.
    pub async fn release(&self, stream: &str, owner: &str) -> Result<(), RedisFailure> {
        self.leases
            .release(STREAM_OPS.release, self.keys.media(stream), owner)
            .await
    }

    /// Where `stream` is published, if at any node.
    pub async fn lookup(&self, stream: &str) -> Result<Option<StreamRoute>, RedisFailure> {
        let found = self
            .leases
            .lookup(
                "stream_route_lookup",
                self.keys.media(stream),
                ["gate", "url"],
            )
            .await?;
        Ok(found.map(|[gate, url]| StreamRoute { gate, url }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iothub::imei::Imei;

    use super::{PreviousOwner, Renewal, Route, Routes, StreamRoute, StreamRoutes};
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

    fn streams(
        r: &crate::cluster::redis::testing::TestRedis,
        gate: &str,
        url: &str,
    ) -> StreamRoutes {
        StreamRoutes::new(r.pool.clone(), r.keys.clone(), gate, LEASE, url)
    }

    #[tokio::test]
    async fn a_stream_route_names_the_publishing_node_and_its_url() {
        let r = redis().await;
        let a = streams(&r, "node-a", "http://node-a:8880");
        let b = streams(&r, "node-b", "http://node-b:8880");
        a.claim("1/864717000000011", "ia.s1").await.unwrap();
        assert_eq!(
            b.lookup("1/864717000000011").await.unwrap(),
            Some(StreamRoute {
                gate: "node-a".into(),
                url: "http://node-a:8880".into()
            })
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_stream_route_released_by_its_owner_is_gone() {
        let r = redis().await;
        let a = streams(&r, "node-a", "http://node-a:8880");
        a.claim("1/864717000000012", "ia.s1").await.unwrap();
        a.release("1/864717000000012", "ia.s1").await.unwrap();
        assert_eq!(a.lookup("1/864717000000012").await.unwrap(), None);
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_stream_route_taken_by_a_newer_publisher_survives_the_old_release() {
        let r = redis().await;
        let a = streams(&r, "node-a", "http://node-a:8880");
        let b = streams(&r, "node-b", "http://node-b:8880");
        a.claim("2/864717000000013", "ia.s1").await.unwrap();
        b.claim("2/864717000000013", "ib.s7").await.unwrap();
        a.release("2/864717000000013", "ia.s1").await.unwrap();
        assert_eq!(
            a.lookup("2/864717000000013").await.unwrap().map(|s| s.url),
            Some("http://node-b:8880".to_string())
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn stream_renewal_puts_back_a_lost_route_with_its_url_and_reports_a_taken_one() {
        let r = redis().await;
        let a = streams(&r, "node-a", "http://node-a:8880");
        let b = streams(&r, "node-b", "http://node-b:8880");
        b.claim("3/864717000000014", "ib.s2").await.unwrap();
        let owned = vec![
            ("1/864717000000014".to_string(), "ia.s1".to_string()),
            ("3/864717000000014".to_string(), "ia.s3".to_string()),
        ];
        assert_eq!(
            a.renew(&owned).await.unwrap(),
            vec![Renewal::Reclaimed, Renewal::Lost]
        );
        assert_eq!(
            b.lookup("1/864717000000014").await.unwrap(),
            Some(StreamRoute {
                gate: "node-a".into(),
                url: "http://node-a:8880".into()
            })
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn stream_and_device_routes_of_one_imei_are_apart() {
        let r = redis().await;
        let devices = Routes::new(r.pool.clone(), r.keys.clone(), "node-a", LEASE);
        let a = streams(&r, "node-b", "http://node-b:8880");
        devices.claim(imei(15), "ia.1").await.unwrap();
        a.claim(&format!("1/{}", imei(15)), "ib.s1").await.unwrap();
        assert_eq!(
            devices.lookup(imei(15)).await.unwrap().map(|r| r.gate),
            Some("node-a".to_string())
        );
        r.cleanup().await;
    }
}
