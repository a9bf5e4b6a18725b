//! # JT/T 1078 frames to FLV tags
//!
//! A dashcam sends Annex-B video with its parameter sets in front of key frames, raw audio
//! in whatever codec it was set to, and timestamps that are often wrong (constant, zero,
//! reset, or from a different clock). [`Jt1078Muxer`] turns its reassembled frames into the
//! FLV tags every egress shares: onMetaData and a sequence header whenever the parameter
//! sets change, then one video tag per frame from the first key frame on, all on one
//! monotonic clock that starts at 0. Audio is handed back untouched with its timestamp on
//! the same clock, because whether it is transcoded, passed through or dropped depends on
//! the viewer.

use bytes::Bytes;

use super::annexb::{self, VideoCodec};
use super::flv::{self, HevcTagging, Metadata};
use super::jt1078::{DataType, Frame, StreamClass};
use super::{FlvTag, TagKind};

#[cfg(test)]
mod tests;

/// Beyond this, a device timestamp step is a clock jump rather than time passing.
pub const MAX_TIMESTAMP_STEP_MS: u64 = 10_000;

/// What one frame becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxOut {
    /// A script or video tag ready for egress.
    Tag(FlvTag),
    /// One device audio frame as received (the HiSilicon prefix, if any, included), stamped on
    /// the stream clock.
    Audio {
        payload_type: u8,
        timestamp: u32,
        data: Bytes,
    },
}

/// Per stream class: how its device clock maps to the stream clock, and where its last
/// frame landed.
#[derive(Debug, Clone, Copy)]
struct ClassClock {
    /// A device timestamp and the stream time it maps to.
    anchor: Option<(u64, u64)>,
    device_ts: Option<u64>,
    out: u64,
    arrival: u64,
}

/// Maps device timestamps to one stream clock starting at 0, falling back to frame intervals
/// or arrival times when the device clock cannot be trusted. Each class keeps its own anchor
/// so that audio with a broken clock does not disturb video with a good one, and the reverse;
/// both start from the first frame's anchor, which keeps them in step when the device uses one
/// clock for both.
#[derive(Debug, Clone, Default)]
struct Clock {
    first_anchor: Option<(u64, u64)>,
    last_out: Option<u64>,
    last_arrival: u64,
    video: Option<ClassClock>,
    audio: Option<ClassClock>,
}

impl Clock {
    fn stamp(
        &mut self,
        class: StreamClass,
        device_ts: Option<u64>,
        interval: Option<u16>,
        arrival: u64,
    ) -> u64 {
        let Some(last_out) = self.last_out else {
            self.first_anchor = device_ts.map(|t| (t, 0));
            self.last_out = Some(0);
            self.last_arrival = arrival;
            self.set_class(class, self.first_anchor, device_ts, 0, arrival);
            return 0;
        };
        let prev = self.class(class);
        let anchor = match prev {
            Some(p) => p.anchor,
            None => self.first_anchor,
        };
        let from_device = device_ts.zip(anchor).and_then(|(t, (at, base))| {
            let advancing = match prev.and_then(|p| p.device_ts) {
                Some(p) => t > p && t - p <= MAX_TIMESTAMP_STEP_MS,
                None => true,
            };
            let out = base.checked_add(t.checked_sub(at)?)?;
            // Audio and video interleave a little out of order, but a reset or a clock that
            // drifted away lands far from where the stream is.
            let near = out.saturating_add(MAX_TIMESTAMP_STEP_MS) >= last_out
                && out <= last_out.saturating_add(MAX_TIMESTAMP_STEP_MS);
            (advancing && near).then_some(out)
        });
        let (out, anchor) = match from_device {
            Some(out) => (out, anchor),
            None => {
                let (from_out, from_arrival) = match prev {
                    Some(p) => (p.out, p.arrival),
                    None => (last_out, self.last_arrival),
                };
                let step = match interval {
                    Some(i) if class == StreamClass::Video && i > 0 && u64::from(i) <= 10_000 => {
                        u64::from(i)
                    }
                    _ => arrival
                        .saturating_sub(from_arrival)
                        .min(MAX_TIMESTAMP_STEP_MS),
                };
                let out = from_out.saturating_add(step);
                // Follow the device clock from here on if it moves normally again.
                (out, device_ts.map(|t| (t, out)))
            }
        };
        let out = out.max(last_out);
        self.last_out = Some(out);
        self.last_arrival = arrival;
        self.set_class(class, anchor, device_ts, out, arrival);
        out
    }

    fn class(&self, class: StreamClass) -> Option<ClassClock> {
        match class {
            StreamClass::Video => self.video,
            _ => self.audio,
        }
    }

    fn set_class(
        &mut self,
        class: StreamClass,
        anchor: Option<(u64, u64)>,
        device_ts: Option<u64>,
        out: u64,
        arrival: u64,
    ) {
        let c = Some(ClassClock {
            anchor,
            device_ts,
            out,
            arrival,
        });
        match class {
            StreamClass::Video => self.video = c,
            _ => self.audio = c,
        }
    }
}

/// The parameter sets a sequence header was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ParameterSets {
    vps: Option<Bytes>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

/// One JT/T 1078 channel's frames to FLV tags: one muxer per (SIM, channel) stream.
#[derive(Debug, Clone)]
pub struct Jt1078Muxer {
    tagging: HevcTagging,
    clock: Clock,
    codec: Option<VideoCodec>,
    latest: ParameterSets,
    sent: Option<ParameterSets>,
    started: bool,
    frame_interval: Option<u16>,
    audio_metadata: Option<(u8, u32, bool)>,
}

impl Jt1078Muxer {
    pub fn new(tagging: HevcTagging) -> Jt1078Muxer {
        Jt1078Muxer {
            tagging,
            clock: Clock::default(),
            codec: None,
            latest: ParameterSets::default(),
            sent: None,
            started: false,
            frame_interval: None,
            audio_metadata: None,
        }
    }

    /// Audio fields for the onMetaData tags from now on, once the caller knows what audio it
    /// sends (FLV sound format, sample rate, stereo).
    pub fn set_audio_metadata(&mut self, codec_id: u8, sample_rate: u32, stereo: bool) {
        self.audio_metadata = Some((codec_id, sample_rate, stereo));
    }

    /// The video codec seen so far.
    pub fn video_codec(&self) -> Option<VideoCodec> {
        self.codec
    }

    /// True once a key frame has been muxed: video tags flow from here on.
    pub fn video_started(&self) -> bool {
        self.started
    }

    /// What `frame`, received at `arrival_ms` (any monotonic milliseconds), becomes.
    pub fn push(&mut self, frame: &Frame, arrival_ms: u64) -> Vec<MuxOut> {
        let class = frame.data_type.class();
        if class == StreamClass::Transparent {
            return Vec::new();
        }
        let ts = self.clock.stamp(
            class,
            frame.timestamp,
            frame.last_frame_interval,
            arrival_ms,
        );
        // FLV timestamps wrap at 2^32 ms.
        let ts = (ts & 0xffff_ffff) as u32;
        if class == StreamClass::Audio {
            return vec![MuxOut::Audio {
                payload_type: frame.payload_type,
                timestamp: ts,
                data: frame.body.clone(),
            }];
        }
        self.video(frame, ts)
    }

    fn video(&mut self, frame: &Frame, ts: u32) -> Vec<MuxOut> {
        let codec = VideoCodec::from_payload_type(frame.payload_type)
            .or(self.codec)
            .unwrap_or_else(|| VideoCodec::guess(&frame.body));
        if self.codec.is_some_and(|c| c != codec) {
            // A different codec needs a new decoder: start over from its next key frame.
            self.latest = ParameterSets::default();
            self.sent = None;
            self.started = false;
        }
        self.codec = Some(codec);
        if let Some(i) = frame
            .last_frame_interval
            .filter(|&i| (1..=1000).contains(&i))
        {
            self.frame_interval = Some(i);
        }
        let mut pictures: Vec<&[u8]> = Vec::new();
        let mut key = false;
        for nal in annexb::nal_units(&frame.body) {
            if annexb::is_parameter_set(codec, nal) {
                let slot = match annexb::nal_type(codec, nal) {
                    Some(annexb::H264_SPS) if codec == VideoCodec::H264 => &mut self.latest.sps,
                    Some(annexb::H264_PPS) if codec == VideoCodec::H264 => &mut self.latest.pps,
                    Some(annexb::H265_VPS) => &mut self.latest.vps,
                    Some(annexb::H265_SPS) => &mut self.latest.sps,
                    _ => &mut self.latest.pps,
                };
                if slot.as_deref() != Some(nal) {
                    *slot = Some(frame.body.slice_ref(nal));
                }
                continue;
            }
            key |= annexb::is_key_frame_nal(codec, nal);
            pictures.push(nal);
        }
        key |= frame.data_type == DataType::IFrame;
        let mut out = Vec::new();
        if key && self.sent.as_ref() != Some(&self.latest) {
            if let Some(header) = self.sequence_header(codec) {
                out.push(MuxOut::Tag(FlvTag {
                    kind: TagKind::Script,
                    timestamp: ts,
                    body: self.metadata(codec),
                }));
                out.push(MuxOut::Tag(FlvTag {
                    kind: TagKind::Video,
                    timestamp: ts,
                    body: header,
                }));
                self.sent = Some(self.latest.clone());
                self.started = true;
            }
        }
        if !self.started || pictures.is_empty() {
            return out;
        }
        out.push(MuxOut::Tag(FlvTag {
            kind: TagKind::Video,
            timestamp: ts,
            body: flv::video_frame(codec, self.tagging, key, &pictures, 0),
        }));
        out
    }

    fn sequence_header(&self, codec: VideoCodec) -> Option<Bytes> {
        let p = &self.latest;
        match codec {
            VideoCodec::H264 => flv::avc_sequence_header(p.sps.as_deref()?, p.pps.as_deref()?),
            VideoCodec::H265 => flv::hevc_sequence_header(
                p.vps.as_deref()?,
                p.sps.as_deref()?,
                p.pps.as_deref()?,
                self.tagging,
            ),
        }
    }

    fn metadata(&self, codec: VideoCodec) -> Bytes {
        let size = self
            .latest
            .sps
            .as_deref()
            .and_then(|sps| annexb::picture_size(codec, sps));
        let (audio_codec_id, audio_sample_rate, stereo) = match self.audio_metadata {
            Some((c, r, s)) => (Some(c), Some(r), Some(s)),
            None => (None, None, None),
        };
        flv::on_metadata(&Metadata {
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            framerate: self.frame_interval.map(|i| 1000.0 / f64::from(i)),
            video_codec_id: Some(match codec {
                VideoCodec::H264 => flv::CODEC_ID_AVC,
                VideoCodec::H265 => flv::CODEC_ID_HEVC,
            }),
            audio_codec_id,
            audio_sample_rate,
            stereo,
        })
    }
}
