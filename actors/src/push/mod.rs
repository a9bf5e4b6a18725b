//! The PushDispatcher: stored events -> the customer's push URLs, at least once, in order.
//!
//! One delivery loop per topic that has a destination (`pushURL` set for the topics with a
//! push path, `offlineCmdPushURL` for the offline instruction callback). Each loop reads its
//! topic in order (embedded log cursor, or a Kafka consumer group), posts a batch, and only
//! after the customer accepted it advances its position. A failed batch is retried as is,
//! with capped exponential backoff, so records of a device (and of a topic) are never
//! reordered and a restart loses nothing; records older than `push.max_age` are dropped
//! (logged and counted) rather than retried forever. Topics are independent: a customer
//! endpoint that rejects alarms does not hold up positions.
//!
//! A batch the endpoint refuses for good (a permanent failure, see [`http`]) is tried
//! `push.dead_letter_after` times, then split in two halves delivered one after the other,
//! each tried as many times and split again, down to single records: a record still refused
//! alone goes to the dead-letter store in the node's database (`storage::DeadLetter`,
//! counted in `iothub_push_dead_letters_total`, stored ones in
//! `iothub_push_dead_letters_stored`) and the loop moves on. The records the endpoint takes
//! are delivered in order; `iothubd dead-letters list|replay` shows the dead letters and
//! queues them again (in both modes the store is the node's database: a dead letter belongs
//! to the node whose loop refused it).

pub mod dead_letters;
pub mod http;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use iothub::event::Topic;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, PushConfig};
use crate::storage::Storage;
use http::{Destination, Format, Outcome};
use source::{Batch, Item, KafkaSource, LogSource, Source};

/// Pause before restarting a delivery loop that panicked.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Handle to the running delivery loops.
pub struct PushDispatcher {
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
}

/// The destinations the configuration asks for, one per topic.
pub fn destinations(push: &PushConfig) -> Vec<Destination> {
    let mut out = Vec::new();
    for topic in Topic::ALL {
        match topic.push_path() {
            Some(path) if !push.url.is_empty() => out.push(Destination {
                topic,
                url: format!("{}{path}", push.url.trim_end_matches('/')),
                token: push.token.clone(),
                format: Format::Form {
                    msg_type: (topic == Topic::InstructResponse).then_some("2"),
                },
            }),
            None if !push.offline_cmd_url.is_empty() => out.push(Destination {
                topic,
                url: push.offline_cmd_url.clone(),
                token: push.offline_cmd_token.clone(),
                format: Format::JsonObject,
            }),
            _ => {}
        }
    }
    out
}

/// Everything a delivery loop needs besides its source.
struct LoopContext {
    dest: Destination,
    client: reqwest::Client,
    push: PushConfig,
    /// Where dead letters go.
    storage: Arc<Storage>,
}

impl PushDispatcher {
    /// Starts one delivery loop per destination, reading Kafka when `kafka.enable`, else the
    /// embedded log in `storage`.
    ///
    /// Each change of `rejoin` makes the Kafka consumers leave and rejoin their group (cluster
    /// mode: a node left the cluster). A broker reassigns a dead member's partitions once its
    /// session times out; a rejoin makes that happen on every broker, including those that
    /// only rebalance when a member joins.
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        rejoin: watch::Receiver<u64>,
    ) -> anyhow::Result<PushDispatcher> {
        let client = http::client(config.push.request_timeout, config.push.connect_timeout)?;
        if let Ok(stored) = storage.dead_letter_count() {
            // A replay while the node was stopped may have lowered it.
            *STORED_LARGEST
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = stored;
            metrics::gauge!("iothub_push_dead_letters_stored").set(stored as f64);
            if stored > 0 {
                tracing::warn!(
                    dead_letters = stored,
                    "records refused by the push endpoint wait in the dead-letter store; \
                     see iothubd dead-letters list"
                );
            }
        }
        let (stop, _) = watch::channel(false);
        let mut loops = Vec::new();
        for dest in destinations(&config.push) {
            let topic = dest.topic;
            let make_source: Box<dyn Fn() -> anyhow::Result<Source> + Send + Sync> =
                if config.kafka.enable {
                    let config = config.clone();
                    // Fail start-up on bad Kafka settings rather than in the background.
                    KafkaSource::new(&config, topic)?;
                    Box::new(move || Ok(Source::Kafka(KafkaSource::new(&config, topic)?)))
                } else {
                    let storage = storage.clone();
                    Box::new(move || Ok(Source::Log(LogSource::new(storage.clone(), topic))))
                };
            let ctx = Arc::new(LoopContext {
                dest,
                client: client.clone(),
                push: config.push.clone(),
                storage: storage.clone(),
            });
            tracing::info!(topic = topic.name(), url = %ctx.dest.url, "push delivery loop started");
            loops.push(tokio::spawn(supervise(
                ctx,
                make_source,
                stop.subscribe(),
                rejoin.clone(),
            )));
        }
        Ok(PushDispatcher { stop, loops })
    }

    /// Stops every loop: a request in flight is finished (and its position committed), a
    /// batch waiting for its next retry is left for the next start. Returns when all stopped.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for l in self.loops {
            let _ = l.await;
        }
    }
}

/// Runs a topic's loop and restarts it (with a fresh source) should it panic.
async fn supervise(
    ctx: Arc<LoopContext>,
    make_source: Box<dyn Fn() -> anyhow::Result<Source> + Send + Sync>,
    stop: watch::Receiver<bool>,
    rejoin: watch::Receiver<u64>,
) {
    let topic = ctx.dest.topic.name();
    loop {
        if *stop.borrow() {
            return;
        }
        let source = match make_source() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(topic, error = %e, "push source failed to start");
                tokio::time::sleep(RESTART_DELAY).await;
                continue;
            }
        };
        let handle = tokio::spawn(run(ctx.clone(), source, stop.clone(), rejoin.clone()));
        match handle.await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(topic, error = %e, "push delivery loop crashed; restarting");
                metrics::counter!("iothub_push_loop_restarts_total", "topic" => topic).increment(1);
                tokio::time::sleep(RESTART_DELAY).await;
            }
        }
    }
}

enum Delivery {
    Done,
    Stopped,
}

async fn run(
    ctx: Arc<LoopContext>,
    mut source: Source,
    mut stop: watch::Receiver<bool>,
    mut rejoin: watch::Receiver<u64>,
) {
    let max = match ctx.dest.format {
        Format::Form { .. } => ctx.push.batch_size.max(1),
        // The callback format carries one record per request.
        Format::JsonObject => 1,
    };
    // A second rejoin once the group has surely expired the dead node's members: a group
    // that rebalanced while they still counted may have given them partitions again.
    let mut rejoin_again: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = tokio::select! {
            b = source.next_batch(max, ctx.push.batch_delay) => b,
            _ = stop.changed() => return,
            Ok(()) = rejoin.changed() => {
                source.rejoin();
                rejoin_again = Some(tokio::time::Instant::now() + REJOIN_AGAIN_AFTER);
                continue;
            }
            _ = sleep_until_some(rejoin_again) => {
                source.rejoin();
                rejoin_again = None;
                continue;
            }
        };
        let position = batch.position.clone();
        match deliver(&ctx, batch, &mut stop).await {
            Delivery::Done => source.commit(position).await,
            Delivery::Stopped => return,
        }
    }
}

/// Past the group's session timeout, with a margin.
const REJOIN_AGAIN_AFTER: Duration = Duration::from_secs(source::SESSION_TIMEOUT.as_secs() + 2);

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Delivers the batch: the records the customer accepts, in order; those it refuses for
/// good to the dead-letter store; those older than `push.max_age` dropped.
async fn deliver(ctx: &LoopContext, batch: Batch, stop: &mut watch::Receiver<bool>) -> Delivery {
    // Parts of the batch still to deliver, in order: split when a part is refused for good.
    let mut parts = VecDeque::from([batch.items]);
    while let Some(part) = parts.pop_front() {
        match deliver_part(ctx, part, stop).await {
            Part::Done => {}
            Part::Stopped => return Delivery::Stopped,
            Part::Refused(mut items, reason) => {
                if items.len() > 1 {
                    let second = items.split_off(items.len() / 2);
                    parts.push_front(second);
                    parts.push_front(items);
                } else if !set_aside(ctx, &items, &reason, stop).await {
                    return Delivery::Stopped;
                }
            }
        }
    }
    Delivery::Done
}

enum Part {
    Done,
    Stopped,
    /// Refused for good `push.dead_letter_after` times in a row, with the last refusal.
    Refused(Vec<Item>, String),
}

/// Sets `iothub_push_dead_letters_stored` to the largest count a store returned. The loops
/// of several topics store concurrently and a running node only adds dead letters, so the
/// largest count is the latest; the lock keeps an older count from being set after it.
fn record_stored(count: u64) {
    let mut largest = STORED_LARGEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *largest = (*largest).max(count);
    metrics::gauge!("iothub_push_dead_letters_stored").set(*largest as f64);
}

/// The count behind `iothub_push_dead_letters_stored` (see [`record_stored`]).
static STORED_LARGEST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

/// Stores refused records in the dead-letter store, retrying while the store fails; false if
/// the loop was stopped meanwhile.
async fn set_aside(
    ctx: &LoopContext,
    items: &[Item],
    reason: &str,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let topic = ctx.dest.topic;
    let records: Vec<_> = items
        .iter()
        .map(|i| {
            // A Kafka message without an IMEI key has no device; the zero IMEI stands in.
            let imei = i.imei.unwrap_or_else(|| {
                iothub::imei::Imei::parse("000000000000000").expect("a valid IMEI")
            });
            (imei, i.enqueued_ms, i.json.clone())
        })
        .collect();
    loop {
        let storage = ctx.storage.clone();
        let records = records.clone();
        let reason_owned = reason.to_owned();
        let max = ctx.push.dead_letter_max;
        let stored = tokio::task::spawn_blocking(move || {
            let refs: Vec<_> = records
                .iter()
                .map(|(imei, at, json)| (*imei, *at, json.as_slice()))
                .collect();
            storage.add_dead_letters(topic, &refs, &reason_owned, max)
        })
        .await;
        match stored {
            Ok(Ok(count)) => {
                tracing::error!(
                    topic = topic.name(),
                    records = items.len(),
                    reason,
                    "records refused by the push endpoint set aside as dead letters"
                );
                metrics::counter!("iothub_push_dead_letters_total", "topic" => topic.name())
                    .increment(items.len() as u64);
                record_stored(count);
                return true;
            }
            Ok(Err(e)) => {
                // A full store holds the topic up on this record, as a record refused for
                // good was before there was a store, until the operator replays or clears it.
                tracing::error!(topic = topic.name(), error = %e, "cannot store dead letters; retrying")
            }
            Err(e) => {
                tracing::error!(topic = topic.name(), error = %e, "cannot store dead letters")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.push.max_backoff) => {}
            _ = stop.changed() => return false,
        }
    }
}

/// Posts the records until the customer accepts them (or they all expire), or until it has
/// refused them for good `push.dead_letter_after` times in a row.
async fn deliver_part(
    ctx: &LoopContext,
    mut items: Vec<Item>,
    stop: &mut watch::Receiver<bool>,
) -> Part {
    let topic = ctx.dest.topic.name();
    let max_age_ms = i64::try_from(ctx.push.max_age.as_millis()).unwrap_or(i64::MAX);
    let mut backoff = ctx.push.min_backoff;
    let mut refusals = 0u32;
    loop {
        if max_age_ms > 0 {
            let now = now_ms();
            let before = items.len();
            items.retain(|i| now.saturating_sub(i.enqueued_ms) <= max_age_ms);
            let dropped = before - items.len();
            if dropped > 0 {
                tracing::warn!(
                    topic,
                    records = dropped,
                    "undelivered records older than push.max_age dropped"
                );
                metrics::counter!("iothub_push_dropped_total", "topic" => topic, "reason" => "max_age")
                    .increment(dropped as u64);
            }
        }
        if items.is_empty() {
            return Part::Done;
        }
        let (content_type, body) = match ctx.dest.format {
            Format::Form { msg_type } => {
                let records: Vec<&[u8]> = items.iter().map(|i| i.json.as_slice()).collect();
                (
                    "application/x-www-form-urlencoded",
                    http::form_body(&ctx.dest.token, msg_type, &records).into_bytes(),
                )
            }
            Format::JsonObject => {
                let body = items
                    .first()
                    .and_then(|i| http::json_object_body(&ctx.dest.token, &i.json));
                match body {
                    Some(b) => ("application/json", b),
                    None => {
                        tracing::warn!(
                            topic,
                            "offline callback record is not a JSON object; dropped"
                        );
                        metrics::counter!("iothub_push_dropped_total", "topic" => topic, "reason" => "invalid")
                            .increment(1);
                        return Part::Done;
                    }
                }
            }
        };
        let outcome = http::post(&ctx.client, &ctx.dest.url, content_type, body).await;
        metrics::counter!("iothub_push_requests_total", "topic" => topic, "outcome" => outcome.label())
            .increment(1);
        if outcome == Outcome::Accepted {
            let now = now_ms();
            let latency = metrics::histogram!("iothub_push_latency_seconds", "topic" => topic);
            for i in &items {
                latency.record(now.saturating_sub(i.enqueued_ms).max(0) as f64 / 1000.0);
            }
            metrics::counter!("iothub_push_records_total", "topic" => topic)
                .increment(items.len() as u64);
            return Part::Done;
        }
        if outcome.is_permanent() {
            refusals += 1;
            if refusals >= ctx.push.dead_letter_after {
                tracing::warn!(topic, url = %ctx.dest.url, %outcome, records = items.len(), "push refused for good; splitting the batch");
                return Part::Refused(items, outcome.to_string());
            }
        } else {
            // A transient failure between refusals: the refusals were not for good after all.
            refusals = 0;
        }
        tracing::warn!(topic, url = %ctx.dest.url, %outcome, retry_in_ms = backoff.as_millis() as u64, "push failed; will retry");
        metrics::counter!("iothub_push_retries_total", "topic" => topic).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return Part::Stopped,
        }
        backoff = backoff
            .saturating_mul(2)
            .min(ctx.push.max_backoff.max(ctx.push.min_backoff));
    }
}
