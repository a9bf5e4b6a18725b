//! Who owns each device: IMEI -> the live session. The newest connection wins: registering
//! tells the previous owner it was taken over. A session removes its entry only if it still
//! owns it, so a late cleanup of an old connection never evicts a newer login.
//!
//! One actor owns the map of this node's sessions, so register/unregister races resolve in
//! mailbox order. In cluster mode the map is mirrored as routes in Redis ([`Cluster`]): a
//! login claims the device's route after it is registered here, a removal releases it only
//! while the removed session still owns it, and a lookup for a device that is not here asks
//! Redis which node has it. Redis calls are made by the callers, never inside the actor, so
//! a slow Redis never stalls the map.

use std::collections::HashMap;
use std::sync::Arc;

use iothub::imei::Imei;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::cluster::redis::RedisFailure;
use crate::cluster::Cluster;
use crate::gateway::control::{SessionControl, SessionRef};

pub enum RegistryMsg {
    Register(Imei, SessionRef, RpcReplyPort<bool>),
    Unregister(Imei, ActorId),
    /// A session died without cleaning up (panic): drop whatever it owned.
    UnregisterSession(ActorId),
    Lookup(Imei, RpcReplyPort<Option<SessionRef>>),
    Count(RpcReplyPort<usize>),
    /// Every device of this node with its session (what the cluster renews).
    Owned(RpcReplyPort<Vec<(Imei, ActorId)>>),
    /// The device logged in at another node: close the session with this pid if it still
    /// owns the device.
    Evict(Imei, u64),
}

pub struct RegistryActor;

pub struct RegistryState {
    sessions: HashMap<Imei, SessionRef>,
    cluster: Option<Arc<Cluster>>,
}

impl RegistryState {
    fn removed(&self, imei: Imei, session: ActorId) {
        if let Some(cluster) = &self.cluster {
            cluster.release(imei, session);
        }
    }
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    /// The cluster this node belongs to, in cluster mode.
    type Arguments = Option<Arc<Cluster>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RegistryState {
            sessions: HashMap::new(),
            cluster,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Register(imei, session, reply) => {
                let new_id = session.id;
                let replaced = match state.sessions.insert(imei, session) {
                    Some(previous) if previous.id != new_id => {
                        previous.send(SessionControl::TakenOver);
                        metrics::counter!("iothub_session_takeovers_total").increment(1);
                        true
                    }
                    _ => false,
                };
                metrics::gauge!("iothub_registry_devices").set(state.sessions.len() as f64);
                let _ = reply.send(replaced);
            }
            RegistryMsg::Unregister(imei, owner) => {
                if state.sessions.get(&imei).is_some_and(|s| s.id == owner) {
                    state.sessions.remove(&imei);
                    state.removed(imei, owner);
                    metrics::gauge!("iothub_registry_devices").set(state.sessions.len() as f64);
                }
            }
            RegistryMsg::UnregisterSession(owner) => {
                // Rare (only after a session panicked), so a scan is fine.
                let gone: Vec<Imei> = state
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.id == owner)
                    .map(|(imei, _)| *imei)
                    .collect();
                for imei in gone {
                    state.sessions.remove(&imei);
                    state.removed(imei, owner);
                }
                metrics::gauge!("iothub_registry_devices").set(state.sessions.len() as f64);
            }
            RegistryMsg::Owned(reply) => {
                let _ = reply.send(state.sessions.iter().map(|(i, s)| (*i, s.id)).collect());
            }
            RegistryMsg::Evict(imei, pid) => {
                if state.sessions.get(&imei).is_some_and(|s| s.id.pid() == pid) {
                    if let Some(session) = state.sessions.remove(&imei) {
                        // The route is the new owner's now: nothing to release.
                        session.send(SessionControl::TakenOver);
                        metrics::counter!("iothub_session_takeovers_total").increment(1);
                    }
                    metrics::gauge!("iothub_registry_devices").set(state.sessions.len() as f64);
                }
            }
            RegistryMsg::Lookup(imei, reply) => {
                let _ = reply.send(state.sessions.get(&imei).cloned());
            }
            RegistryMsg::Count(reply) => {
                let _ = reply.send(state.sessions.len());
            }
        }
        Ok(())
    }
}

/// Cheap clonable handle to the registry.
#[derive(Clone)]
pub struct Registry {
    pub actor: ActorRef<RegistryMsg>,
    pub cluster: Option<Arc<Cluster>>,
}

#[derive(Debug, thiserror::Error)]
#[error("registry is not running")]
pub struct RegistryDown;

/// Where an instruction for a device has to go.
pub enum Target {
    /// A session of this node.
    Local(SessionRef),
    /// A session of another node, reached at its internal address.
    Remote { gate: String, addr: String },
    /// No node has the device (cluster mode: no route in Redis, or its node is gone).
    NoRoute,
    /// Single node: the device is not connected. Cluster mode: the route names this node
    /// but its session has just ended.
    Offline,
}

/// Why the target of a device cannot be known.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    RegistryDown(#[from] RegistryDown),
    #[error("route table unreachable ({0})")]
    Redis(#[from] RedisFailure),
}

impl Registry {
    /// Makes `session` the owner of `imei`; returns whether an older session of this node
    /// was taken over. In cluster mode the route is claimed in Redis as well.
    pub async fn register(&self, imei: Imei, session: SessionRef) -> Result<bool, RegistryDown> {
        let id = session.id;
        let replaced = ractor::call!(self.actor, RegistryMsg::Register, imei, session)
            .map_err(|_| RegistryDown)?;
        if let Some(cluster) = &self.cluster {
            cluster.claim(imei, id).await;
        }
        Ok(replaced)
    }

    /// Every device of this node with the id of its session.
    pub async fn owned(&self) -> Result<Vec<(Imei, ActorId)>, RegistryDown> {
        ractor::call!(self.actor, RegistryMsg::Owned).map_err(|_| RegistryDown)
    }

    /// Closes the session `pid` of `imei` if it still owns the device (a newer connection
    /// logged in at another node).
    pub fn evict(&self, imei: Imei, pid: u64) {
        let _ = self.actor.cast(RegistryMsg::Evict(imei, pid));
    }

    /// Where an instruction for `imei` has to go: this node first, then (cluster mode) the
    /// route in Redis.
    pub async fn target(&self, imei: Imei) -> Result<Target, RouteError> {
        if let Some(session) = self.lookup(imei).await? {
            return Ok(Target::Local(session));
        }
        let Some(cluster) = &self.cluster else {
            return Ok(Target::Offline);
        };
        let Some(route) = cluster.routes.lookup(imei).await? else {
            return Ok(Target::NoRoute);
        };
        if route.gate == cluster.gate_id {
            return Ok(Target::Offline);
        }
        match cluster.nodes.address(&route.gate).await? {
            Some(addr) => Ok(Target::Remote {
                gate: route.gate,
                addr,
            }),
            None => Ok(Target::NoRoute),
        }
    }

    /// Removes the entry only if `owner` still owns it (and its route, in cluster mode).
    pub fn unregister(&self, imei: Imei, owner: ActorId) {
        let _ = self.actor.cast(RegistryMsg::Unregister(imei, owner));
    }

    /// Removes every entry owned by a session that died without cleaning up.
    pub fn unregister_session(&self, owner: ActorId) {
        let _ = self.actor.cast(RegistryMsg::UnregisterSession(owner));
    }

    pub async fn lookup(&self, imei: Imei) -> Result<Option<SessionRef>, RegistryDown> {
        ractor::call!(self.actor, RegistryMsg::Lookup, imei).map_err(|_| RegistryDown)
    }

    pub async fn count(&self) -> Result<usize, RegistryDown> {
        ractor::call!(self.actor, RegistryMsg::Count).map_err(|_| RegistryDown)
    }
}
