//! Cluster mode: several gateway nodes behind a layer-4 load balancer, one hub.
//!
//! Redis holds which node owns each device (a route with a lease, renewed while the session
//! lives), each node's identity and internal address, the offline instructions and the
//! JT/T 808 authentication codes. Kafka carries the events, and the push consumers of all
//! nodes share one consumer group. An instruction that reaches a node that does not own the
//! device is handed to the owner over the owner's internal listener ([`internal`]) and the
//! owner's answer goes back to the caller.
//!
//! Why node-to-node HTTP and not a Kafka topic or Redis pub/sub per node: the hop costs one
//! loopback or LAN round trip (well under a millisecond) where a Kafka hop costs a producer
//! linger plus a consumer poll each way, and a dead owner shows at once as a refused
//! connection (the caller answers 300 and may queue the instruction) instead of as silence
//! until `timeOut`. Redis stays a lookup table, never a message path.
//!
//! Failure behaviour:
//! - Redis unreachable: sessions keep running and devices keep reporting (events go to
//!   Kafka); new logins are served locally and claimed in Redis by the next renewal once it
//!   returns; an instruction for a device not on this node answers 301 naming Redis;
//!   `iothub_redis_up` is 0.
//! - Redis restarted empty: the next renewal puts every live route back.
//! - A node dies: it stops renewing, so its routes and its identity expire within one lease;
//!   its devices reconnect through the balancer and their new nodes claim them at once.

pub mod internal;
pub mod node;
pub mod redis;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use iothub::imei::Imei;
use ractor::ActorId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::redis::{RedisCause, RedisFailure};
use crate::config::Config;
use node::{Acquire, Nodes};
use routes::{PreviousOwner, Renewal, Routes};

/// How long a starting node waits for the holder of its gateId to answer before it is taken
/// for dead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Renewal pace after a failed round, so a Redis that comes back is used again quickly.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Longest a login waits for its route claim; past it the renewal loop claims the route.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);
/// Header that carries the api token on node-to-node calls.
pub const TOKEN_HEADER: &str = "x-iothub-token";

/// This node's membership of the cluster; shared by the registry, the API, the internal
/// listener and the renewal loop.
pub struct Cluster {
    pub gate_id: String,
    /// Random per process: tells this run of the node from an earlier one with the same
    /// gateId.
    pub instance: String,
    /// Where other nodes reach this node's internal listener.
    pub advertise: String,
    pub routes: Routes,
    pub nodes: Nodes,
    /// The Redis pool and key names, shared with the offline store and the auth codes.
    pub pool: redis::Pool,
    pub keys: redis::Keys,
    pub lease: Duration,
    /// The api token; node-to-node calls carry it.
    pub token: String,
    pub client: reqwest::Client,
}

/// The identity answer of the internal listener.
#[derive(Debug, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "gateId")]
    pub gate_id: String,
    pub instance: String,
}

impl Cluster {
    /// Joins the cluster: takes this node's gateId in Redis, or fails naming the live node
    /// that holds it. Fails as well when Redis cannot be reached, since uniqueness of the
    /// gateId cannot be checked then.
    pub async fn join(config: &Config) -> anyhow::Result<Arc<Cluster>> {
        let pool = redis::pool(&config.redis)?;
        let keys = redis::Keys::new(&config.redis.key_prefix);
        let lease = config.redis.lease;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            // Well before the peers' listeners close an idle connection (http.idle_timeout),
            // so a call never goes out on a connection the peer is closing.
            .pool_idle_timeout(config.http.idle_timeout / 2)
            .build()
            .map_err(|e| anyhow::anyhow!("cluster: cannot build the node-to-node client: {e}"))?;
        let cluster = Cluster {
            gate_id: config.gate_id.clone(),
            instance: random_instance(),
            advertise: config.cluster.internal_advertise.clone(),
            routes: Routes::new(pool.clone(), keys.clone(), &config.gate_id, lease),
            nodes: Nodes::new(pool.clone(), keys.clone(), lease),
            pool,
            keys,
            lease,
            token: config.api.token.clone(),
            client,
        };
        cluster.take_gate_id(config).await?;
        // Created at zero, so that they exist (for rate() and the dashboard) before the first
        // instruction crosses nodes or the first device moves between them.
        for name in [
            "iothub_cluster_forwarded_out_total",
            "iothub_cluster_forwarded_in_total",
            "iothub_cluster_takeovers_total",
            "iothub_cluster_routes_lost_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        Ok(Arc::new(cluster))
    }

    async fn take_gate_id(&self, config: &Config) -> anyhow::Result<()> {
        let redis_at = if config.redis.sentinels.is_empty() {
            format!(
                "{}:{}",
                config.redis.host.as_deref().unwrap_or_default(),
                config.redis.port
            )
        } else {
            format!(
                "master {:?} of the Sentinels {}",
                config.redis.sentinel_master,
                config.redis.sentinels.join(",")
            )
        };
        let attempt = |dead: String| {
            let redis_at = redis_at.clone();
            async move {
                self.nodes
                    .acquire(&self.gate_id, &self.instance, &self.advertise, &dead)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "redis.host: cannot reach Redis at {redis_at} to check that gateId {:?} is not in use: {e}",
                            self.gate_id
                        )
                    })
            }
        };
        match attempt(String::new()).await? {
            Acquire::Taken => Ok(()),
            Acquire::HeldBy { instance, addr } => {
                if self.answers_as(&addr, &instance).await {
                    anyhow::bail!(
                        "gateId: {:?} is held by a live node at {addr}; give every node its own gateId",
                        self.gate_id
                    );
                }
                tracing::warn!(gate_id = %self.gate_id, %addr, "the previous holder of this gateId does not answer; taking it over");
                match attempt(instance).await? {
                    Acquire::Taken => Ok(()),
                    Acquire::HeldBy { addr, .. } => anyhow::bail!(
                        "gateId: {:?} was just taken by another node at {addr}; give every node its own gateId",
                        self.gate_id
                    ),
                }
            }
        }
    }

    /// Whether the node at `addr` is alive and is the holder `instance` of our gateId.
    async fn answers_as(&self, addr: &str, instance: &str) -> bool {
        let request = self
            .client
            .get(format!("http://{addr}/internal/v1/identity"))
            .header(TOKEN_HEADER, &self.token)
            .timeout(PROBE_TIMEOUT)
            .send();
        let Ok(response) = request.await else {
            return false;
        };
        match response.json::<Identity>().await {
            Ok(identity) => identity.gate_id == self.gate_id && identity.instance == instance,
            // Something answers there but not as an iothub node of this cluster: be safe.
            Err(_) => true,
        }
    }

    /// The route owner token of a local session.
    pub fn owner_token(&self, session: ActorId) -> String {
        format!("{}.{}", self.instance, session.pid())
    }

    /// The local session pid an owner token names, if the token is of this process.
    pub fn local_pid(&self, owner: &str) -> Option<u64> {
        let (instance, pid) = owner.split_once('.')?;
        (instance == self.instance).then(|| pid.parse().ok())?
    }

    /// Claims the route of a session that just logged in, and tells the previous owner's
    /// node to close its connection. A Redis failure is logged and left to the renewal loop,
    /// which claims the route once Redis answers: the device keeps being served meanwhile.
    pub async fn claim(self: &Arc<Self>, imei: Imei, session: ActorId) {
        let claimed = tokio::time::timeout(
            CLAIM_TIMEOUT,
            self.routes.claim(imei, &self.owner_token(session)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RedisFailure::new(
                "route_claim",
                RedisCause::Deadline(CLAIM_TIMEOUT),
            ))
        });
        match claimed {
            Ok(Some(previous)) if previous.gate != self.gate_id => {
                metrics::counter!("iothub_cluster_takeovers_total").increment(1);
                let me = self.clone();
                tokio::spawn(async move { me.notify_takeover(imei, previous).await });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%imei, error = %e, "route not claimed; the renewal loop will claim it when Redis answers");
            }
        }
    }

    /// Tells the node that owned a device before that a newer connection took it.
    async fn notify_takeover(&self, imei: Imei, previous: PreviousOwner) {
        let addr = match self.nodes.address(&previous.gate).await {
            Ok(Some(addr)) => addr,
            // The node is gone (or unknown): its lease makes its stale session harmless.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%imei, gate = %previous.gate, error = %e, "takeover notice not sent");
                return;
            }
        };
        let notice = internal::TakeoverNotice {
            imei,
            owner: previous.owner,
        };
        let sent = self
            .client
            .post(format!("http://{addr}/internal/v1/takeover"))
            .header(TOKEN_HEADER, &self.token)
            .timeout(Duration::from_secs(5))
            .json(&notice)
            .send()
            .await;
        if let Err(e) = sent {
            // The old node finds out at its next renewal anyway.
            tracing::info!(%imei, gate = %previous.gate, error = %e, "takeover notice not delivered");
        }
    }

    /// Releases the route of a session that ended, in the background.
    pub fn release(self: &Arc<Self>, imei: Imei, session: ActorId) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.routes.release(imei, &me.owner_token(session)).await {
                tracing::debug!(%imei, error = %e, "route not released; it expires with its lease");
            }
        });
    }

    /// Gives the gateId up (graceful stop).
    pub async fn leave(&self) {
        if let Err(e) = self.nodes.release(&self.gate_id, &self.instance).await {
            tracing::warn!(error = %e, "gateId not released; it expires with its lease");
        }
    }
}

/// Why the renewal loop gave up: the node's identity is held by another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLost;

/// Renews this node's identity and every route its sessions own, every third of a lease
/// (every second while Redis fails). Routes another session took are evicted locally.
/// Sends `Some(IdentityLost)` on `lost` and returns if another process holds the gateId.
/// Bumps `departures` when a node's identity expired (the node died), so the push
/// consumers rejoin their group and take over the dead node's partitions.
pub async fn renew_loop(
    cluster: Arc<Cluster>,
    registry: crate::registry::Registry,
    lost: watch::Sender<Option<IdentityLost>>,
    departures: watch::Sender<u64>,
) {
    let period = cluster.lease / 3;
    let mut next = period;
    let mut known: Option<std::collections::BTreeSet<String>> = None;
    loop {
        tokio::time::sleep(next).await;
        next = period;
        let renewed = renew_once(&cluster, &registry).await;
        if renewed.is_ok() {
            match cluster.nodes.live().await {
                Ok(live) => {
                    metrics::gauge!("iothub_cluster_nodes").set(live.len() as f64);
                    if let Some(known) = &known {
                        let gone: Vec<&String> = known.difference(&live).collect();
                        if !gone.is_empty() {
                            tracing::warn!(?gone, "nodes left the cluster; push consumers rejoin their group to take over their share");
                            departures.send_modify(|n| *n += 1);
                        }
                    }
                    known = Some(live);
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the cluster's nodes"),
            }
        }
        match renewed {
            Ok(()) => metrics::gauge!("iothub_redis_up").set(1.0),
            Err(RenewError::Redis(e)) => {
                metrics::gauge!("iothub_redis_up").set(0.0);
                tracing::warn!(error = %e, "cluster renewal failed; routes are kept locally and claimed when Redis answers");
                next = RETRY_AFTER_FAILURE;
            }
            Err(RenewError::Registry) => return,
            Err(RenewError::IdentityLost) => {
                tracing::error!(gate_id = %cluster.gate_id, "another process holds this node's gateId; stopping");
                let _ = lost.send(Some(IdentityLost));
                return;
            }
        }
    }
}

enum RenewError {
    Redis(RedisFailure),
    Registry,
    IdentityLost,
}

async fn renew_once(
    cluster: &Arc<Cluster>,
    registry: &crate::registry::Registry,
) -> Result<(), RenewError> {
    let held = cluster
        .nodes
        .renew(&cluster.gate_id, &cluster.instance, &cluster.advertise)
        .await
        .map_err(RenewError::Redis)?;
    if !held {
        return Err(RenewError::IdentityLost);
    }
    let owned = registry.owned().await.map_err(|_| RenewError::Registry)?;
    let tokens: Vec<(Imei, String)> = owned
        .iter()
        .map(|(imei, id)| (*imei, cluster.owner_token(*id)))
        .collect();
    let outcomes = cluster
        .routes
        .renew(&tokens)
        .await
        .map_err(RenewError::Redis)?;
    metrics::gauge!("iothub_cluster_routes_owned").set(owned.len() as f64);
    for ((imei, id), (_, outcome)) in owned.into_iter().zip(outcomes) {
        match outcome {
            Renewal::Kept => {}
            Renewal::Reclaimed => {
                metrics::counter!("iothub_cluster_routes_reclaimed_total").increment(1);
            }
            Renewal::Lost => {
                metrics::counter!("iothub_cluster_routes_lost_total").increment(1);
                registry.evict(imei, id.pid());
            }
        }
    }
    Ok(())
}

/// 64 random bits as hex.
fn random_instance() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}
