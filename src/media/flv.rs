//! # FLV bytes: header, tags, onMetaData, AVC/HEVC/AAC/G.711 tag bodies
//!
//! HTTP-FLV viewers get a file header, then tags; RTMP carries the same tag bodies as
//! messages. This module builds those bodies from NAL units and audio frames, and the
//! AMF0 onMetaData script a player reads the picture size from.
//!
//! HEVC has two incompatible FLV conventions and both are in use: the Chinese "codec id 12"
//! (SRS 2-5, ZLMediaKit, Jessibuca, flv.js forks) and enhanced FLV with FourCC `hvc1` (FFmpeg
//! 6.1+, OBS, mpegts.js). [`HevcTagging`] picks one per stream.

use bytes::{BufMut, Bytes, BytesMut};

use super::annexb::{self, VideoCodec};
use super::FlvTag;

#[cfg(test)]
pub(crate) mod tests;

/// FLV video codec ids (the low nibble of a legacy video tag's first byte).
pub const CODEC_ID_AVC: u8 = 7;
/// HEVC in the "codec id 12" convention.
pub const CODEC_ID_HEVC: u8 = 12;
/// FLV sound formats (the high nibble of an audio tag's first byte).
pub const SOUND_FORMAT_ALAW: u8 = 7;
pub const SOUND_FORMAT_MULAW: u8 = 8;
pub const SOUND_FORMAT_AAC: u8 = 10;

/// The largest tag body the 24-bit DataSize field describes.
pub const MAX_TAG_BODY: usize = 0xff_ffff;

/// The 9-byte FLV header and PreviousTagSize0.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; 13] {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// Appends one tag: 11-byte header (timestamp low 24 bits, then the extended high byte),
/// the body, and PreviousTagSize. A body over 16 MiB cannot be described and is not written.
pub fn encode_tag(tag: &FlvTag, out: &mut BytesMut) {
    let size = tag.body.len();
    if size > MAX_TAG_BODY {
        return;
    }
    out.reserve(11 + size + 4);
    out.put_u8(tag.kind as u8);
    out.put_uint(size as u64, 3);
    out.put_uint(u64::from(tag.timestamp & 0xff_ffff), 3);
    out.put_u8((tag.timestamp >> 24) as u8);
    out.put_uint(0, 3);
    out.put_slice(&tag.body);
    out.put_u32((11 + size) as u32);
}

/// What onMetaData says about a stream; absent fields are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub framerate: Option<f64>,
    /// 7 AVC, 12 HEVC (written for both HEVC taggings; players take the codec from the
    /// sequence header).
    pub video_codec_id: Option<u8>,
    /// 10 AAC, 7 G.711 A-law, 8 G.711 µ-law.
    pub audio_codec_id: Option<u8>,
    pub audio_sample_rate: Option<u32>,
    pub stereo: Option<bool>,
}

fn amf0_string(out: &mut BytesMut, s: &str) {
    out.put_u8(0x02);
    amf0_key(out, s);
}

/// A property name: u16 length then UTF-8, no type marker.
fn amf0_key(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn amf0_number(out: &mut BytesMut, key: &str, v: f64) {
    amf0_key(out, key);
    out.put_u8(0x00);
    out.put_f64(v);
}

fn amf0_bool(out: &mut BytesMut, key: &str, v: bool) {
    amf0_key(out, key);
    out.put_u8(0x01);
    out.put_u8(u8::from(v));
}

/// A script tag body: AMF0 string `onMetaData`, then an ECMA array of the present fields.
pub fn on_metadata(m: &Metadata) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    amf0_string(&mut out, "onMetaData");
    let mut props = BytesMut::with_capacity(200);
    let mut count = 0u32;
    let mut number = |key: &str, v: Option<f64>| {
        if let Some(v) = v {
            amf0_number(&mut props, key, v);
            count += 1;
        }
    };
    number("width", m.width.map(f64::from));
    number("height", m.height.map(f64::from));
    number("framerate", m.framerate);
    number("videocodecid", m.video_codec_id.map(f64::from));
    number("audiocodecid", m.audio_codec_id.map(f64::from));
    number("audiosamplerate", m.audio_sample_rate.map(f64::from));
    if let Some(stereo) = m.stereo {
        amf0_bool(&mut props, "stereo", stereo);
        count += 1;
    }
    out.put_u8(0x08);
    out.put_u32(count);
    out.put_slice(&props);
    out.put_slice(&[0, 0, 9]);
    out.freeze()
}

/// `@setDataFrame` as an AMF0 string, which RTMP publishers put before onMetaData.
const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";

/// The script body without a leading `@setDataFrame` (what HTTP-FLV players expect).
pub fn without_set_data_frame(body: &Bytes) -> Bytes {
    if body.starts_with(SET_DATA_FRAME) {
        body.slice(SET_DATA_FRAME.len()..)
    } else {
        body.clone()
    }
}

/// True for a script body that is onMetaData (with or without `@setDataFrame`).
pub fn is_on_metadata(body: &Bytes) -> bool {
    without_set_data_frame(body).starts_with(b"\x02\x00\x0aonMetaData")
}

/// How HEVC is written into FLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HevcTagging {
    /// Legacy layout with codec id 12 (`0x1C`/`0x2C`, packet type, CTS).
    CodecId12,
    /// Enhanced FLV: `IsExHeader | FrameType | PacketType`, then FourCC `hvc1`.
    Enhanced,
}

const FOURCC_HVC1: &[u8; 4] = b"hvc1";

/// Enhanced FLV packet types.
const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;

fn put_si24(out: &mut BytesMut, v: i32) {
    let v = v.clamp(-0x80_0000, 0x7f_ffff);
    out.put_uint(u64::from(v as u32 & 0xff_ffff), 3);
}

fn put_u16_len(out: &mut BytesMut, data: &[u8]) -> Option<()> {
    out.put_u16(u16::try_from(data.len()).ok()?);
    out.put_slice(data);
    Some(())
}

/// The AVC sequence header tag body: `17 00 000000` and the AVCDecoderConfigurationRecord
/// with one SPS and one PPS (plus the chroma/bit-depth fields High profiles carry). `None`
/// for an SPS too short to hold profile and level, or parameter sets over 64 KiB.
pub fn avc_sequence_header(sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    let (profile, compat, level) = (*sps.get(1)?, *sps.get(2)?, *sps.get(3)?);
    if pps.is_empty() {
        return None;
    }
    let mut out = BytesMut::with_capacity(16 + sps.len() + pps.len());
    out.put_slice(&[0x10 | CODEC_ID_AVC, 0, 0, 0, 0]);
    out.put_slice(&[1, profile, compat, level, 0xff, 0xe1]);
    put_u16_len(&mut out, sps)?;
    out.put_u8(1);
    put_u16_len(&mut out, pps)?;
    if matches!(profile, 100 | 110 | 122 | 144) {
        if let Some(s) = annexb::parse_h264_sps(sps) {
            out.put_u8(0xfc | (s.chroma_format_idc & 3) as u8);
            out.put_u8(0xf8 | (s.bit_depth_luma_minus8 & 7) as u8);
            out.put_u8(0xf8 | (s.bit_depth_chroma_minus8 & 7) as u8);
            out.put_u8(0); // numOfSequenceParameterSetExt
        }
    }
    Some(out.freeze())
}

/// The HEVC sequence header tag body: the HEVCDecoderConfigurationRecord (profile, tier and
/// level from the SPS; one VPS, SPS and PPS) behind the tagging's prefix. `None` when the SPS
/// does not parse.
pub fn hevc_sequence_header(
    vps: &[u8],
    sps: &[u8],
    pps: &[u8],
    tagging: HevcTagging,
) -> Option<Bytes> {
    let s = annexb::parse_h265_sps(sps)?;
    let mut out = BytesMut::with_capacity(48 + vps.len() + sps.len() + pps.len());
    match tagging {
        HevcTagging::CodecId12 => out.put_slice(&[0x10 | CODEC_ID_HEVC, 0, 0, 0, 0]),
        HevcTagging::Enhanced => {
            out.put_u8(0x80 | (1 << 4) | EX_SEQUENCE_START);
            out.put_slice(FOURCC_HVC1);
        }
    }
    out.put_u8(1); // configurationVersion
    out.put_u8(
        (s.general_profile_space << 6)
            | (u8::from(s.general_tier_flag) << 5)
            | (s.general_profile_idc & 0x1f),
    );
    out.put_u32(s.general_profile_compatibility_flags);
    out.put_uint(s.general_constraint_indicator_flags, 6);
    out.put_u8(s.general_level_idc);
    out.put_u16(0xf000); // min_spatial_segmentation_idc unknown
    out.put_u8(0xfc); // parallelismType unknown
    out.put_u8(0xfc | (s.chroma_format_idc & 3) as u8);
    out.put_u8(0xf8 | (s.bit_depth_luma_minus8 & 7) as u8);
    out.put_u8(0xf8 | (s.bit_depth_chroma_minus8 & 7) as u8);
    out.put_u16(0); // avgFrameRate unknown
    out.put_u8(
        (((s.max_sub_layers_minus1 + 1) & 7) << 3) | (u8::from(s.temporal_id_nesting) << 2) | 3,
    );
    out.put_u8(3); // numOfArrays
    for (nal_type, nal) in [
        (annexb::H265_VPS, vps),
        (annexb::H265_SPS, sps),
        (annexb::H265_PPS, pps),
    ] {
        out.put_u8(0x80 | nal_type); // array_completeness: the record holds every set
        out.put_u16(1);
        put_u16_len(&mut out, nal)?;
    }
    Some(out.freeze())
}

/// A coded-frame tag body: NAL units each behind a 4-byte big-endian length. `cts` is the
/// composition time offset (PTS - DTS) in ms.
pub fn video_frame(
    codec: VideoCodec,
    tagging: HevcTagging,
    key: bool,
    nalus: &[&[u8]],
    cts: i32,
) -> Bytes {
    let frame_type = if key { 1u8 } else { 2 };
    let size: usize = nalus.iter().map(|n| 4 + n.len()).sum();
    let mut out = BytesMut::with_capacity(9 + size);
    match (codec, tagging) {
        (VideoCodec::H264, _) => {
            out.put_u8((frame_type << 4) | CODEC_ID_AVC);
            out.put_u8(1);
        }
        (VideoCodec::H265, HevcTagging::CodecId12) => {
            out.put_u8((frame_type << 4) | CODEC_ID_HEVC);
            out.put_u8(1);
        }
        (VideoCodec::H265, HevcTagging::Enhanced) => {
            out.put_u8(0x80 | (frame_type << 4) | EX_CODED_FRAMES);
            out.put_slice(FOURCC_HVC1);
        }
    }
    put_si24(&mut out, cts);
    for nal in nalus {
        out.put_u32(nal.len() as u32);
        out.put_slice(nal);
    }
    out.freeze()
}

/// `AF 00` + AudioSpecificConfig.
pub fn aac_sequence_header(asc: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + asc.len());
    out.put_slice(&[0xaf, 0x00]);
    out.put_slice(asc);
    out.freeze()
}

/// `AF 01` + one raw AAC frame (no ADTS header).
pub fn aac_frame(raw: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + raw.len());
    out.put_slice(&[0xaf, 0x01]);
    out.put_slice(raw);
    out.freeze()
}

/// G.711 as FLV carries it: 8 kHz mono only, flagged 16-bit like FFmpeg does (`72` A-law,
/// `82` µ-law).
pub fn g711_frame(alaw: bool, data: &[u8]) -> Bytes {
    let format = if alaw {
        SOUND_FORMAT_ALAW
    } else {
        SOUND_FORMAT_MULAW
    };
    let mut out = BytesMut::with_capacity(1 + data.len());
    out.put_u8((format << 4) | 0x02);
    out.put_slice(data);
    out.freeze()
}
