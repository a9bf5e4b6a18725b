//! Annex-B tests: NAL splitting with both start code lengths, NAL classification, and
//! picture sizes from real SPS units (a JT/T 1078 capture from SmallChi/JT1078 and the
//! go-jt808 test data, and streams made by FFmpeg's libx264 and libx265), each compared with
//! what ffprobe reports for the same stream.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex")
}

/// SmallChi/JT1078 `doc/video/jt1078_1.txt`: Main profile, ffprobe 352x288.
const SPS_SMALLCHI: &str = "674d001495a8582590";
/// go-jt808 `testdata/data.txt`: High profile, ffprobe 720x576.
const SPS_GO: &str = "6764001eacb2016824dff802000168800001f480005dc0078b172400";
/// libx264 baseline 352x288 (`testsrc`, yuv420p).
const SPS_X264_BASELINE: &str = "6742c00cd9016096c044000003000400000300783c50a920";
/// libx264 High 1278x718: frame cropping on both axes.
const SPS_X264_HIGH_CROPPED: &str = "6764001facd9405005beab0110000003001000000301e0f1831960";
/// libx265 Main 350x286: conformance window on both axes.
const VPS_X265: &str = "40010c01ffff01600000030090000003000003003c959809";
const SPS_X265: &str =
    "42010101600000030090000003000003003ca00b0804875596566924caf0168080000003008000000784";
const PPS_X265: &str = "4401c172b46240";

#[test]
fn splits_on_three_and_four_byte_start_codes() {
    let data = [
        0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
    ];
    let nals: Vec<&[u8]> = nal_units(&data).collect();
    assert_eq!(nals, [&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]);
}

#[test]
fn bytes_before_the_first_start_code_are_not_a_nal() {
    let data = [9, 9, 0, 0, 1, 0x41, 7];
    assert_eq!(nal_units(&data).count(), 1);
}

#[test]
fn no_start_code_means_no_nal() {
    assert_eq!(nal_units(&[0x65, 1, 2, 3]).count(), 0);
}

#[test]
fn empty_nals_between_start_codes_are_skipped() {
    let data = [0, 0, 1, 0, 0, 1, 0x41, 1];
    assert_eq!(nal_units(&data).count(), 1);
}

#[test]
fn payload_types_name_the_codecs() {
    assert_eq!(VideoCodec::from_payload_type(98), Some(VideoCodec::H264));
    assert_eq!(VideoCodec::from_payload_type(99), Some(VideoCodec::H265));
    assert_eq!(VideoCodec::from_payload_type(6), None);
}

#[test]
fn h265_is_recognised_from_its_parameter_sets() {
    let mut stream = vec![0, 0, 0, 1];
    stream.extend(unhex(VPS_X265));
    assert_eq!(VideoCodec::guess(&stream), VideoCodec::H265);
    let mut stream = vec![0, 0, 0, 1];
    stream.extend(unhex(SPS_GO));
    assert_eq!(VideoCodec::guess(&stream), VideoCodec::H264);
}

#[test]
fn nal_classes() {
    assert!(is_parameter_set(VideoCodec::H264, &unhex(SPS_GO)));
    assert!(is_parameter_set(VideoCodec::H264, &[0x68, 0xeb]));
    assert!(!is_parameter_set(VideoCodec::H264, &[0x65]));
    assert!(is_key_frame_nal(VideoCodec::H264, &[0x65, 0x88]));
    assert!(!is_key_frame_nal(VideoCodec::H264, &[0x41, 0x9a]));
    assert!(is_parameter_set(VideoCodec::H265, &unhex(VPS_X265)));
    assert!(is_parameter_set(VideoCodec::H265, &unhex(PPS_X265)));
    assert!(
        is_key_frame_nal(VideoCodec::H265, &[0x26, 0x01]),
        "IDR_W_RADL"
    );
    assert!(is_key_frame_nal(VideoCodec::H265, &[0x2a, 0x01]), "CRA");
    assert!(
        !is_key_frame_nal(VideoCodec::H265, &[0x02, 0x01]),
        "TRAIL_R"
    );
}

#[test]
fn emulation_prevention_bytes_are_removed() {
    assert_eq!(
        rbsp(&[1, 0, 0, 3, 1, 0, 0, 3, 0, 3]),
        [1, 0, 0, 1, 0, 0, 0, 3]
    );
}

#[test]
fn smallchi_capture_sps_is_352x288() {
    let sps = unhex(SPS_SMALLCHI);
    assert_eq!(h264_picture_size(&sps), Some((352, 288)));
}

#[test]
fn go_capture_sps_is_720x576() {
    assert_eq!(h264_picture_size(&unhex(SPS_GO)), Some((720, 576)));
}

#[test]
fn x264_baseline_sps_is_352x288() {
    assert_eq!(
        h264_picture_size(&unhex(SPS_X264_BASELINE)),
        Some((352, 288))
    );
}

#[test]
fn x264_high_sps_applies_cropping() {
    assert_eq!(
        h264_picture_size(&unhex(SPS_X264_HIGH_CROPPED)),
        Some((1278, 718))
    );
}

#[test]
fn x264_high_sps_fields() {
    let s = parse_h264_sps(&unhex(SPS_X264_HIGH_CROPPED)).expect("sps");
    assert_eq!((s.profile_idc, s.level_idc), (100, 31));
    assert_eq!(s.chroma_format_idc, 1);
}

#[test]
fn x265_sps_applies_the_conformance_window() {
    assert_eq!(h265_picture_size(&unhex(SPS_X265)), Some((350, 286)));
}

#[test]
fn x265_sps_profile_tier_level() {
    let s = parse_h265_sps(&unhex(SPS_X265)).expect("sps");
    assert_eq!(s.general_profile_idc, 1, "Main");
    assert!(!s.general_tier_flag, "Main tier");
    assert_eq!(s.general_level_idc, 60, "level 2");
    assert_eq!(s.general_profile_compatibility_flags, 0x6000_0000);
    assert_eq!(s.general_constraint_indicator_flags, 0x9000_0000_0000);
}

#[test]
fn a_pps_is_not_an_sps() {
    assert_eq!(h264_picture_size(&[0x68, 0xeb, 0xe3]), None);
    assert_eq!(h265_picture_size(&unhex(PPS_X265)), None);
}

#[test]
fn truncated_sps_is_none_not_a_panic() {
    // The cropping fields end within the first 10 bytes; VUI follows.
    let sps = unhex(SPS_X264_HIGH_CROPPED);
    for n in 0..9 {
        assert_eq!(h264_picture_size(&sps[..n]), None, "cut at {n}");
    }
    let sps = unhex(SPS_X265);
    for n in 0..20 {
        assert_eq!(h265_picture_size(&sps[..n]), None, "cut at {n}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    use proptest::prelude::*;
    proptest!(|(data in proptest::collection::vec(any::<u8>(), 0..200))| {
        let _ = nal_units(&data).count();
        let mut sps = vec![0x67];
        sps.extend_from_slice(&data);
        let _ = h264_picture_size(&sps);
        let mut sps = vec![0x42, 0x01];
        sps.extend_from_slice(&data);
        let _ = h265_picture_size(&sps);
    });
}
