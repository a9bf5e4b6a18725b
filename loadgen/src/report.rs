//! The result of a load run: what each group of devices sent, what the hub acknowledged,
//! what it owes the customer, and what each verifier (the push receiver, the Kafka counter)
//! got: delivered, lost, duplicated, per kind; how late GPS pushes arrived; how the
//! instruction load fared. Kept apart from the run itself so the accounting can be tested
//! without sockets.
//!
//! # What the hub owes
//! A record is owed once the hub has accepted the frame that produces it:
//! - GT06: login, heartbeat and alarm frames when acknowledged (an ack means "stored");
//!   GPS (0x22, never acknowledged) when written.
//! - JT/T 808: every report is answered by a 0x8001, so only acknowledged ones count; an
//!   alarm report is a 0x0200 and also owes its position to `/pushgps`.
//!
//! **lost** = owed − delivered when positive; **duplicated** = records whose key arrived
//! before (see `receiver`).
//!
//! # Shared IMEIs
//! Two devices with one IMEI (`--duplicate-imeis`) take the connection from each other. A
//! GT06 position written just before its connection was taken over may never be read by the
//! hub, so shared GT06 devices owe no GPS; and the two holders can produce records with the
//! same key (two heartbeats within one second of hub time), so in the shared groups every
//! record received counts as delivered and duplicates are shown, not subtracted.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::instruct::InstructReport;
use crate::receiver::{PushReceiver, ReceiverView};
use crate::roster::{Family, Group};
use crate::stats::{GpsKey, Kind, SentLog, Snapshot};

/// Distinct and duplicate records received for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delivered {
    pub unique: u64,
    pub duplicates: u64,
}

/// Something that counts what the hub delivered: the push receiver or the Kafka counter.
pub trait DeliverySource {
    /// What arrived for `kind` from the devices `ours` accepts; `None` for kinds the hub
    /// does not deliver.
    fn delivered(&self, kind: Kind, ours: &dyn Fn(&str) -> bool) -> Option<Delivered>;
}

impl DeliverySource for PushReceiver {
    fn delivered(&self, kind: Kind, ours: &dyn Fn(&str) -> bool) -> Option<Delivered> {
        self.view(|v| delivered(kind, v, ours))
    }
}

/// The push endpoint a kind is delivered to, or `None` for kinds the hub does not push.
pub fn endpoint_of(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Login => Some("/pushevent"),
        Kind::Heartbeat => Some("/pushhb"),
        Kind::Gps => Some("/pushgps"),
        Kind::Alarm => Some("/pushalarm"),
        Kind::TimeRequest | Kind::CommandReply => None,
    }
}

/// How many records the hub owes for `kind` from a group, given its counters (see the
/// module docs); `None` when nothing is owed.
pub fn owed(group: Group, kind: Kind, counters: &Snapshot) -> Option<u64> {
    match (group.family, kind) {
        (_, Kind::TimeRequest | Kind::CommandReply) => None,
        (_, Kind::Login | Kind::Heartbeat | Kind::Alarm) => Some(counters.acked(kind)),
        (Family::Gt06, Kind::Gps) => (!group.shared).then(|| counters.sent(Kind::Gps)),
        (Family::Jt808, Kind::Gps) => Some(
            counters
                .acked(Kind::Gps)
                .saturating_add(counters.acked(Kind::Alarm)),
        ),
    }
}

/// What the receiver got for `kind` from the devices `ours` accepts (a receiver may also get
/// late deliveries of earlier runs). Logins count only `LOGIN` events: the `LOGOUT`s a run
/// causes when it disconnects go to the same endpoint.
pub fn delivered(
    kind: Kind,
    view: &ReceiverView<'_>,
    ours: &dyn Fn(&str) -> bool,
) -> Option<Delivered> {
    let endpoint = endpoint_of(kind)?;
    if kind == Kind::Login {
        let mut d = Delivered::default();
        for r in view.records(endpoint) {
            if !r.imei.as_deref().is_some_and(ours) {
                continue;
            }
            let is_login = r
                .record
                .get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.eq_ignore_ascii_case("login"));
            if !is_login {
                continue;
            }
            if r.duplicate {
                d.duplicates += 1;
            } else {
                d.unique += 1;
            }
        }
        return Some(d);
    }
    let mut d = Delivered::default();
    for (imei, count) in view.imei_counts(endpoint) {
        if ours(imei) {
            d.unique += count.total - count.duplicates;
            d.duplicates += count.duplicates;
        }
    }
    Some(d)
}

/// One verifier's account of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Records counted as delivered: distinct ones, or every one in a shared group.
    pub delivered: u64,
    pub duplicated: u64,
    /// `owed - delivered` when positive; `None` when nothing is owed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
}

impl Verdict {
    /// `tolerant`: count every record received, duplicates included (shared groups).
    pub fn new(owed: Option<u64>, d: Delivered, tolerant: bool) -> Verdict {
        let delivered = if tolerant {
            d.unique.saturating_add(d.duplicates)
        } else {
            d.unique
        };
        Verdict {
            delivered,
            duplicated: d.duplicates,
            lost: owed.map(|o| o.saturating_sub(delivered)),
        }
    }
}

/// One kind of one group: sent, acknowledged, owed, and each verifier's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindReport {
    pub kind: Kind,
    pub sent: u64,
    pub acked: u64,
    /// Records the hub owes the customer (see the module docs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Verdict>,
}

impl KindReport {
    pub fn new(
        group: Group,
        kind: Kind,
        counters: &Snapshot,
        push: Option<Delivered>,
        kafka: Option<Delivered>,
    ) -> KindReport {
        let owed = owed(group, kind, counters);
        let verdict = |d: Option<Delivered>| d.map(|d| Verdict::new(owed, d, group.shared));
        KindReport {
            kind,
            sent: counters.sent(kind),
            acked: counters.acked(kind),
            owed,
            push: verdict(push),
            kafka: verdict(kafka),
        }
    }

    /// Records lost according to any verifier (the larger count).
    pub fn lost(&self) -> u64 {
        let lost = |v: &Option<Verdict>| v.and_then(|v| v.lost).unwrap_or(0);
        lost(&self.push).max(lost(&self.kafka))
    }
}

/// One group of devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: Group,
    /// `gt06`, `jt808`, `gt06 shared-IMEI`, `jt808 shared-IMEI`.
    pub label: String,
    /// The gateway the group connected to.
    pub target: String,
    pub devices: u64,
    pub counters: Snapshot,
    pub kinds: Vec<KindReport>,
}

impl GroupReport {
    /// Records lost over all kinds.
    pub fn lost(&self) -> u64 {
        self.kinds.iter().map(KindReport::lost).sum()
    }

    /// The report of `kind`.
    pub fn kind(&self, kind: Kind) -> Option<&KindReport> {
        self.kinds.iter().find(|k| k.kind == kind)
    }
}

/// Accounts for every kind of `group` against the verifiers.
pub fn group_report(
    group: Group,
    target: String,
    devices: u64,
    counters: Snapshot,
    push: Option<&dyn DeliverySource>,
    kafka: Option<&dyn DeliverySource>,
    ours: &dyn Fn(&str) -> bool,
) -> GroupReport {
    let kinds = Kind::ALL
        .iter()
        .map(|&kind| {
            KindReport::new(
                group,
                kind,
                &counters,
                push.and_then(|p| p.delivered(kind, ours)),
                kafka.and_then(|k| k.delivered(kind, ours)),
            )
        })
        .collect();
    GroupReport {
        group,
        label: group.label(),
        target,
        devices,
        counters,
        kinds,
    }
}

/// Whether `source` has every record `group` is owed.
pub fn complete(
    group: Group,
    counters: &Snapshot,
    source: &dyn DeliverySource,
    ours: &dyn Fn(&str) -> bool,
) -> bool {
    Kind::ALL.iter().all(|&kind| {
        match (owed(group, kind, counters), source.delivered(kind, ours)) {
            (Some(owed), Some(d)) => Verdict::new(Some(owed), d, group.shared).lost == Some(0),
            _ => true,
        }
    })
}

/// End-to-end push latency of GPS fixes: socket write in the device to HTTP arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Delivered fixes with no matching send record (sent before the log filled, or not ours).
    pub unmatched: u64,
}

/// Latency of each delivered fix found in `sent` (duplicates are not timed twice).
pub fn latency(
    delivered: impl IntoIterator<Item = (GpsKey, Instant, bool)>,
    sent: &SentLog,
) -> Option<LatencyReport> {
    // 1 µs .. 1 h, 3 significant digits.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok()?;
    let mut unmatched = 0;
    for (key, received_at, duplicate) in delivered {
        if duplicate {
            continue;
        }
        match sent.get(&key) {
            Some(sent_at) => {
                let micros = received_at.saturating_duration_since(sent_at).as_micros();
                hist.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            }
            None => unmatched += 1,
        }
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Some(LatencyReport {
        samples: hist.len(),
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        max_ms: ms(hist.max()),
        unmatched,
    })
}

/// What the push receiver saw, for runs with `--push-listen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSummary {
    pub url: String,
    pub requests: u64,
    pub bad_requests: u64,
    /// Seconds spent after the run waiting for the last deliveries.
    pub drain_s: u64,
    /// Whether every owed record arrived before the drain timeout.
    pub complete: bool,
}

/// What the Kafka counter saw, for runs with `--kafka-brokers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSummary {
    pub brokers: String,
    pub topics: Vec<String>,
    /// Records read from the topics (every IMEI, every event type).
    pub records: u64,
    /// Records whose payload is not a JSON object.
    pub malformed: u64,
    /// Consumer errors reported while polling.
    pub errors: u64,
    pub drain_s: u64,
    pub complete: bool,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Processes the devices ran in (1 without `--workers`).
    pub workers: u32,
    pub duration_s: f64,
    pub frames_per_s: f64,
    /// Every group added up.
    pub counters: Snapshot,
    /// Groups that have devices, in [`Group::ALL`] order.
    pub groups: Vec<GroupReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<InstructReport>,
    /// First few errors that ended a connection.
    pub error_samples: Vec<String>,
}

impl Report {
    /// Records lost over all groups and kinds (0 without a verifier).
    pub fn lost(&self) -> u64 {
        self.groups.iter().map(GroupReport::lost).sum()
    }

    /// The report of one group, if it has devices.
    pub fn group(&self, family: Family, shared: bool) -> Option<&GroupReport> {
        self.groups
            .iter()
            .find(|g| g.group.family == family && g.group.shared == shared)
    }

    /// The final table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "run: {:.1}s  processes {}  frames/s {:.1}",
            self.duration_s, self.workers, self.frames_per_s
        );
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let verifier_header = |name: &str| {
            format!(
                " | {:>10} {:>8} {:>8}",
                format!("{name} deliv"),
                "lost",
                "dup"
            )
        };
        let verdict_cells = |v: &Option<Verdict>| match v {
            Some(v) => format!(
                " | {:>10} {:>8} {:>8}",
                v.delivered,
                opt(v.lost),
                v.duplicated
            ),
            None => String::new(),
        };
        for g in &self.groups {
            let c = &g.counters;
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{} -> {}: {} devices  connects {} ok / {} failed  online at end {}",
                g.label, g.target, g.devices, c.connects_established, c.connects_failed, c.online
            );
            let _ = writeln!(
                out,
                "  commands received {} answered {}  ack timeouts {}  errors {}  disconnects {}  takeovers {}",
                c.commands_received,
                c.commands_answered,
                c.ack_timeouts,
                c.errors,
                c.disconnects,
                c.takeovers
            );
            let mut header = format!(
                "  {:<14} {:>10} {:>10} {:>10}",
                "kind", "sent", "acked", "owed"
            );
            if self.push.is_some() {
                header.push_str(&verifier_header("push"));
            }
            if self.kafka.is_some() {
                header.push_str(&verifier_header("kafka"));
            }
            let _ = writeln!(out, "{header}");
            for k in &g.kinds {
                let _ = writeln!(
                    out,
                    "  {:<14} {:>10} {:>10} {:>10}{}{}",
                    k.kind.name(),
                    k.sent,
                    k.acked,
                    opt(k.owed),
                    verdict_cells(&k.push),
                    verdict_cells(&k.kafka)
                );
            }
        }
        let _ = writeln!(out);
        if let Some(p) = &self.push {
            let _ = writeln!(
                out,
                "push receiver {}: {} requests, {} malformed, drained in {}s, {}",
                p.url,
                p.requests,
                p.bad_requests,
                p.drain_s,
                if p.complete { "complete" } else { "INCOMPLETE" }
            );
        }
        if let Some(k) = &self.kafka {
            let _ = writeln!(
                out,
                "kafka {} ({}): {} records, {} malformed, {} consumer errors, drained in {}s, {}",
                k.brokers,
                k.topics.join(", "),
                k.records,
                k.malformed,
                k.errors,
                k.drain_s,
                if k.complete { "complete" } else { "INCOMPLETE" }
            );
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                out,
                "gps push latency: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples, {} unmatched)",
                l.p50_ms, l.p99_ms, l.max_ms, l.samples, l.unmatched
            );
        }
        if let Some(i) = &self.instructions {
            let codes = i
                .codes
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "instructions at {}/s: {} sent, {} answered _code 100, skipped {} (in flight) + {} (no device free)",
                i.rate_per_s, i.sent, i.answered, i.skipped_in_flight, i.skipped_no_device
            );
            let _ = writeln!(
                out,
                "  outcomes: {}",
                if codes.is_empty() { "none" } else { &codes }
            );
            if let Some(l) = &i.latency {
                let _ = writeln!(
                    out,
                    "  latency: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
                    l.p50_ms, l.p99_ms, l.max_ms, l.samples
                );
            }
            for w in &i.windows {
                let _ = writeln!(
                    out,
                    "    {:>5}-{:<5} s: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
                    w.from_s,
                    w.to_s,
                    w.latency.p50_ms,
                    w.latency.p99_ms,
                    w.latency.max_ms,
                    w.latency.samples
                );
            }
        }
        for e in &self.error_samples {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }
}

/// Frames per second over `elapsed`, 0 for an empty interval.
pub fn rate(frames: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        frames as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counters;

    const GT06: Group = Group {
        family: Family::Gt06,
        shared: false,
    };
    const JT808: Group = Group {
        family: Family::Jt808,
        shared: false,
    };

    fn snapshot() -> Snapshot {
        let c = Counters::new();
        for _ in 0..10 {
            c.add_sent(Kind::Gps);
        }
        for _ in 0..8 {
            c.add_acked(Kind::Gps);
        }
        for _ in 0..4 {
            c.add_sent(Kind::Heartbeat);
        }
        for _ in 0..3 {
            c.add_acked(Kind::Heartbeat);
        }
        for _ in 0..2 {
            c.add_sent(Kind::Alarm);
            c.add_acked(Kind::Alarm);
        }
        c.snapshot()
    }

    fn delivered(unique: u64, duplicates: u64) -> Option<Delivered> {
        Some(Delivered { unique, duplicates })
    }

    #[test]
    fn gt06_gps_is_owed_when_written() {
        assert_eq!(owed(GT06, Kind::Gps, &snapshot()), Some(10));
    }

    #[test]
    fn jt808_gps_is_owed_when_acknowledged_and_alarms_add_a_position() {
        assert_eq!(owed(JT808, Kind::Gps, &snapshot()), Some(10));
        assert_eq!(owed(JT808, Kind::Alarm, &snapshot()), Some(2));
    }

    #[test]
    fn shared_gt06_devices_owe_no_gps() {
        let shared = Group {
            family: Family::Gt06,
            shared: true,
        };
        assert_eq!(owed(shared, Kind::Gps, &snapshot()), None);
        assert_eq!(owed(shared, Kind::Heartbeat, &snapshot()), Some(3));
    }

    #[test]
    fn gps_loss_counts_against_owed() {
        let r = KindReport::new(GT06, Kind::Gps, &snapshot(), delivered(7, 2), None);
        let push = r.push.unwrap_or_else(|| panic!("verdict"));
        assert_eq!(r.owed, Some(10));
        assert_eq!(push.lost, Some(3));
        assert_eq!(push.duplicated, 2);
        assert_eq!(r.lost(), 3);
    }

    #[test]
    fn heartbeat_loss_counts_against_acked() {
        let r = KindReport::new(GT06, Kind::Heartbeat, &snapshot(), delivered(3, 0), None);
        assert_eq!(r.owed, Some(3));
        assert_eq!(r.push.and_then(|v| v.lost), Some(0));
    }

    #[test]
    fn more_delivered_than_owed_is_not_negative_loss() {
        let r = KindReport::new(GT06, Kind::Heartbeat, &snapshot(), delivered(5, 0), None);
        assert_eq!(r.push.and_then(|v| v.lost), Some(0));
    }

    #[test]
    fn shared_groups_count_duplicates_as_delivered() {
        let shared = Group {
            family: Family::Jt808,
            shared: true,
        };
        let r = KindReport::new(shared, Kind::Heartbeat, &snapshot(), delivered(2, 1), None);
        let push = r.push.unwrap_or_else(|| panic!("verdict"));
        assert_eq!(push.delivered, 3);
        assert_eq!(push.lost, Some(0));
        assert_eq!(push.duplicated, 1);
    }

    #[test]
    fn the_worse_verifier_decides_the_loss() {
        let r = KindReport::new(
            GT06,
            Kind::Heartbeat,
            &snapshot(),
            delivered(3, 0),
            delivered(1, 0),
        );
        assert_eq!(r.lost(), 2);
    }

    #[test]
    fn without_a_verifier_nothing_is_lost() {
        let r = KindReport::new(GT06, Kind::Gps, &snapshot(), None, None);
        assert_eq!(r.owed, Some(10));
        assert_eq!(r.push, None);
        assert_eq!(r.lost(), 0);
        assert_eq!(r.sent, 10);
    }

    #[test]
    fn unpushed_kinds_have_no_endpoint() {
        assert_eq!(endpoint_of(Kind::CommandReply), None);
        assert_eq!(endpoint_of(Kind::Gps), Some("/pushgps"));
    }

    struct Fixed(Delivered);

    impl DeliverySource for Fixed {
        fn delivered(&self, kind: Kind, _: &dyn Fn(&str) -> bool) -> Option<Delivered> {
            endpoint_of(kind).map(|_| self.0)
        }
    }

    #[test]
    fn completeness_needs_every_owed_kind() {
        let c = snapshot();
        let all = |_: &str| true;
        let enough = Fixed(Delivered {
            unique: 10,
            duplicates: 0,
        });
        let short = Fixed(Delivered {
            unique: 2,
            duplicates: 0,
        });
        assert!(complete(GT06, &c, &enough, &all));
        assert!(!complete(GT06, &c, &short, &all));
    }

    #[test]
    fn group_report_lists_every_kind() {
        let src = Fixed(Delivered {
            unique: 10,
            duplicates: 0,
        });
        let g = group_report(
            GT06,
            "127.0.0.1:21100".into(),
            5,
            snapshot(),
            Some(&src),
            None,
            &|_| true,
        );
        assert_eq!(g.kinds.len(), Kind::ALL.len());
        assert_eq!(g.label, "gt06");
        assert_eq!(g.lost(), 0);
        assert_eq!(g.kind(Kind::CommandReply).and_then(|k| k.push), None);
    }

    #[test]
    fn latency_percentiles_and_unmatched() {
        let log = SentLog::new(1000);
        let t0 = Instant::now();
        let mut delivered = Vec::new();
        for i in 0..100u64 {
            let key = ("1".to_owned(), format!("t{i}"));
            log.record(key.clone(), t0);
            delivered.push((key, t0 + Duration::from_millis(i + 1), false));
        }
        // A duplicate (not timed again) and a record nobody sent.
        delivered.push((
            ("1".to_owned(), "t0".to_owned()),
            t0 + Duration::from_secs(9),
            true,
        ));
        delivered.push((("2".to_owned(), "x".to_owned()), t0, false));
        let l = latency(delivered, &log).unwrap_or_else(|| panic!("histogram"));
        assert_eq!(l.samples, 100);
        assert_eq!(l.unmatched, 1);
        assert!((l.p50_ms - 50.0).abs() < 0.1, "p50 {}", l.p50_ms);
        assert!((l.p99_ms - 99.0).abs() < 0.1, "p99 {}", l.p99_ms);
        assert!((l.max_ms - 100.0).abs() < 0.1, "max {}", l.max_ms);
    }

    #[test]
    fn rate_of_empty_interval_is_zero() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }

    fn report() -> Report {
        let src = Fixed(Delivered {
            unique: 1,
            duplicates: 0,
        });
        Report {
            workers: 1,
            duration_s: 1.0,
            frames_per_s: 1.0,
            counters: snapshot(),
            groups: vec![group_report(
                JT808,
                "127.0.0.1:21121".into(),
                1,
                snapshot(),
                Some(&src),
                None,
                &|_| true,
            )],
            push: Some(PushSummary {
                url: "http://127.0.0.1:18080".into(),
                requests: 1,
                bad_requests: 0,
                drain_s: 0,
                complete: false,
            }),
            kafka: None,
            latency: None,
            instructions: None,
            error_samples: vec![],
        }
    }

    #[test]
    fn table_names_every_kind_and_the_group() {
        let table = report().table();
        assert!(table.contains("jt808 -> 127.0.0.1:21121"), "{table}");
        assert!(table.contains("heartbeat"), "{table}");
        assert!(table.contains("INCOMPLETE"), "{table}");
    }

    #[test]
    fn table_shows_instruction_latency_per_window() {
        let mut r = report();
        r.instructions = Some(InstructReport {
            rate_per_s: 100.0,
            sent: 2,
            answered: 2,
            skipped_in_flight: 0,
            skipped_no_device: 0,
            codes: [("100".to_owned(), 2)].into_iter().collect(),
            latency: Some(crate::instruct::LatencyMs {
                samples: 2,
                p50_ms: 0.4,
                p99_ms: 3.9,
                max_ms: 3.9,
            }),
            windows: vec![crate::instruct::WindowLatency {
                from_s: 540,
                to_s: 600,
                latency: crate::instruct::LatencyMs {
                    samples: 1,
                    p50_ms: 3.9,
                    p99_ms: 3.9,
                    max_ms: 3.9,
                },
            }],
        });
        let table = r.table();
        assert!(
            table.contains("540-600   s: p50 3.9 ms  p99 3.9 ms"),
            "{table}"
        );
    }

    #[test]
    fn loss_adds_up_over_groups() {
        // gps owed 10, alarm 2, heartbeat 3; one of each delivered.
        assert_eq!(report().lost(), 9 + 1 + 2);
    }

    #[test]
    fn report_survives_a_json_round_trip() {
        let r = report();
        let text = serde_json::to_string(&r).unwrap_or_default();
        let back: Option<Report> = serde_json::from_str(&text).ok();
        assert_eq!(back, Some(r));
    }
}
