//! # JT/T 1078 media packets
//!
//! Dashcams send audio and video as RTP-like packets that start with `01cd`, over TCP or UDP.
//! This module turns bytes into [`Packet`]s ([`Decoder`]), packets into whole frames
//! ([`Reassembler`]), and frames back into packets ([`Packetizer`], used by simulated DVRs and
//! for talk audio sent down to a device).
//!
//! The 2016 standard carries a 6-byte BCD SIM; many 2019 terminals send 10 bytes, which moves
//! every later field by 4. Nothing in the header says which, so the decoder tries both and
//! keeps the layout whose computed packet end is followed by the next `01cd` (or is exactly
//! the end of the bytes received), then locks it for the connection.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::jt808::Phone;

#[cfg(test)]
mod tests;

/// The four bytes every packet starts with.
pub const MAGIC: [u8; 4] = *b"01cd";

/// The largest packet body the u16 length field can describe. The standard's 950-byte limit
/// is not enforced because many devices send more.
pub const MAX_BODY: usize = u16::MAX as usize;

/// Where the SIM ends: 6 BCD bytes (JT/T 1078-2016) or 10 (terminals following JT/T 808-2019).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    Sim6,
    Sim10,
}

impl Layout {
    /// SIM size in bytes.
    pub fn sim_len(self) -> usize {
        match self {
            Layout::Sim6 => 6,
            Layout::Sim10 => 10,
        }
    }

    /// The header size for a data type: video carries a timestamp and two intervals, audio
    /// only the timestamp, transparent data neither.
    pub fn header_len(self, data_type: DataType) -> usize {
        let fixed = 8 + self.sim_len() + 2;
        fixed
            + match data_type {
                DataType::IFrame | DataType::PFrame | DataType::BFrame => 8 + 2 + 2,
                DataType::Audio => 8,
                DataType::Transparent => 0,
            }
            + 2
    }
}

/// The high nibble of the data-type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    IFrame,
    PFrame,
    BFrame,
    Audio,
    Transparent,
}

impl DataType {
    pub fn from_nibble(n: u8) -> Option<DataType> {
        Some(match n {
            0 => DataType::IFrame,
            1 => DataType::PFrame,
            2 => DataType::BFrame,
            3 => DataType::Audio,
            4 => DataType::Transparent,
            _ => return None,
        })
    }

    pub fn nibble(self) -> u8 {
        match self {
            DataType::IFrame => 0,
            DataType::PFrame => 1,
            DataType::BFrame => 2,
            DataType::Audio => 3,
            DataType::Transparent => 4,
        }
    }

    pub fn is_video(self) -> bool {
        matches!(self, DataType::IFrame | DataType::PFrame | DataType::BFrame)
    }

    /// Which stream of a channel the data belongs to: the reassembly key.
    pub fn class(self) -> StreamClass {
        match self {
            DataType::IFrame | DataType::PFrame | DataType::BFrame => StreamClass::Video,
            DataType::Audio => StreamClass::Audio,
            DataType::Transparent => StreamClass::Transparent,
        }
    }
}

/// The three independent streams a channel can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamClass {
    Video,
    Audio,
    Transparent,
}

/// The low nibble of the data-type byte: where this packet sits in its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subpackage {
    Atomic,
    First,
    Last,
    Middle,
}

impl Subpackage {
    pub fn from_nibble(n: u8) -> Option<Subpackage> {
        Some(match n {
            0 => Subpackage::Atomic,
            1 => Subpackage::First,
            2 => Subpackage::Last,
            3 => Subpackage::Middle,
            _ => return None,
        })
    }

    pub fn nibble(self) -> u8 {
        match self {
            Subpackage::Atomic => 0,
            Subpackage::First => 1,
            Subpackage::Last => 2,
            Subpackage::Middle => 3,
        }
    }
}

/// One decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub layout: Layout,
    /// RTP M bit: set on the last packet of a frame.
    pub marker: bool,
    /// RTP PT: 98 H.264, 99 H.265, 6 G.711A, 7 G.711U, 8 G.726, 19 AAC, 26 ADPCM, ...
    pub payload_type: u8,
    pub sequence: u16,
    pub sim: Phone,
    pub channel: u8,
    pub data_type: DataType,
    pub subpackage: Subpackage,
    /// Milliseconds, device clock; absent for transparent data.
    pub timestamp: Option<u64>,
    /// Milliseconds since the previous I frame; video only.
    pub last_i_frame_interval: Option<u16>,
    /// Milliseconds since the previous frame; video only.
    pub last_frame_interval: Option<u16>,
    pub body: Bytes,
}

impl Packet {
    /// Bytes this packet takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.layout.header_len(self.data_type) + self.body.len()
    }

    /// Appends the wire form. The SIM is fitted to the layout (see [`sim_for_layout`]);
    /// absent optional fields are written as zero.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), Jt1078Error> {
        if self.body.len() > MAX_BODY {
            return Err(Jt1078Error::BodyTooLong(self.body.len()));
        }
        out.reserve(self.encoded_len());
        out.put_slice(&MAGIC);
        out.put_u8(0x81);
        out.put_u8((u8::from(self.marker) << 7) | (self.payload_type & 0x7f));
        out.put_u16(self.sequence);
        out.put_slice(sim_for_layout(self.layout, self.sim).as_bytes());
        out.put_u8(self.channel);
        out.put_u8((self.data_type.nibble() << 4) | self.subpackage.nibble());
        if self.data_type != DataType::Transparent {
            out.put_u64(self.timestamp.unwrap_or(0));
        }
        if self.data_type.is_video() {
            out.put_u16(self.last_i_frame_interval.unwrap_or(0));
            out.put_u16(self.last_frame_interval.unwrap_or(0));
        }
        // Checked above: the body fits in u16.
        out.put_u16(self.body.len() as u16);
        out.put_slice(&self.body);
        Ok(())
    }
}

/// The SIM as the layout writes it: a 6-byte SIM is widened with leading zero bytes (the 20
/// digit form of a 12 digit number), a 10-byte SIM narrowed to its last 6 bytes.
pub fn sim_for_layout(layout: Layout, sim: Phone) -> Phone {
    let bytes = sim.as_bytes();
    match (layout, bytes.len()) {
        (Layout::Sim6, 10) => Phone::from_bytes(&bytes[4..]).unwrap_or(sim),
        (Layout::Sim10, 6) => {
            let mut wide = [0u8; 10];
            wide[4..].copy_from_slice(bytes);
            Phone::from_bytes(&wide).unwrap_or(sim)
        }
        _ => sim,
    }
}

/// What is wrong with a packet that starts with `01cd`. The decoder has consumed the magic
/// when it returns one of these, so the next call resynchronises on the following `01cd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Jt1078Error {
    #[error("RTP version {0} where JT/T 1078 uses 2")]
    BadVersion(u8),
    #[error("data type {0} is not one of 0 I frame, 1 P frame, 2 B frame, 3 audio, 4 transparent")]
    BadDataType(u8),
    #[error("subpackage flag {0} is not one of 0 atomic, 1 first, 2 last, 3 middle")]
    BadSubpackage(u8),
    #[error("body of {0} bytes does not fit the u16 length field")]
    BodyTooLong(usize),
}

/// Why a packet did not complete a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error("channel {channel} {class:?}: frame of more than {max} bytes dropped")]
    FrameTooLarge {
        channel: u8,
        class: StreamClass,
        max: usize,
    },
    #[error("channel {channel} {class:?}: {subpackage:?} packet without a first packet dropped")]
    MissingFirst {
        channel: u8,
        class: StreamClass,
        subpackage: Subpackage,
    },
}

/// The header fields read before the body.
struct Header {
    marker: bool,
    payload_type: u8,
    sequence: u16,
    sim: Phone,
    channel: u8,
    data_type: DataType,
    subpackage: Subpackage,
    timestamp: Option<u64>,
    last_i_frame_interval: Option<u16>,
    last_frame_interval: Option<u16>,
    header_len: usize,
    body_len: usize,
}

impl Header {
    fn packet_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the header of a packet starting at `b[0]` (the magic) in `layout`. `Ok(None)` when
/// more bytes are needed to read it.
fn parse_header(b: &[u8], layout: Layout) -> Result<Option<Header>, Jt1078Error> {
    let sim_len = layout.sim_len();
    let type_at = 8 + sim_len + 1;
    let Some(&type_byte) = b.get(type_at) else {
        return Ok(None);
    };
    let (Some(&vpxcc), Some(&mpt)) = (b.get(4), b.get(5)) else {
        return Ok(None);
    };
    if vpxcc >> 6 != 2 {
        return Err(Jt1078Error::BadVersion(vpxcc >> 6));
    }
    let data_type =
        DataType::from_nibble(type_byte >> 4).ok_or(Jt1078Error::BadDataType(type_byte >> 4))?;
    let subpackage = Subpackage::from_nibble(type_byte & 0x0f)
        .ok_or(Jt1078Error::BadSubpackage(type_byte & 0x0f))?;
    let header_len = layout.header_len(data_type);
    if b.len() < header_len {
        return Ok(None);
    }
    let mut at = type_at + 1;
    let timestamp = if data_type == DataType::Transparent {
        None
    } else {
        let t = be_u64(b, at);
        at += 8;
        t
    };
    let (last_i_frame_interval, last_frame_interval) = if data_type.is_video() {
        let pair = (be_u16(b, at), be_u16(b, at + 2));
        at += 4;
        pair
    } else {
        (None, None)
    };
    let (Some(sequence), Some(sim), Some(&channel), Some(body_len)) = (
        be_u16(b, 6),
        b.get(8..8 + sim_len).and_then(Phone::from_bytes),
        b.get(8 + sim_len),
        be_u16(b, at),
    ) else {
        return Ok(None);
    };
    Ok(Some(Header {
        marker: mpt & 0x80 != 0,
        payload_type: mpt & 0x7f,
        sequence,
        sim,
        channel,
        data_type,
        subpackage,
        timestamp,
        last_i_frame_interval,
        last_frame_interval,
        header_len,
        body_len: usize::from(body_len),
    }))
}

/// How one layout explains the bytes at a `01cd`.
enum Candidate {
    /// The header is impossible in this layout.
    Invalid(Jt1078Error),
    /// Not enough bytes to tell.
    NeedMore,
    /// The packet ends where the next `01cd` starts (`by_magic`) or where the bytes end;
    /// `plausible` when its payload type fits its data type.
    Confirmed { by_magic: bool, plausible: bool },
    /// A complete header whose end is followed by something other than `01cd`.
    Rejected,
}

fn candidate(b: &[u8], layout: Layout) -> Candidate {
    match parse_header(b, layout) {
        Err(e) => Candidate::Invalid(e),
        Ok(None) => Candidate::NeedMore,
        Ok(Some(h)) => {
            let end = h.packet_len();
            let plausible = match h.data_type {
                DataType::IFrame | DataType::PFrame | DataType::BFrame => {
                    (98..=101).contains(&h.payload_type)
                }
                DataType::Audio => (1..=28).contains(&h.payload_type),
                DataType::Transparent => true,
            };
            match b.get(end..) {
                None => Candidate::NeedMore,
                Some([]) => Candidate::Confirmed {
                    by_magic: false,
                    plausible,
                },
                Some(rest) => {
                    let n = rest.len().min(4);
                    if rest[..n] != MAGIC[..n] {
                        Candidate::Rejected
                    } else if n == 4 {
                        Candidate::Confirmed {
                            by_magic: true,
                            plausible,
                        }
                    } else {
                        Candidate::NeedMore
                    }
                }
            }
        }
    }
}

/// Decodes a byte stream (or one UDP datagram) into packets. One per connection: it learns
/// and keeps the connection's SIM layout.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    layout: Option<Layout>,
    hint: Option<Layout>,
    datagrams: bool,
    skipped: u64,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder that prefers `layout` (known from signalling, e.g. a terminal that registered
    /// with the JT/T 808-2019 header) and locks it on the first packet it explains; the other
    /// layout is still detected if the hint is wrong.
    pub fn with_layout(layout: Layout) -> Decoder {
        Decoder {
            hint: Some(layout),
            ..Decoder::default()
        }
    }

    /// Each buffer passed to [`Decoder::decode`] is whole UDP datagrams, so a packet that ends
    /// exactly at the end of the buffer proves the layout. A stream decoder instead waits for
    /// the next packet's magic when the other layout could still be longer.
    pub fn datagrams(mut self) -> Decoder {
        self.datagrams = true;
        self
    }

    /// The layout once detected.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Bytes discarded so far: garbage before a `01cd`, and the magic of packets reported as
    /// errors.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// The next packet, consuming its bytes (and any garbage before it). `Ok(None)` means more
    /// bytes are needed; what was kept in `buf` is at most an incomplete packet, or, while the
    /// layout is undecided, bytes up to the end of the longer candidate packet plus 4.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, Jt1078Error> {
        loop {
            if !self.resync(buf) {
                return Ok(None);
            }
            let layout = match self.layout {
                Some(l) => l,
                None => match self.detect(buf) {
                    Detection::Layout(l) => {
                        self.layout = Some(l);
                        l
                    }
                    Detection::NeedMore => return Ok(None),
                    Detection::NotAPacket => {
                        buf.advance(1);
                        self.skipped += 1;
                        continue;
                    }
                    Detection::Error(e) => {
                        buf.advance(MAGIC.len());
                        self.skipped += MAGIC.len() as u64;
                        return Err(e);
                    }
                },
            };
            return match parse_header(buf, layout) {
                Err(e) => {
                    buf.advance(MAGIC.len());
                    self.skipped += MAGIC.len() as u64;
                    Err(e)
                }
                Ok(None) => Ok(None),
                Ok(Some(h)) if buf.len() < h.packet_len() => Ok(None),
                Ok(Some(h)) => {
                    let mut bytes = buf.split_to(h.packet_len()).freeze();
                    bytes.advance(h.header_len);
                    Ok(Some(Packet {
                        layout,
                        marker: h.marker,
                        payload_type: h.payload_type,
                        sequence: h.sequence,
                        sim: h.sim,
                        channel: h.channel,
                        data_type: h.data_type,
                        subpackage: h.subpackage,
                        timestamp: h.timestamp,
                        last_i_frame_interval: h.last_i_frame_interval,
                        last_frame_interval: h.last_frame_interval,
                        body: bytes,
                    }))
                }
            };
        }
    }

    /// Drops bytes before the first `01cd`. False when no complete magic is in `buf` (a
    /// trailing prefix of it is kept).
    fn resync(&mut self, buf: &mut BytesMut) -> bool {
        if let Some(at) = buf.windows(4).position(|w| w == MAGIC) {
            buf.advance(at);
            self.skipped += at as u64;
            return true;
        }
        let keep = (1..MAGIC.len())
            .rev()
            .find(|&n| buf.len() >= n && buf[buf.len() - n..] == MAGIC[..n])
            .unwrap_or(0);
        let drop = buf.len() - keep;
        buf.advance(drop);
        self.skipped += drop as u64;
        false
    }

    fn detect(&self, b: &[u8]) -> Detection {
        let six = candidate(b, Layout::Sim6);
        let ten = candidate(b, Layout::Sim10);
        // How much a candidate proves: 2 = the next packet's magic follows, 1 = the bytes end
        // exactly there (proof for a datagram, a coincidence for a stream), 0 = nothing yet.
        let strength = |c: &Candidate| match c {
            Candidate::Confirmed { by_magic: true, .. } => 2,
            Candidate::Confirmed { .. } if self.datagrams => 2,
            Candidate::Confirmed { .. } => 1,
            _ => 0,
        };
        let plausible = |c: &Candidate| {
            matches!(
                c,
                Candidate::Confirmed {
                    plausible: true,
                    ..
                }
            )
        };
        let open = |c: &Candidate| matches!(c, Candidate::NeedMore);
        let (s6, s10) = (strength(&six), strength(&ten));
        if let Some(h) = self.hint {
            if (h == Layout::Sim6 && s6 > 0) || (h == Layout::Sim10 && s10 > 0) {
                return Detection::Layout(h);
            }
        }
        match (s6, s10) {
            (0, 0) => match (six, ten) {
                (Candidate::NeedMore, _) | (_, Candidate::NeedMore) => Detection::NeedMore,
                (Candidate::Invalid(e6), Candidate::Invalid(e10)) => {
                    Detection::Error(if self.hint == Some(Layout::Sim10) {
                        e10
                    } else {
                        e6
                    })
                }
                _ => Detection::NotAPacket,
            },
            // A stream that merely ends where one layout's packet ends is ambiguous while the
            // other layout still waits for bytes: wait with it (at most one packet).
            (1, 0) if open(&ten) => Detection::NeedMore,
            (0, 1) if open(&six) => Detection::NeedMore,
            (a, b) if b > a => Detection::Layout(Layout::Sim10),
            (a, b) if a > b => Detection::Layout(Layout::Sim6),
            // Equal evidence for both. This is routine, not bad luck: a 2019 audio packet and a
            // 2016 video packet both have a 30-byte header with the length at 28, so when the
            // SIM byte that the 2016 reading takes for the data type happens to be valid, both
            // layouts end at the same place. The 2016 reading then calls it video with an
            // audio payload type; the payload type decides, then the 2016 standard.
            _ if plausible(&ten) && !plausible(&six) => Detection::Layout(Layout::Sim10),
            _ => Detection::Layout(Layout::Sim6),
        }
    }
}

enum Detection {
    Layout(Layout),
    NeedMore,
    /// A `01cd` inside garbage: no layout ends it where another packet or the bytes begin.
    NotAPacket,
    Error(Jt1078Error),
}

/// A whole audio or video frame: the bodies of its packets concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub sim: Phone,
    pub channel: u8,
    pub data_type: DataType,
    pub payload_type: u8,
    pub timestamp: Option<u64>,
    pub last_frame_interval: Option<u16>,
    /// Annex-B H.264/H.265 for video, the device's codec frame for audio.
    pub body: Bytes,
}

struct Partial {
    first: Packet,
    data: BytesMut,
}

/// Joins first…middle…last packets into frames, per channel and stream class. At most one
/// frame is open per (channel, class), and each is bounded by `max_frame_bytes`.
pub struct Reassembler {
    max_frame_bytes: usize,
    open: HashMap<(u8, StreamClass), Partial>,
    dropped: u64,
}

impl Reassembler {
    pub fn new(max_frame_bytes: usize) -> Reassembler {
        Reassembler {
            max_frame_bytes,
            open: HashMap::new(),
            dropped: 0,
        }
    }

    /// Incomplete frames thrown away: replaced by a new first or atomic packet, or too large.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Frames currently being joined.
    pub fn open_frames(&self) -> usize {
        self.open.len()
    }

    pub fn push(&mut self, packet: Packet) -> Result<Option<Frame>, ReassemblyError> {
        let class = packet.data_type.class();
        let key = (packet.channel, class);
        let too_large = ReassemblyError::FrameTooLarge {
            channel: packet.channel,
            class,
            max: self.max_frame_bytes,
        };
        match packet.subpackage {
            Subpackage::Atomic | Subpackage::First => {
                if self.open.remove(&key).is_some() {
                    self.dropped += 1;
                }
                if packet.body.len() > self.max_frame_bytes {
                    self.dropped += 1;
                    return Err(too_large);
                }
                if packet.subpackage == Subpackage::Atomic {
                    let body = packet.body.clone();
                    return Ok(Some(frame(&packet, body)));
                }
                let data = BytesMut::from(&packet.body[..]);
                self.open.insert(
                    key,
                    Partial {
                        first: packet,
                        data,
                    },
                );
                Ok(None)
            }
            Subpackage::Middle | Subpackage::Last => {
                let Some(partial) = self.open.get_mut(&key) else {
                    return Err(ReassemblyError::MissingFirst {
                        channel: packet.channel,
                        class,
                        subpackage: packet.subpackage,
                    });
                };
                if partial.data.len() + packet.body.len() > self.max_frame_bytes {
                    self.open.remove(&key);
                    self.dropped += 1;
                    return Err(too_large);
                }
                partial.data.extend_from_slice(&packet.body);
                if packet.subpackage == Subpackage::Middle {
                    return Ok(None);
                }
                let Some(partial) = self.open.remove(&key) else {
                    return Ok(None);
                };
                Ok(Some(frame(&partial.first, partial.data.freeze())))
            }
        }
    }
}

fn frame(first: &Packet, body: Bytes) -> Frame {
    Frame {
        sim: first.sim,
        channel: first.channel,
        data_type: first.data_type,
        payload_type: first.payload_type,
        timestamp: first.timestamp,
        last_frame_interval: first.last_frame_interval,
        body,
    }
}

/// Frames to packets, as a terminal sends them: one sequence counter per packetizer.
#[derive(Debug, Clone)]
pub struct Packetizer {
    layout: Layout,
    sim: Phone,
    channel: u8,
    sequence: u16,
}

impl Packetizer {
    /// `sim` is fitted to the layout (see [`sim_for_layout`]).
    pub fn new(layout: Layout, sim: Phone, channel: u8) -> Packetizer {
        Packetizer {
            layout,
            sim: sim_for_layout(layout, sim),
            channel,
            sequence: 0,
        }
    }

    /// The sequence number the next packet gets.
    pub fn next_sequence(&self) -> u16 {
        self.sequence
    }

    /// One video frame (Annex-B) as packets of at most `max_body` body bytes (clamped to
    /// 1..=65535): a single atomic packet, or first, middle…, last. The marker is set on the
    /// last packet of the frame.
    #[allow(clippy::too_many_arguments)]
    pub fn video(
        &mut self,
        frame: &[u8],
        data_type: DataType,
        payload_type: u8,
        timestamp_ms: u64,
        last_i_frame_interval: u16,
        last_frame_interval: u16,
        max_body: usize,
    ) -> Vec<Bytes> {
        let max_body = max_body.clamp(1, MAX_BODY);
        let chunks: Vec<&[u8]> = if frame.is_empty() {
            vec![frame]
        } else {
            frame.chunks(max_body).collect()
        };
        let count = chunks.len();
        let video = data_type.is_video();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                let subpackage = match (count, i) {
                    (1, _) => Subpackage::Atomic,
                    (_, 0) => Subpackage::First,
                    (n, i) if i + 1 == n => Subpackage::Last,
                    _ => Subpackage::Middle,
                };
                let packet = Packet {
                    layout: self.layout,
                    marker: i + 1 == count,
                    payload_type,
                    sequence: self.bump(),
                    sim: self.sim,
                    channel: self.channel,
                    data_type,
                    subpackage,
                    timestamp: (data_type != DataType::Transparent).then_some(timestamp_ms),
                    last_i_frame_interval: video.then_some(last_i_frame_interval),
                    last_frame_interval: video.then_some(last_frame_interval),
                    body: Bytes::copy_from_slice(chunk),
                };
                self.encode(&packet)
            })
            .collect()
    }

    /// One audio frame as a single atomic packet with the marker set (how terminals and
    /// platforms send talk audio). Frames beyond 65535 bytes are cut there.
    pub fn audio(&mut self, frame: &[u8], payload_type: u8, timestamp_ms: u64) -> Bytes {
        let body = frame.get(..MAX_BODY).unwrap_or(frame);
        let packet = Packet {
            layout: self.layout,
            marker: true,
            payload_type,
            sequence: self.bump(),
            sim: self.sim,
            channel: self.channel,
            data_type: DataType::Audio,
            subpackage: Subpackage::Atomic,
            timestamp: Some(timestamp_ms),
            last_i_frame_interval: None,
            last_frame_interval: None,
            body: Bytes::copy_from_slice(body),
        };
        self.encode(&packet)
    }

    fn bump(&mut self) -> u16 {
        let s = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        s
    }

    fn encode(&self, packet: &Packet) -> Bytes {
        let mut out = BytesMut::with_capacity(packet.encoded_len());
        // Bodies are at most MAX_BODY here, so encoding cannot fail.
        let _ = packet.encode(&mut out);
        out.freeze()
    }
}

/// `frame` behind the 4-byte header many HiSilicon-based DVRs put on each audio frame:
/// `00 01`, then the frame size in 16-bit words as a little-endian u16 (so `NN 00` for frames
/// under 512 bytes). Some devices expect it on talk audio sent to them.
pub fn hisilicon_prefixed(frame: &[u8]) -> Vec<u8> {
    let words = u16::try_from(frame.len() / 2).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&[0x00, 0x01]);
    out.extend_from_slice(&words.to_le_bytes());
    out.extend_from_slice(frame);
    out
}
