//! Who owns each device: IMEI -> the live session. The newest connection wins: registering
//! tells the previous owner it was taken over. A session removes its entry only if it still
//! owns it, so a late cleanup of an old connection never evicts a newer login.
//!
//! One actor owns the map, so register/unregister races resolve in mailbox order. The map
//! is embedded (single node); cluster mode puts the same operations on Redis.

use std::collections::HashMap;

use iothub::imei::Imei;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::gateway::control::{SessionControl, SessionRef};

pub enum RegistryMsg {
    Register(Imei, SessionRef, RpcReplyPort<bool>),
    Unregister(Imei, ActorId),
    /// A session died without cleaning up (panic): drop whatever it owned.
    UnregisterSession(ActorId),
    Lookup(Imei, RpcReplyPort<Option<SessionRef>>),
    Count(RpcReplyPort<usize>),
}

pub struct RegistryActor;

pub struct RegistryState {
    sessions: HashMap<Imei, SessionRef>,
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RegistryState {
            sessions: HashMap::new(),
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
                    metrics::gauge!("iothub_registry_devices").set(state.sessions.len() as f64);
                }
            }
            RegistryMsg::UnregisterSession(owner) => {
                // Rare (only after a session panicked), so a scan is fine.
                state.sessions.retain(|_, s| s.id != owner);
                metrics::gauge!("iothub_registry_devices").set(state.sessions.len() as f64);
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
}

#[derive(Debug, thiserror::Error)]
#[error("registry is not running")]
pub struct RegistryDown;

impl Registry {
    /// Makes `session` the owner of `imei`; returns whether an older session was taken over.
    pub async fn register(&self, imei: Imei, session: SessionRef) -> Result<bool, RegistryDown> {
        ractor::call!(self.actor, RegistryMsg::Register, imei, session).map_err(|_| RegistryDown)
    }

    /// Removes the entry only if `owner` still owns it.
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
