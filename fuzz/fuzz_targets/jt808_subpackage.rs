//! Drives the JT/T 808 subpackage reassembler with arbitrary package headers, slices and
//! clock steps. Checks the memory bounds hold (never more messages in progress than the
//! limit, no body over the byte limit) and that nothing panics.
#![no_main]

use chrono::{Duration, TimeZone, Utc};
use iothub::codec::jt808::{Header, Limits, Package, Phone, Reassembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_packages: 16,
        max_bytes: 256,
        max_concurrent: 3,
        resend_after: Duration::seconds(5),
        timeout: Duration::seconds(20),
    };
    let mut r = Reassembler::new(limits);
    let mut now = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("valid time");
    let phone = Phone::from_bytes(&[0x01, 0x23, 0x45, 0x67, 0x89, 0x01]).expect("6 bytes");
    // Each step: msg id selector, total, index, serial, slice length, clock step.
    for step in data.chunks(6) {
        let [sel, total, index, serial, len, tick] = match step {
            [a, b, c, d, e, f] => [*a, *b, *c, *d, *e, *f],
            _ => break,
        };
        let header = Header {
            msg_id: 0x0800 | u16::from(sel & 0x03),
            version: None,
            phone,
            serial: u16::from(serial),
            package: Some(Package {
                total: u16::from(total % 20),
                index: u16::from(index % 22),
            }),
            version_flag_mismatch: false,
        };
        let slice = vec![sel; usize::from(len)];
        if let Ok(Some(done)) = r.push(&header, &slice, now) {
            assert!(
                done.body.len() <= limits.max_bytes,
                "body over the byte limit"
            );
            assert!(done.header.package.is_none());
        }
        assert!(
            r.in_progress() <= limits.max_concurrent,
            "too many in progress"
        );
        now += Duration::seconds(i64::from(tick % 8));
        for gap in r.poll(now) {
            assert!(!gap.missing.is_empty(), "a gap reports what is missing");
        }
    }
});
