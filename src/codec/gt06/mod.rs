//! GT06 / Concox / Jimi ("JIMI protocol") codec: `78 78` and `79 79` frames ending `0d 0a`,
//! CRC-ITU (CRC-16/X-25) over length..serial.

pub mod crc;
mod message;

pub use message::*;

use super::CrcPolicy;

/// Largest frame accepted, in bytes; anything claiming more is refused before allocating.
pub const MAX_FRAME_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad start bytes {0:02x}{1:02x}")]
    BadStart(u8, u8),
    #[error("frame length {0} exceeds the maximum {MAX_FRAME_LEN}")]
    TooLong(usize),
    #[error("frame does not end with 0d0a")]
    BadStop,
    #[error("CRC mismatch: frame says {got:04x}, computed {expected:04x}")]
    Crc { got: u16, expected: u16 },
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
}

/// Decodes the first frame of `buf`: `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8], policy: CrcPolicy) -> Result<Option<Decoded>, DecodeError> {
    let _ = (buf, policy);
    Err(DecodeError::BadStop) // replaced by the real decoder
}

/// Encodes a frame (either direction) into `out`, computing length and CRC.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let _ = (frame, out);
}
