//! How the media server asks a JT/T 808 dashcam to start or stop streaming: 0x9101 and
//! 0x9102 through the device's live session, as [`SessionControl::Signal`]s, so they never
//! occupy the instruction slot the customer's `sendInstruct` uses.

use std::net::SocketAddr;
use std::time::Duration;

use iothub::command::Instruction;
use iothub::imei::Imei;
use tokio::sync::oneshot;

use crate::gateway::control::SessionControl;
use crate::registry::Registry;

/// How long a session may take to put a signal on the wire.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// proNo of 0x9101 and 0x9102 in the Jimi instruction interface.
const PRO_NO_LIVE_REQUEST: u32 = 0x9101;
const PRO_NO_LIVE_CONTROL: u32 = 0x9102;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("device is not online on this node")]
    Offline,
    #[error("device session refused the signal: {0}")]
    Refused(String),
    #[error("device session did not take the signal in time")]
    NoAnswer,
}

/// The way to the devices' sessions, and what 0x9101 tells them to connect to.
#[derive(Clone)]
pub struct DeviceSignals {
    registry: Option<Registry>,
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

    /// Whether `imei` has a live session on this node.
    pub async fn online(&self, imei: Imei) -> bool {
        #[cfg(test)]
        if self.online_in_tests.contains(&imei) {
            return true;
        }
        match &self.registry {
            Some(registry) => matches!(registry.lookup(imei).await, Ok(Some(_))),
            None => false,
        }
    }

    /// 0x9101: stream `channel` (audio and video, main stream) to this node over TCP.
    pub async fn start_live(&self, imei: Imei, channel: u8) -> Result<(), SignalError> {
        let host = self.public_host.clone();
        let port = self.public_live_port;
        self.send(
            imei,
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
            }),
        )
        .await
    }

    /// 0x9102 command 0: close audio and video of `channel`.
    pub async fn stop_live(&self, imei: Imei, channel: u8) -> Result<(), SignalError> {
        self.send(
            imei,
            Box::new(move |_| {
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
        )
        .await
    }

    async fn send(
        &self,
        imei: Imei,
        build: Box<dyn FnOnce(Option<SocketAddr>) -> Instruction + Send>,
    ) -> Result<(), SignalError> {
        let Some(registry) = &self.registry else {
            return Err(SignalError::Offline);
        };
        let Ok(Some(session)) = registry.lookup(imei).await else {
            return Err(SignalError::Offline);
        };
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
