//! Decode cost of the GT06 frames a tracker sends most: the 0x22 location report (every
//! few seconds per device), the older 0x12 report, and the login. The gateway's read loop
//! runs `decode` once per frame, so this is the codec's share of each device message.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iothub::codec::gt06::{decode, encode_ack};
use iothub::codec::CrcPolicy;

/// 0x22 GPS+LBS with ACC/upload mode/re-upload (39 bytes).
const LOCATION_22: &str =
    "787822221607160f1000cf0225e03f0bd723182c149701cc0075c300933301000002a5f0860d0a";
/// 0x12 GPS+LBS (36 bytes).
const LOCATION_12: &str =
    "78781f1210020e14061dcc0476fcd0003e3faf3e14b20000000000000000044ef6740d0a";
/// 0x01 login with type id and time zone (22 bytes).
const LOGIN: &str = "787811010864717003664467100f190a0002c6d20d0a";

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("gt06_decode");
    group.throughput(Throughput::Elements(1));
    for (name, hex) in [
        ("location_0x22", LOCATION_22),
        ("location_0x12", LOCATION_12),
        ("login_0x01", LOGIN),
    ] {
        let frame = hex::decode(hex).expect("bench hex");
        assert!(
            matches!(decode(&frame, CrcPolicy::Reject), Ok(Some(_))),
            "{name} decodes"
        );
        group.bench_function(name, |b| {
            b.iter(|| decode(black_box(&frame), CrcPolicy::Reject))
        });
    }
    group.bench_function("ack_encode", |b| {
        b.iter(|| encode_ack(black_box(0x13), black_box(442)))
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
