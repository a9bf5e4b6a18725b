//! The JT/T 808 message header in its two layouts: 2011/2013 (BCD[6] terminal phone,
//! 12 bytes, 16 with subpackage fields) and 2019 (version byte and BCD[10] phone, 17/21
//! bytes), with the message-properties word that says which one a packet uses.
//!
//! The version bit (properties bit 14) is not trusted on its own: some devices set it and
//! send a 2013 header, some send a 2019 header with it clear. [`parse`] picks the layout
//! whose size makes the body length in the properties word agree with the bytes present,
//! preferring the layout the bit names; the mismatch is recorded in
//! [`Header::version_flag_mismatch`]. The two layouts differ by 5 bytes, so the rule is
//! deterministic for every packet whose length field is right.

use super::DecodeError;

/// Properties bits 0..=9: body length.
pub const BODY_LEN_MASK: u16 = 0x03FF;
/// Largest body a single packet can carry (10-bit length field).
pub const MAX_BODY_LEN: usize = 0x03FF;
const ENCRYPTION_SHIFT: u16 = 10;
const SUBPACKAGE_BIT: u16 = 1 << 13;
const VERSION_BIT: u16 = 1 << 14;

/// The message-properties word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Properties(pub u16);

impl Properties {
    pub fn body_len(self) -> usize {
        usize::from(self.0 & BODY_LEN_MASK)
    }
    /// Bits 10..=12: 0 none, 1 RSA, others reserved.
    pub fn encryption(self) -> u8 {
        ((self.0 >> ENCRYPTION_SHIFT) & 0x07) as u8
    }
    pub fn subpackage(self) -> bool {
        self.0 & SUBPACKAGE_BIT != 0
    }
    /// Bit 14: the 2019 version flag.
    pub fn version_flag(self) -> bool {
        self.0 & VERSION_BIT != 0
    }
    /// Builds the word; `body_len` is masked to 10 bits (callers check it first).
    pub fn new(body_len: usize, encryption: u8, subpackage: bool, version_flag: bool) -> Self {
        let mut v = (body_len as u16) & BODY_LEN_MASK;
        v |= u16::from(encryption & 0x07) << ENCRYPTION_SHIFT;
        if subpackage {
            v |= SUBPACKAGE_BIT;
        }
        if version_flag {
            v |= VERSION_BIT;
        }
        Properties(v)
    }
}

/// The terminal phone number as sent: 6 bytes (2011/2013) or 10 bytes (2019).
///
/// Kept as raw bytes rather than digits because some trackers pack a binary IMEI into the
/// 6 bytes (see [`super::phone_to_imei`]); replies echo the bytes unchanged either way.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Phone {
    len: u8,
    bytes: [u8; 10],
}

impl Phone {
    /// From the wire bytes; `None` unless 6 or 10 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Phone> {
        if b.len() != 6 && b.len() != 10 {
            return None;
        }
        let mut bytes = [0u8; 10];
        bytes[..b.len()].copy_from_slice(b);
        Some(Phone {
            len: b.len() as u8,
            bytes,
        })
    }

    /// From decimal digits, left-padded with zeros to 12 (`wide` false) or 20 digits.
    /// `None` if there are more digits than fit or a non-digit.
    pub fn from_digits(digits: &str, wide: bool) -> Option<Phone> {
        let width = if wide { 20 } else { 12 };
        if digits.len() > width || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut padded = [b'0'; 20];
        padded[width - digits.len()..width].copy_from_slice(digits.as_bytes());
        let mut bytes = [0u8; 10];
        for (i, pair) in padded[..width].chunks_exact(2).enumerate() {
            bytes[i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
        }
        Some(Phone {
            len: (width / 2) as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The nibbles as lowercase hex: the BCD digits (12 or 20) when [`Phone::is_bcd`].
    pub fn digits(&self) -> String {
        let mut s = String::with_capacity(20);
        for b in self.as_bytes() {
            for n in [b >> 4, b & 0x0F] {
                s.push(char::from_digit(u32::from(n), 16).unwrap_or('?'));
            }
        }
        s
    }

    /// True when every nibble is a decimal digit.
    pub fn is_bcd(&self) -> bool {
        self.as_bytes().iter().all(|b| b >> 4 <= 9 && b & 0x0F <= 9)
    }

    /// True for the 10-byte (2019) form.
    pub fn is_wide(&self) -> bool {
        self.len == 10
    }
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Phone({})", self.digits())
    }
}

/// Subpackage fields: this packet is `index` (1-based) of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub total: u16,
    pub index: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_id: u16,
    /// `Some(protocol version byte)` for the 2019 layout, `None` for 2011/2013.
    pub version: Option<u8>,
    /// 6 bytes with `version: None`, 10 with `Some` (the encoder pads or fails otherwise).
    pub phone: Phone,
    /// The sender's own counter.
    pub serial: u16,
    pub package: Option<Package>,
    /// Decode only: the version bit disagreed with the layout actually used (device quirk).
    /// Ignored by the encoder, which always sets the bit exactly for the 2019 layout.
    pub version_flag_mismatch: bool,
}

impl Header {
    /// A header for a reply or command to the terminal that sent `to`: same phone and
    /// layout, our own `serial`, no subpackaging.
    pub fn reply_to(to: &Header, msg_id: u16, serial: u16) -> Header {
        Header {
            msg_id,
            version: to.version,
            phone: to.phone,
            serial,
            package: None,
            version_flag_mismatch: false,
        }
    }

    /// Header size in bytes for this layout.
    pub fn len(&self) -> usize {
        header_len(self.version.is_some(), self.package.is_some())
    }

    /// True for the 2019 layout.
    pub fn is_2019(&self) -> bool {
        self.version.is_some()
    }

    /// Always false: a header has at least the id and properties words.
    pub fn is_empty(&self) -> bool {
        false
    }
}

pub fn header_len(v2019: bool, subpackage: bool) -> usize {
    (if v2019 { 17 } else { 12 }) + if subpackage { 4 } else { 0 }
}

/// Parses the header of an unescaped packet (`packet` = header + body, check code removed).
/// Returns the header and the body range.
pub fn parse(packet: &[u8]) -> Result<(Header, std::ops::Range<usize>), DecodeError> {
    if packet.len() < 4 {
        return Err(DecodeError::Short(packet.len()));
    }
    let msg_id = u16::from_be_bytes([packet[0], packet[1]]);
    let props = Properties(u16::from_be_bytes([packet[2], packet[3]]));
    if props.encryption() != 0 {
        return Err(DecodeError::Encrypted {
            msg_id,
            mode: props.encryption(),
        });
    }
    let sub = props.subpackage();
    let body_len = props.body_len();
    let flagged = props.version_flag();
    let fits = |v2019: bool| header_len(v2019, sub) + body_len == packet.len();
    let v2019 = if fits(flagged) {
        flagged
    } else if fits(!flagged) {
        !flagged
    } else {
        let hl = header_len(flagged, sub);
        if packet.len() < hl {
            return Err(DecodeError::Short(packet.len()));
        }
        return Err(DecodeError::BodyLength {
            declared: body_len,
            actual: packet.len() - hl,
        });
    };
    let (version, phone_at, phone_len) = if v2019 {
        (Some(packet[4]), 5, 10)
    } else {
        (None, 4, 6)
    };
    let phone = Phone::from_bytes(&packet[phone_at..phone_at + phone_len])
        .ok_or(DecodeError::Short(packet.len()))?;
    let at = phone_at + phone_len;
    let serial = u16::from_be_bytes([packet[at], packet[at + 1]]);
    let package = sub.then(|| Package {
        total: u16::from_be_bytes([packet[at + 2], packet[at + 3]]),
        index: u16::from_be_bytes([packet[at + 4], packet[at + 5]]),
    });
    let hl = header_len(v2019, sub);
    Ok((
        Header {
            msg_id,
            version,
            phone,
            serial,
            package,
            version_flag_mismatch: v2019 != flagged,
        },
        hl..packet.len(),
    ))
}

/// Writes the header for a body of `body_len` bytes (already checked <= [`MAX_BODY_LEN`]).
/// A 2019 header with a 6-byte phone is widened (left zero padding); a 2013 header with a
/// 10-byte phone keeps its last 6 bytes.
pub fn write(h: &Header, body_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&h.msg_id.to_be_bytes());
    let props = Properties::new(body_len, 0, h.package.is_some(), h.version.is_some());
    out.extend_from_slice(&props.0.to_be_bytes());
    let phone = h.phone.as_bytes();
    match h.version {
        Some(v) => {
            out.push(v);
            out.extend(std::iter::repeat_n(
                0u8,
                10usize.saturating_sub(phone.len()),
            ));
            out.extend_from_slice(phone);
        }
        None => out.extend_from_slice(&phone[phone.len().saturating_sub(6)..]),
    }
    out.extend_from_slice(&h.serial.to_be_bytes());
    if let Some(p) = h.package {
        out.extend_from_slice(&p.total.to_be_bytes());
        out.extend_from_slice(&p.index.to_be_bytes());
    }
}
