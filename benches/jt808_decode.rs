//! Decode cost of the JT/T 808 frame a vehicle terminal sends most: the 0x0200 location
//! report with additional items (odometer, signal, satellites, vendor items), in the 2013
//! and 2019 header layouts. The gateway runs `decode` once per frame, so this is the codec's share of each report.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iothub::codec::jt808::decode;
use iothub::codec::CrcPolicy;

/// 2013 header, items 0x01/0x02 (the second escaped on the wire).
const LOCATION_2013: &str = "7e0200002612345678901200010000000100000002\
00ba7f0e07e4f11c0028003c00001810151010100104000000640202007d016c7e";
/// 2019 header (real device), items 0x01/0x30/0x31/0x61/0xe2.
const LOCATION_2019: &str = "7e0200404301000008606157542959170\
1bc00000000000c00030158ae9606c906960000000000\
6b2109171725590104000000013001193101\
0a610204dce21547423230312d47534d2d32313030312d312e312e31c57e";

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("jt808_decode");
    group.throughput(Throughput::Elements(1));
    for (name, hex) in [
        ("location_0x0200_2013", LOCATION_2013),
        ("location_0x0200_2019", LOCATION_2019),
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
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
