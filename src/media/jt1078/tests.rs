//! JT/T 1078 packet tests: the public vectors in `vectors.jsonl` (traccar, SmallChi/JT1078,
//! go-jt808 test data; each record names its source and licence) decoded field by field,
//! layout detection, resynchronisation, reassembly bounds, and Packetizer -> Decoder ->
//! Reassembler round trips split at every byte boundary.

use serde_json::Value;

use super::*;

const VECTORS: &str = include_str!("vectors.jsonl");

fn records() -> Vec<Value> {
    VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("vector json"))
        .collect()
}

fn record(id: &str) -> Value {
    records()
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("vector {id} missing"))
}

fn bytes_of(id: &str) -> Vec<u8> {
    hex::decode(record(id)["hex"].as_str().expect("hex")).expect("test hex")
}

fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(buf).expect("valid packets") {
        out.push(p);
    }
    out
}

fn sim(digits: &str) -> Phone {
    Phone::from_digits(digits, digits.len() > 12).expect("sim digits")
}

#[test]
fn every_complete_vector_decodes_to_its_derived_fields() {
    let mut checked = 0;
    for r in records() {
        let d = &r["derived"];
        let id = r["id"].as_str().unwrap_or("?");
        let Some(body_len) = d["body_length"].as_u64() else {
            continue;
        };
        let raw = hex::decode(r["hex"].as_str().expect("hex")).expect("hex");
        if raw.len() as u64 != d["header_length"].as_u64().unwrap_or(0) + body_len {
            // Truncated or concatenated inputs have their own tests below.
            continue;
        }
        let mut buf = BytesMut::from(&raw[..]);
        let mut decoder = Decoder::new().datagrams();
        let p = decoder
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{id}: {e}"))
            .unwrap_or_else(|| panic!("{id}: incomplete"));
        assert!(buf.is_empty(), "{id}: the packet uses every byte");
        assert_eq!(p.marker, d["m"] == 1, "{id}: marker");
        assert_eq!(u64::from(p.payload_type), d["pt"], "{id}: payload type");
        assert_eq!(u64::from(p.sequence), d["seq"], "{id}: sequence");
        assert_eq!(p.sim.digits(), d["sim_bcd"], "{id}: sim");
        assert_eq!(p.layout.sim_len() as u64, d["sim_length"], "{id}: layout");
        assert_eq!(u64::from(p.channel), d["channel"], "{id}: channel");
        assert_eq!(
            u64::from(p.data_type.nibble()),
            d["data_type"],
            "{id}: type"
        );
        assert_eq!(
            u64::from(p.subpackage.nibble()),
            d["subpackage"],
            "{id}: subpackage"
        );
        assert_eq!(
            p.timestamp,
            d["timestamp_ms"].as_u64(),
            "{id}: timestamp (all 8 bytes)"
        );
        assert_eq!(
            p.last_i_frame_interval.map(u64::from),
            d["last_i_frame_interval_ms"].as_u64(),
            "{id}: last I frame interval"
        );
        assert_eq!(
            p.last_frame_interval.map(u64::from),
            d["last_frame_interval_ms"].as_u64(),
            "{id}: last frame interval"
        );
        assert_eq!(p.body.len() as u64, body_len, "{id}: body length");
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} vectors checked");
}

#[test]
fn smallchi_audio_packet_has_no_intervals() {
    let mut buf = BytesMut::from(&bytes_of("jt1078-smallchi-deserializetest2")[..]);
    let p = Decoder::new()
        .datagrams()
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(p.data_type, DataType::Audio);
    assert_eq!(p.last_frame_interval, None);
    assert_eq!(p.timestamp, Some(1562085871501));
    assert_eq!(p.body.len(), 120);
}

#[test]
fn transparent_packet_has_no_timestamp() {
    let mut buf = BytesMut::from(&bytes_of("jt1078-go-decode-10")[..]);
    let p = Decoder::new()
        .datagrams()
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(p.data_type, DataType::Transparent);
    assert_eq!(p.timestamp, None);
    assert_eq!(p.body.len(), 1);
}

#[test]
fn ten_byte_sim_locks_the_2019_layout() {
    let mut buf = BytesMut::from(&bytes_of("jt1078-traccar-01")[..]);
    let mut d = Decoder::new();
    let p = d.decode(&mut buf).unwrap().expect("packet");
    assert_eq!(d.layout(), Some(Layout::Sim10));
    assert_eq!(p.sim.digits(), "00000866496077582164");
    assert_eq!(&p.body[..5], &[0, 0, 0, 1, 0x21], "body is Annex-B");
}

#[test]
fn six_byte_sim_locks_the_2016_layout() {
    let mut buf = BytesMut::from(&bytes_of("jt1078-traccar-02")[..]);
    let mut d = Decoder::new();
    d.decode(&mut buf).unwrap().expect("packet");
    assert_eq!(d.layout(), Some(Layout::Sim6));
}

#[test]
fn eight_bytes_wait_for_more() {
    let raw = bytes_of("jt1078-traccar-03");
    let mut buf = BytesMut::from(&raw[..]);
    let mut d = Decoder::new();
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), raw.len(), "nothing consumed");
}

#[test]
fn header_cut_short_waits_for_more() {
    let mut buf = BytesMut::from(&bytes_of("jt1078-go-decode-04")[..]);
    assert_eq!(Decoder::new().datagrams().decode(&mut buf), Ok(None));
}

#[test]
fn body_cut_short_waits_for_more() {
    let mut buf = BytesMut::from(&bytes_of("jt1078-go-decode-05")[..]);
    assert_eq!(Decoder::new().datagrams().decode(&mut buf), Ok(None));
}

#[test]
fn bytes_without_magic_are_skipped_and_counted() {
    let raw = bytes_of("jt1078-go-decode-02");
    let mut buf = BytesMut::from(&raw[..]);
    let mut d = Decoder::new();
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(d.skipped_bytes(), raw.len() as u64);
}

#[test]
fn a_trailing_magic_prefix_is_kept() {
    let mut buf = BytesMut::from(&b"xyz01c"[..]);
    let mut d = Decoder::new();
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], b"01c");
}

#[test]
fn two_packets_in_one_buffer_decode_in_order() {
    let raw = bytes_of("jt1078-go-decode-06");
    let mut buf = BytesMut::from(&raw[..]);
    let mut d = Decoder::new();
    let packets = decode_all(&mut d, &mut buf);
    assert_eq!(packets.len(), 2);
    assert!(buf.is_empty());
}

#[test]
fn decoded_packets_encode_to_the_same_bytes() {
    for id in [
        "jt1078-go-decode-10",
        "jt1078-go-decode-11",
        "jt1078-go-encode-12",
        "jt1078-traccar-01",
        "jt1078-traccar-02",
        "jt1078-smallchi-deserializetest2",
    ] {
        let raw = bytes_of(id);
        let mut buf = BytesMut::from(&raw[..]);
        let p = Decoder::new()
            .datagrams()
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        let mut out = BytesMut::new();
        p.encode(&mut out).unwrap();
        assert_eq!(hex::encode(&out), hex::encode(&raw), "{id}");
    }
}

#[test]
fn captured_i_frame_reassembles_from_eight_packets() {
    let mut d = Decoder::new().datagrams();
    let mut r = Reassembler::new(1 << 20);
    let mut frames = Vec::new();
    for i in 1..=8 {
        let mut buf = BytesMut::from(&bytes_of(&format!("jt1078-smallchi-capture1-{i}"))[..]);
        let p = d.decode(&mut buf).unwrap().expect("packet");
        if let Some(f) = r.push(p).unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 1, "one frame from eight packets");
    let f = &frames[0];
    assert_eq!(f.body.len(), 7 * 950 + 932);
    assert_eq!(f.data_type, DataType::IFrame);
    assert_eq!(&f.body[..5], &[0, 0, 0, 1, 0x67], "starts with the SPS");
}

#[test]
fn a_locked_decoder_reports_a_bad_data_type_and_resumes() {
    let good = bytes_of("jt1078-go-encode-12");
    let mut bad = good.clone();
    bad[15] = 0x70;
    let mut d = Decoder::with_layout(Layout::Sim6);
    let mut buf = BytesMut::from(&good[..]);
    d.decode(&mut buf)
        .unwrap()
        .expect("first packet locks the layout");
    buf.extend_from_slice(&bad);
    buf.extend_from_slice(&good);
    assert_eq!(d.decode(&mut buf), Err(Jt1078Error::BadDataType(7)));
    assert!(d.decode(&mut buf).unwrap().is_some(), "next packet found");
}

#[test]
fn a_bad_subpackage_flag_is_an_error() {
    let good = bytes_of("jt1078-go-encode-12");
    let mut bad = good.clone();
    bad[15] = 0x05;
    let mut d = Decoder::new().datagrams();
    let mut buf = BytesMut::from(&good[..]);
    d.decode(&mut buf)
        .unwrap()
        .expect("first packet locks the layout");
    buf.extend_from_slice(&bad);
    assert_eq!(d.decode(&mut buf), Err(Jt1078Error::BadSubpackage(5)));
}

#[test]
fn a_bad_version_is_an_error() {
    let mut raw = bytes_of("jt1078-go-encode-12");
    raw[4] = 0x41;
    let mut d = Decoder::with_layout(Layout::Sim6);
    let mut buf = BytesMut::from(&raw[..]);
    assert_eq!(d.decode(&mut buf), Err(Jt1078Error::BadVersion(1)));
}

#[test]
fn bodies_over_950_bytes_are_accepted() {
    let mut p = Packetizer::new(Layout::Sim6, sim("13800138000"), 1);
    let frame = vec![0x55u8; 3000];
    let packets = p.video(&frame, DataType::IFrame, 98, 0, 0, 40, 4000);
    assert_eq!(packets.len(), 1);
    let mut buf = BytesMut::from(&packets[0][..]);
    let got = Decoder::new()
        .datagrams()
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(got.body.len(), 3000);
}

#[test]
fn packetizer_splits_and_marks_the_last_packet() {
    let mut p = Packetizer::new(Layout::Sim6, sim("13800138000"), 2);
    let packets = p.video(&[7u8; 25], DataType::PFrame, 98, 40, 40, 40, 10);
    let mut d = Decoder::new();
    let mut buf = BytesMut::new();
    for pk in &packets {
        buf.extend_from_slice(pk);
    }
    let got = decode_all(&mut d, &mut buf);
    let flags: Vec<_> = got.iter().map(|p| (p.subpackage, p.marker)).collect();
    assert_eq!(
        flags,
        [
            (Subpackage::First, false),
            (Subpackage::Middle, false),
            (Subpackage::Last, true)
        ]
    );
    let seqs: Vec<_> = got.iter().map(|p| p.sequence).collect();
    assert_eq!(seqs, [0, 1, 2]);
}

#[test]
fn packetizer_sequence_wraps() {
    let mut p = Packetizer::new(Layout::Sim6, sim("1"), 1);
    p.sequence = u16::MAX;
    let a = p.audio(&[1, 2], 6, 0);
    let b = p.audio(&[1, 2], 6, 0);
    assert_eq!(&a[6..8], &[0xff, 0xff]);
    assert_eq!(&b[6..8], &[0, 0]);
}

#[test]
fn talk_audio_is_atomic_with_marker_like_the_reference_encoder() {
    let mut p = Packetizer::new(Layout::Sim6, sim("13800138000"), 1);
    let pkt = p.audio(&[0xd5; 320], 6, 1000);
    assert_eq!(&pkt[4..6], &[0x81, 0x86], "V=2 CC=1, M=1 PT=6");
    assert_eq!(pkt[15], 0x30, "audio, atomic");
    assert_eq!(pkt.len(), 26 + 320);
}

#[test]
fn hisilicon_prefix_counts_16_bit_words() {
    let out = hisilicon_prefixed(&[0u8; 320]);
    assert_eq!(&out[..4], &[0x00, 0x01, 0xa0, 0x00]);
    assert_eq!(out.len(), 324);
}

#[test]
fn a_6_byte_sim_is_widened_for_the_2019_layout() {
    let wide = sim_for_layout(Layout::Sim10, sim("13800138000"));
    assert_eq!(wide.digits(), "00000000013800138000");
}

fn packet(sub: Subpackage, class: DataType, body: &[u8]) -> Packet {
    Packet {
        layout: Layout::Sim6,
        marker: matches!(sub, Subpackage::Atomic | Subpackage::Last),
        payload_type: 98,
        sequence: 0,
        sim: sim("1"),
        channel: 1,
        data_type: class,
        subpackage: sub,
        timestamp: Some(0),
        last_i_frame_interval: Some(0),
        last_frame_interval: Some(40),
        body: Bytes::copy_from_slice(body),
    }
}

#[test]
fn a_new_first_drops_the_open_frame() {
    let mut r = Reassembler::new(100);
    assert_eq!(
        r.push(packet(Subpackage::First, DataType::IFrame, b"ab")),
        Ok(None)
    );
    assert_eq!(
        r.push(packet(Subpackage::First, DataType::IFrame, b"cd")),
        Ok(None)
    );
    let f = r
        .push(packet(Subpackage::Last, DataType::IFrame, b"ef"))
        .unwrap()
        .unwrap();
    assert_eq!(&f.body[..], b"cdef");
    assert_eq!(r.dropped_frames(), 1);
}

#[test]
fn a_middle_without_first_is_an_error() {
    let mut r = Reassembler::new(100);
    let e = r.push(packet(Subpackage::Middle, DataType::PFrame, b"ab"));
    assert!(matches!(e, Err(ReassemblyError::MissingFirst { .. })));
}

#[test]
fn a_frame_over_the_bound_is_dropped() {
    let mut r = Reassembler::new(5);
    r.push(packet(Subpackage::First, DataType::PFrame, b"abc"))
        .unwrap();
    let e = r.push(packet(Subpackage::Middle, DataType::PFrame, b"def"));
    assert!(matches!(e, Err(ReassemblyError::FrameTooLarge { .. })));
    assert_eq!(r.open_frames(), 0, "nothing kept");
    let e = r.push(packet(Subpackage::Last, DataType::PFrame, b"g"));
    assert!(
        matches!(e, Err(ReassemblyError::MissingFirst { .. })),
        "the rest of the dropped frame is refused"
    );
}

#[test]
fn audio_packets_between_video_subpackages_do_not_disturb_them() {
    let mut r = Reassembler::new(100);
    r.push(packet(Subpackage::First, DataType::IFrame, b"v1"))
        .unwrap();
    let a = r
        .push(packet(Subpackage::Atomic, DataType::Audio, b"a"))
        .unwrap()
        .unwrap();
    assert_eq!(a.data_type, DataType::Audio);
    let v = r
        .push(packet(Subpackage::Last, DataType::IFrame, b"v2"))
        .unwrap()
        .unwrap();
    assert_eq!(&v.body[..], b"v1v2");
}

/// Packets of three frames (a subpackaged I frame, audio, an atomic P frame) with garbage
/// before and between them.
fn stream(layout: Layout) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut p = Packetizer::new(layout, sim("13912345678"), 3);
    let iframe: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let pframe = vec![0x41u8; 300];
    let audio = vec![0xd5u8; 160];
    let mut out = b"\x00garbage01c".to_vec();
    for pk in p.video(&iframe, DataType::IFrame, 98, 1000, 0, 40, 950) {
        out.extend_from_slice(&pk);
    }
    out.extend_from_slice(b"junk");
    out.extend_from_slice(&p.audio(&audio, 6, 1020));
    out.extend_from_slice(&p.video(&pframe, DataType::PFrame, 98, 1040, 40, 40, 950)[0]);
    (out, vec![iframe, audio, pframe])
}

fn frames_of(layout: Layout, chunks: &[&[u8]]) -> (Vec<Frame>, Decoder) {
    let mut d = Decoder::new();
    let mut r = Reassembler::new(1 << 16);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        for p in decode_all(&mut d, &mut buf) {
            assert_eq!(p.layout, layout);
            if let Some(f) = r.push(p).expect("reassembles") {
                frames.push(f);
            }
        }
    }
    (frames, d)
}

#[test]
fn round_trip_in_one_buffer_for_both_layouts() {
    for layout in [Layout::Sim6, Layout::Sim10] {
        let (bytes, want) = stream(layout);
        let (frames, d) = frames_of(layout, &[&bytes]);
        let bodies: Vec<Vec<u8>> = frames.iter().map(|f| f.body.to_vec()).collect();
        assert_eq!(bodies, want, "{layout:?}");
        assert_eq!(d.layout(), Some(layout));
        assert_eq!(d.skipped_bytes(), 11 + 4, "{layout:?}: garbage counted");
        assert_eq!(frames[2].timestamp, Some(1040));
        assert_eq!(
            frames[0].sim.digits().trim_start_matches('0'),
            "13912345678"
        );
    }
}

#[test]
fn round_trip_split_at_every_byte_boundary() {
    for layout in [Layout::Sim6, Layout::Sim10] {
        let (bytes, want) = stream(layout);
        for cut in 0..=bytes.len() {
            let (frames, _) = frames_of(layout, &[&bytes[..cut], &bytes[cut..]]);
            let bodies: Vec<Vec<u8>> = frames.iter().map(|f| f.body.to_vec()).collect();
            assert_eq!(bodies, want, "{layout:?} cut at {cut}");
        }
    }
}

#[test]
fn round_trip_one_byte_at_a_time() {
    for layout in [Layout::Sim6, Layout::Sim10] {
        let (bytes, want) = stream(layout);
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let (frames, _) = frames_of(layout, &chunks);
        assert_eq!(frames.len(), want.len(), "{layout:?}");
    }
}

#[test]
fn a_hint_does_not_override_what_the_bytes_say() {
    let raw = bytes_of("jt1078-traccar-02");
    let mut d = Decoder::with_layout(Layout::Sim10);
    let mut buf = BytesMut::from(&raw[..]);
    d.decode(&mut buf).unwrap().expect("packet");
    assert_eq!(d.layout(), Some(Layout::Sim6));
}

#[test]
fn arbitrary_bytes_never_panic_and_stay_bounded() {
    use proptest::prelude::*;
    proptest!(|(data in proptest::collection::vec(any::<u8>(), 0..400))| {
        let mut d = Decoder::new();
        let mut buf = BytesMut::from(&b"01cd\x81"[..]);
        buf.extend_from_slice(&data);
        for _ in 0..50 {
            if let Ok(None) = d.decode(&mut buf) {
                break;
            }
        }
        prop_assert!(buf.len() <= 5 + data.len());
    });
}

#[test]
fn a_stream_waits_while_the_other_layout_could_be_longer() {
    // In the 10-byte layout this packet's header would run past its end, so on a stream the
    // decoder cannot yet tell it from the start of a longer 2019 packet.
    let raw = bytes_of("jt1078-go-encode-12");
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&raw[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(&raw);
    assert!(
        d.decode(&mut buf).unwrap().is_some(),
        "the next magic decides"
    );
    assert_eq!(d.layout(), Some(Layout::Sim6));
}

#[test]
fn a_datagram_decoder_trusts_the_datagram_end() {
    let raw = bytes_of("jt1078-go-encode-12");
    let mut d = Decoder::new().datagrams();
    let mut buf = BytesMut::from(&raw[..]);
    assert!(d.decode(&mut buf).unwrap().is_some());
}

#[test]
fn a_2019_audio_packet_that_reads_as_2016_video_is_told_apart_by_payload_type() {
    // SIM byte 7 of this 20-digit number is 0x13: "P frame, middle" to a 2016 reading, whose
    // length field then sits exactly where the 2019 audio length is.
    let mut p = Packetizer::new(Layout::Sim10, sim("13800138000"), 1);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&p.audio(&[0xd5; 320], 6, 1000));
    buf.extend_from_slice(&p.audio(&[0xd5; 320], 6, 1040));
    let mut d = Decoder::new();
    let first = d.decode(&mut buf).unwrap().expect("packet");
    assert_eq!(d.layout(), Some(Layout::Sim10));
    assert_eq!(first.data_type, DataType::Audio);
}

#[test]
fn any_frame_survives_packetizing_and_reassembly() {
    use proptest::prelude::*;
    proptest!(|(
        frame in proptest::collection::vec(any::<u8>(), 0..3000),
        max_body in 1usize..1200,
        wide in any::<bool>(),
        audio_first in any::<bool>(),
        digits in "[0-9]{11}",
    )| {
        let layout = if wide { Layout::Sim10 } else { Layout::Sim6 };
        let mut p = Packetizer::new(layout, sim(&digits), 5);
        let mut buf = BytesMut::new();
        if audio_first {
            buf.extend_from_slice(&p.audio(&[0xd5; 80], 6, 7));
        }
        for pk in p.video(&frame, DataType::PFrame, 98, 1234, 80, 40, max_body) {
            buf.extend_from_slice(&pk);
        }
        // A second frame lets a stream decoder settle the layout of the first.
        buf.extend_from_slice(&p.audio(&[0xd5; 80], 6, 1240));
        let mut d = Decoder::new();
        let mut r = Reassembler::new(1 << 16);
        let mut video = Vec::new();
        while let Some(pk) = d.decode(&mut buf).expect("valid packets") {
            if let Some(f) = r.push(pk).expect("reassembles") {
                if f.data_type == DataType::PFrame {
                    video.push(f.body.to_vec());
                }
            }
        }
        prop_assert_eq!(d.layout(), Some(layout));
        prop_assert_eq!(video, vec![frame]);
    });
}
