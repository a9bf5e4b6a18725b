//! Muxer tests: an FFmpeg-made H.264 stream and G.711 audio sent through the packetizer,
//! decoder, reassembler and muxer into an FLV file that ffprobe and FFmpeg's decoder accept;
//! sequence headers from real captures (SmallChi/JT1078, go-jt808) repeated when the
//! parameter sets change; and the timestamp fallbacks for broken device clocks.

use bytes::{BufMut, BytesMut};

use super::*;
use crate::codec::jt808::Phone;
use crate::media::annexb::access_units;
use crate::media::flv::tests::{
    ffmpeg_alaw, ffmpeg_decode_errors, ffmpeg_h264_annexb, ffprobe_streams, temp_path,
};
use crate::media::flv::{encode_tag, file_header, g711_frame};
use crate::media::jt1078::{Decoder, Layout, Packetizer, Reassembler};

const VECTORS: &str = include_str!("../jt1078/vectors.jsonl");

/// The body of a vector packet (all of them use the 6-byte layout, 30-byte video header).
fn vector_body(id: &str) -> Vec<u8> {
    let line = VECTORS
        .lines()
        .find(|l| l.contains(&format!("\"id\":\"{id}\"")))
        .unwrap_or_else(|| panic!("vector {id}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let raw = hex::decode(v["hex"].as_str().expect("hex")).expect("hex");
    raw[30..].to_vec()
}

/// The SmallChi capture's I frame (SPS Main 352x288), from its eight packets.
fn smallchi_i_frame() -> Vec<u8> {
    (1..=8)
        .flat_map(|i| vector_body(&format!("jt1078-smallchi-capture1-{i}")))
        .collect()
}

/// The go-jt808 capture's first I frame (SPS High 720x576).
fn go_i_frame() -> Vec<u8> {
    vector_body("jt1078-go-data-1")
}

const P_FRAME: &[u8] = &[0, 0, 0, 1, 0x41, 0x9a, 0x02, 0x04];

fn sim() -> Phone {
    Phone::from_digits("13800138000", false).expect("sim")
}

fn frame(data_type: DataType, ts: Option<u64>, interval: Option<u16>, body: &[u8]) -> Frame {
    Frame {
        sim: sim(),
        channel: 1,
        data_type,
        payload_type: if data_type == DataType::Audio { 6 } else { 98 },
        timestamp: ts,
        last_frame_interval: interval,
        body: Bytes::copy_from_slice(body),
    }
}

fn tags(out: &[MuxOut]) -> Vec<&FlvTag> {
    out.iter()
        .filter_map(|o| match o {
            MuxOut::Tag(t) => Some(t),
            MuxOut::Audio { .. } => None,
        })
        .collect()
}

fn timestamps(out: &[MuxOut]) -> Vec<u32> {
    out.iter()
        .map(|o| match o {
            MuxOut::Tag(t) => t.timestamp,
            MuxOut::Audio { timestamp, .. } => *timestamp,
        })
        .collect()
}

fn metadata_352x288() -> Bytes {
    flv::on_metadata(&Metadata {
        width: Some(352),
        height: Some(288),
        video_codec_id: Some(7),
        ..Metadata::default()
    })
}

#[test]
fn first_key_frame_brings_metadata_and_sequence_header() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let out = m.push(
        &frame(DataType::IFrame, Some(0), None, &smallchi_i_frame()),
        0,
    );
    let t = tags(&out);
    assert_eq!(t.len(), 3, "metadata, sequence header, frame");
    assert_eq!(
        t[0].body,
        metadata_352x288(),
        "width and height from the SPS"
    );
    assert!(t[1].is_sequence_header());
    assert!(t[2].is_key_frame());
    assert!(!t[2].is_sequence_header());
}

#[test]
fn nothing_before_the_first_key_frame() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    assert!(m
        .push(&frame(DataType::PFrame, Some(0), Some(40), P_FRAME), 0)
        .is_empty());
    assert!(!m.video_started());
}

#[test]
fn frame_tags_leave_the_parameter_sets_out() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let out = m.push(
        &frame(DataType::IFrame, Some(0), None, &smallchi_i_frame()),
        0,
    );
    let body = &tags(&out)[2].body;
    assert_eq!(
        body[9] & 0x1f,
        6,
        "first NAL after the 5-byte header and length is the SEI"
    );
}

#[test]
fn sequence_header_is_repeated_only_when_parameter_sets_change() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    m.push(
        &frame(DataType::IFrame, Some(0), None, &smallchi_i_frame()),
        0,
    );
    let same = m.push(
        &frame(DataType::IFrame, Some(40), None, &smallchi_i_frame()),
        40,
    );
    assert_eq!(tags(&same).len(), 1, "same parameter sets: frame only");
    let other = m.push(&frame(DataType::IFrame, Some(80), None, &go_i_frame()), 80);
    let t = tags(&other);
    assert_eq!(t.len(), 3, "new SPS: metadata and sequence header again");
    assert_eq!(
        t[0].body,
        flv::on_metadata(&Metadata {
            width: Some(720),
            height: Some(576),
            video_codec_id: Some(7),
            ..Metadata::default()
        })
    );
}

#[test]
fn audio_is_handed_back_untouched() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let body = crate::media::jt1078::hisilicon_prefixed(&[0xd5; 160]);
    let out = m.push(&frame(DataType::Audio, Some(5), None, &body), 0);
    assert_eq!(
        out,
        [MuxOut::Audio {
            payload_type: 6,
            timestamp: 0,
            data: Bytes::from(body)
        }]
    );
}

#[test]
fn transparent_data_is_not_media() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    assert!(m
        .push(&frame(DataType::Transparent, None, None, b"x"), 0)
        .is_empty());
}

#[test]
fn device_timestamps_count_from_the_first_frame() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(
        &frame(DataType::IFrame, Some(5000), Some(40), &smallchi_i_frame()),
        0,
    );
    all.extend(m.push(&frame(DataType::Audio, Some(5020), None, &[1]), 999));
    all.extend(m.push(&frame(DataType::PFrame, Some(5040), Some(40), P_FRAME), 999));
    assert_eq!(timestamps(&all), [0, 0, 0, 20, 40]);
}

#[test]
fn constant_video_timestamps_fall_back_to_the_frame_interval() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(
        &frame(DataType::IFrame, Some(7), Some(40), &smallchi_i_frame()),
        0,
    );
    all.extend(m.push(&frame(DataType::PFrame, Some(7), Some(40), P_FRAME), 0));
    all.extend(m.push(&frame(DataType::PFrame, Some(7), Some(40), P_FRAME), 0));
    assert_eq!(timestamps(&all)[3..], [40, 80]);
}

#[test]
fn constant_audio_timestamps_fall_back_to_arrival() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(&frame(DataType::Audio, Some(0), None, &[1]), 1000);
    all.extend(m.push(&frame(DataType::Audio, Some(0), None, &[1]), 1040));
    all.extend(m.push(&frame(DataType::Audio, Some(0), None, &[1]), 1080));
    assert_eq!(timestamps(&all), [0, 40, 80]);
}

#[test]
fn missing_timestamps_use_arrival() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(&frame(DataType::Audio, None, None, &[1]), 500);
    all.extend(m.push(&frame(DataType::Audio, None, None, &[1]), 560));
    assert_eq!(timestamps(&all), [0, 60]);
}

#[test]
fn a_clock_reset_continues_from_the_interval_and_then_follows_the_device() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(
        &frame(
            DataType::IFrame,
            Some(90_000),
            Some(40),
            &smallchi_i_frame(),
        ),
        0,
    );
    all.extend(m.push(&frame(DataType::PFrame, Some(90_040), Some(40), P_FRAME), 0));
    all.extend(m.push(&frame(DataType::PFrame, Some(0), Some(40), P_FRAME), 0));
    all.extend(m.push(&frame(DataType::PFrame, Some(40), Some(40), P_FRAME), 0));
    assert_eq!(timestamps(&all)[3..], [40, 80, 120]);
}

#[test]
fn a_jump_of_more_than_ten_seconds_is_not_followed() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(
        &frame(DataType::IFrame, Some(0), Some(40), &smallchi_i_frame()),
        0,
    );
    all.extend(m.push(
        &frame(DataType::PFrame, Some(3_600_000), Some(40), P_FRAME),
        0,
    ));
    assert_eq!(timestamps(&all)[3], 40);
}

#[test]
fn audio_on_a_clock_of_its_own_does_not_disturb_video() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut all = m.push(
        &frame(DataType::IFrame, Some(1000), Some(40), &smallchi_i_frame()),
        0,
    );
    all.extend(m.push(&frame(DataType::Audio, Some(77_000_000), None, &[1]), 20));
    all.extend(m.push(&frame(DataType::PFrame, Some(1040), Some(40), P_FRAME), 40));
    all.extend(m.push(&frame(DataType::Audio, Some(77_000_040), None, &[1]), 60));
    assert_eq!(timestamps(&all)[3..], [20, 40, 60]);
}

#[test]
fn output_never_goes_backwards() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut last = 0;
    for (i, ts) in [0u64, 40, 20, 20, 500_000, 10, 0, 80]
        .into_iter()
        .enumerate()
    {
        for o in m.push(&frame(DataType::Audio, Some(ts), None, &[1]), i as u64 * 10) {
            let t = timestamps(&[o])[0];
            assert!(t >= last, "{t} after {last}");
            last = t;
        }
    }
}

/// FFmpeg's H.264 and A-law through the whole JT/T 1078 path into an FLV file.
fn jt1078_to_flv(layout: Layout) -> Vec<u8> {
    let video = ffmpeg_h264_annexb();
    let audio = ffmpeg_alaw();
    let mut dvr = Packetizer::new(layout, sim(), 1);
    let mut wire = BytesMut::new();
    let base = 1_600_000_000_000u64;
    let units = access_units(VideoCodec::H264, &video);
    // 40 ms of A-law (320 bytes) between frames until the audio runs out.
    let mut audio_chunks = audio.chunks(320);
    let mut audio_ms = 0;
    for (i, unit) in units.iter().enumerate() {
        let ms = i as u64 * 1000 / 15;
        while audio_ms <= ms {
            if let Some(chunk) = audio_chunks.next() {
                wire.put_slice(&dvr.audio(chunk, 6, base + audio_ms));
            }
            audio_ms += 40;
        }
        let key = i % 15 == 0;
        let data_type = if key {
            DataType::IFrame
        } else {
            DataType::PFrame
        };
        for p in dvr.video(unit, data_type, 98, base + ms, 0, 66, 950) {
            wire.put_slice(&p);
        }
    }
    let mut decoder = Decoder::new();
    let mut reassembler = Reassembler::new(1 << 20);
    let mut muxer = Jt1078Muxer::new(HevcTagging::CodecId12);
    let mut flv = BytesMut::from(&file_header(true, true)[..]);
    let mut arrival = 0;
    while let Some(packet) = decoder.decode(&mut wire).expect("packets decode") {
        let Some(frame) = reassembler.push(packet).expect("frames reassemble") else {
            continue;
        };
        arrival += 10;
        for out in muxer.push(&frame, arrival) {
            let tag = match out {
                MuxOut::Tag(tag) => tag,
                MuxOut::Audio {
                    timestamp, data, ..
                } => FlvTag {
                    kind: TagKind::Audio,
                    timestamp,
                    body: g711_frame(true, &data),
                },
            };
            encode_tag(&tag, &mut flv);
        }
    }
    flv.to_vec()
}

#[test]
fn jt1078_stream_becomes_an_flv_ffprobe_reads() {
    for layout in [Layout::Sim6, Layout::Sim10] {
        let path = temp_path("jt.flv");
        std::fs::write(&path, jt1078_to_flv(layout)).expect("write");
        let streams = ffprobe_streams(&path);
        let _ = std::fs::remove_file(&path);
        let video = streams
            .as_array()
            .and_then(|s| s.iter().find(|s| s["codec_type"] == "video"))
            .unwrap_or_else(|| panic!("{layout:?}: no video stream in {streams}"));
        assert_eq!(video["codec_name"], "h264", "{layout:?}");
        assert_eq!(video["width"], 352, "{layout:?}");
        assert_eq!(video["height"], 288, "{layout:?}");
        let audio = streams
            .as_array()
            .and_then(|s| s.iter().find(|s| s["codec_type"] == "audio"))
            .unwrap_or_else(|| panic!("{layout:?}: no audio stream in {streams}"));
        assert_eq!(audio["codec_name"], "pcm_alaw", "{layout:?}");
        assert_eq!(audio["sample_rate"], "8000", "{layout:?}");
    }
}

#[test]
fn jt1078_stream_flv_decodes_without_errors() {
    let path = temp_path("jt.flv");
    std::fs::write(&path, jt1078_to_flv(Layout::Sim6)).expect("write");
    let errors = ffmpeg_decode_errors(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(errors, "", "ffmpeg decode errors");
}

/// libx265 parameter sets (Main, 350x286) and the start of an IDR_W_RADL slice.
const HEVC_KEY_FRAME: &str = "0000000140010c01ffff01600000030090000003000003003c959809\
    0000000142010101600000030090000003000003003ca00b0804875596566924caf0168080000003008000000784\
    000000014401c172b46240\
    0000000126010af0";

fn hevc_key_frame() -> Frame {
    Frame {
        payload_type: 99,
        ..frame(
            DataType::IFrame,
            Some(0),
            Some(40),
            &hex::decode(HEVC_KEY_FRAME).expect("hex"),
        )
    }
}

#[test]
fn hevc_with_codec_id_12() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let out = m.push(&hevc_key_frame(), 0);
    let t = tags(&out);
    assert_eq!(t.len(), 3);
    assert_eq!(&t[1].body[..2], &[0x1c, 0], "HEVC sequence header");
    assert_eq!(&t[2].body[..2], &[0x1c, 1], "HEVC key frame");
    assert_eq!(m.video_codec(), Some(VideoCodec::H265));
}

#[test]
fn hevc_with_enhanced_flv() {
    let mut m = Jt1078Muxer::new(HevcTagging::Enhanced);
    let out = m.push(&hevc_key_frame(), 0);
    let t = tags(&out);
    assert_eq!(&t[1].body[..5], b"\x90hvc1", "SequenceStart");
    assert_eq!(&t[2].body[..5], b"\x91hvc1", "CodedFrames, key frame");
    assert!(t[1].is_sequence_header());
    assert!(t[2].is_key_frame());
}

#[test]
fn hevc_metadata_has_the_picture_size() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let out = m.push(&hevc_key_frame(), 0);
    assert_eq!(
        tags(&out)[0].body,
        flv::on_metadata(&Metadata {
            width: Some(350),
            height: Some(286),
            framerate: Some(25.0),
            video_codec_id: Some(12),
            ..Metadata::default()
        })
    );
}

#[test]
fn a_wrong_payload_type_is_guessed_from_the_nal_units() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    let f = Frame {
        payload_type: 6,
        ..hevc_key_frame()
    };
    m.push(&f, 0);
    assert_eq!(m.video_codec(), Some(VideoCodec::H265));
}

#[test]
fn audio_metadata_joins_the_video_metadata() {
    let mut m = Jt1078Muxer::new(HevcTagging::CodecId12);
    m.set_audio_metadata(10, 8000, false);
    let out = m.push(
        &frame(DataType::IFrame, Some(0), None, &smallchi_i_frame()),
        0,
    );
    assert_eq!(
        tags(&out)[0].body,
        flv::on_metadata(&Metadata {
            width: Some(352),
            height: Some(288),
            video_codec_id: Some(7),
            audio_codec_id: Some(10),
            audio_sample_rate: Some(8000),
            stereo: Some(false),
            ..Metadata::default()
        })
    );
}
