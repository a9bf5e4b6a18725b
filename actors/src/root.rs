//! The root of the actor tree. Starts the hub in dependency order (storage, publisher, push
//! dispatcher, offline store, registry, gateways, API) and stops it in reverse, so that on
//! SIGTERM no new device is accepted while the ones connected are closed (their logout
//! events stored), then everything stored is handed to the push dispatcher's durable
//! cursor before the process exits.
//!
//! The Root actor supervises the long-lived actors (registry, gateways). If one of them
//! fails the hub cannot serve devices correctly, so Root stops itself and the process
//! exits non-zero for the service manager to restart it, rather than limp along.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iothub::channel::jt808::Jt808ChannelConfig;
use iothub::codec::jt808::Limits;
use iothub::protocol::{DetectingProtocol, Gt06Protocol, Jt808Protocol};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::api::{self, ApiDeps, ApiServer};
use crate::auth_codes::AuthCodes;
use crate::cluster::internal::{self, InternalServer};
use crate::cluster::{Cluster, IdentityLost};
use crate::config::Config;
use crate::gateway::listener::{Admission, Gateway, GatewayArgs};
use crate::gateway::registrations::RegistrationLimiter;
use crate::gateway::session::SessionDeps;
use crate::health::Health;
use crate::media::{MediaAddrs, MediaServer};
use crate::offline::OfflineCommands;
use crate::publish::Publisher;
use crate::push::PushDispatcher;
use crate::registry::{Registry, RegistryActor};
use crate::storage::Storage;

/// A running hub.
pub struct Hub {
    root: ActorRef<RootMsg>,
    root_done: tokio::task::JoinHandle<()>,
    gt06: ActorCell,
    jt808: ActorCell,
    registry: ActorCell,
    api: ApiServer,
    media: MediaServer,
    cluster: Option<ClusterRuntime>,
    publisher: Publisher,
    push: PushDispatcher,
    /// Forgets JT/T 808 codes issued and never used (embedded store; Redis expires its own).
    code_expiry: tokio::task::JoinHandle<()>,
    pub gt06_addr: SocketAddr,
    pub jt808_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub media_addrs: MediaAddrs,
}

pub enum RootMsg {}

/// What cluster mode adds to a running node.
struct ClusterRuntime {
    cluster: Arc<Cluster>,
    internal: InternalServer,
    renewal: tokio::task::JoinHandle<()>,
    identity_lost: watch::Receiver<Option<IdentityLost>>,
}

struct Root;

impl Actor for Root {
    type Msg = RootMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<RootMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<RootMsg>,
        msg: RootMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(actor = ?cell.get_name(), %error, "core actor failed, stopping the hub");
                myself.stop(Some("core actor failed".into()));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::info!(actor = ?cell.get_name(), ?reason, "core actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}

impl Hub {
    pub async fn start(config: &Config) -> anyhow::Result<Hub> {
        // First of all, so a node whose gateId is taken stops before it touches anything.
        let cluster = if config.redis.cluster_mode() {
            let cluster = Cluster::join(config).await?;
            tracing::info!(gate_id = %cluster.gate_id, instance = %cluster.instance, advertise = %cluster.advertise, "joined the cluster");
            Some(cluster)
        } else {
            None
        };
        let health = Health::default();
        let storage = Storage::open_reporting(&config.storage, health.clone())?;
        let publisher = Publisher::start(config, storage.clone()).await?;
        let (departures, rejoin) = watch::channel(0u64);
        let push = PushDispatcher::start(config, storage.clone(), rejoin).await?;
        let (offline, auth_codes) = match &cluster {
            Some(c) => (
                OfflineCommands::redis(c.pool.clone(), c.keys.clone()),
                AuthCodes::redis(c.pool.clone(), c.keys.clone()),
            ),
            None => (
                OfflineCommands::open(storage.clone()),
                AuthCodes::open(storage.clone()),
            ),
        };
        let auth_codes =
            auth_codes.with_unused_code_expiry(config.gateway.jt808_unused_code_expiry);
        let code_expiry = tokio::spawn(expire_unused_codes(auth_codes.clone()));

        let (root, root_done) = Actor::spawn(Some("root".into()), Root, ()).await?;
        let (registry_ref, _) = Actor::spawn_linked(
            Some("registry".into()),
            RegistryActor,
            cluster.clone(),
            root.get_cell(),
        )
        .await?;
        let registry = Registry {
            actor: registry_ref.clone(),
            cluster: cluster.clone(),
        };
        // Filled once the media server runs; the internal listener starts before it.
        let media_signals = internal::MediaSignalsSlot::default();
        let cluster = match cluster {
            Some(cluster) => {
                let internal = internal::start(
                    config.cluster.internal_listen,
                    cluster.clone(),
                    registry.clone(),
                    api::REPLY_MARGIN,
                    config.api.max_timeout,
                    config.http,
                    media_signals.clone(),
                )
                .await?;
                let (lost_tx, identity_lost) = watch::channel(None);
                // Supervised (see `crate::supervise`): restarted after a panic.
                let renewal =
                    tokio::spawn(crate::supervise::run("cluster_renewal", health.clone(), {
                        let (cluster, registry) = (cluster.clone(), registry.clone());
                        move || {
                            crate::cluster::renew_loop(
                                cluster.clone(),
                                registry.clone(),
                                lost_tx.clone(),
                                departures.clone(),
                            )
                        }
                    }));
                Some(ClusterRuntime {
                    cluster,
                    internal,
                    renewal,
                    identity_lost,
                })
            }
            None => None,
        };

        // One copy shared by both gateways and all their sessions: a session holds a pointer
        // to it, not the handles themselves.
        let deps = Arc::new(SessionDeps {
            registry: registry.clone(),
            publisher: publisher.clone(),
            offline: offline.clone(),
            auth_codes,
            registrations: Arc::new(RegistrationLimiter::new(
                config.gateway.jt808_registrations_per_source_per_minute,
            )),
            write_timeout: config.gateway.write_timeout,
            offline_reply_timeout: config.api.default_timeout,
        });
        let g = &config.gateway;
        let gt06 = Gt06Protocol::new(g.crc_policy, g.read_timeout, g.connect_timeout);
        let jt808_config = Jt808ChannelConfig {
            read_timeout: g.read_timeout,
            login_timeout: g.connect_timeout,
            auth_grace: g.jt808_auth_grace,
            new_imei_rule: g.jt808_new_imei_rule,
            accept_unknown_auth_codes: g.jt808_accept_unknown_auth,
            allow_reregistration: g.jt808_allow_reregistration,
            registrations_per_connection: g.jt808_registrations_per_connection,
            subpackages: Limits::default(),
            auth_code_seed: random_seed(),
        };
        // newImeiRule is set per port: the JT/T 808 terminals of each port read their phone
        // numbers by that port's rule.
        let jt808_on_gt06_port = Jt808Protocol::new(
            g.crc_policy,
            Jt808ChannelConfig {
                new_imei_rule: g.gt06_new_imei_rule,
                ..jt808_config.clone()
            },
        );
        let jt808 = Jt808Protocol::new(g.crc_policy, jt808_config);
        // One budget for both device ports: each connection is a file descriptor of the
        // same process, whichever port it came in on.
        let connection_budget = Arc::new(Semaphore::new(g.max_connections));
        metrics::gauge!("iothub_max_connections").set(g.max_connections as f64);
        // Both ports take both protocols (the first frame decides); the name is the port's.
        let (gt06_gateway, gt06_addr) = spawn_gateway(
            &root,
            "gt06",
            g.gt06_listen,
            DetectingProtocol::new("gt06", gt06.clone(), jt808_on_gt06_port),
            deps.clone(),
            Admission {
                connection_budget: connection_budget.clone(),
                keepalive: g.keepalive,
                proxy_protocol: g.gt06_proxy_protocol,
            },
        )
        .await?;
        let (jt808_gateway, jt808_addr) = spawn_gateway(
            &root,
            "jt808",
            g.jt808_listen,
            DetectingProtocol::new("jt808", gt06, jt808),
            deps,
            Admission {
                connection_budget,
                keepalive: g.keepalive,
                proxy_protocol: g.jt808_proxy_protocol,
            },
        )
        .await?;

        let media =
            MediaServer::start(config, root.get_cell(), registry.clone(), publisher.clone())
                .await?;
        let media_addrs = media.addrs;
        let _ = media_signals.set(media.hub.signals().clone());

        let api = api::start(
            config,
            ApiDeps {
                registry: registry.clone(),
                offline,
                gate_id: config.gate_id.clone(),
                health,
            },
        )
        .await?;
        let api_addr = api.local_addr();
        Ok(Hub {
            root,
            root_done,
            gt06: gt06_gateway,
            jt808: jt808_gateway,
            registry: registry_ref.get_cell(),
            api,
            media,
            cluster,
            publisher,
            push,
            code_expiry,
            gt06_addr,
            jt808_addr,
            api_addr,
            media_addrs,
        })
    }

    /// Resolves when the root stops on its own (a core actor failed), or in cluster mode
    /// when another process took this node's gateId; says which.
    pub async fn failed(&mut self) -> &'static str {
        let identity_lost = async {
            match self.cluster.as_mut() {
                Some(c) => {
                    let _ = c.identity_lost.wait_for(Option::is_some).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut self.root_done => "a core actor failed",
            _ = identity_lost => "another process holds this node's gateId",
        }
    }

    /// Graceful stop: devices first (logouts stored), then the API, then storage users.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: closing device connections");
        let stop = |cell: &ActorCell| {
            let cell = cell.clone();
            async move {
                cell.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(15)))
                    .await
                    .ok();
            }
        };
        tokio::join!(stop(&self.gt06), stop(&self.jt808));
        self.media.shutdown().await;
        self.api.shutdown().await;
        if let Some(c) = self.cluster {
            c.internal.shutdown().await;
            c.renewal.abort();
            c.cluster.leave().await;
        }
        self.registry
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .ok();
        self.code_expiry.abort();
        self.push.stop().await;
        self.publisher.stop().await;
        self.root.stop(None);
        tracing::info!("shutdown complete");
    }
}

/// How often issued codes that were never used are looked for.
const CODE_EXPIRY_SWEEP: Duration = Duration::from_secs(3600);

/// Forgets issued codes never used within their expiry, at start and then every sweep period.
async fn expire_unused_codes(auth_codes: AuthCodes) {
    let mut every = tokio::time::interval(CODE_EXPIRY_SWEEP);
    loop {
        every.tick().await;
        match auth_codes.expire_unused().await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("iothub_jt808_auth_codes_expired_total").increment(n as u64);
                tracing::info!(codes = n, "forgot JT/T 808 codes issued and never used");
            }
            Err(e) => tracing::warn!(error = %e, "could not expire unused JT/T 808 codes"),
        }
    }
}

/// Binds a device port and starts its gateway under the root.
async fn spawn_gateway(
    root: &ActorRef<RootMsg>,
    name: &'static str,
    listen: SocketAddr,
    protocol: DetectingProtocol,
    deps: Arc<SessionDeps>,
    admission: Admission,
) -> anyhow::Result<(ActorCell, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("{name} listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    if admission.proxy_protocol {
        tracing::info!(gateway = name, %listen, "PROXY protocol on: every connection must start with a v1 or v2 header");
    }
    let (gateway, _) = Actor::spawn_linked(
        Some(format!("gateway-{name}")),
        Gateway::default(),
        GatewayArgs {
            protocol: Arc::new(protocol),
            listener,
            deps,
            admission,
        },
        root.get_cell(),
    )
    .await?;
    Ok((gateway.get_cell(), addr))
}

/// A per-process random number (std seeds `RandomState` from the OS), so issued
/// authentication codes cannot be predicted from the IMEI and the time.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
