//! # Annex-B H.264 and H.265: NAL units, parameter sets, picture size
//!
//! Dashcams send video as Annex-B byte streams (NAL units behind `00 00 01` or `00 00 00 01`
//! start codes), with the parameter sets in front of each key frame. FLV wants the parameter
//! sets in a decoder configuration record and the picture size in onMetaData, so this module
//! splits the stream and reads the few SPS fields those need. The SPS readers are small
//! enough that a bitstream crate would add more than it saves.

#[cfg(test)]
mod tests;

/// The video codecs JT/T 1078 names by payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    /// 98 H.264, 99 H.265 (JT/T 1078 table 12); anything else is not a video codec iothub muxes.
    pub fn from_payload_type(pt: u8) -> Option<VideoCodec> {
        match pt {
            98 => Some(VideoCodec::H264),
            99 => Some(VideoCodec::H265),
            _ => None,
        }
    }

    /// The codec the NAL units look like, for devices that send a wrong payload type: an
    /// H.265 VPS/SPS/PPS header (`40 01`, `42 01`, `44 01`) or else H.264.
    pub fn guess(data: &[u8]) -> VideoCodec {
        let h265 = nal_units(data)
            .any(|n| n.len() > 2 && n[1] == 0x01 && matches!(h265_nal_type(n), Some(32..=34)));
        if h265 {
            VideoCodec::H265
        } else {
            VideoCodec::H264
        }
    }
}

/// The NAL units of an Annex-B stream, without start codes or trailing zero bytes. Bytes
/// before the first start code are not a NAL unit and are skipped.
pub fn nal_units(data: &[u8]) -> NalUnits<'_> {
    let rest = match find_start_code(data) {
        Some((at, len)) => &data[at + len..],
        None => &[],
    };
    NalUnits { rest }
}

/// Iterator returned by [`nal_units`].
#[derive(Debug, Clone)]
pub struct NalUnits<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (nal, rest) = match find_start_code(self.rest) {
                Some((at, len)) => (&self.rest[..at], &self.rest[at + len..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if end > 0 {
                return Some(&nal[..end]);
            }
        }
        None
    }
}

/// The access units (pictures, with the parameter sets and SEI in front of them) of an
/// Annex-B stream, as slices of `data` that keep their start codes: what an encoder writes
/// per frame, and what a dashcam sends as one JT/T 1078 frame. A unit starts at a parameter
/// set, SEI or delimiter after a picture, or at a picture's first slice.
pub fn access_units(codec: VideoCodec, data: &[u8]) -> Vec<&[u8]> {
    let mut units = Vec::new();
    let mut start = None;
    let mut has_picture = false;
    let mut at = 0;
    while let Some((rel, len)) = data.get(at..).and_then(find_start_code) {
        let code_at = at + rel;
        // A 4-byte start code begins one zero earlier.
        let code_start = if code_at > 0 && data[code_at - 1] == 0 {
            code_at - 1
        } else {
            code_at
        };
        let nal = &data[code_at + len..];
        // Prefix NAL units: SEI, SPS, PPS, delimiter (H.264); VPS, SPS, PPS, delimiter,
        // prefix SEI (H.265). Suffix SEI and the like stay with the picture before them.
        let (vcl, first_slice, prefix) = match codec {
            VideoCodec::H264 => (
                matches!(h264_nal_type(nal), Some(1..=5)),
                nal.get(1).is_some_and(|b| b & 0x80 != 0),
                matches!(h264_nal_type(nal), Some(6..=9)),
            ),
            VideoCodec::H265 => (
                matches!(h265_nal_type(nal), Some(0..=31)),
                nal.get(2).is_some_and(|b| b & 0x80 != 0),
                matches!(h265_nal_type(nal), Some(32..=35 | 39)),
            ),
        };
        let begins_unit = (vcl && first_slice) || prefix;
        if begins_unit && has_picture {
            if let Some(s) = start {
                units.push(&data[s..code_start]);
            }
            start = None;
            has_picture = false;
        }
        if start.is_none() {
            start = Some(code_start);
        }
        has_picture |= vcl;
        at = code_at + len;
    }
    if let Some(s) = start {
        units.push(&data[s..]);
    }
    units
}

/// Position and length (3) of the first `00 00 01`.
fn find_start_code(data: &[u8]) -> Option<(usize, usize)> {
    data.windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|at| (at, 3))
}

/// `nal_unit_type` of an H.264 NAL unit (5 bits).
pub fn h264_nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// `nal_unit_type` of an H.265 NAL unit (6 bits after the forbidden bit).
pub fn h265_nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| (b >> 1) & 0x3f)
}

pub fn nal_type(codec: VideoCodec, nal: &[u8]) -> Option<u8> {
    match codec {
        VideoCodec::H264 => h264_nal_type(nal),
        VideoCodec::H265 => h265_nal_type(nal),
    }
}

pub const H264_IDR: u8 = 5;
pub const H264_SPS: u8 = 7;
pub const H264_PPS: u8 = 8;
pub const H265_VPS: u8 = 32;
pub const H265_SPS: u8 = 33;
pub const H265_PPS: u8 = 34;

/// SPS or PPS (H.264), VPS, SPS or PPS (H.265).
pub fn is_parameter_set(codec: VideoCodec, nal: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => matches!(h264_nal_type(nal), Some(H264_SPS | H264_PPS)),
        VideoCodec::H265 => matches!(h265_nal_type(nal), Some(H265_VPS..=H265_PPS)),
    }
}

/// A picture a decoder can start from: H.264 IDR (5), H.265 IRAP (16..=21).
pub fn is_key_frame_nal(codec: VideoCodec, nal: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => h264_nal_type(nal) == Some(H264_IDR),
        VideoCodec::H265 => matches!(h265_nal_type(nal), Some(16..=21)),
    }
}

/// The RBSP of a NAL unit: `00 00 03` emulation prevention bytes removed.
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit reader over an RBSP; every read fails cleanly past the end.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Bits<'a> {
        Bits { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Some(v)
    }

    fn u(&mut self, n: u32) -> Option<u32> {
        self.bits(n).and_then(|v| u32::try_from(v).ok())
    }

    fn flag(&mut self) -> Option<bool> {
        self.bit().map(|b| b == 1)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos = self.pos.checked_add(n)?;
        (self.pos <= self.data.len() * 8).then_some(())
    }

    /// Unsigned exp-Golomb, refused beyond 32 bits.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        u32::try_from((1u64 << zeros) - 1 + rest).ok()
    }

    /// Signed exp-Golomb.
    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }
}

/// The H.264 SPS fields FLV needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Sps {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub chroma_format_idc: u32,
    pub bit_depth_luma_minus8: u32,
    pub bit_depth_chroma_minus8: u32,
    pub width: u32,
    pub height: u32,
}

/// Parses an H.264 SPS NAL unit (header byte included).
pub fn parse_h264_sps(sps: &[u8]) -> Option<H264Sps> {
    if h264_nal_type(sps)? != H264_SPS {
        return None;
    }
    let rbsp = rbsp(sps.get(1..)?);
    let mut r = Bits::new(&rbsp);
    let profile_idc = r.u(8)? as u8;
    let constraint_flags = r.u(8)? as u8;
    let level_idc = r.u(8)? as u8;
    r.ue()?; // seq_parameter_set_id
    let (mut chroma_format_idc, mut separate_colour_plane) = (1, false);
    let (mut depth_luma, mut depth_chroma) = (0, 0);
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None;
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        depth_luma = r.ue()?;
        depth_chroma = r.ue()?;
        r.flag()?; // qpprime_y_zero_transform_bypass_flag
        if r.flag()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.flag()?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.flag()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_map_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.flag()?;
    if !frame_mbs_only {
        r.flag()?; // mb_adaptive_frame_field_flag
    }
    r.flag()?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = r.ue()?;
        right = r.ue()?;
        top = r.ue()?;
        bottom = r.ue()?;
    }
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_width, sub_height) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let crop_x = sub_width;
    let crop_y = sub_height * field_factor;
    let full_w = width_mbs.checked_mul(16)?;
    let full_h = height_map_units
        .checked_mul(16)?
        .checked_mul(field_factor)?;
    let width = full_w.checked_sub(crop_x * left.checked_add(right)?)?;
    let height = full_h.checked_sub(crop_y * top.checked_add(bottom)?)?;
    Some(H264Sps {
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc,
        bit_depth_luma_minus8: depth_luma,
        bit_depth_chroma_minus8: depth_chroma,
        width,
        height,
    })
}

fn skip_scaling_list(r: &mut Bits<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Width and height in pixels from an H.264 SPS NAL unit (header byte included), after
/// frame cropping.
pub fn h264_picture_size(sps: &[u8]) -> Option<(u32, u32)> {
    parse_h264_sps(sps).map(|s| (s.width, s.height))
}

/// The H.265 SPS fields FLV needs: the general profile, tier and level (copied verbatim into
/// the HEVCDecoderConfigurationRecord) and the picture format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H265Sps {
    pub max_sub_layers_minus1: u8,
    pub temporal_id_nesting: bool,
    pub general_profile_space: u8,
    pub general_tier_flag: bool,
    pub general_profile_idc: u8,
    pub general_profile_compatibility_flags: u32,
    /// 48 bits.
    pub general_constraint_indicator_flags: u64,
    pub general_level_idc: u8,
    pub chroma_format_idc: u32,
    pub bit_depth_luma_minus8: u32,
    pub bit_depth_chroma_minus8: u32,
    pub width: u32,
    pub height: u32,
}

/// Parses an H.265 SPS NAL unit (2-byte header included).
pub fn parse_h265_sps(sps: &[u8]) -> Option<H265Sps> {
    if h265_nal_type(sps)? != H265_SPS {
        return None;
    }
    let rbsp = rbsp(sps.get(2..)?);
    let mut r = Bits::new(&rbsp);
    r.u(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.u(3)? as u8;
    let temporal_id_nesting = r.flag()?;
    let general_profile_space = r.u(2)? as u8;
    let general_tier_flag = r.flag()?;
    let general_profile_idc = r.u(5)? as u8;
    let general_profile_compatibility_flags = r.u(32)?;
    let general_constraint_indicator_flags = r.bits(48)?;
    let general_level_idc = r.u(8)? as u8;
    let mut present = [(false, false); 8];
    for p in present.iter_mut().take(usize::from(max_sub_layers_minus1)) {
        *p = (r.flag()?, r.flag()?);
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.u(2)?; // reserved_zero_2bits
        }
    }
    for &(profile, level) in present.iter().take(usize::from(max_sub_layers_minus1)) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc > 3 {
        return None;
    }
    let separate_colour_plane = chroma_format_idc == 3 && r.flag()?;
    let full_w = r.ue()?;
    let full_h = r.ue()?;
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = r.ue()?;
        right = r.ue()?;
        top = r.ue()?;
        bottom = r.ue()?;
    }
    let bit_depth_luma_minus8 = r.ue()?;
    let bit_depth_chroma_minus8 = r.ue()?;
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_width, sub_height) = match chroma_array_type {
        1 => (2u32, 2u32),
        2 => (2, 1),
        _ => (1, 1),
    };
    let width = full_w.checked_sub(sub_width.checked_mul(left.checked_add(right)?)?)?;
    let height = full_h.checked_sub(sub_height.checked_mul(top.checked_add(bottom)?)?)?;
    Some(H265Sps {
        max_sub_layers_minus1,
        temporal_id_nesting,
        general_profile_space,
        general_tier_flag,
        general_profile_idc,
        general_profile_compatibility_flags,
        general_constraint_indicator_flags,
        general_level_idc,
        chroma_format_idc,
        bit_depth_luma_minus8,
        bit_depth_chroma_minus8,
        width,
        height,
    })
}

/// Width and height in pixels from an H.265 SPS NAL unit, after the conformance window.
pub fn h265_picture_size(sps: &[u8]) -> Option<(u32, u32)> {
    parse_h265_sps(sps).map(|s| (s.width, s.height))
}

/// Width and height from an SPS of either codec.
pub fn picture_size(codec: VideoCodec, sps: &[u8]) -> Option<(u32, u32)> {
    match codec {
        VideoCodec::H264 => h264_picture_size(sps),
        VideoCodec::H265 => h265_picture_size(sps),
    }
}
