//! Per-connection protocol state machines. A channel never touches a socket or a clock:
//! the connection driver feeds it decoded frames, instructions and the current time, and
//! carries out the [`Action`]s it returns, in order. Because actions run in order, a
//! channel that returns `[Publish(event), Send(ack)]` gets the guarantee that the device is
//! acknowledged only after its event is durable.

pub mod gt06;

use chrono::{DateTime, Utc};

use crate::command::{Instruction, InstructionRefusal, InstructionReply};
use crate::event::Event;
use crate::imei::Imei;

/// Something the connection driver must do for the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write these bytes to the device.
    Send(Vec<u8>),
    /// Make the event durable (embedded log or Kafka) before running the next action.
    Publish(Event),
    /// The device proved who it is: register this connection as its owner, replacing any
    /// older connection, then deliver its queued offline instructions.
    LoggedIn { imei: Imei },
    /// The device answered an instruction.
    InstructionReply(InstructionReply),
    /// Close the connection.
    Close(CloseReason),
    /// The device sent a message type this channel does not handle (or one that only ever
    /// travels server to device): nothing was published or answered. The driver logs it and
    /// counts it by protocol number (GT06 protocol number, JT/T 808 message id).
    Unrecognised { protocol: u16 },
}

/// Why a channel closes its connection: the label of the `sessions closed` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A message other than login arrived first.
    NotLoggedIn,
    /// Nothing arrived within `readTimeOut`.
    IdleTimeout,
    /// The device logged in again with another IMEI on the same connection.
    IdentityChanged,
    /// The connection did not log in within the login timeout.
    LoginTimeout,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::NotLoggedIn => "not_logged_in",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::IdentityChanged => "identity_changed",
            CloseReason::LoginTimeout => "login_timeout",
        }
    }
}

/// The interface every protocol's channel offers to the one generic connection driver.
pub trait Channel: Send + 'static {
    /// The decoded frame type of this protocol's codec.
    type Frame: Send + 'static;

    /// A frame arrived at `now`.
    fn handle_frame(&mut self, frame: Self::Frame, now: DateTime<Utc>) -> Vec<Action>;

    /// The customer asks to send an instruction. On success the returned actions put it on
    /// the wire; the answer comes later as [`Action::InstructionReply`].
    fn handle_instruction(
        &mut self,
        instruction: &Instruction,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal>;

    /// The instruction with this server flag got no answer in time: forget it, so the next
    /// one is not refused as busy.
    fn instruction_expired(&mut self, server_flag_id: u32);

    /// Periodic tick: idle timeout and other timers.
    fn handle_tick(&mut self, now: DateTime<Utc>) -> Vec<Action>;

    /// The connection is going away (device closed it, takeover, shutdown): final events
    /// such as logout.
    fn handle_close(&mut self, now: DateTime<Utc>) -> Vec<Action>;

    /// The logged-in device, if any.
    fn imei(&self) -> Option<Imei>;
}
