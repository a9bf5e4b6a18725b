//! GOP cache tests: the order a new viewer gets, a key frame restarting the GOP, both bounds,
//! audio-only streams, and the metadata form without `@setDataFrame`.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::media::flv::{aac_frame, aac_sequence_header, on_metadata, Metadata};

fn tag(kind: TagKind, timestamp: u32, body: &[u8]) -> FlvTag {
    FlvTag {
        kind,
        timestamp,
        body: Bytes::copy_from_slice(body),
    }
}

fn metadata() -> FlvTag {
    FlvTag {
        kind: TagKind::Script,
        timestamp: 0,
        body: on_metadata(&Metadata {
            width: Some(352),
            ..Metadata::default()
        }),
    }
}

fn avc_header() -> FlvTag {
    tag(TagKind::Video, 0, &[0x17, 0, 0, 0, 0, 1, 0x42])
}

fn key(ts: u32) -> FlvTag {
    tag(TagKind::Video, ts, &[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65])
}

fn inter(ts: u32) -> FlvTag {
    tag(TagKind::Video, ts, &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41])
}

fn aac(ts: u32) -> FlvTag {
    FlvTag {
        kind: TagKind::Audio,
        timestamp: ts,
        body: aac_frame(&[0x21, 0x10]),
    }
}

fn timestamps(tags: &[FlvTag]) -> Vec<u32> {
    tags.iter().map(|t| t.timestamp).collect()
}

#[test]
fn a_viewer_gets_metadata_headers_then_the_gop() {
    let mut c = GopCache::new(100, 1 << 20);
    let audio_header = FlvTag {
        kind: TagKind::Audio,
        timestamp: 0,
        body: aac_sequence_header(&[0x12, 0x10]),
    };
    for t in [
        metadata(),
        avc_header(),
        audio_header.clone(),
        key(0),
        aac(10),
        inter(40),
    ] {
        c.push(&t);
    }
    assert_eq!(
        c.start_tags(),
        [
            metadata(),
            avc_header(),
            audio_header,
            key(0),
            aac(10),
            inter(40)
        ]
    );
}

#[test]
fn a_key_frame_starts_a_new_gop() {
    let mut c = GopCache::new(100, 1 << 20);
    for t in [avc_header(), key(0), inter(40), key(80), inter(120)] {
        c.push(&t);
    }
    assert_eq!(timestamps(&c.start_tags()), [0, 80, 120]);
}

#[test]
fn frames_before_the_first_key_frame_are_not_cached() {
    let mut c = GopCache::new(100, 1 << 20);
    c.push(&inter(0));
    c.push(&aac(10));
    assert!(c.start_tags().is_empty());
    assert!(c.has_video());
    assert!(c.has_audio());
}

#[test]
fn too_many_tags_drop_the_gop_until_the_next_key_frame() {
    let mut c = GopCache::new(3, 1 << 20);
    for t in [key(0), inter(40), inter(80), inter(120), inter(160)] {
        c.push(&t);
    }
    assert_eq!(c.gop_len(), 0, "overflowed GOP dropped");
    c.push(&key(200));
    assert_eq!(timestamps(&c.start_tags()), [200]);
}

#[test]
fn too_many_bytes_drop_the_gop() {
    let mut c = GopCache::new(100, 25);
    c.push(&key(0));
    c.push(&inter(40));
    assert_eq!(c.gop_len(), 2);
    c.push(&inter(80));
    assert_eq!(c.gop_len(), 0);
    assert_eq!(c.bytes(), 0);
}

#[test]
fn audio_only_streams_keep_the_latest_tags() {
    let mut c = GopCache::new(3, 1 << 20);
    for ts in [0, 20, 40, 60, 80] {
        c.push(&aac(ts));
    }
    assert_eq!(timestamps(&c.start_tags()), [40, 60, 80]);
    assert!(!c.has_video());
}

#[test]
fn video_arriving_after_audio_starts_from_its_key_frame() {
    let mut c = GopCache::new(10, 1 << 20);
    c.push(&aac(0));
    c.push(&aac(20));
    c.push(&key(40));
    c.push(&aac(60));
    assert_eq!(timestamps(&c.start_tags()), [40, 60]);
}

#[test]
fn metadata_is_kept_without_set_data_frame() {
    let mut body = BytesMut::from(&b"\x02\x00\x0d@setDataFrame"[..]);
    body.extend_from_slice(&metadata().body);
    let mut c = GopCache::new(10, 1 << 20);
    c.push(&FlvTag {
        kind: TagKind::Script,
        timestamp: 0,
        body: body.freeze(),
    });
    assert_eq!(c.start_tags(), [metadata()]);
}

#[test]
fn other_script_tags_are_not_metadata() {
    let mut c = GopCache::new(10, 1 << 20);
    c.push(&tag(TagKind::Script, 0, b"\x02\x00\x0a|RtmpSampl"));
    assert!(c.start_tags().is_empty());
}

#[test]
fn the_latest_sequence_header_wins() {
    let mut c = GopCache::new(10, 1 << 20);
    c.push(&avc_header());
    let newer = tag(TagKind::Video, 500, &[0x17, 0, 0, 0, 0, 1, 0x64]);
    c.push(&newer);
    assert_eq!(c.start_tags(), [newer]);
}

#[test]
fn bytes_count_everything_held() {
    let mut c = GopCache::new(10, 1 << 20);
    c.push(&avc_header());
    c.push(&key(0));
    assert_eq!(c.bytes(), 7 + 10);
}
