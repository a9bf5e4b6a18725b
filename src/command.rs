//! Instructions from the customer API and the `_code` answers of the Jimi instruction
//! interface (`POST /api/device/sendInstruct`). Protocol-neutral: each channel turns an
//! [`Instruction`] into its own downlink message.

use serde::{Deserialize, Serialize};

/// `data._code` of a sendInstruct answer, with the texts the Jimi hub uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstructCode {
    /// 100: sent, and the device answered (its reply is in `_content`).
    Ok,
    /// 200: a request field is missing or invalid.
    BadParameter,
    /// 300: the device is not online.
    Offline,
    /// 301: no route to the device's gateway.
    NoRoute,
    /// 302: the previous instruction to this device has not been answered yet.
    Busy,
    /// 400: the route to the device broke mid-request (cluster mode: the owning node went
    /// away), so whether the device received the instruction is unknown.
    NetworkError,
    /// 500: the hub failed while handling the request.
    InternalError,
    /// 600: the device did not answer within `timeOut`.
    Timeout,
}

impl InstructCode {
    /// The `_code` string.
    pub fn code(self) -> &'static str {
        match self {
            InstructCode::Ok => "100",
            InstructCode::BadParameter => "200",
            InstructCode::Offline => "300",
            InstructCode::NoRoute => "301",
            InstructCode::Busy => "302",
            InstructCode::NetworkError => "400",
            InstructCode::InternalError => "500",
            InstructCode::Timeout => "600",
        }
    }

    /// The `_msg` text.
    pub fn message(self) -> &'static str {
        match self {
            InstructCode::Ok => "Command communication successful response",
            InstructCode::BadParameter => "Invalid parameter",
            InstructCode::Offline => "Device not online",
            InstructCode::NoRoute => "Device not registered with route table",
            InstructCode::Busy => "Device busy (previous command has not returned)",
            InstructCode::NetworkError => "Network error",
            InstructCode::InternalError => "Code execution exception",
            InstructCode::Timeout => "request timeout",
        }
    }
}

/// An instruction addressed to one connected device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    /// Jimi `proNo`: 128 = text command (GT06 0x80); JT/T message ids in decimal.
    pub pro_no: u32,
    /// Text command (`STATUS#`) for proNo 128, JSON for JT/T proNos.
    pub content: String,
    /// Jimi `serverFlagId`: echoed back, and the GT06 0x80 server flag on the wire.
    pub server_flag_id: u32,
}

/// Why a channel refuses an instruction before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstructionRefusal {
    #[error("device has not logged in")]
    NotLoggedIn,
    #[error("previous instruction has not been answered")]
    Busy,
    #[error("proNo {0} is not supported by this device protocol")]
    UnsupportedProNo(u32),
    #[error("{field}: {reason}")]
    BadParameter { field: &'static str, reason: String },
}

impl InstructionRefusal {
    pub fn code(&self) -> InstructCode {
        match self {
            InstructionRefusal::NotLoggedIn => InstructCode::Offline,
            InstructionRefusal::Busy => InstructCode::Busy,
            InstructionRefusal::UnsupportedProNo(_) | InstructionRefusal::BadParameter { .. } => {
                InstructCode::BadParameter
            }
        }
    }
}

/// A device's answer to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionReply {
    pub server_flag_id: u32,
    /// `_proNo` of the answer: the reply message id (GT06: 128 for 0x80's text replies).
    pub pro_no: u32,
    /// `_content`: the device's text reply (or JSON for structured JT/T replies).
    pub content: String,
}
