//! The protocol table: what the one generic connection driver needs from each device
//! protocol. Adding a protocol means one codec folder, one channel module and one
//! implementation of [`Protocol`]; nothing in the driver changes.

use chrono::{DateTime, Utc};

use std::sync::Arc;
use std::time::Duration;

use crate::channel::detect::{AnyChannel, AnyFrame, ChannelConfigs};
use crate::channel::gt06::{Gt06Channel, Gt06ChannelConfig};
use crate::channel::jt808::{Jt808Channel, Jt808ChannelConfig};
use crate::channel::Channel;
use crate::codec::{gt06, jt808, CrcPolicy};

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

impl<F> Cut<F> {
    /// The same cut around another frame type (a protocol wrapping another's frames).
    pub fn map<G>(self, wrap: impl FnOnce(F) -> G) -> Cut<G> {
        Cut {
            frame: wrap(self.frame),
            consumed: self.consumed,
            skipped: self.skipped,
            checksum_failed: self.checksum_failed,
        }
    }
}

pub trait Protocol: Send + Sync + 'static {
    type Frame: Send + 'static;
    type Channel: Channel<Frame = Self::Frame>;

    /// Metric label and log name, e.g. `gt06`.
    fn name(&self) -> &'static str;

    /// Cuts the first frame from `buf`; `Ok(None)` when more bytes are needed.
    fn decode(&self, buf: &[u8]) -> Result<Option<Cut<Self::Frame>>, DecodeFailure>;

    /// Protocol and message type of a frame, for the `frames by type` metric: static
    /// labels, from a bounded set.
    fn frame_label(&self, frame: &Self::Frame) -> (&'static str, &'static str);

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

    fn frame_label(&self, frame: &gt06::Frame) -> (&'static str, &'static str) {
        ("gt06", gt06_type_label(frame.protocol))
    }

    fn new_channel(&self, now: DateTime<Utc>) -> Gt06Channel {
        Gt06Channel::new(self.channel.clone(), now)
    }
}

/// `0x12`-style label of a GT06 protocol number (256 possible values, so a bounded set).
pub fn gt06_type_label(t: u8) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        (0..=0xFFu16)
            .map(|i| &*Box::leak(format!("0x{i:02x}").into_boxed_str()))
            .collect()
    });
    labels.get(usize::from(t)).copied().unwrap_or("other")
}

/// The metric label of message type `t` of `protocol` (`gt06` or `jt808`).
pub fn type_label(protocol: &str, t: u16) -> &'static str {
    match protocol {
        "jt808" => jt808::message_label(t),
        _ => u8::try_from(t).map_or("other", gt06_type_label),
    }
}

/// JT/T 808 (2011/2013/2019) with JT/T 1078 signalling: `7e` frames.
#[derive(Debug, Clone)]
pub struct Jt808Protocol {
    crc_policy: CrcPolicy,
    channel: Jt808ChannelConfig,
}

impl Jt808Protocol {
    pub fn new(crc_policy: CrcPolicy, channel: Jt808ChannelConfig) -> Self {
        Jt808Protocol {
            crc_policy,
            channel,
        }
    }
}

impl Protocol for Jt808Protocol {
    type Frame = jt808::Packet;
    type Channel = Jt808Channel;

    fn name(&self) -> &'static str {
        "jt808"
    }

    fn decode(&self, buf: &[u8]) -> Result<Option<Cut<jt808::Packet>>, DecodeFailure> {
        match jt808::decode(buf, self.crc_policy) {
            Ok(Some(d)) => Ok(Some(Cut {
                checksum_failed: !d.packet.check_ok,
                frame: d.packet,
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

    fn frame_label(&self, frame: &jt808::Packet) -> (&'static str, &'static str) {
        ("jt808", jt808::message_label(frame.header.msg_id))
    }

    fn new_channel(&self, now: DateTime<Utc>) -> Jt808Channel {
        Jt808Channel::new(self.channel.clone(), now)
    }
}

/// Most bytes scanned for the start of a frame of either protocol before the stream is
/// declared unusable.
pub const MAX_UNFRAMED: usize = 1024;

/// Both protocols on one port: each frame is cut by the codec its start marker names
/// (`78 78`/`79 79` GT06, `7e` JT/T 808), and the connection's channel is fixed by its first
/// frame ([`AnyChannel`]). `name` is the gateway's, for its metrics.
#[derive(Debug, Clone)]
pub struct DetectingProtocol {
    name: &'static str,
    gt06: Gt06Protocol,
    jt808: Jt808Protocol,
    /// The two protocols' channel settings, shared by every connection's channel.
    configs: Arc<ChannelConfigs>,
}

impl DetectingProtocol {
    pub fn new(name: &'static str, gt06: Gt06Protocol, jt808: Jt808Protocol) -> Self {
        let configs = Arc::new(ChannelConfigs {
            gt06: gt06.channel.clone(),
            jt808: jt808.channel.clone(),
        });
        DetectingProtocol {
            name,
            gt06,
            jt808,
            configs,
        }
    }
}

/// Which codec the first frame start in `buf` belongs to: `Some(true)` JT/T 808,
/// `Some(false)` GT06, `None` when no start marker is there yet.
fn first_marker(buf: &[u8]) -> Option<bool> {
    for (i, &b) in buf.iter().enumerate() {
        match b {
            0x7E => return Some(true),
            0x78 | 0x79 => match buf.get(i + 1) {
                Some(&next) if next == b => return Some(false),
                // A lone marker byte at the end: wait for the next byte.
                None => return None,
                Some(_) => {}
            },
            _ => {}
        }
    }
    None
}

impl Protocol for DetectingProtocol {
    type Frame = AnyFrame;
    type Channel = AnyChannel;

    fn name(&self) -> &'static str {
        self.name
    }

    fn decode(&self, buf: &[u8]) -> Result<Option<Cut<AnyFrame>>, DecodeFailure> {
        match first_marker(buf) {
            Some(true) => Ok(self.jt808.decode(buf)?.map(|c| c.map(AnyFrame::Jt808))),
            Some(false) => Ok(self.gt06.decode(buf)?.map(|c| c.map(AnyFrame::Gt06))),
            None if buf.len() > MAX_UNFRAMED => Err(DecodeFailure {
                kind: "no_start",
                detail: format!("no GT06 or JT/T 808 frame start in {} bytes", buf.len()),
            }),
            None => Ok(None),
        }
    }

    fn frame_label(&self, frame: &AnyFrame) -> (&'static str, &'static str) {
        match frame {
            AnyFrame::Gt06(f) => self.gt06.frame_label(f),
            AnyFrame::Jt808(p) => self.jt808.frame_label(p),
        }
    }

    fn new_channel(&self, now: DateTime<Utc>) -> AnyChannel {
        AnyChannel::new(self.configs.clone(), now)
    }
}
