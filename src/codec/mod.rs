//! Bytes <-> frames, one module per device protocol. Codecs are pure functions over byte
//! slices: `Ok(None)` means "need more bytes", an `Err` means the stream is unusable and the
//! connection should close. Lengths are checked before anything is allocated.

pub mod gt06;
pub mod jt808;

/// What to do with a frame whose checksum does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrcPolicy {
    /// Count the mismatch and accept the frame: some firmware sends wrong CRCs.
    #[default]
    Warn,
    /// Drop the connection on a mismatch.
    Reject,
}
