//! `iothubd replay-parked`, the real binary on a data directory holding an event the Kafka
//! drain parked: the operator's way to produce again what Kafka refused.

use std::process::Command;
use std::time::Duration;

use iothub::event::Topic;
use iothub::imei::Imei;
use iothub_actors::config::StorageConfig;
use iothub_actors::publish::spool::{Spool, SpoolEntry};
use iothub_actors::storage::Storage;

fn storage(dir: &std::path::Path) -> std::sync::Arc<Storage> {
    Storage::open(&StorageConfig {
        data_dir: dir.to_path_buf(),
        retention: Duration::ZERO,
        commit_interval: Duration::ZERO,
    })
    .expect("open storage")
}

fn entry(n: u64) -> SpoolEntry {
    SpoolEntry {
        topic: Topic::Alarm,
        imei: Imei::parse("864717003283581").unwrap(),
        json: format!(r#"{{"n":{n}}}"#).into_bytes(),
        accepted_ms: 1_700_000_000_000,
    }
}

/// A data directory whose spool parked entry 1 of 0, 1 and drained the rest.
fn data_dir_with_one_parked() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(storage(dir.path()), 100).unwrap();
    spool.append(&[&[entry(0), entry(1)]]).unwrap();
    let batch = spool.read(2).unwrap();
    spool
        .park_and_delete_through(&[batch.entries[1].seq], batch.last_seq.unwrap())
        .unwrap();
    dir
}

fn replay_parked(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_iothubd"))
        .arg("replay-parked")
        .env("IOTHUB_DATA_DIR", dir)
        .output()
        .expect("run iothubd replay-parked")
}

#[test]
fn replay_parked_succeeds() {
    let dir = data_dir_with_one_parked();
    let out = replay_parked(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replay_parked_puts_the_parked_event_back_in_the_spool() {
    let dir = data_dir_with_one_parked();
    replay_parked(dir.path());
    let spool = Spool::open(storage(dir.path()), 100).unwrap();
    let spooled: Vec<SpoolEntry> = spool
        .read(10)
        .unwrap()
        .entries
        .into_iter()
        .map(|s| s.entry)
        .collect();
    assert_eq!(spooled, vec![entry(1)]);
}

#[test]
fn replay_parked_refuses_a_data_directory_a_node_has_open() {
    let dir = data_dir_with_one_parked();
    let _node = storage(dir.path());
    let out = replay_parked(dir.path());
    assert!(!out.status.success());
}
