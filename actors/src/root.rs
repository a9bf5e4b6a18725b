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

use iothub::protocol::Gt06Protocol;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::TcpListener;

use crate::api::{self, ApiDeps, ApiServer};
use crate::config::Config;
use crate::gateway::listener::{Gateway, GatewayArgs};
use crate::gateway::session::SessionDeps;
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
    registry: ActorCell,
    api: ApiServer,
    publisher: Publisher,
    push: PushDispatcher,
    pub gt06_addr: SocketAddr,
    pub api_addr: SocketAddr,
}

pub enum RootMsg {}

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
        let storage = Storage::open(&config.storage)?;
        let publisher = Publisher::start(config, storage.clone()).await?;
        let push = PushDispatcher::start(config, storage.clone()).await?;
        let offline = OfflineCommands::open(storage.clone());

        let (root, root_done) = Actor::spawn(Some("root".into()), Root, ()).await?;
        let (registry_ref, _) =
            Actor::spawn_linked(Some("registry".into()), RegistryActor, (), root.get_cell())
                .await?;
        let registry = Registry {
            actor: registry_ref.clone(),
        };

        let deps = SessionDeps {
            registry: registry.clone(),
            publisher: publisher.clone(),
            offline: offline.clone(),
            write_timeout: config.gateway.write_timeout,
            offline_reply_timeout: config.api.default_timeout,
        };
        let listener = TcpListener::bind(config.gateway.gt06_listen)
            .await
            .map_err(|e| anyhow::anyhow!("gt06 listen {}: {e}", config.gateway.gt06_listen))?;
        let gt06_addr = listener.local_addr()?;
        let protocol = Arc::new(Gt06Protocol::new(
            config.gateway.crc_policy,
            config.gateway.read_timeout,
            config.gateway.connect_timeout,
        ));
        let (gt06, _) = Actor::spawn_linked(
            Some("gateway-gt06".into()),
            Gateway::default(),
            GatewayArgs {
                protocol,
                listener,
                deps,
                max_connections: config.gateway.max_connections,
            },
            root.get_cell(),
        )
        .await?;

        let api = api::start(
            config,
            ApiDeps {
                registry: registry.clone(),
                offline,
                gate_id: config.gate_id.clone(),
            },
        )
        .await?;
        let api_addr = api.local_addr();
        Ok(Hub {
            root,
            root_done,
            gt06: gt06.get_cell(),
            registry: registry_ref.get_cell(),
            api,
            publisher,
            push,
            gt06_addr,
            api_addr,
        })
    }

    /// Resolves when the root stops on its own (a core actor failed).
    pub async fn failed(&mut self) {
        let _ = (&mut self.root_done).await;
    }

    /// Graceful stop: devices first (logouts stored), then the API, then storage users.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: closing device connections");
        self.gt06
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(15)))
            .await
            .ok();
        self.api.shutdown().await;
        self.registry
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .ok();
        self.push.stop().await;
        self.publisher.stop().await;
        self.root.stop(None);
        tracing::info!("shutdown complete");
    }
}
