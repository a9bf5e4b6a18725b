//! Feeds arbitrary bytes to the JT/T 808 decoder the way a connection does (cut a frame,
//! decode, advance, repeat) under both check-code policies, and re-encodes every decoded
//! message. Any panic, a cutter that claims bytes it was not given, or a re-encoded frame
//! that does not decode to the same message is a finding.
#![no_main]

use iothub::codec::jt808::{self, Message};
use iothub::codec::CrcPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for policy in [CrcPolicy::Warn, CrcPolicy::Reject] {
        let mut at = 0;
        while at < data.len() {
            let raw = match jt808::next_frame(&data[at..]) {
                Ok(Some(raw)) => raw,
                Ok(None) | Err(_) => break,
            };
            assert!(raw.consumed > raw.skipped, "a frame consumes bytes");
            assert!(
                raw.consumed <= data.len() - at,
                "consumed beyond the buffer"
            );
            assert!(raw.consumed - raw.skipped <= jt808::MAX_FRAME_LEN);
            if let Ok(packet) = jt808::decode_frame(raw.inner, policy) {
                let encodable = !matches!(
                    packet.message,
                    Message::Unknown(_) | Message::Invalid { .. }
                );
                if encodable {
                    if let Ok(bytes) = jt808::encode(&packet.header, &packet.message) {
                        let again = jt808::decode(&bytes, CrcPolicy::Reject)
                            .expect("re-encoded frame decodes")
                            .expect("re-encoded frame is complete");
                        assert_eq!(again.packet.message, packet.message, "round trip");
                    }
                }
            }
            at += raw.consumed;
        }
    }
});
