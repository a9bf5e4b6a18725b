//! Per-connection protocol state machines. A channel never touches a socket or a clock:
//! the connection driver feeds it decoded frames, instructions and the current time, and
//! carries out the [`Action`]s it returns, in order. Because actions run in order, a
//! channel that returns `[Publish(event), Send(ack)]` gets the guarantee that the device is
//! acknowledged only after its event is durable.

pub mod detect;
pub mod gt06;
pub mod jt808;

use chrono::{DateTime, Utc};

use crate::command::{Instruction, InstructionRefusal, InstructionReply};
use crate::event::Event;
use crate::imei::Imei;

/// Something the connection driver must do for the channel.
///
/// `Publish` is much larger than the other variants; actions live for one handler call in a
/// short `Vec`, so boxing the event would only add an allocation per event.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
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
    /// Store this code as the device's, durably, before running the next action: a code the
    /// device authenticated with that the hub had never issued (JT/T 808 terminals registered
    /// with another platform, when the operator accepts them).
    StoreAuthCode { imei: Imei, code: String },
    /// Look up the code stored for this device and answer with
    /// [`Channel::handle_auth_verdict`] and this `check`; the channel's next actions depend
    /// on it.
    VerifyAuthCode {
        check: CheckId,
        imei: Imei,
        code: String,
    },
    /// A terminal registers (JT/T 808 0x0100): store `code` as its code, durably, unless the
    /// source is over its registration rate or it already holds a code and `replace` is
    /// false; answer with [`Channel::handle_registration_verdict`] and this `check`. The
    /// channel hands the code out only after a [`RegistrationVerdict::Registered`].
    RegisterTerminal {
        check: CheckId,
        imei: Imei,
        code: String,
        replace: bool,
    },
    /// The first frame of the connection showed which protocol the device speaks (counted
    /// per gateway, so devices pointed at the other protocol's port are visible).
    ProtocolDetected { protocol: &'static str },
}

/// Names one store check a channel asked for ([`Action::VerifyAuthCode`],
/// [`Action::RegisterTerminal`]). A channel applies an answer only to the check it names, so a
/// verdict can never land on another request of the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckId(pub u32);

/// What became of a registration the channel asked the driver to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationVerdict {
    /// The code is stored durably: hand it out.
    Registered,
    /// The device already holds a code and re-registration is not allowed.
    AlreadyRegistered,
    /// The connection's source address registered too many terminals lately.
    RateLimited,
    /// The store could not be written: the device will try again.
    Unavailable,
}

/// What the hub's store says about an authentication code a device presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The stored code is the one presented.
    Match,
    /// Another code is stored for this device.
    Mismatch,
    /// No code is stored for this device (it registered with another platform, or the
    /// store was reset).
    Unknown,
    /// The store could not be read: refuse for now, the device will retry.
    Unavailable,
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
    /// The device kept sending messages after being refused for not being authenticated
    /// (JT/T 808), past the grace period.
    NotAuthenticated,
    /// A frame of another protocol arrived on a connection that already spoke one.
    ProtocolChanged,
    /// The connection, or its source address, registered more terminals than allowed.
    TooManyRegistrations,
    /// The authentication-code store could not be written.
    StoreFailed,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::NotLoggedIn => "not_logged_in",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::IdentityChanged => "identity_changed",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::NotAuthenticated => "not_authenticated",
            CloseReason::ProtocolChanged => "protocol_changed",
            CloseReason::TooManyRegistrations => "too_many_registrations",
            CloseReason::StoreFailed => "store_failed",
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

    /// A message for the media server (JT/T 1078 0x9101/0x9102) in the form of an
    /// instruction. Unlike [`Channel::handle_instruction`] it leaves the one outstanding
    /// instruction alone and expects no reply; the device's general answer to it is
    /// dropped. Protocols without JT/T 1078 refuse it.
    fn handle_signal(
        &mut self,
        instruction: &Instruction,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        Err(InstructionRefusal::UnsupportedProNo(instruction.pro_no))
    }

    /// The instruction with this server flag got no answer in time: forget it, so the next
    /// one is not refused as busy.
    fn instruction_expired(&mut self, server_flag_id: u32);

    /// The answer to the [`Action::VerifyAuthCode`] named `check`. An answer to a check the
    /// channel is not waiting for is ignored. Protocols that do not authenticate with stored
    /// codes never ask.
    fn handle_auth_verdict(
        &mut self,
        _check: CheckId,
        _verdict: AuthVerdict,
        _now: DateTime<Utc>,
    ) -> Vec<Action> {
        Vec::new()
    }

    /// The answer to the [`Action::RegisterTerminal`] named `check`; as for
    /// [`Channel::handle_auth_verdict`], any other answer is ignored.
    fn handle_registration_verdict(
        &mut self,
        _check: CheckId,
        _verdict: RegistrationVerdict,
        _now: DateTime<Utc>,
    ) -> Vec<Action> {
        Vec::new()
    }

    /// Periodic tick: idle timeout and other timers.
    fn handle_tick(&mut self, now: DateTime<Utc>) -> Vec<Action>;

    /// The connection is going away (device closed it, takeover, shutdown): final events
    /// such as logout.
    fn handle_close(&mut self, now: DateTime<Utc>) -> Vec<Action>;

    /// The logged-in device, if any.
    fn imei(&self) -> Option<Imei>;
}
