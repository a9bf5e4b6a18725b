//! FLV tests: header and tag bytes, AMF0 onMetaData, sequence header records from real
//! parameter sets, and an FLV file written from an FFmpeg-made H.264 stream that ffprobe
//! and FFmpeg's decoder must accept. The FFmpeg functions here are shared with the muxer tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::media::annexb::{access_units, is_key_frame_nal, is_parameter_set, nal_units};
use crate::media::TagKind;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex")
}

/// A fresh path in the system temporary directory.
pub(crate) fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("iothub-media-{}-{n}-{name}", std::process::id()))
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed for this test (apt-get install ffmpeg): {e}")
        })
}

/// Runs FFmpeg with `args` writing `out_name`, returns the file's bytes.
pub(crate) fn ffmpeg_output(args: &[&str], out_name: &str) -> Vec<u8> {
    let path = temp_path(out_name);
    let p = path.to_str().expect("utf-8 temp path");
    let mut all = vec!["-hide_banner", "-v", "error", "-y"];
    all.extend_from_slice(args);
    all.push(p);
    let out = run("ffmpeg", &all);
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&path).expect("ffmpeg output");
    let _ = std::fs::remove_file(&path);
    bytes
}

/// Two seconds of 352x288 15 fps H.264 Baseline, Annex-B, a key frame every 15 frames.
pub(crate) fn ffmpeg_h264_annexb() -> Vec<u8> {
    ffmpeg_output(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=352x288:rate=15",
            "-t",
            "2",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-g",
            "15",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        ],
        "v.264",
    )
}

/// Two seconds of 8 kHz mono G.711 A-law.
pub(crate) fn ffmpeg_alaw() -> Vec<u8> {
    ffmpeg_output(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:sample_rate=8000",
            "-t",
            "2",
            "-ac",
            "1",
            "-c:a",
            "pcm_alaw",
            "-f",
            "alaw",
        ],
        "a.alaw",
    )
}

/// ffprobe's streams of a file as JSON.
pub(crate) fn ffprobe_streams(path: &Path) -> serde_json::Value {
    let p = path.to_str().expect("utf-8 path");
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,sample_rate",
            "-of",
            "json",
            p,
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("ffprobe json")["streams"]
        .clone()
}

/// What FFmpeg's decoders complain about when decoding the whole file ("" when nothing).
pub(crate) fn ffmpeg_decode_errors(path: &Path) -> String {
    let p = path.to_str().expect("utf-8 path");
    let out = run(
        "ffmpeg",
        &["-hide_banner", "-v", "error", "-i", p, "-f", "null", "-"],
    );
    let mut errors = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        errors.push_str(&format!(" (exit {})", out.status));
    }
    errors
}

#[test]
fn header_flags_audio_and_video() {
    assert_eq!(
        file_header(true, true),
        [b'F', b'L', b'V', 1, 5, 0, 0, 0, 9, 0, 0, 0, 0]
    );
    assert_eq!(file_header(false, true)[4], 1);
    assert_eq!(file_header(true, false)[4], 4);
}

#[test]
fn tag_bytes_carry_the_extended_timestamp_and_previous_size() {
    let tag = FlvTag {
        kind: TagKind::Video,
        timestamp: 0x1234_5678,
        body: Bytes::from_static(&[0x27, 1, 0, 0, 0]),
    };
    let mut out = BytesMut::new();
    encode_tag(&tag, &mut out);
    assert_eq!(
        hex::encode(&out),
        "09000005345678120000002701000000\
         00000010"
    );
}

#[test]
fn on_metadata_is_an_amf0_string_and_ecma_array() {
    let body = on_metadata(&Metadata {
        width: Some(352),
        stereo: Some(false),
        ..Metadata::default()
    });
    assert_eq!(
        hex::encode(&body),
        "02000a6f6e4d65746144617461\
         0800000002\
         00057769647468004076000000000000\
         000673746572656f0100\
         000009"
    );
}

#[test]
fn set_data_frame_is_dropped() {
    let plain = on_metadata(&Metadata::default());
    let mut with = BytesMut::from(&b"\x02\x00\x0d@setDataFrame"[..]);
    with.extend_from_slice(&plain);
    assert_eq!(without_set_data_frame(&with.freeze()), plain);
    assert_eq!(without_set_data_frame(&plain), plain);
    assert!(is_on_metadata(&plain));
}

/// go-jt808 test data SPS and PPS (High profile 720x576).
const SPS_GO: &str = "6764001eacb2016824dff802000168800001f480005dc0078b172400";
const PPS_GO: &str = "68ebc3cb22c0";

#[test]
fn avc_sequence_header_record() {
    let body = avc_sequence_header(&unhex(SPS_GO), &unhex(PPS_GO)).expect("record");
    assert_eq!(
        &body[..5],
        &[0x17, 0, 0, 0, 0],
        "key frame, AVC, sequence header, CTS 0"
    );
    assert_eq!(
        &body[5..11],
        &[1, 0x64, 0x00, 0x1e, 0xff, 0xe1],
        "profile, level, 4-byte lengths, one SPS"
    );
    assert_eq!(&body[11..13], &[0, 28], "SPS length");
    assert_eq!(
        &body[body.len() - 4..],
        &[0xfd, 0xf8, 0xf8, 0],
        "High profile: 4:2:0, 8 bit"
    );
}

#[test]
fn avc_sequence_header_needs_profile_and_level() {
    assert_eq!(avc_sequence_header(&[0x67, 0x42], &[0x68]), None);
}

const VPS_X265: &str = "40010c01ffff01600000030090000003000003003c959809";
const SPS_X265: &str =
    "42010101600000030090000003000003003ca00b0804875596566924caf0168080000003008000000784";
const PPS_X265: &str = "4401c172b46240";

#[test]
fn hevc_record_takes_profile_tier_level_from_the_sps() {
    let body = hevc_sequence_header(
        &unhex(VPS_X265),
        &unhex(SPS_X265),
        &unhex(PPS_X265),
        HevcTagging::CodecId12,
    )
    .expect("record");
    assert_eq!(&body[..5], &[0x1c, 0, 0, 0, 0]);
    // Version 1; profile_space 0, tier 0, profile 1; compatibility; constraints; level 60.
    assert_eq!(hex::encode(&body[5..18]), "0101600000009000000000003c");
    assert_eq!(body[21], 0xfd, "4:2:0");
    assert_eq!(body[26], 0x0f, "one temporal layer, nested, 4-byte lengths");
    assert_eq!(body[27], 3, "VPS, SPS and PPS arrays");
}

#[test]
fn enhanced_hevc_uses_the_hvc1_fourcc() {
    let body = hevc_sequence_header(
        &unhex(VPS_X265),
        &unhex(SPS_X265),
        &unhex(PPS_X265),
        HevcTagging::Enhanced,
    )
    .expect("record");
    assert_eq!(
        &body[..5],
        b"\x90hvc1",
        "ex header, key frame, SequenceStart"
    );
    let frame = video_frame(
        VideoCodec::H265,
        HevcTagging::Enhanced,
        false,
        &[&[0x02, 0x01]],
        0,
    );
    assert_eq!(
        &frame[..8],
        b"\xa1hvc1\x00\x00\x00",
        "inter frame, CodedFrames, CTS"
    );
}

#[test]
fn video_frames_length_prefix_each_nal() {
    let body = video_frame(
        VideoCodec::H264,
        HevcTagging::CodecId12,
        true,
        &[&[0x65, 1], &[0x65, 2, 3]],
        -1,
    );
    assert_eq!(
        hex::encode(&body),
        "170 1ffffff 00000002 6501 00000003 650203".replace(' ', "")
    );
    let body = video_frame(VideoCodec::H265, HevcTagging::CodecId12, false, &[], 0);
    assert_eq!(&body[..2], &[0x2c, 1]);
}

#[test]
fn audio_bodies() {
    assert_eq!(
        &aac_sequence_header(&[0x12, 0x10])[..],
        &[0xaf, 0, 0x12, 0x10]
    );
    assert_eq!(&aac_frame(&[9])[..], &[0xaf, 1, 9]);
    assert_eq!(g711_frame(true, &[0xd5])[0], 0x72);
    assert_eq!(g711_frame(false, &[0xff])[0], 0x82);
}

/// An FLV file from an Annex-B H.264 stream at 15 fps, the way the muxer builds one.
fn flv_from_annexb(stream: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::from(&file_header(false, true)[..]);
    let mut header_written = false;
    for (i, unit) in access_units(VideoCodec::H264, stream)
        .into_iter()
        .enumerate()
    {
        let nals: Vec<&[u8]> = nal_units(unit).collect();
        let ts = (i * 1000 / 15) as u32;
        if !header_written {
            let sps = nals.iter().find(|n| n[0] & 0x1f == 7).expect("SPS first");
            let pps = nals.iter().find(|n| n[0] & 0x1f == 8).expect("PPS first");
            let (w, h) = crate::media::annexb::h264_picture_size(sps).expect("size");
            let meta = on_metadata(&Metadata {
                width: Some(w),
                height: Some(h),
                framerate: Some(15.0),
                video_codec_id: Some(CODEC_ID_AVC),
                ..Metadata::default()
            });
            encode_tag(
                &FlvTag {
                    kind: TagKind::Script,
                    timestamp: 0,
                    body: meta,
                },
                &mut out,
            );
            let seq = avc_sequence_header(sps, pps).expect("sequence header");
            encode_tag(
                &FlvTag {
                    kind: TagKind::Video,
                    timestamp: 0,
                    body: seq,
                },
                &mut out,
            );
            header_written = true;
        }
        let key = nals.iter().any(|n| is_key_frame_nal(VideoCodec::H264, n));
        let pictures: Vec<&[u8]> = nals
            .into_iter()
            .filter(|n| !is_parameter_set(VideoCodec::H264, n))
            .collect();
        let body = video_frame(VideoCodec::H264, HevcTagging::CodecId12, key, &pictures, 0);
        encode_tag(
            &FlvTag {
                kind: TagKind::Video,
                timestamp: ts,
                body,
            },
            &mut out,
        );
    }
    out.to_vec()
}

#[test]
fn ffmpeg_stream_splits_into_thirty_pictures() {
    let stream = ffmpeg_h264_annexb();
    let units = access_units(VideoCodec::H264, &stream);
    assert_eq!(units.len(), 30, "2 s at 15 fps");
    let keys = units
        .iter()
        .filter(|u| nal_units(u).any(|n| is_key_frame_nal(VideoCodec::H264, n)))
        .count();
    assert_eq!(keys, 2, "a key frame every 15 frames");
    assert_eq!(units.concat(), stream, "units cover the stream");
}

#[test]
fn flv_from_ffmpeg_h264_probes_as_h264_352x288() {
    let path = temp_path("v.flv");
    std::fs::write(&path, flv_from_annexb(&ffmpeg_h264_annexb())).expect("write flv");
    let streams = ffprobe_streams(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["width"], 352);
    assert_eq!(streams[0]["height"], 288);
}

#[test]
fn flv_from_ffmpeg_h264_decodes_without_errors() {
    let path = temp_path("v.flv");
    std::fs::write(&path, flv_from_annexb(&ffmpeg_h264_annexb())).expect("write flv");
    let errors = ffmpeg_decode_errors(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(errors, "", "ffmpeg decode errors");
}
