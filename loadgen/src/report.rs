//! The result of a load run: what was sent, acknowledged and delivered per kind, what got
//! lost or duplicated, and how late pushes arrived. Kept apart from the run itself so the
//! accounting can be tested without sockets.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::receiver::ReceiverView;
use crate::stats::{GpsKey, Kind, SentLog, Snapshot};

/// What a kind of frame should produce at the push endpoint, and what did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindReport {
    pub kind: Kind,
    pub sent: u64,
    pub acked: u64,
    /// Records the hub owes the receiver: acked frames for kinds the hub acknowledges
    /// (login, heartbeat, alarm; an ack means "accepted"), sent frames for GPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// Distinct records received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicated: Option<u64>,
    /// `expected - delivered` when positive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
}

/// Distinct and duplicate records received for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivered {
    pub unique: u64,
    pub duplicates: u64,
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

/// How many records the hub owes for `kind`, given the run's counters.
pub fn expected(kind: Kind, counters: &Snapshot) -> Option<u64> {
    match kind {
        Kind::Login | Kind::Heartbeat | Kind::Alarm => Some(counters.acked(kind)),
        Kind::Gps => Some(counters.sent(kind)),
        Kind::TimeRequest | Kind::CommandReply => None,
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

impl KindReport {
    pub fn new(kind: Kind, counters: &Snapshot, delivered: Option<Delivered>) -> KindReport {
        let expected = delivered.and(expected(kind, counters));
        KindReport {
            kind,
            sent: counters.sent(kind),
            acked: counters.acked(kind),
            expected,
            delivered: delivered.map(|d| d.unique),
            duplicated: delivered.map(|d| d.duplicates),
            lost: expected
                .zip(delivered)
                .map(|(e, d)| e.saturating_sub(d.unique)),
        }
    }
}

/// End-to-end push latency of GPS fixes: socket write in the tracker to HTTP arrival.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushSummary {
    pub url: String,
    pub requests: u64,
    pub bad_requests: u64,
    /// Seconds spent after the run waiting for the last deliveries.
    pub drain_s: u64,
    /// Whether every expected record arrived before the drain timeout.
    pub complete: bool,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub target: String,
    pub trackers: u32,
    pub duration_s: f64,
    pub frames_per_s: f64,
    pub counters: Snapshot,
    pub kinds: Vec<KindReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    /// First few errors that ended a connection.
    pub error_samples: Vec<String>,
}

impl Report {
    /// Records lost over all kinds (0 without a push receiver).
    pub fn lost(&self) -> u64 {
        self.kinds.iter().filter_map(|k| k.lost).sum()
    }

    /// The final table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.counters;
        let _ = writeln!(
            out,
            "target {}  trackers {}  duration {:.1}s  frames/s {:.1}",
            self.target, self.trackers, self.duration_s, self.frames_per_s
        );
        let _ = writeln!(
            out,
            "connects: attempted {} established {} failed {}  commands: received {} answered {}  ack timeouts {}  errors {}",
            c.connects_attempted,
            c.connects_established,
            c.connects_failed,
            c.commands_received,
            c.commands_answered,
            c.ack_timeouts,
            c.errors
        );
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "kind", "sent", "acked", "delivered", "lost", "duplicated"
        );
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for k in &self.kinds {
            let _ = writeln!(
                out,
                "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10}",
                k.kind.name(),
                k.sent,
                k.acked,
                opt(k.delivered),
                opt(k.lost),
                opt(k.duplicated)
            );
        }
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
        if let Some(l) = &self.latency {
            let _ = writeln!(
                out,
                "gps push latency: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples, {} unmatched)",
                l.p50_ms, l.p99_ms, l.max_ms, l.samples, l.unmatched
            );
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

    fn snapshot() -> Snapshot {
        let c = Counters::new();
        for _ in 0..10 {
            c.add_sent(Kind::Gps);
        }
        for _ in 0..4 {
            c.add_sent(Kind::Heartbeat);
        }
        for _ in 0..3 {
            c.add_acked(Kind::Heartbeat);
        }
        c.snapshot()
    }

    #[test]
    fn gps_loss_counts_against_sent() {
        let r = KindReport::new(
            Kind::Gps,
            &snapshot(),
            Some(Delivered {
                unique: 7,
                duplicates: 2,
            }),
        );
        assert_eq!(r.expected, Some(10));
        assert_eq!(r.lost, Some(3));
        assert_eq!(r.duplicated, Some(2));
    }

    #[test]
    fn heartbeat_loss_counts_against_acked() {
        let r = KindReport::new(
            Kind::Heartbeat,
            &snapshot(),
            Some(Delivered {
                unique: 3,
                duplicates: 0,
            }),
        );
        assert_eq!(r.expected, Some(3));
        assert_eq!(r.lost, Some(0));
    }

    #[test]
    fn more_delivered_than_expected_is_not_negative_loss() {
        let r = KindReport::new(
            Kind::Heartbeat,
            &snapshot(),
            Some(Delivered {
                unique: 5,
                duplicates: 0,
            }),
        );
        assert_eq!(r.lost, Some(0));
    }

    #[test]
    fn without_a_receiver_nothing_is_expected() {
        let r = KindReport::new(Kind::Gps, &snapshot(), None);
        assert_eq!(r.expected, None);
        assert_eq!(r.lost, None);
        assert_eq!(r.sent, 10);
    }

    #[test]
    fn unpushed_kinds_have_no_endpoint() {
        assert_eq!(endpoint_of(Kind::CommandReply), None);
        assert_eq!(endpoint_of(Kind::Gps), Some("/pushgps"));
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

    #[test]
    fn table_names_every_kind() {
        let report = Report {
            target: "127.0.0.1:21100".into(),
            trackers: 1,
            duration_s: 1.0,
            frames_per_s: 1.0,
            counters: snapshot(),
            kinds: vec![KindReport::new(Kind::Gps, &snapshot(), None)],
            push: None,
            latency: None,
            error_samples: vec![],
        };
        let table = report.table();
        assert!(table.contains("gps"));
        assert_eq!(report.lost(), 0);
    }
}
