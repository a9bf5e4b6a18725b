//! Feeds arbitrary bytes to the GT06 decoder the way a connection does (decode, advance,
//! repeat) under both CRC policies, and re-encodes every decoded frame. Any panic, or a
//! decoder that claims bytes it was not given, is a finding.
#![no_main]

use iothub::codec::gt06;
use iothub::codec::CrcPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for policy in [CrcPolicy::Warn, CrcPolicy::Reject] {
        let mut at = 0;
        while at < data.len() {
            match gt06::decode(&data[at..], policy) {
                Ok(Some(d)) => {
                    assert!(d.consumed > 0, "a frame consumes bytes");
                    assert!(d.consumed <= data.len() - at, "consumed beyond the buffer");
                    assert!(d.skipped < d.consumed, "skipped counts only garbage");
                    assert!(d.consumed - d.skipped <= gt06::MAX_FRAME_LEN);
                    let bytes = gt06::encode_to_vec(&d.frame);
                    // The re-encoded frame must decode again without panicking.
                    let _ = gt06::decode(&bytes, policy);
                    at += d.consumed;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
