//! The operator's side of the dead-letter store (`iothubd dead-letters list|replay`): records
//! the customer's endpoint refused for good, set aside by the push loops (see [`super`]).
//!
//! Both commands open the node's database, which only one process may hold: they run while
//! iothubd is stopped. Replay queues the records again the way new events are queued, so the
//! next start pushes them: onto the end of their topics' logs (embedded mode), or into the
//! Kafka spool, which the next start drains to Kafka before anything else (Kafka mode).

use std::sync::Arc;

use crate::config::Config;
use crate::publish::spool::{Spool, SpoolEntry};
use crate::storage::{DeadLetter, Storage};

/// Dead letters moved per transaction by a replay.
const REPLAY_CHUNK: usize = 1000;

/// Up to `max` dead letters, oldest first.
pub fn list(storage: &Storage, max: usize) -> anyhow::Result<Vec<DeadLetter>> {
    Ok(storage.dead_letters(max)?)
}

/// Queues every dead letter again (see the module docs); returns how many.
pub fn replay(config: &Config, storage: &Arc<Storage>) -> anyhow::Result<u64> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut replayed = 0u64;
    if !config.kafka.enable {
        loop {
            let moved = storage.replay_dead_letters_to_log(REPLAY_CHUNK, now_ms)?;
            if moved == 0 {
                return Ok(replayed);
            }
            replayed += moved as u64;
        }
    }
    let mut spool = Spool::open(storage.clone(), config.kafka.spool_max_events)?;
    loop {
        let letters = storage.dead_letters(REPLAY_CHUNK)?;
        if letters.is_empty() {
            return Ok(replayed);
        }
        let entries: Vec<SpoolEntry> = letters
            .iter()
            .map(|d| SpoolEntry {
                topic: d.topic,
                imei: d.imei,
                json: d.json.clone(),
                accepted_ms: d.enqueued_ms,
            })
            .collect();
        if spool.append(&[&entries])?.first() != Some(&true) {
            anyhow::bail!(
                "the Kafka spool is full (kafka.spool_max_events); {replayed} dead letters \
                 replayed, the rest stay; start iothubd to drain the spool and replay again"
            );
        }
        let seqs: Vec<u64> = letters.iter().map(|d| d.seq).collect();
        storage.delete_dead_letters(&seqs)?;
        replayed += seqs.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iothub::event::Topic;
    use iothub::imei::Imei;

    use super::*;

    fn setup(kafka: bool) -> (tempfile::TempDir, Config, Arc<Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml_str("[api]\ntoken = \"t\"\n", &|_| None).unwrap();
        config.storage.data_dir = dir.path().to_path_buf();
        config.storage.retention = Duration::from_secs(3600);
        config.kafka.enable = kafka;
        let storage = Storage::open(&config.storage).unwrap();
        let imei = Imei::parse("864717003283581").unwrap();
        storage
            .add_dead_letters(
                Topic::Gps,
                &[(imei, 1, br#"{"n":1}"#)],
                "HTTP status 413",
                10,
            )
            .unwrap();
        (dir, config, storage)
    }

    #[test]
    fn a_replay_in_kafka_mode_puts_the_dead_letters_in_the_spool() {
        let (_dir, config, storage) = setup(true);
        assert_eq!(replay(&config, &storage).unwrap(), 1);
        let spool = Spool::open(storage.clone(), 10).unwrap();
        assert_eq!(spool.len(), 1);
    }

    #[test]
    fn a_replay_in_kafka_mode_empties_the_dead_letter_store() {
        let (_dir, config, storage) = setup(true);
        replay(&config, &storage).unwrap();
        assert_eq!(storage.dead_letter_count().unwrap(), 0);
    }

    #[test]
    fn a_replay_of_the_embedded_log_appends_to_the_topic() {
        let (_dir, config, storage) = setup(false);
        assert_eq!(replay(&config, &storage).unwrap(), 1);
        assert_eq!(storage.read(Topic::Gps, 0, 10).unwrap().len(), 1);
    }
}
