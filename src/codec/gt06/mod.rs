//! GT06 / Concox / Jimi ("JIMI protocol") codec: `78 78` and `79 79` frames ending `0d 0a`,
//! CRC-ITU (CRC-16/X-25) over length..serial.
//!
//! [`decode`] cuts one frame from the front of a byte buffer and reads its message;
//! [`encode`] writes any [`Frame`] back (hub replies and commands, and the uplinks the load
//! generator simulates). Field meanings follow the shared GT06 reference; the framing
//! exceptions real devices need (WiFi frames whose byte 2 is an AP count, heartbeats whose
//! length is 2 short, ZhongXun GPS and login frames without serial/CRC) are handled in
//! `decode.rs`, each by a rule that depends only on the bytes, never on how they arrived.

pub mod crc;
mod decode;
mod encode;
mod message;
#[cfg(test)]
mod tests;

pub use encode::MAX_COMMAND_TEXT;
pub use message::*;

use chrono::{DateTime, Utc};

use super::CrcPolicy;

/// Largest frame accepted, in bytes; anything claiming more is refused before allocating.
pub const MAX_FRAME_LEN: usize = 2048;

/// Most bytes skipped while looking for a start marker before the stream is declared
/// unusable: enough for a torn frame or line noise, not for a peer speaking another protocol.
pub const MAX_GARBAGE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No start marker within the first [`MAX_GARBAGE`] bytes; carries the first two bytes.
    #[error("bad start bytes {0:02x}{1:02x}")]
    BadStart(u8, u8),
    #[error("frame length {0} exceeds the maximum {MAX_FRAME_LEN}")]
    TooLong(usize),
    /// The stop bytes are not where the length (or the WiFi counts) put them.
    #[error("frame does not end with 0d0a")]
    BadStop,
    /// Only under [`CrcPolicy::Reject`].
    #[error("CRC mismatch: frame says {got:04x}, computed {expected:04x}")]
    Crc { got: u16, expected: u16 },
    /// Not produced by [`decode`]: a body that does not parse becomes [`Message::Unknown`]
    /// (an unknown or malformed body never closes a connection). Kept for callers that
    /// validate messages themselves.
    #[error("protocol 0x{protocol:02x}: {reason}")]
    BadBody { protocol: u8, reason: &'static str },
}

impl DecodeError {
    /// Short label for the `decode errors by kind` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::BadStart(..) => "bad_start",
            DecodeError::TooLong(_) => "too_long",
            DecodeError::BadStop => "bad_stop",
            DecodeError::Crc { .. } => "crc",
            DecodeError::BadBody { .. } => "bad_body",
        }
    }
}

/// A frame cut from the front of a buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub frame: Frame,
    /// Bytes of the buffer used, including any skipped garbage before the frame.
    pub consumed: usize,
    /// Garbage bytes skipped before the start marker (already counted in `consumed`).
    pub skipped: usize,
}

/// Decodes the first frame of `buf`: `Ok(None)` when more bytes are needed.
///
/// Up to [`MAX_GARBAGE`] bytes before a start marker are skipped (and reported in
/// `skipped`); more than that is `Err(BadStart)`. A length beyond [`MAX_FRAME_LEN`] is
/// `Err(TooLong)` as soon as the length field is readable. A CRC mismatch is
/// `Err(Crc)` under [`CrcPolicy::Reject`] and `crc_ok: Some(false)` under
/// [`CrcPolicy::Warn`]. Frames without a CRC (WiFi AP-count form, ZhongXun 0x10/0x11 and
/// short logins, lengths below 5) have `serial: None, crc_ok: None` under both policies.
/// Allocates only what the message holds (no allocation for location frames).
pub fn decode(buf: &[u8], policy: CrcPolicy) -> Result<Option<Decoded>, DecodeError> {
    decode::decode(buf, policy)
}

/// Encodes a frame (either direction) into `out`, computing length and CRC.
///
/// `crc_ok` is ignored (a CRC is always written, except for the WiFi AP-count form of
/// 0x69/0x17, which has none); `serial: None` is written as 0. A `78 78` frame whose content
/// exceeds the 1-byte length is written in the `79 79` form. Command and 0x15 reply texts
/// longer than [`MAX_COMMAND_TEXT`] bytes are cut at a character boundary (their length
/// byte cannot say more).
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    encode::encode(frame, out)
}

/// [`encode`] into a new buffer.
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    encode(frame, &mut out);
    out
}

/// The generic acknowledgement `78 78 05 <protocol> <serial> <crc> 0d 0a` (login,
/// heartbeat, alarm replies).
pub fn encode_ack(protocol: u8, serial: u16) -> Vec<u8> {
    encode_to_vec(&Frame {
        extended: false,
        protocol,
        serial: Some(serial),
        crc_ok: None,
        message: Message::Ack,
    })
}

/// The mandatory reply to WiFi AP-count frames (0x69, 0x17) and ZhongXun 0x10/0x11:
/// `78 78 00 <protocol> <the 6 time bytes as received> 0d 0a`, no serial, no CRC.
pub fn encode_wifi_reply(protocol: u8, time_raw: [u8; 6]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&[0x78, 0x78, 0x00, protocol]);
    out.extend_from_slice(&time_raw);
    out.extend_from_slice(&[0x0D, 0x0A]);
    out
}

/// Reply to a 0x8A time request: `now` in UTC, echoing the request's serial.
pub fn encode_time_reply(now: DateTime<Utc>, serial: u16) -> Vec<u8> {
    encode_to_vec(&Frame {
        extended: false,
        protocol: 0x8A,
        serial: Some(serial),
        crc_ok: None,
        message: Message::TimeReply(now),
    })
}

/// A 0x80 online command without the optional language word (as every sample and
/// traccar's default send it).
pub fn encode_online_command(server_flag: u32, command: &str, serial: u16) -> Vec<u8> {
    encode_to_vec(&Frame {
        extended: false,
        protocol: 0x80,
        serial: Some(serial),
        crc_ok: None,
        message: Message::OnlineCommand(OnlineCommand {
            server_flag,
            command: command.to_owned(),
        }),
    })
}
