//! JT/T 808 framing: `7e` flags around an escaped packet (`7e` -> `7d 02`, `7d` -> `7d 01`)
//! whose last byte is the XOR of every header and body byte. Kept apart from header and
//! body parsing so the stream cutter can run without allocating and the escaping rules
//! have one home for both directions.

use std::borrow::Cow;

use super::{DecodeError, MAX_FRAME_LEN, MAX_GARBAGE};

pub const FLAG: u8 = 0x7E;
pub const ESCAPE: u8 = 0x7D;

/// One frame cut from the front of a stream buffer, still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// The bytes between the two flags (escaped, check code included).
    pub inner: &'a [u8],
    /// Bytes of the buffer used: skipped garbage, both flags and `inner`.
    pub consumed: usize,
    /// Bytes dropped before the opening flag (garbage, or an empty `7e 7e` pair whose first
    /// flag closed a frame we never saw the start of). Already counted in `consumed`.
    pub skipped: usize,
}

/// Cuts the next frame out of `buf`.
///
/// `Ok(None)` means more bytes are needed (no flag yet, an open frame, or a frame ending in
/// a lone `7d` whose partner has not arrived). Leading bytes before a `7e` are skipped and
/// counted; more than [`MAX_GARBAGE`] of them without any flag is `Err(NoFlag)`. An open
/// frame longer than [`MAX_FRAME_LEN`] is `Err(TooLong)` before anything is allocated:
/// the caller never needs to buffer more than `MAX_GARBAGE + MAX_FRAME_LEN` bytes.
/// Consecutive flags (`7e 7e`) are read as "end of a frame we lost, start of the next",
/// so the first one is skipped.
pub fn next_frame(buf: &[u8]) -> Result<Option<RawFrame<'_>>, DecodeError> {
    let Some(mut start) = buf.iter().position(|&b| b == FLAG) else {
        if buf.len() > MAX_GARBAGE {
            return Err(DecodeError::NoFlag { skipped: buf.len() });
        }
        return Ok(None);
    };
    if start > MAX_GARBAGE {
        return Err(DecodeError::NoFlag { skipped: start });
    }
    loop {
        let rest = &buf[start + 1..];
        let limit = rest.len().min(MAX_FRAME_LEN - 1);
        match rest[..limit].iter().position(|&b| b == FLAG) {
            // `7e 7e`: the first flag closed a frame whose start we never saw.
            Some(0) => {
                start += 1;
                if start > MAX_GARBAGE {
                    return Err(DecodeError::NoFlag { skipped: start });
                }
            }
            Some(end) => {
                let inner = &rest[..end];
                return Ok(Some(RawFrame {
                    inner,
                    consumed: start + end + 2,
                    skipped: start,
                }));
            }
            None if rest.len() >= MAX_FRAME_LEN - 1 => {
                return Err(DecodeError::TooLong(rest.len() + 1));
            }
            None => return Ok(None),
        }
    }
}

/// Undoes the escaping of `inner`; borrows when there is nothing to undo (the common case).
///
/// A `7d` followed by anything but `01`/`02` is `Err(BadEscape)`: the frame is corrupt and
/// guessing would only move the error into the XOR check. A `7d` that ends the frame is
/// read as a literal `7d` (an unescaped check code; the XOR check still applies).
pub fn unescape(inner: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    let Some(first) = inner.iter().position(|&b| b == ESCAPE) else {
        return Ok(Cow::Borrowed(inner));
    };
    let mut out = Vec::with_capacity(inner.len());
    out.extend_from_slice(&inner[..first]);
    let mut i = first;
    while i < inner.len() {
        let b = inner[i];
        if b == ESCAPE {
            match inner.get(i + 1) {
                Some(0x01) => out.push(ESCAPE),
                Some(0x02) => out.push(FLAG),
                // A lone 7d as the last byte (a check code of 0x7d sent unescaped, which
                // go-jt808 accepts) can only mean itself: take it literally.
                None => out.push(ESCAPE),
                other => {
                    return Err(DecodeError::BadEscape {
                        at: i,
                        next: other.copied(),
                    })
                }
            }
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

/// Appends `data` escaped to `out` (no flags).
pub fn escape_into(data: &[u8], out: &mut Vec<u8>) {
    for &b in data {
        match b {
            FLAG => out.extend_from_slice(&[ESCAPE, 0x02]),
            ESCAPE => out.extend_from_slice(&[ESCAPE, 0x01]),
            _ => out.push(b),
        }
    }
}

/// Wraps an unescaped packet (header + body + check code) in flags, escaping it.
pub fn wrap(packet: &[u8], out: &mut Vec<u8>) {
    out.reserve(packet.len() + packet.len() / 8 + 2);
    out.push(FLAG);
    escape_into(packet, out);
    out.push(FLAG);
}

/// The check code: XOR of every byte given.
pub fn xor(data: &[u8]) -> u8 {
    data.iter().fold(0, |acc, b| acc ^ b)
}
