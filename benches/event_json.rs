//! Serialization cost of the record every location frame produces: a `/pushgps` item, written
//! once when the event is published and then stored, produced to Kafka and pushed byte for
//! byte. `direct` is `Event::to_json` (the record's own writer); `serde` is the derived
//! `Serialize` through serde_json, which gives the same bytes. The record is the one the
//! GT06 channel makes of a real login and 0x22 location frame.

use std::hint::black_box;
use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iothub::channel::gt06::{Gt06Channel, Gt06ChannelConfig};
use iothub::channel::{Action, Channel};
use iothub::codec::gt06::decode;
use iothub::codec::CrcPolicy;
use iothub::event::{Event, Topic};

/// 0x01 login with type id and time zone (22 bytes).
const LOGIN: &str = "787811010864717003664467100f190a0002c6d20d0a";
/// 0x22 GPS+LBS with ACC/upload mode/re-upload (39 bytes).
const LOCATION_22: &str =
    "787822221607160f1000cf0225e03f0bd723182c149701cc0075c300933301000002a5f0860d0a";

/// The events the channel publishes for `hex`.
fn published(channel: &mut Gt06Channel, hex: &str) -> Vec<Event> {
    let frame = match decode(&hex::decode(hex).expect("bench hex"), CrcPolicy::Reject) {
        Ok(Some(d)) => d.frame,
        other => panic!("{hex} does not decode: {other:?}"),
    };
    channel
        .handle_frame(frame, Utc::now())
        .into_iter()
        .filter_map(|a| match a {
            Action::Publish(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn gt06_fix() -> Event {
    let config = Gt06ChannelConfig {
        read_timeout: Duration::from_secs(300),
        login_timeout: Duration::from_secs(30),
    };
    let mut channel = Gt06Channel::new(config, Utc::now());
    published(&mut channel, LOGIN);
    let mut events = published(&mut channel, LOCATION_22);
    assert!(
        events.len() == 1 && events[0].topic == Topic::Gps,
        "the location frame publishes one GPS record"
    );
    events.remove(0)
}

fn bench_gps_json(c: &mut Criterion) {
    let event = gt06_fix();
    assert_eq!(
        event.to_json(),
        serde_json::to_vec(&event.record).expect("serde"),
        "both paths give the same bytes"
    );
    let mut group = c.benchmark_group("gps_record_json");
    group.throughput(Throughput::Elements(1));
    group.bench_function("direct", |b| b.iter(|| black_box(&event).to_json()));
    group.bench_function("serde", |b| {
        b.iter(|| {
            let mut json = Vec::with_capacity(512);
            serde_json::to_writer(&mut json, &black_box(&event).record).expect("serde");
            json
        })
    });
    group.finish();
}

criterion_group!(benches, bench_gps_json);
criterion_main!(benches);
