//! How the media server asks a JT/T 808 dashcam to start or stop streaming: 0x9101 and
//! 0x9102 through the device's live session, as [`SessionControl::Signal`]s, so they never
//! occupy the instruction slot the customer's `sendInstruct` uses.
//!
//! This is the one place that knows how to reach a device's session for media. In cluster
//! mode the session may live on another node: the signal then goes to that node over its
//! internal listener (`POST /internal/v1/media/signal`), which hands it to its own session
//! with its own `media.public_host` and port, so the device streams to the address that
//! node tells it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iothub::command::Instruction;
use iothub::imei::Imei;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::cluster::internal::{self, MediaSignalAnswer};
use crate::cluster::Cluster;
use crate::gateway::control::{SessionControl, SessionRef};
use crate::registry::{Registry, RouteError, Target};

/// How long a session may take to put a signal on the wire.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// proNo of 0x9101 and 0x9102 in the Jimi instruction interface.
const PRO_NO_LIVE_REQUEST: u32 = 0x9101;
const PRO_NO_LIVE_CONTROL: u32 = 0x9102;

/// Which signal a live stream gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveSignal {
    /// 0x9101: stream the channel.
    Start,
    /// 0x9102 command 0: close the channel's audio and video.
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("device is not online")]
    Offline,
    #[error("device session refused the signal: {0}")]
    Refused(String),
    #[error("device session did not take the signal in time")]
    NoAnswer,
    /// Cluster mode: Redis or the node holding the device's session cannot be reached.
    #[error("{0}")]
    Unreachable(String),
}

/// The way to the devices' sessions, and what 0x9101 tells them to connect to.
#[derive(Clone)]
pub struct DeviceSignals {
    registry: Option<Registry>,
    /// Cluster mode: the way to sessions on other nodes (routes and the node-to-node client).
    cluster: Option<Arc<Cluster>>,
    /// Host name or address for 0x9101; empty = the address the device's connection reached.
    public_host: String,
    public_live_port: u16,
    /// Devices taken as online without a registry: tests only.
    #[cfg(test)]
    online_in_tests: Vec<Imei>,
}

impl DeviceSignals {
    pub fn new(registry: Registry, public_host: String, public_live_port: u16) -> DeviceSignals {
        DeviceSignals {
            cluster: registry.cluster.clone(),
            registry: Some(registry),
            public_host,
            public_live_port,
            #[cfg(test)]
            online_in_tests: Vec::new(),
        }
    }

    /// Signals that reach no device (a media server without gateways, in tests).
    pub fn none() -> DeviceSignals {
        DeviceSignals {
            registry: None,
            cluster: None,
            public_host: String::new(),
            public_live_port: 0,
            #[cfg(test)]
            online_in_tests: Vec::new(),
        }
    }

    /// Test only: signals that reach no device, but take `imeis` as online (publishing
    /// rights in tests).
    #[cfg(test)]
    pub fn online_for_tests(imeis: Vec<Imei>) -> DeviceSignals {
        DeviceSignals {
            online_in_tests: imeis,
            ..DeviceSignals::none()
        }
    }

    /// The cluster this node belongs to, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Whether `imei` has a live session on this node.
    pub async fn online_here(&self, imei: Imei) -> bool {
        #[cfg(test)]
        if self.online_in_tests.contains(&imei) {
            return true;
        }
        match &self.registry {
            Some(registry) => matches!(registry.lookup(imei).await, Ok(Some(_))),
            None => false,
        }
    }

    /// Whether `imei` has a live session on this node, or (cluster mode) a route naming
    /// any node: whether the device may publish its streams here.
    pub async fn online(&self, imei: Imei) -> bool {
        if self.online_here(imei).await {
            return true;
        }
        match &self.cluster {
            Some(cluster) => matches!(cluster.routes.lookup(imei).await, Ok(Some(_))),
            None => false,
        }
    }

    /// 0x9101: stream `channel` (audio and video, main stream) over TCP to the node that
    /// holds the device's session.
    pub async fn start_live(&self, imei: Imei, channel: u8) -> Result<(), SignalError> {
        self.signal(imei, channel, LiveSignal::Start).await
    }

    /// 0x9102 command 0: close audio and video of `channel`.
    pub async fn stop_live(&self, imei: Imei, channel: u8) -> Result<(), SignalError> {
        self.signal(imei, channel, LiveSignal::Stop).await
    }

    /// `which` to the device's session, on this node or (cluster mode) on the node its
    /// route names.
    pub async fn signal(
        &self,
        imei: Imei,
        channel: u8,
        which: LiveSignal,
    ) -> Result<(), SignalError> {
        let Some(registry) = &self.registry else {
            return Err(SignalError::Offline);
        };
        let Some(cluster) = &self.cluster else {
            return self.signal_local(imei, channel, which).await;
        };
        match registry.target(imei).await {
            Ok(Target::Local(session)) => {
                self.send(session, self.instruction(channel, which)).await
            }
            Ok(Target::Remote { gate, addr }) => {
                let signal = internal::MediaSignal {
                    imei,
                    channel,
                    signal: which,
                };
                match internal::media_signal(cluster, &gate, &addr, &signal).await {
                    Ok(MediaSignalAnswer::Sent) => Ok(()),
                    Ok(MediaSignalAnswer::NotHere) => Err(SignalError::Offline),
                    Ok(MediaSignalAnswer::Refused(why)) => Err(SignalError::Refused(why)),
                    Ok(MediaSignalAnswer::NoAnswer) => Err(SignalError::NoAnswer),
                    Err(e) => Err(SignalError::Unreachable(format!("cluster: {e}"))),
                }
            }
            Ok(Target::NoRoute | Target::Offline) | Err(RouteError::RegistryDown(_)) => {
                Err(SignalError::Offline)
            }
            Err(RouteError::Redis(e)) => Err(SignalError::Unreachable(e.to_string())),
        }
    }

    /// `which` to the device's session on this node only (what another node asked for).
    pub async fn signal_local(
        &self,
        imei: Imei,
        channel: u8,
        which: LiveSignal,
    ) -> Result<(), SignalError> {
        let Some(registry) = &self.registry else {
            return Err(SignalError::Offline);
        };
        let Ok(Some(session)) = registry.lookup(imei).await else {
            return Err(SignalError::Offline);
        };
        self.send(session, self.instruction(channel, which)).await
    }

    /// The instruction of `which`, built by the session (0x9101 names the address the
    /// device's connection reached when no public host is set).
    fn instruction(
        &self,
        channel: u8,
        which: LiveSignal,
    ) -> Box<dyn FnOnce(Option<SocketAddr>) -> Instruction + Send> {
        match which {
            LiveSignal::Start => {
                let host = self.public_host.clone();
                let port = self.public_live_port;
                Box::new(move |local: Option<SocketAddr>| {
                    let host = match (host.is_empty(), local) {
                        (false, _) | (true, None) => host,
                        (true, Some(local)) => local.ip().to_string(),
                    };
                    let content = serde_json::json!({
                        "videoIP": host,
                        "videoTCPPort": port,
                        "videoUDPPort": 0,
                        "channel": channel,
                        "dataType": 0,
                        "codeStreamType": 0,
                    });
                    Instruction {
                        pro_no: PRO_NO_LIVE_REQUEST,
                        content: content.to_string(),
                        server_flag_id: 0,
                    }
                })
            }
            LiveSignal::Stop => Box::new(move |_| {
                let content = serde_json::json!({
                    "channel": channel,
                    "cmd": 0,
                    "dataType": 0,
                    "codeStreamType": 0,
                });
                Instruction {
                    pro_no: PRO_NO_LIVE_CONTROL,
                    content: content.to_string(),
                    server_flag_id: 0,
                }
            }),
        }
    }

    async fn send(
        &self,
        session: SessionRef,
        build: Box<dyn FnOnce(Option<SocketAddr>) -> Instruction + Send>,
    ) -> Result<(), SignalError> {
        let (reply, answer) = oneshot::channel();
        if !session.send(SessionControl::Signal { build, reply }) {
            return Err(SignalError::Offline);
        }
        match tokio::time::timeout(SIGNAL_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(refused))) => Err(SignalError::Refused(
                refused
                    .detail
                    .unwrap_or_else(|| refused.code.message().to_string()),
            )),
            Ok(Err(_)) => Err(SignalError::Offline),
            Err(_) => Err(SignalError::NoAnswer),
        }
    }
}
