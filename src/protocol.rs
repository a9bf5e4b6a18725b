//! The protocol table: what the one generic connection driver needs from each device
//! protocol. Adding a protocol means one codec folder, one channel module and one
//! implementation of [`Protocol`]; nothing in the driver changes.

use chrono::{DateTime, Utc};

use std::time::Duration;

use crate::channel::gt06::{Gt06Channel, Gt06ChannelConfig};
use crate::channel::Channel;
use crate::codec::{gt06, CrcPolicy};

/// A stream that cannot be decoded: the connection closes and the kind is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    /// Metric label: `crc`, `too_long`, `bad_start`, ...
    pub kind: &'static str,
    /// Human detail for the log line.
    pub detail: String,
}

/// One frame cut from the front of a read buffer.
#[derive(Debug)]
pub struct Cut<F> {
    pub frame: F,
    /// Bytes of the buffer the frame used, including skipped garbage.
    pub consumed: usize,
    /// Garbage bytes skipped before the frame (counted by the driver).
    pub skipped: usize,
    /// The checksum did not match and the policy let the frame through (counted).
    pub checksum_failed: bool,
}

pub trait Protocol: Send + Sync + 'static {
    type Frame: Send + 'static;
    type Channel: Channel<Frame = Self::Frame>;

    /// Metric label and log name, e.g. `gt06`.
    fn name(&self) -> &'static str;

    /// Cuts the first frame from `buf`; `Ok(None)` when more bytes are needed.
    fn decode(&self, buf: &[u8]) -> Result<Option<Cut<Self::Frame>>, DecodeFailure>;

    /// Message type of a frame, for the `frames by type` metric.
    fn frame_type(&self, frame: &Self::Frame) -> u16;

    /// A fresh channel for a new connection accepted at `now`.
    fn new_channel(&self, now: DateTime<Utc>) -> Self::Channel;
}

/// GT06 / JIMI: `78 78` and `79 79` frames on the tracker port.
#[derive(Debug, Clone)]
pub struct Gt06Protocol {
    crc_policy: CrcPolicy,
    channel: Gt06ChannelConfig,
}

impl Gt06Protocol {
    pub fn new(crc_policy: CrcPolicy, read_timeout: Duration, login_timeout: Duration) -> Self {
        Gt06Protocol {
            crc_policy,
            channel: Gt06ChannelConfig {
                read_timeout,
                login_timeout,
            },
        }
    }
}

impl Protocol for Gt06Protocol {
    type Frame = gt06::Frame;
    type Channel = Gt06Channel;

    fn name(&self) -> &'static str {
        "gt06"
    }

    fn decode(&self, buf: &[u8]) -> Result<Option<Cut<gt06::Frame>>, DecodeFailure> {
        match gt06::decode(buf, self.crc_policy) {
            Ok(Some(d)) => Ok(Some(Cut {
                checksum_failed: d.frame.crc_ok == Some(false),
                frame: d.frame,
                consumed: d.consumed,
                skipped: d.skipped,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(DecodeFailure {
                kind: e.kind(),
                detail: e.to_string(),
            }),
        }
    }

    fn frame_type(&self, frame: &gt06::Frame) -> u16 {
        u16::from(frame.protocol)
    }

    fn new_channel(&self, now: DateTime<Utc>) -> Gt06Channel {
        Gt06Channel::new(self.channel.clone(), now)
    }
}
