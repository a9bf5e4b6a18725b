//! Counters shared by every simulated device of a run. Atomics rather than a mutex: ten
//! thousand devices bump them from every worker thread and the progress printer reads them
//! once a second; no count needs to be consistent with another at the same instant.
//!
//! A [`Snapshot`] is what leaves the process: worker processes print theirs as JSON lines
//! and the parent adds them up with [`Snapshot::merge`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The kinds of uplink frame a simulated device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Login,
    Heartbeat,
    Gps,
    Alarm,
    TimeRequest,
    CommandReply,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Login,
        Kind::Heartbeat,
        Kind::Gps,
        Kind::Alarm,
        Kind::TimeRequest,
        Kind::CommandReply,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Heartbeat => "heartbeat",
            Kind::Gps => "gps",
            Kind::Alarm => "alarm",
            Kind::TimeRequest => "time_request",
            Kind::CommandReply => "command_reply",
        }
    }

    /// The kind an acknowledgement with this protocol number answers.
    pub fn from_protocol(protocol: u8) -> Option<Kind> {
        use crate::frames::proto;
        match protocol {
            proto::LOGIN => Some(Kind::Login),
            proto::HEARTBEAT => Some(Kind::Heartbeat),
            proto::GPS => Some(Kind::Gps),
            proto::ALARM => Some(Kind::Alarm),
            proto::TIME => Some(Kind::TimeRequest),
            proto::COMMAND_REPLY => Some(Kind::CommandReply),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Live counters; share one `Arc<Counters>` among trackers to aggregate them.
#[derive(Debug, Default)]
pub struct Counters {
    sent: [AtomicU64; Kind::ALL.len()],
    acked: [AtomicU64; Kind::ALL.len()],
    /// Connections attempted / established / failed to establish.
    pub connects_attempted: AtomicU64,
    pub connects_established: AtomicU64,
    pub connects_failed: AtomicU64,
    /// Trackers currently logged in.
    pub online: AtomicU64,
    /// 0x80 commands received from the server and answered.
    pub commands_received: AtomicU64,
    pub commands_answered: AtomicU64,
    /// 0x8A time replies received.
    pub time_replies: AtomicU64,
    /// Acks that did not arrive within the ack timeout.
    pub ack_timeouts: AtomicU64,
    /// Frames from the server that the simulator does not expect (counted, then ignored).
    pub unexpected_frames: AtomicU64,
    /// Socket errors, decode errors and connections closed by the server.
    pub errors: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    /// Connections that ended before the end of the run with an error (counted by the fleet;
    /// takeovers are not among them).
    pub disconnects: AtomicU64,
    /// Connections closed because another device with the same IMEI logged in (the hub's
    /// "newest connection wins"), expected with duplicate IMEIs.
    pub takeovers: AtomicU64,
}

impl Counters {
    pub fn new() -> Counters {
        Counters::default()
    }

    pub fn add_sent(&self, kind: Kind) {
        self.sent[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_acked(&self, kind: Kind) {
        self.acked[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent(&self, kind: Kind) -> u64 {
        self.sent[kind.index()].load(Ordering::Relaxed)
    }

    pub fn acked(&self, kind: Kind) -> u64 {
        self.acked[kind.index()].load(Ordering::Relaxed)
    }

    /// All frames sent, of every kind.
    pub fn frames_sent(&self) -> u64 {
        Kind::ALL.iter().map(|&k| self.sent(k)).sum()
    }

    /// All acknowledgements received, of every kind.
    pub fn acks_received(&self) -> u64 {
        Kind::ALL.iter().map(|&k| self.acked(k)).sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            sent: Kind::ALL.iter().map(|&k| (k, self.sent(k))).collect(),
            acked: Kind::ALL.iter().map(|&k| (k, self.acked(k))).collect(),
            connects_attempted: get(&self.connects_attempted),
            connects_established: get(&self.connects_established),
            connects_failed: get(&self.connects_failed),
            online: get(&self.online),
            commands_received: get(&self.commands_received),
            commands_answered: get(&self.commands_answered),
            time_replies: get(&self.time_replies),
            ack_timeouts: get(&self.ack_timeouts),
            unexpected_frames: get(&self.unexpected_frames),
            errors: get(&self.errors),
            bytes_sent: get(&self.bytes_sent),
            disconnects: get(&self.disconnects),
            takeovers: get(&self.takeovers),
        }
    }
}

/// A copy of [`Counters`] at one instant, serializable for the JSON report and the worker
/// lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub sent: Vec<(Kind, u64)>,
    pub acked: Vec<(Kind, u64)>,
    pub connects_attempted: u64,
    pub connects_established: u64,
    pub connects_failed: u64,
    pub online: u64,
    pub commands_received: u64,
    pub commands_answered: u64,
    pub time_replies: u64,
    pub ack_timeouts: u64,
    pub unexpected_frames: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub disconnects: u64,
    pub takeovers: u64,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Counters::new().snapshot()
    }
}

impl Snapshot {
    pub fn sent(&self, kind: Kind) -> u64 {
        self.sent
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    pub fn acked(&self, kind: Kind) -> u64 {
        self.acked
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// All frames sent, of every kind.
    pub fn frames_sent(&self) -> u64 {
        self.sent.iter().map(|(_, n)| n).sum()
    }

    /// All acknowledgements received, of every kind.
    pub fn acks_received(&self) -> u64 {
        self.acked.iter().map(|(_, n)| n).sum()
    }

    /// Adds `other` to this snapshot: the counts of two sets of devices (two groups, two
    /// worker processes) as one. Saturating, so a corrupt worker line cannot wrap a total.
    pub fn merge(&mut self, other: &Snapshot) {
        let add_kinds = |mine: &mut Vec<(Kind, u64)>, theirs: &[(Kind, u64)]| {
            for &(kind, n) in theirs {
                match mine.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, m)) => *m = m.saturating_add(n),
                    None => mine.push((kind, n)),
                }
            }
        };
        add_kinds(&mut self.sent, &other.sent);
        add_kinds(&mut self.acked, &other.acked);
        let fields = [
            (&mut self.connects_attempted, other.connects_attempted),
            (&mut self.connects_established, other.connects_established),
            (&mut self.connects_failed, other.connects_failed),
            (&mut self.online, other.online),
            (&mut self.commands_received, other.commands_received),
            (&mut self.commands_answered, other.commands_answered),
            (&mut self.time_replies, other.time_replies),
            (&mut self.ack_timeouts, other.ack_timeouts),
            (&mut self.unexpected_frames, other.unexpected_frames),
            (&mut self.errors, other.errors),
            (&mut self.bytes_sent, other.bytes_sent),
            (&mut self.disconnects, other.disconnects),
            (&mut self.takeovers, other.takeovers),
        ];
        for (mine, theirs) in fields {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// Identifies one GPS fix in a delivered `/pushgps` record: IMEI and `gpsTime` as pushed
/// (`yyyy-MM-dd HH:mm:ss`, UTC). Fix times of one simulated tracker never repeat.
pub type GpsKey = (String, String);

/// When each GPS fix was written to the socket, to measure end-to-end push latency.
///
/// Bounded: past `capacity` fixes, further ones are counted in `untracked` and not timed.
#[derive(Debug)]
pub struct SentLog {
    capacity: usize,
    inner: Mutex<SentLogInner>,
}

#[derive(Debug, Default)]
struct SentLogInner {
    sent: HashMap<GpsKey, Instant>,
    untracked: u64,
}

impl SentLog {
    pub fn new(capacity: usize) -> SentLog {
        SentLog {
            capacity,
            inner: Mutex::new(SentLogInner::default()),
        }
    }

    /// Records a fix; returns false (and counts it untracked) once the log is full.
    pub fn record(&self, key: GpsKey, at: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.sent.len() >= self.capacity {
            inner.untracked += 1;
            return false;
        }
        inner.sent.insert(key, at);
        true
    }

    pub fn get(&self, key: &GpsKey) -> Option<Instant> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sent.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn untracked(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .untracked
    }

    /// Every tracked fix (copied out; used once, when the run is over).
    pub fn entries(&self) -> Vec<(GpsKey, Instant)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sent.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_kind() {
        let c = Counters::new();
        c.add_sent(Kind::Gps);
        c.add_sent(Kind::Gps);
        c.add_sent(Kind::Heartbeat);
        c.add_acked(Kind::Heartbeat);
        assert_eq!(c.sent(Kind::Gps), 2);
        assert_eq!(c.sent(Kind::Heartbeat), 1);
        assert_eq!(c.acked(Kind::Gps), 0);
        assert_eq!(c.frames_sent(), 3);
        assert_eq!(c.acks_received(), 1);
    }

    #[test]
    fn snapshot_reads_each_kind() {
        let c = Counters::new();
        c.add_acked(Kind::Alarm);
        let s = c.snapshot();
        assert_eq!(s.acked(Kind::Alarm), 1);
        assert_eq!(s.acked(Kind::Login), 0);
    }

    #[test]
    fn ack_protocols_map_to_kinds() {
        assert_eq!(Kind::from_protocol(0x01), Some(Kind::Login));
        assert_eq!(Kind::from_protocol(0x13), Some(Kind::Heartbeat));
        assert_eq!(Kind::from_protocol(0x26), Some(Kind::Alarm));
        assert_eq!(Kind::from_protocol(0x99), None);
    }

    #[test]
    fn merged_snapshots_add_every_count() {
        let a = Counters::new();
        a.add_sent(Kind::Gps);
        a.add_acked(Kind::Login);
        a.takeovers.fetch_add(2, Ordering::Relaxed);
        let b = Counters::new();
        b.add_sent(Kind::Gps);
        b.add_sent(Kind::Gps);
        b.online.fetch_add(3, Ordering::Relaxed);
        let mut total = a.snapshot();
        total.merge(&b.snapshot());
        assert_eq!(total.sent(Kind::Gps), 3);
        assert_eq!(total.acked(Kind::Login), 1);
        assert_eq!(total.takeovers, 2);
        assert_eq!(total.online, 3);
        assert_eq!(total.frames_sent(), 3);
    }

    #[test]
    fn snapshot_survives_a_json_round_trip() {
        let c = Counters::new();
        c.add_sent(Kind::Heartbeat);
        c.disconnects.fetch_add(1, Ordering::Relaxed);
        let s = c.snapshot();
        let text = serde_json::to_string(&s).unwrap_or_default();
        let back: Option<Snapshot> = serde_json::from_str(&text).ok();
        assert_eq!(back, Some(s));
    }

    #[test]
    fn sent_log_is_bounded() {
        let log = SentLog::new(2);
        let now = Instant::now();
        assert!(log.record(("1".into(), "a".into()), now));
        assert!(log.record(("1".into(), "b".into()), now));
        assert!(!log.record(("1".into(), "c".into()), now));
        assert_eq!(log.len(), 2);
        assert_eq!(log.untracked(), 1);
        assert!(log.get(&("1".into(), "c".into())).is_none());
    }
}
