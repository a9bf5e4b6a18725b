//! # Media: dashcam audio and video as data
//!
//! Every way video enters iothub (JT/T 1078 packets, RTMP publishing) ends as a sequence of
//! [`FlvTag`]s, and every way it leaves (HTTP-FLV, RTMP playback) starts from one. An FLV tag
//! body is exactly the payload of an RTMP audio or video message, so RTMP passes through
//! without conversion and only JT/T 1078 needs a muxer. Nothing here does I/O or reads a
//! clock: arrival times are passed in.
//!
//! - [`jt1078`]: JT/T 1078 RTP-like packets: decode (2016 and 2019 layouts, resynchronising
//!   on `01cd`), subpackage reassembly with a bound, and the packetizer simulated DVRs use.
//! - [`annexb`]: Annex-B NAL units of H.264 and H.265, parameter sets, picture size.
//! - [`flv`]: FLV header, tags, onMetaData, AVC/HEVC/AAC/G.711 tag bodies.
//! - [`mux`]: JT/T 1078 frames to FLV tags (sequence headers, timestamps from broken clocks).
//! - [`audio`]: device audio to PCM (G.711A/U, G.726, IMA ADPCM, the HiSilicon prefix).
//! - [`gop`]: what a new viewer is sent first: metadata, sequence headers, the last GOP.

pub mod annexb;
pub mod audio;
pub mod flv;
pub mod gop;
pub mod jt1078;
pub mod mux;

use bytes::Bytes;

/// The FLV tag types iothub carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    Audio = 8,
    Video = 9,
    Script = 18,
}

/// One FLV tag without its 11-byte header and trailing size: what RTMP calls a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    pub kind: TagKind,
    /// Milliseconds since the stream started (FLV wraps at 2^32).
    pub timestamp: u32,
    /// The tag body: for video `FrameType|CodecID, AVCPacketType, CTS, data`, for audio
    /// `SoundFormat|..., data`, for script the AMF0 values.
    pub body: Bytes,
}

impl FlvTag {
    /// A video tag whose frame type is 1 (key frame), sequence headers included.
    pub fn is_key_frame(&self) -> bool {
        self.kind == TagKind::Video
            && self.body.first().is_some_and(|b| {
                if b & 0x80 != 0 {
                    // Enhanced FLV: IsExHeader | FrameType(3 bits) | PacketType.
                    (b >> 4) & 0x07 == 1
                } else {
                    b >> 4 == 1
                }
            })
    }

    /// An AVC/HEVC decoder configuration or an AAC AudioSpecificConfig: what a decoder needs
    /// before any frame.
    pub fn is_sequence_header(&self) -> bool {
        match self.kind {
            TagKind::Video => match self.body.first() {
                Some(b) if b & 0x80 != 0 => b & 0x0f == 0,
                Some(b) if matches!(b & 0x0f, 7 | 12) => self.body.get(1) == Some(&0),
                _ => false,
            },
            TagKind::Audio => {
                self.body.first().is_some_and(|b| b >> 4 == 10) && self.body.get(1) == Some(&0)
            }
            TagKind::Script => false,
        }
    }
}
