//! Device identity. Every registry entry, push record and stream key carries an [`Imei`],
//! so it is validated once, where a frame is decoded, and is cheap to copy afterwards.

use std::fmt;

/// A device identifier of 1 to 20 decimal digits, normally a 15-digit IMEI.
///
/// Stored inline (no heap) because one lives in every session and every event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Imei {
    len: u8,
    digits: [u8; 20],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImeiError {
    #[error("device id must have 1 to 20 digits, got {0}")]
    Length(usize),
    #[error("device id must be decimal digits only")]
    NotDigits,
}

impl Imei {
    /// Parses a string of 1..=20 ASCII decimal digits.
    pub fn parse(s: &str) -> Result<Imei, ImeiError> {
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > 20 {
            return Err(ImeiError::Length(bytes.len()));
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(ImeiError::NotDigits);
        }
        let mut digits = [0u8; 20];
        digits[..bytes.len()].copy_from_slice(bytes);
        Ok(Imei {
            len: bytes.len() as u8,
            digits,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored, so this cannot fail.
        std::str::from_utf8(&self.digits[..self.len as usize]).unwrap_or("")
    }
}

/// Luhn check digit of a string of decimal digits (the 15th digit of an IMEI).
pub fn luhn_digit(digits: &str) -> u8 {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

impl fmt::Display for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Imei({})", self.as_str())
    }
}

impl std::str::FromStr for Imei {
    type Err = ImeiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Imei::parse(s)
    }
}

impl serde::Serialize for Imei {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Imei {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Imei::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fifteen_digits() {
        assert_eq!(
            Imei::parse("864717003283581").unwrap().as_str(),
            "864717003283581"
        );
    }

    #[test]
    fn rejects_letters() {
        assert_eq!(Imei::parse("86471700328358a"), Err(ImeiError::NotDigits));
    }

    #[test]
    fn rejects_empty_and_long() {
        assert_eq!(Imei::parse(""), Err(ImeiError::Length(0)));
        assert_eq!(Imei::parse(&"1".repeat(21)), Err(ImeiError::Length(21)));
    }

    #[test]
    fn luhn_of_known_imei() {
        // 86924706000176 + Luhn digit 2 = 869247060001762 (jimi-interfaces.md §4).
        assert_eq!(luhn_digit("86924706000176"), 2);
    }
}
