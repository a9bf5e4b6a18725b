//! JT/T 808 codec (2011, 2013 and 2019 revisions) with the JT/T 1078 and Su-biao
//! signalling messages carried over it.
//!
//! Layers, each usable alone: [`next_frame`] cuts `7e`-delimited frames out of a stream
//! buffer without allocating; [`decode_frame`] unescapes one, checks the XOR code, reads
//! the header (either layout, see `header.rs` for the version-bit quirks) and the body;
//! [`decode_body`] reads a body on its own (after subpackage reassembly, see
//! [`Reassembler`]); [`encode`] writes any message back, computing length, XOR and escapes.
//! Everything is a pure function over byte slices; errors mean the stream is unusable,
//! while a body that does not parse becomes [`Message::Invalid`] and keeps the connection.

mod decode;
mod encode;
pub mod frame;
pub mod header;
mod message;
pub mod subpackage;
#[cfg(test)]
mod tests;

pub use decode::{decode_body, decode_location};
pub use encode::{
    encode, encode_body, encode_general_response, encode_item, encode_raw, encode_split,
    EncodeError,
};
pub use frame::{next_frame, RawFrame};
pub use header::{Header, Package, Phone, Properties, MAX_BODY_LEN};
pub use message::*;
pub use subpackage::{Limits, Reassembled, Reassembler, SubpackageError};

use super::CrcPolicy;
use crate::imei::{luhn_digit, Imei};

/// Largest frame on the wire, flags included: a 21-byte header, a 1023-byte body and the
/// check code, every byte escaped to two. Longer open frames are refused before allocating.
pub const MAX_FRAME_LEN: usize = 2 * (21 + MAX_BODY_LEN + 1) + 2;

/// Most locations one 0x0704 may carry. A 0x0704 that fits one frame holds at most 34; one
/// reassembled from subpackages could hold tens of thousands, each turning into events, so a
/// batch declaring more is refused as invalid (result 2) instead of decoded. With
/// `channel::jt808::records::MAX_ALARMS_PER_LOCATION` this bounds the events of one frame.
pub const MAX_BATCH_LOCATIONS: usize = 1024;

/// Most bytes skipped before a `7e` flag before the stream is declared unusable.
pub const MAX_GARBAGE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("no 7e flag in {skipped} bytes")]
    NoFlag { skipped: usize },
    #[error("frame of at least {0} bytes exceeds the maximum {MAX_FRAME_LEN}")]
    TooLong(usize),
    /// `7d` followed by something other than `01`/`02` (or by the end of the frame).
    #[error("invalid escape at {at}: 7d followed by {next:02x?}")]
    BadEscape { at: usize, next: Option<u8> },
    /// Fewer bytes than the smallest header plus check code.
    #[error("packet of {0} bytes is shorter than its header")]
    Short(usize),
    /// The body length in the properties word fits neither header layout.
    #[error("body length {declared} in the header, {actual} bytes present")]
    BodyLength { declared: usize, actual: usize },
    /// Only under [`CrcPolicy::Reject`].
    #[error("check code mismatch: frame says {got:02x}, computed {expected:02x}")]
    Check { got: u8, expected: u8 },
    /// Properties bits 10..=12 are set: the body is encrypted (RSA) and this hub holds no key.
    #[error(
        "message 0x{msg_id:04x} has an encrypted body (mode {mode}); encryption is not supported"
    )]
    Encrypted { msg_id: u16, mode: u8 },
}

impl DecodeError {
    /// Short label for the `decode errors by kind` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NoFlag { .. } => "no_flag",
            DecodeError::TooLong(_) => "too_long",
            DecodeError::BadEscape { .. } => "bad_escape",
            DecodeError::Short(_) => "short",
            DecodeError::BodyLength { .. } => "body_length",
            DecodeError::Check { .. } => "check",
            DecodeError::Encrypted { .. } => "encrypted",
        }
    }
}

/// One decoded packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub header: Header,
    /// False when the XOR check code did not verify (and the policy let the packet through).
    pub check_ok: bool,
    /// The body; [`Message::Fragment`] when `header.package` is set.
    pub message: Message,
}

/// A packet cut from the front of a buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub packet: Packet,
    /// Bytes of the buffer used, including skipped garbage.
    pub consumed: usize,
    /// Garbage bytes skipped before the frame (already in `consumed`).
    pub skipped: usize,
}

/// Decodes the first frame of `buf`: `Ok(None)` when more bytes are needed.
///
/// Equivalent to [`next_frame`] followed by [`decode_frame`]; callers that prefer to drop a
/// bad frame and keep the connection use the two steps and skip `consumed` on an error.
pub fn decode(buf: &[u8], policy: CrcPolicy) -> Result<Option<Decoded>, DecodeError> {
    let Some(raw) = next_frame(buf)? else {
        return Ok(None);
    };
    let packet = decode_frame(raw.inner, policy)?;
    Ok(Some(Decoded {
        packet,
        consumed: raw.consumed,
        skipped: raw.skipped,
    }))
}

/// Decodes the escaped bytes between two flags (as [`RawFrame::inner`]).
pub fn decode_frame(inner: &[u8], policy: CrcPolicy) -> Result<Packet, DecodeError> {
    let unescaped = frame::unescape(inner)?;
    let Some((&got, packet)) = unescaped.split_last() else {
        return Err(DecodeError::Short(0));
    };
    let expected = frame::xor(packet);
    if got != expected && policy == CrcPolicy::Reject {
        return Err(DecodeError::Check { got, expected });
    }
    let (header, body) = header::parse(packet)?;
    let body = &packet[body];
    let message = if header.package.is_some() {
        Message::Fragment(body.to_vec())
    } else {
        decode_body(&header, body)
    };
    Ok(Packet {
        header,
        check_ok: got == expected,
        message,
    })
}

/// The device id for a terminal phone under Jimi's `newImeiRule`.
///
/// `bcd_phone_digits` is [`Phone::digits`] (12 nibbles, or 20 whose first 8 are zeros).
/// With `new_imei_rule` the 6 bytes are read as one 48-bit integer, which must be the first
/// 14 digits of an IMEI, and the Luhn digit is appended (`4f0ebc392d30` -> 869247060001762).
/// Without it the digits are the id with leading zeros stripped (`013912345678` ->
/// 13912345678); they must then be decimal. `None` when the phone fits neither rule.
pub fn phone_to_imei(bcd_phone_digits: &str, new_imei_rule: bool) -> Option<Imei> {
    let d = bcd_phone_digits;
    let d = match d.len() {
        12 => d,
        20 if d.as_bytes()[..8].iter().all(|&c| c == b'0') => &d[8..],
        20 if !new_imei_rule => d,
        _ => return None,
    };
    if new_imei_rule {
        let n = u64::from_str_radix(d, 16).ok()?;
        if n >= 100_000_000_000_000 {
            return None;
        }
        let first14 = format!("{n:014}");
        let check = luhn_digit(&first14);
        Imei::parse(&format!("{first14}{check}")).ok()
    } else {
        let stripped = d.trim_start_matches('0');
        Imei::parse(if stripped.is_empty() { "0" } else { stripped }).ok()
    }
}

/// The inverse of [`phone_to_imei`]: the 12 phone digits (nibbles) for a device id.
///
/// With `new_imei_rule` the id must be a 15-digit IMEI with a valid Luhn digit; its first
/// 14 digits become a 48-bit integer written as 12 hex nibbles. Without it the id is
/// left-padded with zeros to 12 digits (20 when longer than 12).
pub fn imei_to_phone(imei: &Imei, new_imei_rule: bool) -> Option<String> {
    let s = imei.as_str();
    if new_imei_rule {
        if s.len() != 15 || luhn_digit(&s[..14]) != s.as_bytes()[14] - b'0' {
            return None;
        }
        let n: u64 = s[..14].parse().ok()?;
        Some(format!("{n:012x}"))
    } else if s.len() <= 12 {
        Some(format!("{s:0>12}"))
    } else {
        Some(format!("{s:0>20}"))
    }
}

/// A static label for a message id, for metrics: the ids of the standard, JT/T 1078 and
/// Su-biao; anything else is `other`, so a device sending random ids cannot create
/// thousands of metric series.
pub fn message_label(msg_id: u16) -> &'static str {
    match msg_id {
        0x0001 => "0x0001",
        0x0002 => "0x0002",
        0x0003 => "0x0003",
        0x0004 => "0x0004",
        0x0005 => "0x0005",
        0x0100 => "0x0100",
        0x0102 => "0x0102",
        0x0104 => "0x0104",
        0x0107 => "0x0107",
        0x0108 => "0x0108",
        0x0200 => "0x0200",
        0x0201 => "0x0201",
        0x0301 => "0x0301",
        0x0302 => "0x0302",
        0x0303 => "0x0303",
        0x0500 => "0x0500",
        0x0608 => "0x0608",
        0x0700 => "0x0700",
        0x0701 => "0x0701",
        0x0702 => "0x0702",
        0x0704 => "0x0704",
        0x0705 => "0x0705",
        0x0800 => "0x0800",
        0x0801 => "0x0801",
        0x0802 => "0x0802",
        0x0805 => "0x0805",
        0x0900 => "0x0900",
        0x0901 => "0x0901",
        0x0A00 => "0x0a00",
        0x1003 => "0x1003",
        0x1005 => "0x1005",
        0x1205 => "0x1205",
        0x1206 => "0x1206",
        0x1210 => "0x1210",
        0x1211 => "0x1211",
        0x1212 => "0x1212",
        0x8001 => "0x8001",
        0x8003 => "0x8003",
        0x8004 => "0x8004",
        0x8100 => "0x8100",
        0x8103 => "0x8103",
        0x8104 => "0x8104",
        0x8105 => "0x8105",
        0x8106 => "0x8106",
        0x8107 => "0x8107",
        0x8201 => "0x8201",
        0x8300 => "0x8300",
        0x8800 => "0x8800",
        0x8801 => "0x8801",
        0x9003 => "0x9003",
        0x9101 => "0x9101",
        0x9102 => "0x9102",
        0x9201 => "0x9201",
        0x9202 => "0x9202",
        0x9205 => "0x9205",
        0x9206 => "0x9206",
        0x9207 => "0x9207",
        0x9208 => "0x9208",
        0x9212 => "0x9212",
        _ => "other",
    }
}
