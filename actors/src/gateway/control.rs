//! Messages any device session accepts whatever its protocol: what the registry and the API
//! hold a [`SessionRef`] for.

use std::time::Duration;

use iothub::command::{InstructCode, Instruction, InstructionReply};
use ractor::{ActorId, DerivedActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Outcome of an instruction sent to a live session: the device's reply, or why there is
/// none.
pub type InstructOutcome = Result<InstructionReply, NotAnswered>;

/// Why an instruction got no reply: the `_code`, and for a refusal by the device's protocol
/// (a bad `cmdContent` field) the text naming the field, for `data._msg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotAnswered {
    pub code: InstructCode,
    pub detail: Option<String>,
}

impl From<InstructCode> for NotAnswered {
    fn from(code: InstructCode) -> Self {
        NotAnswered { code, detail: None }
    }
}

pub enum SessionControl {
    /// Send an instruction to the device and answer with its reply. The session answers
    /// 600 itself when `timeout` passes, so the caller never waits on a dead device.
    Instruct {
        instruction: Instruction,
        timeout: std::time::Duration,
        reply: oneshot::Sender<InstructOutcome>,
    },
    /// A newer connection of the same device logged in: close this one.
    TakenOver,
    /// Send a message for the media server (JT/T 1078 0x9101/0x9102). It does not take the
    /// device's one instruction slot, so a customer's instruction is never refused as busy
    /// because of it, nor the reverse; the device's general answer to it is not awaited
    /// (the stream starting or stopping is the answer). `build` gets the local address the
    /// device's connection reached, for a 0x9101 that names no configured host.
    Signal {
        build: Box<dyn FnOnce(Option<std::net::SocketAddr>) -> Instruction + Send>,
        reply: oneshot::Sender<Result<(), NotAnswered>>,
    },
}

/// A protocol-neutral reference to a live device session.
#[derive(Clone)]
pub struct SessionRef {
    pub id: ActorId,
    pub control: DerivedActorRef<SessionControl>,
}

impl SessionRef {
    pub fn send(&self, msg: SessionControl) -> bool {
        self.control.send_message(msg).is_ok()
    }
}

/// What became of an instruction handed to a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The session answered: the device's reply, or why there is none.
    Answered(InstructOutcome),
    /// The session was gone before it took the instruction, or died holding it: the
    /// device's connection is gone.
    SessionGone,
    /// The session did not answer by its own deadline plus `margin` (a wedged session).
    NoAnswer,
}

/// Hands `instruction` to `session` and waits at most `timeout` + `margin` for the outcome.
pub async fn instruct(
    session: &SessionRef,
    instruction: Instruction,
    timeout: Duration,
    margin: Duration,
) -> Delivery {
    let (reply, answer) = oneshot::channel();
    let sent = session.send(SessionControl::Instruct {
        instruction,
        timeout,
        reply,
    });
    if !sent {
        return Delivery::SessionGone;
    }
    match tokio::time::timeout(timeout + margin, answer).await {
        Ok(Ok(outcome)) => Delivery::Answered(outcome),
        Ok(Err(_)) => Delivery::SessionGone,
        Err(_) => Delivery::NoAnswer,
    }
}
