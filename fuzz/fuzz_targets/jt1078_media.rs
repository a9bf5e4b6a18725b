//! Drives the JT/T 1078 media path as one ingest connection does: arbitrary bytes, cut into
//! reads at the places the input chooses (so several packets arrive in one read, or one
//! packet over many), through the decoder, the reassembler and the muxer into FLV tags, and
//! every tag through the GOP cache a stream keeps. Any panic is a finding, and so are broken
//! invariants:
//! - the decoder never leaves more than one packet plus the bytes it needs to tell the
//!   layouts apart in its buffer;
//! - no reassembled frame is larger than the bound;
//! - the muxer's timestamps never go backwards per track;
//! - the GOP cache stays within its bounds.
#![no_main]

use bytes::BytesMut;
use iothub::media::flv::HevcTagging;
use iothub::media::gop::GopCache;
use iothub::media::jt1078::{Decoder, Reassembler};
use iothub::media::mux::{Jt1078Muxer, MuxOut};
use iothub::media::TagKind;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 64 * 1024;
const GOP_TAGS: usize = 64;
const GOP_BYTES: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = if cuts & 0x80 != 0 {
        Decoder::new().datagrams()
    } else {
        Decoder::new()
    };
    let mut reassembler = Reassembler::new(MAX_FRAME);
    let mut muxer = Jt1078Muxer::new(if cuts & 0x40 != 0 {
        HevcTagging::Enhanced
    } else {
        HevcTagging::CodecId12
    });
    let mut gop = GopCache::new(GOP_TAGS, GOP_BYTES);
    let mut last = [0u32; 3];
    let mut buf = BytesMut::new();
    let step = usize::from(cuts & 0x3f) + 1;
    let mut arrival = 0u64;
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        arrival += 40;
        loop {
            let packet = match decoder.decode(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => continue,
            };
            let Ok(Some(frame)) = reassembler.push(packet) else {
                continue;
            };
            assert!(frame.body.len() <= MAX_FRAME, "frame over the bound");
            for out in muxer.push(&frame, arrival) {
                if let MuxOut::Tag(tag) = out {
                    let track = match tag.kind {
                        TagKind::Audio => 0,
                        TagKind::Video => 1,
                        TagKind::Script => 2,
                    };
                    if tag.kind != TagKind::Script {
                        assert!(tag.timestamp >= last[track], "timestamp went backwards");
                        last[track] = tag.timestamp;
                    }
                    gop.push(&tag);
                    assert!(gop.gop_len() <= GOP_TAGS, "GOP cache over its tag bound");
                }
            }
        }
        assert!(buf.len() <= 2 * (65_535 + 34) + 4, "decoder kept {} bytes", buf.len());
    }
});
